/*
 * test_dedup_cold.c — cold tier of the dedup shard: measured bloom FP rate against the
 * configured one, sealing into .keys runs and cold lookups (DUPLICATE/CONFLICT, no false
 * duplicate over 1M fresh keys), restart (runs + restored WAL tail) equal to the state before
 * the simulated crash, bad and truncated runs reported and rebuilt, expiry by generation.
 * Works in a fresh directory under $TMPDIR (default /tmp).
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dedup_internal.h"
#include "tally/dedup.h"
#include "test_dedup_util.h"

static char g_dir[512];

static void rm_rf(const char *dir)
{
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
}

static void test_bloom_fp(uint32_t fp_per_million, uint64_t n)
{
	struct dedup_bloom b;
	uint64_t blocks = dedup_bloom_blocks_for(n, fp_per_million);
	CHECK(dedup_bloom_init(&b, blocks) == 0);
	for (uint64_t i = 0; i < n; i++) {
		struct tally_fp fp = dtest_fp(10, i);
		dedup_bloom_add(&b, fp.lo, fp.hi);
	}
	for (uint64_t i = 0; i < n; i++) { /* no false negative */
		struct tally_fp fp = dtest_fp(10, i);
		CHECK(dedup_bloom_test(&b, fp.lo, fp.hi));
	}
	uint64_t probes = 2000000, fps = 0;
	for (uint64_t i = 0; i < probes; i++) {
		struct tally_fp fp = dtest_fp(11, i);
		fps += dedup_bloom_test(&b, fp.lo, fp.hi);
	}
	/* measured rate in parts per million, against the target +-20% */
	uint64_t measured_ppm = fps * 1000000 / probes;
	printf("bloom: target %u ppm, measured %" PRIu64 " ppm (%" PRIu64 "/%" PRIu64
	       "), %.2f bits/key, expected %" PRIu64 " ppb\n",
	       fp_per_million, measured_ppm, fps, probes, (double)blocks * 512 / (double)n,
	       dedup_bloom_expected_fp_ppb(n, blocks));
	CHECK(measured_ppm * 10 >= (uint64_t)fp_per_million * 8);
	CHECK(measured_ppm * 10 <= (uint64_t)fp_per_million * 12);
	dedup_bloom_free(&b);
}

struct world {
	struct dedup_options opt;
	struct dedup_shard *d;
	uint64_t n;        /* keys claimed: key i has offset i (1 event per offset) */
	uint64_t sealed;   /* offsets < sealed are in runs */
};

static void claim_range(struct dedup_shard *d, uint64_t seed, uint64_t from, uint64_t to)
{
	struct dedup_query q[64];
	struct dedup_answer a[64];
	for (uint64_t i = from; i < to;) {
		size_t m = 0;
		for (; m < 64 && i + m < to; m++)
			q[m] = (struct dedup_query){.fp = dtest_fp(seed, i + m),
						    .digest = dtest_digest(i + m),
						    .event_time_us = 1000};
		dedup_check_claim(d, q, m, a);
		for (size_t k = 0; k < m; k++) {
			CHECK_EQ_U(a[k].verdict, DEDUP_NEW);
			dedup_set_offset(d, q[k].fp, i + k);
		}
		i += m;
	}
}

/* Every key in [from, to) must be DUPLICATE with offset i; with digest+1, CONFLICT. */
static void expect_stored(struct dedup_shard *d, uint64_t seed, uint64_t from, uint64_t to)
{
	struct dedup_query q[64];
	struct dedup_answer a[64];
	for (uint64_t i = from; i < to;) {
		size_t m = 0;
		for (; m < 64 && i + m < to; m++)
			q[m] = (struct dedup_query){.fp = dtest_fp(seed, i + m),
						    .digest = dtest_digest(i + m) + (m % 5 == 0),
						    .event_time_us = 1000};
		dedup_check_claim(d, q, m, a);
		for (size_t k = 0; k < m; k++) {
			CHECK_EQ_U(a[k].verdict, k % 5 == 0 ? DEDUP_CONFLICT : DEDUP_DUPLICATE);
			CHECK_EQ_U(a[k].offset, i + k);
		}
		i += m;
	}
}

