/*
 * test_send.c — runs `$TALLY_BIN/tally send` against the in-process fake server
 * (tests/client_fake_server.c) and checks the printed report, the exit status and the exact
 * events the server received (the fake server dumps one line per event).
 * Needs the `tally` binary with the send command built in (the build makes test_send depend
 * on it); its absence is a failure, not a skip.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client_fake_server.h"
#include "check.h"

extern char **environ;

static char dir[64];
static char tally_path[1024];

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
		fprintf(stderr, "cannot write %s\n", path);
		exit(1);
	}
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return strdup("");
	static char buf[1 << 16];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return strdup(buf);
}

/*
 * Runs tally with args (NULL-terminated, after "tally"), stdin from in_path (NULL: /dev/null),
 * stdout/stderr into out/err (caller frees). Returns the exit status, or -1.
 */
static int run_tally(const char *const *args, const char *in_path, char **out, char **err)
{
	char out_path[128], err_path[128];
	snprintf(out_path, sizeof(out_path), "%s/stdout", dir);
	snprintf(err_path, sizeof(err_path), "%s/stderr", dir);
	const char *argv[32];
	size_t n = 0;
	argv[n++] = tally_path;
	for (size_t i = 0; args[i] && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, in_path ? in_path : "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	/* The child must not inherit a key from the test environment. */
	char *env[] = {"PATH=/usr/bin:/bin", "ASAN_OPTIONS=detect_leaks=1", NULL};
	pid_t pid;
	int rc = posix_spawn(&pid, tally_path, &fa, NULL, (char *const *)argv, env);
	posix_spawn_file_actions_destroy(&fa);
	if (rc != 0) {
		fprintf(stderr, "cannot run %s: %s\n", tally_path, strerror(rc));
		return -1;
	}
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	*out = read_file(out_path);
	*err = read_file(err_path);
	if (!WIFEXITED(status)) {
		fprintf(stderr, "tally died: status %d\nstderr:\n%s\n", status, *err);
		return -1;
	}
	return WEXITSTATUS(status);
}

/*
 * Compares text with the expected lines; an expected line ending in '*' matches any line
 * that starts with what precedes the '*'.
 */
static void check_lines(const char *what, const char *text, const char *const *want)
{
	const char *p = text;
	size_t i = 0;
	for (; want[i]; i++) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		size_t wl = strlen(want[i]);
		bool prefix = wl && want[i][wl - 1] == '*';
		bool ok = prefix ? (len >= wl - 1 && !memcmp(p, want[i], wl - 1))
				 : (len == wl && !memcmp(p, want[i], wl));
		if (!ok || (!nl && !*p)) {
			fprintf(stderr, "%s line %zu:\n  got:  %.*s\n  want: %s\n", what, i + 1, (int)len,
				p, want[i]);
			failures++;
			fprintf(stderr, "--- whole %s:\n%s---\n", what, text);
			return;
		}
		p = nl ? nl + 1 : p + len;
	}
	if (*p) {
		fprintf(stderr, "%s: unexpected extra output:\n%s\n", what, p);
		failures++;
	}
}

static struct fake_server *start(struct fake_server_config cfg)
{
	struct fake_server *s;
	int rc = fake_server_start(&cfg, &s);
	if (rc < 0) {
		fprintf(stderr, "fake_server_start: %s\n", strerror(-rc));
		exit(1);
	}
	return s;
}

