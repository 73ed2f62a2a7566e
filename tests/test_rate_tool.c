/*
 * tests/test_rate_tool.c — tally-rate, the process, on a real WAL: --once writes the
 * invoices; --from-scratch into a new directory gives byte-identical files; kill -9 at random
 * points while tailing, restart, finish with --once: byte-identical again (no double count,
 * no skip). The WAL is written with the WAL library directly (no tallyd needed).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rate_testlib.h"
#include "tally/rate.h"
#include "tally/wal.h"

#define SHARDS 2
#define EVENTS 60000

static char g_dir[128], g_bin[1024];

static const char CONFIG[] =
	"{\"currency\":\"USD\",\"period\":\"month\",\"grace_seconds\":172800,\"rounding\":\"half_up\","
	" \"meters\":[{\"id\":\"calls\",\"event_name\":\"api.call\",\"aggregation\":\"count\"},"
	"            {\"id\":\"tokens\",\"event_name\":\"ai.tokens\",\"aggregation\":\"sum\",\"property\":\"tokens\"}],"
	" \"plans\":[{\"id\":\"pro\",\"base_fee\":\"49.00\",\"prices\":["
	"   {\"meter\":\"calls\",\"model\":\"per_unit\",\"unit_price\":\"0.02\",\"free_units\":1000},"
	"   {\"meter\":\"tokens\",\"model\":\"graduated\",\"tiers\":[{\"up_to\":100000,\"unit_price\":\"0.00001\"},"
	"                                                   {\"up_to\":null,\"unit_price\":\"0.000008\"}]}]}],"
	" \"default_plan\":\"pro\"}";

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static int make_wal(void)
{
	char data[256];
	snprintf(data, sizeof data, "%s/data", g_dir);
	struct wal_options o = {.shard_count = SHARDS};
	struct wal *w;
	int rc = wal_open(data, &o, &w);
	if (rc != 0) {
		fprintf(stderr, "wal_open: %d %s\n", rc, wal_last_error());
		return rc;
	}
	int64_t jan;
	if (rate_time_parse("2026-01-01", &jan) != 0)
		abort();
	int64_t ingest[SHARDS] = {jan, jan};
	for (int i = 0; i < EVENTS; i++) {
		uint32_t s = (uint32_t)(rng() % SHARDS);
		ingest[s] += (int64_t)(rng() % (240 * 1000000LL)); /* ~2 min per event per shard */
		int64_t back = rng() % 20 == 0 ? (int64_t)(rng() % (4 * 86400 * 1000000LL)) : 0;
		char key[32], cust[16];
		snprintf(key, sizeof key, "key-%d", i);
		snprintf(cust, sizeof cust, "cus_%u", (unsigned)(rng() % 5));
		struct tally_prop p = rate_t_int_prop("tokens", (int64_t)(rng() % 1000));
		struct rate_t_event ev;
		bool tok = rng() % 2;
		rate_t_event(&ev, key, cust, tok ? "ai.tokens" : "api.call", ingest[s] - back,
			     tok ? 1 : 0, &p);
		struct tally_view body = ev.ev.body;
		rc = wal_append(wal_shard(w, (uint16_t)s), rate_t_sv("acme"), &body, ingest[s], NULL);
		if (rc != 0)
			break;
		/* A duplicate-free WAL, as tallyd writes it; ticks now and then. */
		if (i % 1000 == 0)
			rc = wal_append_tick(wal_shard(w, (uint16_t)s), ingest[s], NULL);
		if (rc != 0)
			break;
	}
	/* Final ticks far ahead so that every period closes. */
	for (uint16_t s = 0; s < SHARDS && rc == 0; s++) {
		rc = wal_append_tick(wal_shard(w, s), ingest[0] > ingest[1] ? ingest[0] + 40 * 86400 * 1000000LL
									 : ingest[1] + 40 * 86400 * 1000000LL, NULL);
		if (rc == 0)
			rc = wal_flush(wal_shard(w, s));
		if (rc == 0)
			rc = wal_sync(wal_shard(w, s), NULL);
	}
	int crc = wal_close(w);
	return rc ? rc : crc;
}

