/*
 * bench/bench_rate.c — rating throughput on one core: events/s through rate_engine_feed().
 *
 *   synthetic  decoded events (real encoded bodies, decoded once up front) fed in a loop:
 *              the engine's own cost (customer lookup, period, meters, filters, fingerprint,
 *              aggregates), no I/O.
 *   wal        (--wal) a WAL is written first (untimed), then read back with the WAL reader
 *              (all shards merged by ingest time, LZ4 + checksums) and rated: what tally-rate
 *              does from an existing WAL.
 *
 * Prints one line per run and the median. Use a Release build (build-<x>-rel).
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally/event.h"
#include "tally/rate.h"
#include "tally/wal.h"

#define BENCH_POOL 65536

static const char CONFIG[] =
	"{\"currency\":\"USD\",\"period\":\"month\",\"grace_seconds\":172800,"
	" \"meters\":[{\"id\":\"calls\",\"event_name\":\"api.call\",\"aggregation\":\"count\"},"
	"  {\"id\":\"tokens\",\"event_name\":\"ai.tokens\",\"aggregation\":\"sum\",\"property\":\"tokens\","
	"   \"filter\":[{\"property\":\"model\",\"in\":[\"gpt-4\",\"gpt-4o\"]}]},"
	"  {\"id\":\"tokens_all\",\"event_name\":\"ai.tokens\",\"aggregation\":\"sum\",\"property\":\"tokens\"},"
	"  {\"id\":\"images\",\"event_name\":\"img.gen\",\"aggregation\":\"count\"}],"
	" \"plans\":[{\"id\":\"pro\",\"base_fee\":\"49.00\",\"prices\":["
	"  {\"meter\":\"calls\",\"model\":\"per_unit\",\"unit_price\":\"0.02\",\"free_units\":1000},"
	"  {\"meter\":\"tokens\",\"model\":\"graduated\",\"tiers\":[{\"up_to\":1000000,\"unit_price\":\"0.00001\"},"
	"     {\"up_to\":null,\"unit_price\":\"0.000008\"}]},"
	"  {\"meter\":\"images\",\"model\":\"per_unit\",\"unit_price\":\"0.05\",\"free_units\":10}]}],"
	" \"default_plan\":\"pro\"}";

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of this thread: on a shared machine, wall time also counts time spent waiting for
 * a core, so both figures are printed. */
static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Bodies packed back to back and walked in order, as a WAL block's records are. */
struct pool {
	uint8_t *bodies;
	size_t *off, *len;
	struct tally_event *ev;
};

static struct tally_view sv(const char *s)
{
	return (struct tally_view){(const uint8_t *)s, (uint32_t)strlen(s)};
}

