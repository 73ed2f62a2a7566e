/*
 * tally/rate.h — the rating engine: exact money, the rating configuration, pricing models,
 * metering by event time, period close after a grace window, late-arrival adjustments and
 * reproducible invoices. Behaviour and formats are specified in docs/rating.md.
 *
 * Money is fixed point, always (value = mantissa * 10^-scale, mantissa in a signed 128-bit
 * integer). Three scales are used throughout:
 *   - quantities:   RATE_QTY_SCALE   (18) — an integer count n is n * 10^18;
 *   - unit prices:  RATE_PRICE_SCALE (12) — "0.000003" is 3000000;
 *   - amounts owed: the currency's minor unit (USD 2, JPY 0, BHD 3).
 * Arithmetic never wraps: every operation that can overflow checks and returns -ERANGE.
 *
 * Threading: a config is immutable after parsing and may be shared. An engine is used by one
 * thread at a time.
 */
#ifndef TALLY_RATE_H
#define TALLY_RATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tally/event.h"

typedef __int128 rate_i128;

#define RATE_QTY_SCALE        18
#define RATE_PRICE_SCALE      12
#define RATE_DEC_STR_MAX      48 /* 39 digits, sign, point, NUL, and room to spare */
#define RATE_TIME_STR_MAX     32
#define RATE_ID_BYTES_MAX     64 /* meter, plan ids */
#define RATE_METERS_MAX       64
#define RATE_PLANS_MAX        256
#define RATE_PRICES_MAX       64 /* per price set (plan, customer, contract) */
#define RATE_TIERS_MAX        16
#define RATE_FILTERS_MAX      8
#define RATE_FILTER_VALUES_MAX 16
#define RATE_CONTRACTS_MAX    16 /* per customer */
#define RATE_CREDITS_MAX      32 /* per customer */
#define RATE_CUSTOMERS_MAX    1000000 /* configured and seen, together */
#define RATE_SHARDS_MAX       256
#define RATE_UNIQUE_MAX       (1u << 20) /* distinct values per unique_count aggregate */
#define RATE_PERIODS_SPAN_MAX 100000     /* periods kept per customer */

/* ------------------------------------------------------------------------------------------ */
/* Exact decimals                                                                              */

enum rate_rounding {
	RATE_ROUND_HALF_EVEN = 0, /* banker's rounding: ties to the even neighbour */
	RATE_ROUND_HALF_UP = 1,   /* ties away from zero */
};

/*
 * Parses the decimal string s[0..len) ("[-]digits[.digits]", no exponent, no '+', no spaces)
 * into a mantissa at `scale` (0..38). Exact: a value that needs more than `scale` fractional
 * digits is refused (trailing zeros beyond the scale are fine).
 * Returns 0, -EINVAL (syntax), -EDOM (too many fractional digits) or -ERANGE (too large).
 */
int rate_dec_parse(const char *s, size_t len, unsigned scale, rate_i128 *out /* OUT */)
	__attribute__((warn_unused_result));

/*
 * Writes m * 10^-scale as a decimal string into buf[0..cap), NUL-terminated, with trailing
 * fractional zeros trimmed down to (at least) min_frac digits; min_frac > scale pads zeros.
 * Returns the length written, or -ENOSPC.
 */
int rate_dec_format(rate_i128 m, unsigned scale, unsigned min_frac, char *buf, size_t cap);

/* 10^n for n in 0..38; 0 for larger n. */
rate_i128 rate_pow10(unsigned n);

/* a * b; -ERANGE if the product does not fit. */
int rate_mul(rate_i128 a, rate_i128 b, rate_i128 *out /* OUT */)
	__attribute__((warn_unused_result));

/* a + b; -ERANGE on overflow. */
int rate_add(rate_i128 a, rate_i128 b, rate_i128 *out /* OUT */)
	__attribute__((warn_unused_result));

