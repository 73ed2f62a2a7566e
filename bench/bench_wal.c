/*
 * bench_wal — WAL throughput and footprint on realistic ~150-byte events. Prints figures;
 * asserts nothing about speed (the machine is shared). Build with -DCMAKE_BUILD_TYPE=Release.
 *
 * Phases (each on a fresh WAL, one shard, default 64 KiB blocks):
 *   append/nosync    the appender thread alone: append + block sealing (LZ4, XXH3, pwrite)
 *   append/fsync     + a syncer thread doing group commit (wal_sync whenever something new was
 *                    written); the rate is events made DURABLE per second
 *   append/fsync+Nms the same with N ms injected before every sync (wal_io_delay seam)
 *   footprint        bytes per event on disk (headers and index included), compression ratio
 *   read             wal_reader_next over everything (checksum, LZ4, event_decode per record)
 *
 * Events: --gen wal (default): api.call / ai.tokens / image.generated / storage.snapshot /
 * sms.sent with 24-char random keys, customers cus_NNNNNN, current event times (the generator in
 * tests/wal_testutil.h); --gen harness: the tally-bench generator at its natural size;
 * --gen harness150: the tally-bench generator padded to 150 bytes with random text.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "bench_gen.h"
#include "wal_testutil.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of the calling thread: the machine is shared, so rates per CPU-second of the
   appender/reader thread are printed beside wall-clock rates. */
static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint32_t accel;

/* Distinct events, cycled; packed densely so that, as in the broker (bodies in a just-received
   network buffer), the source is in cache. A block holds ~450 events: no repeats inside one. */
#define DISTINCT 16384u

static uint8_t *bodies;
static uint32_t *body_off;
static uint32_t *body_len;
static uint64_t body_bytes_total;

static void gen_events(const char *gen)
{
	bodies = malloc((size_t)DISTINCT * WT_BODY_MAX);
	body_len = malloc(sizeof(uint32_t) * DISTINCT);
	body_off = malloc(sizeof(uint32_t) * DISTINCT);
	CHECK(bodies && body_len && body_off);
	uint32_t at = 0;
	struct bench_gen g;
	struct bench_gen_config c = {
	    .seed = 7, .customers = 5000, .base_time_us = WT_BASE_TIME_US, .time_step_us = 50};
	static struct bench_gen_event e;
	bool harness = strncmp(gen, "harness", 7) == 0;
	if (harness) {
		c.payload_bytes = strcmp(gen, "harness150") == 0 ? 150 : 0;
		CHECK(bench_gen_init(&g, &c) == 0);
	}
	for (uint32_t i = 0; i < DISTINCT; i++) {
		uint8_t *b = bodies + at;
		body_off[i] = at;
		if (harness) {
			bench_gen_next(&g, &e);
			long n = event_encode(&e.in, b, WT_BODY_MAX);
			CHECK(n > 0);
			body_len[i] = (uint32_t)n;
		} else {
			body_len[i] = (uint32_t)wt_event(99, i, b);
		}
		at += body_len[i];
	}
}

struct syncer {
	struct wal_shard *s;
	_Atomic int stop;
	uint64_t syncs;
};

static void *syncer_main(void *arg)
{
	struct syncer *y = arg;
	while (!atomic_load(&y->stop)) {
		if (wal_written_next(y->s) > wal_durable_next(y->s)) {
			CHECK_EQ(wal_sync(y->s, NULL), 0);
			y->syncs++;
		} else {
			struct timespec ts = {0, 20000};
			nanosleep(&ts, NULL);
		}
	}
	return NULL;
}

struct result {
	double append_s;
	double append_cpu_s;
	uint64_t disk_bytes;
	uint64_t syncs;
};

