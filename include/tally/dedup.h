/*
 * tally/dedup.h — idempotency-key dedup: one shard per WAL shard, a hot open-addressing table
 * for the keys of unsealed WAL segments, and a cold tier of sorted on-disk runs (one per sealed
 * segment, a "generation") guarded by in-memory blocked bloom filters. Design, file format and
 * sizing: docs/dedup.md.
 *
 * Fingerprint bit budget (struct tally_fp, XXH3-128 of tenant+key, from event_fingerprint();
 * nothing here hashes again). Each consumer uses its own bits so that they stay independent:
 *   fp.hi bits 48..63  shard choice             dedup_shard_of()
 *   fp.hi bits  0..47  bloom bit positions      8 x 6 bits, one bit per 64-bit word of a block
 *   fp.lo bits  0..30  hot-table home slot      (capacity <= 2^31)
 *   fp.lo bits 32..47  hot-table 16-bit tag
 *   fp.lo (high bits)  bloom block (fastrange) and the cold runs' sort order / sparse index
 * Exact comparison is always on all 128 bits.
 *
 * Durability rule: every entry carries the WAL offset of its original. An entry whose offset is
 * DEDUP_OFFSET_NONE (claimed, not yet appended) or >= the shard's durable watermark is PENDING.
 * A duplicate of a pending entry is answered DEDUP_PENDING_*; the caller waits until the
 * original is durable (then it is a DUPLICATE/CONFLICT) or aborted (then it checks again).
 * DEDUP_DUPLICATE is therefore only ever answered for an original that is durable in the WAL.
 *
 * Threads: a struct dedup_shard is owned by one thread; no function here locks, and none may be
 * called concurrently on the same shard. Different shards are fully independent.
 */
#ifndef TALLY_DEDUP_H
#define TALLY_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/event.h"

#define DEDUP_OFFSET_NONE          UINT64_MAX /* claimed, WAL offset not known yet */
#define DEDUP_WINDOW_US_DEFAULT    (35LL * 86400 * 1000000)
#define DEDUP_WINDOW_US_MAX        (400LL * 86400 * 1000000)
#define DEDUP_BLOOM_FP_PER_MILLION_DEFAULT 10000u /* 1% */
#define DEDUP_EXPECTED_KEYS_DEFAULT (1u << 20)
#define DEDUP_HOT_SLOTS_MAX        (1ULL << 31) /* hot-table capacity bound (index bits 0..30) */
#define DEDUP_RUN_KEYS_MAX         0xFFFFFFFFull /* keys in one .keys run (u32 index) */
#define DEDUP_GENERATIONS_MAX      65536u       /* cold generations per shard */
#define DEDUP_COMPACT_FAN_IN_DEFAULT 8u
#define DEDUP_COMPACT_FAN_IN_MAX   16u
#define DEDUP_COMPACT_LEVEL_MAX_DEFAULT 2u

struct dedup_shard; /* opaque */

struct dedup_options {
	uint64_t expected_keys;            /* hot keys to preallocate for; 0 = default (1 Mi) */
	uint32_t bloom_fp_per_million;     /* bloom false-positive target; 0 = 10000 (1%) */
	int64_t window_us;                 /* dedup window; 0 = 35 days; max 400 days */
	const char *dir;                   /* root of the .keys runs; NULL = no cold tier */
	/* Compaction policy (additions to the brief's shape; 0 = default): */
	uint32_t compact_fan_in;           /* generations merged at once; 0 = 8, 2..16 */
	uint32_t compact_level_max;        /* merges of merges up to this level; 0 = 2 */
	/* Keep a journal of the keys given an offset, in offset order (32 bytes per key not yet
	 * sealed), so that dedup_seal_begin() takes a segment's keys from it instead of scanning
	 * the whole hot table on the owning thread. For a broker that seals in three steps. */
	bool seal_journal;
};

/* Routes a fingerprint to one of shard_count shards (fp.hi bits 48..63, fastrange). */
static inline uint16_t dedup_shard_of(struct tally_fp fp, uint16_t shard_count)
{
	return (uint16_t)(((fp.hi >> 48) * (uint64_t)shard_count) >> 16);
}