/* v * 10^(to - from) exactly (to >= from); -ERANGE on overflow. */
int rate_upscale(rate_i128 v, unsigned from, unsigned to, rate_i128 *out /* OUT */)
	__attribute__((warn_unused_result));

/* v / 10^drop rounded with `mode` (the only rounding step in rating). Never fails. */
rate_i128 rate_round(rate_i128 v, unsigned drop, enum rate_rounding mode);

/* Smallest s <= scale such that v * 10^-scale is exactly representable at scale s. */
unsigned rate_min_scale(rate_i128 v, unsigned scale);

/* Minor-unit digits of an ISO 4217 code (USD 2, JPY 0, KWD 3), or -1 if not in the table. */
int rate_currency_minor_units(const char *code);

/* ------------------------------------------------------------------------------------------ */
/* Time (UTC, microseconds since the epoch; integer calendar arithmetic only)                  */

/* "YYYY-MM-DD" or "YYYY-MM-DDTHH:MM:SSZ". Returns 0 or -EINVAL. */
int rate_time_parse(const char *s, int64_t *us /* OUT */) __attribute__((warn_unused_result));

/* "YYYY-MM-DDTHH:MM:SSZ" (".ffffffZ" when the microseconds are not 0). Returns the length. */
int rate_time_format(int64_t us, char buf[RATE_TIME_STR_MAX]);

/* ------------------------------------------------------------------------------------------ */
/* Configuration (docs/rating.md "Configuration")                                             */

enum rate_agg_kind { RATE_AGG_COUNT, RATE_AGG_SUM, RATE_AGG_MAX, RATE_AGG_LAST, RATE_AGG_UNIQUE };
enum rate_filter_op { RATE_FILTER_EQUALS, RATE_FILTER_NOT_EQUALS, RATE_FILTER_IN };
enum rate_model { RATE_MODEL_PER_UNIT, RATE_MODEL_GRADUATED, RATE_MODEL_VOLUME, RATE_MODEL_PACKAGE };
enum rate_period_kind { RATE_PERIOD_MONTH, RATE_PERIOD_DAY, RATE_PERIOD_HOUR, RATE_PERIOD_SECONDS };
enum rate_late_policy { RATE_LATE_ADJUST_NEXT, RATE_LATE_REPORT_ONLY };

/* A filter operand: a string (matches STRING properties byte for byte) or a number
 * (matches INT and DECIMAL properties by value). */
struct rate_value {
	bool is_string;
	rate_i128 num; /* at RATE_QTY_SCALE */
	char *str;
	uint32_t str_len;
};

struct rate_filter {
	char *property;
	uint32_t property_len;
	enum rate_filter_op op;
	uint32_t nvalues; /* 1 for equals / not_equals */
	struct rate_value values[RATE_FILTER_VALUES_MAX];
};

struct rate_meter {
	char *id;
	char *event_name;
	uint32_t event_name_len;
	enum rate_agg_kind agg;
	char *property; /* NULL for count */
	uint32_t property_len;
	uint32_t nfilters;
	struct rate_filter filters[RATE_FILTERS_MAX];
};

struct rate_tier {
	rate_i128 up_to; /* quantity, RATE_QTY_SCALE; ignored when unbounded */
	bool unbounded;  /* "up_to": null — only the last tier */
	rate_i128 unit_price; /* RATE_PRICE_SCALE */
};

struct rate_price {
	uint32_t meter; /* index into config meters */
	enum rate_model model;
	rate_i128 free_units; /* RATE_QTY_SCALE; subtracted before any model applies */
	rate_i128 unit_price; /* per_unit; package: price of one package */
	rate_i128 package_size; /* package only, RATE_QTY_SCALE, > 0 */
	uint32_t ntiers;        /* graduated, volume */
	struct rate_tier tiers[RATE_TIERS_MAX];
};

struct rate_price_set {
	uint32_t count;
	struct rate_price *prices;
};

