/*
 * test_wal_group.c — wal_sync_group(), the group commit with one device flush, through a
 * counting I/O seam (libc underneath):
 *   - the first group sync of a process is a full fdatasync per shard (no durable prefill is
 *     known yet); after it, blocks inside the prefill are written back with sync_range (a
 *     start, then a wait, per shard) and ONE fdatasync flushes the device for all of them;
 *   - a block past the durable prefill gets its own fdatasync; a segment roll starts over;
 *   - opt.no_group_flush, or a seam without sync_range: one fdatasync per shard, never a
 *     sync_range;
 *   - a failed write-back fails that shard only (the flush still serves the others); a failed
 *     flush fails every shard that relied on it; nothing is published for a failed shard;
 *   - prefill ahead: once the prefill thread has made a zero-fill ahead durable, the blocks
 *     that then cross the old end of the file are still written back and flushed (no
 *     fdatasync of their own), across many prefill stretches; the thread syncs on its own
 *     file description; without prefill ahead the same crossings take full syncs;
 *   - a roll while the prefill thread is inside its fdatasync: it does not raise the new
 *     segment's durable size from the old one's (the new segment's first sync is full);
 *   - the shared flush: group commits of two threads that overlap take one fdatasync (a
 *     commit that reaches its flush first waits for one joined earlier, or for its leave); a
 *     flush already running when a commit's write-backs end never serves that commit; a
 *     failed shared flush fails every commit it served;
 *   - every record is readable back after each case.
 * The power-loss side (a written-back block is lost without the flush) is the torture suite's
 * (tests/torture/run.sh lostwrites with 2 shards).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "wal_testutil.h"

struct cio {
	struct wal_io io;
	const struct wal_io *inner;
	int fdatasyncs, starts, waits;
	int fail_wait_nth; /* fail the n-th waiting sync_range (counted by waits) with EIO */
	int fail_sync_eio; /* fail every fdatasync with EIO */
	/* The prefill thread's files: opened read-only (the appender's are write-only). */
	_Atomic int prep_opens, prep_syncs, prep_closes;
	_Atomic int prep_fds[64];
	/* block_prep: the prefill thread's fdatasync waits (prep_blocked = 1) until it is cleared. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int block_prep, prep_blocked;
	int block_flush; /* the appender files' fdatasync waits until it is cleared */
	/* Zeros the appender wrote between two blocks of a file (appender thread only). */
	size_t zero_run[64], zero_run_max;
};

static struct cio cio;

