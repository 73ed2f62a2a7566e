/*
 * test_wal_xproc.c — the WAL across processes:
 *   - a forked writer appends (flushing blocks it syncs only later, so written-but-undurable
 *     data sits in the file) while this process follows with a reader: the reader never yields
 *     a record at or past the writer's sync target of the moment, sees every durable record
 *     exactly once and in order, with the right content; at the end the writer leaves written
 *     but unsynced blocks and dies: the reader stops exactly at the durable watermark; halfway
 *     the writer closes and reopens (recovery, republish) under the following reader;
 *   - kill -9 of a writer at random moments: recovery keeps at least every durable record;
 *   - kill -9 of a process saving consumer checkpoints in a loop: the file is always the old
 *     or the new version, never torn.
 */
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include "wal_testutil.h"

struct shared {
	_Atomic uint64_t sync_target; /* stored BEFORE wal_sync: an upper bound of durable */
	_Atomic uint64_t durable;     /* stored AFTER wal_sync returned */
	_Atomic int done;
};

static struct shared *sh;

static void sleep_us(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
	nanosleep(&ts, NULL);
}

static void writer_child(const char *dir, uint64_t total, bool crash_tail)
{
	/* 1 MiB blocks: a batch (<= 300 events) never fills one, so blocks are sealed only by
	   wal_flush, and a segment roll (which syncs and publishes) only ever publishes the
	   previous sync target: sync_target stays a strict upper bound of durable. */
	struct wal_options o = {
	    .shard_count = 1, .block_bytes_max = 1 << 20, .segment_bytes_max = 256 << 10};
	struct wal *w;
	if (wal_open(dir, &o, &w) != 0)
		_exit(2);
	struct wal_shard *s = wal_shard(w, 0);
	uint8_t body[WT_BODY_MAX];
	uint64_t r = 12345;
	bool restarted = false;
	while (wal_next_offset(s) < total) {
		if (!restarted && total != UINT64_MAX && wal_next_offset(s) > total / 2) {
			/* The writer restarts while the reader follows: recovery, republish. */
			if (wal_close(w) != 0 || wal_open(dir, &o, &w) != 0)
				_exit(8);
			s = wal_shard(w, 0);
			restarted = true;
		}
		r = wt_mix(r);
		uint64_t batch = 1 + r % 300;
		for (uint64_t k = 0; k < batch; k++) {
			uint64_t i = wal_next_offset(s);
			struct tally_view v = {body, (uint32_t)wt_event(5, i, body)};
			if (wal_append(s, wt_tenant(5, i), &v, WT_BASE_TIME_US + (int64_t)i,
				       NULL) != 0)
				_exit(3);
		}
		if (wal_flush(s) != 0)
			_exit(4);
		if (r % 3 == 0)
			sleep_us(300); /* written, not durable, for a while */
		atomic_store_explicit(&sh->sync_target, wal_written_next(s), memory_order_release);
		uint64_t d;
		if (wal_sync(s, &d) != 0)
			_exit(5);
		atomic_store_explicit(&sh->durable, d, memory_order_release);
	}
	if (crash_tail) {
		/* Written but never synced, then die without closing. */
		for (int k = 0; k < 500; k++) {
			uint64_t i = wal_next_offset(s);
			struct tally_view v = {body, (uint32_t)wt_event(5, i, body)};
			if (wal_append(s, wt_tenant(5, i), &v, WT_BASE_TIME_US + (int64_t)i,
				       NULL) != 0)
				_exit(6);
		}
		if (wal_flush(s) != 0)
			_exit(7);
	}
	atomic_store_explicit(&sh->done, 1, memory_order_release);
	_exit(0);
}

