/*
 * dedup_wal.c — restart wiring between the dedup shard and the WAL (library tally_dedup_wal,
 * kept apart so that tally_dedup itself does not depend on the WAL).
 *
 * What is durable is the WAL. After a crash the dedup state is rebuilt from it: the .keys runs
 * of sealed segments are trusted only when they load and verify (dedup_shard_open); every other
 * sealed segment inside the window is read back here and its run rewritten, and the unsealed
 * segment's durable records are restored into the hot table. Fingerprint and digest come from
 * event_fingerprint()/event_content_digest() over the stored tenant and event body, exactly as
 * the broker computed them when the event arrived.
 *
 * Thread: the shard's owning thread, before it serves any query. Allocates (restart only).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dedup_internal.h"
#include "tally/dedup.h"
#include "tally/wal.h"

#define RECOVER_FUTURE_SLACK_US (86400LL * 1000000) /* max event-time lead over ingest time */

struct keybuf {
	struct dedup_key *keys;
	size_t n, cap;
	int64_t max_event_time_us;
};

static int keybuf_push(struct keybuf *b, const struct dedup_key *k)
{
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 4096;
		struct dedup_key *p = realloc(b->keys, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		b->keys = p;
		b->cap = cap;
	}
	b->keys[b->n++] = *k;
	return 0;
}

/* Reads the EVENT records of [base, limit) of one segment into b (reset first). */
static int read_segment(const char *path, uint64_t base, uint64_t limit, struct keybuf *b)
{
	struct wal_segment_iter *it;
	b->n = 0;
	b->max_event_time_us = INT64_MIN;
	int rc = wal_segment_iter_open(path, base, limit, false, &it);
	if (rc != 0)
		return rc;
	struct wal_record rec;
	while ((rc = wal_segment_iter_next(it, &rec)) == 1) {
		if (rec.kind != WAL_RECORD_EVENT)
			continue;
		struct dedup_key k = {.fp = event_fingerprint(rec.tenant, rec.ev.key),
				      .offset = rec.offset,
				      .digest = event_content_digest(&rec.ev)};
		if (rec.ev.event_time_us > b->max_event_time_us)
			b->max_event_time_us = rec.ev.event_time_us;
		rc = keybuf_push(b, &k);
		if (rc != 0)
			break;
	}
	wal_segment_iter_close(it);
	return rc < 0 ? rc : 0;
}

int dedup_recover_from_wal(struct dedup_shard *d, const char *data_dir, uint16_t shard,
			   uint64_t durable_next, int64_t now_us, struct dedup_recover_stats *st)
{
	struct dedup_recover_stats local;
	if (!st)
		st = &local;
	memset(st, 0, sizeof(*st));
	size_t count = 0;
	int rc = wal_segments_list(data_dir, shard, NULL, 0, &count);
	if (rc != 0)
		return rc;
	struct wal_segment_info *segs = calloc(count ? count : 1, sizeof(*segs));
	if (!segs)
		return -ENOMEM;
	rc = wal_segments_list(data_dir, shard, segs, count, &count);
	if (rc != 0)
		goto out_free;
	st->segments = count;
	int64_t window = dedup_shard_window_us(d);
	int64_t cutoff = now_us - window;
	int64_t stop_before = now_us - 2 * window - RECOVER_FUTURE_SLACK_US;
	struct keybuf b = {0};

	/* Sealed segments, newest first. */
	for (size_t i = count; i-- > 0;) {
		if (!segs[i].sealed || i + 1 >= count)
			continue;
		uint64_t base = segs[i].base_offset, next = segs[i + 1].base_offset;
		int64_t max_t;
		if (dedup_generation_max_time(d, base, &max_t)) {
			st->runs_present++;
		} else {
			rc = read_segment(segs[i].path, base, next, &b);
			if (rc != 0)
				goto out_keys;
			max_t = b.max_event_time_us;
			if (max_t < cutoff) {
				st->segments_expired++;
			} else {
				rc = dedup_rebuild_generation(d, base, next, max_t, b.keys, b.n);
				if (rc != 0)
					goto out_keys;
				st->runs_rebuilt++;
			}
		}
		if (max_t != INT64_MIN && max_t < stop_before) /* INT64_MIN: no events, no clue */
			break;
	}

	/* The unsealed segment: its durable records go hot, in WAL order. */
	if (count > 0 && !segs[count - 1].sealed) {
		rc = read_segment(segs[count - 1].path, segs[count - 1].base_offset, durable_next, &b);
		if (rc != 0)
			goto out_keys;
		for (size_t k = 0; k < b.n && rc == 0; k++)
			rc = dedup_restore_key(d, b.keys[k].fp, b.keys[k].digest, b.keys[k].offset);
		if (rc != 0)
			goto out_keys;
		st->tail_keys = b.n;
	}
	dedup_set_durable(d, durable_next);

out_keys:
	free(b.keys);
out_free:
	free(segs);
	return rc;
}
