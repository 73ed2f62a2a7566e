/*
 * test_wal_threads.c — the documented threading contract, exercised: one appender thread per
 * shard (append, flush when due), one syncer thread calling wal_sync for every shard, and a
 * reader thread following all shards, with small segments so rolls (which take the sync lock)
 * happen constantly. Checks: offsets dense per shard, every record read exactly once and
 * intact, no record read at or past the durable watermark the writer had published (the
 * watermark is read AFTER the record: it only grows, so a record past it would have been
 * served before it was durable). Meant to run under TSan too (build type Tsan).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "wal_testutil.h"

#define SHARDS    2
#define PER_SHARD 20000u

static struct wal *w;
static char dir[512];
static _Atomic int appenders_done;

static void *appender(void *arg)
{
	uint16_t sh = (uint16_t)(uintptr_t)arg;
	struct wal_shard *s = wal_shard(w, sh);
	uint8_t body[WT_BODY_MAX];
	int64_t t = WT_BASE_TIME_US;
	for (uint64_t i = 0; i < PER_SHARD; i++) {
		struct tally_view v = {body, (uint32_t)wt_event(sh, i, body)};
		uint64_t off;
		CHECK_EQ(wal_append(s, wt_tenant(sh, i), &v, t + (int64_t)i, &off), 0);
		CHECK_EQ(off, i);
		if (wal_block_due(s, t + (int64_t)i + 1) || i % 97 == 0)
			CHECK_EQ(wal_flush(s), 0);
	}
	CHECK_EQ(wal_flush(s), 0);
	atomic_fetch_add(&appenders_done, 1);
	return NULL;
}

static void *syncer(void *arg)
{
	(void)arg;
	for (;;) {
		bool all = atomic_load(&appenders_done) == SHARDS;
		bool caught_up = true;
		for (uint16_t sh = 0; sh < SHARDS; sh++) {
			uint64_t d;
			CHECK_EQ(wal_sync(wal_shard(w, sh), &d), 0);
			CHECK(d <= wal_written_next(wal_shard(w, sh)));
			if (d < PER_SHARD)
				caught_up = false;
		}
		if (all && caught_up)
			return NULL;
		struct timespec ts = {0, 100000}; /* group commit every ~100 us */
		nanosleep(&ts, NULL);
	}
}

static void *reader(void *arg)
{
	(void)arg;
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, -1, &r), 0);
	uint64_t seen[SHARDS] = {0};
	uint8_t body[WT_BODY_MAX];
	uint64_t total = 0;
	while (total < (uint64_t)SHARDS * PER_SHARD) {
		struct wal_record rec;
		int got = wal_reader_next(r, &rec);
		CHECK(got >= 0);
		if (got == 0) {
			CHECK_EQ(wal_reader_wait(r, 100), 0);
			continue;
		}
		CHECK(rec.shard < SHARDS);
		CHECK(rec.offset < wal_durable_next(wal_shard(w, rec.shard)));
		CHECK_EQ(rec.offset, seen[rec.shard]);
		size_t len = wt_event(rec.shard, rec.offset, body);
		CHECK(rec.ev.body.len == len && memcmp(rec.ev.body.ptr, body, len) == 0);
		seen[rec.shard]++;
		total++;
	}
	struct wal_record rec;
	CHECK_EQ(wal_reader_next(r, &rec), 0);
	wal_reader_close(r);
	return NULL;
}

int main(void)
{
	wt_tmpdir(dir, sizeof dir, "walthreads");
	struct wal_options o = {
	    .shard_count = SHARDS, .block_bytes_max = 16 << 10, .segment_bytes_max = 64 << 10};
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	pthread_t a[SHARDS], y, r;
	CHECK(pthread_create(&r, NULL, reader, NULL) == 0);
	CHECK(pthread_create(&y, NULL, syncer, NULL) == 0);
	for (uintptr_t i = 0; i < SHARDS; i++)
		CHECK(pthread_create(&a[i], NULL, appender, (void *)i) == 0);
	for (int i = 0; i < SHARDS; i++)
		pthread_join(a[i], NULL);
	pthread_join(y, NULL);
	pthread_join(r, NULL);
	for (uint16_t sh = 0; sh < SHARDS; sh++)
		CHECK_EQ(wal_durable_next(wal_shard(w, sh)), PER_SHARD);
	CHECK_EQ(wal_close(w), 0);
	struct wal_segment_info segs[256];
	size_t n;
	CHECK_EQ(wal_segments_list(dir, 0, segs, 256, &n), 0);
	CHECK(n >= 3);
	wt_rmrf(dir);
	printf("test_wal_threads: OK (%zu segments in shard 0)\n", n);
	return 0;
}
