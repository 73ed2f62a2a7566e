/*
 * wal_writer.c — the WAL writer: open/create, crash recovery, append into the open block,
 * block sealing (LZ4 + XXH3-64, one pwrite), segment roll, sync and the durable watermark.
 * Format: docs/wal-format.md. Public contract and threading: include/tally/wal.h.
 *
 * Invariants (per shard):
 *   - Only the newest segment can end in a torn block: a segment is fdatasync'ed before the
 *     next one is created (and the directory fsync'ed after), so recovery scans only the
 *     newest segment; sealed ones are checked for continuity (and fully with verify_sealed).
 *   - durable_next <= written_next <= next_offset. written_next is the first offset of the
 *     open block; durable_next only moves forward and only after a successful fdatasync that
 *     covered every block below it; never after the shard failed.
 *   - The file bytes [0, seg_bytes) of the current segment are exactly the valid blocks
 *     written; a failed pwrite is truncated back to seg_bytes before anything else happens
 *     (if that truncate fails the shard is failed).
 *   - No allocation after wal_open: the open block buffer, the compression buffer and the LZ4
 *     state are allocated once per shard.
 *   - Drop-behind drops from the page cache only bytes below the written-back mark (clean and
 *     durable), so it never changes what is on disk; a sealed segment leaves it whole.
 *   - A shared device flush (comb_*) covers only group commits whose write-backs had all
 *     completed before it started; each publishes its watermarks only after it returned 0.
 *
 * Threads: see wal.h. `sync_lock` serialises wal_sync() / wal_sync_group() with the appender's
 * segment roll (the only point where the appender changes `fd`) and with its cut-back after a
 * failed write (which lowers durable_size), so the syncer always syncs the fd that holds every
 * block below the written_next it loaded, and never takes the write-back shortcut for bytes
 * whose allocation is not durable. The prefill thread (prep_main, one per wal_open) takes
 * sync_lock only to note a shard's size and to raise durable_size after its own fdatasync,
 * which runs outside the lock on a separate file description ("Prefill ahead" below).
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <lz4.h>

#include "wal_internal.h"

struct wal_shard {
	/* Shared between the appender and the syncer (and readers of the watermark). Each on
	   its own cache line: the appender writes written_next, the syncer durable_next. */
	_Alignas(64) _Atomic uint64_t written_next;
	_Alignas(64) _Atomic uint64_t durable_next;
	_Atomic int failed; /* 0 or the fatal -errno; set once, never cleared */
	pthread_mutex_t sync_lock;
	uint8_t *wm; /* shared watermark page (mmap of shard-NN/durable) */
	/* Group flush (wal_sync_group). The appender stores written_bytes (segment bytes of the
	   blocks below written_next) before written_next, and file_bytes_pub (the file's size,
	   prefill included) after the bytes are written. Under sync_lock: durable_size (bytes of
	   the current segment file, from 0, allocated and written with their size committed by
	   an fdatasync: overwriting them needs no metadata) and wb_from (bytes below it were
	   written back or synced). A segment roll and a shrinking truncate lower both. */
	_Atomic uint64_t written_bytes;
	_Atomic uint64_t file_bytes_pub;
	uint64_t durable_size;
	uint64_t wb_from;
	uint64_t dropped_to; /* under sync_lock: current segment bytes below it left the cache */
	dev_t dev;         /* st_dev of the shard's directory */
	bool group_flush;  /* io->sync_range exists, the file system flushes on fdatasync, option */
	/* Under sync_lock: bumped by a segment roll and a shrinking truncate, so the prefill
	   thread never raises durable_size from a size that no longer holds. */
	uint64_t size_gen;
	_Atomic bool prep_want; /* the appender zero-filled ahead: the prefill thread syncs */

	/* Appender-owned below. */
	_Alignas(64) struct wal *w;
	uint16_t index;
	const struct wal_io *io;
	int fd;     /* current (newest) segment, O_WRONLY */
	int idx_fd; /* its sparse index, or -1 */
	uint64_t seg_base;
	uint64_t seg_bytes;          /* valid bytes in the current segment */
	uint64_t file_bytes;         /* its size: seg_bytes + zeros written ahead (prefill) */
	uint64_t ahead_from, ahead_end; /* prefill ahead in progress: file_bytes when it began,
					   and where it ends; ahead_end == 0 if none */
	int64_t seg_first_ingest_us; /* INT64_MIN while the segment is empty */
	uint64_t idx_bytes;
	uint64_t idx_last_pos; /* position of the last indexed block, UINT64_MAX if none */
	bool idx_ok;

	uint8_t *raw; /* open block: raw records */
	uint32_t raw_len;
	uint32_t count;
	uint64_t block_first_offset;
	int64_t block_first_ingest_us;
	int64_t block_prev_ingest_us;
	int64_t block_min_event_us;
	int64_t block_max_event_us;

	uint64_t next_offset;
	int64_t last_ingest_us; /* INT64_MIN before the first record ever */
	uint64_t discard_first;
	uint64_t discard_count;

	uint8_t *out; /* header + compressed payload */
	void *lz4_state;
	char dir[WAL_PATH_BYTES_MAX];
};

#define COMB_SLOTS 64 /* >= the callers of wal_sync_group at once (tallyd: its threads) */

struct wal {
	struct wal_options opt;
	uint16_t shard_count;
	int lock_fd;
	struct wal_shard **shards;
	/* The prefill thread (prefill ahead): prep_mu guards prep_stop and the wait on prep_cv. */
	pthread_t prep_th;
	bool prep_started, prep_stop, prep_busy;
	pthread_mutex_t prep_mu;
	pthread_cond_t prep_cv, prep_idle_cv; /* the thread waits on prep_cv; wal_prefill_wait on idle */
	/* The shared device flush (comb_*, "Shared flush" in wal.h): concurrent wal_sync_group
	   calls on shards of device comb_dev take one fdatasync together. Under comb_mu. */
	bool comb_on;
	dev_t comb_dev;
	pthread_mutex_t comb_mu;
	pthread_cond_t comb_cv;
	unsigned comb_active; /* callers joined and not yet covered by a started flush */
	unsigned comb_ready;  /* of them, those waiting at their flush step */
	uint64_t comb_next; /* generation of the cohort now forming */
	struct comb_slot {
		uint64_t gen; /* the generation whose flush ended here, 0 if none */
		int rc;
	} comb_slot[COMB_SLOTS];
	int comb_err; /* sticky: the first failed flush's -errno */
	uint64_t comb_calls, comb_flushes;
	char data_dir[WAL_PATH_BYTES_MAX];
};

static const char *shard_name(const struct wal_shard *s)
{
	const char *p = strrchr(s->dir, '/');
	return p ? p + 1 : s->dir;
}

static void group_flush_probe(struct wal_shard *s);

/* ---------- watermark page ---------- */

static void wm_publish(struct wal_shard *s, uint64_t durable)
{
	/* Release: a reader that sees `durable` (acquire) also sees the blocks written before
	   the fdatasync that made them durable (they are in the page cache already). */
	__atomic_store_n((uint64_t *)(s->wm + WAL_WM_OFF_DURABLE), durable, __ATOMIC_RELEASE);
	__atomic_add_fetch((uint32_t *)(s->wm + WAL_WM_OFF_SEQ), 1, __ATOMIC_RELEASE);
	/* Shared (not private) futex: waiters are in other processes mapping the same file. */
	syscall(SYS_futex, (uint32_t *)(s->wm + WAL_WM_OFF_SEQ), FUTEX_WAKE, INT_MAX, NULL, NULL,
		0);
}

/* Called with sync_lock held. */
static void publish_durable(struct wal_shard *s, uint64_t durable)
{
	if (atomic_load_explicit(&s->failed, memory_order_relaxed) != 0)
		return;
	if (durable <= atomic_load_explicit(&s->durable_next, memory_order_relaxed))
		return;
	atomic_store_explicit(&s->durable_next, durable, memory_order_release);
	wm_publish(s, durable);
}