static const char main_input[] =
	/* 1: good: RFC 3339 with offset and fraction; int, decimal string, string */
	"{\"event_id\":\"evt-1\",\"customer_id\":\"cus_42\",\"event_name\":\"llm.tokens\","
	"\"timestamp\":\"2026-03-01T12:00:00.250+01:00\","
	"\"metadata\":{\"tokens\":1234,\"gpu_s\":\"0.25\",\"model\":\"small\"}}\n"
	/* 2: good: timestamp_us; negative decimal with trailing zero; JSON reals taken exactly */
	"{\"event_id\":\"evt-2\",\"customer_id\":\"cus_42\",\"event_name\":\"llm.tokens\","
	"\"timestamp_us\":1772362800000001,"
	"\"properties\":{\"cost\":\"-12.50\",\"ratio\":0.125,\"big\":1e3,\"id\":\"12\"}}\n"
	/* 3: malformed JSON */
	"{\"event_id\":\"evt-3\",\"customer_id\":\"cus_42\"\n"
	/* 4: forbidden byte in the event name: rejected locally with the broker's reason */
	"{\"event_id\":\"evt-4\",\"customer_id\":\"cus_42\",\"event_name\":\"llm tokens!\","
	"\"timestamp_us\":1}\n"
	/* 5: blank */
	"   \n"
	/* 6: idempotency_key, UTF-8 customer, Z time, no properties */
	"{\"idempotency_key\":\"evt-5\",\"customer_id\":\"cus \xc3\xa9\",\"event_name\":\"storage.bytes\","
	"\"timestamp\":\"2026-01-31T23:59:59Z\"}\n"
	/* 7: line 1 again: duplicate */
	"{\"event_id\":\"evt-1\",\"customer_id\":\"cus_42\",\"event_name\":\"llm.tokens\","
	"\"timestamp\":\"2026-03-01T12:00:00.250+01:00\","
	"\"metadata\":{\"tokens\":1234,\"gpu_s\":\"0.25\",\"model\":\"small\"}}\n"
	/* 8: same key, other content: conflict */
	"{\"event_id\":\"evt-1\",\"customer_id\":\"cus_42\",\"event_name\":\"llm.tokens\","
	"\"timestamp_us\":0}\n"
	/* 9: missing field */
	"{\"event_id\":\"evt-6\",\"customer_id\":\"cus_42\",\"timestamp_us\":1}\n"
	/* 10: no such date */
	"{\"event_id\":\"evt-7\",\"customer_id\":\"cus_42\",\"event_name\":\"x\","
	"\"timestamp\":\"2026-02-30T00:00:00Z\"}\n";

