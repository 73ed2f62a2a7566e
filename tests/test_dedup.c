/*
 * test_dedup.c — hot tier and verdict semantics of the dedup shard (no cold tier):
 * verdicts, in-order batches, pending/durable/abort, TOO_OLD, the backward-shift deletion with
 * wrap-around clusters, and a 2M-query reference run through many incremental grows with aborts
 * during migration: no false duplicate, no missed duplicate, offsets exact.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup_internal.h"
#include "tally/dedup.h"
#include "test_dedup_util.h"

static struct dedup_shard *open_hot(uint64_t expected)
{
	struct dedup_options o = {.expected_keys = expected};
	struct dedup_shard *d = NULL;
	CHECK(dedup_shard_open(&o, 0, &d) == 0);
	CHECK(d != NULL);
	return d;
}

static struct dedup_answer check1(struct dedup_shard *d, struct tally_fp fp, uint32_t digest)
{
	struct dedup_query q = {.fp = fp, .digest = digest, .event_time_us = 1000};
	struct dedup_answer a;
	dedup_check_claim(d, &q, 1, &a);
	return a;
}

static void test_verdicts(void)
{
	struct dedup_shard *d = open_hot(0);
	struct tally_fp a = dtest_fp(1, 1), b = dtest_fp(1, 2);
	struct dedup_answer r = check1(d, a, 7);
	CHECK_EQ_U(r.verdict, DEDUP_NEW);
	CHECK_EQ_U(r.offset, DEDUP_OFFSET_NONE);
	/* Claimed, not appended yet: pending, offset unknown. */
	r = check1(d, a, 7);
	CHECK_EQ_U(r.verdict, DEDUP_PENDING_DUPLICATE);
	CHECK_EQ_U(r.offset, DEDUP_OFFSET_NONE);
	r = check1(d, a, 8);
	CHECK_EQ_U(r.verdict, DEDUP_PENDING_CONFLICT);
	dedup_set_offset(d, a, 100);
	CHECK(dedup_is_pending(d, 100));
	dedup_set_durable(d, 100); /* offsets < 100 durable: 100 is not */
	r = check1(d, a, 7);
	CHECK_EQ_U(r.verdict, DEDUP_PENDING_DUPLICATE);
	CHECK_EQ_U(r.offset, 100);
	dedup_set_durable(d, 101);
	CHECK(!dedup_is_pending(d, 100));
	r = check1(d, a, 7);
	CHECK_EQ_U(r.verdict, DEDUP_DUPLICATE);
	CHECK_EQ_U(r.offset, 100);
	r = check1(d, a, 9);
	CHECK_EQ_U(r.verdict, DEDUP_CONFLICT);
	CHECK_EQ_U(r.offset, 100);
	/* The durable watermark never goes back. */
	dedup_set_durable(d, 50);
	CHECK(!dedup_is_pending(d, 100));
	/* A second set_offset does not move an original. */
	dedup_set_offset(d, a, 5000);
	CHECK_EQ_U(check1(d, a, 7).offset, 100);
	/* Abort of a durable key is ignored. */
	dedup_abort(d, a);
	CHECK_EQ_U(check1(d, a, 7).verdict, DEDUP_DUPLICATE);
	/* Other key is unaffected. */
	CHECK_EQ_U(check1(d, b, 7).verdict, DEDUP_NEW);
	dedup_shard_close(d);
}

