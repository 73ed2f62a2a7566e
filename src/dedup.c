/*
 * dedup.c — one dedup shard: verdicts, the durability rule, sealing hot keys into cold
 * generations, expiry, restart. The hot table is dedup_hot.c, runs and blooms dedup_cold.c;
 * the design and the .keys format are in docs/dedup.md.
 *
 * Invariants:
 *  - a key is in at most one place: the hot table, or one generation (sealing moves it).
 *  - an entry is PENDING iff its offset >= durable_next (DEDUP_OFFSET_NONE = UINT64_MAX is
 *    always pending); durable_next only grows. So DEDUP_DUPLICATE/CONFLICT is only answered
 *    for an original whose WAL write is durable.
 *  - generations are sorted by base offset, do not overlap, and all lie below durable_next
 *    when sealed; a lookup that misses the hot table tries them newest first.
 *  - dedup_check_claim never moves a hot entry while it holds pointers into the table:
 *    incremental rehash steps run between chunks only.
 *
 * Thread: one owning thread per shard; nothing here locks.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dedup_internal.h"

#define PREFETCH_GENS_MAX 64 /* bloom blocks prefetched per missing key */
#define EVICT_PER_INSERT 2   /* sealed keys leave the hot table twice as fast as new ones come
				(4 made a visible CPU burst on the owning thread after each seal) */
#define EVICT_PER_CALL 64


const char *dedup_verdict_str(enum dedup_verdict v)
{
	switch (v) {
	case DEDUP_NEW: return "NEW";
	case DEDUP_DUPLICATE: return "DUPLICATE";
	case DEDUP_CONFLICT: return "CONFLICT";
	case DEDUP_PENDING_DUPLICATE: return "PENDING_DUPLICATE";
	case DEDUP_PENDING_CONFLICT: return "PENDING_CONFLICT";
	case DEDUP_TOO_OLD: return "TOO_OLD";
	case DEDUP_FULL: return "FULL";
	}
	return "?";
}

/* ---- generations array ------------------------------------------------------------------ */

bool dedup_gens_overlap(const struct dedup_shard *d, uint64_t base, uint64_t next)
{
	for (size_t i = 0; i < d->gen_count; i++)
		if (base < d->gens[i].next && d->gens[i].base < next)
			return true;
	return false;
}

