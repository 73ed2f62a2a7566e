/*
 * dedup_compact.c — merging adjacent cold generations so that a lookup probes few blooms
 * (policy and the three-step contract in include/tally/dedup.h, "Compaction"; the merged run
 * has the .keys format of docs/dedup.md with its level in header bytes 14..15).
 *
 * Invariants:
 *  - the inputs are fan_in generations adjacent in offset order (each one's next is the next
 *    one's base) and of one level; while the job is out they are marked busy: still searched,
 *    never expired, never freed, so the job may read their mapped runs from another thread.
 *  - the job copies everything it needs from the shard at begin; run() touches nothing else.
 *  - crash safety: the merged run is written and fdatasynced as <base>.keys.tmp, renamed over
 *    the first input's run (same base), then the other inputs are unlinked. A crash before the
 *    rename leaves a .tmp (removed at open); after it, runs contained in the merged one (dropped
 *    at open, see resolve_overlaps in dedup.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "dedup_internal.h"

#define MERGE_BUF_RECS 32768u /* 1 MiB of output per write */

struct dedup_compaction {
	uint16_t shard, level;
	uint32_t fp_per_million;
	uint64_t base, next, count;
	int64_t max_event_time_us;
	size_t n_in;
	uint64_t in_base[DEDUP_COMPACT_FAN_IN_MAX];
	const struct dedup_rec *in_recs[DEDUP_COMPACT_FAN_IN_MAX];
	uint64_t in_count[DEDUP_COMPACT_FAN_IN_MAX];
	char sdir[4096], final_path[4200], tmp_path[4300];
	struct dedup_gen out;
	int rc;
};

static struct dedup_gen *gen_by_base(struct dedup_shard *d, uint64_t base, size_t *index)
{
	for (size_t i = 0; i < d->gen_count; i++)
		if (d->gens[i].base == base) {
			*index = i;
			return &d->gens[i];
		}
	return NULL;
}

int dedup_compact_begin(struct dedup_shard *d, struct dedup_compaction **out)
{
	*out = NULL;
	if (!d->dir)
		return 0;
	if (d->compacting)
		return -EBUSY;
	size_t f = d->compact_fan_in;
	size_t pick = SIZE_MAX;
	for (size_t i = 0; i + f <= d->gen_count && pick == SIZE_MAX; i++) {
		uint16_t level = d->gens[i].level;
		if (level >= d->compact_level_max)
			continue;
		uint64_t total = 0;
		bool ok = true;
		for (size_t j = i; j < i + f && ok; j++) {
			const struct dedup_gen *g = &d->gens[j];
			ok = !g->busy && g->level == level &&
			     (j + 1 == i + f || g->next == d->gens[j + 1].base);
			total += g->count;
		}
		if (ok && total <= DEDUP_RUN_KEYS_MAX)
			pick = i;
	}
	if (pick == SIZE_MAX)
		return 0;
	struct dedup_compaction *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	int rc = dedup_shard_dir(c->sdir, sizeof(c->sdir), d->dir, d->shard);
	if (rc == 0)
		rc = dedup_run_path(c->final_path, sizeof(c->final_path), d->dir, d->shard,
				    d->gens[pick].base);
	if (rc != 0) {
		free(c);
		return rc;
	}
	snprintf(c->tmp_path, sizeof(c->tmp_path), "%s.tmp", c->final_path);
	c->shard = d->shard;
	c->fp_per_million = d->fp_per_million;
	c->level = (uint16_t)(d->gens[pick].level + 1);
	c->base = d->gens[pick].base;
	c->next = d->gens[pick + f - 1].next;
	c->max_event_time_us = INT64_MIN;
	c->n_in = f;
	for (size_t k = 0; k < f; k++) {
		struct dedup_gen *g = &d->gens[pick + k];
		g->busy = true;
		c->in_base[k] = g->base;
		c->in_recs[k] = g->recs;
		c->in_count[k] = g->count;
		c->count += g->count;
		if (g->max_event_time_us > c->max_event_time_us)
			c->max_event_time_us = g->max_event_time_us;
	}
	d->compacting = true;
	*out = c;
	return 1;
}

static inline bool rec_lt(const struct dedup_rec *a, const struct dedup_rec *b)
{
	return a->lo < b->lo || (a->lo == b->lo && a->hi < b->hi);
}

