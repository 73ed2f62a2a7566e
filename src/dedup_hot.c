/*
 * dedup_hot.c — the hot tier: a linear-probing table of 32-byte records (full 128-bit fp,
 * digest, WAL offset) with a parallel array of 16-bit tags, so that a probe for an absent key
 * (the common case: most events are new) reads tags only — 32 per cache line — and touches a
 * record only on a tag match. Layout and bit budget: docs/dedup.md "Hot tier".
 *
 * Invariants:
 *  - capacity is a power of two <= DEDUP_HOT_SLOTS_MAX; home slot = fp.lo & mask;
 *    tags[i] == 0 <=> slot i empty; a tag is fp.lo bits 32..47 (0 mapped to 1).
 *  - linear probing without tombstones: no empty slot lies between a key's home and its slot
 *    (deletion is by backward shift, which keeps this true), so a probe stops at the first
 *    empty slot.
 *  - load never exceeds 15/16 (dedup_hot_has_room), so every probe meets an empty slot.
 *  - growth: from 3/4 load a table twice as large is mapped and its pages are faulted in a
 *    bounded number of bytes per call (a page fault on a fresh huge page zeroes 2 MiB, and
 *    thousands of them in one call would stall it for a second); at 4/5 load it becomes cur
 *    and the old one is moved over incrementally: a bounded number of old slots per call (dedup_hot_maintain), walking a
 *    cursor from slot 0 up. Moving the key at the cursor deletes it from old by backward
 *    shift, which can only pull keys from above the cursor into it, so every old slot below
 *    the cursor stays empty and its pages are released as the cursor passes them. A key is in
 *    exactly one table; lookups try cur, then old.
 *  - memory comes from mmap at start-up (sized from expected_keys) and at each doubling only.
 *
 * Thread: the owning thread of the shard. No locks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "dedup_internal.h"

#define HOT_SLOTS_MIN         1024u /* hard limit - grow limit > DEDUP_BATCH */
#define HOT_RELEASE_SLOTS     65536u /* 2 MiB of records, 128 KiB of tags: page multiples */

static uint64_t grow_limit(uint64_t cap)
{
	return cap / 5 * 4; /* 4/5 */
}

/* Load at which the next table starts being faulted in: 3/5 (cap/5 inserts to spread the
 * 2 * cap * 34 bytes over), or later up to 3/4 if the table was preallocated for more keys. */
static uint64_t prepare_limit(uint64_t cap, uint64_t expected_keys)
{
	uint64_t lo = cap / 5 * 3, hi = cap / 4 * 3;
	return expected_keys < lo ? lo : expected_keys > hi ? hi : expected_keys;
}

static uint64_t hard_limit(uint64_t cap)
{
	return cap - cap / 16; /* 15/16 */
}

static void *map_zeroed(size_t bytes, bool populate)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	/* Random access over gigabytes: huge pages cut the TLB misses. Only a hint. Not for a
	 * table faulted in on the hot path (prepare): a huge-page fault may compact memory
	 * synchronously for many ms; that table gets the hint when it takes over, and
	 * khugepaged collapses it in the background. */
	if (bytes >= (4u << 20) && populate)
		(void)madvise(p, bytes, MADV_HUGEPAGE);
	/* Fault everything in now (start-up), not on the hot path. After the hint, so that the
	 * faults take huge pages. */
	if (populate && madvise(p, bytes, MADV_POPULATE_WRITE) != 0) /* Linux < 5.14: by hand */
		for (size_t o = 0; o < bytes; o += 4096)
			((volatile uint8_t *)p)[o] = 0;
	return p;
}

static void table_unmap(struct dedup_table *t)
{
	if (t->tags)
		munmap(t->tags, (t->mask + 1) * sizeof(uint16_t));
	if (t->slots)
		munmap(t->slots, (t->mask + 1) * sizeof(struct dedup_rec));
	memset(t, 0, sizeof(*t));
}

static int table_map(struct dedup_table *t, uint64_t cap, bool populate)
{
	memset(t, 0, sizeof(*t));
	t->tags = map_zeroed(cap * sizeof(uint16_t), populate);
	t->slots = map_zeroed(cap * sizeof(struct dedup_rec), populate);
	t->mask = cap - 1;
	if (!t->tags || !t->slots) {
		table_unmap(t);
		return -ENOMEM;
	}
	return 0;
}

