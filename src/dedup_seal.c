/*
 * dedup_seal.c — sealing a generation in three steps, so that only a read-only copy pass stays
 * on the owning thread (contract in include/tally/dedup.h, "Sealing off the owning thread").
 *
 * Invariants:
 *  - begin takes the keys of [base, next) from the seal journal if it covers the range (a
 *    slice, no scan), else copies them out of the hot table; they stay in the table: until
 *    the generation is installed they are answered from the hot table, afterwards from either
 *    tier with the same answer (same fp, digest, offset), until evicted from the hot table.
 *  - those keys cannot change meanwhile: their offsets are set and below the durable watermark
 *    (begin requires next <= durable_next), so set_offset and abort leave them alone.
 *  - run() touches only the job: it sorts its copy, writes the run (not synced: the WAL segment
 *    is durable; a torn run fails verification at open) and builds bloom and index.
 *  - one sealing job per shard at a time; dedup_seal_generation() is refused meanwhile.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup_internal.h"

struct dedup_sealing {
	uint64_t base, next;
	int64_t max_event_time_us;
	uint16_t shard;
	uint32_t fp_per_million;
	char dir[4096];
	struct dedup_rec *keys;
	size_t n;
	struct dedup_gen gen;
	bool built;
	int rc;
};

int dedup_seal_begin(struct dedup_shard *d, uint64_t base_offset, uint64_t next_offset,
		     int64_t max_event_time_us, struct dedup_sealing **out)
{
	*out = NULL;
	if (!d->dir || base_offset >= next_offset || next_offset > d->durable_next)
		return -EINVAL;
	if (d->sealing)
		return -EBUSY;
	if (dedup_gens_overlap(d, base_offset, next_offset))
		return -EEXIST;
	struct dedup_sealing *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	int len = snprintf(s->dir, sizeof(s->dir), "%s", d->dir);
	int rc = (len < 0 || (size_t)len >= sizeof(s->dir)) ? -ENAMETOOLONG : 0;
	if (rc == 0) {
		rc = dedup_journal_take(d, base_offset, next_offset, &s->keys, &s->n);
		if (rc == 0) /* not covered: a read-only pass over the hot table */
			rc = dedup_hot_copy_range(&d->hot, base_offset, next_offset, &s->keys,
						  &s->n);
		else if (rc == 1)
			rc = 0;
	}
	if (rc == 0 && s->n > DEDUP_RUN_KEYS_MAX)
		rc = -E2BIG;
	if (rc != 0) {
		free(s->keys);
		free(s);
		return rc;
	}
	s->base = base_offset;
	s->next = next_offset;
	s->max_event_time_us = max_event_time_us;
	s->shard = d->shard;
	s->fp_per_million = d->fp_per_million;
	d->sealing = true;
	*out = s;
	return 0;
}

int dedup_seal_run(struct dedup_sealing *s)
{
	int rc = 0;
	struct dedup_rec *tmp = NULL;
	if (s->n > 0 && !(tmp = malloc(s->n * sizeof(*tmp))))
		rc = -ENOMEM;
	if (rc == 0) {
		dedup_sort_recs(s->keys, tmp, s->n);
		rc = dedup_run_write(s->dir, s->shard, s->base, s->next, s->max_event_time_us, s->keys,
				     s->n, false);
	}
	free(tmp);
	char path[4200];
	if (rc == 0)
		rc = dedup_run_path(path, sizeof(path), s->dir, s->shard, s->base);
	if (rc == 0)
		rc = dedup_gen_from_sorted(&s->gen, path, s->base, s->next, s->max_event_time_us, 0,
					   s->keys, s->n, s->fp_per_million);
	if (rc == 0 && dedup_bloom_save(&s->gen, path, s->shard, s->fp_per_million) != 0)
		dedup_bloom_unlink(path); /* only costs a rebuild of the bloom at the next open */
	s->built = rc == 0;
	s->rc = rc;
	return rc;
}

int dedup_seal_finish(struct dedup_shard *d, struct dedup_sealing *s)
{
	int rc = s->rc;
	if (rc == 0 && dedup_gens_overlap(d, s->base, s->next)) /* a rebuild got there first */
		rc = -EEXIST;
	if (rc == 0)
		rc = dedup_gens_add(d, &s->gen);
	if (rc != 0) {
		if (s->built)
			dedup_gen_free(&s->gen);
		free(s->keys);
	} else {
		dedup_bad_remove(d, s->base);
		/* The keys now answer from the run too; the hot copies go a few per call. */
		dedup_evict_step(d, UINT64_MAX); /* the previous list, if any, first */
		d->evict = s->keys;
		d->evict_n = s->n;
		d->evict_pos = 0;
	}
	d->sealing = false;
	free(s);
	return rc;
}
