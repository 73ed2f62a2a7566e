/*
 * bench/bench_gen.h — deterministic usage-event workload generator for tally-bench.
 *
 * One generator is one *stream* (tally-bench runs one stream per connection). A stream is a
 * deterministic function of (seed, stream_id, config): the same inputs give the same events,
 * byte for byte, on every run. Nothing here reads a clock or calls rand().
 *
 * Model:
 *   - Fresh event j (j = 0, 1, 2, ... within the stream) is a pure function of (seed, stream,
 *     j): its key, customer, name, properties and event time can be regenerated at any time
 *     without storing it. That is how duplicates are "exact resends of an earlier event".
 *   - Each call to bench_gen_next() draws the kind of the next event from the sequential
 *     PRNG: DUP (an exact resend of an earlier fresh event, chosen among the recent ones, as a
 *     retry would be), CONFLICT (an earlier fresh event's key with different content: its first
 *     INT property + 1; every conflict of one key has that same content), or FRESH.
 *     The first event of a stream is always FRESH.
 *   - Keys are "<prefix>-<stream as 4 hex>-<16 hex>" where the 16 hex digits are a bijective
 *     64-bit mix of (seed, j): unique within a stream, disjoint across streams.
 *   - Event time of fresh j: base_time_us + j * time_step_us; a "late" fresh event (drawn with
 *     probability late_ppm) is moved back by a uniform 1..skew_us, so events arrive late and
 *     out of order.
 *   - Customers: uniform over `customers`, or Zipf with exponent zipf_milli/1000 (the only
 *     floating point is in building the Zipf table at init; rating code is elsewhere).
 *   - Mix (per mille): api.call 550, ai.tokens 250, sms.sent 100, image.generated 50,
 *     storage.snapshot 50. Bodies are padded with an "attrs" string property (more than one
 *     when needed) to exactly payload_bytes when the natural size is smaller.
 *
 * Rates are integers in parts per million (bench_gen_parse_rate() reads "0.1", "10%", "1e5ppm"
 * style strings). Thread safety: a generator belongs to one thread; different generators share
 * nothing but the read-only Zipf table (bench_gen_zipf_*), which is immutable after build.
 */
#ifndef TALLY_BENCH_GEN_H
#define TALLY_BENCH_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/event.h"

#define BENCH_GEN_PPM                1000000u
#define BENCH_GEN_PAYLOAD_BYTES_DEF  150u
#define BENCH_GEN_PAYLOAD_BYTES_MAX  4096u
#define BENCH_GEN_CUSTOMERS_MAX      (1u << 24)
#define BENCH_GEN_DUP_WINDOW_DEF     4096u /* dups/conflicts pick among this many recent fresh */
#define BENCH_GEN_PROPS_MAX          24u   /* props per generated event, pads included */
#define BENCH_GEN_KEY_PREFIX_MAX     16u
#define BENCH_GEN_KEY_BYTES          (BENCH_GEN_KEY_PREFIX_MAX + 1 + 4 + 1 + 16)

enum bench_gen_kind {
	BENCH_GEN_FRESH = 0,
	BENCH_GEN_DUP = 1,      /* exact resend of fresh event `fresh_index` */
	BENCH_GEN_CONFLICT = 2, /* same key as fresh `fresh_index`, different content */
};

/* Read-only after bench_gen_zipf_build(); may be shared by many generators and threads. */
struct bench_gen_zipf {
	uint32_t n;
	uint64_t *cdf; /* n entries, cumulative probability scaled to 2^64 - 1; cdf[n-1] = max */
};

struct bench_gen_config {
	uint64_t seed;
	uint32_t stream;            /* stream id: 0..65535 (one per connection) */
	uint32_t customers;         /* 1..BENCH_GEN_CUSTOMERS_MAX */
	const struct bench_gen_zipf *zipf; /* NULL = uniform customers */
	uint32_t payload_bytes;     /* target body size; 0 = natural size (no padding) */
	uint32_t dup_ppm;           /* share of events that are exact resends */
	uint32_t conflict_ppm;      /* share of events that reuse a key with other content */
	uint32_t late_ppm;          /* share of fresh events moved back in time */
	int64_t skew_us;            /* how far back a late event goes at most (>= 1 if late_ppm) */
	int64_t base_time_us;       /* event time of fresh event 0 */
	int64_t time_step_us;       /* event time advance per fresh event (>= 0) */
	uint32_t dup_window;        /* 0 = BENCH_GEN_DUP_WINDOW_DEF */
	uint32_t ref_lag;           /* dups/conflicts refer to fresh events at least this many
				       fresh events back when possible (so the original is likely
				       acknowledged already); 0 = may refer to the latest */
	char key_prefix[BENCH_GEN_KEY_PREFIX_MAX + 1]; /* "" = "ev" */
};