struct rate_plan {
	char *id;
	rate_i128 base_fee; /* RATE_PRICE_SCALE */
	struct rate_price_set prices;
};

struct rate_contract {
	int64_t from_us; /* active for periods that start in [from, to) */
	int64_t to_us;   /* INT64_MAX when open-ended */
	struct rate_price_set prices;
};

struct rate_credit {
	rate_i128 amount;   /* minor units of the currency */
	int64_t expires_us; /* INT64_MAX when it never expires */
	int64_t priority;   /* lower burns first */
};

struct rate_customer_cfg {
	char *id;
	uint32_t id_len;
	int32_t plan;        /* index into plans, or -1 (then default_plan applies) */
	uint32_t anchor_day; /* 1..31, month periods only */
	struct rate_price_set prices;
	uint32_t ncontracts;
	struct rate_contract *contracts;
	uint32_t ncredits;
	struct rate_credit *credits;
};

struct rate_config {
	char currency[4];
	unsigned minor_units;
	enum rate_period_kind period;
	int64_t period_us; /* RATE_PERIOD_SECONDS only */
	int64_t grace_us;
	enum rate_rounding rounding;
	enum rate_late_policy late_policy;
	uint32_t nmeters;
	struct rate_meter *meters;
	uint32_t nplans;
	struct rate_plan *plans;
	uint32_t ncustomers;
	struct rate_customer_cfg *customers;
	int32_t default_plan; /* -1 when absent */
};

/*
 * Parses and validates a configuration from json[0..len). On error returns -EINVAL and writes
 * a message naming the field path ("plans[0].prices[1].tiers[2].unit_price: not a decimal
 * string") into err[0..err_cap). On success *out owns everything; free with rate_config_free.
 */
int rate_config_parse(const char *json, size_t len, struct rate_config **out /* OUT */,
		      char *err, size_t err_cap) __attribute__((warn_unused_result));

/* Same, from a file; -errno if it cannot be read (message in err). */
int rate_config_load(const char *path, struct rate_config **out /* OUT */, char *err,
		     size_t err_cap) __attribute__((warn_unused_result));

void rate_config_free(struct rate_config *cfg);

/* The configured customer with this id, or NULL. */
const struct rate_customer_cfg *rate_config_customer(const struct rate_config *cfg,
						     const char *id);

/* Index of the meter with this id, or -1. */
int rate_config_meter(const struct rate_config *cfg, const char *id);

/* True if the engine would count `ev` in `meter`: event name, every filter, and a usable
 * value (property present and numeric for sum/max/last). */
bool rate_meter_matches(const struct rate_config *cfg, uint32_t meter,
			const struct tally_event *ev);

/* [start, end) of the period containing t_us for a customer with this anchor day. */
void rate_period_bounds(const struct rate_config *cfg, unsigned anchor_day, int64_t t_us,
			int64_t *start_us /* OUT */, int64_t *end_us /* OUT */);

/* Start of the period whose invoice carries the adjustment for a late event
 * (docs/rating.md "Periods and lateness"). */
int64_t rate_late_target_start(const struct rate_config *cfg, unsigned anchor_day,
			       int64_t event_time_us, int64_t ingest_time_us);

/* ------------------------------------------------------------------------------------------ */
/* Pricing one quantity (the code every invoice line, adjustment and usage figure uses)       */

/* One slice of the billable quantity at one unit price. */
struct rate_part {
	rate_i128 from, to; /* tier bounds, RATE_QTY_SCALE; to unused when unbounded */
	bool unbounded;
	rate_i128 quantity;   /* RATE_QTY_SCALE */
	rate_i128 unit_price; /* RATE_PRICE_SCALE (package: price per package) */
	rate_i128 amount;     /* exact, at amount_scale */
};

