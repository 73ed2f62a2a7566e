/*
 * test_dedup_wal.c — restart of the dedup state from the WAL (dedup_recover_from_wal): a broker-
 * like loop claims, appends, syncs and seals; then a "crash" leaves one sealed segment without
 * its run, one run deleted and one corrupted. After reopening the WAL and the dedup shard and
 * recovering, every stored event answers DUPLICATE with its WAL offset (the state before the
 * crash), fresh keys answer NEW, and a second restart rebuilds nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dedup_internal.h"
#include "tally/dedup.h"
#include "tally/event.h"
#include "tally/wal.h"
#include "test_dedup_util.h"

#define N          40000
#define BASE_US    1700000000000000LL
#define SEALED_MAX 256

static const uint8_t TENANT[] = "acme";

struct sealed {
	uint64_t base[SEALED_MAX], next[SEALED_MAX];
	size_t n;
};

static void on_sealed(void *ctx, uint16_t shard, uint64_t base, uint64_t next)
{
	struct sealed *s = ctx;
	CHECK(s->n < SEALED_MAX);
	s->base[s->n] = base;
	s->next[s->n] = next;
	s->n++;
}

/* Event i: key "key-<i>", fixed customer and name, event time BASE_US + i. */
static size_t make_event(uint64_t i, uint8_t *buf, struct tally_fp *fp, uint32_t *digest)
{
	char key[32];
	int kl = snprintf(key, sizeof(key), "key-%016" PRIx64, i);
	struct tally_event_in in = {.key = {(const uint8_t *)key, (uint32_t)kl},
				    .customer = {(const uint8_t *)"cust-1", 6},
				    .name = {(const uint8_t *)"api.call", 8},
				    .event_time_us = BASE_US + (int64_t)i};
	long n = event_encode(&in, buf, TALLY_EVENT_BYTES_MAX);
	CHECK(n > 0);
	struct tally_event ev;
	CHECK(event_decode(buf, (size_t)n, &ev) == TALLY_REJECT_NONE);
	struct tally_view tenant = {TENANT, 4};
	*fp = event_fingerprint(tenant, ev.key);
	*digest = event_content_digest(&ev);
	return (size_t)n;
}

static uint64_t g_offset[N];

static void expect_state(struct dedup_shard *d)
{
	static uint8_t buf[TALLY_EVENT_BYTES_MAX];
	for (uint64_t i = 0; i < N; i++) {
		struct dedup_query q = {.event_time_us = BASE_US + (int64_t)i};
		make_event(i, buf, &q.fp, &q.digest);
		struct dedup_answer a;
		dedup_check_claim(d, &q, 1, &a);
		CHECK_EQ_U(a.verdict, DEDUP_DUPLICATE);
		CHECK_EQ_U(a.offset, g_offset[i]);
	}
	for (uint64_t i = N; i < N + 500; i++) {
		struct dedup_query q = {.event_time_us = BASE_US + (int64_t)i};
		make_event(i, buf, &q.fp, &q.digest);
		struct dedup_answer a;
		dedup_check_claim(d, &q, 1, &a);
		CHECK_EQ_U(a.verdict, DEDUP_NEW);
		dedup_abort(d, q.fp);
	}
}

