/*
 * tests/test_bench_gen.c — the tally-bench workload generator: determinism (same seed -> same
 * bytes; other seed or stream -> other events), the requested duplicate / conflict / late
 * rates over 200k events, duplicates that are exact resends and conflicts that are not,
 * bodies that decode, payload size on target, Zipf skew, and the option parsers.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_gen.h"
#include "tally/event.h"

static int failures;

#define CHECK(cond)                                                                               \
	do {                                                                                      \
		if (!(cond)) {                                                                    \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);  \
			failures++;                                                               \
		}                                                                                 \
	} while (0)

#define CHECK_EQ(a, b)                                                                            \
	do {                                                                                      \
		int64_t a_ = (int64_t)(a), b_ = (int64_t)(b);                                     \
		if (a_ != b_) {                                                                   \
			fprintf(stderr, "%s:%d: %s = %" PRId64 ", want %" PRId64 "\n", __FILE__,  \
				__LINE__, #a, a_, b_);                                            \
			failures++;                                                               \
		}                                                                                 \
	} while (0)

#define BASE_TIME_US 1763700000000000ll /* 2025-11-21 */

static struct bench_gen_config base_cfg(uint64_t seed)
{
	struct bench_gen_config c;

	memset(&c, 0, sizeof(c));
	c.seed = seed;
	c.customers = 5000;
	c.payload_bytes = BENCH_GEN_PAYLOAD_BYTES_DEF;
	c.dup_ppm = 100000;     /* 10 % */
	c.conflict_ppm = 20000; /* 2 % */
	c.late_ppm = 50000;     /* 5 % of fresh */
	c.skew_us = 3600ll * 1000000;
	c.base_time_us = BASE_TIME_US;
	c.time_step_us = 1;
	return c;
}

static long encode(const struct bench_gen_event *e, uint8_t *buf, size_t cap)
{
	long n = event_encode(&e->in, buf, cap);

	if (n <= 0) {
		fprintf(stderr, "event_encode failed: %ld (seq %" PRIu64 ")\n", n, e->seq);
		failures++;
	}
	return n;
}

/* FNV-1a over every body of a stream: a cheap fingerprint of "byte for byte". */
static uint64_t stream_hash(const struct bench_gen_config *c, uint64_t n)
{
	static struct bench_gen g;
	static struct bench_gen_event e;
	uint8_t buf[TALLY_EVENT_BYTES_MAX];
	uint64_t h = 0xcbf29ce484222325ull;

	CHECK_EQ(bench_gen_init(&g, c), 0);
	for (uint64_t i = 0; i < n; i++) {
		bench_gen_next(&g, &e);
		long len = encode(&e, buf, sizeof(buf));
		for (long k = 0; k < len; k++)
			h = (h ^ buf[k]) * 0x100000001b3ull;
		h = (h ^ e.kind ^ (e.fresh_index << 8)) * 0x100000001b3ull;
	}
	return h;
}

static void test_determinism(void)
{
	struct bench_gen_config c = base_cfg(42);
	static struct bench_gen g1, g2, g3;
	static struct bench_gen_event e1, e2, e3;
	uint8_t b1[TALLY_EVENT_BYTES_MAX], b2[TALLY_EVENT_BYTES_MAX], b3[TALLY_EVENT_BYTES_MAX];
	struct bench_gen_config c3 = base_cfg(43);
	int differ = 0;

	CHECK_EQ(bench_gen_init(&g1, &c), 0);
	CHECK_EQ(bench_gen_init(&g2, &c), 0);
	CHECK_EQ(bench_gen_init(&g3, &c3), 0);
	for (int i = 0; i < 20000; i++) {
		bench_gen_next(&g1, &e1);
		bench_gen_next(&g2, &e2);
		bench_gen_next(&g3, &e3);
		long n1 = encode(&e1, b1, sizeof(b1));
		long n2 = encode(&e2, b2, sizeof(b2));
		long n3 = encode(&e3, b3, sizeof(b3));
		if (n1 != n2 || memcmp(b1, b2, (size_t)n1) || e1.kind != e2.kind ||
		    e1.fresh_index != e2.fresh_index) {
			fprintf(stderr, "same seed differs at event %d\n", i);
			failures++;
			break;
		}
		if (n1 != n3 || memcmp(b1, b3, (size_t)n1))
			differ++;
	}
	CHECK(differ >= 19900); /* another seed: other keys, so (practically) every body differs */
	/* The whole 200k stream, twice. */
	CHECK(stream_hash(&c, 200000) == stream_hash(&c, 200000));
	CHECK(stream_hash(&c, 1000) != stream_hash(&c3, 1000));
	struct bench_gen_config cs = c;
	cs.stream = 1;
	CHECK(stream_hash(&c, 1000) != stream_hash(&cs, 1000));
}