struct rate_charge {
	enum rate_model model;
	rate_i128 quantity;   /* RATE_QTY_SCALE */
	rate_i128 free_units; /* applied, RATE_QTY_SCALE (<= quantity) */
	rate_i128 billable;   /* quantity - free_units */
	rate_i128 packages;   /* package model: whole packages billed */
	uint32_t nparts;
	struct rate_part parts[RATE_TIERS_MAX];
	unsigned amount_scale; /* scale of the exact amounts */
	rate_i128 exact;       /* sum of parts, unrounded */
	rate_i128 amount;      /* exact rounded once, in minor units */
};

/*
 * Prices `quantity` (RATE_QTY_SCALE, >= 0) with `price`; rounds once to `minor_units` digits
 * with `mode`. Returns 0, -ERANGE on overflow (out then unspecified) or -EINVAL on a negative
 * quantity.
 */
int rate_charge_compute(const struct rate_price *price, rate_i128 quantity, unsigned minor_units,
			enum rate_rounding mode, struct rate_charge *out /* OUT */)
	__attribute__((warn_unused_result));

/* ------------------------------------------------------------------------------------------ */
/* The engine                                                                                  */

/* One WAL record, as handed to the engine. */
struct rate_record {
	const struct tally_event *ev; /* decoded; NULL for a tick */
	struct tally_view tenant;     /* for the fingerprint */
	int64_t ingest_time_us;
	uint32_t shard; /* < opts.shards */
	uint64_t offset;
	bool has_fp; /* fp already known (the WAL stores it); else computed from tenant + key */
	struct tally_fp fp;
};

/* Called once per closed invoice, after it is written (if out_dir is set). */
typedef int (*rate_invoice_fn)(void *ctx, const char *customer, int64_t period_start_us,
			       const char *json, size_t json_len);

struct rate_engine_opts {
	uint32_t shards;      /* WAL shards (1..RATE_SHARDS_MAX): the watermark is their minimum */
	const char *out_dir;  /* invoices go to out_dir/invoices/<customer>/<start>.json; NULL: none */
	rate_invoice_fn on_invoice; /* optional */
	void *ctx;
	bool no_fsync; /* tests only: skip fsync in atomic writes */
};

struct rate_stats {
	uint64_t events;      /* records with an event */
	uint64_t metered;     /* events that matched at least one meter (on time or late) */
	uint64_t late;        /* events whose ingest time was after their period's end + grace */
	uint64_t unbilled;    /* events of customers with no plan */
	uint64_t unmetered;   /* billable events no meter matched */
	uint64_t bad_value;   /* meter matched but the property was missing or not numeric */
	uint64_t out_of_range; /* period span per customer exceeded (RATE_PERIODS_SPAN_MAX) */
	uint64_t invoices;    /* invoices closed */
	uint64_t overflow;    /* aggregates or lines that overflowed (reported in the invoice) */
};

struct rate_engine;

/* Creates an engine over `cfg` (which must outlive it). Returns 0 or -errno. */
int rate_engine_create(const struct rate_config *cfg, const struct rate_engine_opts *opts,
		       struct rate_engine **out /* OUT */) __attribute__((warn_unused_result));

void rate_engine_destroy(struct rate_engine *eng);

/*
 * Feeds one record (an event, or a tick when rec->ev is NULL): meters it, advances the
 * shard's latest ingest time, and closes every customer period the new watermark makes due
 * (writing invoices). Allocation-free per event in the steady state. Returns 0, -EINVAL
 * (shard out of range), -ENOSPC (RATE_CUSTOMERS_MAX reached), -ENOMEM, or the error of an
 * invoice write or callback (-EIO, -ENOSPC...). An invoice error comes after the record
 * itself was rated (do not feed it again); nothing of the failed close was committed, and
 * the next record that advances the watermark retries it. tally-rate instead exits and
 * resumes from its last checkpoint.
 */
int rate_engine_feed(struct rate_engine *eng, const struct rate_record *rec)
	__attribute__((warn_unused_result));