static void test_main_file(void)
{
	char in_path[128], dump_path[128], portarg[32];
	snprintf(in_path, sizeof(in_path), "%s/events.jsonl", dir);
	snprintf(dump_path, sizeof(dump_path), "%s/dump", dir);
	write_file(in_path, main_input);
	FILE *dump = fopen(dump_path, "w");
	struct fake_server *s = start((struct fake_server_config){.api_key = "k-test", .dump = dump});
	snprintf(portarg, sizeof(portarg), "127.0.0.1:%u", fake_server_port(s));

	/* evt-1 is the first event its shard accepts: offset 0. */
	struct tally_fp fp = event_fingerprint((struct tally_view){(const uint8_t *)"test", 4},
					       (struct tally_view){(const uint8_t *)"evt-1", 5});
	char conflict[256], reject[256];
	snprintf(conflict, sizeof(conflict),
		 "line 8: conflict: same event_id already stored with different content; the first "
		 "stands (shard %u, offset 0)",
		 (unsigned)(fp.hi % 4));
	snprintf(reject, sizeof(reject), "line 4: rejected: %s (NAME_CHAR)",
		 event_reject_str(TALLY_REJECT_NAME_CHAR));

	char *out, *err;
	const char *args[] = {"send", "--connect", portarg, "--api-key", "k-test", in_path, NULL};
	int rc = run_tally(args, NULL, &out, &err);
	CHECK_EQ(rc, 1);
	const char *want[] = {
		"line 3: invalid: malformed JSON: *",
		reject,
		conflict,
		"line 9: invalid: missing field \"event_name\"",
		"line 10: invalid: timestamp \"2026-02-30T00:00:00Z\" is not a valid date and time",
		"sent 5 events from 10 lines: 3 accepted, 1 duplicate, 1 conflict, 1 rejected, 3 invalid",
		NULL,
	};
	check_lines("stdout", out, want);
	CHECK_EQ(strlen(err), 0);
	free(out);
	free(err);

	/* Exactly what the server received, in order (it flushes the dump before each ACK; the
	 * FILE itself stays the server thread's until the server is stopped). */
	char *d = read_file(dump_path);
	const char *want_dump[] = {
		"key=evt-1 customer=cus_42 name=llm.tokens time_us=1772362800250000 "
		"props=tokens:int:1234,gpu_s:dec:0.25,model:str:small",
		"key=evt-2 customer=cus_42 name=llm.tokens time_us=1772362800000001 "
		"props=cost:dec:-12.50,ratio:dec:0.125,big:dec:1000,id:str:12",
		"key=evt-5 customer=cus%20%C3%A9 name=storage.bytes time_us=1769903999000000 props=",
		"key=evt-1 customer=cus_42 name=llm.tokens time_us=1772362800250000 "
		"props=tokens:int:1234,gpu_s:dec:0.25,model:str:small",
		"key=evt-1 customer=cus_42 name=llm.tokens time_us=0 props=",
		NULL,
	};
	check_lines("dump", d, want_dump);
	free(d);

	/* The same good lines again, from stdin, --json --quiet: all duplicates, exit 0. */
	char good_path[128];
	snprintf(good_path, sizeof(good_path), "%s/good.jsonl", dir);
	const char *nl = strchr(main_input, '\n');
	const char *nl2 = strchr(nl + 1, '\n');
	char good[1024];
	snprintf(good, sizeof(good), "%.*s", (int)(nl2 + 1 - main_input), main_input);
	write_file(good_path, good);
	const char *args2[] = {"send", "--connect", portarg, "--api-key", "k-test", "--json", "--quiet",
			       NULL};
	rc = run_tally(args2, good_path, &out, &err);
	CHECK_EQ(rc, 0);
	const char *want2[] = {"{\"lines\":2,\"sent\":2,\"accepted\":0,\"duplicate\":2,\"conflict\":0,"
			       "\"rejected\":0,\"invalid\":0,\"unacked\":0}",
			       NULL};
	check_lines("json stdout", out, want2);
	free(out);
	free(err);

	/* A wrong key: the server's AUTH error, exit 2. */
	const char *args3[] = {"send", "--connect", portarg, "--api-key", "nope", good_path, NULL};
	rc = run_tally(args3, NULL, &out, &err);
	CHECK_EQ(rc, 2);
	const char *want3[] = {"tally send: server error AUTH (fatal): unknown API key", NULL};
	check_lines("auth stderr", err, want3);
	free(out);
	free(err);

	struct fake_server_stats st;
	fake_server_stats(s, &st);
	CHECK_EQ(st.accepted, 3);
	CHECK_EQ(st.duplicates, 3);
	CHECK_EQ(st.conflicts, 1);
	CHECK_EQ(st.rejected, 0); /* the bad name never left the client */
	CHECK(!strcmp(st.last_client_name, "tally-send"));
	fake_server_stop(s);
	fclose(dump);
}

/* ACKs out of order: receipts must still be reported against the right lines. */
static void test_out_of_order(void)
{
	char in_path[128], portarg[32];
	snprintf(in_path, sizeof(in_path), "%s/ooo.jsonl", dir);
	write_file(in_path,
		   "{\"event_id\":\"a\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n"
		   "{\"event_id\":\"b\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n"
		   "{\"event_id\":\"c\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n"
		   "{\"event_id\":\"d\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n"
		   "{\"event_id\":\"a\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":2}\n"
		   "{\"event_id\":\"e\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n");
	struct fake_server *s = start((struct fake_server_config){.mode = FAKE_REVERSE, .hold = 2});
	snprintf(portarg, sizeof(portarg), "127.0.0.1:%u", fake_server_port(s));
	char *out, *err;
	const char *args[] = {"send", "--connect", portarg, "--batch", "3", in_path, NULL};
	int rc = run_tally(args, NULL, &out, &err);
	CHECK_EQ(rc, 1);
	const char *want[] = {
		"line 5: conflict: same event_id already stored with different content; the first "
		"stands (shard *",
		"sent 6 events from 6 lines: 5 accepted, 0 duplicate, 1 conflict, 0 rejected, 0 invalid",
		NULL,
	};
	check_lines("ooo stdout", out, want);
	free(out);
	free(err);
	struct fake_server_stats st;
	fake_server_stats(s, &st);
	CHECK_EQ(st.batches, 2);
	fake_server_stop(s);
}