/*
 * Opens shard `shard`: preallocates the hot table for opt->expected_keys, and when opt->dir is
 * set creates <dir>/shard-NN/ and loads every valid .keys run found there (verifying checksum,
 * order and bounds, rebuilding its bloom filter and sparse index). Runs that fail verification
 * are not loaded; list them with dedup_bad_runs() and rebuild them with
 * dedup_rebuild_generation(). Returns 0 or -errno (-EINVAL for bad options).
 */
int dedup_shard_open(const struct dedup_options *opt, uint16_t shard, struct dedup_shard **out)
	__attribute__((warn_unused_result));
void dedup_shard_close(struct dedup_shard *d);

enum dedup_verdict {
	DEDUP_NEW = 0,               /* key claimed (pending, offset NONE): append, then set_offset */
	DEDUP_DUPLICATE,             /* same key, same digest; the original is durable */
	DEDUP_CONFLICT,              /* same key, different digest; the original (durable) stands */
	DEDUP_PENDING_DUPLICATE,     /* as DUPLICATE, but the original is not durable yet */
	DEDUP_PENDING_CONFLICT,      /* as CONFLICT, but the original is not durable yet */
	/* Additions to the brief's shape (see docs/dedup.md "Verdicts"): */
	DEDUP_TOO_OLD,               /* event_time_us older than the oldest expiry cutoff used so far:
				        an original may have expired; the broker must reject it */
	DEDUP_FULL,                  /* hot table full and could not grow: retry later */
};

struct dedup_query {
	struct tally_fp fp;
	uint32_t digest;       /* event_content_digest() */
	int64_t event_time_us;
};

struct dedup_answer {
	uint8_t verdict;  /* enum dedup_verdict */
	uint32_t slot;    /* NEW: where the claim was put, a hint for dedup_set_offset_hint();
			     DEDUP_SLOT_NONE otherwise */
	uint64_t offset;  /* original's offset (DUPLICATE/CONFLICT/PENDING_*; may be NONE when
			     pending); DEDUP_OFFSET_NONE otherwise */
};
#define DEDUP_SLOT_NONE UINT32_MAX

/*
 * Processes q[0..n) IN ORDER: a later query sees the keys claimed by earlier ones in the same
 * call. A NEW key is claimed at once as pending with offset DEDUP_OFFSET_NONE; the caller
 * appends it to the WAL, then calls dedup_set_offset_hint(). Internally works in chunks of
 * DEDUP_BATCH queries: home slots are computed and prefetched for the chunk, then probed.
 * Never allocates except when the hot table outgrows opt->expected_keys: then one mmap per
 * doubling (not per key); the move to the bigger table is incremental (bounded per call).
 */
#define DEDUP_BATCH 32
void dedup_check_claim(struct dedup_shard *d, const struct dedup_query *q, size_t n,
		       struct dedup_answer *out);

/* Caps the rate at which the calling thread writes .keys runs and .bloom files (bytes per
 * second; 0 = no cap, the default). For a background sealing thread: the disk is left to the
 * WAL, whose fdatasync would otherwise queue behind a run's megabytes. */
void dedup_set_thread_write_rate(uint64_t bytes_per_s);

/* Records the WAL offset of a claimed (pending) key. No effect if the key is not hot. */
void dedup_set_offset(struct dedup_shard *d, struct tally_fp fp, uint64_t offset);

/* The same, given the claim's answer->slot: if the key is still in that slot (it is unless
 * a later claim call moved it), one record is touched instead of a whole probe — at 100M
 * keys, a probe's second page walk is what a set_offset costs. A stale hint only costs the
 * probe: the result is always that of dedup_set_offset(). */
void dedup_set_offset_hint(struct dedup_shard *d, struct tally_fp fp, uint32_t slot,
			   uint64_t offset);

/* The original's WAL write failed: removes the pending claim so that a retry is accepted.
 * Only a pending entry is removed; a durable one is left alone. */
void dedup_abort(struct dedup_shard *d, struct tally_fp fp);

/* Offsets < durable_next are durable. O(1): pending-ness is computed at lookup. Monotone:
 * a smaller value than the current one is ignored. */
void dedup_set_durable(struct dedup_shard *d, uint64_t durable_next);
bool dedup_is_pending(const struct dedup_shard *d, uint64_t offset);