static int wm_open(struct wal_shard *s)
{
	char path[WAL_PATH_BYTES_MAX];
	int n = snprintf(path, sizeof path, "%s/durable", s->dir);
	if (n < 0 || (size_t)n >= sizeof path)
		return -ENAMETOOLONG;
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	int rc = 0;
	if (ftruncate(fd, WAL_WATERMARK_BYTES) < 0) {
		rc = -errno;
		goto out_close;
	}
	void *p = mmap(NULL, WAL_WATERMARK_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		rc = -errno;
		goto out_close;
	}
	s->wm = p;
	wal_put_u32(s->wm + WAL_WM_OFF_MAGIC, WAL_WATERMARK_MAGIC);
	wal_put_u32(s->wm + WAL_WM_OFF_VERSION, WAL_FORMAT_VERSION);
out_close:
	close(fd);
	return rc;
}

/* ---------- index ---------- */

static void idx_add(struct wal_shard *s, uint64_t offset, uint64_t pos)
{
	if (!s->idx_ok || s->idx_fd < 0)
		return;
	if (s->idx_last_pos != UINT64_MAX && pos - s->idx_last_pos < WAL_INDEX_INTERVAL_BYTES)
		return;
	uint8_t e[WAL_INDEX_ENTRY_BYTES];
	wal_put_u64(e, offset);
	wal_put_u64(e + 8, pos);
	ssize_t r = s->io->pwrite(s->io->ctx, s->idx_fd, e, sizeof e, (off_t)s->idx_bytes);
	if (r != (ssize_t)sizeof e) {
		/* The index is only a hint (readers validate every entry): stop extending it for
		   this segment rather than leave a hole. */
		s->idx_ok = false;
		return;
	}
	s->idx_bytes += sizeof e;
	s->idx_last_pos = pos;
}

static void idx_scan_cb(void *ctx, uint64_t offset, uint64_t pos)
{
	idx_add(ctx, offset, pos);
}

static int idx_open_fresh(struct wal_shard *s, bool new_segment)
{
	char path[WAL_PATH_BYTES_MAX];
	int rc = wal_path_segment(path, sizeof path, s->dir, s->seg_base, "idx");
	if (rc < 0)
		return rc;
	/* For a recovered segment no O_TRUNC: truncating a non-empty file to zero makes ext4
	   (auto_da_alloc) flush it on close; stale entries are cut once rewritten (idx_finish).
	   A new segment's index should not exist: O_TRUNC drops a stale one. */
	s->idx_fd = s->io->open(s->io->ctx, path,
				O_WRONLY | O_CREAT | O_CLOEXEC | (new_segment ? O_TRUNC : 0), 0644);
	s->idx_bytes = 0;
	s->idx_last_pos = UINT64_MAX;
	s->idx_ok = s->idx_fd >= 0;
	return 0;
}

/* Cuts the index after the entries written since idx_open_fresh (recovery rewrite). */
static void idx_finish(struct wal_shard *s)
{
	if (s->idx_fd >= 0 && s->idx_ok &&
	    s->io->ftruncate(s->io->ctx, s->idx_fd, (off_t)s->idx_bytes) < 0)
		s->idx_ok = false;
}

/* ---------- append ---------- */

static void block_reset(struct wal_shard *s)
{
	s->raw_len = 0;
	s->count = 0;
}

static int write_all(struct wal_shard *s, const uint8_t *buf, size_t n, uint64_t off)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r =
		    s->io->pwrite(s->io->ctx, s->fd, buf + done, n - done, (off_t)(off + done));
		if (r == -EINTR)
			continue;
		if (r < 0)
			return (int)r;
		if (r == 0)
			return -EIO; /* no progress: treat as a failed write */
		done += (size_t)r;
	}
	return 0;
}

static int set_failed(struct wal_shard *s, int err, const char *what)
{
	int expected = 0;
	atomic_compare_exchange_strong(&s->failed, &expected, -EIO);
	wal_set_error("%s: %s failed (%s): shard is failed, nothing more is acknowledged",
		      shard_name(s), what, strerror(-err));
	return -EIO;
}

/*
 * Prefill (opt.prefill_bytes): before a block would extend the segment file, zeros are written
 * from the file's end to prefill_bytes past the block's end (capped near the segment size).
 * The next group commit makes them durable together with the block; the blocks after it then
 * overwrite allocated, initialised bytes inside the file's size, and their fdatasync flushes
 * data only, without the file-system journal commit that a size change needs (docs/wal-format.md
 * "Prefill"; bench/bench_fsync.c measures the difference). Zeros past the last block are what a
 * torn tail looks like to recovery, which cuts them. A failed zero write is ignored: the block is
 * then simply appended. Appender thread.
 */
static uint64_t prefill_end(const struct wal_shard *s, uint64_t need_end)
{
	const struct wal_options *o = &s->w->opt;
	uint64_t cap = o->segment_bytes_max + WAL_BLOCK_HEADER_BYTES + WAL_BLOCK_STORED_BYTES_MAX;
	uint64_t end = need_end + o->prefill_bytes;
	if (end > cap)
		end = cap > need_end ? cap : need_end;
	return end;
}

/* Zeros from the file's end up to `end`, at most `max` bytes of them. */
static void prefill_upto(struct wal_shard *s, uint64_t end, uint64_t max)
{
	static const uint8_t zeros[64 << 10];
	if (end > s->file_bytes && end - s->file_bytes > max)
		end = s->file_bytes + max;
	while (s->file_bytes < end) {
		uint64_t n = end - s->file_bytes;
		if (n > sizeof zeros)
			n = sizeof zeros;
		ssize_t r = s->io->pwrite(s->io->ctx, s->fd, zeros, (size_t)n, (off_t)s->file_bytes);
		if (r == -EINTR)
			continue;
		if (r <= 0)
			break;
		s->file_bytes += (uint64_t)r;
	}
	atomic_store_explicit(&s->file_bytes_pub, s->file_bytes, memory_order_release);
}

static void prefill(struct wal_shard *s, uint64_t need_end)
{
	prefill_upto(s, prefill_end(s, need_end), UINT64_MAX);
}

/* Appender thread: the file was cut back to seg_bytes; space above it is no longer durable. */
static void file_shrunk(struct wal_shard *s)
{
	pthread_mutex_lock(&s->sync_lock);
	s->file_bytes = s->seg_bytes;
	s->ahead_end = 0;
	atomic_store_explicit(&s->file_bytes_pub, s->file_bytes, memory_order_relaxed);
	if (s->durable_size > s->seg_bytes)
		s->durable_size = s->seg_bytes;
	if (s->wb_from > s->seg_bytes)
		s->wb_from = s->seg_bytes;
	s->size_gen++;
	pthread_mutex_unlock(&s->sync_lock);
}

/*
 * Prefill ahead. The appender asks (prep_request) after zero-filling past the file's end
 * while the blocks are still below it; the prefill thread then, per asking shard:
 *   1. under sync_lock: notes the file's size (file_bytes_pub: every zero below it was
 *      written), the segment's path and size_gen;
 *   2. without the lock (a group commit must not wait behind it): opens the segment on its
 *      own file description and fdatasyncs it. Its own description: an fdatasync reports a
 *      write-back error to each open file description once, and the syncer's must not miss
 *      one because this thread saw it first. Its failure fails the shard (as any fdatasync);
 *   3. under sync_lock: raises durable_size to the noted size, unless size_gen moved (a roll
 *      or a shrinking truncate happened meanwhile: that size no longer holds); then closes
 *      its file (after the raise, so a seam that counts closes sees a finished request).
 * The group commits then overwrite durable prefill with no size change and stay cheap
 * (wal_sync_group). If the blocks outrun the thread, they simply take a full sync as before.
 */
static void prep_request(struct wal_shard *s)
{
	struct wal *w = s->w;
	if (!w->prep_started)
		return;
	atomic_store_explicit(&s->prep_want, true, memory_order_release);
	pthread_mutex_lock(&w->prep_mu);
	pthread_cond_signal(&w->prep_cv);
	pthread_mutex_unlock(&w->prep_mu);
}