/* Generator state: caller-allocated, no heap. */
struct bench_gen {
	struct bench_gen_config cfg;
	uint64_t stream_seed;  /* derived from (seed, stream) */
	uint64_t s[4];         /* xoshiro256** state for the sequential draws */
	uint64_t seq;          /* events generated so far */
	uint64_t fresh_count;  /* fresh events generated so far */
	uint64_t count_by_kind[3];
	uint64_t late_count;   /* fresh events that were made late */
};

/*
 * One generated event. `in` and its views point into this struct (or into static constant
 * tables), so it stays valid until the next bench_gen_next()/bench_gen_fresh() into it.
 */
struct bench_gen_event {
	struct tally_event_in in;
	uint64_t seq;          /* position in the stream (all kinds) */
	uint64_t fresh_index;  /* the fresh event whose key this is */
	uint8_t kind;          /* enum bench_gen_kind */
	uint8_t variant;       /* content variant: 0 = original content, 1 = conflict content */
	bool late;             /* the fresh event's time was moved back */
	uint8_t type;          /* index into the event mix (bench_gen_type_name()) */
	struct tally_prop props[BENCH_GEN_PROPS_MAX];
	char key[BENCH_GEN_KEY_BYTES + 1];
	char customer[24];
	char strbuf[4][32];    /* generated string values */
	char pad[TALLY_PROP_STRING_BYTES_MAX];
};

/*
 * Checks `cfg` and initialises `g`. Returns 0, or -EINVAL when a field is out of range
 * (customers 0 or too many, payload_bytes over the max, dup+conflict > 1e6, late without
 * skew, stream > 65535, key prefix with bytes outside [A-Za-z0-9_]).
 */
int bench_gen_init(struct bench_gen *g, const struct bench_gen_config *cfg)
	__attribute__((warn_unused_result));

/* Generates the next event of the stream into `out`. Never fails. */
void bench_gen_next(struct bench_gen *g, struct bench_gen_event *out);

/*
 * Regenerates fresh event `fresh_index` with content `variant` (0 original, 1 conflict), as
 * any later dup/conflict of it would be sent. Does not advance the stream. kind/seq in `out`
 * are set to FRESH/UINT64_MAX; late is the fresh event's.
 */
void bench_gen_fresh(const struct bench_gen *g, uint64_t fresh_index, uint8_t variant,
		     struct bench_gen_event *out);

/* Writes fresh event `fresh_index`'s key into buf (>= BENCH_GEN_KEY_BYTES + 1); returns len. */
size_t bench_gen_key(const struct bench_gen *g, uint64_t fresh_index, char *buf);

/* Name of mix entry `type` ("api.call"), or "?" */
const char *bench_gen_type_name(uint8_t type);

/*
 * Builds a Zipf CDF over n customers with exponent s = s_milli / 1000 (s_milli 1..5000).
 * Allocates n * 8 bytes. Returns 0, -EINVAL or -ENOMEM.
 */
int bench_gen_zipf_build(struct bench_gen_zipf *z, uint32_t n, uint32_t s_milli)
	__attribute__((warn_unused_result));
void bench_gen_zipf_free(struct bench_gen_zipf *z);

/* Customer index 0..n-1 for a uniform 64-bit draw r (0 is the most popular). */
uint32_t bench_gen_zipf_pick(const struct bench_gen_zipf *z, uint64_t r);

/*
 * Parses a rate: "0.1" (fraction), "10%" , "2.5%", "1000ppm", or an integer per-mille when
 * written with a "pm" suffix ("100pm"). Integer math only; at most 6 fractional digits of the
 * fraction form. Result in ppm (0..1000000). Returns 0 or -EINVAL.
 */
int bench_gen_parse_rate(const char *s, uint32_t *ppm_out) __attribute__((warn_unused_result));

/*
 * Parses a Zipf exponent: decimal "1.1" / "0.99" (up to 3 fractional digits) or an integer
 * per-mille "1100pm"/"1100" when >= 10 (a bare integer < 10 is taken as the exponent itself).
 * Result in thousandths. Returns 0 or -EINVAL.
 */
int bench_gen_parse_milli(const char *s, uint32_t *milli_out) __attribute__((warn_unused_result));

/* Deterministic 64-bit mixers (splitmix64 finaliser), exposed for the harness and tests. */
uint64_t bench_gen_mix64(uint64_t x);

#endif /* TALLY_BENCH_GEN_H */
