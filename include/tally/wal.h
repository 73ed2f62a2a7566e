/*
 * tally/wal.h — the segmented, LZ4-compressed write-ahead log: the system of record for billing.
 *
 * Layout: DATA/wal/meta (format version + shard count, written once at creation),
 * DATA/wal/shard-NN/<20-digit base offset>.log segments, a sparse .idx beside each, and
 * DATA/wal/shard-NN/durable (the durable watermark, mmap'd, readable by other processes).
 * The byte-by-byte format and the exact block validity rule are in docs/wal-format.md.
 *
 * Offsets are dense per shard from 0. A record is an EVENT (tenant + the event body exactly as
 * given) or a TICK (ingest time only). Records are buffered in the shard's open block; a block
 * is sealed (compressed, checksummed, written with pwrite, no sync) when it is full, when the
 * caller calls wal_flush() (e.g. because wal_block_due() says it is older than block_age_us),
 * or at a segment roll. wal_sync() makes everything written durable and only then publishes the
 * durable watermark. The caller drives flush and sync; the module's only thread of its own is
 * the prefill thread (wal_options.no_prefill_ahead, docs/wal-format.md "Prefill"), which only
 * fdatasyncs zero-filled stretches ahead of the data, on its own file descriptor, and then
 * records that their size is durable.
 *
 * Threads, per shard: exactly ONE appender thread calls wal_append*, wal_flush, wal_block_due,
 * wal_next_offset, wal_shard_last_discard; syncer threads (may be the same) call wal_sync or
 * wal_sync_group, which run entirely under the shard's sync lock, so two of them never overlap;
 * any thread may call wal_written_next / wal_durable_next / wal_shard_failed (atomic loads).
 * Memory ordering: the appender stores written_next with release after pwrite() returned; the
 * syncer loads it with acquire, fdatasync()s, then stores durable_next with release (and into
 * the shared watermark page). A reader that loads durable_next with acquire sees every byte of
 * every block below it in the page cache. The syncer and the appender share one mutex that is
 * taken by wal_sync / wal_sync_group (around their syncs), by the appender only at a segment
 * roll and when a failed block write cuts the file back, and briefly by the prefill thread
 * before and after (never during) its fdatasync.
 *
 * Failure semantics:
 *   - fdatasync/fsync failure (the prefill thread's included) is FATAL for the shard: it
 *     returns -EIO from every later append/flush/sync, and its durable watermark never
 *     advances again.
 *   - a pwrite failure (ENOSPC, EIO, short write that cannot be completed) while sealing a block
 *     is RETRYABLE: the file is truncated back to the last good byte, the block's records are
 *     DISCARDED, next_offset rewinds to the block's first offset, and the error is returned.
 *     wal_shard_last_discard() tells which offsets were discarded; they were never durable, so
 *     never acknowledged; later appends reuse them. (If that truncation itself fails the shard
 *     becomes failed: -EIO.)
 *
 * Errors: 0 or -errno. Corruption is -EBADMSG; a human message naming the file and byte offset
 * is available from wal_last_error() (thread-local, set by the failing call).
 */
#ifndef TALLY_WAL_H
#define TALLY_WAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tally/event.h"

#define WAL_WUR __attribute__((warn_unused_result))

#define WAL_FORMAT_VERSION      1
#define WAL_SHARDS_MAX          256
#define WAL_BLOCK_HEADER_BYTES  72
#define WAL_BLOCK_RAW_BYTES_MAX (1u << 20) /* cap on a block's uncompressed payload */
#define WAL_BLOCK_RECORDS_MAX   65536u     /* cap on a block's record count */
/* Largest single record: kind + ingest delta varint + tenant + body length varint + body. */
#define WAL_RECORD_BYTES_MAX        (1 + 10 + 1 + TALLY_TENANT_BYTES_MAX + 3 + TALLY_EVENT_BYTES_MAX)
#define WAL_BLOCK_BYTES_DEFAULT     (64u << 10)
#define WAL_BLOCK_BYTES_MIN         (16u << 10) /* >= WAL_RECORD_BYTES_MAX */
#define WAL_BLOCK_AGE_US_DEFAULT    200u
#define WAL_SEGMENT_BYTES_DEFAULT   (128ull << 20)
#define WAL_PREFILL_BYTES_DEFAULT   (1u << 20)
#define WAL_PREFILL_OFF             UINT32_MAX /* wal_options.prefill_bytes: append only */
#define WAL_CACHE_KEEP_DEFAULT      (8u << 20)
#define WAL_CACHE_KEEP_ALL          UINT32_MAX /* wal_options.cache_keep_bytes: never drop */
#define WAL_SEGMENT_BYTES_MIN       (64ull << 10)
#define WAL_SEGMENT_AGE_US_DEFAULT  (3600ull * 1000000ull)
#define WAL_RETENTION_DAYS_DEFAULT  400u
#define WAL_CONSUMER_NAME_BYTES_MAX 64
#define WAL_PATH_BYTES_MAX          4096