/* k-way merge of the inputs into fd, checksummed as it goes. */
static int merge_into(struct dedup_compaction *c, int fd, XXH3_state_t *st)
{
	struct dedup_rec *buf = malloc(MERGE_BUF_RECS * sizeof(*buf));
	if (!buf)
		return -ENOMEM;
	uint64_t pos[DEDUP_COMPACT_FAN_IN_MAX] = {0};
	size_t fill = 0;
	int rc = 0;
	const struct dedup_rec *prev = NULL;
	for (uint64_t done = 0; done < c->count && rc == 0; done++) {
		size_t best = SIZE_MAX;
		for (size_t k = 0; k < c->n_in; k++)
			if (pos[k] < c->in_count[k] &&
			    (best == SIZE_MAX || rec_lt(&c->in_recs[k][pos[k]], &c->in_recs[best][pos[best]])))
				best = k;
		const struct dedup_rec *r = &c->in_recs[best][pos[best]++];
		if (prev && !rec_lt(prev, r)) { /* a key in two generations: not a state we make */
			rc = -EBADMSG;
			break;
		}
		prev = r;
		buf[fill++] = *r;
		if (fill == MERGE_BUF_RECS || done + 1 == c->count) {
			XXH3_64bits_update(st, buf, fill * sizeof(*buf));
			rc = dedup_write_all(fd, buf, fill * sizeof(*buf));
			fill = 0;
		}
	}
	free(buf);
	return rc;
}

int dedup_compact_run(struct dedup_compaction *c)
{
	uint8_t h[DEDUP_RUN_HEADER_BYTES];
	dedup_run_header(h, c->shard, c->level, c->base, c->next, c->max_event_time_us, c->count);
	XXH3_state_t st;
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, h, 56);
	int rc = 0;
	int fd = open(c->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		goto out;
	}
	rc = dedup_write_all(fd, h, sizeof(h));
	if (rc == 0)
		rc = merge_into(c, fd, &st);
	if (rc == 0) {
		uint64_t sum = XXH3_64bits_digest(&st);
		if (pwrite(fd, &sum, 8, 56) != 8) /* little-endian host (dedup_internal.h) */
			rc = errno ? -errno : -EIO;
	}
	if (rc == 0 && fdatasync(fd) != 0)
		rc = -errno;
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	/* Reload what was written: verifies it and builds the bloom and index. */
	if (rc == 0)
		rc = dedup_gen_load(&c->out, c->tmp_path, c->shard, c->base, c->fp_per_million);
	/* Under the final name: it replaces the first input's, whose run it is not bound to. */
	if (rc == 0 && dedup_bloom_save(&c->out, c->final_path, c->shard, c->fp_per_million) != 0)
		dedup_bloom_unlink(c->final_path);
	if (rc != 0)
		unlink(c->tmp_path);
out:
	c->rc = rc;
	return rc;
}

static void release_inputs(struct dedup_shard *d, struct dedup_compaction *c)
{
	size_t idx;
	for (size_t k = 0; k < c->n_in; k++) {
		struct dedup_gen *g = gen_by_base(d, c->in_base[k], &idx);
		if (g)
			g->busy = false;
	}
}

int dedup_compact_finish(struct dedup_shard *d, struct dedup_compaction *c)
{
	int rc = c->rc;
	if (rc == 0 && rename(c->tmp_path, c->final_path) != 0) {
		rc = -errno;
		unlink(c->tmp_path);
	}
	if (rc != 0) {
		if (c->out.map)
			dedup_gen_free(&c->out);
		release_inputs(d, c);
		goto out;
	}
	rc = dedup_fsync_dir(c->sdir);
	for (size_t k = 0; k < c->n_in; k++) {
		size_t idx;
		struct dedup_gen *g = gen_by_base(d, c->in_base[k], &idx);
		if (!g)
			continue;
		if (k > 0) { /* the first input's run was replaced by the rename */
			char path[4200];
			if (dedup_run_path(path, sizeof(path), d->dir, d->shard, g->base) == 0) {
				unlink(path);
				dedup_bloom_unlink(path);
			}
		}
		d->cold_keys -= g->count;
		dedup_gen_free(g);
		memmove(&d->gens[idx], &d->gens[idx + 1], (d->gen_count - idx - 1) * sizeof(*g));
		d->gen_count--;
	}
	int rc2 = dedup_gens_add(d, &c->out); /* cannot fail: fan_in entries were just freed */
	if (rc2 != 0) {
		dedup_gen_free(&c->out);
		rc = rc2;
	}
out:
	d->compacting = false;
	free(c);
	return rc;
}

int dedup_compact(struct dedup_shard *d)
{
	int merges = 0;
	for (;;) {
		struct dedup_compaction *c;
		int rc = dedup_compact_begin(d, &c);
		if (rc <= 0)
			return rc < 0 ? rc : merges;
		rc = dedup_compact_run(c); /* its result is also finish's */
		rc = dedup_compact_finish(d, c);
		if (rc != 0)
			return rc;
		merges++;
	}
}
