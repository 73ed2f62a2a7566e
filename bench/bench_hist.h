/*
 * bench/bench_hist.h — log-linear latency histogram (HdrHistogram layout), integer math only.
 *
 * Values are unsigned 64-bit integers in any unit (tally-bench records microseconds). Three
 * significant decimal digits: values below 2048 have a bucket each (exact); above, every
 * power-of-two range [2^k, 2^(k+1)) is split into 1024 equal sub-buckets, so a recorded value is
 * known to within 1/1024 (< 0.1 %) of itself. Values above the trackable maximum are counted
 * in the top bucket and in `overflow`; min, max and sum stay exact.
 *
 * Percentiles are given in parts per million (p99.9 = 999000) and answered HdrHistogram-style:
 * the smallest recorded bucket whose cumulative count reaches ceil(total * p / 1e6) (at least
 * 1), reported as that bucket's highest equivalent value, capped at the exact max. p >= 1e6
 * gives the max. An empty histogram answers 0.
 *
 * Memory: bench_hist_init() allocates the counts once (about 190 KB for one hour in µs); record
 * never allocates. Not thread safe: one histogram per thread, merged at the end.
 */
#ifndef TALLY_BENCH_HIST_H
#define TALLY_BENCH_HIST_H

#include <stdint.h>

#define BENCH_HIST_SUB_BUCKETS       2048u /* 3 significant digits */
#define BENCH_HIST_HALF_MAGNITUDE    10u   /* log2(SUB_BUCKETS / 2) */
#define BENCH_HIST_HIGHEST_US_DEF    (3600ull * 1000000ull) /* one hour in µs */
#define BENCH_HIST_HIGHEST_MAX       (1ull << 62)

struct bench_hist {
	uint64_t highest_trackable;
	uint32_t bucket_count;
	uint32_t counts_len;
	uint64_t *counts;
	uint64_t total;
	uint64_t min;      /* UINT64_MAX when empty */
	uint64_t max;
	uint64_t sum;      /* saturates at UINT64_MAX */
	uint64_t overflow; /* values above highest_trackable (recorded in the top bucket) */
};

/* Allocates for values 0..highest_trackable (>= 2048, <= 2^62). Returns 0, -EINVAL, -ENOMEM. */
int bench_hist_init(struct bench_hist *h, uint64_t highest_trackable)
	__attribute__((warn_unused_result));
void bench_hist_free(struct bench_hist *h);
void bench_hist_reset(struct bench_hist *h);

void bench_hist_record(struct bench_hist *h, uint64_t value);
void bench_hist_record_n(struct bench_hist *h, uint64_t value, uint64_t n);

/* dst += src. Both must have the same highest_trackable; returns 0 or -EINVAL. */
int bench_hist_merge(struct bench_hist *dst, const struct bench_hist *src)
	__attribute__((warn_unused_result));

/* Value at percentile p_ppm (0..1000000) as described above. */
uint64_t bench_hist_percentile(const struct bench_hist *h, uint32_t p_ppm);

/* Integer mean (sum / total), 0 when empty. */
uint64_t bench_hist_mean(const struct bench_hist *h);

/* The range of values that share value's bucket: [lowest, highest]. */
uint64_t bench_hist_lowest_equivalent(const struct bench_hist *h, uint64_t value);
uint64_t bench_hist_highest_equivalent(const struct bench_hist *h, uint64_t value);

#endif /* TALLY_BENCH_HIST_H */