static bool is_prep_fd(int fd)
{
	return fd >= 0 && fd < 64 && cio.prep_fds[fd];
}
static int c_open(void *ctx, const char *path, int flags, mode_t mode)
{
	int fd = cio.inner->open(cio.inner->ctx, path, flags, mode);
	if (fd >= 0 && (flags & O_ACCMODE) == O_RDONLY && strstr(path, ".log")) {
		CHECK(fd < 64);
		cio.prep_fds[fd] = 1;
		cio.prep_opens++;
	}
	return fd;
}
static ssize_t c_pwrite(void *ctx, int fd, const void *b, size_t n, off_t off)
{
	static const uint8_t zeros[4096];
	bool zero = true;
	for (size_t k = 0; k < n && zero; k += sizeof zeros)
		zero = memcmp((const uint8_t *)b + k, zeros,
			      n - k < sizeof zeros ? n - k : sizeof zeros) == 0;
	if (fd >= 0 && fd < 64) {
		if (zero) {
			cio.zero_run[fd] += n;
		} else {
			if (cio.zero_run[fd] > cio.zero_run_max)
				cio.zero_run_max = cio.zero_run[fd];
			cio.zero_run[fd] = 0;
		}
	}
	return cio.inner->pwrite(cio.inner->ctx, fd, b, n, off);
}
static ssize_t c_pread(void *ctx, int fd, void *b, size_t n, off_t off)
{
	return cio.inner->pread(cio.inner->ctx, fd, b, n, off);
}
static int c_fdatasync(void *ctx, int fd)
{
	if (is_prep_fd(fd)) {
		cio.prep_syncs++;
		pthread_mutex_lock(&cio.mu);
		while (cio.block_prep) {
			cio.prep_blocked = 1;
			pthread_cond_wait(&cio.cv, &cio.mu);
		}
		pthread_mutex_unlock(&cio.mu);
		return cio.inner->fdatasync(cio.inner->ctx, fd);
	}
	pthread_mutex_lock(&cio.mu);
	cio.fdatasyncs++;
	pthread_cond_broadcast(&cio.cv);
	while (cio.block_flush)
		pthread_cond_wait(&cio.cv, &cio.mu);
	pthread_mutex_unlock(&cio.mu);
	if (cio.fail_sync_eio)
		return -EIO;
	return cio.inner->fdatasync(cio.inner->ctx, fd);
}
static int c_fsync(void *ctx, int fd)
{
	return cio.inner->fsync(cio.inner->ctx, fd);
}
static int c_ftruncate(void *ctx, int fd, off_t len)
{
	return cio.inner->ftruncate(cio.inner->ctx, fd, len);
}
static int c_close(void *ctx, int fd)
{
	if (is_prep_fd(fd)) {
		cio.prep_fds[fd] = 0;
		cio.prep_closes++;
	}
	return cio.inner->close(cio.inner->ctx, fd);
}
static int c_sync_range(void *ctx, int fd, off_t off, off_t n, bool wait)
{
	CHECK(off >= 0 && n > 0);
	if (!wait) {
		pthread_mutex_lock(&cio.mu);
		cio.starts++;
		pthread_mutex_unlock(&cio.mu);
		return cio.inner->sync_range(cio.inner->ctx, fd, off, n, false);
	}
	pthread_mutex_lock(&cio.mu);
	int nth = ++cio.waits;
	pthread_mutex_unlock(&cio.mu);
	if (nth == cio.fail_wait_nth)
		return -EIO;
	return cio.inner->sync_range(cio.inner->ctx, fd, off, n, true);
}

static void cio_init(bool with_range)
{
	memset(&cio, 0, sizeof cio);
	pthread_mutex_init(&cio.mu, NULL);
	pthread_cond_init(&cio.cv, NULL);
	cio.inner = wal_io_libc();
	cio.io = (struct wal_io){.open = c_open,
				 .pwrite = c_pwrite,
				 .pread = c_pread,
				 .fdatasync = c_fdatasync,
				 .fsync = c_fsync,
				 .ftruncate = c_ftruncate,
				 .close = c_close,
				 .sync_range = with_range ? c_sync_range : NULL,
				 .ctx = &cio};
}

static void cio_zero(void)
{
	cio.fdatasyncs = cio.starts = cio.waits = 0;
}

static void append_n(struct wal_shard *s, uint64_t n)
{
	uint8_t body[WT_BODY_MAX];
	for (uint64_t k = 0; k < n; k++) {
		uint64_t i = wal_next_offset(s);
		uint64_t seed = 100 + wal_shard_index(s);
		struct tally_view v = {body, (uint32_t)wt_event(seed, i, body)};
		CHECK_EQ(wal_append(s, wt_tenant(seed, i), &v, WT_BASE_TIME_US + (int64_t)i, NULL),
			 0);
	}
	CHECK_EQ(wal_flush(s), 0);
}

static void check_shard(const char *dir, uint16_t shard, uint64_t n)
{
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, shard, &r), 0);
	struct wal_record rec;
	uint8_t body[WT_BODY_MAX];
	for (uint64_t i = 0; i < n; i++) {
		CHECK_EQ(wal_reader_next(r, &rec), 1);
		CHECK_EQ(rec.offset, i);
		size_t len = wt_event(100 + shard, i, body);
		CHECK(rec.ev.body.len == len && memcmp(rec.ev.body.ptr, body, len) == 0);
	}
	wal_reader_close(r);
}

/* Prefill ahead off unless asked: its thread's syncs would make the counts racy. */
static struct wal *open_wal_opt(const char *dir, uint16_t shards, bool no_group, uint64_t seg,
				bool ahead)
{
	struct wal_options o = {.shard_count = shards, .io = &cio.io, .no_group_flush = no_group,
				.segment_bytes_max = seg, .prefill_bytes = 64 << 10,
				.no_prefill_ahead = !ahead};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	return w;
}

static struct wal *open_wal(const char *dir, uint16_t shards, bool no_group, uint64_t seg)
{
	return open_wal_opt(dir, shards, no_group, seg, false);
}

