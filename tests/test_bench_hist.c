/*
 * tests/test_bench_hist.c — the latency histogram: exact percentiles on known inputs, the
 * bucket boundaries, merge, and the edges (empty, 0, the trackable max and beyond).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench_hist.h"

static int failures;

#define CHECK_EQ(a, b)                                                                            \
	do {                                                                                      \
		uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                                  \
		if (a_ != b_) {                                                                   \
			fprintf(stderr, "%s:%d: %s = %" PRIu64 ", want %" PRIu64 "\n", __FILE__,  \
				__LINE__, #a, a_, b_);                                            \
			failures++;                                                               \
		}                                                                                 \
	} while (0)

static void test_empty(void)
{
	struct bench_hist h;

	CHECK_EQ(bench_hist_init(&h, BENCH_HIST_HIGHEST_US_DEF), 0);
	CHECK_EQ(bench_hist_percentile(&h, 500000), 0);
	CHECK_EQ(bench_hist_percentile(&h, 1000000), 0);
	CHECK_EQ(bench_hist_mean(&h), 0);
	CHECK_EQ(h.total, 0);
	bench_hist_free(&h);
}

static void test_bad_init(void)
{
	struct bench_hist h;

	CHECK_EQ(bench_hist_init(&h, 100), -EINVAL);
	CHECK_EQ(bench_hist_init(&h, UINT64_MAX), -EINVAL);
}

/* 1..1000 are below 2048: one bucket each, so every percentile is exact. */
static void test_exact_small(void)
{
	struct bench_hist h;

	CHECK_EQ(bench_hist_init(&h, 1000000), 0);
	for (uint64_t v = 1; v <= 1000; v++)
		bench_hist_record(&h, v);
	CHECK_EQ(h.total, 1000);
	CHECK_EQ(bench_hist_percentile(&h, 0), 1);
	CHECK_EQ(bench_hist_percentile(&h, 500000), 500);
	CHECK_EQ(bench_hist_percentile(&h, 900000), 900);
	CHECK_EQ(bench_hist_percentile(&h, 990000), 990);
	CHECK_EQ(bench_hist_percentile(&h, 999000), 999);
	CHECK_EQ(bench_hist_percentile(&h, 999999), 1000);
	CHECK_EQ(bench_hist_percentile(&h, 1000000), 1000);
	CHECK_EQ(bench_hist_mean(&h), 500); /* 500500 / 1000 */
	CHECK_EQ(h.min, 1);
	CHECK_EQ(h.max, 1000);
	bench_hist_free(&h);
}

/* Larger values land in buckets of width 2^k; the answer is the bucket's highest value. */
static void test_buckets(void)
{
	struct bench_hist h;

	CHECK_EQ(bench_hist_init(&h, BENCH_HIST_HIGHEST_US_DEF), 0);
	CHECK_EQ(bench_hist_lowest_equivalent(&h, 2047), 2047);
	CHECK_EQ(bench_hist_highest_equivalent(&h, 2047), 2047);
	CHECK_EQ(bench_hist_lowest_equivalent(&h, 2049), 2048);
	CHECK_EQ(bench_hist_highest_equivalent(&h, 2048), 2049);
	CHECK_EQ(bench_hist_lowest_equivalent(&h, 5001), 5000);
	CHECK_EQ(bench_hist_highest_equivalent(&h, 5001), 5003);
	CHECK_EQ(bench_hist_lowest_equivalent(&h, 1000000), 999936); /* width 512 */
	CHECK_EQ(bench_hist_highest_equivalent(&h, 1000000), 1000447);

	/* 1..10000: p50 -> rank 5000 -> bucket [5000, 5003]. */
	for (uint64_t v = 1; v <= 10000; v++)
		bench_hist_record(&h, v);
	CHECK_EQ(bench_hist_percentile(&h, 500000), 5003);
	CHECK_EQ(bench_hist_percentile(&h, 900000), 9007);   /* [9000, 9007], rank 9000 */
	CHECK_EQ(bench_hist_percentile(&h, 990000), 9903);   /* [9896, 9903], rank 9900 */
	CHECK_EQ(bench_hist_percentile(&h, 999000), 9991);   /* [9984, 9991], rank 9990 */
	CHECK_EQ(bench_hist_percentile(&h, 1000000), 10000);
	/* Highest equivalent is capped at the exact max (bucket [10000, 10007]). */
	CHECK_EQ(bench_hist_percentile(&h, 999999), 10000);
	bench_hist_free(&h);
}