static void make_pool(struct pool *p, uint32_t customers, int64_t t0)
{
	p->bodies = malloc((size_t)BENCH_POOL * 512);
	p->len = malloc(BENCH_POOL * sizeof *p->len);
	p->off = malloc(BENCH_POOL * sizeof *p->off);
	p->ev = malloc(BENCH_POOL * sizeof *p->ev);
	size_t at = 0;
	static const char *models[] = {"gpt-4", "gpt-4o", "gpt-3.5"};
	for (uint32_t i = 0; i < BENCH_POOL; i++) {
		char key[40], cust[32];
		snprintf(key, sizeof key, "req_%08u_%016llx", i, (unsigned long long)rng());
		snprintf(cust, sizeof cust, "cus_%06u", (unsigned)(rng() % customers));
		struct tally_prop props[2] = {
			{.key = sv("tokens"), .kind = TALLY_VALUE_INT, .i64 = (int64_t)(rng() % 4000)},
			{.key = sv("model"), .kind = TALLY_VALUE_STRING, .str = sv(models[rng() % 3])}};
		unsigned k = (unsigned)(rng() % 3);
		struct tally_event_in in = {.key = sv(key), .customer = sv(cust),
					    .name = sv(k == 0 ? "api.call" : k == 1 ? "ai.tokens" : "img.gen"),
					    .event_time_us = t0 + (int64_t)(rng() % (25LL * 86400 * 1000000)),
					    .prop_count = k == 1 ? 2 : 0, .props = props};
		long n = event_encode(&in, p->bodies + at, 512);
		if (n <= 0 || event_decode(p->bodies + at, (size_t)n, &p->ev[i]) != 0)
			abort();
		p->off[i] = at;
		p->len[i] = (size_t)n;
		at += (size_t)n;
	}
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	long events = 5000000, customers = 10000, runs = 5;
	bool batch = true;
	const char *wal_dir = NULL;
	int ch;
	static const struct option opts[] = {{"events", required_argument, NULL, 'n'},
					     {"customers", required_argument, NULL, 'c'},
					     {"runs", required_argument, NULL, 'r'},
					     {"wal", required_argument, NULL, 'w'},
					     {"no-batch", no_argument, NULL, 'B'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'n': events = atol(optarg); break;
		case 'c': customers = atol(optarg); break;
		case 'r': runs = atol(optarg); break;
		case 'w': wal_dir = optarg; break;
		case 'B': batch = false; break;
		case 'h':
			printf("usage: bench_rate [--events N] [--customers C] [--runs R] [--wal DIR]\n"
			       "                  [--no-batch]   (rate_engine_feed one by one)\n"
			       "  synthetic decoded events by default; --wal DIR writes N events to a\n"
			       "  new WAL in DIR (must not exist) and times reading + rating it.\n");
			return 0;
		default: return 2;
		}
	}
	if (events <= 0 || customers <= 0 || runs <= 0 || runs > 99)
		return 2;
	struct rate_config *cfg;
	char err[256];
	if (rate_config_parse(CONFIG, strlen(CONFIG), &cfg, err, sizeof err) != 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	int64_t t0;
	if (rate_time_parse("2026-01-01", &t0) != 0)
		return 1;
	struct pool p;
	make_pool(&p, (uint32_t)customers, t0);
	double rate[100], crate[100];

	if (wal_dir) {
		struct wal_options o = {.shard_count = 2};
		struct wal *w;
		if (wal_open(wal_dir, &o, &w) != 0) {
			fprintf(stderr, "wal_open %s: %s\n", wal_dir, wal_last_error());
			return 1;
		}
		int64_t ing = t0;
		for (long i = 0; i < events; i++) {
			uint32_t k = (uint32_t)(i % BENCH_POOL);
			struct tally_view body = {p.bodies + p.off[k], (uint32_t)p.len[k]};
			if (wal_append(wal_shard(w, (uint16_t)(i & 1)), sv("acme"), &body, ing += 20, NULL) != 0)
				return 1;
		}
		for (uint16_t s = 0; s < 2; s++)
			if (wal_flush(wal_shard(w, s)) != 0 || wal_sync(wal_shard(w, s), NULL) != 0)
				return 1;
		if (wal_close(w) != 0)
			return 1;
	}
	for (long r = 0; r < runs; r++) {
		struct rate_engine *e;
		struct rate_engine_opts eo = {.shards = 2, .no_fsync = true};
		if (rate_engine_create(cfg, &eo, &e) != 0)
			return 1;
		double a = now_s(), ca = cpu_s();
		long fed = 0;
		if (wal_dir) {
			/* As tally-rate does: records copied out of the reader (its views die at
			 * the next call) into a batch of RATE_BATCH_MAX, then fed together. */
			static struct rate_record rr[RATE_BATCH_MAX];
			static struct tally_event evs[RATE_BATCH_MAX];
			static uint8_t bodies[RATE_BATCH_MAX][TALLY_EVENT_BYTES_MAX];
			static uint8_t tenants[RATE_BATCH_MAX][TALLY_TENANT_BYTES_MAX];
			struct wal_reader *rd;
			struct wal_record rec;
			size_t nb = 0;
			if (wal_reader_open(wal_dir, -1, &rd) != 0 || wal_reader_seek_earliest(rd) != 0)
				return 1;
			for (;;) {
				int got = wal_reader_next(rd, &rec);
				if (got == 1 && !batch) {
					struct rate_record one = {
						.ev = rec.kind == WAL_RECORD_EVENT ? &rec.ev : NULL,
						.tenant = rec.tenant, .ingest_time_us = rec.ingest_time_us,
						.shard = rec.shard, .offset = rec.offset};
					if (rate_engine_feed(e, &one) != 0)
						return 1;
					fed++;
					continue;
				}
				if (got == 1) {
					struct rate_record *x = &rr[nb];
					*x = (struct rate_record){.ingest_time_us = rec.ingest_time_us,
								  .shard = rec.shard, .offset = rec.offset};
					if (rec.kind == WAL_RECORD_EVENT) {
						rate_event_rebase(&evs[nb], &rec.ev, bodies[nb]);
						memcpy(tenants[nb], rec.tenant.ptr, rec.tenant.len);
						x->ev = &evs[nb];
						x->tenant = (struct tally_view){tenants[nb], rec.tenant.len};
					}
					nb++;
				}
				if (nb == RATE_BATCH_MAX || (got != 1 && nb > 0)) {
					if (rate_engine_feed_batch(e, rr, nb, NULL) != 0)
						return 1;
					fed += (long)nb;
					nb = 0;
				}
				if (got != 1)
					break;
			}
			wal_reader_close(rd);
		} else {
			struct rate_record rr[RATE_BATCH_MAX];
			int64_t ing = t0;
			for (long i = 0; i < events;) {
				size_t k = 0;
				for (; k < RATE_BATCH_MAX && i < events; k++, i++)
					rr[k] = (struct rate_record){.ev = &p.ev[i % BENCH_POOL],
								     .tenant = sv("acme"),
								     .ingest_time_us = ing += 20,
								     .shard = (uint32_t)(i & 1),
								     .offset = (uint64_t)(i >> 1)};
				if (batch) {
					if (rate_engine_feed_batch(e, rr, k, NULL) != 0)
						return 1;
				} else {
					for (size_t j = 0; j < k; j++)
						if (rate_engine_feed(e, &rr[j]) != 0)
							return 1;
				}
			}
			fed = events;
		}
		double b = now_s(), cb = cpu_s();
		struct rate_stats st;
		rate_engine_stats(e, &st);
		if (r == 0) {
			/* What a state checkpoint of this engine costs (tally-rate saves one every
			 * --checkpoint-ms while busy). */
			char path[] = "/tmp/bench_rate_ckptXXXXXX";
			int fd = mkstemp(path);
			if (fd >= 0) {
				close(fd);
				uint64_t pos[2] = {0, 0};
				double s0 = now_s();
				int src = rate_engine_save(e, pos, 2, path);
				double s1 = now_s();
				struct stat sb;
				if (src == 0 && stat(path, &sb) == 0)
					printf("checkpoint: %.1f MB written in %.3f s (without fsync)\n",
					       (double)sb.st_size / 1e6, s1 - s0);
				unlink(path);
			}
		}
		rate[r] = (double)fed / (b - a);
		crate[r] = (double)fed / (cb - ca);
		printf("run %ld: %ld records in %.3f s wall = %.2f M/s, %.3f s CPU = %.2f M/s "
		       "(metered %llu, unmetered %llu)\n",
		       r + 1, fed, b - a, rate[r] / 1e6, cb - ca, crate[r] / 1e6,
		       (unsigned long long)st.metered, (unsigned long long)st.unmetered);
		rate_engine_destroy(e);
	}
	qsort(rate, (size_t)runs, sizeof rate[0], cmp_d);
	qsort(crate, (size_t)runs, sizeof crate[0], cmp_d);
	printf("bench_rate %s%s: %ld events, %ld customers, median %.2f M events/s wall, %.2f M "
	       "events/s per CPU-second, over %ld runs\n",
	       wal_dir ? "wal (read + rate)" : "synthetic (rate only)", batch ? ", batched" : ", one by one", events, customers,
	       rate[runs / 2] / 1e6, crate[runs / 2] / 1e6, runs);
	rate_config_free(cfg);
	free(p.bodies);
	free(p.len);
	free(p.off);
	free(p.ev);
	return 0;
}