int dedup_hot_init(struct dedup_hot *h, uint64_t expected_keys)
{
	memset(h, 0, sizeof(*h));
	uint64_t cap = HOT_SLOTS_MIN;
	while (cap < DEDUP_HOT_SLOTS_MAX && cap / 4 * 3 < expected_keys)
		cap <<= 1;
	h->expected_keys = expected_keys;
	return table_map(&h->cur, cap, true);
}

void dedup_hot_free(struct dedup_hot *h)
{
	table_unmap(&h->cur);
	table_unmap(&h->old);
	table_unmap(&h->next);
	memset(h, 0, sizeof(*h));
}

/* The first slot at or after i (cyclically) whose tag is 0 (empty) or `tag`: where a probe
 * for `tag` must stop to look. Bounded: load <= 15/16, so an empty slot is always met. (An
 * SSE2 scan, 8 tags per compare, measured no faster at 100M keys: the cost is memory.) */
static inline uint64_t tag_stop(const struct dedup_table *t, uint64_t i, uint16_t tag)
{
	for (;; i = (i + 1) & t->mask)
		if (t->tags[i] == 0 || t->tags[i] == tag)
			return i;
}

/* As table_find; on a miss *end is the empty slot that ended the probe (where it would go). */
static struct dedup_rec *table_find_end(const struct dedup_table *t, uint64_t lo, uint64_t hi,
					uint64_t *end)
{
	uint16_t tag = dedup_tag_of(lo);
	for (uint64_t i = lo & t->mask;; i = (i + 1) & t->mask) {
		i = tag_stop(t, i, tag);
		if (t->tags[i] == 0) {
			*end = i;
			return NULL;
		}
		if (t->slots[i].lo == lo && t->slots[i].hi == hi)
			return &t->slots[i];
	}
}

static struct dedup_rec *table_find(const struct dedup_table *t, uint64_t lo, uint64_t hi)
{
	uint64_t end;
	return table_find_end(t, lo, hi, &end);
}

static uint64_t table_find_index(const struct dedup_table *t, uint64_t lo, uint64_t hi)
{
	struct dedup_rec *r = table_find(t, lo, hi);
	return r ? (uint64_t)(r - t->slots) : UINT64_MAX;
}

static struct dedup_rec *table_insert(struct dedup_table *t, const struct dedup_rec *r)
{
	uint64_t i = tag_stop(t, r->lo & t->mask, 0);
	t->tags[i] = dedup_tag_of(r->lo);
	t->slots[i] = *r;
	t->count++;
	return &t->slots[i];
}

/* Backward-shift deletion of slot i: keeps "no hole between home and slot" for every key. */
static void table_delete_at(struct dedup_table *t, uint64_t i)
{
	uint64_t j = i;
	for (;;) {
		j = (j + 1) & t->mask;
		if (t->tags[j] == 0)
			break;
		uint64_t home = t->slots[j].lo & t->mask;
		/* The key at j may fill hole i iff its home is not cyclically inside (i, j]. */
		if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
			t->tags[i] = t->tags[j];
			t->slots[i] = t->slots[j];
			i = j;
		}
	}
	t->tags[i] = 0;
	memset(&t->slots[i], 0, sizeof(t->slots[i]));
	t->count--;
}

bool dedup_hot_probe_tags(const struct dedup_hot *h, uint64_t lo, uint64_t *pos)
{
	const struct dedup_table *t = &h->cur;
	uint64_t i = tag_stop(t, lo & t->mask, dedup_tag_of(lo));
	*pos = i;
	/* Either the record to compare or the slot a claim will write (the home line was
	 * prefetched with the tags: 2 records per line). */
	if ((i >> 1) != ((lo & t->mask) >> 1))
		__builtin_prefetch(&t->slots[i], 1, 3);
	return t->tags[i] != 0;
}