static void all_durable(struct wal_shard *const *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		CHECK_EQ(wal_durable_next(s[i]), wal_next_offset(s[i]));
}

/* One group sync that must succeed with exactly these counts of write-backs (each started,
   then waited for) and fdatasyncs, and leave every shard durable. */
static void sync_expect(struct wal_shard *const *s, size_t n, int waits, int fdatasyncs)
{
	cio_zero();
	CHECK_EQ(wal_sync_group(s, n), 0);
	CHECK_EQ(cio.waits, waits);
	CHECK_EQ(cio.starts, waits);
	CHECK_EQ(cio.fdatasyncs, fdatasyncs);
	all_durable(s, n);
}

/* The cheap path, the prefill boundary, a roll. */
static void test_group_flush(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walgroup");
	cio_init(true);
	struct wal *w = open_wal(dir, 3, false, 256 << 10);
	struct wal_shard *s[3] = {wal_shard(w, 0), wal_shard(w, 1), wal_shard(w, 2)};
	if (!wal_shard_group_flush(s[0])) {
		/* Not ext4/XFS/tmpfs here: the group flush is off by design; check the fallback. */
		printf("test_wal_group: file system not known to flush on fdatasync: fallback only\n");
		for (int i = 0; i < 3; i++)
			append_n(s[i], 10);
		sync_expect(s, 3, 0, 3);
		CHECK_EQ(wal_close(w), 0);
		wt_rmrf(dir);
		return;
	}
	/* 1. First sync: nothing durable is known about the files yet: one fdatasync each. */
	for (int i = 0; i < 3; i++)
		append_n(s[i], 20);
	sync_expect(s, 3, 0, 3);

	/* 2. Inside the durable prefill (64 KiB): a write-back each, ONE flush for the three. */
	for (int i = 0; i < 3; i++)
		append_n(s[i], 20);
	sync_expect(s, 3, 3, 1);

	/* 3. Only shards with new blocks take part; nothing new: no I/O at all. */
	append_n(s[1], 5);
	sync_expect(s, 3, 1, 1);
	sync_expect(s, 3, 0, 0);

	/* 4. Shard 0 writes past its durable prefill: its own fdatasync (which also flushes the
	      device for shard 2's write-back: no extra flush). */
	uint64_t n0 = wal_next_offset(s[0]);
	while (wal_next_offset(s[0]) < n0 + 2000)
		append_n(s[0], 100);
	append_n(s[2], 5);
	sync_expect(s, 3, 1, 1); /* shard 2's write-back; shard 0's fdatasync is the flush */
	/* ... and the new prefill it made durable is cheap again. */
	append_n(s[0], 5);
	sync_expect(s, 3, 1, 1);

	/* 5. A roll (256 KiB segments): the new file has nothing durable: full sync again. */
	uint64_t segs0 = 0, segs1 = 0;
	CHECK_EQ(wal_segments_list(dir, 1, NULL, 0, &segs0), 0);
	while (segs1 <= segs0) {
		append_n(s[1], 200);
		CHECK_EQ(wal_segments_list(dir, 1, NULL, 0, &segs1), 0);
	}
	append_n(s[1], 5);
	sync_expect(s, 3, 0, 1);

	uint64_t n[3] = {wal_next_offset(s[0]), wal_next_offset(s[1]), wal_next_offset(s[2])};
	CHECK_EQ(wal_close(w), 0);
	for (uint16_t i = 0; i < 3; i++)
		check_shard(dir, i, n[i]);
	wt_rmrf(dir);
}

/* no_group_flush, and a seam without sync_range: per-shard fdatasync only. */
static void test_no_group(bool with_range, bool no_group)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walgroup");
	cio_init(with_range);
	struct wal *w = open_wal(dir, 2, no_group, 0);
	struct wal_shard *s[2] = {wal_shard(w, 0), wal_shard(w, 1)};
	CHECK(!wal_shard_group_flush(s[0]) && !wal_shard_group_flush(s[1]));
	for (int round = 0; round < 3; round++) {
		append_n(s[0], 10);
		append_n(s[1], 10);
		sync_expect(s, 2, 0, 2);
	}
	CHECK_EQ(wal_close(w), 0);
	check_shard(dir, 0, 30);
	check_shard(dir, 1, 30);
	wt_rmrf(dir);
}