/* A fatal server ERROR in the middle: reported, events without receipt listed, exit 2. */
static void test_server_error(void)
{
	char in_path[128], portarg[32];
	snprintf(in_path, sizeof(in_path), "%s/err.jsonl", dir);
	write_file(in_path,
		   "{\"event_id\":\"a\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n"
		   "{\"event_id\":\"b\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n");
	struct fake_server *s = start((struct fake_server_config){.mode = FAKE_ERROR_ON_BATCH,
								  .error_on_batch = 2,
								  .error_code = PROTO_E_UNAVAILABLE,
								  .error_fatal = true,
								  .error_message = "going away"});
	snprintf(portarg, sizeof(portarg), "127.0.0.1:%u", fake_server_port(s));
	char *out, *err;
	const char *args[] = {"send", "--connect", portarg, "--batch", "1", "--retries", "0",
			      in_path, NULL};
	int rc = run_tally(args, NULL, &out, &err);
	CHECK_EQ(rc, 2);
	const char *want[] = {
		"line 2: unacked: no receipt: the connection failed before the ACK",
		"sent 2 events from 2 lines: 1 accepted, 0 duplicate, 0 conflict, 0 rejected, 0 invalid, "
		"1 unacked",
		NULL,
	};
	check_lines("error stdout", out, want);
	/* Whether the ERROR is seen before or after the end of input is a race, and with it the
	 * "stopped after line" note: check the two lines that are always there. */
	static const char first[] = "tally send: server error UNAVAILABLE (fatal): going away (no "
				    "retries left)\n";
	CHECK(!strncmp(err, first, strlen(first)));
	CHECK(strstr(err, "\ntally send: 1 events have no receipt; sending the same lines again is "
			  "safe (duplicates are recognised)\n") != NULL);
	free(out);
	free(err);
	fake_server_stop(s);

	/* With retries (the default), the same failure is survived: tally send reconnects and
	 * sends batch 2 again (and batch 3 if it had gone out on the dead connection). */
	write_file(in_path,
		   "{\"event_id\":\"a\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n"
		   "{\"event_id\":\"b\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n"
		   "{\"event_id\":\"c\",\"customer_id\":\"c\",\"event_name\":\"n\",\"timestamp_us\":1}\n");
	s = start((struct fake_server_config){.mode = FAKE_ERROR_ON_BATCH,
					      .error_on_batch = 2,
					      .error_code = PROTO_E_UNAVAILABLE,
					      .error_fatal = true,
					      .error_message = "going away"});
	snprintf(portarg, sizeof(portarg), "127.0.0.1:%u", fake_server_port(s));
	const char *args2[] = {"send", "--connect", portarg, "--batch", "1", in_path, NULL};
	rc = run_tally(args2, NULL, &out, &err);
	CHECK_EQ(rc, 0);
	const char *want2[] = {
		"sent 3 events from 3 lines: 3 accepted, 0 duplicate, 0 conflict, 0 rejected, 0 invalid",
		NULL,
	};
	check_lines("retry stdout", out, want2);
	const char *want2_err[] = {
		"tally send: server error UNAVAILABLE (fatal): going away; retrying in 200 ms (2 "
		"retries left)",
		NULL,
	};
	check_lines("retry stderr", err, want2_err);
	free(out);
	free(err);
	struct fake_server_stats st;
	fake_server_stats(s, &st);
	CHECK_EQ(st.conns, 2);
	CHECK_EQ(st.accepted, 3);
	fake_server_stop(s);

	/* A non-retryable ERROR (a client bug, e.g. BATCH_TOO_LARGE) is not retried. */
	s = start((struct fake_server_config){.mode = FAKE_ERROR_ON_BATCH,
					      .error_on_batch = 1,
					      .error_code = PROTO_E_BATCH_TOO_LARGE,
					      .error_fatal = true,
					      .error_message = "too many"});
	snprintf(portarg, sizeof(portarg), "127.0.0.1:%u", fake_server_port(s));
	rc = run_tally(args2, NULL, &out, &err);
	CHECK_EQ(rc, 2);
	static const char first_err[] = "tally send: server error BATCH_TOO_LARGE (fatal): too many\n";
	CHECK(!strncmp(err, first_err, strlen(first_err)));
	free(out);
	free(err);
	fake_server_stats(s, &st);
	CHECK_EQ(st.conns, 1);
	fake_server_stop(s);
}