struct dedup_rec *dedup_hot_resolve(struct dedup_hot *h, uint64_t lo, uint64_t hi, uint64_t pos,
				    bool tag_match, uint64_t *end)
{
	struct dedup_rec *r = NULL;
	if (!tag_match)
		*end = pos;
	else if (h->cur.slots[pos].lo == lo && h->cur.slots[pos].hi == hi)
		return &h->cur.slots[pos];
	else /* a 16-bit tag collision (rare): probe on from the start */
		r = table_find_end(&h->cur, lo, hi, end);
	if (!r && h->migrating)
		r = table_find(&h->old, lo, hi);
	return r;
}

struct dedup_rec *dedup_hot_insert_at(struct dedup_hot *h, uint64_t end, const struct dedup_rec *r)
{
	struct dedup_table *t = &h->cur;
	t->tags[end] = dedup_tag_of(r->lo);
	t->slots[end] = *r;
	t->count++;
	return &t->slots[end];
}

struct dedup_rec *dedup_hot_find(struct dedup_hot *h, uint64_t lo, uint64_t hi)
{
	struct dedup_rec *r = table_find(&h->cur, lo, hi);
	if (!r && h->migrating)
		r = table_find(&h->old, lo, hi);
	return r;
}

struct dedup_rec *dedup_hot_at(struct dedup_hot *h, uint64_t slot, uint64_t lo, uint64_t hi)
{
	/* An empty slot's record is all zeros: (0, 0) must not match it, so that key probes. */
	if (slot > h->cur.mask || (lo | hi) == 0)
		return NULL;
	struct dedup_rec *r = &h->cur.slots[slot];
	return r->lo == lo && r->hi == hi ? r : NULL;
}

uint64_t dedup_hot_count(const struct dedup_hot *h)
{
	return h->cur.count + (h->migrating ? h->old.count : 0);
}

bool dedup_hot_has_room(const struct dedup_hot *h)
{
	return dedup_hot_count(h) + 1 <= hard_limit(h->cur.mask + 1);
}

struct dedup_rec *dedup_hot_insert(struct dedup_hot *h, const struct dedup_rec *r)
{
	return table_insert(&h->cur, r);
}

bool dedup_hot_delete(struct dedup_hot *h, uint64_t lo, uint64_t hi)
{
	uint64_t i = table_find_index(&h->cur, lo, hi);
	if (i != UINT64_MAX) {
		table_delete_at(&h->cur, i);
		return true;
	}
	if (h->migrating) {
		i = table_find_index(&h->old, lo, hi);
		if (i != UINT64_MAX) {
			/* i >= cursor (slots below it are empty); the shift stays above it. */
			table_delete_at(&h->old, i);
			return true;
		}
	}
	return false;
}

static void release_old_below_cursor(struct dedup_hot *h)
{
	while (h->released_slots + HOT_RELEASE_SLOTS <= h->cursor) {
		(void)madvise(h->old.slots + h->released_slots,
			      HOT_RELEASE_SLOTS * sizeof(struct dedup_rec), MADV_DONTNEED);
		(void)madvise(h->old.tags + h->released_slots, HOT_RELEASE_SLOTS * sizeof(uint16_t),
			      MADV_DONTNEED);
		h->released_slots += HOT_RELEASE_SLOTS;
	}
}

static void migrate(struct dedup_hot *h, uint64_t budget)
{
	struct dedup_table *o = &h->old;
	while (budget-- > 0 && h->cursor <= o->mask) {
		if (o->tags[h->cursor] != 0) {
			table_insert(&h->cur, &o->slots[h->cursor]);
			/* The shift may pull another key into the cursor slot: look again. */
			table_delete_at(o, h->cursor);
		} else {
			h->cursor++;
		}
	}
	release_old_below_cursor(h);
	if (h->cursor > o->mask) {
		table_unmap(o);
		h->migrating = false;
		h->cursor = 0;
		h->released_slots = 0;
	}
}

static uint64_t table_bytes(const struct dedup_table *t)
{
	return (t->mask + 1) * (sizeof(uint16_t) + sizeof(struct dedup_rec));
}