/* Failures: a write-back error fails its shard only; a flush error fails all that used it. */
static void test_failures(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walgroup");
	cio_init(true);
	struct wal *w = open_wal(dir, 3, false, 0);
	struct wal_shard *s[3] = {wal_shard(w, 0), wal_shard(w, 1), wal_shard(w, 2)};
	if (!wal_shard_group_flush(s[0])) {
		CHECK_EQ(wal_close(w), 0);
		wt_rmrf(dir);
		return;
	}
	for (int i = 0; i < 3; i++)
		append_n(s[i], 10);
	CHECK_EQ(wal_sync_group(s, 3), 0); /* full: the prefill is durable from here */
	for (int i = 0; i < 3; i++)
		append_n(s[i], 10);
	uint64_t d1 = wal_durable_next(s[1]);
	/* The waits run in array order: the second is shard 1's. */
	cio.fail_wait_nth = 2;
	cio_zero();
	CHECK_EQ(wal_sync_group(s, 3), -EIO);
	CHECK_EQ(cio.fdatasyncs, 1); /* the others still flushed */
	CHECK_EQ(wal_shard_failed(s[1]), -EIO);
	CHECK_EQ(wal_durable_next(s[1]), d1); /* nothing published for it */
	CHECK_EQ(wal_shard_failed(s[0]), 0);
	CHECK_EQ(wal_shard_failed(s[2]), 0);
	CHECK_EQ(wal_durable_next(s[0]), wal_next_offset(s[0]));
	CHECK_EQ(wal_durable_next(s[2]), wal_next_offset(s[2]));

	/* The flush itself fails: both shards that relied on it fail, nothing is published. */
	cio.fail_wait_nth = 0;
	append_n(s[0], 10);
	append_n(s[2], 10);
	uint64_t d0 = wal_durable_next(s[0]), d2 = wal_durable_next(s[2]);
	cio.fail_sync_eio = 1;
	CHECK_EQ(wal_sync_group(s, 3), -EIO);
	CHECK_EQ(wal_shard_failed(s[0]), -EIO);
	CHECK_EQ(wal_shard_failed(s[2]), -EIO);
	CHECK_EQ(wal_durable_next(s[0]), d0);
	CHECK_EQ(wal_durable_next(s[2]), d2);
	(void)wal_close(w);
	wt_rmrf(dir);
}

/*
 * Prefill ahead: 2 shards, 64 KiB prefill, 1 MiB segments. Each round appends a little to
 * both, waits for the prefill thread, then group-syncs. With the thread, every round after
 * the first is cheap (a write-back each, one flush) although the blocks cross the file's
 * old end many times; without it, the crossings take full syncs. Returns how many shard
 * syncs were full (a full shard has no write-back; each cheap one has one, and one flush is
 * shared unless a full sync served as it).
 */
static int prefill_rounds(bool ahead, int per_round, int *prep_syncs, size_t *zero_run_max)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walgroup");
	cio_init(true);
	struct wal *w = open_wal_opt(dir, 2, false, 1 << 20, ahead);
	struct wal_shard *s[2] = {wal_shard(w, 0), wal_shard(w, 1)};
	int full_rounds = -1;
	if (wal_shard_group_flush(s[0])) {
		full_rounds = 0;
		append_n(s[0], 20);
		append_n(s[1], 20);
		CHECK_EQ(wal_sync_group(s, 2), 0); /* the first: full */
		cio.zero_run_max = 0; /* not the segments' first prefill, written with a block */
		for (int round = 0; round < 60; round++) {
			append_n(s[0], (uint64_t)per_round); /* 60: ~8 KiB of blocks per round */
			append_n(s[1], (uint64_t)per_round);
			wal_prefill_wait(w);
			cio_zero();
			CHECK_EQ(wal_sync_group(s, 2), 0);
			all_durable(s, 2);
			/* A shard that took a full sync has no write-back: count those. */
			CHECK(cio.waits <= 2 && cio.fdatasyncs == (cio.waits < 2 ? 2 - cio.waits : 1));
			full_rounds += 2 - cio.waits;
		}
		CHECK_EQ(cio.prep_opens, cio.prep_closes);
	}
	*prep_syncs = cio.prep_syncs;
	*zero_run_max = cio.zero_run_max;
	uint64_t n0 = wal_next_offset(s[0]), n1 = wal_next_offset(s[1]);
	CHECK_EQ(wal_close(w), 0);
	check_shard(dir, 0, n0);
	check_shard(dir, 1, n1);
	wt_rmrf(dir);
	return full_rounds;
}