static void run_append(const char *dir, uint64_t n, int mode, uint32_t delay_us, struct result *res)
{
	wt_rmrf(dir);
	struct wal_io_delay d;
	wal_io_delay_init(&d, NULL, delay_us);
	struct wal_options o = {.shard_count = 1, .io = &d.io, .lz4_acceleration = accel};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	struct syncer y = {.s = s};
	pthread_t th;
	if (mode)
		CHECK(pthread_create(&th, NULL, syncer_main, &y) == 0);
	static const char *tenants[] = {"acme", "globex", "initech", ""};
	double t0 = now_s(), c0 = cpu_s();
	int64_t ingest = WT_BASE_TIME_US;
	for (uint64_t i = 0; i < n; i++) {
		uint32_t k = (uint32_t)(i % DISTINCT);
		struct tally_view b = {bodies + body_off[k], body_len[k]};
		struct tally_view t = {(const uint8_t *)tenants[i & 3],
				       (uint32_t)strlen(tenants[i & 3])};
		if ((i & 63) == 0)
			ingest += 30; /* a clock read per batch in the broker */
		int rc = wal_append(s, t, &b, ingest, NULL);
		if (rc != 0) {
			fprintf(stderr, "append: %s\n", wal_last_error());
			exit(1);
		}
	}
	CHECK_EQ(wal_flush(s), 0);
	res->append_cpu_s = cpu_s() - c0;
	if (mode) {
		while (wal_durable_next(s) < n) {
			struct timespec ts = {0, 20000};
			nanosleep(&ts, NULL);
		}
		atomic_store(&y.stop, 1);
		pthread_join(th, NULL);
	}
	res->append_s = now_s() - t0;
	res->syncs = y.syncs;
	CHECK_EQ(wal_close(w), 0);
	struct wal_segment_info segs[64];
	size_t ns;
	CHECK_EQ(wal_segments_list(dir, 0, segs, 64, &ns), 0);
	res->disk_bytes = 0;
	for (size_t i = 0; i < ns && i < 64; i++) {
		res->disk_bytes += segs[i].file_bytes;
		char idx[WAL_PATH_BYTES_MAX + 8];
		snprintf(idx, sizeof idx, "%.*s.idx", (int)(strlen(segs[i].path) - 4),
			 segs[i].path);
		struct stat st;
		if (stat(idx, &st) == 0)
			res->disk_bytes += (uint64_t)st.st_size;
	}
}

static double run_read(const char *dir, uint64_t n, uint64_t *raw_bytes, double *cpu)
{
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
	struct wal_record rec;
	double t0 = now_s(), c0 = cpu_s();
	uint64_t cnt = 0, x = 0;
	while (wal_reader_next(r, &rec) == 1) {
		cnt++;
		x += rec.ev.body.len;
	}
	double dt = now_s() - t0;
	*cpu = cpu_s() - c0;
	CHECK_EQ(cnt, n);
	*raw_bytes = x;
	wal_reader_close(r);
	return dt;
}

static void usage(void)
{
	printf(
	    "usage: bench_wal [-n EVENTS] [--gen wal|harness|harness150] [--delay-us US] [--accel "
	    "N] [--dir DIR]\n"
	    "Prints append (no fsync / group-commit fsync / fsync + injected latency), bytes per\n"
	    "event on disk, compression ratio and read rates for one WAL shard.\n");
}

int main(int argc, char **argv)
{
	uint64_t n = 1000000;
	const char *gen = "wal";
	uint32_t delay_us = 2000;
	char dir[512] = "";
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage();
			return 0;
		} else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
			n = strtoull(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--gen") && i + 1 < argc) {
			gen = argv[++i];
		} else if (!strcmp(argv[i], "--delay-us") && i + 1 < argc) {
			delay_us = (uint32_t)strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--accel") && i + 1 < argc) {
			accel = (uint32_t)strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
			snprintf(dir, sizeof dir, "%s", argv[++i]);
		} else {
			usage();
			return 2;
		}
	}
	if (!dir[0])
		wt_tmpdir(dir, sizeof dir, "benchwal");
	gen_events(gen);
	for (uint32_t i = 0; i < DISTINCT; i++)
		body_bytes_total += body_len[i];
	double avg_body = (double)body_bytes_total / DISTINCT;
	printf("bench_wal: %" PRIu64 " events, generator %s, mean body %.1f bytes, 1 shard\n", n,
	       gen, avg_body);

	struct result r0, r1, r2;
	run_append(dir, n, 0, 0, &r0);
	uint64_t body_read;
	double read_cpu;
	double read_s = run_read(dir, n, &body_read, &read_cpu);
	run_append(dir, n, 1, 0, &r1);
	run_append(dir, n, 1, delay_us, &r2);
	double mb = (double)body_read / 1e6;
	printf("append/nosync        %10.0f ev/s  %8.1f MB/s  (%.0f ev per CPU-second)\n",
	       n / r0.append_s, mb / r0.append_s, n / r0.append_cpu_s);
	printf("append/fsync         %10.0f ev/s  %8.1f MB/s  (durable; %" PRIu64
	       " syncs, %.0f ev/sync)\n",
	       n / r1.append_s, mb / r1.append_s, r1.syncs, r1.syncs ? (double)n / r1.syncs : 0.0);
	printf("append/fsync+%uus  %10.0f ev/s  %8.1f MB/s  (durable; %" PRIu64
	       " syncs, %.0f ev/sync)\n",
	       delay_us, n / r2.append_s, mb / r2.append_s, r2.syncs,
	       r2.syncs ? (double)n / r2.syncs : 0.0);
	printf(
	    "footprint            %10.1f bytes/event on disk (body %.1f), compression ratio %.2f\n",
	    (double)r0.disk_bytes / n, (double)body_read / n, (double)body_read / r0.disk_bytes);
	printf("read                 %10.0f ev/s  %8.1f MB/s  (%.0f ev per CPU-second)\n",
	       n / read_s, mb / read_s, n / read_cpu);
	wt_rmrf(dir);
	return 0;
}