/* Keys of different streams never collide, and keys within a stream are distinct. */
static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_keys(void)
{
	struct bench_gen_config c0 = base_cfg(7), c1 = base_cfg(7);
	static struct bench_gen g0, g1;
	enum { N = 20000 };
	static char keys[2 * N][BENCH_GEN_KEY_BYTES + 1];
	static char *ptrs[2 * N];

	c1.stream = 1;
	CHECK_EQ(bench_gen_init(&g0, &c0), 0);
	CHECK_EQ(bench_gen_init(&g1, &c1), 0);
	for (int i = 0; i < N; i++) {
		CHECK_EQ(bench_gen_key(&g0, (uint64_t)i, keys[i]), 24); /* "ev-0000-" + 16 hex */
		bench_gen_key(&g1, (uint64_t)i, keys[N + i]);
		ptrs[i] = keys[i];
		ptrs[N + i] = keys[N + i];
	}
	CHECK(!strncmp(keys[0], "ev-0000-", 8));
	CHECK(!strncmp(keys[N], "ev-0001-", 8));
	qsort(ptrs, 2 * N, sizeof(ptrs[0]), cmp_str);
	for (int i = 1; i < 2 * N; i++)
		if (!strcmp(ptrs[i - 1], ptrs[i])) {
			fprintf(stderr, "duplicate key %s\n", ptrs[i]);
			failures++;
			break;
		}
}