static void test_batch_order_and_abort(void)
{
	struct dedup_shard *d = open_hot(0);
	struct tally_fp a = dtest_fp(2, 1), b = dtest_fp(2, 2), c = dtest_fp(2, 3);
	struct dedup_query q[6] = {
		{.fp = a, .digest = 1}, {.fp = a, .digest = 1}, {.fp = b, .digest = 2},
		{.fp = a, .digest = 3}, {.fp = c, .digest = 4}, {.fp = b, .digest = 2},
	};
	struct dedup_answer out[6];
	dedup_check_claim(d, q, 6, out);
	CHECK_EQ_U(out[0].verdict, DEDUP_NEW);
	CHECK_EQ_U(out[1].verdict, DEDUP_PENDING_DUPLICATE);
	CHECK_EQ_U(out[2].verdict, DEDUP_NEW);
	CHECK_EQ_U(out[3].verdict, DEDUP_PENDING_CONFLICT);
	CHECK_EQ_U(out[4].verdict, DEDUP_NEW);
	CHECK_EQ_U(out[5].verdict, DEDUP_PENDING_DUPLICATE);

	/* a's write fails before an offset was known; b's fails after: both retries accepted. */
	dedup_set_offset(d, b, 10);
	dedup_set_offset(d, c, 11);
	dedup_abort(d, a);
	dedup_abort(d, b);
	CHECK_EQ_U(check1(d, a, 1).verdict, DEDUP_NEW);
	CHECK_EQ_U(check1(d, b, 2).verdict, DEDUP_NEW);
	/* c was not aborted: still pending, then durable. */
	CHECK_EQ_U(check1(d, c, 4).verdict, DEDUP_PENDING_DUPLICATE);
	dedup_set_durable(d, 12);
	CHECK_EQ_U(check1(d, c, 4).verdict, DEDUP_DUPLICATE);
	/* The retried b got a new claim with no offset yet: pending again. */
	CHECK_EQ_U(check1(d, b, 2).verdict, DEDUP_PENDING_DUPLICATE);
	struct dedup_stats st;
	dedup_stats(d, &st);
	CHECK_EQ_U(st.hot_keys, 3);
	dedup_shard_close(d);
}

static void test_too_old(void)
{
	struct dedup_options o = {.window_us = 1000000};
	struct dedup_shard *d = NULL;
	CHECK(dedup_shard_open(&o, 0, &d) == 0);
	struct dedup_query q = {.fp = dtest_fp(3, 1), .digest = 1, .event_time_us = 500};
	struct dedup_answer a;
	dedup_check_claim(d, &q, 1, &a);
	CHECK_EQ_U(a.verdict, DEDUP_NEW);
	CHECK(dedup_expire(d, 2000000) == 0); /* cutoff 1000000 */
	q.fp = dtest_fp(3, 2);
	dedup_check_claim(d, &q, 1, &a);
	CHECK_EQ_U(a.verdict, DEDUP_TOO_OLD);
	q.event_time_us = 1000000;
	dedup_check_claim(d, &q, 1, &a);
	CHECK_EQ_U(a.verdict, DEDUP_NEW);
	dedup_shard_close(d);

	struct dedup_options bad = {.window_us = DEDUP_WINDOW_US_MAX + 1};
	CHECK(dedup_shard_open(&bad, 0, &d) == -EINVAL);
	bad.window_us = -1;
	CHECK(dedup_shard_open(&bad, 0, &d) == -EINVAL);
	struct dedup_options bad2 = {.bloom_fp_per_million = 600000};
	CHECK(dedup_shard_open(&bad2, 0, &d) == -EINVAL);
	CHECK(d == NULL);
}

/* Long clusters that wrap past the end of the table; delete in random order. */
static void test_backward_shift_wrap(void)
{
	struct dedup_hot h;
	CHECK(dedup_hot_init(&h, 1) == 0);
	uint64_t cap = h.cur.mask + 1;
	enum { N = 600 };
	static uint64_t los[N];
	static bool live[N];
	struct dtest_rng rng = {42};
	for (int i = 0; i < N; i++) {
		/* Homes crowded in the last 40 slots and the first 10. */
		uint64_t home = (cap - 40 + dtest_next(&rng) % 50) & (cap - 1);
		los[i] = (dtest_next(&rng) & ~(cap - 1)) | home;
		struct dedup_rec r = {.lo = los[i], .hi = (uint64_t)i, .offset = (uint64_t)i};
		CHECK(dedup_hot_has_room(&h));
		dedup_hot_insert(&h, &r);
		live[i] = true;
	}
	for (int round = 0; round < N; round++) {
		int k = (int)(dtest_next(&rng) % N);
		if (!live[k])
			continue;
		CHECK(dedup_hot_delete(&h, los[k], (uint64_t)k));
		live[k] = false;
		if (round % 16 == 0)
			for (int i = 0; i < N; i++) {
				struct dedup_rec *r = dedup_hot_find(&h, los[i], (uint64_t)i);
				CHECK(live[i] ? r != NULL && r->offset == (uint64_t)i : r == NULL);
			}
	}
	dedup_hot_free(&h);
}