enum wal_record_kind {
	WAL_RECORD_EVENT = 1,
	WAL_RECORD_TICK = 2,
};

enum wal_fsync_mode {
	WAL_FSYNC_ALWAYS = 0,   /* a record is durable only once a wal_sync covering it returned */
	WAL_FSYNC_INTERVAL = 1, /* caller acks on write and syncs every fsync_interval_ms: may lose
				   that much acknowledged data on power loss (documented policy) */
};

/*
 * The I/O seam (fault and latency injection). Every function returns what libc returns on
 * success and -errno on failure (never -1 + errno). NULL in wal_options = libc.
 */
struct wal_io {
	int (*open)(void *ctx, const char *path, int flags, mode_t mode);
	ssize_t (*pwrite)(void *ctx, int fd, const void *buf, size_t n, off_t off);
	ssize_t (*pread)(void *ctx, int fd, void *buf, size_t n, off_t off);
	int (*fdatasync)(void *ctx, int fd);
	int (*fsync)(void *ctx, int fd); /* directories and metadata files */
	int (*ftruncate)(void *ctx, int fd, off_t len);
	int (*close)(void *ctx, int fd);
	/*
	 * Optional (NULL = absent): writes back [off, off + n) of fd without a device cache flush
	 * and without any metadata. wait = false only starts the write-back (libc:
	 * sync_file_range WRITE); wait = true also waits until the device has every byte of the
	 * range (WAIT_BEFORE | WRITE | WAIT_AFTER). wal_sync_group() starts it on every file
	 * first, then waits on each, then flushes the device once for all of them.
	 */
	int (*sync_range)(void *ctx, int fd, off_t off, off_t n, bool wait);
	/*
	 * Optional (NULL = absent): drops [off, off + n) of fd from the page cache (n = 0: to the
	 * end). Only called on durable bytes; a hint, its errors are ignored (libc:
	 * posix_fadvise DONTNEED).
	 */
	int (*drop_cache)(void *ctx, int fd, off_t off, off_t n);
	void *ctx;
};

/* The default seam: plain libc. */
const struct wal_io *wal_io_libc(void);

/* A seam that forwards to `inner` and sleeps sync_delay_us before every fdatasync/fsync. */
struct wal_io_delay {
	struct wal_io io; /* pass &d->io in wal_options.io */
	const struct wal_io *inner;
	uint32_t sync_delay_us;
};
void wal_io_delay_init(struct wal_io_delay *d, const struct wal_io *inner, uint32_t sync_delay_us);