/* Exact parsing at the edges: times, decimals, reals, escapes, and lines that are refused. */
static void test_exact(void)
{
	char in_path[128], dump_path[128], portarg[32];
	snprintf(in_path, sizeof(in_path), "%s/exact.jsonl", dir);
	snprintf(dump_path, sizeof(dump_path), "%s/dump2", dir);
#define EV(id) "{\"event_id\":\"" id "\",\"customer_id\":\"c\",\"event_name\":\"n\","
	write_file(in_path,
		   /* 1 */ EV("x1") "\"timestamp\":\"2000-02-29T00:00:00.000001Z\",\"properties\":{"
		   "\"min\":\"-9223372036854775.808\",\"max\":9223372036854775807,\"e\":2.5E-3,"
		   "\"z\":\"0.000000000000000000\"}}\n"
		   /* 2 */ EV("x2") "\"timestamp\":\"1970-01-01T00:00:00.5000000-00:30\"}\n"
		   /* 3 */ EV("x3") "\"timestamp\":\"1900-02-29T00:00:00Z\"}\n"
		   /* 4 */ EV("x4") "\"timestamp_us\":1,\"properties\":{\"o\":\"9223372036854775.808\"}}\n"
		   /* 5 */ EV("x5") "\"timestamp\":\"2026-01-01T00:00:00+24:00\"}\n"
		   /* 6 */ EV("x6") "\"timestamp_us\":1,\"properties\":{\"big\":1e19}}\n"
		   /* 7 */ EV("x7") "\"timestamp_us\":1,\"extra\":1}\n"
		   /* 8 */ EV("x8") "\"timestamp_us\":1,\"properties\":{\"s\":\"a,b=c%\"}}\n"
		   /* 9 */ EV("x9") "\"timestamp_us\":1,\"properties\":{\"a\":1,\"a\":2}}\n"
		   /* 10 */ EV("x10") "\"timestamp\":\"2026-01-01T00:00:60Z\"}\n"
		   /* 11 */ "[1,2]\n"
		   /* 12 */ EV("x12") "\"timestamp_us\":1,\"metadata\":{\"p\":\"1.5\"},\"properties\":{}}\n");
#undef EV
	FILE *dump = fopen(dump_path, "w");
	struct fake_server *s = start((struct fake_server_config){.dump = dump});
	snprintf(portarg, sizeof(portarg), "127.0.0.1:%u", fake_server_port(s));
	char *out, *err;
	const char *args[] = {"send", "--connect", portarg, in_path, NULL};
	int rc = run_tally(args, NULL, &out, &err);
	CHECK_EQ(rc, 1);
	const char *want[] = {
		"line 3: invalid: timestamp \"1900-02-29T00:00:00Z\" is not a valid date and time",
		"line 4: invalid: properties \"o\": 9223372036854775.808 does not fit a decimal (at most "
		"18 digits after the point and an int64 mantissa)",
		"line 5: invalid: timestamp \"2026-01-01T00:00:00+24:00\" is not RFC 3339*",
		"line 6: invalid: properties \"big\": 1e19 does not fit a decimal*",
		"line 7: invalid: unknown field \"extra\"",
		"line 9: invalid: malformed JSON: *",
		"line 10: invalid: timestamp \"2026-01-01T00:00:60Z\" is not a valid date and time (leap "
		"seconds are not supported)",
		"line 11: invalid: a line must be a JSON object",
		"line 12: invalid: give metadata or properties, not both",
		"sent 3 events from 12 lines: 3 accepted, 0 duplicate, 0 conflict, 0 rejected, 9 invalid",
		NULL,
	};
	check_lines("exact stdout", out, want);
	free(out);
	free(err);
	char *d = read_file(dump_path);
	const char *want_dump[] = {
		"key=x1 customer=c name=n time_us=951782400000001 props=min:dec:-9223372036854775.808,"
		"max:int:9223372036854775807,e:dec:0.0025,z:dec:0.000000000000000000",
		"key=x2 customer=c name=n time_us=1800500000 props=",
		"key=x8 customer=c name=n time_us=1 props=s:str:a%2Cb%3Dc%25",
		NULL,
	};
	check_lines("exact dump", d, want_dump);
	free(d);
	fake_server_stop(s);
	fclose(dump);
}