/*
 * Reference run: 2M queries over a pool of 1.5M keys, a table sized for 1024 keys (so ~11
 * incremental grows), offsets assigned as "appended", the durable watermark lagging, 1% of
 * the new claims aborted (some during migrations). Every verdict is checked against the
 * reference: a key never seen (or aborted) must be NEW, a stored key DUPLICATE/CONFLICT with
 * its exact offset, and pending exactly when offset >= durable.
 */
static void test_reference(void)
{
	enum { POOL = 1500000, QUERIES = 2000000, BATCH = 100 };
	uint64_t *ref_off = malloc(POOL * sizeof(uint64_t)); /* 0 = absent, else offset+1 */
	uint32_t *ref_dig = malloc(POOL * sizeof(uint32_t)); /* digest of the claim */
	CHECK(ref_off && ref_dig);
	memset(ref_off, 0, POOL * sizeof(uint64_t));
	struct dedup_shard *d = open_hot(1024);
	struct dtest_rng rng = {7};
	uint64_t next_off = 0, durable = 0, present = 0, news = 0, dups = 0, conflicts = 0;
	uint64_t aborts = 0, pendings = 0;
	struct dedup_query q[BATCH];
	struct dedup_answer out[BATCH];
	uint64_t idx[BATCH];
	for (uint64_t done = 0; done < QUERIES; done += BATCH) {
		for (int i = 0; i < BATCH; i++) {
			idx[i] = dtest_next(&rng) % POOL;
			bool conflict = dtest_next(&rng) % 10 == 0;
			q[i] = (struct dedup_query){.fp = dtest_fp(4, idx[i]),
						    .digest = dtest_digest(idx[i]) + conflict};
		}
		dedup_check_claim(d, q, BATCH, out);
		/* Check in order against the reference, then "append" the NEW ones. */
		for (int i = 0; i < BATCH; i++) {
			uint64_t k = idx[i];
			if (ref_off[k] == 0) {
				CHECK_EQ_U(out[i].verdict, DEDUP_NEW);
				ref_off[k] = UINT64_MAX; /* claimed, no offset yet */
				ref_dig[k] = q[i].digest;
				news++;
				continue;
			}
			CHECK_EQ_U(out[i].slot, DEDUP_SLOT_NONE);
			bool same = q[i].digest == ref_dig[k];
			uint64_t off = ref_off[k] == UINT64_MAX ? DEDUP_OFFSET_NONE : ref_off[k] - 1;
			bool pending = off == DEDUP_OFFSET_NONE || off >= durable;
			CHECK_EQ_U(out[i].offset, off);
			if (pending)
				CHECK_EQ_U(out[i].verdict,
					   same ? DEDUP_PENDING_DUPLICATE : DEDUP_PENDING_CONFLICT);
			else
				CHECK_EQ_U(out[i].verdict, same ? DEDUP_DUPLICATE : DEDUP_CONFLICT);
			pendings += pending;
			dups += same && !pending;
			conflicts += !same && !pending;
		}
		for (int i = 0; i < BATCH; i++) {
			uint64_t k = idx[i];
			if (out[i].verdict != DEDUP_NEW)
				continue;
			if (dtest_next(&rng) % 100 == 0) { /* the WAL write failed */
				dedup_abort(d, q[i].fp);
				ref_off[k] = 0;
				aborts++;
				news--;
				continue;
			}
			/* Half the batches pass the claim's slot hint; aborts earlier in this loop
			 * and grows in later claims make some of those hints stale. */
			CHECK(out[i].slot != DEDUP_SLOT_NONE);
			if (done / BATCH % 2)
				dedup_set_offset_hint(d, q[i].fp, out[i].slot, next_off);
			else
				dedup_set_offset(d, q[i].fp, next_off);
			ref_off[k] = next_off + 1;
			next_off++;
		}
		/* The durable watermark lags by up to ~150 offsets. */
		if (next_off > 150 && dtest_next(&rng) % 2 == 0) {
			uint64_t w = next_off - dtest_next(&rng) % 150;
			durable = w > durable ? w : durable; /* the watermark only grows */
		}
		dedup_set_durable(d, durable);
	}
	struct dedup_stats st;
	dedup_stats(d, &st);
	for (uint64_t k = 0; k < POOL; k++)
		present += ref_off[k] != 0;
	CHECK_EQ_U(st.hot_keys, present);
	CHECK_EQ_U(present, news);
	CHECK(st.grows >= 10);
	CHECK(dups > 100000 && conflicts > 10000 && pendings > 100 && aborts > 1000);
	printf("reference: %llu new, %llu dup, %llu conflict, %llu pending, %llu aborted, grows %llu,"
	       " hot %llu keys in %llu bytes\n",
	       (unsigned long long)news, (unsigned long long)dups, (unsigned long long)conflicts,
	       (unsigned long long)pendings, (unsigned long long)aborts,
	       (unsigned long long)st.grows, (unsigned long long)st.hot_keys,
	       (unsigned long long)st.hot_bytes);
	/* Every key is still found with its offset after all the grows. */
	for (uint64_t k = 0; k < POOL; k++) {
		if (ref_off[k] == 0)
			continue;
		struct dedup_answer a = check1(d, dtest_fp(4, k), ref_dig[k]);
		CHECK(a.verdict == DEDUP_DUPLICATE || a.verdict == DEDUP_PENDING_DUPLICATE);
		CHECK_EQ_U(a.offset, ref_off[k] - 1);
	}
	dedup_shard_close(d);
	free(ref_off);
	free(ref_dig);
}