/* Takes ownership of *g on success. */
int dedup_gens_add(struct dedup_shard *d, struct dedup_gen *g)
{
	if (d->gen_count >= DEDUP_GENERATIONS_MAX)
		return -ENOSPC;
	if (d->gen_count == d->gen_cap) {
		size_t cap = d->gen_cap ? d->gen_cap * 2 : 16;
		struct dedup_gen *p = realloc(d->gens, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		d->gens = p;
		d->gen_cap = cap;
	}
	size_t at = d->gen_count;
	while (at > 0 && d->gens[at - 1].base > g->base)
		at--;
	memmove(&d->gens[at + 1], &d->gens[at], (d->gen_count - at) * sizeof(*g));
	d->gens[at] = *g;
	d->gen_count++;
	d->cold_keys += g->count;
	/* Runs are only written for durable (sealed) segments: after a restart their keys are
	 * stored, not pending, even before the caller sets the watermark. */
	dedup_set_durable(d, g->next);
	return 0;
}

static int bad_add(struct dedup_shard *d, uint64_t base)
{
	if (d->bad_count == d->bad_cap) {
		size_t cap = d->bad_cap ? d->bad_cap * 2 : 8;
		uint64_t *p = realloc(d->bad, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		d->bad = p;
		d->bad_cap = cap;
	}
	d->bad[d->bad_count++] = base;
	return 0;
}

void dedup_bad_remove(struct dedup_shard *d, uint64_t base)
{
	for (size_t i = 0; i < d->bad_count; i++)
		if (d->bad[i] == base)
			d->bad[i--] = d->bad[--d->bad_count];
}

/* ---- open / close ----------------------------------------------------------------------- */

static int mkdir_ok(const char *path)
{
	if (mkdir(path, 0755) == 0 || errno == EEXIST)
		return 0;
	return -errno;
}

/* "<20 digits>.keys" -> base; false for any other name. */
static bool parse_run_name(const char *name, uint64_t *base)
{
	uint64_t v = 0;
	for (int i = 0; i < 20; i++) {
		if (name[i] < '0' || name[i] > '9')
			return false;
		uint64_t digit = (uint64_t)(name[i] - '0');
		if (v > (UINT64_MAX - digit) / 10)
			return false;
		v = v * 10 + digit;
	}
	if (strcmp(name + 20, ".keys") != 0)
		return false;
	*base = v;
	return true;
}

/*
 * A compaction writes the merged run under its first input's name (replacing it), then unlinks
 * the other inputs: a crash in between leaves runs contained in the merged one. They are
 * dropped. A run that overlaps another only partly is reported bad.
 */
static int resolve_overlaps(struct dedup_shard *d, const char *sdir)
{
	int rc = 0;
	for (size_t i = 0; i + 1 < d->gen_count;) {
		struct dedup_gen *a = &d->gens[i], *b = &d->gens[i + 1];
		if (b->base >= a->next) {
			i++;
			continue;
		}
		uint64_t base = b->base;
		bool contained = b->next <= a->next;
		d->cold_keys -= b->count;
		dedup_gen_free(b);
		memmove(b, b + 1, (d->gen_count - i - 2) * sizeof(*b));
		d->gen_count--;
		if (contained) {
			char path[4200];
			snprintf(path, sizeof(path), "%s/%020" PRIu64 ".keys", sdir, base);
			unlink(path);
			dedup_bloom_unlink(path);
		} else if (rc == 0) {
			rc = bad_add(d, base);
		}
	}
	return rc;
}

static int load_runs(struct dedup_shard *d)
{
	char sdir[4096], path[4200];
	int rc = mkdir_ok(d->dir);
	if (rc == 0)
		rc = dedup_shard_dir(sdir, sizeof(sdir), d->dir, d->shard);
	if (rc == 0)
		rc = mkdir_ok(sdir);
	if (rc != 0)
		return rc;
	DIR *dh = opendir(sdir);
	if (!dh)
		return -errno;
	struct dirent *de;
	while ((de = readdir(dh)) != NULL) {
		uint64_t base;
		size_t len = strlen(de->d_name);
		/* sdir is < 4096 bytes and the names we act on are 29 or 25 bytes: no truncation. */
		if ((len == 29 && strcmp(de->d_name + 20, ".keys.tmp") == 0) ||
		    (len == 30 && strcmp(de->d_name + 20, ".bloom.tmp") == 0)) {
			/* A seal that crashed before its rename: the hot keys were never dropped. */
			if (snprintf(path, sizeof(path), "%s/%.30s", sdir, de->d_name) > 0)
				unlink(path);
			continue;
		}
		if (len != 25 || !parse_run_name(de->d_name, &base))
			continue;
		if (snprintf(path, sizeof(path), "%s/%.25s", sdir, de->d_name) < 0)
			continue;
		struct dedup_gen g;
		rc = dedup_gen_load(&g, path, d->shard, base, d->fp_per_million);
		if (rc == 0)
			rc = dedup_gens_add(d, &g);
		if (rc != 0 && g.map)
			dedup_gen_free(&g);
		if (rc == -ENOMEM)
			break;
		if (rc != 0) /* checksum, size, order, bounds, or I/O error: report for rebuild */
			rc = bad_add(d, base);
		if (rc != 0)
			break;
	}
	closedir(dh);
	return rc == 0 ? resolve_overlaps(d, sdir) : rc;
}

int dedup_shard_open(const struct dedup_options *opt, uint16_t shard, struct dedup_shard **out)
{
	*out = NULL;
	int64_t window = opt->window_us ? opt->window_us : DEDUP_WINDOW_US_DEFAULT;
	uint32_t fpm = opt->bloom_fp_per_million ? opt->bloom_fp_per_million
						  : DEDUP_BLOOM_FP_PER_MILLION_DEFAULT;
	uint64_t expected = opt->expected_keys ? opt->expected_keys : DEDUP_EXPECTED_KEYS_DEFAULT;
	if (window < 0 || window > DEDUP_WINDOW_US_MAX || fpm > 500000 ||
	    opt->compact_fan_in == 1 || opt->compact_fan_in > DEDUP_COMPACT_FAN_IN_MAX ||
	    expected > DEDUP_HOT_SLOTS_MAX / 5 * 4)
		return -EINVAL;
	struct dedup_shard *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->shard = shard;
	d->fp_per_million = fpm;
	d->window_us = window;
	d->expire_cutoff_us = INT64_MIN;
	d->compact_fan_in = opt->compact_fan_in ? opt->compact_fan_in : DEDUP_COMPACT_FAN_IN_DEFAULT;
	d->compact_level_max = opt->compact_level_max ? opt->compact_level_max
						      : DEDUP_COMPACT_LEVEL_MAX_DEFAULT;
	d->jr_on = opt->seal_journal;
	d->jr_from = UINT64_MAX;
	int rc = dedup_hot_init(&d->hot, expected);
	if (rc != 0)
		goto out_free;
	if (opt->dir) {
		d->dir = strdup(opt->dir);
		rc = d->dir ? load_runs(d) : -ENOMEM;
		if (rc != 0)
			goto out_free;
	}
	*out = d;
	return 0;

out_free:
	dedup_shard_close(d);
	return rc;
}

void dedup_shard_close(struct dedup_shard *d)
{
	if (!d)
		return;
	assert(!d->compacting); /* dedup_compact_finish() first: the job reads our runs */
	assert(!d->sealing);    /* dedup_seal_finish() first */
	free(d->evict);
	free(d->jr);
	for (size_t i = 0; i < d->gen_count; i++)
		dedup_gen_free(&d->gens[i]);
	free(d->gens);
	free(d->bad);
	free(d->dir);
	dedup_hot_free(&d->hot);
	free(d);
}

/* ---- lookups ---------------------------------------------------------------------------- */

bool dedup_is_pending(const struct dedup_shard *d, uint64_t offset)
{
	return offset >= d->durable_next; /* DEDUP_OFFSET_NONE is always pending */
}

void dedup_set_durable(struct dedup_shard *d, uint64_t durable_next)
{
	if (durable_next > d->durable_next)
		d->durable_next = durable_next;
}

static void answer_from(const struct dedup_shard *d, const struct dedup_rec *r, uint32_t digest,
			struct dedup_answer *a)
{
	bool pending = dedup_is_pending(d, r->offset);
	bool same = r->digest == digest;
	if (pending)
		a->verdict = same ? DEDUP_PENDING_DUPLICATE : DEDUP_PENDING_CONFLICT;
	else
		a->verdict = same ? DEDUP_DUPLICATE : DEDUP_CONFLICT;
	a->offset = r->offset;
}

static const struct dedup_rec *cold_find(struct dedup_shard *d, uint64_t lo, uint64_t hi)
{
	for (size_t k = d->gen_count; k-- > 0;) { /* newest first: retries are mostly recent */
		const struct dedup_gen *g = &d->gens[k];
		d->bloom_checks++;
		if (!dedup_bloom_test(&g->bloom, lo, hi))
			continue;
		d->run_searches++;
		const struct dedup_rec *r = dedup_gen_search(g, lo, hi);
		if (r)
			return r;
	}
	return NULL;
}

static void check_chunk(struct dedup_shard *d, const struct dedup_query *q, size_t n,
			struct dedup_answer *out)
{
	struct dedup_rec *hit[DEDUP_BATCH];
	uint64_t end[DEDUP_BATCH]; /* hot misses: the empty slot that ended the probe */
	/* 1: prefetch every home line (tags, records) of the chunk. */
	for (size_t i = 0; i < n; i++)
		dedup_hot_prefetch(&d->hot, q[i].fp.lo);
	/* 2: scan the tags (cached now) to the first tag match or empty slot, prefetching that
	 * record (if not on the home line): the one to compare, or the one a claim will write. */
	uint64_t pos[DEDUP_BATCH];
	bool match[DEDUP_BATCH];
	for (size_t i = 0; i < n; i++)
		match[i] = dedup_hot_probe_tags(&d->hot, q[i].fp.lo, &pos[i]);
	/* 2a: compare (records cached now); for hot misses, prefetch the bloom blocks of the
	 * newest generations. */
	size_t gmin = d->gen_count > PREFETCH_GENS_MAX ? d->gen_count - PREFETCH_GENS_MAX : 0;
	for (size_t i = 0; i < n; i++) {
		hit[i] = dedup_hot_resolve(&d->hot, q[i].fp.lo, q[i].fp.hi, pos[i], match[i],
					   &end[i]);
		if (hit[i])
			continue;
		for (size_t k = d->gen_count; k-- > gmin;)
			dedup_bloom_prefetch(&d->gens[k].bloom, q[i].fp.lo);
	}
	/* 2b: test those blooms (cached now); where one hits, prefetch the run's index entry,
	 * then (2c) the record the search will start from. Hints only: step 3 decides. */
	if (d->gen_count > 0) {
		int32_t cand[DEDUP_BATCH];
		for (size_t i = 0; i < n; i++) {
			cand[i] = -1;
			if (hit[i])
				continue;
			for (size_t k = d->gen_count; k-- > gmin;)
				if (dedup_bloom_test(&d->gens[k].bloom, q[i].fp.lo, q[i].fp.hi)) {
					cand[i] = (int32_t)k;
					dedup_gen_prefetch_index(&d->gens[k], q[i].fp.lo);
					break;
				}
		}
		for (size_t i = 0; i < n; i++)
			if (cand[i] >= 0)
				dedup_gen_prefetch(&d->gens[cand[i]], q[i].fp.lo);
	}
	/* 3: decide in order. Only inserts change the table until the chunk ends (no deletes, no
	 * rehash steps), so hit[] stays valid, and a miss stays a miss while its end slot is
	 * still empty; otherwise (a key claimed earlier in this chunk may be this one) probe
	 * again (its lines are cached). */
	uint64_t inserted = 0;
	for (size_t i = 0; i < n; i++) {
		const struct dedup_query *x = &q[i];
		struct dedup_answer *a = &out[i];
		a->offset = DEDUP_OFFSET_NONE;
		a->slot = DEDUP_SLOT_NONE;
		if (x->event_time_us < d->expire_cutoff_us) {
			a->verdict = DEDUP_TOO_OLD;
			continue;
		}
		const struct dedup_rec *r = hit[i];
		bool at_end = !r && dedup_hot_end_empty(&d->hot, end[i]);
		if (!r && !at_end)
			r = dedup_hot_find(&d->hot, x->fp.lo, x->fp.hi);
		if (!r)
			r = cold_find(d, x->fp.lo, x->fp.hi);
		if (r) {
			answer_from(d, r, x->digest, a);
			continue;
		}
		if (!dedup_hot_has_room(&d->hot)) {
			a->verdict = DEDUP_FULL;
			continue;
		}
		struct dedup_rec nr = {.lo = x->fp.lo, .hi = x->fp.hi, .offset = DEDUP_OFFSET_NONE,
				       .digest = x->digest};
		struct dedup_rec *put = at_end ? dedup_hot_insert_at(&d->hot, end[i], &nr)
					       : dedup_hot_insert(&d->hot, &nr);
		a->slot = (uint32_t)(put - d->hot.cur.slots); /* < DEDUP_HOT_SLOTS_MAX = 2^31 */
		inserted++;
		a->verdict = DEDUP_NEW;
	}
	/* Bounded rehash work, and a grow if the table passed its load limit. */
	dedup_hot_maintain(&d->hot, inserted);
	if (d->evict)
		dedup_evict_step(d, EVICT_PER_INSERT * inserted + EVICT_PER_CALL);
}

void dedup_check_claim(struct dedup_shard *d, const struct dedup_query *q, size_t n,
		       struct dedup_answer *out)
{
	for (size_t i = 0; i < n; i += DEDUP_BATCH)
		check_chunk(d, q + i, n - i < DEDUP_BATCH ? n - i : DEDUP_BATCH, out + i);
}

/* ---- the seal journal -------------------------------------------------------------------
 * A sealed segment's keys are those with an offset in [base, next): without help, finding them
 * is a pass over the whole hot table (hundreds of MB at millions of keys per shard: a 100+ ms
 * stall of the owning thread per segment). The broker gives offsets in increasing order, so a
 * log of the keys as they get their offsets has each segment's keys as one contiguous slice.
 * Invariant: jr[] holds, in offset order, exactly the keys given an offset >= jr_from and still
 * claimed. Whatever could break it — an offset out of order (a WAL rewind after a failed write
 * reuses offsets), an abort of a key that had an offset, no memory — restarts the journal
 * above every offset seen so far (journal_break); seals of ranges it does not cover scan. */

static void journal_break(struct dedup_shard *d)
{
	d->jr_n = 0;
	d->jr_from = d->jr_max;
}

static void journal_add(struct dedup_shard *d, const struct dedup_rec *r)
{
	if (!d->jr_on)
		return;
	if (r->offset < d->jr_max) {
		journal_break(d);
		return;
	}
	/* The first key journaled: every key with an offset at or above jr_max (restored keys
	   raise it too) is this one, so the journal covers from there, not from this offset: a
	   tick record before the first event would otherwise leave the shard's first segment
	   uncovered, and its seal would scan the whole hot table on the owning thread. */
	if (d->jr_from == UINT64_MAX)
		d->jr_from = d->jr_max;
	d->jr_max = r->offset + 1;
	if (d->jr_n == d->jr_cap) { /* doubling: amortized, not per key */
		size_t c = d->jr_cap ? d->jr_cap * 2 : 65536;
		struct dedup_rec *p = realloc(d->jr, c * sizeof(*p));
		if (!p) {
			journal_break(d);
			return;
		}
		d->jr = p;
		d->jr_cap = c;
	}
	d->jr[d->jr_n++] = *r;
}

static size_t journal_lower_bound(const struct dedup_shard *d, uint64_t offset)
{
	size_t lo = 0, hi = d->jr_n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (d->jr[mid].offset < offset)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int dedup_journal_take(struct dedup_shard *d, uint64_t base, uint64_t next, struct dedup_rec **keys,
		       size_t *n)
{
	if (!d->jr_on || d->jr_from == UINT64_MAX || d->jr_from > base)
		return 0;
	if (!d->jr) { /* covered, and nothing was journaled: an empty range (as copy_range) */
		*keys = NULL;
		*n = 0;
		d->jr_from = next > d->jr_from ? next : d->jr_from;
		d->jr_takes++;
		return 1;
	}
	size_t k = journal_lower_bound(d, base), e = journal_lower_bound(d, next);
	size_t rest = d->jr_n - e, cap = d->jr_cap > 65536 ? d->jr_cap : 65536;
	/* The caller gets the array itself; the keys after the range start a new one. */
	struct dedup_rec *fresh = malloc(cap * sizeof(*fresh));
	if (!fresh)
		return -ENOMEM;
	if (rest)
		memcpy(fresh, d->jr + e, rest * sizeof(*fresh));
	if (k > 0) /* keys below base (sealed by dedup_seal_generation): not this range's */
		memmove(d->jr, d->jr + k, (e - k) * sizeof(*d->jr));
	*keys = d->jr;
	*n = e - k;
	d->jr = fresh;
	d->jr_n = rest;
	d->jr_cap = cap;
	d->jr_from = next > d->jr_from ? next : d->jr_from;
	d->jr_takes++;
	return 1;
}

/* Keys below `next` were sealed another way: drop them from the journal. */
static void journal_trim(struct dedup_shard *d, uint64_t next)
{
	if (!d->jr_on || d->jr_from == UINT64_MAX || d->jr_from >= next)
		return;
	size_t e = journal_lower_bound(d, next);
	memmove(d->jr, d->jr + e, (d->jr_n - e) * sizeof(*d->jr));
	d->jr_n -= e;
	d->jr_from = next;
}

void dedup_set_offset(struct dedup_shard *d, struct tally_fp fp, uint64_t offset)
{
	struct dedup_rec *r = dedup_hot_find(&d->hot, fp.lo, fp.hi);
	if (r && r->offset == DEDUP_OFFSET_NONE) {
		r->offset = offset;
		journal_add(d, r);
	}
}

void dedup_set_offset_hint(struct dedup_shard *d, struct tally_fp fp, uint32_t slot,
			   uint64_t offset)
{
	struct dedup_rec *r = dedup_hot_at(&d->hot, slot, fp.lo, fp.hi);
	if (!r)
		r = dedup_hot_find(&d->hot, fp.lo, fp.hi);
	if (r && r->offset == DEDUP_OFFSET_NONE) {
		r->offset = offset;
		journal_add(d, r);
	}
}

void dedup_abort(struct dedup_shard *d, struct tally_fp fp)
{
	struct dedup_rec *r = dedup_hot_find(&d->hot, fp.lo, fp.hi);
	if (!r || !dedup_is_pending(d, r->offset))
		return;
	if (r->offset != DEDUP_OFFSET_NONE && d->jr_on)
		journal_break(d); /* it is in the journal: must not reach a run */
	dedup_hot_delete(&d->hot, fp.lo, fp.hi);
}

/* ---- seal, rebuild, expire, restore ----------------------------------------------------- */

/* recs must be sorted and unique. Writes the run and installs its generation. */
static int install_generation(struct dedup_shard *d, uint64_t base, uint64_t next,
			      int64_t max_event_time_us, const struct dedup_rec *recs, size_t n)
{
	char path[4200];
	struct dedup_gen g;
	/* No fdatasync: the WAL segment is durable and the run can be rebuilt from it; a run lost
	 * or torn by a crash fails verification at open and is reported (dedup_bad_runs). That
	 * keeps a 30+ ms sync per run off the owning thread. */
	int rc = dedup_run_write(d->dir, d->shard, base, next, max_event_time_us, recs, n, false);
	if (rc == 0)
		rc = dedup_run_path(path, sizeof(path), d->dir, d->shard, base);
	if (rc == 0)
		rc = dedup_gen_from_sorted(&g, path, base, next, max_event_time_us, 0, recs, n,
					   d->fp_per_million);
	if (rc != 0)
		return rc;
	if (dedup_bloom_save(&g, path, d->shard, d->fp_per_million) != 0)
		dedup_bloom_unlink(path); /* only costs a rebuild of the bloom at the next open */
	rc = dedup_gens_add(d, &g);
	if (rc != 0) {
		dedup_gen_free(&g);
		return rc;
	}
	dedup_bad_remove(d, base);
	return 0;
}

void dedup_evict_step(struct dedup_shard *d, uint64_t budget)
{
	while (budget-- > 0 && d->evict_pos < d->evict_n) {
		const struct dedup_rec *k = &d->evict[d->evict_pos++];
		if (d->evict_pos + 8 < d->evict_n)
			dedup_hot_prefetch(&d->hot, d->evict[d->evict_pos + 8].lo);
		/* Only the very entry that was sealed: same fp, same offset. */
		struct dedup_rec *h = dedup_hot_find(&d->hot, k->lo, k->hi);
		if (h && h->offset == k->offset)
			dedup_hot_delete(&d->hot, k->lo, k->hi);
	}
	if (d->evict && d->evict_pos == d->evict_n) {
		free(d->evict);
		d->evict = NULL;
		d->evict_n = d->evict_pos = 0;
		d->hot.grow_failed = false; /* room was made: a later grow may be tried again */
	}
}

int dedup_seal_generation(struct dedup_shard *d, uint64_t base_offset, uint64_t next_offset,
			  int64_t max_event_time_us)
{
	if (!d->dir || base_offset >= next_offset || next_offset > d->durable_next)
		return -EINVAL;
	if (d->sealing)
		return -EBUSY;
	if (dedup_gens_overlap(d, base_offset, next_offset))
		return -EEXIST;
	/* Take the keys out of the hot table in one pass; put them back if anything fails. */
	struct dedup_rec *keys = NULL, *tmp = NULL;
	size_t n = 0;
	int rc = dedup_hot_extract(&d->hot, base_offset, next_offset, &keys, &n);
	if (rc != 0)
		return rc;
	if (n > DEDUP_RUN_KEYS_MAX)
		rc = -E2BIG;
	if (rc == 0 && n > 0 && !(tmp = malloc(n * sizeof(*tmp))))
		rc = -ENOMEM;
	if (rc == 0) {
		dedup_sort_recs(keys, tmp, n);
		rc = install_generation(d, base_offset, next_offset, max_event_time_us, keys, n);
	}
	if (rc != 0) {
		dedup_hot_reinsert(&d->hot, keys, n);
	} else {
		d->hot.grow_failed = false; /* room was made: a later grow may be tried again */
		journal_trim(d, next_offset);
	}
	free(tmp);
	free(keys);
	return rc;
}

int dedup_rebuild_generation(struct dedup_shard *d, uint64_t base_offset, uint64_t next_offset,
			     int64_t max_event_time_us, struct dedup_key *keys, size_t n)
{
	if (!d->dir || base_offset >= next_offset || n > DEDUP_RUN_KEYS_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (keys[i].offset < base_offset || keys[i].offset >= next_offset)
			return -EINVAL;
	if (dedup_gens_overlap(d, base_offset, next_offset))
		return -EEXIST;
	struct dedup_rec *buf = malloc((n ? n : 1) * 2 * sizeof(*buf));
	if (!buf)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		buf[i] = (struct dedup_rec){.lo = keys[i].fp.lo, .hi = keys[i].fp.hi,
					    .offset = keys[i].offset, .digest = keys[i].digest};
	dedup_sort_recs(buf, buf + n, n);
	/* A WAL never holds a key twice, but a run must be strictly ordered: keep the first. */
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		if (m > 0 && buf[m - 1].lo == buf[i].lo && buf[m - 1].hi == buf[i].hi) {
			if (buf[i].offset < buf[m - 1].offset)
				buf[m - 1] = buf[i];
			continue;
		}
		buf[m++] = buf[i];
	}
	int rc = install_generation(d, base_offset, next_offset, max_event_time_us, buf, m);
	/* Keys of the range restored hot before the rebuild now live in the run. */
	for (size_t i = 0; rc == 0 && i < m; i++) {
		struct dedup_rec *h = dedup_hot_find(&d->hot, buf[i].lo, buf[i].hi);
		if (h && h->offset != DEDUP_OFFSET_NONE && h->offset >= base_offset &&
		    h->offset < next_offset)
			dedup_hot_delete(&d->hot, buf[i].lo, buf[i].hi);
	}
	free(buf);
	return rc;
}

int dedup_expire(struct dedup_shard *d, int64_t now_us)
{
	int64_t cutoff = now_us - d->window_us;
	int expired = 0, err = 0;
	size_t keep = 0;
	for (size_t i = 0; i < d->gen_count; i++) {
		struct dedup_gen *g = &d->gens[i];
		if (g->busy || g->max_event_time_us >= cutoff) { /* busy: after its compaction */
			d->gens[keep++] = *g;
			continue;
		}
		char path[4200];
		if (dedup_run_path(path, sizeof(path), d->dir, d->shard, g->base) == 0) {
			if (unlink(path) != 0 && errno != ENOENT && err == 0)
				err = -errno;
			dedup_bloom_unlink(path);
		}
		d->cold_keys -= g->count;
		dedup_gen_free(g);
		expired++;
	}
	d->gen_count = keep;
	if (cutoff > d->expire_cutoff_us)
		d->expire_cutoff_us = cutoff;
	return err ? err : expired;
}

int dedup_restore_key(struct dedup_shard *d, struct tally_fp fp, uint32_t digest, uint64_t offset)
{
	if (dedup_hot_find(&d->hot, fp.lo, fp.hi))
		return 0; /* WAL order: the first occurrence stands */
	if (!dedup_hot_has_room(&d->hot))
		dedup_hot_maintain(&d->hot, UINT64_MAX);
	if (!dedup_hot_has_room(&d->hot))
		return -ENOSPC;
	struct dedup_rec r = {.lo = fp.lo, .hi = fp.hi, .offset = offset, .digest = digest};
	dedup_hot_insert(&d->hot, &r);
	/* Not journaled: a journal not yet started starts above it (journal_add); one that
	   covers its offset no longer holds every key there. */
	if (offset != DEDUP_OFFSET_NONE) {
		if (offset >= d->jr_max)
			d->jr_max = offset + 1;
		if (d->jr_from != UINT64_MAX && offset >= d->jr_from)
			journal_break(d);
	}
	dedup_hot_maintain(&d->hot, 1);
	return 0;
}

size_t dedup_bad_runs(const struct dedup_shard *d, uint64_t *bases, size_t cap)
{
	for (size_t i = 0; i < d->bad_count && i < cap; i++)
		bases[i] = d->bad[i];
	return d->bad_count;
}

bool dedup_has_generation(const struct dedup_shard *d, uint64_t base_offset)
{
	for (size_t i = 0; i < d->gen_count; i++)
		if (d->gens[i].base <= base_offset && base_offset < d->gens[i].next)
			return true;
	return false;
}

int64_t dedup_shard_window_us(const struct dedup_shard *d)
{
	return d->window_us;
}

bool dedup_generation_max_time(const struct dedup_shard *d, uint64_t base, int64_t *max_us)
{
	for (size_t i = 0; i < d->gen_count; i++)
		if (d->gens[i].base <= base && base < d->gens[i].next) {
			*max_us = d->gens[i].max_event_time_us;
			return true;
		}
	return false;
}

void dedup_stats(const struct dedup_shard *d, struct dedup_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->hot_keys = dedup_hot_count(&d->hot);
	out->cold_keys = d->cold_keys;
	out->hot_bytes = dedup_hot_bytes(&d->hot);
	out->cold_ram_bytes = d->gen_cap * sizeof(struct dedup_gen);
	for (size_t i = 0; i < d->gen_count; i++) {
		out->cold_ram_bytes += dedup_gen_ram_bytes(&d->gens[i]);
		out->blooms_loaded += d->gens[i].bloom_loaded;
	}
	out->generations = d->gen_count;
	out->bloom_checks = d->bloom_checks;
	out->run_searches = d->run_searches;
	out->grows = d->hot.grows;
	out->journal_seals = d->jr_takes;
	out->journal_bytes = d->jr_cap * sizeof(struct dedup_rec);
}