static int run(const char *out, const char *extra)
{
	char cmd[2048];
	snprintf(cmd, sizeof cmd,
		 "%s/tally-rate --config %s/rate.json --data %s/data --out %s/%s --no-fsync %s",
		 g_bin, g_dir, g_dir, g_dir, out, extra);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Starts tally-rate tailing the WAL (it never exits by itself) into OUT/out as `consumer`,
   checkpointing every ckpt_ms; returns its pid. */
static pid_t spawn_tail(const char *out, const char *consumer, const char *ckpt_ms)
{
	pid_t pid = fork();
	if (pid == 0) {
		char cfgp[256], data[256], outp[256], exe[1100];
		snprintf(cfgp, sizeof cfgp, "%s/rate.json", g_dir);
		snprintf(data, sizeof data, "%s/data", g_dir);
		snprintf(outp, sizeof outp, "%s/%s", g_dir, out);
		snprintf(exe, sizeof exe, "%s/tally-rate", g_bin);
		execl(exe, exe, "--config", cfgp, "--data", data, "--out", outp, "--no-fsync",
		      "--checkpoint-ms", ckpt_ms, "--consumer", consumer, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static int same_tree(const char *a, const char *b)
{
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "diff -r %s/%s/invoices %s/%s/invoices >/dev/null", g_dir, a,
		 g_dir, b);
	return system(cmd) == 0;
}

static int count_invoices(const char *out)
{
	char cmd[512];
	snprintf(cmd, sizeof cmd, "find %s/%s/invoices -name '*.json' | wc -l", g_dir, out);
	FILE *p = popen(cmd, "r");
	int n = -1;
	if (p) {
		if (fscanf(p, "%d", &n) != 1)
			n = -1;
		pclose(p);
	}
	return n;
}

int main(void)
{
	const char *bin = getenv("TALLY_BIN");
	if (!bin) {
		printf("TALLY_BIN not set: run through ctest\n");
		return 77;
	}
	snprintf(g_bin, sizeof g_bin, "%s", bin);
	snprintf(g_dir, sizeof g_dir, "/tmp/test_rate_toolXXXXXX");
	if (!mkdtemp(g_dir))
		return 1;
	char path[256];
	snprintf(path, sizeof path, "%s/rate.json", g_dir);
	FILE *f = fopen(path, "w");
	fputs(CONFIG, f);
	fclose(f);
	CHECK_EQ(make_wal(), 0);

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	CHECK_EQ(run("out1", "--once"), 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long run_ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	int n = count_invoices("out1");
	printf("--once: %d invoices\n", n);
	CHECK(n >= 10);
	/* Running --once again on the same state changes nothing. */
	CHECK_EQ(run("out1", "--once"), 0);
	CHECK_EQ(count_invoices("out1"), n);
	/* --from-scratch into an existing output is refused; into a new one, identical bytes. */
	CHECK_EQ(run("out1", "--once --from-scratch"), 2);
	CHECK_EQ(run("out2", "--once --from-scratch"), 0);
	CHECK(same_tree("out1", "out2"));
	snprintf(path, sizeof path, "%s/out1/late_arrivals.json", g_dir);
	CHECK(access(path, R_OK) == 0);
	snprintf(path, sizeof path, "%s/out1/usage.json", g_dir);
	CHECK(access(path, R_OK) == 0);

	/* tally explain: line 1 and adjustment 1 of an invoice that has one, re-read from the WAL,
	 * match the invoice's count and digest; a tampered count does not. */
	char cmd2[4096], inv[1024] = "";
	snprintf(cmd2, sizeof cmd2, "grep -l late_period_start %s/out1/invoices/*/*.json | head -1",
		 g_dir);
	FILE *pp = popen(cmd2, "r");
	if (pp) {
		if (!fgets(inv, sizeof inv, pp))
			inv[0] = '\0';
		pclose(pp);
	}
	inv[strcspn(inv, "\n")] = '\0';
	CHECK(inv[0] != '\0');
	if (inv[0]) {
		const char *what[] = {"--line 1", "--line 2", "--adjustment 1"};
		for (int k = 0; k < 3; k++) {
			snprintf(cmd2, sizeof cmd2,
				 "%s/tally explain %s %s --data %s/data --config %s/rate.json | grep -q ': OK$'",
				 g_bin, inv, what[k], g_dir, g_dir);
			CHECK_EQ(system(cmd2), 0);
		}
		snprintf(cmd2, sizeof cmd2,
			 "%s/tally explain %s --adjustment 1 --data %s/data --config %s/rate.json",
			 g_bin, inv, g_dir, g_dir);
		CHECK_EQ(system(cmd2), 0); /* prints the figures into the test log */
		snprintf(cmd2, sizeof cmd2,
			 "sed 's/\"events\": \\([0-9]*\\)/\"events\": 1\\1/' %s > %s/tampered.json && "
			 "%s/tally explain %s/tampered.json --line 1 --data %s/data --config %s/rate.json "
			 "| grep -q MISMATCH",
			 inv, g_dir, g_bin, g_dir, g_dir, g_dir);
		CHECK_EQ(system(cmd2), 0);
		snprintf(cmd2, sizeof cmd2, "%s/tally invoice %s | grep -q TOTAL", g_bin, inv);
		CHECK_EQ(system(cmd2), 0);
		snprintf(cmd2, sizeof cmd2, "%s/tally usage --out %s/out1 >/dev/null", g_bin, g_dir);
		CHECK_EQ(system(cmd2), 0);
	}

	/* kill -9 while tailing, at random points, then finish with --once. */
	int kills = 0;
	for (int round = 0; round < 6; round++) {
		pid_t pid = spawn_tail("out3", "killme", "0");
		/* Somewhere inside the time a whole run takes (tailing never exits by itself). */
		long ms = (long)(rng() % (uint64_t)(run_ms + 1));
		struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
		nanosleep(&ts, NULL);
		kill(pid, SIGKILL);
		int st;
		waitpid(pid, &st, 0);
		kills += WIFSIGNALED(st);
	}
	/* (each kill lands somewhere in a ~0.2-0.5 s run; checkpoints every 4096 records) */
	CHECK_EQ(run("out3", "--once --consumer killme"), 0);

	/* SIGHUP while tailing: a clean stop (exit 0, checkpoint written), like SIGTERM; then
	   --once from that checkpoint gives the same invoices as one uninterrupted run. */
	pid_t hp = spawn_tail("out4", "hup", "1000");
	/* Its output directory appears after its handlers are set (bounded wait: 20 s). */
	char out4[300];
	snprintf(out4, sizeof out4, "%s/out4", g_dir);
	for (int i = 0; i < 2000 && access(out4, F_OK) != 0; i++) {
		struct timespec t10 = {0, 10 * 1000000L};
		nanosleep(&t10, NULL);
	}
	struct timespec more = {0, 200 * 1000000L}; /* and let it rate for a while */
	nanosleep(&more, NULL);
	kill(hp, SIGHUP);
	int hst;
	waitpid(hp, &hst, 0);
	CHECK(WIFEXITED(hst) && WEXITSTATUS(hst) == 0);
	CHECK_EQ(run("out4", "--once --consumer hup"), 0);
	CHECK(same_tree("out1", "out4"));
	printf("kill -9: %d kills within %ld ms each, then --once: %d invoices\n", kills, run_ms,
	       count_invoices("out3"));
	CHECK(same_tree("out1", "out3"));

	char cmd[256];
	snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
	if (rate_t_failures == 0)
		CHECK_EQ(system(cmd), 0);
	else
		fprintf(stderr, "left %s for inspection\n", g_dir);
	return rate_t_done("test_rate_tool");
}