/* dedup_set_offset_hint() with hints that went stale: the offset lands on the right key, or
 * on none, never on the key that now sits in the hinted slot. */
static void test_set_offset_hint(void)
{
	struct dedup_shard *d = open_hot(0);
	/* Same home slot (5): b is probed past a, into slot 6. */
	struct tally_fp a = {.lo = 5, .hi = 1}, b = {.lo = 5 + 1024 * 7, .hi = 2};
	struct dedup_answer ra = check1(d, a, 1), rb = check1(d, b, 2);
	CHECK_EQ_U(ra.verdict, DEDUP_NEW);
	CHECK_EQ_U(rb.verdict, DEDUP_NEW);
	CHECK(ra.slot != rb.slot);
	/* a's write fails: the backward shift moves b into a's slot; b's hint is stale. */
	dedup_abort(d, a);
	dedup_set_offset_hint(d, b, rb.slot, 40);
	dedup_set_durable(d, 41);
	struct dedup_answer r = check1(d, b, 2);
	CHECK_EQ_U(r.verdict, DEDUP_DUPLICATE);
	CHECK_EQ_U(r.offset, 40);
	/* Two pending claims, the first given the other's slot: the other keeps no offset. */
	struct tally_fp f = dtest_fp(9, 7), g = dtest_fp(9, 8);
	struct dedup_answer rf = check1(d, f, 1), rg = check1(d, g, 1);
	CHECK_EQ_U(rf.verdict, DEDUP_NEW);
	CHECK_EQ_U(rg.verdict, DEDUP_NEW);
	dedup_set_offset_hint(d, f, rg.slot, 41);
	CHECK_EQ_U(check1(d, f, 1).offset, 41);
	CHECK_EQ_U(check1(d, g, 1).offset, DEDUP_OFFSET_NONE);
	dedup_set_offset_hint(d, g, rg.slot, 42);
	CHECK_EQ_U(check1(d, g, 1).offset, 42);
	/* Out of range and NONE hints probe. */
	struct tally_fp c = dtest_fp(9, 1), e = dtest_fp(9, 2);
	CHECK_EQ_U(check1(d, c, 3).verdict, DEDUP_NEW);
	CHECK_EQ_U(check1(d, e, 4).verdict, DEDUP_NEW);
	dedup_set_offset_hint(d, c, DEDUP_SLOT_NONE, 43);
	dedup_set_offset_hint(d, e, 1u << 30, 44);
	CHECK_EQ_U(check1(d, c, 3).offset, 43);
	CHECK_EQ_U(check1(d, e, 4).offset, 44);
	/* The all-zero fingerprint must not match an empty slot's zeroed record. */
	struct tally_fp z = {0, 0};
	struct dedup_answer rz = check1(d, z, 5);
	CHECK_EQ_U(rz.verdict, DEDUP_NEW);
	dedup_set_offset_hint(d, z, 700, 45); /* slot 700 is empty */
	CHECK_EQ_U(check1(d, z, 5).offset, 45);
	dedup_shard_close(d);
}

