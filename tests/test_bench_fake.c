/*
 * tests/test_bench_fake.c — end-to-end smoke test of the tally-bench binary against the
 * in-process fake server (tests/client_fake_server.c, used read-only). The fake server answers
 * like a broker would (ACCEPTED / DUPLICATE / CONFLICT by key and content digest), so a run
 * with --expect must pass; the server's own counters must equal the plan's; ACKs sent newest
 * first must still be matched to their batches; an ERROR on a batch must make --expect fail.
 * The fake serves one connection at a time, hence --connections 1.
 * Needs $TALLY_BIN/tally-bench (skips with 77 when it is not built).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client_fake_server.h"

extern char **environ;

static int failures;
static char bench_path[4096];

#define CHECK(cond)                                                                               \
	do {                                                                                      \
		if (!(cond)) {                                                                    \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);  \
			failures++;                                                               \
		}                                                                                 \
	} while (0)

/* Runs tally-bench against `port` with extra args; returns its exit status (or -1). */
static int run_bench(uint16_t port, const char *const *extra, const char *out_path)
{
	char connect[64];
	const char *argv[64];
	int n = 0;
	pid_t pid;
	int status;
	posix_spawn_file_actions_t fa;

	snprintf(connect, sizeof(connect), "127.0.0.1:%u", port);
	argv[n++] = bench_path;
	argv[n++] = "--connect";
	argv[n++] = connect;
	argv[n++] = "--connections";
	argv[n++] = "1";
	argv[n++] = "--quiet";
	argv[n++] = "--drain";
	argv[n++] = "10";
	for (int i = 0; extra[i] && n < 62; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, out_path, O_WRONLY | O_CREAT | O_TRUNC,
					 0644);
	if (posix_spawn(&pid, bench_path, &fa, NULL, (char *const *)argv, environ)) {
		posix_spawn_file_actions_destroy(&fa);
		return -1;
	}
	posix_spawn_file_actions_destroy(&fa);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static char *slurp(const char *path)
{
	static char buf[1 << 16];
	FILE *f = fopen(path, "r");
	size_t n = 0;

	if (f) {
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
	return buf;
}

/* Value of "key":NUMBER in a JSON text, or -1. */
static int64_t json_num(const char *js, const char *key)
{
	char pat[96];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(js, pat);
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static void run_case(int mode, uint32_t hold, const char *const *extra, int want_exit,
		     const char *label)
{
	struct fake_server_config cfg = {.mode = mode, .hold = hold};
	struct fake_server *s;
	struct fake_server_stats st;
	char out[] = "/tmp/test_bench_fake.XXXXXX";
	int fd = mkstemp(out);

	if (mode == FAKE_ERROR_ON_BATCH) {
		cfg.error_on_batch = 3;
		cfg.error_code = PROTO_E_DISK_FULL;
		cfg.error_fatal = false;
		cfg.error_message = "injected";
	}
	CHECK(fd >= 0);
	close(fd);
	CHECK(fake_server_start(&cfg, &s) == 0);
	int rc = run_bench(fake_server_port(s), extra, out);
	fake_server_stats(s, &st);
	fake_server_stop(s);
	const char *js = slurp(out);
	unlink(out);
	printf("%s: exit %d, server saw %" PRIu64 " events: %" PRIu64 " accepted %" PRIu64
	       " dup %" PRIu64 " conflict %" PRIu64 " rejected\n",
	       label, rc, st.events, st.accepted, st.duplicates, st.conflicts, st.rejected);
	if (rc != want_exit) {
		fprintf(stderr, "%s: exit %d, want %d; output:\n%s\n", label, rc, want_exit, js);
		failures++;
	}
	if (mode == FAKE_ERROR_ON_BATCH)
		return;
	/* The bench's receipts are the server's decisions, one for one. */
	CHECK(json_num(js, "events_acked") == (int64_t)st.events);
	CHECK(json_num(js, "ACCEPTED") == (int64_t)st.accepted);
	CHECK(json_num(js, "DUPLICATE") == (int64_t)st.duplicates);
	CHECK(json_num(js, "CONFLICT") == (int64_t)st.conflicts);
	CHECK(st.rejected == 0);
	CHECK(json_num(js, "mismatches") == 0);
	CHECK(json_num(js, "checked") == (int64_t)st.events);
	CHECK(json_num(js, "batches") > 0);
}

static void run_steps(const char *const *extra)
{
	struct fake_server_config cfg = {.mode = FAKE_NORMAL};
	struct fake_server *s;
	char out[] = "/tmp/test_bench_fake.XXXXXX";
	int fd = mkstemp(out);

	CHECK(fd >= 0);
	close(fd);
	CHECK(fake_server_start(&cfg, &s) == 0);
	int rc = run_bench(fake_server_port(s), extra, out);
	fake_server_stop(s);
	const char *js = slurp(out);
	unlink(out);
	int phases = 0;
	for (const char *p = js; (p = strstr(p, "\"mode\":\"open\"")) != NULL; p++)
		phases++;
	printf("steps: exit %d, %d phases\n", rc, phases);
	CHECK(rc == 0);
	CHECK(phases == 2);
	CHECK(strstr(js, "\"target_rate\":4000,") != NULL);
	CHECK(strstr(js, "\"target_rate\":8000,") != NULL);
	/* 0.3 s at 4000/s and at 8000/s: 1200 + 2400 events sent. */
	CHECK(strstr(js, "\"events_sent\":1200,") != NULL);
	CHECK(strstr(js, "\"events_sent\":2400,") != NULL);
	CHECK(strstr(js, "\"mismatches\":0") != NULL);
}

int main(void)
{
	const char *bin = getenv("TALLY_BIN");

	snprintf(bench_path, sizeof(bench_path), "%s/tally-bench", bin ? bin : "build/bin");
	if (access(bench_path, X_OK)) {
		printf("SKIP: %s not built\n", bench_path);
		return 77;
	}
	static const char *const closed[] = {"--events", "20000", "--batch", "100", "--dup-rate",
					     "0.1", "--conflict-rate", "0.02", "--late-rate", "5%",
					     "--seed", "7", "--expect", "--json", NULL};
	run_case(FAKE_NORMAL, 0, closed, 0, "closed loop");
	/* 200 batches, ACKs held 4 at a time and sent newest first. */
	static const char *const rev[] = {"--events", "20000", "--batch", "100", "--inflight",
					  "8", "--dup-rate", "0.1", "--seed", "8", "--expect",
					  "--json", NULL};
	run_case(FAKE_REVERSE, 4, rev, 0, "reversed ACKs");
	static const char *const open_loop[] = {"--rate", "20000", "--duration", "0.5", "--batch",
						"50", "--dup-rate", "0.1", "--seed", "9",
						"--expect", "--json", NULL};
	run_case(FAKE_NORMAL, 0, open_loop, 0, "open loop");
	/* Two open-loop steps: one JSON phase each, both at their rate. */
	static const char *const steps[] = {"--steps", "4000,8000", "--duration", "0.3",
					    "--batch", "40", "--seed", "10", "--expect", "--json",
					    NULL};
	run_steps(steps);
	/* A retryable ERROR on batch 3: its events are unverifiable, so --expect must fail. */
	static const char *const err[] = {"--events", "2000", "--batch", "100", "--expect",
					  "--json", NULL};
	run_case(FAKE_ERROR_ON_BATCH, 0, err, 1, "error on batch 3");
	if (failures) {
		fprintf(stderr, "test_bench_fake: %d failure(s)\n", failures);
		return 1;
	}
	printf("test_bench_fake: ok\n");
	return 0;
}