static void test_prefill_ahead(void)
{
	int syncs_on = 0, syncs_off = 0;
	size_t zeros_on = 0, zeros_off = 0;
	int full_on = prefill_rounds(true, 60, &syncs_on, &zeros_on);
	if (full_on < 0)
		return; /* no group flush on this file system: nothing to show */
	int full_off = prefill_rounds(false, 60, &syncs_off, &zeros_off);
	printf("test_wal_group: prefill ahead: %d full shard syncs in 60 rounds (%d by the "
	       "prefill thread, at most %zu bytes of zeros between two blocks); without it: %d\n",
	       full_on, syncs_on, zeros_on, full_off);
	CHECK_EQ(full_on, 0);
	/* The stretch (about 64 KiB) is written a step per block, never at once: a step is
	   prefill / 8 = 8 KiB, or 4 x the block (3-4 KiB here) if that is more. */
	CHECK(zeros_on > 0 && zeros_on <= (16 << 10));
	CHECK(syncs_on >= 4); /* ~480 KiB of blocks cross several 32 KiB half-prefills */
	/* Blocks bigger than a step (prefill / 8): the steps grow to four times the block, so
	   the stretch is done before the blocks reach the end of what is durable. */
	int syncs_big = 0;
	size_t zeros_big = 0;
	int full_big = prefill_rounds(true, 120, &syncs_big, &zeros_big);
	printf("test_wal_group: prefill ahead with bigger blocks: %d full shard syncs (%d by the "
	       "prefill thread, at most %zu bytes of zeros between two blocks)\n", full_big,
	       syncs_big, zeros_big);
	CHECK_EQ(full_big, 0);
	CHECK_EQ(syncs_off, 0);
	CHECK(full_off >= 4);
}

static int prep_is_blocked(void)
{
	pthread_mutex_lock(&cio.mu);
	int b = cio.prep_blocked;
	pthread_mutex_unlock(&cio.mu);
	return b;
}

/*
 * A roll while the prefill thread is inside its fdatasync: the size it noted belongs to the
 * old segment, so it must not raise the new segment's durable_size (size_gen). One shard;
 * the thread's first fdatasync is held until the roll is done. If it raised it anyway, the
 * new segment's first group sync would take the write-back shortcut over bytes whose size
 * no fdatasync has committed; it must be a full fdatasync.
 */
