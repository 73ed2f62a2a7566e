/*
 * tests/rate_testlib.h — helpers shared by the rating tests: check macros, decimal helpers,
 * and an event builder that encodes and decodes a real event body (so the engine is fed
 * exactly what it would read from the WAL).
 */
#ifndef TALLY_RATE_TESTLIB_H
#define TALLY_RATE_TESTLIB_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally/event.h"
#include "tally/rate.h"

static int rate_t_failures;
static int rate_t_checks;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		rate_t_checks++;                                                                   \
		if (!(cond)) {                                                                     \
			rate_t_failures++;                                                         \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
		}                                                                                  \
	} while (0)

#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                                \
		rate_t_checks++;                                                                   \
		if (a_ != b_) {                                                                    \
			rate_t_failures++;                                                         \
			fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %lld, expected %lld\n",     \
				__FILE__, __LINE__, #a, a_, b_);                                   \
		}                                                                                  \
	} while (0)

#define CHECK_STR(a, b)                                                                            \
	do {                                                                                       \
		const char *a_ = (a), *b_ = (b);                                                   \
		rate_t_checks++;                                                                   \
		if (!a_ || strcmp(a_, b_) != 0) {                                                  \
			rate_t_failures++;                                                         \
			fprintf(stderr, "%s:%d: CHECK_STR failed: %s == \"%s\", expected \"%s\"\n", \
				__FILE__, __LINE__, #a, a_ ? a_ : "(null)", b_);                   \
		}                                                                                  \
	} while (0)

static inline int rate_t_done(const char *name)
{
	printf("%s: %d checks, %d failures\n", name, rate_t_checks, rate_t_failures);
	return rate_t_failures ? 1 : 0;
}

/* Parses a decimal at `scale` or aborts (test inputs are literals). */
static inline rate_i128 rate_t_dec(const char *s, unsigned scale)
{
	rate_i128 v;
	if (rate_dec_parse(s, strlen(s), scale, &v) != 0) {
		fprintf(stderr, "bad test decimal %s\n", s);
		abort();
	}
	return v;
}

/* Formats an amount in minor units into a static buffer (one at a time). */
static inline const char *rate_t_fmt(rate_i128 v, unsigned scale)
{
	static char b[RATE_DEC_STR_MAX];
	if (rate_dec_format(v, scale, scale, b, sizeof b) < 0)
		return "?";
	return b;
}

static inline struct tally_view rate_t_sv(const char *s)
{
	return (struct tally_view){(const uint8_t *)s, (uint32_t)strlen(s)};
}

/* An encoded + decoded event, owning its body. */
struct rate_t_event {
	uint8_t body[TALLY_EVENT_BYTES_MAX];
	struct tally_event ev;
};

/* Builds event (key, customer, name, time) with up to 4 properties. */
static inline void rate_t_event(struct rate_t_event *out, const char *key, const char *customer,
				const char *name, int64_t t_us, uint32_t nprops,
				const struct tally_prop *props)
{
	struct tally_event_in in = {.key = rate_t_sv(key),
				    .customer = rate_t_sv(customer),
				    .name = rate_t_sv(name),
				    .event_time_us = t_us,
				    .prop_count = nprops,
				    .props = props};
	long n = event_encode(&in, out->body, sizeof out->body);
	if (n <= 0 || event_decode(out->body, (size_t)n, &out->ev) != TALLY_REJECT_NONE) {
		fprintf(stderr, "test event does not encode (%ld)\n", n);
		abort();
	}
}

static inline struct tally_prop rate_t_int_prop(const char *key, int64_t v)
{
	return (struct tally_prop){.key = rate_t_sv(key), .kind = TALLY_VALUE_INT, .i64 = v};
}

static inline struct tally_prop rate_t_str_prop(const char *key, const char *v)
{
	return (struct tally_prop){.key = rate_t_sv(key), .kind = TALLY_VALUE_STRING, .str = rate_t_sv(v)};
}

static inline struct tally_prop rate_t_dec_prop(const char *key, int64_t m, uint8_t scale)
{
	return (struct tally_prop){.key = rate_t_sv(key), .kind = TALLY_VALUE_DECIMAL, .i64 = m, .scale = scale};
}

#endif