/* A quiet input stream does not hold events back: each line reaches the server while the
 * input is still open (the partial batch is sent once the input has been idle briefly). */
static void test_stream(void)
{
	struct fake_server *s = start((struct fake_server_config){0});
	char portarg[32], out_path[128], err_path[128];
	snprintf(portarg, sizeof(portarg), "127.0.0.1:%u", fake_server_port(s));
	snprintf(out_path, sizeof(out_path), "%s/stdout", dir);
	snprintf(err_path, sizeof(err_path), "%s/stderr", dir);
	int p[2];
	CHECK_EQ(pipe(p), 0);
	const char *argv[] = {tally_path, "send", "--connect", portarg, NULL};
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[0], 0);
	posix_spawn_file_actions_addclose(&fa, p[1]);
	posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	char *env[] = {"PATH=/usr/bin:/bin", NULL};
	pid_t pid;
	int rc = posix_spawn(&pid, tally_path, &fa, NULL, (char *const *)argv, env);
	posix_spawn_file_actions_destroy(&fa);
	close(p[0]);
	CHECK_EQ(rc, 0);
	for (int i = 1; i <= 2 && rc == 0; i++) {
		char line[160];
		int n = snprintf(line, sizeof(line),
				 "{\"event_id\":\"s%d\",\"customer_id\":\"c\",\"event_name\":\"n\","
				 "\"timestamp_us\":%d}\n",
				 i, i);
		CHECK_EQ(write(p[1], line, (size_t)n), n);
		/* Wait (bounded: 20 s) for the event to arrive while the input stays open. */
		struct fake_server_stats st = {0};
		for (int w = 0; w < 2000; w++) {
			fake_server_stats(s, &st);
			if (st.events >= (uint64_t)i)
				break;
			usleep(10 * 1000);
		}
		CHECK_EQ(st.events, i);
	}
	close(p[1]);
	int status = 0;
	if (rc == 0)
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	char *out = read_file(out_path);
	const char *want[] = {
		"sent 2 events from 2 lines: 2 accepted, 0 duplicate, 0 conflict, 0 rejected, 0 invalid",
		NULL};
	check_lines("stream stdout", out, want);
	free(out);
	fake_server_stop(s);
}