static void test_follow(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walxproc");
	struct wal_options o = {.shard_count = 1};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_close(w), 0);
	memset(sh, 0, sizeof *sh);
	const uint64_t total = 30000;
	struct wal_reader *rd;
	CHECK_EQ(wal_reader_open(dir, 0, &rd), 0);
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0)
		writer_child(dir, total, true);
	uint64_t expect = 0;
	uint8_t body[WT_BODY_MAX];
	unsigned waits = 0;
	for (;;) {
		struct wal_record rec;
		int got = wal_reader_next(rd, &rec);
		CHECK(got >= 0);
		if (got == 1) {
			uint64_t bound =
			    atomic_load_explicit(&sh->sync_target, memory_order_acquire);
			CHECK(rec.offset < bound); /* never past what a sync had been asked for */
			CHECK_EQ(rec.offset, expect);
			size_t len = wt_event(5, expect, body);
			CHECK(rec.ev.body.len == len && memcmp(rec.ev.body.ptr, body, len) == 0);
			expect++;
			continue;
		}
		if (atomic_load_explicit(&sh->done, memory_order_acquire)) {
			/* Drain: only durable records, then nothing. */
			while ((got = wal_reader_next(rd, &rec)) == 1) {
				CHECK_EQ(rec.offset, expect);
				expect++;
			}
			CHECK_EQ(got, 0);
			break;
		}
		CHECK_EQ(wal_reader_wait(rd, 200), 0);
		waits++;
		CHECK(waits < 100000);
	}
	int status;
	CHECK(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	uint64_t durable = atomic_load(&sh->durable);
	CHECK(durable >= total);
	CHECK_EQ(expect, durable); /* every durable record once; none of the unsynced tail */
	CHECK_EQ(wal_reader_durable_next(rd, 0), durable);
	wal_reader_close(rd);
	printf("follow: %" PRIu64 " records read across processes, %u waits\n", expect, waits);
	wt_rmrf(dir);
}

static void test_kill_writer(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walxproc");
	struct wal_options o = {.shard_count = 1};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_close(w), 0);
	uint64_t prev_durable = 0;
	for (int round = 0; round < 8; round++) {
		memset(sh, 0, sizeof *sh);
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0)
			writer_child(dir, UINT64_MAX, false);
		sleep_us(5000 + (long)(wt_mix((uint64_t)round) % 40000));
		CHECK(kill(pid, SIGKILL) == 0);
		int status;
		CHECK(waitpid(pid, &status, 0) == pid);
		uint64_t durable = atomic_load(&sh->durable);
		CHECK_EQ(wal_open(dir, &o, &w), 0);
		uint64_t next = wal_next_offset(wal_shard(w, 0));
		CHECK(next >= durable);
		CHECK(next >= prev_durable);
		CHECK_EQ(wal_close(w), 0);
		prev_durable = next;
	}
	/* Everything recovered reads back intact and dense. */
	struct wal_reader *rd;
	CHECK_EQ(wal_reader_open(dir, 0, &rd), 0);
	struct wal_record rec;
	uint64_t n = 0;
	uint8_t body[WT_BODY_MAX];
	int got;
	while ((got = wal_reader_next(rd, &rec)) == 1) {
		CHECK_EQ(rec.offset, n);
		size_t len = wt_event(5, n, body);
		CHECK(rec.ev.body.len == len && memcmp(rec.ev.body.ptr, body, len) == 0);
		n++;
	}
	CHECK_EQ(got, 0);
	CHECK_EQ(n, prev_durable);
	wal_reader_close(rd);
	printf("kill -9 writer: 8 rounds, %" PRIu64 " records recovered\n", n);
	wt_rmrf(dir);
}

static void test_kill_checkpoint(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walxproc");
	enum { N = 16 };
	uint64_t pos[N];
	for (int i = 0; i < N; i++)
		pos[i] = 0;
	CHECK_EQ(wal_checkpoint_save(dir, "rating", pos, N), 0);
	uint64_t last_seen = 0;
	for (int round = 0; round < 30; round++) {
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			uint64_t p[N];
			for (uint64_t v = last_seen + 1;; v++) {
				for (int i = 0; i < N; i++)
					p[i] = v * 1000 + (uint64_t)i;
				if (wal_checkpoint_save(dir, "rating", p, N) != 0)
					_exit(2);
			}
		}
		sleep_us((long)(wt_mix((uint64_t)round) % 5000));
		CHECK(kill(pid, SIGKILL) == 0);
		int status;
		CHECK(waitpid(pid, &status, 0) == pid);
		CHECK(WIFSIGNALED(status));
		uint64_t got[N];
		CHECK_EQ(wal_checkpoint_load(dir, "rating", got, N), 0);
		uint64_t v = got[0] / 1000;
		for (int i = 0; i < N; i++)
			CHECK_EQ(got[i],
				 v * 1000 + (uint64_t)i * (v != 0)); /* one consistent version */
		CHECK(v >= last_seen);
		last_seen = v;
	}
	printf("kill -9 checkpoint: 30 rounds, last version %" PRIu64 "\n", last_seen);
	wt_rmrf(dir);
}

int main(void)
{
	sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(sh != MAP_FAILED);
	test_follow();
	test_kill_writer();
	test_kill_checkpoint();
	printf("test_wal_xproc: OK\n");
	return 0;
}