struct wal_options {
	uint16_t shard_count;       /* used when creating; else must match, or 0 = use stored */
	uint32_t block_bytes_max;   /* raw payload bytes per block; 0 = 64 KiB; 16 KiB..1 MiB */
	uint32_t block_age_us;      /* wal_block_due() threshold; 0 = 200 */
	uint64_t segment_bytes_max; /* roll threshold; 0 = 128 MiB */
	uint64_t segment_age_us;    /* roll threshold on ingest time; 0 = 1 h */
	int fsync_mode; /* enum wal_fsync_mode: informational for the caller's ack policy */
	uint32_t fsync_interval_ms;
	bool verify_sealed; /* open: checksum every block of every sealed segment too */
	bool repair;        /* open: quarantine a corrupt tail instead of refusing (logged) */
	uint32_t lz4_acceleration; /* LZ4_compress_fast acceleration; 0 = 1 (best ratio) */
	/* Zero-fill the segment file this far ahead of the data, so that group commits overwrite
	   instead of append (no journal commit per fdatasync); 0 = 1 MiB, WAL_PREFILL_OFF = off.
	   docs/wal-format.md "Prefill". */
	uint32_t prefill_bytes;
	/* wal_sync_group() flushes each shard with its own fdatasync, never sharing one device
	   flush (the group flush is also off by itself where it is not known to be sound: see
	   wal_sync_group). */
	bool no_group_flush;
	/* Concurrent wal_sync_group() calls (one per sync group) each take their own device
	   flush instead of sharing one (see "Shared flush" at wal_sync_group). */
	bool no_shared_flush;
	/* Prefill ahead (docs/wal-format.md "Prefill"): the appender zero-fills the next stretch
	   while half a prefill is still left, and the WAL's prefill thread makes the new size
	   durable with its own fdatasync, so that group commits stay inside durable prefill and
	   never wait for a size change. true = zero-fill only when a block would extend the file,
	   and let the next group commit make the size durable. */
	bool no_prefill_ahead;
	/* Drop-behind (docs/wal-format.md "Page cache"): after a sync, the current segment's
	   durable bytes more than this far behind its end are dropped from the page cache, so
	   the cache the WAL writes through stays this size per shard and its pages are reused
	   instead of taking fresh memory. 0 = 8 MiB; WAL_CACHE_KEEP_ALL = never drop. */
	uint32_t cache_keep_bytes;
	const struct wal_io *io;   /* NULL = libc */
	/* Called on the appender thread after a segment was sealed (synced) and the next one
	 * exists. */
	void (*on_segment_sealed)(void *ctx, uint16_t shard, uint64_t base_offset,
				  uint64_t next_offset);
	void *ctx;
};

struct wal;
struct wal_shard;

/* Human-readable detail of the last error on this thread ("" if none). */
const char *wal_last_error(void);

/*
 * Opens (creating if needed) DATA/wal and recovers every shard: the newest segment of each is
 * scanned, a torn tail truncated and synced; sealed segments are checked for continuity.
 * Returns 0, -EINVAL (bad options, shard count mismatch), -EBUSY (another writer holds the
 * lock), -EBADMSG (corruption; see wal_last_error()), or another -errno.
 */
int wal_open(const char *data_dir, const struct wal_options *opt, struct wal **out) WAL_WUR;
/* Flushes, syncs and closes every shard; frees w. Returns the first error met (w is freed). */
int wal_close(struct wal *w);

uint16_t wal_shard_count(const struct wal *w);
struct wal_shard *wal_shard(struct wal *w, uint16_t i);
uint16_t wal_shard_index(const struct wal_shard *s);

/* --- appender thread --- */

/*
 * Appends one EVENT record (body = validated event body, 12..TALLY_EVENT_BYTES_MAX bytes;
 * tenant 0..64 bytes) with the given ingest time (clamped to the shard's previous one if it
 * went back). May seal the open block first if the record does not fit. On success *offset_out
 * (may be NULL) is the record's offset. On error the record was NOT appended; if the error
 * came from sealing the previous block, wal_shard_last_discard() names the discarded offsets.
 * Errors: -EINVAL (lengths), -ENOSPC/-EIO (retryable write failure), -EIO (shard failed).
 */
int wal_append(struct wal_shard *s, struct tally_view tenant, const struct tally_view *event_body,
	       int64_t ingest_time_us, uint64_t *offset_out) WAL_WUR;
int wal_append_tick(struct wal_shard *s, int64_t ingest_time_us, uint64_t *offset_out) WAL_WUR;
/* Seals and writes the open block, if any. Errors as for wal_append. */
int wal_flush(struct wal_shard *s) WAL_WUR;
/* True if the open block holds records and its first one is older than block_age_us. */
bool wal_block_due(const struct wal_shard *s, int64_t now_us);
/* Offset the next appended record will get. */
uint64_t wal_next_offset(const struct wal_shard *s);
/* Offsets discarded by the last failed block write: [*first, *first + *count). 0 if none yet. */
void wal_shard_last_discard(const struct wal_shard *s, uint64_t *first, uint64_t *count);

/* --- any thread --- */

uint64_t wal_written_next(const struct wal_shard *s); /* offsets < this were written (no sync) */
uint64_t wal_durable_next(const struct wal_shard *s); /* offsets < this are durable */
int wal_shard_failed(const struct wal_shard *s);      /* 0, or the fatal -errno */

/* --- syncer thread --- */

/*
 * fdatasync()s what was written and then publishes the durable watermark (in memory and in the
 * shared page that other processes read). *durable_next_out (may be NULL) gets the new value.
 * Failure is fatal for the shard: -EIO now and forever.
 */
