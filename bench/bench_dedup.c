/*
 * bench_dedup — speed and memory of one dedup shard on one core (see docs/dedup.md "Sizing").
 *
 * Phases, at --keys N (default 10M):
 *   1. hot claim: N fresh keys through dedup_check_claim + dedup_set_offset (the broker's flow)
 *      into a table preallocated for N (+ N/200); then N duplicate lookups at full load; then
 *      fresh keys at full load: 10 rounds of N/200 claims (misses + claims), each aborted after.
 *   2. grow (N <= 20M only): the same N claims into a table sized for N/16 (4 incremental
 *      doublings); prints the slowest dedup_check_claim call.
 *   3. seal: a second shard is filled and sealed one generation (N/G keys) at a time, as the
 *      broker does (.keys runs under --dir); ms per million keys.
 *   4. cold: min(N/20, 1M) fresh keys (G bloom probes each, then claimed), N/20 duplicates spread
 *      over all generations; then dedup_compact() and the same again.
 *   5. restart: close, reopen (map + verify + rebuild blooms/indexes of every run).
 * Prints rates per second on this one core, RAM bytes per key (hot: mapped table; cold: bloom +
 * sparse index) and the restart time. Page cache is warm for the restart (runs just written).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tally/dedup.h"
#include "test_dedup_util.h"

#define BATCH 1024
#define FRESH_ROUNDS 10 /* fresh claims at full load: 10 x N/200 keys */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct dedup_query g_q[BATCH];
static struct dedup_answer g_a[BATCH];

/* Runs keys [from, to) of universe `seed`; counts verdicts; returns the slowest call (s). */
static double g_worst_cpu;
static double g_cpu; /* thread CPU seconds of the last run(): rates "per core" exclude the time
		        this process was preempted on a shared machine */

static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Keys [from, to) of universe `seed`, NEW ones get offset off0 + i. Returns the slowest call
 * in wall time; g_worst_cpu gets the slowest in thread CPU time (without preemption). */
static double run(struct dedup_shard *d, uint64_t seed, uint64_t from, uint64_t to,
		  uint64_t off0, bool set_offset, uint64_t counts[8])
{
	double worst = 0;
	g_worst_cpu = 0;
	g_cpu = 0;
	for (uint64_t i = from; i < to;) {
		size_t m = 0;
		for (; m < BATCH && i + m < to; m++)
			g_q[m] = (struct dedup_query){.fp = dtest_fp(seed, i + m),
						      .digest = dtest_digest(i + m),
						      .event_time_us = 1000};
		double t0 = now_s(), c0 = cpu_s();
		dedup_check_claim(d, g_q, m, g_a);
		if (set_offset)
			for (size_t k = 0; k < m; k++)
				if (g_a[k].verdict == DEDUP_NEW)
					dedup_set_offset_hint(d, g_q[k].fp, g_a[k].slot,
							      off0 + i + k);
		double dt = now_s() - t0, dc = cpu_s() - c0;
		if (dt > worst)
			worst = dt;
		if (dc > g_worst_cpu)
			g_worst_cpu = dc;
		g_cpu += dc;
		for (size_t k = 0; k < m; k++)
			counts[g_a[k].verdict & 7]++;
		i += m;
	}
	return worst;
}

