/*
 * test_dedup_model.c — the whole shard against a reference model, over a long random run:
 * claims with repeats and conflicting resends, appends (offsets), failed writes (abort), a
 * lagging durable watermark, seals of durable segments, compactions, and crash/restarts that
 * keep only what is durable (runs from disk + the unsealed durable tail restored by the caller).
 * Every verdict and offset of every query is checked against the model: no false duplicate, no
 * missed duplicate, pending exactly while the original is not durable.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tally/dedup.h"
#include "test_dedup_util.h"

enum {
	POOL = 400000,      /* distinct keys */
	QUERIES = 1500000,  /* queries in all */
	BATCH = 128,
	SEG = 10000,        /* offsets per sealed segment */
	RESTART_EVERY = 2,  /* restart after every this many compactions */
};

static uint64_t ref_off[POOL]; /* 0 absent, UINT64_MAX claimed (no offset), else offset + 1 */
static uint32_t ref_dig[POOL];
static int32_t key_at[QUERIES + 1]; /* offset -> key, -1 if aborted */

int main(void)
{
	char dir[512], cmd[1100];
	const char *t = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/tally-test-dedup-model-%d", t ? t : "/tmp", (int)getpid());
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
	struct dedup_options o = {.expected_keys = 2048, .dir = dir, .compact_fan_in = 3,
				  .seal_journal = true};
	struct dedup_shard *d;
	CHECK(dedup_shard_open(&o, 1, &d) == 0);

	struct dtest_rng rng = {2024};
	uint64_t next_off = 0, durable = 0, sealed_next = 0, seals = 0, compactions = 0;
	uint64_t restarts = 0, counts[8] = {0}, three_step = 0, rewinds = 0;
	uint64_t journal_seals = 0; /* over all the restarts */
	struct dedup_sealing *job = NULL;
	int job_step = 0;
	struct dedup_query q[BATCH];
	struct dedup_answer a[BATCH];
	uint64_t idx[BATCH];
	for (uint64_t done = 0; done < QUERIES; done += BATCH) {
		for (int i = 0; i < BATCH; i++) {
			/* Skewed: half the queries hit the 10% most recent-ish keys (retries). */
			uint64_t r = dtest_next(&rng);
			idx[i] = (r & 1) ? (r >> 1) % POOL : (done / 4 + (r >> 1) % 5000) % POOL;
			q[i] = (struct dedup_query){.fp = dtest_fp(7, idx[i]),
						    .digest = dtest_digest(idx[i]) +
							      (dtest_next(&rng) % 8 == 0),
						    .event_time_us = 1000};
		}
		dedup_check_claim(d, q, BATCH, a);
		for (int i = 0; i < BATCH; i++) {
			uint64_t k = idx[i];
			counts[a[i].verdict & 7]++;
			if (ref_off[k] == 0) {
				CHECK_EQ_U(a[i].verdict, DEDUP_NEW);
				ref_off[k] = UINT64_MAX;
				ref_dig[k] = q[i].digest;
				continue;
			}
			bool same = q[i].digest == ref_dig[k];
			uint64_t off = ref_off[k] == UINT64_MAX ? DEDUP_OFFSET_NONE : ref_off[k] - 1;
			bool pending = off == DEDUP_OFFSET_NONE || off >= durable;
			CHECK_EQ_U(a[i].offset, off);
			if (pending)
				CHECK_EQ_U(a[i].verdict,
					   same ? DEDUP_PENDING_DUPLICATE : DEDUP_PENDING_CONFLICT);
			else
				CHECK_EQ_U(a[i].verdict, same ? DEDUP_DUPLICATE : DEDUP_CONFLICT);
		}
		/* Append the claims in order; 1% of the writes fail. */
		for (int i = 0; i < BATCH; i++) {
			if (a[i].verdict != DEDUP_NEW)
				continue;
			uint64_t k = idx[i];
			if (dtest_next(&rng) % 100 == 0) {
				dedup_abort(d, q[i].fp);
				ref_off[k] = 0;
				continue;
			}
			dedup_set_offset(d, q[i].fp, next_off);
			key_at[next_off] = (int32_t)k;
			ref_off[k] = next_off + 1;
			next_off++;
		}
		/* Now and then a block write fails after its keys got offsets, as in the broker:
		 * every key from the block's first offset on is aborted (all pending) and the WAL
		 * hands out those offsets again (the seal journal must not keep them). */
		if (dtest_next(&rng) % 800 == 0 && next_off > durable) {
			uint64_t f = next_off - 1 - dtest_next(&rng) % 30;
			f = f < durable ? durable : f;
			for (uint64_t off = f; off < next_off; off++) {
				uint64_t k = (uint64_t)key_at[off];
				dedup_abort(d, dtest_fp(7, k));
				ref_off[k] = 0;
				key_at[off] = -1;
			}
			next_off = f;
			rewinds++;
		}
		uint64_t w = next_off > 60 ? next_off - dtest_next(&rng) % 60 : 0;
		durable = w > durable ? w : durable;
		dedup_set_durable(d, durable);
		/* Every other seal in three steps, spread over the next batches: queries are
		 * answered in between (from the hot copies, then from either tier). */
		if (job && job_step == 1) {
			CHECK(dedup_seal_run(job) == 0);
			job_step = 2;
		} else if (job && job_step == 2) {
			CHECK(dedup_seal_finish(d, job) == 0);
			job = NULL;
			sealed_next += SEG;
			if (++seals % 3 == 0) {
				CHECK(dedup_compact(d) >= 1);
				compactions++;
			}
		}
		while (!job && durable - sealed_next >= SEG) {
			if (seals % 2 == 1) {
				CHECK(dedup_seal_begin(d, sealed_next, sealed_next + SEG, 1000, &job) == 0);
				struct dedup_sealing *other;
				CHECK(dedup_seal_begin(d, sealed_next, sealed_next + SEG, 1000, &other) ==
				      -EBUSY);
				CHECK(dedup_seal_generation(d, sealed_next, sealed_next + SEG, 1000) ==
				      -EBUSY);
				job_step = 1;
				three_step++;
				break;
			}
			CHECK(dedup_seal_generation(d, sealed_next, sealed_next + SEG, 1000) == 0);
			sealed_next += SEG;
			if (++seals % 3 == 0) {
				CHECK(dedup_compact(d) >= 1);
				compactions++;
			}
		}
		if (!job && compactions >= RESTART_EVERY * (restarts + 1)) {
			/* Crash: what was not durable is gone; the caller restores the durable tail. */
			struct dedup_stats js;
			dedup_stats(d, &js);
			journal_seals += js.journal_seals;
			dedup_shard_close(d);
			CHECK(dedup_shard_open(&o, 1, &d) == 0);
			CHECK_EQ_U(dedup_bad_runs(d, NULL, 0), 0);
			for (uint64_t k = 0; k < POOL; k++)
				if (ref_off[k] == UINT64_MAX || (ref_off[k] && ref_off[k] - 1 >= durable))
					ref_off[k] = 0;
			for (uint64_t off = sealed_next; off < durable; off++)
				CHECK(dedup_restore_key(d, dtest_fp(7, (uint64_t)key_at[off]),
							ref_dig[key_at[off]], off) == 0);
			dedup_set_durable(d, durable);
			next_off = durable; /* the WAL continues after its durable end */
			restarts++;
		}
	}
	struct dedup_stats st;
	dedup_stats(d, &st);
	printf("model: %" PRIu64 " new, %" PRIu64 " dup, %" PRIu64 " conflict, %" PRIu64
	       " pending; %" PRIu64 " seals, %" PRIu64 " compactions, %" PRIu64
	       " restarts; %" PRIu64 " hot + %" PRIu64 " cold keys in %" PRIu64 " generations\n",
	       counts[DEDUP_NEW], counts[DEDUP_DUPLICATE], counts[DEDUP_CONFLICT],
	       counts[DEDUP_PENDING_DUPLICATE] + counts[DEDUP_PENDING_CONFLICT], seals, compactions,
	       restarts, st.hot_keys, st.cold_keys, st.generations);
	journal_seals += st.journal_seals;
	printf("model: %" PRIu64 " of the seals in three steps, %" PRIu64 " from the journal; %" PRIu64
	       " failed writes rewound\n", three_step, journal_seals, rewinds);
	CHECK(seals >= 10 && compactions >= 3 && restarts >= 1 && three_step >= 5);
	CHECK(rewinds >= 5);
	/* Three-step seals take their keys from the journal, except the first after a restart
	 * or a rewind (it scans). */
	CHECK(journal_seals >= 5);
	if (job) {
		CHECK(dedup_seal_run(job) == 0);
		CHECK(dedup_seal_finish(d, job) == 0);
	}
	dedup_stats(d, &st);
	CHECK(counts[DEDUP_DUPLICATE] > 10000 && counts[DEDUP_CONFLICT] > 1000);
	/* Drain the eviction of the last three-step seal with lookups, then count. */
	for (int i = 0; i < 2000; i++) {
		struct dedup_query x = {.fp = dtest_fp(7, 0), .digest = ref_dig[0],
					.event_time_us = 1000};
		struct dedup_answer y;
		dedup_check_claim(d, &x, 1, &y);
		if (ref_off[0] == 0) { /* it was claimed just now: take it back */
			dedup_abort(d, x.fp);
		}
	}
	dedup_stats(d, &st);
	uint64_t present = 0;
	for (uint64_t k = 0; k < POOL; k++)
		present += ref_off[k] != 0;
	CHECK_EQ_U(st.hot_keys + st.cold_keys, present);
	dedup_shard_close(d);
	CHECK(system(cmd) == 0);
	printf("test_dedup_model: ok\n");
	return 0;
}