/* 99 fast values and 1 stall: p99 is fast, p99.9 and max are the stall. */
static void test_tail(void)
{
	struct bench_hist h;

	CHECK_EQ(bench_hist_init(&h, BENCH_HIST_HIGHEST_US_DEF), 0);
	bench_hist_record_n(&h, 100, 99);
	bench_hist_record(&h, 1000000);
	CHECK_EQ(bench_hist_percentile(&h, 500000), 100);
	CHECK_EQ(bench_hist_percentile(&h, 990000), 100);
	CHECK_EQ(bench_hist_percentile(&h, 999000), 1000000);
	CHECK_EQ(bench_hist_percentile(&h, 1000000), 1000000);
	CHECK_EQ(bench_hist_mean(&h), (99 * 100 + 1000000) / 100);
	bench_hist_free(&h);
}

static void test_edges(void)
{
	struct bench_hist h;

	CHECK_EQ(bench_hist_init(&h, 1000000), 0);
	bench_hist_record(&h, 0);
	CHECK_EQ(bench_hist_percentile(&h, 500000), 0);
	CHECK_EQ(bench_hist_percentile(&h, 1000000), 0);
	CHECK_EQ(h.min, 0);
	bench_hist_record(&h, 1000000); /* exactly the trackable max */
	CHECK_EQ(h.overflow, 0);
	CHECK_EQ(bench_hist_percentile(&h, 1000000), 1000000);
	CHECK_EQ(bench_hist_percentile(&h, 500000), 0);
	CHECK_EQ(bench_hist_percentile(&h, 500001), 1000000);
	bench_hist_record(&h, UINT64_MAX); /* beyond: counted, max exact, sum saturates */
	CHECK_EQ(h.overflow, 1);
	CHECK_EQ(h.total, 3);
	CHECK_EQ(h.max, UINT64_MAX);
	CHECK_EQ(h.sum, UINT64_MAX);
	CHECK_EQ(bench_hist_percentile(&h, 1000000), UINT64_MAX);
	/* The clamped value sits in the top bucket, whose highest equivalent is reported. */
	CHECK_EQ(bench_hist_percentile(&h, 900000), bench_hist_highest_equivalent(&h, 1000000));
	bench_hist_reset(&h);
	CHECK_EQ(h.total, 0);
	CHECK_EQ(bench_hist_percentile(&h, 500000), 0);
	bench_hist_free(&h);
}

static void test_merge(void)
{
	struct bench_hist a, b, other;

	CHECK_EQ(bench_hist_init(&a, BENCH_HIST_HIGHEST_US_DEF), 0);
	CHECK_EQ(bench_hist_init(&b, BENCH_HIST_HIGHEST_US_DEF), 0);
	CHECK_EQ(bench_hist_init(&other, 1000000), 0);
	for (uint64_t v = 1; v <= 500; v++)
		bench_hist_record(&a, v);
	for (uint64_t v = 501; v <= 1000; v++)
		bench_hist_record(&b, v);
	CHECK_EQ(bench_hist_merge(&a, &b), 0);
	CHECK_EQ(a.total, 1000);
	CHECK_EQ(a.min, 1);
	CHECK_EQ(a.max, 1000);
	CHECK_EQ(bench_hist_percentile(&a, 500000), 500);
	CHECK_EQ(bench_hist_percentile(&a, 990000), 990);
	CHECK_EQ(bench_hist_mean(&a), 500);
	CHECK_EQ(bench_hist_merge(&a, &other), -EINVAL);
	/* Merging an empty histogram changes nothing. */
	bench_hist_reset(&b);
	CHECK_EQ(bench_hist_merge(&a, &b), 0);
	CHECK_EQ(a.total, 1000);
	CHECK_EQ(a.min, 1);
	bench_hist_free(&a);
	bench_hist_free(&b);
	bench_hist_free(&other);
}

/* Every value's reported percentile is within 1/1024 of it, over the whole µs..hour range. */
static void test_precision(void)
{
	struct bench_hist h;

	CHECK_EQ(bench_hist_init(&h, BENCH_HIST_HIGHEST_US_DEF), 0);
	for (uint64_t v = 1; v <= BENCH_HIST_HIGHEST_US_DEF; v = v * 3 + 7) {
		uint64_t lo = bench_hist_lowest_equivalent(&h, v);
		uint64_t hi = bench_hist_highest_equivalent(&h, v);
		if (lo > v || hi < v || (hi - lo) * 1024 > v) {
			fprintf(stderr, "value %" PRIu64 ": bucket [%" PRIu64 ", %" PRIu64 "]\n", v,
				lo, hi);
			failures++;
		}
		bench_hist_reset(&h);
		bench_hist_record(&h, v);
		CHECK_EQ(bench_hist_percentile(&h, 500000), v); /* capped at exact max */
	}
	bench_hist_free(&h);
}

int main(void)
{
	test_empty();
	test_bad_init();
	test_exact_small();
	test_buckets();
	test_tail();
	test_edges();
	test_merge();
	test_precision();
	if (failures) {
		fprintf(stderr, "test_bench_hist: %d failure(s)\n", failures);
		return 1;
	}
	printf("test_bench_hist: ok\n");
	return 0;
}