/* Every key of universe `seed` in [from, to) must be NEW (claims them). */
static void expect_new(struct dedup_shard *d, uint64_t seed, uint64_t from, uint64_t to)
{
	struct dedup_query q[64];
	struct dedup_answer a[64];
	for (uint64_t i = from; i < to;) {
		size_t m = 0;
		for (; m < 64 && i + m < to; m++)
			q[m] = (struct dedup_query){.fp = dtest_fp(seed, i + m), .digest = 1,
						    .event_time_us = 1000};
		dedup_check_claim(d, q, m, a);
		for (size_t k = 0; k < m; k++)
			CHECK_EQ_U(a[k].verdict, DEDUP_NEW);
		i += m;
	}
}

static char *run_path(uint64_t base)
{
	static char p[1024];
	CHECK(dedup_run_path(p, sizeof(p), g_dir, 3, base) == 0);
	return p;
}

static void test_seal_restart_rebuild(void)
{
	enum { SEG = 100000, SEGS = 4, TAIL = 30000 };
	int fd;
	char cmd[2400];
	struct dedup_options o = {.expected_keys = 4096, .dir = g_dir};
	struct dedup_shard *d = NULL;
	CHECK(dedup_shard_open(&o, 3, &d) == 0);
	/* Segment s holds offsets [s*SEG, (s+1)*SEG); key i is at offset i. */
	claim_range(d, 20, 0, SEGS * SEG + TAIL);
	CHECK(dedup_seal_generation(d, 0, SEG, 100) == -EINVAL); /* not durable yet */
	dedup_set_durable(d, SEGS * SEG + TAIL);
	for (uint64_t s = 0; s < SEGS; s++)
		CHECK(dedup_seal_generation(d, s * SEG, (s + 1) * SEG, (int64_t)(100 + s * 100)) == 0);
	CHECK(dedup_seal_generation(d, SEG / 2, SEG + 1, 0) == -EEXIST);
	struct dedup_stats st;
	dedup_stats(d, &st);
	CHECK_EQ_U(st.generations, SEGS);
	CHECK_EQ_U(st.cold_keys, SEGS * SEG);
	CHECK_EQ_U(st.hot_keys, TAIL);
	printf("cold: %" PRIu64 " keys, %.3f RAM bytes/key\n", st.cold_keys,
	       (double)st.cold_ram_bytes / (double)st.cold_keys);
	CHECK(st.cold_ram_bytes <= 2 * st.cold_keys);
	expect_stored(d, 20, 0, SEGS * SEG + TAIL);
	/* No false duplicate over 1M fresh keys; bloom hits cause run searches, not verdicts. */
	dedup_stats(d, &st);
	uint64_t searches0 = st.run_searches, checks0 = st.bloom_checks;
	expect_new(d, 21, 0, 1000000);
	dedup_stats(d, &st);
	printf("cold: %" PRIu64 " bloom checks, %" PRIu64 " run searches for 1M fresh keys\n",
	       st.bloom_checks - checks0, st.run_searches - searches0);
	CHECK_EQ_U(st.bloom_checks - checks0, 1000000 * SEGS);
	CHECK(st.run_searches - searches0 < 1000000 * SEGS / 50); /* ~1% per generation */
	/* Pending claim not in the WAL when we "crash": must be NEW afterwards. */
	dedup_shard_close(d);

	/* Restart: runs come back from disk, the caller restores the unsealed tail. Blooms and
	 * indexes come from the .bloom files, except one corrupted and one stale (another run's). */
	char bl[1100], bl2[1100];
	snprintf(bl, sizeof(bl), "%s", run_path(0));
	strcpy(bl + strlen(bl) - 5, ".bloom");
	fd = open(bl, O_RDWR);
	CHECK(fd >= 0);
	CHECK(pwrite(fd, "\xff\xff", 2, 64 + 1000) == 2);
	close(fd);
	snprintf(bl, sizeof(bl), "%s", run_path(SEG));
	strcpy(bl + strlen(bl) - 5, ".bloom");
	snprintf(bl2, sizeof(bl2), "%s", run_path(2 * SEG));
	strcpy(bl2 + strlen(bl2) - 5, ".bloom");
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", bl, bl2);
	CHECK(system(cmd) == 0);
	CHECK(dedup_shard_open(&o, 3, &d) == 0);
	CHECK_EQ_U(dedup_bad_runs(d, NULL, 0), 0);
	dedup_stats(d, &st);
	CHECK_EQ_U(st.blooms_loaded, SEGS - 2);
	for (uint64_t s = 0; s < SEGS; s++)
		CHECK(dedup_has_generation(d, s * SEG));
	for (uint64_t i = SEGS * SEG; i < SEGS * SEG + TAIL; i++)
		CHECK(dedup_restore_key(d, dtest_fp(20, i), dtest_digest(i), i) == 0);
	dedup_set_durable(d, SEGS * SEG + TAIL);
	expect_stored(d, 20, 0, SEGS * SEG + TAIL);
	expect_new(d, 21, 0, 1000); /* the fresh claims of before the crash were never written */
	dedup_shard_close(d);

	/* Corrupt one byte of run 1, truncate run 2, delete run 3; leave a stray .tmp. */
	fd = open(run_path(SEG), O_RDWR);
	CHECK(fd >= 0);
	uint8_t byte;
	CHECK(pread(fd, &byte, 1, 64 + 32 * 777 + 20) == 1);
	byte ^= 0x40;
	CHECK(pwrite(fd, &byte, 1, 64 + 32 * 777 + 20) == 1);
	close(fd);
	CHECK(truncate(run_path(2 * SEG), 64 + 32 * 1000 + 5) == 0);
	CHECK(unlink(run_path(3 * SEG)) == 0);
	char tmp[1100];
	snprintf(tmp, sizeof(tmp), "%s.tmp", run_path(9 * SEG));
	fd = open(tmp, O_CREAT | O_WRONLY, 0644);
	CHECK(fd >= 0);
	close(fd);

	CHECK(dedup_shard_open(&o, 3, &d) == 0);
	CHECK(access(tmp, F_OK) != 0);
	uint64_t bad[4] = {0};
	CHECK_EQ_U(dedup_bad_runs(d, bad, 4), 2);
	CHECK((bad[0] == SEG && bad[1] == 2 * SEG) || (bad[0] == 2 * SEG && bad[1] == SEG));
	CHECK(dedup_has_generation(d, 0));
	CHECK(!dedup_has_generation(d, SEG) && !dedup_has_generation(d, 2 * SEG) &&
	      !dedup_has_generation(d, 3 * SEG));
	/* The caller rebuilds runs 1..3 from "the WAL" (here: the keys it knows). */
	struct dedup_key *keys = malloc(SEG * sizeof(*keys));
	CHECK(keys);
	for (uint64_t s = 1; s < SEGS; s++) {
		for (uint64_t i = 0; i < SEG; i++) {
			uint64_t k = s * SEG + (i * 7919) % SEG; /* any order */
			keys[i] = (struct dedup_key){.fp = dtest_fp(20, k), .offset = k,
						     .digest = dtest_digest(k)};
		}
		keys[5].offset = 5; /* outside the segment: rejected */
		CHECK(dedup_rebuild_generation(d, s * SEG, (s + 1) * SEG, (int64_t)(100 + s * 100),
					       keys, SEG) == -EINVAL);
		keys[5].offset = s * SEG + (5 * 7919) % SEG;
		CHECK(dedup_rebuild_generation(d, s * SEG, (s + 1) * SEG, (int64_t)(100 + s * 100),
					       keys, SEG) == 0);
	}
	free(keys);
	CHECK_EQ_U(dedup_bad_runs(d, NULL, 0), 0);
	for (uint64_t i = SEGS * SEG; i < SEGS * SEG + TAIL; i++)
		CHECK(dedup_restore_key(d, dtest_fp(20, i), dtest_digest(i), i) == 0);
	dedup_set_durable(d, SEGS * SEG + TAIL);
	expect_stored(d, 20, 0, SEGS * SEG + TAIL);

	dedup_shard_close(d);
}