int wal_sync(struct wal_shard *s, uint64_t *durable_next_out) WAL_WUR;

/*
 * Group commit for several shards (give them in increasing index order, each once, and let no
 * other call hold two of their sync locks in another order; tallyd: one syncer thread per
 * group, plus a final wal_sync of a shard as it closes): makes everything
 * written in each of them durable, then publishes each durable watermark, like wal_sync() on
 * each, but with as few device cache flushes as is sound:
 *   - a shard whose new blocks lie inside space that an earlier fdatasync of the same segment
 *     file made durable (its prefill: allocated, zero-written, size committed) needs no
 *     metadata. Its blocks are written back with io->sync_range, and ONE fdatasync on one of
 *     those files then flushes the device cache for all of them;
 *   - any other shard (new blocks past the durable prefill, another device, no sync_range in
 *     the seam, a file system not known to flush the whole device on fdatasync, or
 *     opt.no_group_flush) gets its own fdatasync.
 * Known to flush the device: ext2/3/4 and XFS (fdatasync issues a cache flush even when the
 * file has nothing dirty), tmpfs (nothing to flush). Failure is fatal for the shards it
 * touched, as in wal_sync(). Returns 0 or the first error.
 */
int wal_sync_group(struct wal_shard *const *shards, size_t n) WAL_WUR;
/*
 * Shared flush: wal_sync_group() calls running at the same time on different threads (tallyd:
 * one per sync group, all on one WAL) share the device flush too. A call whose write-backs
 * are complete waits, before flushing, for every other call that had already taken its locks
 * to finish its write-backs as well; then one fdatasync covers all of them. A call that
 * arrives while that flush runs waits for the next one: no call relies on a flush that
 * started before its own write-backs completed. Off with opt.no_shared_flush, and for any
 * shard not on the device of shard 0. wal_shared_flush_stats() counts the calls that reached
 * the shared flush and the fdatasync calls made for them.
 */
void wal_shared_flush_stats(struct wal *w, uint64_t *calls, uint64_t *flushes);
/*
 * Joining early. wal_sync_group() joins the shared flush as it starts. A thread that knows a
 * group commit is coming (tallyd's owner, as it kicks its syncer) may join for it earlier, with
 * any shard of the WAL: concurrent calls then wait for that commit's write-backs too and flush
 * once with it. Every join must be consumed, exactly once, by wal_sync_group_joined() (same
 * as wal_sync_group() but for the join) or wal_shared_flush_leave(), or the other callers wait
 * forever. Any thread.
 */
void wal_shared_flush_join(struct wal_shard *any);
void wal_shared_flush_leave(struct wal_shard *any);
int wal_sync_group_joined(struct wal_shard *const *shards, size_t n) WAL_WUR;
/* Whether wal_sync_group() may let this shard share a device flush (decided at wal_open). */
bool wal_shard_group_flush(const struct wal_shard *s);

/* Waits until the prefill thread (wal_options.no_prefill_ahead) has no request pending or
   running: every zero-fill ahead made so far is durable with its size, or failed its shard.
   For tests and benchmarks; returns at once when the thread is off. Any thread. */
void wal_prefill_wait(struct wal *w);

/* --- readers (any process) --- */

struct wal_record {
	uint64_t offset;
	uint16_t shard;
	uint8_t kind; /* enum wal_record_kind */
	int64_t ingest_time_us;
	struct tally_view tenant; /* EVENT only; views valid until the next reader call */
	struct tally_event ev;    /* EVENT only: decoded with event_decode() */
};

struct wal_reader;

/*
 * Opens a reader on one shard (0..n-1) or all (-1; records are merged by ingest time among
 * those currently durable). Positioned at the earliest record. Never returns a record at or
 * beyond a shard's durable watermark.
 */
int wal_reader_open(const char *data_dir, int shard, struct wal_reader **out) WAL_WUR;
/* Positions `shard` so that the next record it yields is `offset`. -ERANGE if the offset was
   deleted by retention. An offset not yet durable is waited for (next() returns 0). */
int wal_reader_seek(struct wal_reader *r, uint16_t shard, uint64_t offset) WAL_WUR;
int wal_reader_seek_earliest(struct wal_reader *r) WAL_WUR; /* every shard of the reader */
int wal_reader_seek_latest(struct wal_reader *r) WAL_WUR;   /* every shard: its durable end */
/* 1 = a record in *rec, 0 = nothing durable right now, <0 = error (-EBADMSG corruption). */
int wal_reader_next(struct wal_reader *r, struct wal_record *rec) WAL_WUR;
/* Waits until new durable data may be there or timeout_ms passed (futex on the shared
   watermark page; no busy spin). Returns 0 either way, <0 on error. */
