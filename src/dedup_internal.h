/*
 * dedup_internal.h — private pieces of the dedup shard shared by dedup.c (shard, verdicts),
 * dedup_hot.c (open-addressing table with incremental rehash) and dedup_cold.c (runs, blooms,
 * sparse indexes). Tests include it to exercise the pieces directly. Not a public API.
 */
#ifndef TALLY_DEDUP_INTERNAL_H
#define TALLY_DEDUP_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/dedup.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dedup: the .keys run format is read in place (mmap) and needs a little-endian host"
#endif

/* One hot slot, and also one record of a .keys run (same 32 bytes, see docs/dedup.md). */
struct dedup_rec {
	uint64_t lo;
	uint64_t hi;
	uint64_t offset;
	uint32_t digest;
	uint32_t reserved; /* 0 */
};
_Static_assert(sizeof(struct dedup_rec) == 32, "dedup_rec is 32 bytes on disk");

/* ---- hot table (dedup_hot.c) ------------------------------------------------------------ */

/* One linear-probing table: tags[i] == 0 means slot i is empty. */
struct dedup_table {
	uint16_t *tags;
	struct dedup_rec *slots;
	uint64_t mask;  /* capacity - 1; capacity is a power of two */
	uint64_t count; /* occupied slots */
};

/*
 * cur takes every insert. While `migrating`, old holds the keys not yet moved: slots of old
 * below `cursor` are empty (and their pages released); a key is in cur or old, never both.
 */
struct dedup_hot {
	struct dedup_table cur;
	struct dedup_table old;
	struct dedup_table next;  /* while `preparing`: the bigger table, being pre-faulted */
	uint64_t next_touched;    /* bytes of next (tags, then slots) faulted in so far */
	bool preparing;
	bool migrating;
	uint64_t cursor;
	uint64_t released_slots; /* old slots [0, released_slots) were madvise(DONTNEED)ed */
	uint64_t grows;
	uint64_t expected_keys; /* preallocated for: no growth work starts below this */
	bool grow_failed; /* last mmap for a grow failed: run on to the hard limit */
};

static inline uint16_t dedup_tag_of(uint64_t lo)
{
	uint16_t t = (uint16_t)(lo >> 32);
	return t ? t : 1;
}

int dedup_hot_init(struct dedup_hot *h, uint64_t expected_keys)
	__attribute__((warn_unused_result));
void dedup_hot_free(struct dedup_hot *h);
/* Pointer to the slot holding fp, or NULL. Valid until the next insert-with-migration/delete. */
struct dedup_rec *dedup_hot_find(struct dedup_hot *h, uint64_t lo, uint64_t hi);
/*
 * Two-step lookup for batches, so that no step waits on a miss the previous one caused:
 * dedup_hot_probe_tags() scans the current table's tags from the key's home to the first slot
 * whose tag matches (returns true) or that is empty (false), stores it in *pos and prefetches
 * that record; dedup_hot_resolve() later compares it (probing on after a tag collision, and in
 * the old table during a migration) and returns the record or NULL; on a miss *end is the
 * empty slot that ended the probe in the current table. Only inserts may happen in between.
 */
bool dedup_hot_probe_tags(const struct dedup_hot *h, uint64_t lo, uint64_t *pos);
struct dedup_rec *dedup_hot_resolve(struct dedup_hot *h, uint64_t lo, uint64_t hi, uint64_t pos,
				    bool tag_match, uint64_t *end);
/*
 * After a miss that ended at slot `end` (dedup_hot_resolve), with only inserts into the
 * table since: if `end` is still empty, nothing was inserted on the key's probe path (inserts
 * fill the first empty slot of their path), so the key is still absent and belongs at `end`.
 * Returns true if `end` is still empty.
 */
static inline bool dedup_hot_end_empty(const struct dedup_hot *h, uint64_t end)
{
	return h->cur.tags[end] == 0;
}
/* Inserts at `end`, which dedup_hot_end_empty() just confirmed. */
struct dedup_rec *dedup_hot_insert_at(struct dedup_hot *h, uint64_t end, const struct dedup_rec *r);
/* True if one more key fits without passing the hard load limit. */
bool dedup_hot_has_room(const struct dedup_hot *h);
/* Inserts a key known to be absent; dedup_hot_has_room() must be true. */
struct dedup_rec *dedup_hot_insert(struct dedup_hot *h, const struct dedup_rec *r);
/* The record in slot `slot` of the current table if it holds (lo, hi), else NULL. Reads that
 * one record only. */
struct dedup_rec *dedup_hot_at(struct dedup_hot *h, uint64_t slot, uint64_t lo, uint64_t hi);
/* Removes fp if present; true if it was. */
bool dedup_hot_delete(struct dedup_hot *h, uint64_t lo, uint64_t hi);
/* Background work proportional to the keys `inserted` since the last call (UINT64_MAX: do
 * everything now): pre-faults the next table, switches to it at 4/5 load, moves old slots. */