static void test_expiry(void)
{
	enum { SEG = 5000 };
	char dir[600];
	snprintf(dir, sizeof(dir), "%s/expiry", g_dir);
	struct dedup_options o = {.dir = dir, .window_us = 1000};
	struct dedup_shard *d = NULL;
	CHECK(dedup_shard_open(&o, 3, &d) == 0);
	claim_range(d, 30, 0, 3 * SEG);
	dedup_set_durable(d, 3 * SEG);
	for (uint64_t s = 0; s < 3; s++)
		CHECK(dedup_seal_generation(d, s * SEG, (s + 1) * SEG, (int64_t)(100 + s * 100)) == 0);
	CHECK_EQ_U(dedup_expire(d, 1050), 0);    /* cutoff 50: nothing is older */
	CHECK_EQ_U(dedup_expire(d, 1150), 1);    /* cutoff 150: generation 0 (max 100) */
	struct dedup_stats st;
	dedup_stats(d, &st);
	CHECK_EQ_U(st.generations, 2);
	CHECK_EQ_U(st.cold_keys, 2 * SEG);
	char p[1024];
	CHECK(dedup_run_path(p, sizeof(p), dir, 3, 0) == 0);
	CHECK(access(p, F_OK) != 0); /* its run is gone */
	CHECK(dedup_run_path(p, sizeof(p), dir, 3, SEG) == 0);
	CHECK(access(p, F_OK) == 0);
	/* event times before the cutoff are TOO_OLD; the expired keys are forgotten */
	struct dedup_query q = {.fp = dtest_fp(30, 1), .digest = dtest_digest(1),
				.event_time_us = 149};
	struct dedup_answer a;
	dedup_check_claim(d, &q, 1, &a);
	CHECK_EQ_U(a.verdict, DEDUP_TOO_OLD);
	q.event_time_us = 150;
	dedup_check_claim(d, &q, 1, &a);
	CHECK_EQ_U(a.verdict, DEDUP_NEW);
	expect_stored(d, 30, SEG, 3 * SEG);
	/* The expiry survives a restart: generation 0 is not loaded again. */
	dedup_shard_close(d);
	CHECK(dedup_shard_open(&o, 3, &d) == 0);
	CHECK(!dedup_has_generation(d, 0) && dedup_has_generation(d, SEG));
	CHECK_EQ_U(dedup_expire(d, 100000), 2);
	dedup_stats(d, &st);
	CHECK_EQ_U(st.generations, 0);
	dedup_shard_close(d);
}

