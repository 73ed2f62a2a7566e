/*
 * bench/bench_hist.c — log-linear latency histogram (see bench_hist.h). The index arithmetic
 * follows HdrHistogram with unit magnitude 0 and 2048 sub-buckets:
 *   bucket(v)     = 64 - clz(v | 2047) - 11            (0 for v < 2048)
 *   sub(v)        = v >> bucket(v)                     (1024..2047 above bucket 0)
 *   index(b, s)   = ((b + 1) << 10) + (s - 1024)
 *   value(b, s)   = s << b, and the bucket spans 2^b values.
 * Invariant: sum of counts[] == total; min <= max when total > 0.
 */
#include "bench_hist.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SUB_MASK ((uint64_t)BENCH_HIST_SUB_BUCKETS - 1)
#define HALF     (BENCH_HIST_SUB_BUCKETS / 2)

static uint32_t bucket_of(uint64_t v)
{
	return (uint32_t)(64 - __builtin_clzll(v | SUB_MASK) - (BENCH_HIST_HALF_MAGNITUDE + 1));
}

static uint32_t index_of(uint64_t v)
{
	uint32_t b = bucket_of(v);
	uint64_t s = v >> b;

	return ((b + 1) << BENCH_HIST_HALF_MAGNITUDE) + (uint32_t)(s - HALF);
}

/* Lowest value of counts index i, and the width of its bucket. */
static uint64_t value_of_index(uint32_t i, uint64_t *width)
{
	int32_t b = (int32_t)(i >> BENCH_HIST_HALF_MAGNITUDE) - 1;
	uint64_t s = (i & (HALF - 1)) + HALF;

	if (b < 0) {
		s -= HALF;
		b = 0;
	}
	*width = 1ull << b;
	return s << b;
}

int bench_hist_init(struct bench_hist *h, uint64_t highest)
{
	memset(h, 0, sizeof(*h));
	if (highest < BENCH_HIST_SUB_BUCKETS || highest > BENCH_HIST_HIGHEST_MAX)
		return -EINVAL;
	/* Smallest bucket count whose range covers `highest`. */
	uint32_t buckets = 1;
	uint64_t top = BENCH_HIST_SUB_BUCKETS; /* exclusive upper bound of bucket 0 */
	while (top <= highest) {
		top <<= 1;
		buckets++;
	}
	h->highest_trackable = highest;
	h->bucket_count = buckets;
	h->counts_len = (buckets + 1) * HALF;
	h->counts = calloc(h->counts_len, sizeof(*h->counts));
	if (!h->counts)
		return -ENOMEM;
	h->min = UINT64_MAX;
	return 0;
}

void bench_hist_free(struct bench_hist *h)
{
	free(h->counts);
	memset(h, 0, sizeof(*h));
}

void bench_hist_reset(struct bench_hist *h)
{
	memset(h->counts, 0, h->counts_len * sizeof(*h->counts));
	h->total = h->max = h->sum = h->overflow = 0;
	h->min = UINT64_MAX;
}

void bench_hist_record_n(struct bench_hist *h, uint64_t v, uint64_t n)
{
	if (n == 0)
		return;
	uint64_t vc = v;
	if (v > h->highest_trackable) {
		vc = h->highest_trackable;
		h->overflow += n;
	}
	h->counts[index_of(vc)] += n;
	h->total += n;
	if (v < h->min)
		h->min = v;
	if (v > h->max)
		h->max = v;
	unsigned __int128 add = (unsigned __int128)v * n;
	if (add > UINT64_MAX - h->sum)
		h->sum = UINT64_MAX;
	else
		h->sum += (uint64_t)add;
}

void bench_hist_record(struct bench_hist *h, uint64_t v)
{
	bench_hist_record_n(h, v, 1);
}

int bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src)
{
	if (dst->highest_trackable != src->highest_trackable || dst->counts_len != src->counts_len)
		return -EINVAL;
	for (uint32_t i = 0; i < src->counts_len; i++)
		dst->counts[i] += src->counts[i];
	dst->total += src->total;
	dst->overflow += src->overflow;
	if (src->min < dst->min)
		dst->min = src->min;
	if (src->max > dst->max)
		dst->max = src->max;
	dst->sum = src->sum > UINT64_MAX - dst->sum ? UINT64_MAX : dst->sum + src->sum;
	return 0;
}

uint64_t bench_hist_lowest_equivalent(const struct bench_hist *h, uint64_t v)
{
	uint32_t b = bucket_of(v);

	(void)h;
	return (v >> b) << b;
}

uint64_t bench_hist_highest_equivalent(const struct bench_hist *h, uint64_t v)
{
	uint32_t b = bucket_of(v);

	(void)h;
	return ((v >> b) << b) + (1ull << b) - 1;
}

uint64_t bench_hist_percentile(const struct bench_hist *h, uint32_t p_ppm)
{
	if (h->total == 0)
		return 0;
	if (p_ppm >= 1000000u)
		return h->max;
	unsigned __int128 num = (unsigned __int128)h->total * p_ppm + 999999u;
	uint64_t rank = (uint64_t)(num / 1000000u);
	if (rank == 0)
		rank = 1;
	uint64_t cum = 0;
	for (uint32_t i = 0; i < h->counts_len; i++) {
		cum += h->counts[i];
		if (cum >= rank) {
			uint64_t width, lo = value_of_index(i, &width);
			uint64_t hi = lo + width - 1;
			if (hi > h->max)
				hi = h->max;
			if (hi < h->min)
				hi = h->min;
			return hi;
		}
	}
	return h->max;
}

uint64_t bench_hist_mean(const struct bench_hist *h)
{
	return h->total ? h->sum / h->total : 0;
}