int wal_reader_wait(struct wal_reader *r, int timeout_ms);
/* Next offset the reader will yield for `shard`. */
uint64_t wal_reader_position(const struct wal_reader *r, uint16_t shard);
uint16_t wal_reader_shard_count(const struct wal_reader *r);
/* Reads the durable watermark of `shard` as published by the writer. */
uint64_t wal_reader_durable_next(const struct wal_reader *r, uint16_t shard);
void wal_reader_close(struct wal_reader *r);

/* --- segments (for dedup rebuild, tools, retention) --- */

struct wal_segment_info {
	uint64_t base_offset;
	uint64_t file_bytes;
	bool sealed; /* a newer segment exists */
	char path[WAL_PATH_BYTES_MAX];
};

/* Reads the stored shard count of DATA/wal. */
int wal_stored_shard_count(const char *data_dir, uint16_t *count_out) WAL_WUR;

/*
 * Lists the segments of a shard, oldest first, into out[0..cap). *count_out gets the total
 * number (may exceed cap: call again with a bigger array).
 */
int wal_segments_list(const char *data_dir, uint16_t shard, struct wal_segment_info *out,
		      size_t cap, size_t *count_out) WAL_WUR;

/*
 * Iterates the records of one segment file, every valid block up to `limit_next` (exclusive;
 * UINT64_MAX = to the end of the file, e.g. after wal_open recovery; use wal_durable_next() for
 * the newest segment of a running writer). An invalid block ends the iteration (0) only if
 * allow_torn_tail; otherwise next() returns -EBADMSG (file and byte in wal_last_error()).
 * It does not look at the durable watermark. rec->shard is 0: the caller knows the shard.
 * next(): 1 = record, 0 = end, <0 = error. Views are valid until the next call.
 */
struct wal_segment_iter;
int wal_segment_iter_open(const char *path, uint64_t base_offset, uint64_t limit_next,
			  bool allow_torn_tail, struct wal_segment_iter **out) WAL_WUR;
int wal_segment_iter_next(struct wal_segment_iter *it, struct wal_record *rec) WAL_WUR;
void wal_segment_iter_close(struct wal_segment_iter *it);

/* Per-segment verification summary (tally wal verify / stats). */
struct wal_segment_stats {
	uint64_t base_offset;
	uint64_t next_offset; /* one past the last record */
	uint64_t blocks;
	uint64_t records;
	uint64_t events; /* events and ticks: counted only with decode_records */
	uint64_t ticks;
	uint64_t raw_bytes;  /* payload bytes before compression */
	uint64_t file_bytes; /* valid bytes on disk (headers included) */
	int64_t max_ingest_time_us;
	uint64_t torn_tail_at; /* UINT64_MAX, or byte position of the first invalid block */
};
/* Checks every block of a segment (rules, checksum, offset continuity; with decode_records
   every record decoded too). 0, or -EBADMSG at the first invalid block (st tells where). */
int wal_segment_verify(const char *path, uint64_t base_offset, bool decode_records,
		       struct wal_segment_stats *st) WAL_WUR;

/* --- consumer checkpoints: DATA/consumers/NAME.ckpt, atomic (tmp, fsync, rename, fsync dir) --- */

int wal_checkpoint_save(const char *data_dir, const char *consumer, const uint64_t *next_offsets,
			uint16_t n) WAL_WUR;
/* -ENOENT if none; -EINVAL if it holds a different shard count; -EBADMSG if damaged. */
int wal_checkpoint_load(const char *data_dir, const char *consumer, uint64_t *next_offsets,
			uint16_t n) WAL_WUR;

/*
 * Retention: deletes sealed segments of every shard whose last ingest time is older than
 * now_us - max_age_us, unless a consumer checkpoint (any DATA/consumers/ *.ckpt) has not yet
 * passed the segment's end (skipped unless force). Fsyncs the directory after deleting.
 * *deleted_out (may be NULL) gets the number of segments deleted.
 */
int wal_retention_run(const char *data_dir, uint64_t max_age_us, int64_t now_us, bool force,
		      uint32_t *deleted_out) WAL_WUR;

#endif /* TALLY_WAL_H */