/* Faults in up to `bytes` more of h->next (writing one zero byte per 4 KiB page). */
static void prepare(struct dedup_hot *h, uint64_t bytes)
{
	uint64_t tag_bytes = (h->next.mask + 1) * sizeof(uint16_t);
	uint64_t end = table_bytes(&h->next);
	uint64_t stop = end - h->next_touched > bytes ? h->next_touched + bytes : end;
	for (uint64_t o = h->next_touched; o < stop; o += 4096) {
		volatile uint8_t *p = o < tag_bytes ? (uint8_t *)h->next.tags + o
						    : (uint8_t *)h->next.slots + (o - tag_bytes);
		*p = 0;
	}
	h->next_touched = stop;
}

#define MIGRATE_SLOTS_PER_KEY 4  /* > 1.25 needed to finish a move before the next grow */
#define MIGRATE_SLOTS_PER_CALL 8 /* so that lookups alone finish it too */

/* Pace: fault in 5/4 of the bytes per insert that would just finish at the grow load (the
 * page faults are the cost of a grow: spread them thin, but finish before the switch). */
static uint64_t prepare_bytes(const struct dedup_hot *h, uint64_t inserted)
{
	uint64_t left = table_bytes(&h->next) - h->next_touched;
	uint64_t count = dedup_hot_count(h), grow_at = grow_limit(h->cur.mask + 1);
	if (inserted == UINT64_MAX || count >= grow_at)
		return left;
	uint64_t per_key = left / (grow_at - count) / 4 * 5 + 64;
	return inserted > left / per_key ? left : inserted * per_key + 4096;
}

void dedup_hot_maintain(struct dedup_hot *h, uint64_t inserted)
{
	if (h->migrating)
		migrate(h, inserted > UINT64_MAX / 8 ? UINT64_MAX
						      : inserted * MIGRATE_SLOTS_PER_KEY +
							MIGRATE_SLOTS_PER_CALL);
	uint64_t cap = h->cur.mask + 1, count = dedup_hot_count(h);
	if (h->grow_failed || cap >= DEDUP_HOT_SLOTS_MAX)
		return;
	if (!h->preparing && !h->migrating && count > prepare_limit(cap, h->expected_keys)) {
		if (table_map(&h->next, cap * 2, false) != 0) {
			h->grow_failed = true;
			return;
		}
		h->preparing = true;
		h->next_touched = 0;
	}
	if (h->preparing)
		prepare(h, prepare_bytes(h, inserted));
	if (count <= grow_limit(cap) || !h->preparing)
		return;
	/* Neither is reached with the paced budgets; both are bounded. */
	if (h->migrating)
		migrate(h, UINT64_MAX);
	prepare(h, UINT64_MAX);
	h->old = h->cur;
	h->cur = h->next;
	if (table_bytes(&h->cur) >= (8u << 20)) { /* see map_zeroed */
		(void)madvise(h->cur.tags, (h->cur.mask + 1) * sizeof(uint16_t), MADV_HUGEPAGE);
		(void)madvise(h->cur.slots, (h->cur.mask + 1) * sizeof(struct dedup_rec),
			      MADV_HUGEPAGE);
	}
	memset(&h->next, 0, sizeof(h->next));
	h->preparing = false;
	h->migrating = true;
	h->cursor = 0;
	h->released_slots = 0;
	h->grows++;
}

void dedup_hot_prefetch(const struct dedup_hot *h, uint64_t lo)
{
	uint64_t i = lo & h->cur.mask;
	__builtin_prefetch(&h->cur.tags[i], 0, 3);
	/* A probe near the end of its tag line (32 tags) runs into the next one at high load
	 * (a miss probes ~8 slots at load 3/4): fetch that line too, rather than wait for it. */
	if ((i & 31) >= 24)
		__builtin_prefetch(&h->cur.tags[(i + 8) & h->cur.mask], 0, 3);
	__builtin_prefetch(&h->cur.slots[i], 1, 3);
	if (h->migrating) {
		i = lo & h->old.mask;
		__builtin_prefetch(&h->old.tags[i], 0, 3);
	}
}

uint64_t dedup_hot_bytes(const struct dedup_hot *h)
{
	uint64_t per = sizeof(uint16_t) + sizeof(struct dedup_rec);
	uint64_t b = table_bytes(&h->cur);
	if (h->migrating)
		b += (h->old.mask + 1 - h->released_slots) * per;
	if (h->preparing)
		b += h->next_touched;
	return b;
}