#define RATE_BATCH_MAX 32

/*
 * Feeds recs[0..n) exactly as n calls of rate_engine_feed would (same results; it stops at
 * the first error, and *fed, if not NULL, counts the records fed before it), but prefetches
 * each group of up to RATE_BATCH_MAX records' customer and aggregate state first, which
 * hides most of the cache misses when many customers are active.
 */
int rate_engine_feed_batch(struct rate_engine *eng, const struct rate_record *recs, size_t n,
			   size_t *fed /* OUT, may be NULL */) __attribute__((warn_unused_result));

/*
 * Copies src's body (src->body.len bytes) into `body` and points dst's views into the copy:
 * for holding records across reader calls (a WAL reader's views die at its next call).
 */
void rate_event_rebase(struct tally_event *dst, const struct tally_event *src, uint8_t *body);

/* A tick: shard `shard` has nothing before ingest time t. Same as a record without an event. */
int rate_engine_tick(struct rate_engine *eng, uint32_t shard, int64_t ingest_time_us)
	__attribute__((warn_unused_result));

/* Current watermark: the minimum over shards of the latest ingest time read (INT64_MIN if a
 * shard has not been heard from). */
int64_t rate_engine_watermark(const struct rate_engine *eng);

void rate_engine_stats(const struct rate_engine *eng, struct rate_stats *out /* OUT */);

/*
 * Writes the late-arrival report (every late event) and the unbilled report as
 * dir/late_arrivals.json and dir/unbilled.json, atomically, sorted deterministically.
 */
int rate_engine_write_reports(struct rate_engine *eng, const char *dir)
	__attribute__((warn_unused_result));

/*
 * The open periods' usage and amounts so far, as JSON (docs/rating.md "usage.json"), built by
 * the same code as the invoices. *json is malloc'd; the caller frees it.
 */
int rate_engine_usage_json(struct rate_engine *eng, char **json /* OUT */, size_t *len /* OUT */)
	__attribute__((warn_unused_result));

/*
 * Saves the engine's whole state and the caller's WAL positions (positions[0..n), n = shards:
 * the next offset to read per shard) to `path` atomically (docs/rating.md "State
 * checkpoint"). Returns 0 or -errno.
 */
int rate_engine_save(struct rate_engine *eng, const uint64_t *positions, uint32_t n,
		     const char *path) __attribute__((warn_unused_result));

/*
 * Restores a state saved by rate_engine_save into a freshly created engine (same meters and
 * shard count; customers, plans and prices may have changed) and returns the positions.
 * Returns 0, -ENOENT (no checkpoint), -EBADMSG (damaged: checksum or a bound), -EINVAL
 * (different shard count or meter list, or the engine was already fed).
 */
int rate_engine_load(struct rate_engine *eng, uint64_t *positions, uint32_t n, const char *path)
	__attribute__((warn_unused_result));

/* ------------------------------------------------------------------------------------------ */
/* Files and renderings                                                                        */

/*
 * Writes buf[0..len) to `path` atomically: path.tmp, fsync, rename, fsync of the directory.
 * Creates missing parent directories. Returns 0 or -errno. `sync` false skips the fsyncs.
 */
int rate_write_atomic(const char *path, const void *buf, size_t len, bool sync)
	__attribute__((warn_unused_result));

/* The fingerprint contribution to provenance digests: XXH3-64 of fp (lo, hi as 16 LE bytes).
 * A digest is the sum (mod 2^64) of these over the contributing events. */
uint64_t rate_fp_hash(struct tally_fp fp);

/*
 * Renders an invoice JSON document as readable text on `out`. Returns 0, or -EINVAL with a
 * message in err if the document is not an invoice.
 */
int rate_invoice_render_text(const char *json, size_t len, FILE *out, char *err, size_t err_cap)
	__attribute__((warn_unused_result));

#endif /* TALLY_RATE_H */