int main(void)
{
	char root[512], data[600], keysdir[700], cmd[2048];
	const char *t = getenv("TMPDIR");
	snprintf(root, sizeof(root), "%s/tally-test-dedup-wal-%d", t ? t : "/tmp", (int)getpid());
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", root, root);
	CHECK(system(cmd) == 0);
	snprintf(data, sizeof(data), "%s/data", root);
	snprintf(keysdir, sizeof(keysdir), "%s/wal", data); /* runs beside the segments */

	struct sealed sealed = {0};
	struct wal_options wo = {.shard_count = 1, .block_bytes_max = 16 << 10,
				 .segment_bytes_max = 64 << 10, .on_segment_sealed = on_sealed,
				 .ctx = &sealed};
	struct wal *w;
	CHECK(wal_open(data, &wo, &w) == 0);
	struct wal_shard *ws = wal_shard(w, 0);
	struct dedup_options dopt = {.expected_keys = 4096, .dir = keysdir};
	struct dedup_shard *d;
	CHECK(dedup_shard_open(&dopt, 0, &d) == 0);

	static uint8_t buf[TALLY_EVENT_BYTES_MAX];
	size_t dedup_sealed = 0, dups = 0;
	for (uint64_t i = 0; i < N; i++) {
		struct dedup_query q = {.event_time_us = BASE_US + (int64_t)i};
		size_t len = make_event(i, buf, &q.fp, &q.digest);
		struct dedup_answer a;
		dedup_check_claim(d, &q, 1, &a);
		CHECK_EQ_U(a.verdict, DEDUP_NEW);
		struct tally_view body = {buf, (uint32_t)len}, tenant = {TENANT, 4};
		CHECK(wal_append(ws, tenant, &body, BASE_US + (int64_t)i, &g_offset[i]) == 0);
		dedup_set_offset(d, q.fp, g_offset[i]);
		if (i % 7 == 3) { /* a retry of an earlier event */
			uint64_t k = i - i % 50;
			struct dedup_query r = {.event_time_us = BASE_US + (int64_t)k};
			make_event(k, buf, &r.fp, &r.digest);
			dedup_check_claim(d, &r, 1, &a);
			CHECK(a.verdict == DEDUP_DUPLICATE || a.verdict == DEDUP_PENDING_DUPLICATE);
			CHECK_EQ_U(a.offset, g_offset[k]);
			dups++;
		}
		if (i % 100 == 99) {
			uint64_t durable;
			CHECK(wal_flush(ws) == 0);
			CHECK(wal_sync(ws, &durable) == 0);
			dedup_set_durable(d, durable);
			/* Seal, in the dedup, the segments the WAL sealed, all but the newest one
			 * (the "crash" below happens before the broker got to it). */
			while (dedup_sealed + 1 < sealed.n) {
				CHECK(dedup_seal_generation(d, sealed.base[dedup_sealed],
							    sealed.next[dedup_sealed],
							    BASE_US + (int64_t)i) == 0);
				dedup_sealed++;
			}
		}
	}
	CHECK(sealed.n >= 5);
	struct dedup_stats st;
	dedup_stats(d, &st);
	printf("before crash: %zu WAL segments sealed, %" PRIu64 " generations, %" PRIu64
	       " hot keys, %zu retries answered\n",
	       sealed.n, st.generations, st.hot_keys, dups);
	expect_state(d);
	dedup_shard_close(d);
	CHECK(wal_close(w) == 0);

	/* The crash damage: run 0 deleted, run 1 corrupted (the newest sealed has no run). */
	char p[1024];
	CHECK(dedup_run_path(p, sizeof(p), keysdir, 0, sealed.base[0]) == 0);
	CHECK(unlink(p) == 0);
	CHECK(dedup_run_path(p, sizeof(p), keysdir, 0, sealed.base[1]) == 0);
	int fd = open(p, O_WRONLY);
	CHECK(fd >= 0);
	CHECK(pwrite(fd, "X", 1, 100) == 1);
	close(fd);

	for (int round = 0; round < 2; round++) {
		wo.shard_count = 0;
		wo.on_segment_sealed = NULL;
		CHECK(wal_open(data, &wo, &w) == 0);
		CHECK(dedup_shard_open(&dopt, 0, &d) == 0);
		CHECK_EQ_U(dedup_bad_runs(d, NULL, 0), round == 0 ? 1 : 0);
		struct dedup_recover_stats rs;
		uint64_t durable = wal_durable_next(wal_shard(w, 0));
		CHECK_EQ_U(durable, N);
		CHECK(dedup_recover_from_wal(d, data, 0, durable, BASE_US + N + 1000000, &rs) == 0);
		printf("restart %d: %" PRIu64 " segments, %" PRIu64 " runs present, %" PRIu64
		       " rebuilt, %" PRIu64 " tail keys\n",
		       round, rs.segments, rs.runs_present, rs.runs_rebuilt, rs.tail_keys);
		CHECK_EQ_U(rs.runs_rebuilt, round == 0 ? 3 : 0);
		CHECK_EQ_U(rs.runs_present + rs.runs_rebuilt, sealed.n);
		CHECK_EQ_U(dedup_bad_runs(d, NULL, 0), 0);
		CHECK(rs.tail_keys > 0);
		expect_state(d);
		dedup_shard_close(d);
		CHECK(wal_close(w) == 0);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	CHECK(system(cmd) == 0);
	printf("test_dedup_wal: ok\n");
	return 0;
}