/* A line over the 1 MiB limit is reported and skipped; the next line still goes. */
static void test_long_line(void)
{
	char in_path[128], portarg[32];
	snprintf(in_path, sizeof(in_path), "%s/long.jsonl", dir);
	size_t big = (1u << 20) + 100;
	char *text = malloc(big + 256);
	int n = snprintf(text, 64, "{\"event_id\":\"");
	memset(text + n, 'x', big);
	n += (int)big;
	n += snprintf(text + n, 256,
		      "\"}\n{\"event_id\":\"ok\",\"customer_id\":\"c\",\"event_name\":\"n\","
		      "\"timestamp_us\":1}\n");
	write_file(in_path, text);
	free(text);
	struct fake_server *s = start((struct fake_server_config){0});
	snprintf(portarg, sizeof(portarg), "127.0.0.1:%u", fake_server_port(s));
	char *out, *err;
	const char *args[] = {"send", "--connect", portarg, in_path, NULL};
	CHECK_EQ(run_tally(args, NULL, &out, &err), 1);
	const char *want[] = {
		"line 1: invalid: line longer than 1048576 bytes",
		"sent 1 events from 2 lines: 1 accepted, 0 duplicate, 0 conflict, 0 rejected, 1 invalid",
		NULL};
	check_lines("long stdout", out, want);
	free(out);
	free(err);
	fake_server_stop(s);
}

static void test_usage_and_refused(void)
{
	char *out, *err;
	const char *help[] = {"send", "--help", NULL};
	CHECK_EQ(run_tally(help, NULL, &out, &err), 0);
	CHECK(!strncmp(out, "usage: tally send", 17));
	free(out);
	free(err);

	const char *bad[] = {"send", "--batch", "0", NULL};
	CHECK_EQ(run_tally(bad, NULL, &out, &err), 2);
	CHECK(strstr(err, "--batch wants 1..65535") != NULL);
	free(out);
	free(err);

	const char *badc[] = {"send", "--connect", "localhost", NULL};
	CHECK_EQ(run_tally(badc, NULL, &out, &err), 2);
	CHECK(strstr(err, "--connect wants HOST:PORT") != NULL);
	free(out);
	free(err);

	/* A port nobody listens on: bound here and kept bound (never listening) until the check
	   is done, so no other process (a tallyd of a test running beside this one, listening on
	   port 0) can be given it meanwhile. A connect to it is refused. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	CHECK_EQ(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	CHECK_EQ(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	char portarg[32], want[96];
	snprintf(portarg, sizeof(portarg), "127.0.0.1:%u", ntohs(a.sin_port));
	snprintf(want, sizeof(want), "tally send: connection refused to %s", portarg);
	const char *refused[] = {"send", "--connect", portarg, NULL};
	CHECK_EQ(run_tally(refused, NULL, &out, &err), 2);
	const char *want_err[] = {want, NULL};
	check_lines("refused stderr", err, want_err);
	free(out);
	free(err);
	close(fd);
}

int main(void)
{
	const char *bin = getenv("TALLY_BIN");
	snprintf(tally_path, sizeof(tally_path), "%s/tally", bin ? bin : ".");
	if (access(tally_path, X_OK) != 0) {
		fprintf(stderr, "test_send: %s not found (set TALLY_BIN to the build's bin dir)\n",
			tally_path);
		return 1;
	}
	snprintf(dir, sizeof(dir), "/tmp/tally-test-send-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_main_file();
	test_out_of_order();
	test_server_error();
	test_exact();
	test_stream();
	test_long_line();
	test_usage_and_refused();

	const char *names[] = {"events.jsonl", "dump", "good.jsonl", "ooo.jsonl", "err.jsonl",
			       "exact.jsonl", "dump2", "long.jsonl", "stdout", "stderr"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char p[160];
		snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
		unlink(p);
	}
	rmdir(dir);
	if (failures) {
		fprintf(stderr, "test_send: %d checks failed\n", failures);
		return 1;
	}
	printf("test_send: all checks passed\n");
	return 0;
}