void dedup_hot_maintain(struct dedup_hot *h, uint64_t inserted);
/* Prefetches the home lines of a key (tags and slots) in the table(s) it may be in. */
void dedup_hot_prefetch(const struct dedup_hot *h, uint64_t lo);
uint64_t dedup_hot_count(const struct dedup_hot *h);
uint64_t dedup_hot_bytes(const struct dedup_hot *h);
/* Removes every key with an offset in [base, next) (never a pending NONE) from the table(s)
 * into a malloc'd array *out of *n (caller frees; may be NULL when *n is 0). One sequential
 * pass. 0 or -ENOMEM (then nothing was removed). */
int dedup_hot_extract(struct dedup_hot *h, uint64_t base, uint64_t next, struct dedup_rec **out,
		      size_t *n) __attribute__((warn_unused_result));
/* Copies (without removing) every key with an offset in [base, next) into a malloc'd *out. */
int dedup_hot_copy_range(const struct dedup_hot *h, uint64_t base, uint64_t next,
			 struct dedup_rec **out, size_t *n) __attribute__((warn_unused_result));
/* Puts back keys taken out by dedup_hot_extract (they are absent, and their room is free). */
void dedup_hot_reinsert(struct dedup_hot *h, const struct dedup_rec *recs, size_t n);
/* Calls fn for every hot key (both tables). */
void dedup_hot_foreach(const struct dedup_hot *h, void (*fn)(const struct dedup_rec *, void *),
		       void *arg);

/* For dedup_wal.c: the window, and the newest event time of the generation covering base. */
int64_t dedup_shard_window_us(const struct dedup_shard *d);
bool dedup_generation_max_time(const struct dedup_shard *d, uint64_t base, int64_t *max_us);

/* ---- bloom filter (dedup_cold.c) ------------------------------------------------------- */

/* Cache-line blocked: a key picks one 64-byte block (8 x u64) by fastrange over fp.lo and sets
 * one bit in each of the 8 words, the bit index taken from fp.hi bits 6w..6w+5. */
struct dedup_bloom {
	uint64_t *words;   /* nblocks * 8, 64-byte aligned */
	uint64_t nblocks;
};

/* Blocks needed for n keys at fp_per_million (exact expectation, Poisson block loads). */
uint64_t dedup_bloom_blocks_for(uint64_t n, uint32_t fp_per_million);
/* Expected false-positive rate in parts per billion for n keys in nblocks. */
uint64_t dedup_bloom_expected_fp_ppb(uint64_t n, uint64_t nblocks);
int dedup_bloom_init(struct dedup_bloom *b, uint64_t nblocks) __attribute__((warn_unused_result));
void dedup_bloom_free(struct dedup_bloom *b);
void dedup_bloom_add(struct dedup_bloom *b, uint64_t lo, uint64_t hi);
bool dedup_bloom_test(const struct dedup_bloom *b, uint64_t lo, uint64_t hi);
void dedup_bloom_prefetch(const struct dedup_bloom *b, uint64_t lo);

/* ---- cold generations (dedup_cold.c) --------------------------------------------------- */

struct dedup_gen {
	uint64_t base, next;
	int64_t max_event_time_us;
	uint64_t count;
	const struct dedup_rec *recs; /* mmap'd run, records sorted by (lo, hi) */
	void *map;
	size_t map_bytes;
	struct dedup_bloom bloom;
	uint32_t *index;   /* (1 << index_bits) + 1 entries: first record with lo>>(64-bits) >= i */
	uint32_t index_bits;
	uint16_t level;    /* 0: one sealed segment; L+1: a merge of fan_in generations of level L */
	bool busy;         /* input of a compaction in flight: not expired, not moved */
	bool bloom_loaded; /* bloom and index came from the run's .bloom file */
};

#define DEDUP_RUN_MAGIC       "TLYKEYS1"
#define DEDUP_RUN_VERSION     1u
#define DEDUP_RUN_HEADER_BYTES 64u
#define DEDUP_BLOOM_MAGIC     "TLYBLOM1"
#define DEDUP_BLOOM_VERSION   1u
#define DEDUP_BLOOM_HEADER_BYTES 64u

/* Sorts recs[0..n) by (lo, hi); tmp is scratch of n records. */
void dedup_sort_recs(struct dedup_rec *recs, struct dedup_rec *tmp, size_t n);
/* Writes a run file for sorted recs (tmp, [fdatasync], rename, [dir fsync]). 0 or -errno.
 * Without sync the run may be lost or torn by a crash: fine for a run that can be rebuilt
 * from the durable WAL (a torn run fails its checksum at open and is reported bad). */
int dedup_run_write(const char *dir, uint16_t shard, uint64_t base, uint64_t next,
		    int64_t max_event_time_us, const struct dedup_rec *recs, size_t n, bool sync)
	__attribute__((warn_unused_result));
/* The 64-byte header of a run, with its checksum field zero; and the checksum of a run. */
void dedup_run_header(uint8_t h[DEDUP_RUN_HEADER_BYTES], uint16_t shard, uint16_t level,
		      uint64_t base, uint64_t next, int64_t max_event_time_us, uint64_t count);