static void prep_sync(struct wal_shard *s)
{
	char path[WAL_PATH_BYTES_MAX];
	pthread_mutex_lock(&s->sync_lock);
	uint64_t size = atomic_load_explicit(&s->file_bytes_pub, memory_order_acquire);
	uint64_t gen = s->size_gen;
	bool need = atomic_load(&s->failed) == 0 && size > s->durable_size &&
		    wal_path_segment(path, sizeof path, s->dir, s->seg_base, "log") == 0;
	pthread_mutex_unlock(&s->sync_lock);
	if (!need)
		return;
	int fd = s->io->open(s->io->ctx, path, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return; /* e.g. rolled and removed meanwhile: the group commits do it */
	int rc = s->io->fdatasync(s->io->ctx, fd);
	pthread_mutex_lock(&s->sync_lock);
	if (rc < 0)
		(void)set_failed(s, rc, "fdatasync of the prefill");
	else if (s->size_gen == gen && size > s->durable_size)
		s->durable_size = size;
	pthread_mutex_unlock(&s->sync_lock);
	s->io->close(s->io->ctx, fd);
}

static void *prep_main(void *arg)
{
	struct wal *w = arg;
	pthread_setname_np(pthread_self(), "tally-prefill");
	pthread_mutex_lock(&w->prep_mu);
	while (!w->prep_stop) {
		bool any = false;
		for (uint16_t i = 0; i < w->shard_count && !w->prep_stop; i++) {
			struct wal_shard *s = w->shards[i];
			if (!atomic_exchange_explicit(&s->prep_want, false, memory_order_acq_rel))
				continue;
			any = true;
			w->prep_busy = true;
			pthread_mutex_unlock(&w->prep_mu);
			prep_sync(s);
			pthread_mutex_lock(&w->prep_mu);
			w->prep_busy = false;
		}
		if (!any && !w->prep_stop) {
			pthread_cond_broadcast(&w->prep_idle_cv);
			pthread_cond_wait(&w->prep_cv, &w->prep_mu);
		}
	}
	pthread_cond_broadcast(&w->prep_idle_cv);
	pthread_mutex_unlock(&w->prep_mu);
	return NULL;
}

void wal_prefill_wait(struct wal *w)
{
	if (!w->prep_started)
		return;
	pthread_mutex_lock(&w->prep_mu);
	for (;;) {
		bool want = w->prep_busy;
		for (uint16_t i = 0; i < w->shard_count && !want; i++)
			want = atomic_load(&w->shards[i]->prep_want);
		if (!want || w->prep_stop)
			break;
		pthread_cond_wait(&w->prep_idle_cv, &w->prep_mu);
	}
	pthread_mutex_unlock(&w->prep_mu);
}

static void prep_stop(struct wal *w)
{
	if (!w->prep_started)
		return;
	pthread_mutex_lock(&w->prep_mu);
	w->prep_stop = true;
	pthread_cond_signal(&w->prep_cv);
	pthread_mutex_unlock(&w->prep_mu);
	pthread_join(w->prep_th, NULL);
	w->prep_started = false;
}

/*
 * The size at which the current segment rolls. A shard's first segment (base 0) rolls early, by
 * index/count of half the roll size, so that shards fed at the same rate — the fingerprint
 * spreads events evenly — do not all roll, and seal their dedup keys, at the same moment: each
 * keeps its offset from the others from then on (docs/wal-format.md "Segment file").
 */
static uint64_t roll_bytes(const struct wal_shard *s)
{
	uint64_t max = s->w->opt.segment_bytes_max;
	if (s->seg_base != 0 || s->w->shard_count < 2)
		return max;
	return max - max / 2 / s->w->shard_count * s->index;
}

/* Seals the current segment and starts a new one based at written_next. */
static int roll(struct wal_shard *s)
{
	int rc = 0;
	uint64_t old_base = s->seg_base;
	uint64_t next = atomic_load_explicit(&s->written_next, memory_order_relaxed);
	pthread_mutex_lock(&s->sync_lock);
	if ((rc = atomic_load(&s->failed)) != 0)
		goto out_unlock;
	if (s->file_bytes > s->seg_bytes) { /* a sealed segment ends with its last block */
		rc = s->io->ftruncate(s->io->ctx, s->fd, (off_t)s->seg_bytes);
		if (rc < 0) {
			rc = set_failed(s, rc, "ftruncate of the prefill at segment roll");
			goto out_unlock;
		}
		s->file_bytes = s->seg_bytes;
		s->durable_size = 0;
		s->size_gen++;
	}
	rc = s->io->fdatasync(s->io->ctx, s->fd);
	if (rc < 0) {
		rc = set_failed(s, rc, "fdatasync at segment roll");
		goto out_unlock;
	}
	publish_durable(s, next);
	/* The sealed segment is durable: its cached rest goes too (a tailing reader that has
	   not read it yet reads it from the disk). */
	if (s->io->drop_cache && s->w->opt.cache_keep_bytes != WAL_CACHE_KEEP_ALL)
		(void)s->io->drop_cache(s->io->ctx, s->fd, (off_t)s->dropped_to, 0);
	char path[WAL_PATH_BYTES_MAX];
	if ((rc = wal_path_segment(path, sizeof path, s->dir, next, "log")) < 0)
		goto out_unlock;
	int nfd = s->io->open(s->io->ctx, path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (nfd < 0) {
		rc = nfd; /* e.g. ENOSPC: retryable, the old segment stays current */
		wal_set_error("%s: cannot create segment %s: %s", shard_name(s), path,
			      strerror(-rc));
		goto out_unlock;
	}
	rc = wal_fsync_dir(s->io, s->dir);
	if (rc < 0) {
		s->io->close(s->io->ctx, nfd);
		rc = set_failed(s, rc, "directory fsync at segment roll");
		goto out_unlock;
	}
	s->io->close(s->io->ctx, s->fd);
	if (s->idx_fd >= 0)
		s->io->close(s->io->ctx, s->idx_fd);
	s->fd = nfd;
	s->seg_base = next;
	s->seg_bytes = 0;
	s->file_bytes = 0;
	s->ahead_end = 0;
	s->durable_size = 0;
	s->wb_from = 0;
	s->dropped_to = 0;
	s->size_gen++;
	atomic_store_explicit(&s->written_bytes, 0, memory_order_relaxed);
	atomic_store_explicit(&s->file_bytes_pub, 0, memory_order_relaxed);
	s->seg_first_ingest_us = INT64_MIN;
	idx_open_fresh(s, true);
out_unlock:
	pthread_mutex_unlock(&s->sync_lock);
	if (rc == 0 && s->w->opt.on_segment_sealed)
		s->w->opt.on_segment_sealed(s->w->opt.ctx, s->index, old_base, next);
	return rc;
}

static int seal(struct wal_shard *s)
{
	int rc;
	if (s->count == 0)
		return 0;
	if ((rc = atomic_load_explicit(&s->failed, memory_order_relaxed)) != 0)
		return rc;
	const struct wal_options *o = &s->w->opt;
	uint64_t bound = WAL_BLOCK_HEADER_BYTES + (uint64_t)LZ4_COMPRESSBOUND((int)s->raw_len);
	bool by_size = s->seg_bytes > 0 && s->seg_bytes + bound > roll_bytes(s);
	bool by_age =
	    s->seg_first_ingest_us != INT64_MIN &&
	    (uint64_t)(s->block_first_ingest_us - s->seg_first_ingest_us) >= o->segment_age_us;
	if (by_size || by_age) {
		rc = roll(s);
		if (rc < 0)
			goto out_discard;
	}

	uint8_t *payload = s->out + WAL_BLOCK_HEADER_BYTES;
	int n = LZ4_compress_fast_extState(s->lz4_state, (const char *)s->raw, (char *)payload,
					   (int)s->raw_len, LZ4_COMPRESSBOUND((int)s->raw_len),
					   (int)o->lz4_acceleration);
	struct wal_block_hdr h = {
	    .magic = WAL_BLOCK_MAGIC,
	    .version = WAL_FORMAT_VERSION,
	    .codec = WAL_CODEC_LZ4,
	    .record_count = s->count,
	    .raw_bytes = s->raw_len,
	    .stored_bytes = (uint32_t)n,
	    .first_offset = s->block_first_offset,
	    .first_ingest_time_us = s->block_first_ingest_us,
	    .max_ingest_time_us = s->block_prev_ingest_us,
	    .min_event_time_us = s->block_min_event_us,
	    .max_event_time_us = s->block_max_event_us,
	};
	if (n <= 0 || (uint32_t)n >= s->raw_len) {
		/* Incompressible: store raw (LZ4 would only add bytes). */
		h.codec = WAL_CODEC_NONE;
		h.stored_bytes = s->raw_len;
		memcpy(payload, s->raw, s->raw_len);
	}
	wal_block_hdr_encode(&h, s->out);
	h.checksum = wal_block_checksum(s->out, payload, h.stored_bytes);
	wal_put_u64(s->out + 64, h.checksum);
	size_t total = WAL_BLOCK_HEADER_BYTES + h.stored_bytes;

	if (o->prefill_bytes && s->seg_bytes + total > s->file_bytes) {
		prefill(s, s->seg_bytes + total);
	} else if (o->prefill_bytes && !o->no_prefill_ahead) {
		/* Less than half a prefill left: zero-fill the next stretch, then let the prefill
		   thread make its size durable before the blocks reach it. One step of it per
		   block, so that no single loop turn pays for a whole stretch (on this VM 1 MiB of
		   zeros at once took 0.4 ms at the median and 1.4-8.6 ms at the p99; 128 KiB took
		   0.08 ms and 0.5-2 ms). A step is an eighth of a prefill (4-128 KiB), or four
		   times the block if that is more: the blocks written while a stretch of about
		   one prefill is under way then take at most a quarter prefill of the half that
		   is already durable. */
		if (!s->ahead_end && s->seg_bytes + total + o->prefill_bytes / 2 > s->file_bytes) {
			s->ahead_from = s->file_bytes;
			s->ahead_end = prefill_end(s, s->seg_bytes + total + o->prefill_bytes / 2);
		}
		if (s->ahead_end) {
			uint64_t step = o->prefill_bytes / 8, before = s->file_bytes;
			step = step < 4096 ? 4096 : step > (128u << 10) ? (128u << 10) : step;
			if (step < 4 * total) /* big blocks: see above */
				step = 4 * total;
			prefill_upto(s, s->ahead_end, step);
			if (s->file_bytes >= s->ahead_end || s->file_bytes == before) {
				s->ahead_end = 0; /* done, or a zero write failed: end it here */
				if (s->file_bytes > s->ahead_from)
					prep_request(s);
			}
		}
	}
	rc = write_all(s, s->out, total, s->seg_bytes);
	if (rc < 0) {
		wal_set_error("%s: write of block at offsets %" PRIu64 "..%" PRIu64
			      " failed (%s): block discarded",
			      shard_name(s), s->block_first_offset,
			      s->block_first_offset + s->count - 1, strerror(-rc));
		int tr = s->io->ftruncate(s->io->ctx, s->fd, (off_t)s->seg_bytes);
		if (tr < 0)
			rc = set_failed(s, tr, "ftruncate after a failed write");
		file_shrunk(s);
		goto out_discard;
	}
	idx_add(s, s->block_first_offset, s->seg_bytes);
	if (s->seg_first_ingest_us == INT64_MIN)
		s->seg_first_ingest_us = s->block_first_ingest_us;
	s->seg_bytes += total;
	if (s->file_bytes < s->seg_bytes) {
		s->file_bytes = s->seg_bytes;
		atomic_store_explicit(&s->file_bytes_pub, s->file_bytes, memory_order_release);
	}
	atomic_store_explicit(&s->written_bytes, s->seg_bytes, memory_order_relaxed);
	/* Release: the syncer (acquire) may fdatasync and publish these offsets only after the
	   pwrite above returned. */
	atomic_store_explicit(&s->written_next, s->block_first_offset + s->count,
			      memory_order_release);
	block_reset(s);
	return 0;

out_discard:
	s->discard_first = s->block_first_offset;
	s->discard_count = s->count;
	s->next_offset = s->block_first_offset;
	block_reset(s);
	return rc;
}

static int add_record(struct wal_shard *s, uint8_t kind, struct tally_view tenant,
		      const struct tally_view *body, int64_t ingest_time_us, uint64_t *offset_out)
{
	int rc = atomic_load_explicit(&s->failed, memory_order_relaxed);
	if (rc != 0)
		return rc;
	if (ingest_time_us < 0)
		return -EINVAL;
	size_t need = 1 + 10;
	if (kind == WAL_RECORD_EVENT) {
		if (tenant.len > TALLY_TENANT_BYTES_MAX || !body ||
		    body->len < TALLY_EVENT_FIXED_BYTES || body->len > TALLY_EVENT_BYTES_MAX)
			return -EINVAL;
		need += 1 + tenant.len + 3 + body->len;
	}
	if (s->count > 0 &&
	    (s->raw_len + need > s->w->opt.block_bytes_max || s->count == WAL_BLOCK_RECORDS_MAX)) {
		rc = seal(s);
		if (rc < 0)
			return rc;
	}
	if (ingest_time_us < s->last_ingest_us)
		ingest_time_us = s->last_ingest_us; /* the clock went back: clamp */
	if (s->count == 0) {
		s->block_first_offset = s->next_offset;
		s->block_first_ingest_us = ingest_time_us;
		s->block_prev_ingest_us = ingest_time_us;
		s->block_min_event_us = INT64_MAX;
		s->block_max_event_us = INT64_MIN;
	}
	uint8_t *p = s->raw + s->raw_len;
	size_t n = 0;
	p[n++] = kind;
	n += wal_put_varint(p + n, (uint64_t)(ingest_time_us - s->block_prev_ingest_us));
	if (kind == WAL_RECORD_EVENT) {
		p[n++] = (uint8_t)tenant.len;
		if (tenant.len)
			memcpy(p + n, tenant.ptr, tenant.len);
		n += tenant.len;
		n += wal_put_varint(p + n, body->len);
		memcpy(p + n, body->ptr, body->len);
		n += body->len;
		int64_t et = (int64_t)wal_get_u64(body->ptr);
		if (et < s->block_min_event_us)
			s->block_min_event_us = et;
		if (et > s->block_max_event_us)
			s->block_max_event_us = et;
	}
	s->raw_len += (uint32_t)n;
	s->count++;
	s->block_prev_ingest_us = ingest_time_us;
	s->last_ingest_us = ingest_time_us;
	if (offset_out)
		*offset_out = s->next_offset;
	s->next_offset++;
	return 0;
}

int wal_append(struct wal_shard *s, struct tally_view tenant, const struct tally_view *event_body,
	       int64_t ingest_time_us, uint64_t *offset_out)
{
	return add_record(s, WAL_RECORD_EVENT, tenant, event_body, ingest_time_us, offset_out);
}

int wal_append_tick(struct wal_shard *s, int64_t ingest_time_us, uint64_t *offset_out)
{
	struct tally_view none = {0};
	return add_record(s, WAL_RECORD_TICK, none, NULL, ingest_time_us, offset_out);
}

int wal_flush(struct wal_shard *s)
{
	return seal(s);
}

bool wal_block_due(const struct wal_shard *s, int64_t now_us)
{
	return s->count > 0 && now_us - s->block_first_ingest_us >= (int64_t)s->w->opt.block_age_us;
}

uint64_t wal_next_offset(const struct wal_shard *s)
{
	return s->next_offset;
}

void wal_shard_last_discard(const struct wal_shard *s, uint64_t *first, uint64_t *count)
{
	*first = s->discard_first;
	*count = s->discard_count;
}

uint64_t wal_written_next(const struct wal_shard *s)
{
	return atomic_load_explicit(&((struct wal_shard *)s)->written_next, memory_order_acquire);
}

uint64_t wal_durable_next(const struct wal_shard *s)
{
	/* Acquire pairs with the release in publish_durable(). */
	return atomic_load_explicit(&((struct wal_shard *)s)->durable_next, memory_order_acquire);
}

int wal_shard_failed(const struct wal_shard *s)
{
	return atomic_load(&((struct wal_shard *)s)->failed);
}

/*
 * Drop-behind, with sync_lock held, after the current segment's bytes below `durable` became
 * durable: drops them from the page cache except the last cache_keep_bytes, in steps of
 * WAL_DROP_STEP (docs/wal-format.md "Page cache"). Readers tailing the WAL find what they read
 * next still cached; one further behind reads from the disk.
 */
#define WAL_DROP_STEP (256u << 10)
static void drop_behind(struct wal_shard *s, uint64_t durable)
{
	uint64_t keep = s->w->opt.cache_keep_bytes;
	if (!s->io->drop_cache || keep == WAL_CACHE_KEEP_ALL || durable <= keep)
		return;
	uint64_t to = (durable - keep) / WAL_DROP_STEP * WAL_DROP_STEP;
	if (to <= s->dropped_to)
		return;
	(void)s->io->drop_cache(s->io->ctx, s->fd, (off_t)s->dropped_to,
				(off_t)(to - s->dropped_to));
	s->dropped_to = to;
}

/* fdatasync of the current segment. Called with sync_lock held. The file's size and every
   byte below it (prefill included) are durable afterwards: the size loaded before the call
   covers only bytes whose pwrite had returned. */
static int sync_full(struct wal_shard *s)
{
	uint64_t size = atomic_load_explicit(&s->file_bytes_pub, memory_order_acquire);
	uint64_t wb = atomic_load_explicit(&s->written_bytes, memory_order_relaxed);
	int rc = s->io->fdatasync(s->io->ctx, s->fd);
	if (rc < 0)
		return set_failed(s, rc, "fdatasync");
	if (size > s->durable_size)
		s->durable_size = size;
	if (wb > s->wb_from)
		s->wb_from = wb;
	drop_behind(s, wb);
	return 0;
}

int wal_sync(struct wal_shard *s, uint64_t *durable_next_out)
{
	int rc;
	pthread_mutex_lock(&s->sync_lock);
	if ((rc = atomic_load(&s->failed)) != 0)
		goto out_unlock;
	/* Acquire pairs with the release in seal(): every block below `w` was pwrite()n to
	   s->fd (s->fd cannot change while we hold sync_lock). */
	uint64_t w = atomic_load_explicit(&s->written_next, memory_order_acquire);
	if (w > atomic_load_explicit(&s->durable_next, memory_order_relaxed)) {
		if ((rc = sync_full(s)) < 0)
			goto out_unlock;
		publish_durable(s, w);
	}
out_unlock:
	if (durable_next_out)
		*durable_next_out = atomic_load_explicit(&s->durable_next, memory_order_acquire);
	pthread_mutex_unlock(&s->sync_lock);
	return rc;
}

/*
 * The shared device flush. A caller joins (comb_join) before it takes its shards' sync locks
 * (wal_sync_group), or earlier still (wal_shared_flush_join: tallyd's owner thread, as it kicks
 * its syncer), and later either leaves (comb_leave: no shared flush needed after all) or
 * arrives at its flush step (comb_flush) with all its write-backs complete. A flush starts as
 * soon as every joined caller not yet covered by a flush has arrived; it covers exactly those
 * callers (their write-backs all completed before it started, on the device it flushes), who
 * stop counting as joined as it starts. Flushes may overlap: a caller that arrives while one
 * runs never relies on it, and starts its own as soon as its cohort is complete. So one
 * fdatasync serves every group commit whose write-backs were under way together, and no caller
 * relies on a flush that started before its own write-backs ended. A failed flush fails every
 * later caller too (the broker stops acknowledging on the first failure anyway).
 * Deadlock: an arrived caller holds its shards' sync locks and waits only for other joined
 * callers to arrive or leave. A joined caller on its way there blocks only on its own
 * shards' locks (held briefly by their appender, which never waits here) and on I/O.
 * Generations in flight never exceed the callers (at most one sync group per thread), so
 * COMB_SLOTS slots of completed generations suffice.
 */
static bool comb_applies(const struct wal_shard *f)
{
	return f->w->comb_on && f->dev == f->w->comb_dev;
}

static void comb_join(struct wal *w)
{
	if (!w->comb_on)
		return;
	pthread_mutex_lock(&w->comb_mu);
	w->comb_active++;
	pthread_mutex_unlock(&w->comb_mu);
}

static void comb_leave(struct wal *w)
{
	if (!w->comb_on)
		return;
	pthread_mutex_lock(&w->comb_mu);
	w->comb_active--;
	if (w->comb_ready && w->comb_ready == w->comb_active)
		pthread_cond_broadcast(&w->comb_cv);
	pthread_mutex_unlock(&w->comb_mu);
}

static int comb_flush(struct wal_shard *f)
{
	struct wal *w = f->w;
	pthread_mutex_lock(&w->comb_mu);
	w->comb_ready++;
	w->comb_calls++;
	uint64_t mine = w->comb_next; /* the generation of the cohort now forming */
	struct comb_slot *slot = &w->comb_slot[mine % COMB_SLOTS];
	int rc = 0;
	bool flushed = false;
	for (;;) {
		if (slot->gen == mine) { /* the cohort's flush ended */
			rc = slot->rc;
			break;
		}
		if (w->comb_next == mine && w->comb_ready == w->comb_active) {
			/* Every joined caller is here: this one flushes for the cohort. */
			w->comb_next++;
			w->comb_active -= w->comb_ready;
			w->comb_ready = 0;
			w->comb_flushes++;
			pthread_mutex_unlock(&w->comb_mu);
			rc = f->io->fdatasync(f->io->ctx, f->fd);
			pthread_mutex_lock(&w->comb_mu);
			if (rc < 0 && !w->comb_err)
				w->comb_err = rc;
			slot->gen = mine;
			slot->rc = rc;
			flushed = true;
			break;
		}
		pthread_cond_wait(&w->comb_cv, &w->comb_mu);
	}
	if (rc == 0)
		rc = w->comb_err;
	pthread_mutex_unlock(&w->comb_mu);
	/* After the unlock, so that the woken callers do not block on comb_mu again. */
	if (flushed)
		pthread_cond_broadcast(&w->comb_cv);
	return rc;
}

void wal_shared_flush_join(struct wal_shard *s)
{
	comb_join(s->w);
}

void wal_shared_flush_leave(struct wal_shard *s)
{
	comb_leave(s->w);
}

void wal_shared_flush_stats(struct wal *w, uint64_t *calls, uint64_t *flushes)
{
	pthread_mutex_lock(&w->comb_mu);
	*calls = w->comb_calls;
	*flushes = w->comb_flushes;
	pthread_mutex_unlock(&w->comb_mu);
}

/*
 * The group commit (wal.h). Per shard, with its sync_lock held for the whole call (the locks
 * are taken in array order; a shard has one syncer, so no two callers share a shard):
 *   1. `want`: written_next (acquire) is past durable_next; `wb` = written_bytes, loaded after
 *      it, so every block below written_next lies below wb, in the file behind s->fd (a roll,
 *      the only fd change, needs sync_lock).
 *   2. cheap iff group_flush, the same device as the first cheap shard, and wb <= durable_size:
 *      the blocks overwrite bytes an fdatasync already made durable together with the size,
 *      so writing them back (sync_range: started on every cheap shard, then waited for on
 *      each) leaves only the device's volatile cache between them and the medium. Else:
 *      sync_full().
 *   3. After every sync_range returned: one fdatasync on a cheap shard's file flushes that
 *      device's cache (ext4/XFS issue the flush even with nothing dirty), making every cheap
 *      shard's written-back blocks durable. Only then are their watermarks published. A full
 *      sync of step 2 on the same device (it runs after the write-backs) is that flush.
 */
static int sync_group(struct wal_shard *const *shards, size_t n, bool joined);

int wal_sync_group(struct wal_shard *const *shards, size_t n)
{
	if (n == 0)
		return 0;
	comb_join(shards[0]->w);
	return sync_group(shards, n, true);
}

int wal_sync_group_joined(struct wal_shard *const *shards, size_t n)
{
	return sync_group(shards, n, true);
}

static int sync_group(struct wal_shard *const *shards, size_t n, bool joined)
{
	enum { SKIP, CHEAP, FULL };
	uint8_t how[n ? n : 1];
	uint64_t next[n ? n : 1], wb[n ? n : 1];
	int first = 0;
	size_t ref = n; /* the first cheap shard: every cheap shard shares its device */
	for (size_t i = 0; i < n; i++) {
		struct wal_shard *s = shards[i];
		pthread_mutex_lock(&s->sync_lock);
		how[i] = SKIP;
		if (atomic_load(&s->failed) != 0) {
			if (!first)
				first = atomic_load(&s->failed);
			continue;
		}
		next[i] = atomic_load_explicit(&s->written_next, memory_order_acquire);
		wb[i] = atomic_load_explicit(&s->written_bytes, memory_order_relaxed);
		if (next[i] <= atomic_load_explicit(&s->durable_next, memory_order_relaxed))
			continue;
		how[i] = FULL;
		if (s->group_flush && wb[i] <= s->durable_size &&
		    (ref == n || s->dev == shards[ref]->dev)) {
			how[i] = CHEAP;
			if (ref == n)
				ref = i;
		}
	}
	int rc;
	/* Joined to the shared flush (wal.h "Shared flush") until the flush step, if it applies. */
	bool comb = joined && ref < n && comb_applies(shards[ref]);
	if (joined && !comb)
		comb_leave(shards[0]->w);
	/* Start every write-back first, so the device has them all in its queue at once; its
	   errors are seen again by the waiting call below. */
	for (size_t i = 0; i < n; i++) {
		struct wal_shard *s = shards[i];
		if (how[i] == CHEAP && wb[i] > s->wb_from)
			(void)s->io->sync_range(s->io->ctx, s->fd, (off_t)s->wb_from,
						(off_t)(wb[i] - s->wb_from), false);
	}
	for (size_t i = 0; i < n; i++) {
		struct wal_shard *s = shards[i];
		if (how[i] != CHEAP || wb[i] <= s->wb_from)
			continue;
		rc = s->io->sync_range(s->io->ctx, s->fd, (off_t)s->wb_from,
				       (off_t)(wb[i] - s->wb_from), true);
		if (rc < 0) {
			/* A write-back error: the data may not be on the device (as fdatasync). */
			rc = set_failed(s, rc, "sync_file_range");
			how[i] = SKIP;
			if (!first)
				first = rc;
			continue;
		}
		s->wb_from = wb[i];
	}
	/* A full sync of a file on the cheap shards' device, started after every write-back
	   above completed, flushes that device for them too. */
	bool flushed = false;
	for (size_t i = 0; i < n; i++) {
		if (how[i] != FULL)
			continue;
		if ((rc = sync_full(shards[i])) < 0) {
			how[i] = SKIP;
			if (!first)
				first = rc;
			continue;
		}
		publish_durable(shards[i], next[i]);
		if (ref < n && shards[i]->group_flush && shards[i]->dev == shards[ref]->dev)
			flushed = true;
	}
	/* Else the device flush, through any shard still cheap (they share the device). */
	size_t flush_by = n;
	for (size_t i = 0; i < n && flush_by == n; i++)
		if (how[i] == CHEAP)
			flush_by = i;
	if (comb && (flush_by == n || flushed)) {
		comb_leave(shards[ref]->w);
		comb = false;
	}
	if (flush_by < n) {
		struct wal_shard *f = shards[flush_by];
		if (flushed)
			rc = 0;
		else if (comb)
			rc = comb_flush(f); /* f shares shards[ref]'s device */
		else
			rc = f->io->fdatasync(f->io->ctx, f->fd);
		for (size_t i = 0; i < n; i++) {
			if (how[i] != CHEAP)
				continue;
			if (rc < 0) {
				int e = set_failed(shards[i], rc, "fdatasync (group flush)");
				if (!first)
					first = e;
				continue;
			}
			publish_durable(shards[i], next[i]);
			drop_behind(shards[i], wb[i]);
		}
	}
	for (size_t i = n; i-- > 0;)
		pthread_mutex_unlock(&shards[i]->sync_lock);
	return first;
}

bool wal_shard_group_flush(const struct wal_shard *s)
{
	return s->group_flush;
}

uint16_t wal_shard_count(const struct wal *w)
{
	return w->shard_count;
}

struct wal_shard *wal_shard(struct wal *w, uint16_t i)
{
	return i < w->shard_count ? w->shards[i] : NULL;
}

uint16_t wal_shard_index(const struct wal_shard *s)
{
	return s->index;
}

/* ---------- open / recovery ---------- */

static int meta_read(const char *wal_dir, uint16_t *count)
{
	char path[WAL_PATH_BYTES_MAX], buf[128];
	int n = snprintf(path, sizeof path, "%s/meta", wal_dir);
	if (n < 0 || (size_t)n >= sizeof path)
		return -ENAMETOOLONG;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t r = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (r < 0)
		return -errno;
	buf[r] = 0;
	unsigned ver, cnt;
	char tail;
	if (sscanf(buf, "tally-wal version %u shards %u%c", &ver, &cnt, &tail) != 3 ||
	    tail != '\n' || ver != WAL_FORMAT_VERSION || cnt == 0 || cnt > WAL_SHARDS_MAX) {
		wal_set_error("%s: unreadable or unknown WAL meta file", path);
		return -EBADMSG;
	}
	*count = (uint16_t)cnt;
	return 0;
}

int wal_stored_shard_count(const char *data_dir, uint16_t *count_out)
{
	char wal_dir[WAL_PATH_BYTES_MAX];
	int n = snprintf(wal_dir, sizeof wal_dir, "%s/wal", data_dir);
	if (n < 0 || (size_t)n >= sizeof wal_dir)
		return -ENAMETOOLONG;
	int rc = meta_read(wal_dir, count_out);
	if (rc == -ENOENT)
		wal_set_error("%s: no WAL here (no meta file)", wal_dir);
	return rc;
}

static int meta_write(const struct wal_io *io, const char *wal_dir, uint16_t count)
{
	char path[WAL_PATH_BYTES_MAX], tmp[WAL_PATH_BYTES_MAX], buf[64];
	int n1 = snprintf(path, sizeof path, "%s/meta", wal_dir);
	int n2 = snprintf(tmp, sizeof tmp, "%s/meta.tmp", wal_dir);
	if (n1 < 0 || n2 < 0 || (size_t)n1 >= sizeof path || (size_t)n2 >= sizeof tmp)
		return -ENAMETOOLONG;
	int len = snprintf(buf, sizeof buf, "tally-wal version %u shards %u\n", WAL_FORMAT_VERSION,
			   (unsigned)count);
	int fd = io->open(io->ctx, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return fd;
	int rc = 0;
	ssize_t r = io->pwrite(io->ctx, fd, buf, (size_t)len, 0);
	if (r != len)
		rc = r < 0 ? (int)r : -EIO;
	if (rc == 0)
		rc = io->fsync(io->ctx, fd);
	io->close(io->ctx, fd);
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc == 0)
		rc = wal_fsync_dir(io, wal_dir);
	return rc;
}

/* mkdir, and if it created the directory, fsync its parent so the entry is durable. */
static int mkdir_durable(const struct wal_io *io, const char *path)
{
	if (mkdir(path, 0755) < 0)
		return errno == EEXIST ? 0 : -errno;
	char parent[WAL_PATH_BYTES_MAX];
	snprintf(parent, sizeof parent, "%s", path);
	char *slash = strrchr(parent, '/');
	if (!slash)
		return wal_fsync_dir(io, ".");
	if (slash == parent)
		slash[1] = 0;
	else
		*slash = 0;
	return wal_fsync_dir(io, parent);
}

/* End offset of a sealed segment; every block after the last index entry is checked (all
   of them with `full`). Any invalid byte in a sealed segment is corruption. */
static int check_sealed(struct wal_shard *s, uint64_t base, bool full, uint64_t *end)
{
	char path[WAL_PATH_BYTES_MAX];
	int rc = wal_path_segment(path, sizeof path, s->dir, base, "log");
	if (rc < 0)
		return rc;
	int fd = s->io->open(s->io->ctx, path, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0) {
		wal_set_error("%s: cannot open: %s", path, strerror(-fd));
		return fd;
	}
	struct stat st;
	uint64_t pos = 0, off = base;
	if (!full && fstat(fd, &st) == 0)
		wal_idx_last_entry(s->dir, base, (uint64_t)st.st_size, &pos, &off);
	struct wal_scan sc;
	rc = wal_scan_segment(s->io, fd, pos, off, WAL_SCAN_DECODE, &sc, NULL, NULL);
	if (rc == 0 && sc.bad_why && pos != 0) /* stale index entry? rescan from the start */
		rc = wal_scan_segment(s->io, fd, 0, base, WAL_SCAN_DECODE, &sc, NULL, NULL);
	s->io->close(s->io->ctx, fd);
	if (rc < 0) {
		wal_set_error("%s: read error: %s", path, strerror(-rc));
		return rc;
	}
	if (sc.bad_why) {
		wal_set_error("%s: corrupt block at byte %" PRIu64 " (%s) in a sealed segment",
			      path, sc.valid_bytes, sc.bad_why);
		return -EBADMSG;
	}
	*end = sc.next_offset;
	return 0;
}

/* Copies bytes [from, end) of fd to path.quarantine-<from> and syncs it. */
static int quarantine_tail(struct wal_shard *s, int fd, const char *path, uint64_t from,
			   uint64_t end)
{
	char qpath[WAL_PATH_BYTES_MAX + 64];
	snprintf(qpath, sizeof qpath, "%s.quarantine-%" PRIu64, path, from);
	int qfd = s->io->open(s->io->ctx, qpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (qfd < 0)
		return qfd;
	uint8_t *buf = malloc(1 << 20);
	int rc = buf ? 0 : -ENOMEM;
	for (uint64_t at = from; rc == 0 && at < end;) {
		size_t want = end - at < (1u << 20) ? (size_t)(end - at) : (1u << 20);
		ssize_t r = wal_pread_full(s->io, fd, buf, want, (off_t)at);
		if (r <= 0) {
			rc = r < 0 ? (int)r : -EIO;
			break;
		}
		ssize_t w = s->io->pwrite(s->io->ctx, qfd, buf, (size_t)r, (off_t)(at - from));
		if (w != r)
			rc = w < 0 ? (int)w : -EIO;
		at += (uint64_t)r;
	}
	free(buf);
	if (rc == 0)
		rc = s->io->fsync(s->io->ctx, qfd);
	s->io->close(s->io->ctx, qfd);
	if (rc == 0)
		fprintf(stderr,
			"wal: REPAIR: quarantined bytes %" PRIu64 "..%" PRIu64 " of %s to %s\n",
			from, end, path, qpath);
	return rc;
}

static int recover_newest(struct wal_shard *s, uint64_t base)
{
	char path[WAL_PATH_BYTES_MAX];
	int rc = wal_path_segment(path, sizeof path, s->dir, base, "log");
	if (rc < 0)
		return rc;
	int fd = s->io->open(s->io->ctx, path, O_RDWR | O_CLOEXEC, 0);
	if (fd < 0) {
		wal_set_error("%s: cannot open: %s", path, strerror(-fd));
		return fd;
	}
	/* Rebuild this segment's index from the scan (it is only a hint). */
	s->seg_base = base;
	idx_open_fresh(s, false);
	struct wal_scan sc;
	rc = wal_scan_segment(s->io, fd, 0, base, WAL_SCAN_SEARCH_LATER | WAL_SCAN_DECODE, &sc,
			      idx_scan_cb, s);
	if (rc < 0) {
		wal_set_error("%s: read error during recovery: %s", path, strerror(-rc));
		goto out_close;
	}
	if (sc.bad_why) {
		if (sc.later_valid_at != UINT64_MAX) {
			if (!s->w->opt.repair) {
				if (sc.later_valid_at == sc.valid_bytes)
					wal_set_error("%s: corrupt block at byte %" PRIu64
						      " (%s; its checksum matches, so it is no "
						      "torn write): refusing to open (see --repair)",
						      path, sc.valid_bytes, sc.bad_why);
				else
					wal_set_error("%s: corrupt block at byte %" PRIu64
						      " (%s) with a valid block after it at byte "
						      "%" PRIu64 ": refusing to open (see --repair)",
						      path, sc.valid_bytes, sc.bad_why,
						      sc.later_valid_at);
				rc = -EBADMSG;
				goto out_close;
			}
			rc = quarantine_tail(s, fd, path, sc.valid_bytes, sc.file_bytes);
			if (rc < 0)
				goto out_close;
		}
		/* A torn tail: the blocks from here were never durable. */
		rc = s->io->ftruncate(s->io->ctx, fd, (off_t)sc.valid_bytes);
		if (rc == 0)
			rc = s->io->fdatasync(s->io->ctx, fd);
		if (rc < 0) {
			wal_set_error("%s: cannot truncate torn tail at byte %" PRIu64 ": %s", path,
				      sc.valid_bytes, strerror(-rc));
			goto out_close;
		}
	}
	idx_finish(s);
	s->io->close(s->io->ctx, fd);
	fd = s->io->open(s->io->ctx, path, O_WRONLY | O_CLOEXEC, 0);
	if (fd < 0) {
		rc = fd;
		goto out;
	}
	s->fd = fd;
	fd = -1;
	s->seg_base = base;
	s->seg_bytes = sc.valid_bytes;
	s->file_bytes = sc.valid_bytes; /* a tail (torn, or prefill zeros) was cut */
	s->seg_first_ingest_us = sc.first_ingest_time_us;
	s->next_offset = sc.next_offset;
	if (sc.last_max_ingest_time_us != INT64_MIN)
		s->last_ingest_us = sc.last_max_ingest_time_us;
	rc = 0;
out_close:
	if (fd >= 0)
		s->io->close(s->io->ctx, fd);
out:
	return rc;
}

static int shard_open(struct wal *w, uint16_t i, struct wal_shard **out)
{
	struct wal_shard *s = aligned_alloc(64, (sizeof *s + 63) & ~(size_t)63);
	if (!s)
		return -ENOMEM;
	memset(s, 0, sizeof *s);
	s->w = w;
	s->index = i;
	s->io = w->opt.io;
	s->fd = -1;
	s->idx_fd = -1;
	s->last_ingest_us = INT64_MIN;
	pthread_mutex_init(&s->sync_lock, NULL);
	*out = s; /* freed by the caller's cleanup on error */
	int rc = wal_path_shard_dir(s->dir, sizeof s->dir, w->data_dir, i);
	if (rc < 0)
		return rc;
	s->raw = malloc(w->opt.block_bytes_max);
	s->out =
	    malloc(WAL_BLOCK_HEADER_BYTES + (size_t)LZ4_COMPRESSBOUND((int)w->opt.block_bytes_max));
	s->lz4_state = malloc((size_t)LZ4_sizeofState());
	if (!s->raw || !s->out || !s->lz4_state)
		return -ENOMEM;
	if ((rc = mkdir_durable(s->io, s->dir)) < 0) {
		wal_set_error("%s: cannot create: %s", s->dir, strerror(-rc));
		return rc;
	}
	uint64_t *bases = NULL;
	size_t n = 0;
	if ((rc = wal_list_bases(s->dir, &bases, &n)) < 0)
		return rc;
	if (n == 0) {
		char path[WAL_PATH_BYTES_MAX];
		rc = wal_path_segment(path, sizeof path, s->dir, 0, "log");
		if (rc == 0) {
			int fd =
			    s->io->open(s->io->ctx, path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
			if (fd < 0)
				rc = fd;
			else
				s->io->close(s->io->ctx, fd);
		}
		if (rc == 0)
			rc = wal_fsync_dir(s->io, s->dir);
		if (rc < 0)
			goto out_free;
		bases = malloc(sizeof *bases);
		if (!bases) {
			rc = -ENOMEM;
			goto out_free;
		}
		bases[0] = 0;
		n = 1;
	}
	for (size_t k = 0; k + 1 < n; k++) {
		uint64_t end;
		if ((rc = check_sealed(s, bases[k], w->opt.verify_sealed, &end)) < 0)
			goto out_free;
		if (end != bases[k + 1]) {
			wal_set_error("%s/%020" PRIu64 ".log: ends at offset %" PRIu64
				      " but the next segment starts at %" PRIu64,
				      s->dir, bases[k], end, bases[k + 1]);
			rc = -EBADMSG;
			goto out_free;
		}
	}
	if ((rc = recover_newest(s, bases[n - 1])) < 0)
		goto out_free;
	if ((rc = wm_open(s)) < 0) {
		wal_set_error("%s: cannot map the durable watermark: %s", s->dir, strerror(-rc));
		goto out_free;
	}
	/* Everything that survived recovery is durable (recovery synced it). */
	atomic_store(&s->written_bytes, s->seg_bytes);
	atomic_store(&s->file_bytes_pub, s->file_bytes);
	s->durable_size = 0; /* the first sync of this process is a full one */
	s->wb_from = 0;
	group_flush_probe(s);
	atomic_store(&s->written_next, s->next_offset);
	atomic_store(&s->durable_next, s->next_offset);
	wm_publish(s, s->next_offset);
out_free:
	free(bases);
	return rc;
}

/* Whether the shard may share a device flush (wal_sync_group): see wal.h for the rule. */
static void group_flush_probe(struct wal_shard *s)
{
	struct statfs sf;
	struct stat st;
	s->group_flush = false;
	if (s->w->opt.no_group_flush || !s->io->sync_range || fstat(s->fd, &st) < 0 ||
	    fstatfs(s->fd, &sf) < 0)
		return;
	s->dev = st.st_dev;
	switch ((unsigned long)sf.f_type) {
	case 0xEF53UL:     /* EXT2/3/4_SUPER_MAGIC */
	case 0x58465342UL: /* XFS_SUPER_MAGIC */
	case 0x01021994UL: /* TMPFS_MAGIC */
		s->group_flush = true;
		break;
	default:
		break;
	}
}

static void shard_free(struct wal_shard *s)
{
	if (!s)
		return;
	if (s->fd >= 0)
		s->io->close(s->io->ctx, s->fd);
	if (s->idx_fd >= 0)
		s->io->close(s->io->ctx, s->idx_fd);
	if (s->wm)
		munmap(s->wm, WAL_WATERMARK_BYTES);
	pthread_mutex_destroy(&s->sync_lock);
	free(s->raw);
	free(s->out);
	free(s->lz4_state);
	free(s);
}

static int options_fill(const struct wal_options *in, struct wal_options *o)
{
	*o = in ? *in : (struct wal_options){0};
	if (!o->io)
		o->io = wal_io_libc();
	if (!o->block_bytes_max)
		o->block_bytes_max = WAL_BLOCK_BYTES_DEFAULT;
	if (!o->block_age_us)
		o->block_age_us = WAL_BLOCK_AGE_US_DEFAULT;
	if (!o->segment_bytes_max)
		o->segment_bytes_max = WAL_SEGMENT_BYTES_DEFAULT;
	if (!o->segment_age_us)
		o->segment_age_us = WAL_SEGMENT_AGE_US_DEFAULT;
	if (!o->lz4_acceleration)
		o->lz4_acceleration = 1;
	if (!o->prefill_bytes)
		o->prefill_bytes = WAL_PREFILL_BYTES_DEFAULT;
	else if (o->prefill_bytes == WAL_PREFILL_OFF)
		o->prefill_bytes = 0;
	if (!o->cache_keep_bytes)
		o->cache_keep_bytes = WAL_CACHE_KEEP_DEFAULT;
	if (o->lz4_acceleration > 65537)
		o->lz4_acceleration = 65537;
	if (o->block_bytes_max < WAL_BLOCK_BYTES_MIN ||
	    o->block_bytes_max > WAL_BLOCK_RAW_BYTES_MAX) {
		wal_set_error("block_bytes_max %u outside %u..%u", o->block_bytes_max,
			      WAL_BLOCK_BYTES_MIN, WAL_BLOCK_RAW_BYTES_MAX);
		return -EINVAL;
	}
	if (o->segment_bytes_max < WAL_SEGMENT_BYTES_MIN) {
		wal_set_error("segment_bytes_max below %llu",
			      (unsigned long long)WAL_SEGMENT_BYTES_MIN);
		return -EINVAL;
	}
	if (o->shard_count > WAL_SHARDS_MAX) {
		wal_set_error("shard count %u above %u", o->shard_count, WAL_SHARDS_MAX);
		return -EINVAL;
	}
	if (o->fsync_mode != WAL_FSYNC_ALWAYS && o->fsync_mode != WAL_FSYNC_INTERVAL) {
		wal_set_error("unknown fsync mode %d", o->fsync_mode);
		return -EINVAL;
	}
	return 0;
}

int wal_open(const char *data_dir, const struct wal_options *opt, struct wal **out)
{
	*out = NULL;
	wal_set_error("%s", "");
	struct wal *w = calloc(1, sizeof *w);
	if (!w)
		return -ENOMEM;
	w->lock_fd = -1;
	int rc = options_fill(opt, &w->opt);
	if (rc < 0)
		goto out_free;
	char wal_dir[WAL_PATH_BYTES_MAX], lock_path[WAL_PATH_BYTES_MAX];
	int n1 = snprintf(w->data_dir, sizeof w->data_dir, "%s", data_dir);
	int n2 = snprintf(wal_dir, sizeof wal_dir, "%s/wal", data_dir);
	int n3 = snprintf(lock_path, sizeof lock_path, "%s/wal/lock", data_dir);
	if (n1 < 0 || n2 < 0 || n3 < 0 || (size_t)n3 >= sizeof lock_path - 64) {
		rc = -ENAMETOOLONG;
		goto out_free;
	}
	if ((rc = mkdir_durable(w->opt.io, data_dir)) < 0 ||
	    (rc = mkdir_durable(w->opt.io, wal_dir)) < 0) {
		wal_set_error("%s: cannot create: %s", wal_dir, strerror(-rc));
		goto out_free;
	}
	w->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (w->lock_fd < 0) {
		rc = -errno;
		goto out_free;
	}
	if (flock(w->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		wal_set_error("%s: another writer has this WAL open", wal_dir);
		goto out_free;
	}
	uint16_t stored = 0;
	rc = meta_read(wal_dir, &stored);
	if (rc == -ENOENT) {
		if (w->opt.shard_count == 0) {
			wal_set_error("%s: new WAL needs a shard count", wal_dir);
			rc = -EINVAL;
			goto out_free;
		}
		rc = meta_write(w->opt.io, wal_dir, w->opt.shard_count);
		if (rc < 0) {
			wal_set_error("%s: cannot write meta: %s", wal_dir, strerror(-rc));
			goto out_free;
		}
		stored = w->opt.shard_count;
	} else if (rc < 0) {
		goto out_free;
	} else if (w->opt.shard_count != 0 && w->opt.shard_count != stored) {
		wal_set_error("%s: WAL was created with %u shards, asked for %u (the shard count "
			      "cannot change: offsets and dedup state are per shard)",
			      wal_dir, stored, w->opt.shard_count);
		rc = -EINVAL;
		goto out_free;
	}
	w->shard_count = stored;
	pthread_mutex_init(&w->comb_mu, NULL);
	pthread_cond_init(&w->comb_cv, NULL);
	w->comb_next = 1;
	w->shards = calloc(stored, sizeof *w->shards);
	if (!w->shards) {
		rc = -ENOMEM;
		goto out_free;
	}
	for (uint16_t i = 0; i < stored; i++) {
		rc = shard_open(w, i, &w->shards[i]);
		if (rc < 0)
			goto out_free;
	}
	w->comb_on = stored > 0 && !w->opt.no_shared_flush && w->shards[0]->group_flush;
	w->comb_dev = stored > 0 ? w->shards[0]->dev : 0;
	if (w->opt.prefill_bytes && !w->opt.no_prefill_ahead) {
		pthread_mutex_init(&w->prep_mu, NULL);
		pthread_cond_init(&w->prep_cv, NULL);
		pthread_cond_init(&w->prep_idle_cv, NULL);
		if (pthread_create(&w->prep_th, NULL, prep_main, w) == 0) {
			w->prep_started = true;
		} else {
			/* Not fatal: the group commits make every prefill durable themselves. */
			w->opt.no_prefill_ahead = true;
			pthread_mutex_destroy(&w->prep_mu);
			pthread_cond_destroy(&w->prep_cv);
			pthread_cond_destroy(&w->prep_idle_cv);
		}
	}
	*out = w;
	return 0;
out_free:
	if (w->shards)
		for (uint16_t i = 0; i < w->shard_count; i++)
			shard_free(w->shards[i]);
	free(w->shards);
	if (w->lock_fd >= 0)
		close(w->lock_fd);
	free(w);
	return rc;
}

int wal_close(struct wal *w)
{
	if (!w)
		return 0;
	int first = 0;
	if (w->prep_started) {
		prep_stop(w);
		pthread_mutex_destroy(&w->prep_mu);
		pthread_cond_destroy(&w->prep_cv);
		pthread_cond_destroy(&w->prep_idle_cv);
	}
	for (uint16_t i = 0; i < w->shard_count; i++) {
		struct wal_shard *s = w->shards[i];
		int rc = seal(s);
		if (rc == 0 && s->file_bytes > s->seg_bytes && !atomic_load(&s->failed)) {
			/* Leave no prefill behind: the file ends with its last block. */
			rc = s->io->ftruncate(s->io->ctx, s->fd, (off_t)s->seg_bytes);
			if (rc == 0)
				s->file_bytes = s->seg_bytes;
		}
		if (rc == 0)
			rc = wal_sync(s, NULL);
		if (rc < 0 && first == 0)
			first = rc;
		shard_free(s);
	}
	free(w->shards);
	pthread_mutex_destroy(&w->comb_mu);
	pthread_cond_destroy(&w->comb_cv);
	close(w->lock_fd);
	free(w);
	return first;
}