/* Moves the keys of t with an offset in [base, next) into *buf (grown by realloc). One pass:
 * a backward shift at i only pulls keys into i from above (or, across the end of the table,
 * keys already looked at and kept), so looking at i again until it holds a kept key or nothing
 * sees every key exactly once. */
static int table_extract(struct dedup_table *t, uint64_t from, uint64_t base, uint64_t next,
			 struct dedup_rec **buf, size_t *n, size_t *cap)
{
	for (uint64_t i = from; i <= t->mask; i++) {
		if (i + 64 <= t->mask)
			__builtin_prefetch(&t->slots[i + 64], 0, 0);
		while (t->tags[i] != 0 && t->slots[i].offset >= base && t->slots[i].offset < next) {
			if (*n == *cap) {
				size_t c = *cap ? *cap * 2 : 65536;
				struct dedup_rec *p = realloc(*buf, c * sizeof(*p));
				if (!p)
					return -ENOMEM;
				*buf = p;
				*cap = c;
			}
			(*buf)[(*n)++] = t->slots[i];
			table_delete_at(t, i);
		}
	}
	return 0;
}

int dedup_hot_extract(struct dedup_hot *h, uint64_t base, uint64_t next, struct dedup_rec **out,
		      size_t *n_out)
{
	struct dedup_rec *buf = NULL;
	size_t n = 0, cap = 0;
	if (next == DEDUP_OFFSET_NONE) /* NONE (pending, not appended) is never in a range */
		next--;
	int rc = table_extract(&h->cur, 0, base, next, &buf, &n, &cap);
	if (rc == 0 && h->migrating)
		rc = table_extract(&h->old, h->cursor, base, next, &buf, &n, &cap);
	if (rc != 0) {
		dedup_hot_reinsert(h, buf, n);
		free(buf);
		return rc;
	}
	*out = buf;
	*n_out = n;
	return 0;
}

static int table_copy(const struct dedup_table *t, uint64_t from, uint64_t base, uint64_t next,
		      struct dedup_rec **buf, size_t *n, size_t *cap)
{
	for (uint64_t i = from; i <= t->mask; i++) {
		if (i + 64 <= t->mask)
			__builtin_prefetch(&t->slots[i + 64], 0, 0);
		if (t->tags[i] == 0 || t->slots[i].offset < base || t->slots[i].offset >= next)
			continue;
		if (*n == *cap) {
			size_t c = *cap ? *cap * 2 : 65536;
			struct dedup_rec *p = realloc(*buf, c * sizeof(*p));
			if (!p)
				return -ENOMEM;
			*buf = p;
			*cap = c;
		}
		(*buf)[(*n)++] = t->slots[i];
	}
	return 0;
}

int dedup_hot_copy_range(const struct dedup_hot *h, uint64_t base, uint64_t next,
			 struct dedup_rec **out, size_t *n_out)
{
	struct dedup_rec *buf = NULL;
	size_t n = 0, cap = 0;
	if (next == DEDUP_OFFSET_NONE)
		next--;
	int rc = table_copy(&h->cur, 0, base, next, &buf, &n, &cap);
	if (rc == 0 && h->migrating)
		rc = table_copy(&h->old, h->cursor, base, next, &buf, &n, &cap);
	if (rc != 0) {
		free(buf);
		return rc;
	}
	*out = buf;
	*n_out = n;
	return 0;
}

void dedup_hot_reinsert(struct dedup_hot *h, const struct dedup_rec *recs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		table_insert(&h->cur, &recs[i]);
}

void dedup_hot_foreach(const struct dedup_hot *h, void (*fn)(const struct dedup_rec *, void *),
		       void *arg)
{
	for (uint64_t i = 0; i <= h->cur.mask; i++)
		if (h->cur.tags[i])
			fn(&h->cur.slots[i], arg);
	if (h->migrating)
		for (uint64_t i = h->cursor; i <= h->old.mask; i++)
			if (h->old.tags[i])
				fn(&h->old.slots[i], arg);
}