/* Rates within 0.5 percentage point over 200k; dups exact, conflicts not; all bodies valid. */
static void test_rates_and_semantics(void)
{
	struct bench_gen_config c = base_cfg(1234);
	static struct bench_gen g;
	static struct bench_gen_event e, orig;
	uint8_t b[TALLY_EVENT_BYTES_MAX], bo[TALLY_EVENT_BYTES_MAX];
	const uint64_t n = 200000;
	uint64_t kinds[3] = {0}, late = 0, fresh = 0, exact150 = 0, bytes = 0, bad = 0;
	uint64_t time_bad = 0, ref_bad = 0, sem_bad = 0, types[8] = {0};

	c.ref_lag = 100;
	CHECK_EQ(bench_gen_init(&g, &c), 0);
	for (uint64_t i = 0; i < n; i++) {
		uint64_t fresh_before = g.fresh_count;
		bench_gen_next(&g, &e);
		long len = encode(&e, b, sizeof(b));
		struct tally_event ev;
		if (len <= 0 || event_decode(b, (size_t)len, &ev) != TALLY_REJECT_NONE) {
			bad++;
			continue;
		}
		kinds[e.kind]++;
		bytes += (uint64_t)len;
		exact150 += len == 150;
		CHECK(e.seq == i);
		if (e.kind == BENCH_GEN_FRESH) {
			fresh++;
			types[e.type]++;
			if (e.fresh_index != fresh_before)
				ref_bad++;
			int64_t t0 = BASE_TIME_US + (int64_t)e.fresh_index;
			if (e.late) {
				late++;
				if (ev.event_time_us >= t0 || ev.event_time_us < t0 - c.skew_us)
					time_bad++;
			} else if (ev.event_time_us != t0) {
				time_bad++;
			}
			continue;
		}
		/* dup/conflict: refers to an earlier fresh, ref_lag back when possible */
		if (e.fresh_index >= fresh_before ||
		    (fresh_before > c.ref_lag && e.fresh_index + c.ref_lag >= fresh_before) ||
		    e.fresh_index + c.ref_lag + BENCH_GEN_DUP_WINDOW_DEF < fresh_before)
			ref_bad++;
		bench_gen_fresh(&g, e.fresh_index, 0, &orig);
		long lo = encode(&orig, bo, sizeof(bo));
		struct tally_event evo;
		if (lo <= 0 || event_decode(bo, (size_t)lo, &evo) != TALLY_REJECT_NONE) {
			bad++;
			continue;
		}
		bool same_bytes = lo == len && !memcmp(b, bo, (size_t)len);
		bool same_key = ev.key.len == evo.key.len && !memcmp(ev.key.ptr, evo.key.ptr, ev.key.len);
		uint32_t d = event_content_digest(&ev), dorig = event_content_digest(&evo);
		if (e.kind == BENCH_GEN_DUP && (!same_bytes || d != dorig || e.variant != 0))
			sem_bad++;
		if (e.kind == BENCH_GEN_CONFLICT && (same_bytes || !same_key || d == dorig ||
						     e.variant != 1))
			sem_bad++;
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(time_bad, 0);
	CHECK_EQ(ref_bad, 0);
	CHECK_EQ(sem_bad, 0);
	CHECK_EQ(kinds[0] + kinds[1] + kinds[2], n);
	CHECK_EQ(fresh, g.fresh_count);
	CHECK_EQ(late, g.late_count);
	/* |measured - requested| <= 0.5 percentage point (5000 ppm) */
	int64_t dup_ppm = (int64_t)(kinds[1] * 1000000 / n);
	int64_t con_ppm = (int64_t)(kinds[2] * 1000000 / n);
	int64_t late_ppm = (int64_t)(late * 1000000 / fresh);
	printf("dup %" PRId64 " ppm, conflict %" PRId64 " ppm, late %" PRId64 " ppm of fresh, "
	       "mean body %" PRIu64 " bytes, %" PRIu64 "/%" PRIu64 " exactly 150\n",
	       dup_ppm, con_ppm, late_ppm, bytes / n, exact150, n);
	CHECK(llabs(dup_ppm - 100000) <= 5000);
	CHECK(llabs(con_ppm - 20000) <= 5000);
	CHECK(llabs(late_ppm - 50000) <= 5000);
	/* Payload on target: every natural body is under 150, so all are padded exactly. */
	CHECK_EQ(exact150, n);
	/* The mix: api.call 55 %, ai.tokens 25 %, sms 10 %, image 5 %, storage 5 % (+-1 pp). */
	CHECK(llabs((int64_t)(types[0] * 1000 / fresh) - 550) <= 10);
	CHECK(llabs((int64_t)(types[1] * 1000 / fresh) - 250) <= 10);
	CHECK(llabs((int64_t)(types[2] * 1000 / fresh) - 100) <= 10);
	CHECK(llabs((int64_t)(types[3] * 1000 / fresh) - 50) <= 10);
	CHECK(llabs((int64_t)(types[4] * 1000 / fresh) - 50) <= 10);
}

static void test_payload_sizes(void)
{
	static const uint32_t targets[] = {0, 150, 400, 1000, 4096};
	static struct bench_gen g;
	static struct bench_gen_event e;
	uint8_t b[TALLY_EVENT_BYTES_MAX];

	for (size_t t = 0; t < sizeof(targets) / sizeof(targets[0]); t++) {
		struct bench_gen_config c = base_cfg(99);
		c.payload_bytes = targets[t];
		CHECK_EQ(bench_gen_init(&g, &c), 0);
		uint64_t exact = 0, total = 0, maxlen = 0;
		for (int i = 0; i < 5000; i++) {
			bench_gen_next(&g, &e);
			long len = encode(&e, b, sizeof(b));
			struct tally_event ev;
			CHECK(len > 0 && event_decode(b, (size_t)len, &ev) == TALLY_REJECT_NONE);
			exact += (uint64_t)len == targets[t];
			total += (uint64_t)len;
			if ((uint64_t)len > maxlen)
				maxlen = (uint64_t)len;
		}
		if (targets[t] == 0) {
			CHECK(maxlen < 150); /* natural size, no padding */
			CHECK(total / 5000 > 80);
		} else {
			if (exact < 4990)
				fprintf(stderr, "payload %u: only %" PRIu64 " of 5000 exact\n",
					targets[t], exact);
			CHECK(exact >= 4990);
		}
	}
}

static void test_zipf(void)
{
	struct bench_gen_zipf z;
	uint64_t hist[1000] = {0}, s = 12345;

	CHECK_EQ(bench_gen_zipf_build(&z, 1000, 1100), 0);
	CHECK_EQ(bench_gen_zipf_pick(&z, 0), 0);
	CHECK_EQ(bench_gen_zipf_pick(&z, UINT64_MAX), 999);
	for (int i = 0; i < 100000; i++) {
		s += 0x9E3779B97F4A7C15ull;
		hist[bench_gen_zipf_pick(&z, bench_gen_mix64(s))]++;
	}
	/* s = 1.1 over 1000: P(rank 1) ~ 0.19, P(rank 2) ~ 0.089, P(rank 1000) ~ 9e-5. */
	CHECK(hist[0] > 17000 && hist[0] < 21000);
	CHECK(hist[0] > 2 * hist[1] - 2000);
	CHECK(hist[999] < 40);
	/* A generator with Zipf customers: the top customer dominates. */
	struct bench_gen_config c = base_cfg(5);
	static struct bench_gen g;
	static struct bench_gen_event e;
	c.customers = 1000;
	c.zipf = &z;
	CHECK_EQ(bench_gen_init(&g, &c), 0);
	static char names[20000][24];
	static char *ptrs[20000];
	for (int i = 0; i < 20000; i++) {
		bench_gen_next(&g, &e);
		memcpy(names[i], e.customer, sizeof(names[i]));
		ptrs[i] = names[i];
	}
	qsort(ptrs, 20000, sizeof(ptrs[0]), cmp_str);
	int run = 1, top_count = 0, distinct = 1;
	for (int i = 1; i < 20000; i++) {
		if (!strcmp(ptrs[i - 1], ptrs[i])) {
			run++;
		} else {
			run = 1;
			distinct++;
		}
		if (run > top_count)
			top_count = run;
	}
	/* Dups repeat customers too, so the bounds are loose: rank 1 has ~19 % of events. */
	CHECK(top_count > 3000 && top_count < 5000);
	CHECK(distinct > 300 && distinct <= 1000);
	c.zipf = NULL;
	c.customers = 999;
	struct bench_gen_config bad = c;
	bad.zipf = &z; /* table of 1000 for 999 customers */
	CHECK_EQ(bench_gen_init(&g, &bad), -EINVAL);
	bench_gen_zipf_free(&z);
	CHECK_EQ(bench_gen_zipf_build(&z, 0, 1000), -EINVAL);
	CHECK_EQ(bench_gen_zipf_build(&z, 10, 0), -EINVAL);
}

static void test_config_checks(void)
{
	static struct bench_gen g;
	struct bench_gen_config c = base_cfg(1);

	c.customers = 0;
	CHECK_EQ(bench_gen_init(&g, &c), -EINVAL);
	c = base_cfg(1);
	c.dup_ppm = 900000;
	c.conflict_ppm = 200000;
	CHECK_EQ(bench_gen_init(&g, &c), -EINVAL);
	c = base_cfg(1);
	c.skew_us = 0;
	CHECK_EQ(bench_gen_init(&g, &c), -EINVAL);
	c = base_cfg(1);
	c.payload_bytes = BENCH_GEN_PAYLOAD_BYTES_MAX + 1;
	CHECK_EQ(bench_gen_init(&g, &c), -EINVAL);
	c = base_cfg(1);
	c.stream = 70000;
	CHECK_EQ(bench_gen_init(&g, &c), -EINVAL);
	c = base_cfg(1);
	memcpy(c.key_prefix, "a b", 4);
	CHECK_EQ(bench_gen_init(&g, &c), -EINVAL);
	memcpy(c.key_prefix, "run_7", 6);
	CHECK_EQ(bench_gen_init(&g, &c), 0);
	char key[BENCH_GEN_KEY_BYTES + 1];
	CHECK_EQ(bench_gen_key(&g, 0, key), 27);
	CHECK(!strncmp(key, "run_7-0000-", 11));
	/* dup rate 100 %: everything after the first event is a dup of the first ones */
	c = base_cfg(1);
	c.dup_ppm = 1000000;
	c.conflict_ppm = 0;
	static struct bench_gen_event e;
	CHECK_EQ(bench_gen_init(&g, &c), 0);
	for (int i = 0; i < 100; i++)
		bench_gen_next(&g, &e);
	CHECK_EQ(g.fresh_count, 1);
	CHECK_EQ(g.count_by_kind[BENCH_GEN_DUP], 99);
}

static void test_parse(void)
{
	uint32_t v = 1;

	CHECK_EQ(bench_gen_parse_rate("0.1", &v), 0);
	CHECK_EQ(v, 100000);
	CHECK_EQ(bench_gen_parse_rate("10%", &v), 0);
	CHECK_EQ(v, 100000);
	CHECK_EQ(bench_gen_parse_rate("2.5%", &v), 0);
	CHECK_EQ(v, 25000);
	CHECK_EQ(bench_gen_parse_rate("0", &v), 0);
	CHECK_EQ(v, 0);
	CHECK_EQ(bench_gen_parse_rate("1", &v), 0);
	CHECK_EQ(v, 1000000);
	CHECK_EQ(bench_gen_parse_rate("1500ppm", &v), 0);
	CHECK_EQ(v, 1500);
	CHECK_EQ(bench_gen_parse_rate("100pm", &v), 0);
	CHECK_EQ(v, 100000);
	CHECK_EQ(bench_gen_parse_rate("0.0000001", &v), -EINVAL); /* finer than 1 ppm */
	CHECK_EQ(bench_gen_parse_rate("1.5", &v), -EINVAL);
	CHECK_EQ(bench_gen_parse_rate("", &v), -EINVAL);
	CHECK_EQ(bench_gen_parse_rate("abc", &v), -EINVAL);
	CHECK_EQ(bench_gen_parse_rate("10%x", &v), -EINVAL);
	CHECK_EQ(bench_gen_parse_rate("-0.1", &v), -EINVAL);
	CHECK_EQ(bench_gen_parse_milli("1.1", &v), 0);
	CHECK_EQ(v, 1100);
	CHECK_EQ(bench_gen_parse_milli("0.99", &v), 0);
	CHECK_EQ(v, 990);
	CHECK_EQ(bench_gen_parse_milli("1", &v), 0);
	CHECK_EQ(v, 1000);
	CHECK_EQ(bench_gen_parse_milli("1100", &v), 0);
	CHECK_EQ(v, 1100);
	CHECK_EQ(bench_gen_parse_milli("800pm", &v), 0);
	CHECK_EQ(v, 800);
	CHECK_EQ(bench_gen_parse_milli("1.0001", &v), -EINVAL);
	CHECK_EQ(bench_gen_parse_milli("x", &v), -EINVAL);
}

int main(void)
{
	test_parse();
	test_config_checks();
	test_keys();
	test_determinism();
	test_rates_and_semantics();
	test_payload_sizes();
	test_zipf();
	if (failures) {
		fprintf(stderr, "test_bench_gen: %d failure(s)\n", failures);
		return 1;
	}
	printf("test_bench_gen: ok\n");
	return 0;
}