/* Run search at the edges: tiny runs, keys at lo = 0 and lo = max, equal lo with different
 * hi, neighbours of every key. */
static void test_search_edges(void)
{
	static const size_t sizes[] = {1, 2, 3, 5, 300, 5000, 70000};
	char dir[600];
	snprintf(dir, sizeof(dir), "%s/search", g_dir);
	char sdir[700];
	CHECK(dedup_shard_dir(sdir, sizeof(sdir), dir, 0) == 0);
	char cmd[1500];
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", sdir);
	CHECK(system(cmd) == 0);
	for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
		size_t n = sizes[si];
		struct dedup_rec *recs = calloc(n * 2, sizeof(*recs));
		CHECK(recs);
		struct dtest_rng rng = {100 + si};
		for (size_t i = 0; i < n; i++) {
			recs[i].lo = dtest_next(&rng);
			recs[i].hi = dtest_next(&rng) | 2; /* hi - 1 and hi + 1 stay distinct keys */
			recs[i].offset = 1000 + i;
		}
		recs[0].lo = 0;
		if (n > 1)
			recs[1].lo = UINT64_MAX;
		if (n > 3)
			recs[3].lo = recs[2].lo; /* same lo, different hi */
		dedup_sort_recs(recs, recs + n, n);
		CHECK(dedup_run_write(dir, 0, 1000, 1000 + n, 5, recs, n, n % 2 == 0) == 0);
		char path[1024];
		CHECK(dedup_run_path(path, sizeof(path), dir, 0, 1000) == 0);
		struct dedup_gen g;
		CHECK(dedup_gen_load(&g, path, 0, 1000, 10000) == 0);
		for (size_t i = 0; i < n; i++) {
			const struct dedup_rec *r = dedup_gen_search(&g, recs[i].lo, recs[i].hi);
			CHECK(r != NULL && r->offset == recs[i].offset);
			CHECK(dedup_gen_search(&g, recs[i].lo, recs[i].hi - 1) == NULL);
			CHECK(dedup_gen_search(&g, recs[i].lo, recs[i].hi + 1) == NULL);
			if (recs[i].lo > 0 && (i == 0 || recs[i - 1].lo != recs[i].lo - 1))
				CHECK(dedup_gen_search(&g, recs[i].lo - 1, recs[i].hi) == NULL);
			if (recs[i].lo < UINT64_MAX && (i + 1 == n || recs[i + 1].lo != recs[i].lo + 1))
				CHECK(dedup_gen_search(&g, recs[i].lo + 1, recs[i].hi) == NULL);
		}
		for (size_t i = 0; i < 10000; i++)
			CHECK(dedup_gen_search(&g, dtest_next(&rng), dtest_next(&rng)) == NULL);
		dedup_gen_free(&g);
		CHECK(unlink(path) == 0);
		free(recs);
	}
}