/*
 * WAL segment [base_offset, next_offset) of this shard was sealed and is durable
 * (next_offset <= durable watermark, else -EINVAL). Takes its keys out of the hot table (one
 * pass), writes them as the sorted run <dir>/shard-NN/<20-digit base>.keys (tmp file, rename;
 * not synced: the run can be rebuilt from the WAL, a torn one fails verification at open) and
 * installs its bloom filter and sparse index. On failure the keys go back into the hot table.
 * Owning thread only; it stalls that thread ~150-220 ms per million keys (docs/dedup.md).
 * Returns 0 or -errno (-EEXIST if the range overlaps a loaded generation, -EINVAL without dir).
 */
int dedup_seal_generation(struct dedup_shard *d, uint64_t base_offset, uint64_t next_offset,
			  int64_t max_event_time_us) __attribute__((warn_unused_result));

/*
 * Sealing off the owning thread: the same as dedup_seal_generation() in three steps.
 *   begin  (owning thread) checks as dedup_seal_generation does and takes the segment's keys:
 *          with opt->seal_journal, from the journal when it covers the range (the keys are a
 *          contiguous slice of it: no scan); otherwise by a read-only pass over the hot table.
 *          The keys stay hot and keep being answered. -EBUSY while another job is out.
 *   run    (any thread; touches only the job) sorts, writes the run, builds bloom and index.
 *   finish (owning thread) installs the generation and frees the job; from then on the sealed
 *          keys leave the hot table a bounded number per dedup_check_claim() call (the same
 *          answer comes from either tier meanwhile; dedup_stats counts them in both). Returns
 *          run's result, or -EEXIST if a rebuild installed that range meanwhile; on error
 *          nothing changed. dedup_shard_close() must not be called while a job is out.
 */
struct dedup_sealing;
int dedup_seal_begin(struct dedup_shard *d, uint64_t base_offset, uint64_t next_offset,
		     int64_t max_event_time_us, struct dedup_sealing **out)
	__attribute__((warn_unused_result));
int dedup_seal_run(struct dedup_sealing *s) __attribute__((warn_unused_result));
int dedup_seal_finish(struct dedup_shard *d, struct dedup_sealing *s)
	__attribute__((warn_unused_result));

/*
 * Drops (and unlinks the runs of) every generation whose max_event_time_us is older than
 * now_us - window. Queries with an event time before that cutoff are answered DEDUP_TOO_OLD
 * from then on. Returns the number of generations expired, or -errno of the first unlink that
 * failed (the generations are dropped from memory regardless).
 */
int dedup_expire(struct dedup_shard *d, int64_t now_us) __attribute__((warn_unused_result));

/*
 * Restart, after dedup_shard_open() loaded the cold runs: the caller feeds the keys of the
 * unsealed WAL tail, in WAL order, then sets the durable watermark. A key already present
 * keeps its first (lowest) offset. Returns 0, or -ENOSPC if the hot table is full.
 */
int dedup_restore_key(struct dedup_shard *d, struct tally_fp fp, uint32_t digest,
		      uint64_t offset) __attribute__((warn_unused_result));

/* One key of a generation, for dedup_rebuild_generation(). */
struct dedup_key {
	struct tally_fp fp;
	uint64_t offset;
	uint32_t digest;
};

/* Base offsets of the runs that dedup_shard_open() found bad (checksum, size, order, bounds).
 * Writes up to cap of them to bases[] and returns how many there are in total. */
size_t dedup_bad_runs(const struct dedup_shard *d, uint64_t *bases, size_t cap);

/* True if a loaded generation covers the segment starting at base_offset (its own run, or a
 * merged one, is present and good). At restart every sealed WAL segment inside the window is
 * checked with this (dedup_recover_from_wal does it). */
bool dedup_has_generation(const struct dedup_shard *d, uint64_t base_offset);

/*
 * Rebuilds a missing or bad run from its keys (read back from the WAL segment by the caller):
 * sorts keys[0..n) in place, writes the run, loads the generation. Keys already in the hot
 * table with an offset inside the range are dropped from it. Returns 0 or -errno
 * (-EINVAL: a key's offset outside [base, next), or n > DEDUP_RUN_KEYS_MAX).
 */