int dedup_fsync_dir(const char *path) __attribute__((warn_unused_result));
/* write() all of buf, pacing the file's writeback (dedup_cold.c): <= 2 pieces dirty. */
#define DEDUP_WRITEBACK_BYTES (1u << 20)
int dedup_write_all(int fd, const void *buf, size_t len) __attribute__((warn_unused_result));
/* A generation for a run just written from recs[0..n) (sorted): maps the file without
 * re-reading it, builds bloom + index from recs. 0 or -errno. */
int dedup_gen_from_sorted(struct dedup_gen *g, const char *path, uint64_t base, uint64_t next,
			  int64_t max_event_time_us, uint16_t level, const struct dedup_rec *recs,
			  size_t n, uint32_t fp_per_million) __attribute__((warn_unused_result));
/* Maps and verifies a run file, builds bloom + index. 0, -EBADMSG (bad run) or -errno. */
int dedup_gen_load(struct dedup_gen *g, const char *path, uint16_t shard, uint64_t base,
		   uint32_t fp_per_million) __attribute__((warn_unused_result));
void dedup_gen_free(struct dedup_gen *g);
/* Saves g's bloom and index as <run without .keys>.bloom (tmp + rename, not synced), bound to
 * the run by its checksum. 0 or -errno; a failure only costs a rebuild at the next open. */
int dedup_bloom_save(const struct dedup_gen *g, const char *run_path, uint16_t shard,
		     uint32_t fp_per_million) __attribute__((warn_unused_result));
void dedup_bloom_unlink(const char *run_path);
/* Prefetch the sparse-index entry of fp's bucket; then the record where its search starts. */
void dedup_gen_prefetch_index(const struct dedup_gen *g, uint64_t lo);
void dedup_gen_prefetch(const struct dedup_gen *g, uint64_t lo);
/* The record for fp in g's run, or NULL (interpolation in the sparse-index bucket, gallop,
 * binary search). */
const struct dedup_rec *dedup_gen_search(const struct dedup_gen *g, uint64_t lo, uint64_t hi);
uint64_t dedup_gen_ram_bytes(const struct dedup_gen *g);
/* "<dir>/shard-NN" and "<dir>/shard-NN/<base>.keys" into buf; -ENAMETOOLONG if cap too small. */
int dedup_shard_dir(char *buf, size_t cap, const char *dir, uint16_t shard);
int dedup_run_path(char *buf, size_t cap, const char *dir, uint16_t shard, uint64_t base);

/* The shard (dedup.c); here so that dedup_compact.c can see it. */
struct dedup_shard {
	struct dedup_hot hot;
	uint16_t shard;
	uint32_t fp_per_million;
	int64_t window_us;
	char *dir; /* NULL: no cold tier */
	uint64_t durable_next;
	int64_t expire_cutoff_us; /* queries with an older event time are TOO_OLD */
	struct dedup_gen *gens;   /* sorted by base */
	size_t gen_count, gen_cap;
	uint64_t *bad; /* bases of runs that failed verification at open */
	size_t bad_count, bad_cap;
	uint64_t cold_keys;
	uint64_t bloom_checks, run_searches;
	uint32_t compact_fan_in, compact_level_max;
	bool compacting; /* a struct dedup_compaction is out */
	bool sealing;    /* a struct dedup_sealing is out */
	/* Keys of the last generation sealed in three steps, still also in the hot table: removed
	 * from it a bounded number per dedup_check_claim call (same answer from either tier). */
	struct dedup_rec *evict;
	size_t evict_n, evict_pos;
	/* The seal journal (opt->seal_journal; dedup.c "journal"): jr[0..jr_n) holds, in offset
	 * order, every key that dedup_set_offset*() gave an offset >= jr_from, and nothing else. */
	bool jr_on;
	struct dedup_rec *jr;
	size_t jr_n, jr_cap;
	uint64_t jr_from; /* UINT64_MAX: nothing journaled yet */
	uint64_t jr_max;  /* 1 + the highest offset ever set or restored (0: none) */
	uint64_t jr_takes;
};

/* dedup_seal_begin(): if the journal covers [base, next), moves those keys into a malloc'd
 * *keys (caller frees) and returns 1; 0 if it does not cover them (scan the hot table); -ENOMEM
 * leaves the journal as it was. */
int dedup_journal_take(struct dedup_shard *d, uint64_t base, uint64_t next, struct dedup_rec **keys,
		       size_t *n);

/* Removes up to `budget` keys of the eviction list from the hot table (UINT64_MAX: all). */
void dedup_evict_step(struct dedup_shard *d, uint64_t budget);
void dedup_bad_remove(struct dedup_shard *d, uint64_t base);

bool dedup_gens_overlap(const struct dedup_shard *d, uint64_t base, uint64_t next);
int dedup_gens_add(struct dedup_shard *d, struct dedup_gen *g) __attribute__((warn_unused_result));

#endif /* TALLY_DEDUP_INTERNAL_H */