/* Aborts while a migration is in flight, checked directly on the hot table. */
static void test_delete_during_migration(void)
{
	struct dedup_hot h;
	CHECK(dedup_hot_init(&h, 1) == 0);
	enum { N = 20000 };
	static bool live[N];
	struct dtest_rng rng = {9};
	uint64_t seen_migrating = 0;
	for (uint64_t i = 0; i < N; i++) {
		struct tally_fp fp = dtest_fp(5, i);
		CHECK(dedup_hot_has_room(&h));
		struct dedup_rec r = {.lo = fp.lo, .hi = fp.hi, .offset = i};
		dedup_hot_insert(&h, &r);
		live[i] = true;
		if (h.migrating) {
			seen_migrating++;
			/* delete a random live key, often one still in the old table */
			uint64_t k = dtest_next(&rng) % (i + 1);
			if (live[k]) {
				struct tally_fp kf = dtest_fp(5, k);
				CHECK(dedup_hot_delete(&h, kf.lo, kf.hi));
				live[k] = false;
			}
		}
		dedup_hot_maintain(&h, 2);
	}
	CHECK(seen_migrating > 1000);
	uint64_t n_live = 0;
	for (uint64_t i = 0; i < N; i++) {
		struct tally_fp fp = dtest_fp(5, i);
		struct dedup_rec *r = dedup_hot_find(&h, fp.lo, fp.hi);
		CHECK(live[i] ? r != NULL && r->offset == i : r == NULL);
		n_live += live[i];
	}
	CHECK_EQ_U(dedup_hot_count(&h), n_live);
	dedup_hot_free(&h);
}

static void test_shard_of(void)
{
	enum { N = 700000 };
	uint64_t count[7] = {0};
	for (uint64_t i = 0; i < N; i++) {
		uint16_t s = dedup_shard_of(dtest_fp(6, i), 7);
		CHECK(s < 7);
		count[s]++;
	}
	for (int s = 0; s < 7; s++)
		CHECK(count[s] > N / 7 - 2000 && count[s] < N / 7 + 2000);
	CHECK_EQ_U(dedup_shard_of(dtest_fp(6, 1), 1), 0);
	struct tally_fp top = {.lo = 0, .hi = UINT64_MAX};
	CHECK_EQ_U(dedup_shard_of(top, 65535), 65534);
}

int main(void)
{
	test_verdicts();
	test_batch_order_and_abort();
	test_set_offset_hint();
	test_too_old();
	test_backward_shift_wrap();
	test_delete_during_migration();
	test_shard_of();
	test_reference();
	printf("test_dedup: ok\n");
	return 0;
}