static void test_prefill_roll_race(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walgroup");
	cio_init(true);
	struct wal *w = open_wal_opt(dir, 1, false, 0, true);
	struct wal_shard *s[1] = {wal_shard(w, 0)};
	if (!wal_shard_group_flush(s[0])) {
		CHECK_EQ(wal_close(w), 0);
		wt_rmrf(dir);
		return;
	}
	append_n(s[0], 20);
	CHECK_EQ(wal_sync_group(s, 1), 0); /* full: the prefill is durable from here */
	pthread_mutex_lock(&cio.mu);
	cio.block_prep = 1;
	pthread_mutex_unlock(&cio.mu);
	/* About 4 KiB per step; a request comes every 64 KiB (half a prefill left), so waiting
	   20 ms per step for the thread to reach its fdatasync leaves 16 steps (320 ms) before a
	   second request could follow; once the thread has opened its file (it is on its way to
	   the fdatasync) the wait is unbounded (5 s), so a slow, loaded machine cannot add one. */
	for (int i = 0; i < 200 && !prep_is_blocked(); i++) {
		append_n(s[0], 20);
		for (int k = 0; k < 5000 && !prep_is_blocked(); k++) {
			if (k >= 20 && atomic_load(&cio.prep_opens) == atomic_load(&cio.prep_closes))
				break;
			nanosleep(&(struct timespec){0, 1000000}, NULL);
		}
	}
	CHECK_EQ(prep_is_blocked(), 1);
	CHECK_EQ(wal_sync_group(s, 1), 0);

	/* An ingest time two hours on: the next seal rolls by segment age, before the block. */
	uint64_t segs0 = 0, segs1 = 0;
	CHECK_EQ(wal_segments_list(dir, 0, NULL, 0, &segs0), 0);
	uint8_t body[WT_BODY_MAX];
	uint64_t i = wal_next_offset(s[0]);
	struct tally_view v = {body, (uint32_t)wt_event(100, i, body)};
	CHECK_EQ(wal_append(s[0], wt_tenant(100, i), &v,
			    WT_BASE_TIME_US + (int64_t)i + 7200ll * 1000000, NULL), 0);
	CHECK_EQ(wal_flush(s[0]), 0);
	CHECK_EQ(wal_segments_list(dir, 0, NULL, 0, &segs1), 0);
	CHECK_EQ(segs1, segs0 + 1);

	pthread_mutex_lock(&cio.mu);
	cio.block_prep = 0;
	pthread_cond_broadcast(&cio.cv);
	pthread_mutex_unlock(&cio.mu);
	wal_prefill_wait(w);
	CHECK_EQ(cio.prep_syncs, 1); /* only the held request: nothing else made it durable */
	sync_expect(s, 1, 0, 1);      /* the new segment: a full fdatasync, no write-back */
	CHECK_EQ(wal_close(w), 0);
	wt_rmrf(dir);
}

/* ---- the shared flush: group commits of several threads, one device flush ---- */

struct syncer_arg {
	struct wal_shard *s[2];
	bool joined; /* the caller joined for it already: wal_sync_group_joined */
	int rc;
	_Atomic bool done;
};

static void *syncer_thread(void *p)
{
	struct syncer_arg *a = p;
	a->rc = a->joined ? wal_sync_group_joined(a->s, 2) : wal_sync_group(a->s, 2);
	atomic_store(&a->done, true);
	return NULL;
}

static int fdatasyncs_now(void)
{
	pthread_mutex_lock(&cio.mu);
	int n = cio.fdatasyncs;
	pthread_mutex_unlock(&cio.mu);
	return n;
}