/* Fresh keys (bloom probes, then claimed) and duplicates of cold keys. */
static void cold_lookups(struct dedup_shard *d, uint64_t n, uint64_t probe, uint64_t gens,
			 uint64_t universe)
{
	uint64_t cnt[8] = {0};
	struct dedup_stats st;
	dedup_stats(d, &st);
	uint64_t s0 = st.run_searches;
	double t0 = now_s();
	run(d, universe, 0, probe, (2 + universe) * n, false, cnt);
	double t_cmiss = now_s() - t0;
	dedup_stats(d, &st);
	CHECK_EQ_U(cnt[DEDUP_NEW], probe);
	printf("cold lookup fresh, %4" PRIu64 " generations (claimed after): %8.2f M/s, per CPU-s "
	       "%.2f M, run searches %.2f%% of keys\n",
	       gens, (double)probe / t_cmiss / 1e6, (double)probe / g_cpu / 1e6,
	       100.0 * (double)(st.run_searches - s0) / (double)probe);
	memset(cnt, 0, sizeof(cnt));
	t0 = now_s();
	uint64_t done = 0;
	for (uint64_t i = 0; i < probe;) { /* duplicates spread uniformly over all generations */
		size_t m = 0;
		for (; m < BATCH && i + m < probe; m++) {
			uint64_t k = dtest_mix(i + m + universe * n) % n;
			g_q[m] = (struct dedup_query){.fp = dtest_fp(1, k), .digest = dtest_digest(k),
						      .event_time_us = 1000};
		}
		dedup_check_claim(d, g_q, m, g_a);
		for (size_t k = 0; k < m; k++)
			cnt[g_a[k].verdict & 7]++;
		i += m;
		done += m;
	}
	double t_chit = now_s() - t0;
	CHECK_EQ_U(cnt[DEDUP_DUPLICATE], probe);
	printf("cold lookup duplicates, %4" PRIu64 " generations:          %8.2f M/s\n", gens,
	       (double)done / t_chit / 1e6);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench_dedup [--keys N] [--gens G] [--dir DIR] [--fp-ppm P] [--no-cold]\n"
		   "  --keys N    keys in the shard (default 10000000)\n"
		   "  --gens G    cold generations the keys are sealed into (default 64)\n"
		   "  --dir DIR   where .keys runs go (default /tmp/bench-dedup-<pid>, removed after)\n"
		   "  --fp-ppm P  bloom false-positive target, parts per million (default 10000)\n"
		   "  --no-cold   hot tier only\n");
}

