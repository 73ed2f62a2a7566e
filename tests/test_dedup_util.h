/* test_dedup_util.h — shared helpers for the dedup tests and bench: deterministic fingerprints. */
#ifndef TALLY_TEST_DEDUP_UTIL_H
#define TALLY_TEST_DEDUP_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tally/event.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

#define CHECK_EQ_U(a, b)                                                                           \
	do {                                                                                       \
		unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);     \
		if (a_ != b_) {                                                                    \
			fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%llu != %llu)\n", __FILE__, \
				__LINE__, #a, #b, a_, b_);                                         \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

static inline uint64_t dtest_mix(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

/* Fingerprint number i of a "universe" (seed): uniform like XXH3-128 output. */
static inline struct tally_fp dtest_fp(uint64_t seed, uint64_t i)
{
	struct tally_fp fp = {.lo = dtest_mix(i * 2 + seed * 0x1000000000000ull),
			      .hi = dtest_mix(i * 2 + 1 + seed * 0x1000000000000ull)};
	return fp;
}

static inline uint32_t dtest_digest(uint64_t i)
{
	return (uint32_t)dtest_mix(i ^ 0xD16E57ull);
}

struct dtest_rng {
	uint64_t s;
};

static inline uint64_t dtest_next(struct dtest_rng *r)
{
	r->s += 0x9E3779B97F4A7C15ull;
	return dtest_mix(r->s);
}

#endif