static void ms_sleep(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Waits up to 5 s for the seam to have seen `n` waiting sync_range calls. */
static void wait_waits(int n)
{
	for (int i = 0; i < 500; i++) {
		pthread_mutex_lock(&cio.mu);
		int k = cio.waits;
		pthread_mutex_unlock(&cio.mu);
		if (k >= n)
			return;
		ms_sleep(10);
	}
	CHECK(!"the other thread's write-backs never ran");
}

/* Waits up to 5 s for the seam to have seen `n` fdatasync calls; returns the count. */
static int wait_fdatasyncs(int n)
{
	for (int i = 0; i < 500 && fdatasyncs_now() < n; i++)
		ms_sleep(10);
	return fdatasyncs_now();
}

static void test_shared_flush(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walgroup");
	cio_init(true);
	struct wal *w = open_wal(dir, 4, false, 0);
	struct wal_shard *s[4] = {wal_shard(w, 0), wal_shard(w, 1), wal_shard(w, 2), wal_shard(w, 3)};
	if (!wal_shard_group_flush(s[0])) {
		printf("test_wal_group: no group flush on this file system: shared flush skipped\n");
		CHECK_EQ(wal_close(w), 0);
		wt_rmrf(dir);
		return;
	}
	for (int i = 0; i < 4; i++)
		append_n(s[i], 20);
	sync_expect(s, 4, 0, 4); /* the first sync is full: the prefill is durable after it */
	struct wal_shard *hi[2] = {s[2], s[3]};
	uint64_t calls0, flushes0, calls1, flushes1;

	/* 1. Joined early (as tallyd's owner does when it kicks its syncer): a group commit that
	      reaches its flush first waits for the joined one, then ONE fdatasync serves both. */
	for (int i = 0; i < 4; i++)
		append_n(s[i], 20);
	cio_zero();
	wal_shared_flush_stats(w, &calls0, &flushes0);
	wal_shared_flush_join(s[2]);
	struct syncer_arg a = {.s = {s[0], s[1]}};
	pthread_t th;
	CHECK_EQ(pthread_create(&th, NULL, syncer_thread, &a), 0);
	wait_waits(2); /* its write-backs are done: it only waits for the joined commit now */
	ms_sleep(50);
	CHECK(!atomic_load(&a.done));
	CHECK_EQ(fdatasyncs_now(), 0);
	CHECK(wal_durable_next(s[0]) < wal_next_offset(s[0]));
	CHECK_EQ(wal_sync_group_joined(hi, 2), 0);
	CHECK_EQ(pthread_join(th, NULL), 0);
	CHECK_EQ(a.rc, 0);
	CHECK_EQ(cio.waits, 4);
	CHECK_EQ(cio.fdatasyncs, 1);
	all_durable(s, 4);
	wal_shared_flush_stats(w, &calls1, &flushes1);
	CHECK_EQ(calls1 - calls0, 2);
	CHECK_EQ(flushes1 - flushes0, 1);

	/* 2. A flush that started before a commit's write-backs ended never serves it: with the
	      first commit's flush held inside fdatasync, a second commit takes its own. */
	for (int i = 0; i < 4; i++)
		append_n(s[i], 20);
	cio_zero();
	pthread_mutex_lock(&cio.mu);
	cio.block_flush = 1;
	pthread_mutex_unlock(&cio.mu);
	struct syncer_arg b1 = {.s = {s[0], s[1]}}, b2 = {.s = {s[2], s[3]}};
	pthread_t t1, t2;
	CHECK_EQ(pthread_create(&t1, NULL, syncer_thread, &b1), 0);
	CHECK_EQ(wait_fdatasyncs(1), 1); /* the first commit's flush has started */
	CHECK_EQ(pthread_create(&t2, NULL, syncer_thread, &b2), 0);
	CHECK_EQ(wait_fdatasyncs(2), 2); /* the second runs its own, beside it */
	pthread_mutex_lock(&cio.mu);
	cio.block_flush = 0;
	pthread_cond_broadcast(&cio.cv);
	pthread_mutex_unlock(&cio.mu);
	CHECK_EQ(pthread_join(t1, NULL), 0);
	CHECK_EQ(pthread_join(t2, NULL), 0);
	CHECK_EQ(b1.rc, 0);
	CHECK_EQ(b2.rc, 0);
	CHECK_EQ(cio.fdatasyncs, 2);
	all_durable(s, 4);

	/* 3. A join consumed by a leave (the syncer found nothing to sync) releases the waiter. */
	append_n(s[0], 20);
	cio_zero();
	wal_shared_flush_join(s[3]);
	struct syncer_arg c = {.s = {s[0], s[1]}};
	CHECK_EQ(pthread_create(&th, NULL, syncer_thread, &c), 0);
	ms_sleep(50);
	CHECK(!atomic_load(&c.done));
	wal_shared_flush_leave(s[3]);
	CHECK_EQ(pthread_join(th, NULL), 0);
	CHECK_EQ(c.rc, 0);
	CHECK_EQ(cio.fdatasyncs, 1);
	all_durable(s, 4);

	/* 4. A failed shared flush fails every commit it served. */
	for (int i = 0; i < 4; i++)
		append_n(s[i], 20);
	cio_zero();
	cio.fail_sync_eio = 1;
	wal_shared_flush_join(s[2]);
	struct syncer_arg d = {.s = {s[0], s[1]}};
	CHECK_EQ(pthread_create(&th, NULL, syncer_thread, &d), 0);
	wait_waits(2);
	CHECK_EQ(wal_sync_group_joined(hi, 2), -EIO);
	CHECK_EQ(pthread_join(th, NULL), 0);
	CHECK_EQ(d.rc, -EIO);
	CHECK_EQ(cio.fdatasyncs, 1);
	for (int i = 0; i < 4; i++)
		CHECK(wal_durable_next(s[i]) < wal_next_offset(s[i]));
	CHECK_EQ(wal_close(w), -EIO);
	wt_rmrf(dir);
}

int main(void)
{
	test_group_flush();
	test_no_group(true, true);
	test_no_group(false, false);
	test_failures();
	test_prefill_ahead();
	test_prefill_roll_race();
	test_shared_flush();
	printf("test_wal_group: OK\n");
	return 0;
}
