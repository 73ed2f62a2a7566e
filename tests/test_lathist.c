/*
 * test_lathist — the broker's latency histogram (src/lathist.h): every value lands in the
 * bucket whose range holds it, a bucket is at most 12.5 % wider than its values, and a
 * percentile is the true one rounded up to its bucket's edge (checked against a sorted copy).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/lathist.h"
#include "check.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

int main(void)
{
	/* Bucket edges: contiguous, increasing, each value inside its own bucket. */
	unsigned last = 0;
	for (uint64_t v = 0; v < (1u << 20); v++) {
		unsigned b = lathist_bucket(v);
		if (b >= LATHIST_BUCKETS || lathist_bucket_top(b) < v ||
		    (b > 0 && lathist_bucket_top(b - 1) >= v) || b < last || b > last + 1) {
			CHECK(!"bucket edges");
			fprintf(stderr, "  v %llu bucket %u\n", (unsigned long long)v, b);
			break;
		}
		/* Width: the bucket's values are within 12.5 % of each other. */
		if (b >= 8 && (lathist_bucket_top(b) - lathist_bucket_top(b - 1)) * 8 >
				      lathist_bucket_top(b - 1) + 1) {
			CHECK(!"bucket width");
			break;
		}
		last = b;
	}
	CHECK(lathist_bucket(UINT64_MAX) == LATHIST_BUCKETS - 1);
	CHECK(lathist_bucket((1ull << 40) - 1) == LATHIST_BUCKETS - 1);

	/* Percentiles against the sorted values, on a few shapes. */
	enum { N = 20000 };
	static uint64_t vals[N];
	for (int shape = 0; shape < 4; shape++) {
		struct lathist h;
		memset(&h, 0, sizeof h);
		for (int i = 0; i < N; i++) {
			uint64_t r = next();
			vals[i] = shape == 0   ? r % 5
				  : shape == 1 ? r % 3000
				  : shape == 2 ? 1000 + r % 100 + (i % 100 == 0 ? 50000 : 0)
					       : (r % 1000000) >> (r % 20);
			lathist_add(&h, (int64_t)vals[i]);
		}
		qsort(vals, N, sizeof vals[0], cmp_u64);
		CHECK(h.count == N);
		CHECK(h.max == vals[N - 1]);
		static const unsigned pm[] = {1, 500, 900, 990, 999, 1000};
		for (size_t k = 0; k < sizeof pm / sizeof pm[0]; k++) {
			uint64_t want = vals[(N * (uint64_t)pm[k] + 999) / 1000 - 1];
			uint64_t got = lathist_permille(&h, pm[k]);
			/* The same bucket as the true value, never below it. */
			if (got < want || lathist_bucket(got) != lathist_bucket(want)) {
				CHECK(!"percentile");
				fprintf(stderr, "  shape %d per mille %u: got %llu want %llu\n", shape,
					pm[k], (unsigned long long)got, (unsigned long long)want);
			}
		}
		/* Merging two halves gives the same answers as one histogram. */
		struct lathist a, b;
		memset(&a, 0, sizeof a);
		memset(&b, 0, sizeof b);
		for (int i = 0; i < N; i++)
			lathist_add(i % 2 ? &a : &b, (int64_t)vals[i]);
		lathist_merge(&a, &b);
		CHECK(a.count == h.count && a.max == h.max && !memcmp(a.b, h.b, sizeof a.b));
	}
	struct lathist e;
	memset(&e, 0, sizeof e);
	CHECK(lathist_permille(&e, 990) == 0);
	lathist_add(&e, -5); /* a clock step backwards counts as 0 */
	CHECK(e.count == 1 && e.max == 0 && lathist_permille(&e, 500) == 0);
	/* Ranks round up: of 1, 2, 3 the median is 2 and the p99 is 3 (nearest-rank). */
	struct lathist t;
	memset(&t, 0, sizeof t);
	for (int v = 1; v <= 3; v++)
		lathist_add(&t, v);
	CHECK(lathist_permille(&t, 500) == 2);
	CHECK(lathist_permille(&t, 990) == 3);
	CHECK(lathist_permille(&t, 1) == 1);

	printf("test_lathist: %s, %d failure(s)\n", failures ? "FAILED" : "ok", failures);
	return failures ? 1 : 0;
}