/* A seal whose run cannot be written leaves every key hot and answered as before. */
static void test_seal_failure(void)
{
	enum { SEG = 3000 };
	char dir[600], p[1024], tmp[1100];
	snprintf(dir, sizeof(dir), "%s/sealfail", g_dir);
	struct dedup_options o = {.dir = dir};
	struct dedup_shard *d = NULL;
	CHECK(dedup_shard_open(&o, 3, &d) == 0);
	claim_range(d, 50, 0, 2 * SEG);
	dedup_set_durable(d, 2 * SEG);
	CHECK(dedup_run_path(p, sizeof(p), dir, 3, 0) == 0);
	snprintf(tmp, sizeof(tmp), "%s.tmp", p);
	CHECK(mkdir(tmp, 0755) == 0); /* open(O_CREAT|O_WRONLY) of the tmp file fails: EISDIR */
	CHECK(dedup_seal_generation(d, 0, SEG, 5) == -EISDIR);
	struct dedup_stats st;
	dedup_stats(d, &st);
	CHECK_EQ_U(st.hot_keys, 2 * SEG);
	CHECK_EQ_U(st.generations, 0);
	expect_stored(d, 50, 0, 2 * SEG);
	CHECK(rmdir(tmp) == 0);
	CHECK(dedup_seal_generation(d, 0, SEG, 5) == 0);
	dedup_stats(d, &st);
	CHECK_EQ_U(st.hot_keys, SEG);
	CHECK_EQ_U(st.cold_keys, SEG);
	expect_stored(d, 50, 0, 2 * SEG);
	dedup_shard_close(d);
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* dedup_set_thread_write_rate(): a run of 4 MiB written at 8 MiB/s takes at least ~0.5 s (a
 * lower bound: a slow machine only makes it longer); the run is intact; the cap is per thread
 * and 0 lifts it. */
static void test_write_rate(void)
{
	enum { SEG = 131072 }; /* x 32 bytes = 4 MiB */
	char dir[600];
	snprintf(dir, sizeof(dir), "%s/rate", g_dir);
	struct dedup_options o = {.dir = dir, .expected_keys = 2 * SEG};
	struct dedup_shard *d = NULL;
	CHECK(dedup_shard_open(&o, 4, &d) == 0);
	claim_range(d, 60, 0, SEG);
	dedup_set_durable(d, SEG);
	dedup_set_thread_write_rate(8u << 20);
	double t0 = mono_s();
	CHECK(dedup_seal_generation(d, 0, SEG, 5) == 0);
	double dt = mono_s() - t0;
	dedup_set_thread_write_rate(0);
	printf("write rate: 4 MiB run at an 8 MiB/s cap took %.2f s\n", dt);
	CHECK(dt >= 0.4);
	expect_stored(d, 60, 0, SEG);
	dedup_shard_close(d);
	CHECK(dedup_shard_open(&o, 4, &d) == 0); /* the run verifies at open */
	CHECK_EQ_U(dedup_bad_runs(d, NULL, 0), 0);
	expect_stored(d, 60, 0, SEG);
	dedup_shard_close(d);
}

static void *seal_thread(void *arg)
{
	static int rc;
	rc = dedup_seal_run(arg); /* the result is also finish's */
	return &rc;
}

/* The three-step seal with its middle step on another thread while lookups go on. */
static void test_seal_three_steps(void)
{
	enum { SEG = 4000 };
	char dir[600];
	snprintf(dir, sizeof(dir), "%s/seal3", g_dir);
	struct dedup_options o = {.dir = dir};
	struct dedup_shard *d = NULL;
	CHECK(dedup_shard_open(&o, 3, &d) == 0);
	claim_range(d, 60, 0, 2 * SEG);
	dedup_set_durable(d, 2 * SEG);
	struct dedup_sealing *job;
	CHECK(dedup_seal_begin(d, 0, SEG, 5, &job) == 0);
	pthread_t th;
	CHECK(pthread_create(&th, NULL, seal_thread, job) == 0);
	expect_stored(d, 60, 0, 2 * SEG); /* the sealed keys are still hot */
	expect_new(d, 61, 0, 2000);
	CHECK(pthread_join(th, NULL) == 0);
	CHECK(dedup_seal_finish(d, job) == 0);
	struct dedup_stats st;
	dedup_stats(d, &st);
	CHECK_EQ_U(st.cold_keys, SEG);
	CHECK(st.hot_keys >= SEG + 2000); /* the hot copies leave gradually */
	expect_stored(d, 60, 0, 2 * SEG);
	for (int i = 0; i < 200; i++)
		expect_stored(d, 60, 0, 1); /* each call evicts a few */
	dedup_stats(d, &st);
	CHECK_EQ_U(st.hot_keys, SEG + 2000);
	expect_stored(d, 60, 0, 2 * SEG);
	dedup_shard_close(d);
}

/* Seals [0, SEG) of a fresh shard in three steps on this thread; returns the stats after. */
static struct dedup_stats seal_first(struct dedup_shard *d, uint64_t seg)
{
	struct dedup_sealing *job;
	CHECK(dedup_seal_begin(d, 0, seg, 5, &job) == 0);
	CHECK(dedup_seal_run(job) == 0);
	CHECK(dedup_seal_finish(d, job) == 0);
	struct dedup_stats st;
	dedup_stats(d, &st);
	return st;
}

/*
 * The seal journal covers a shard's first segment even when its first records carry no key (the
 * broker writes a tick after 1 s idle, so a WAL often starts with one): the seal takes its keys
 * from the journal instead of scanning the hot table on the owning thread. It never covers a key
 * restored from the WAL (at open) that it does not hold: a range with one scans.
 */
static void test_journal_coverage(void)
{
	enum { SEG = 3000 };
	char dir[600];
	struct dedup_options o = {.seal_journal = true};
	struct dedup_shard *d = NULL;

	snprintf(dir, sizeof(dir), "%s/journal-ticks", g_dir);
	o.dir = dir;
	CHECK(dedup_shard_open(&o, 5, &d) == 0);
	claim_range(d, 62, 3, 2 * SEG); /* offsets 0..2: tick records, no key */
	dedup_set_durable(d, 2 * SEG);
	struct dedup_stats st = seal_first(d, SEG);
	CHECK_EQ_U(st.journal_seals, 1);
	CHECK_EQ_U(st.cold_keys, SEG - 3);
	expect_stored(d, 62, 3, 2 * SEG);
	dedup_shard_close(d);

	snprintf(dir, sizeof(dir), "%s/journal-restored", g_dir);
	CHECK(dedup_shard_open(&o, 5, &d) == 0);
	CHECK(dedup_restore_key(d, dtest_fp(63, 10), dtest_digest(10), 10) == 0);
	claim_range(d, 63, 11, SEG);
	dedup_set_durable(d, SEG);
	st = seal_first(d, SEG);
	CHECK_EQ_U(st.journal_seals, 0);
	CHECK_EQ_U(st.cold_keys, SEG - 10); /* the restored key too */
	expect_stored(d, 63, 10, SEG);
	dedup_shard_close(d);
}

static void *compact_thread(void *arg)
{
	static int rc;
	rc = dedup_compact_run(arg); /* the result is also finish's */
	return &rc;
}

static void copy_file(const char *from, const char *to)
{
	char cmd[2400];
	snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", from, to);
	CHECK(system(cmd) == 0);
}

/*
 * 20 generations of 2000 keys, fan-in 4, level max 2: 20 -> 5 of level 1 -> 1 of level 2 + 1 of
 * level 1. Lookups are unchanged throughout, including while a merge runs on another thread and
 * a new generation is sealed meanwhile; busy generations are not expired; a crash after the
 * rename (contained runs still there) is resolved at open.
 */
static void test_compaction(void)
{
	enum { SEG = 2000, SEGS = 20 };
	char dir[600];
	snprintf(dir, sizeof(dir), "%s/compact", g_dir);
	struct dedup_options o = {.dir = dir, .compact_fan_in = 4, .compact_level_max = 2,
				  .window_us = 1000000};
	struct dedup_shard *d = NULL;
	CHECK(dedup_shard_open(&o, 3, &d) == 0);
	claim_range(d, 40, 0, SEGS * SEG + SEG);
	dedup_set_durable(d, SEGS * SEG + SEG);
	for (uint64_t s = 0; s < SEGS; s++)
		CHECK(dedup_seal_generation(d, s * SEG, (s + 1) * SEG, (int64_t)s) == 0);

	/* One merge in three steps, the middle one on another thread. */
	struct dedup_compaction *c;
	CHECK_EQ_U(dedup_compact_begin(d, &c), 1);
	struct dedup_compaction *c2;
	CHECK(dedup_compact_begin(d, &c2) == -EBUSY);
	char first[1024], second[1024], saved[1100];
	CHECK(dedup_run_path(first, sizeof(first), dir, 3, 0) == 0);
	CHECK(dedup_run_path(second, sizeof(second), dir, 3, SEG) == 0);
	snprintf(saved, sizeof(saved), "%s.saved", second);
	copy_file(second, saved);
	pthread_t th;
	CHECK(pthread_create(&th, NULL, compact_thread, c) == 0);
	expect_stored(d, 40, 0, SEGS * SEG); /* inputs busy but searched */
	CHECK_EQ_U(dedup_expire(d, 1000000 + 3), 0); /* would expire gens 0..2: busy */
	CHECK(pthread_join(th, NULL) == 0);
	CHECK(dedup_compact_finish(d, c) == 0);
	struct dedup_stats st;
	dedup_stats(d, &st);
	CHECK_EQ_U(st.generations, SEGS - 3);
	CHECK_EQ_U(st.cold_keys, SEGS * SEG);
	CHECK(access(second, F_OK) != 0);
	expect_stored(d, 40, 0, SEGS * SEG);

	/* A merge whose output cannot be written changes nothing (its inputs stay, unbusy). */
	CHECK_EQ_U(dedup_compact_begin(d, &c), 1);
	char third_tmp[1100], third[1024];
	CHECK(dedup_run_path(third, sizeof(third), dir, 3, 4 * SEG) == 0); /* next group: 4..7 */
	snprintf(third_tmp, sizeof(third_tmp), "%s.tmp", third);
	CHECK(mkdir(third_tmp, 0755) == 0);
	CHECK(dedup_compact_run(c) == -EISDIR);
	CHECK(dedup_compact_finish(d, c) == -EISDIR);
	CHECK(rmdir(third_tmp) == 0);
	dedup_stats(d, &st);
	CHECK_EQ_U(st.generations, SEGS - 3);
	CHECK(access(third, F_OK) == 0);
	expect_stored(d, 40, 0, SEGS * SEG);

	/* The rest synchronously: 4 more level-1 merges, then one level-2 merge of the first 4. */
	int merges = dedup_compact(d);
	CHECK(merges >= 4);
	dedup_stats(d, &st);
	printf("compaction: %d more merges, %" PRIu64 " generations left\n", merges, st.generations);
	CHECK_EQ_U(st.generations, 2);
	CHECK_EQ_U(st.cold_keys, SEGS * SEG);
	CHECK(dedup_has_generation(d, 7 * SEG) && dedup_has_generation(d, 19 * SEG));
	expect_stored(d, 40, 0, SEGS * SEG + SEG);
	expect_new(d, 41, 0, 100000);
	dedup_shard_close(d);

	/* Crash between the rename and the unlinks: a contained run is back on disk. */
	copy_file(saved, second);
	CHECK(unlink(saved) == 0);
	CHECK(dedup_shard_open(&o, 3, &d) == 0);
	CHECK_EQ_U(dedup_bad_runs(d, NULL, 0), 0);
	dedup_stats(d, &st);
	CHECK_EQ_U(st.generations, 2);
	CHECK_EQ_U(st.cold_keys, SEGS * SEG);
	CHECK(access(second, F_OK) != 0);
	expect_stored(d, 40, 0, SEGS * SEG);
	/* The merged generations expire as a whole with their newest event. */
	CHECK_EQ_U(dedup_expire(d, 1000000 + 15), 0); /* level 2 (max 15) stays */
	CHECK_EQ_U(dedup_expire(d, 1000000 + 16), 1);
	CHECK_EQ_U(dedup_expire(d, 1000000 + 20), 1);
	dedup_shard_close(d);
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	snprintf(g_dir, sizeof(g_dir), "%s/tally-test-dedup-%d", t ? t : "/tmp", (int)getpid());
	rm_rf(g_dir);
	test_bloom_fp(10000, 1000000);
	test_bloom_fp(1000, 300000);
	test_bloom_fp(50000, 300000);
	test_seal_restart_rebuild();
	test_search_edges();
	test_seal_failure();
	test_write_rate();
	test_seal_three_steps();
	test_journal_coverage();
	test_expiry();
	test_compaction();
	rm_rf(g_dir);
	printf("test_dedup_cold: ok\n");
	return 0;
}