int main(int argc, char **argv)
{
	uint64_t n = 10000000, gens = 64;
	uint32_t fp_ppm = 10000;
	bool cold = true;
	char dir[512] = "";
	static const struct option lo[] = {
		{"keys", required_argument, 0, 'k'}, {"gens", required_argument, 0, 'g'},
		{"dir", required_argument, 0, 'd'},  {"fp-ppm", required_argument, 0, 'p'},
		{"no-cold", no_argument, 0, 'n'},    {"help", no_argument, 0, 'h'},
		{0, 0, 0, 0}};
	int c;
	while ((c = getopt_long(argc, argv, "k:g:d:p:nh", lo, NULL)) != -1) {
		switch (c) {
		case 'k': n = strtoull(optarg, NULL, 10); break;
		case 'g': gens = strtoull(optarg, NULL, 10); break;
		case 'd': snprintf(dir, sizeof(dir), "%s", optarg); break;
		case 'p': fp_ppm = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'n': cold = false; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (n < 1000 || gens < 1 || gens > 10000) {
		usage(stderr);
		return 2;
	}
	bool own_dir = dir[0] == 0;
	if (own_dir)
		snprintf(dir, sizeof(dir), "/tmp/bench-dedup-%d", (int)getpid());
	printf("bench_dedup: keys %" PRIu64 ", generations %" PRIu64 ", bloom target %u ppm\n", n,
	       gens, fp_ppm);

	uint64_t fresh = n / 200;
	struct dedup_options o = {.expected_keys = n + fresh, .bloom_fp_per_million = fp_ppm,
				  .dir = cold ? dir : NULL};
	struct dedup_shard *d;
	double t_open = now_s();
	int rc = dedup_shard_open(&o, 0, &d);
	t_open = now_s() - t_open;
	if (rc != 0) {
		fprintf(stderr, "dedup_shard_open: %s\n", strerror(-rc));
		return 1;
	}
	uint64_t cnt[8] = {0};
	double t0 = now_s();
	run(d, 1, 0, n, 0, true, cnt);
	double t_claim = now_s() - t0;
	CHECK_EQ_U(cnt[DEDUP_NEW], n);
	dedup_set_durable(d, n);
	struct dedup_stats st;
	dedup_stats(d, &st);
	printf("hot  preallocate (open, pages faulted in):   %8.2f s\n", t_open);
	printf("hot  claim+set_offset (fresh, filling to N): %8.2f M/s  (%.2f s)  per CPU-s %6.2f M\n",
	       (double)n / t_claim / 1e6, t_claim, (double)n / g_cpu / 1e6);
	printf("hot  RAM: %" PRIu64 " bytes for %" PRIu64 " keys = %.1f bytes/key (load %.2f)\n",
	       st.hot_bytes, st.hot_keys, (double)st.hot_bytes / (double)st.hot_keys,
	       (double)st.hot_keys * 34 / (double)st.hot_bytes);
	memset(cnt, 0, sizeof(cnt));
	t0 = now_s();
	run(d, 1, 0, n, 0, false, cnt);
	double t_dup = now_s() - t0;
	CHECK_EQ_U(cnt[DEDUP_DUPLICATE], n);
	printf("hot  lookup duplicates at full load:         %8.2f M/s            per CPU-s %6.2f M\n",
	       (double)n / t_dup / 1e6, (double)n / g_cpu / 1e6);
	/* Fresh keys at full load: FRESH_ROUNDS rounds of N/200 claims (measured), each followed
	 * by aborting them (not measured: those writes "failed"), so the load stays at N. */
	double t_miss = 0, c_miss = 0;
	for (uint64_t r = 0; r < FRESH_ROUNDS; r++) {
		memset(cnt, 0, sizeof(cnt));
		t0 = now_s();
		run(d, 2 + r, 0, fresh, n, true, cnt); /* offsets >= n: not durable */
		t_miss += now_s() - t0;
		c_miss += g_cpu;
		CHECK_EQ_U(cnt[DEDUP_NEW], fresh);
		for (uint64_t i = 0; i < fresh; i++)
			dedup_abort(d, dtest_fp(2 + r, i));
	}
	printf("hot  claim fresh at full load:               %8.2f M/s            per CPU-s %6.2f M\n",
	       (double)(fresh * FRESH_ROUNDS) / t_miss / 1e6,
	       (double)(fresh * FRESH_ROUNDS) / c_miss / 1e6);
	dedup_stats(d, &st);
	CHECK_EQ_U(st.hot_keys, n);
	CHECK_EQ_U(st.grows, 0);

	if (n <= 20000000) {
		struct dedup_options og = {.expected_keys = n / 16};
		struct dedup_shard *dg;
		CHECK(dedup_shard_open(&og, 0, &dg) == 0);
		memset(cnt, 0, sizeof(cnt));
		t0 = now_s();
		double worst = run(dg, 1, 0, n, 0, true, cnt);
		double t_grow = now_s() - t0;
		struct dedup_stats sg;
		dedup_stats(dg, &sg);
		printf("grow claim from N/16 prealloc (%" PRIu64 " doublings): %8.2f M/s, slowest "
		       "call of %d: %.3f ms wall, %.3f ms thread CPU\n",
		       sg.grows, (double)n / t_grow / 1e6, BATCH, worst * 1e3, g_worst_cpu * 1e3);
		dedup_shard_close(dg);
	}
	if (!cold)
		goto out;

	/* Cold tier: a fresh shard, filled and sealed one generation at a time as the broker does
	 * (the hot table only ever holds the unsealed segment). */
	dedup_shard_close(d);
	uint64_t per = n / gens;
	uint64_t probe_max = n / 20 < 1000000 ? n / 20 : 1000000;
	struct dedup_options oc = {.expected_keys = per + per / 4 + 2 * probe_max + 1000,
				   .bloom_fp_per_million = fp_ppm, .dir = dir};
	rc = dedup_shard_open(&oc, 0, &d);
	if (rc != 0) {
		fprintf(stderr, "dedup_shard_open: %s\n", strerror(-rc));
		return 1;
	}
	/* Even generations: dedup_seal_generation (all on this thread). Odd ones: the three-step
	 * seal, timing what stays on the owning thread (begin + finish) apart from run. */
	double worst_seal = 0, t_seal = 0, t_owner = 0, t_helper = 0, worst_owner = 0;
	uint64_t keys_sync = 0, keys_3 = 0;
	for (uint64_t g = 0; g < gens; g++) {
		uint64_t to = g + 1 == gens ? n : (g + 1) * per;
		run(d, 1, g * per, to, 0, true, cnt);
		dedup_set_durable(d, to);
		double s0 = now_s();
		if (g % 2 == 0) {
			rc = dedup_seal_generation(d, g * per, to, 1000);
			double ds = now_s() - s0;
			t_seal += ds;
			keys_sync += to - g * per;
			worst_seal = ds > worst_seal ? ds : worst_seal;
		} else {
			struct dedup_sealing *job;
			rc = dedup_seal_begin(d, g * per, to, 1000, &job);
			double s1 = now_s();
			if (rc == 0)
				rc = dedup_seal_run(job);
			double s2 = now_s();
			if (job)
				rc = dedup_seal_finish(d, job);
			double s3 = now_s();
			t_owner += (s1 - s0) + (s3 - s2);
			t_helper += s2 - s1;
			worst_owner = (s1 - s0) > worst_owner ? (s1 - s0) : worst_owner;
			worst_owner = (s3 - s2) > worst_owner ? (s3 - s2) : worst_owner;
			keys_3 += to - g * per;
		}
		if (rc != 0) {
			fprintf(stderr, "seal: %s\n", strerror(-rc));
			return 1;
		}
	}
	dedup_stats(d, &st);
	for (int i = 0; i < 1000000 && st.hot_keys > 0; i++) {
		run(d, 1, 0, 1, 0, false, cnt); /* lookups drain the eviction of the last seal */
		dedup_stats(d, &st);
	}
	CHECK_EQ_U(st.hot_keys, 0);
	CHECK_EQ_U(st.cold_keys, n);
	printf("seal %" PRIu64 " generations of %" PRIu64 " keys: dedup_seal_generation %.0f ms per "
	       "million keys (slowest %.0f ms: extract + sort + write + bloom/index)\n",
	       gens, per, t_seal * 1e3 / ((double)keys_sync / 1e6), worst_seal * 1e3);
	printf("seal in three steps: owning thread %.0f ms per million keys (slowest step %.0f ms: "
	       "copy pass, install), helper thread %.0f ms per million keys\n",
	       t_owner * 1e3 / ((double)keys_3 / 1e6), worst_owner * 1e3,
	       t_helper * 1e3 / ((double)keys_3 / 1e6));
	printf("cold RAM: %" PRIu64 " bytes for %" PRIu64 " keys = %.2f bytes/key; disk %.0f "
	       "bytes/key\n",
	       st.cold_ram_bytes, st.cold_keys, (double)st.cold_ram_bytes / (double)st.cold_keys,
	       32.0 + 64.0 * (double)gens / (double)n);
	uint64_t probe = n / 20 < 1000000 ? n / 20 : 1000000;
	cold_lookups(d, n, probe, gens, 3);
	double t_c = now_s();
	int merges = dedup_compact(d);
	t_c = now_s() - t_c;
	CHECK(merges >= 0);
	dedup_stats(d, &st);
	printf("compact: %d merges (fan-in 8, max level 2) -> %" PRIu64 " generations in %.2f s "
	       "(%.0f MB/s of runs merged, off the hot path in the broker)\n",
	       merges, st.generations, t_c,
	       merges ? (double)n * 32 * (merges > 8 ? 2 : 1) / t_c / 1e6 : 0.0);
	printf("cold RAM after compaction: %.2f bytes/key\n",
	       (double)st.cold_ram_bytes / (double)st.cold_keys);
	cold_lookups(d, n, probe, st.generations, 4);
	dedup_shard_close(d);

	struct dedup_options orst = {.expected_keys = 1 << 20, .bloom_fp_per_million = fp_ppm,
				     .dir = dir};
	t0 = now_s();
	rc = dedup_shard_open(&orst, 0, &d);
	double t_restart = now_s() - t0;
	if (rc != 0) {
		fprintf(stderr, "reopen: %s\n", strerror(-rc));
		return 1;
	}
	dedup_stats(d, &st);
	CHECK_EQ_U(st.cold_keys, n);
	printf("restart: loaded %" PRIu64 " runs (%" PRIu64 " blooms from .bloom files), %" PRIu64
	       " keys in %.2f s (%.1f M keys/s, warm page cache)\n",
	       st.generations, st.blooms_loaded, st.cold_keys, t_restart,
	       (double)n / t_restart / 1e6);
	/* Again without the .bloom files: blooms and indexes rebuilt from the runs. */
	dedup_shard_close(d);
	char cmd2[700];
	snprintf(cmd2, sizeof(cmd2), "rm -f '%s'/shard-00/*.bloom", dir);
	CHECK(system(cmd2) == 0);
	t0 = now_s();
	rc = dedup_shard_open(&orst, 0, &d);
	t_restart = now_s() - t0;
	CHECK(rc == 0);
	dedup_stats(d, &st);
	CHECK_EQ_U(st.blooms_loaded, 0);
	printf("restart without .bloom files: %.2f s (%.1f M keys/s)\n", t_restart,
	       (double)n / t_restart / 1e6);
out:
	dedup_shard_close(d);
	if (own_dir && cold) {
		char cmd[600];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
	}
	return 0;
}
