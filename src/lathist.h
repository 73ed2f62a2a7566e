/*
 * lathist.h — a fixed-size latency histogram for the broker's own measurements (the batch
 * stages logged at stop; docs/architecture.md, "Lifecycle", "Shutdown log").
 *
 * Invariants:
 *  - Log-linear buckets: values below 8 µs have a bucket each; above, every power of two is
 *    split into 8 buckets, so a reported percentile is the upper edge of a bucket at most
 *    12.5 % wider than the value. Values are clamped to 2^40 µs (12 days).
 *  - No allocation, no locks: one histogram has one writer; merging happens after the
 *    writers stopped.
 */
#ifndef TALLY_LATHIST_H
#define TALLY_LATHIST_H

#include <stdint.h>

#define LATHIST_BUCKETS 304 /* 8 + (39 - 3 + 1) * 8 */

struct lathist {
	uint64_t count, max;
	uint32_t b[LATHIST_BUCKETS];
};

static inline unsigned lathist_bucket(uint64_t v)
{
	if (v < 8)
		return (unsigned)v;
	if (v >= (1ull << 40))
		v = (1ull << 40) - 1;
	unsigned m = 63u - (unsigned)__builtin_clzll(v); /* 3 .. 39 */
	return 8 + (m - 3) * 8 + (unsigned)((v >> (m - 3)) & 7);
}

/* The largest value that falls in bucket i. */
static inline uint64_t lathist_bucket_top(unsigned i)
{
	if (i < 8)
		return i;
	unsigned m = (i - 8) / 8 + 3, sub = (i - 8) % 8;
	return ((8ull + sub + 1) << (m - 3)) - 1;
}

static inline void lathist_add(struct lathist *h, int64_t us)
{
	uint64_t v = us > 0 ? (uint64_t)us : 0;
	h->b[lathist_bucket(v)]++;
	h->count++;
	if (v > h->max)
		h->max = v;
}

static inline void lathist_merge(struct lathist *into, const struct lathist *h)
{
	for (unsigned i = 0; i < LATHIST_BUCKETS; i++)
		into->b[i] += h->b[i];
	into->count += h->count;
	if (h->max > into->max)
		into->max = h->max;
}

/* The p-th per mille (500 = median, 990 = p99): an upper bound within one bucket. */
static inline uint64_t lathist_permille(const struct lathist *h, unsigned p)
{
	if (h->count == 0)
		return 0;
	uint64_t rank = (h->count * p + 999) / 1000, acc = 0;
	for (unsigned i = 0; i < LATHIST_BUCKETS; i++) {
		acc += h->b[i];
		if (acc >= rank) {
			uint64_t top = lathist_bucket_top(i);
			return top < h->max ? top : h->max;
		}
	}
	return h->max;
}

#endif