int dedup_rebuild_generation(struct dedup_shard *d, uint64_t base_offset, uint64_t next_offset,
			     int64_t max_event_time_us, struct dedup_key *keys, size_t n)
	__attribute__((warn_unused_result));

/*
 * Restart wiring with the WAL (library tally_dedup_wal, src/dedup_wal.c). For WAL shard `shard`
 * of data_dir, already recovered by wal_open(), and a dedup shard just opened (cold runs loaded):
 *  - every sealed segment without a loaded generation (run missing or bad) is read back and its
 *    run rebuilt, newest first; a segment whose newest event time is outside the window at
 *    now_us is skipped, and the walk stops at a segment whose newest event time is older than
 *    now_us - 2 * window - 1 day (older segments can only hold older events, given that the
 *    broker rejects event times older than the window or more than 1 day ahead of ingest);
 *  - the keys of the unsealed (newest) segment below durable_next are restored hot;
 *  - the durable watermark is set to durable_next.
 * Returns 0 or -errno (-EBADMSG: a sealed segment is corrupt; wal_last_error() says where).
 */
struct dedup_recover_stats {
	uint64_t segments;          /* segments of the shard in the WAL */
	uint64_t runs_present;      /* sealed segments whose run was loaded */
	uint64_t runs_rebuilt;      /* sealed segments read back from the WAL */
	uint64_t segments_expired;  /* read back but outside the window: no run written */
	uint64_t tail_keys;         /* keys restored hot from the unsealed segment */
};
int dedup_recover_from_wal(struct dedup_shard *d, const char *data_dir, uint16_t shard,
			   uint64_t durable_next, int64_t now_us, struct dedup_recover_stats *st)
	__attribute__((warn_unused_result));

/*
 * Compaction: every lookup that misses the hot table probes one bloom per generation, so the
 * number of generations is kept small by merging `fan_in` adjacent generations of the same level
 * L (< level_max) into one of level L+1: one k-way merge of their sorted runs into a new run,
 * one bloom. A merged generation expires when its newest event leaves the window, so keys are
 * kept up to the span of one merge longer than the window, never shorter.
 * Three steps, so that the heavy middle one can run on another thread:
 *   begin  (owning thread) picks the oldest eligible group and marks it busy (busy generations
 *          are still searched, but not expired); returns 1 and a job, or 0 if nothing to do;
 *   run    (any thread; touches only the job and the immutable mapped runs) merges, writes and
 *          fdatasyncs <base>.keys.tmp, builds the bloom and index;
 *   finish (owning thread) renames the run over the first input's, unlinks the other inputs and
 *          swaps the generations — or, if run failed, just releases them; frees the job and
 *          returns run's result (or its own error).
 * dedup_shard_close() must not be called while a job is out. dedup_compact() does all three.
 */
struct dedup_compaction;
int dedup_compact_begin(struct dedup_shard *d, struct dedup_compaction **out)
	__attribute__((warn_unused_result));
int dedup_compact_run(struct dedup_compaction *c) __attribute__((warn_unused_result));
int dedup_compact_finish(struct dedup_shard *d, struct dedup_compaction *c)
	__attribute__((warn_unused_result));
/* Runs begin/run/finish until nothing is left to merge; returns merges done or -errno. */
int dedup_compact(struct dedup_shard *d) __attribute__((warn_unused_result));

struct dedup_stats {
	uint64_t hot_keys, cold_keys;
	uint64_t hot_bytes;      /* mapped hot table(s): slots + tags */
	uint64_t cold_ram_bytes; /* blooms + sparse indexes + generation records (runs are mmap'd
				    page cache, not counted) */
	uint64_t generations;
	uint64_t bloom_checks, run_searches; /* cumulative */
	uint64_t grows;                      /* hot-table doublings so far */
	uint64_t journal_seals;              /* dedup_seal_begin()s served by the seal journal */
	uint64_t journal_bytes;              /* memory held by the seal journal */
	uint64_t blooms_loaded;              /* loaded generations whose bloom and index came
						from their .bloom file instead of a rebuild */
};
void dedup_stats(const struct dedup_shard *d, struct dedup_stats *out);

const char *dedup_verdict_str(enum dedup_verdict v);

#endif /* TALLY_DEDUP_H */
