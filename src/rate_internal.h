/*
 * rate_internal.h — helpers shared by the rating sources (src/rate*.c); not a public API.
 */
#ifndef TALLY_RATE_INTERNAL_H
#define TALLY_RATE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "tally/event.h"
#include "tally/rate.h"

#define RATE_US_PER_DAY 86400000000LL

/* Calendar (rate_money.c). */
int64_t rate_days_from_civil(int64_t y, unsigned m, unsigned d);
void rate_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d);
unsigned rate_days_in_month(int64_t y, unsigned m);

/* Periods (rate_period.c): ordinal of the period containing t, and the start of ordinal ord.
 * end(ord) == start(ord + 1). anchor_day matters for month periods only. */
int64_t rate_period_ord(const struct rate_config *cfg, unsigned anchor_day, int64_t t_us);
int64_t rate_period_start(const struct rate_config *cfg, unsigned anchor_day, int64_t ord);

/* The period a late event of period `ord` ingested at ingest_time_us is adjusted in: the
 * earliest Q > ord with end(Q) + grace >= ingest_time_us. */
int64_t rate_late_target_ord(const struct rate_config *cfg, unsigned anchor_day, int64_t ord,
			     int64_t ingest_time_us);

/* Price of `meter` for a customer config (may be NULL) and plan at a period starting at
 * start_us: contract > customer > plan. *source gets "contract", "customer" or "plan".
 * NULL when the meter has no price. */
const struct rate_price *rate_price_resolve(const struct rate_config *cfg,
					    const struct rate_customer_cfg *cust, int32_t plan,
					    uint32_t meter, int64_t start_us, const char **source);

/* ---- engine state (rate_engine.c; serialized by rate_ckpt.c) ---- */

#define AGG_HAS      1u /* at least one value */
#define AGG_OVERFLOW 2u /* a sum overflowed: the line reports an error */
#define AGG_CAPPED   4u /* unique set reached RATE_UNIQUE_MAX */

#define RATE_ORD_NONE (INT64_MIN / 4)

struct rate_uset {
	uint32_t cap; /* power of two */
	uint32_t count;
	uint64_t *slots; /* 0 = empty */
};

struct rate_range {
	uint64_t first, last; /* first == UINT64_MAX: nothing from this shard */
};

struct rate_agg {
	rate_i128 value; /* RATE_QTY_SCALE; unique_count: the set's count */
	int64_t last_time_us;
	uint64_t last_offset;
	uint32_t last_shard;
	uint32_t flags;
	uint64_t count;  /* contributing events */
	uint64_t digest; /* sum of rate_fp_hash() of their fingerprints */
	struct rate_uset *uset;
};

/* Late events of one source period, waiting in their target period. */
/*
 * Per-meter state lives in "slots": slot m is the meter's aggregate followed by its offset
 * range per shard, so that one event's update touches neighbouring bytes (an aggregate and
 * its range share a cache line or the next). Use rate_agg_at() / rate_ranges_at().
 */
struct rate_adj {
	int64_t src_ord;
	char *slots; /* nmeters x slot_bytes */
};

struct rate_cperiod {
	int64_t ord;
	bool closed;
	bool ontime; /* an on-time metered event landed here */
	char *slots; /* nmeters x slot_bytes, 64-byte aligned, in the same allocation */
	uint32_t nadj, adj_cap;
	struct rate_adj *adj; /* sorted by src_ord */
};

/* Hot fields first: an event reads the first line (hash, cache, closed_through) and the id. */
struct rate_cust {
	uint64_t hash;
	uint32_t id_len;
	int32_t plan;                  /* -1: unbilled */
	char *cache_slots; /* slots of cache_ord's record once marked on time, else NULL */
	int64_t cache_start, cache_end, cache_ord; /* last period computed */
	int64_t closed_through;
	bool has_records;
	bool started;
	char id[TALLY_CUSTOMER_BYTES_MAX + 1]; /* NUL-terminated */
	uint32_t index;                        /* in engine custs[] (append-only) */
	unsigned anchor;
	const struct rate_customer_cfg *cfg; /* NULL for customers seen only in events */
	int64_t lo;                          /* ordinal of ords[0] */
	uint32_t nords, ords_cap;
	struct rate_cperiod **ords;
	rate_i128 *credit_left; /* per configured credit, minor units */
	uint64_t unbilled_count, unbilled_digest;
	int64_t unbilled_first_us, unbilled_last_us;
};

struct rate_late {
	uint32_t cust;
	uint32_t shard;
	uint64_t offset;
	int64_t event_time_us, ingest_time_us;
	int64_t src_ord, target_ord; /* target_ord RATE_ORD_NONE under report_only */
	uint64_t meters;             /* bit per meter index */
	struct tally_fp fp;
};

struct rate_name {
	const char *name;
	uint32_t len;
	uint32_t nm;
	uint8_t m[RATE_METERS_MAX];
};

struct rate_cslot {
	uint64_t hash;
	struct rate_cust *c; /* NULL = empty */
};

struct rate_engine {
	const struct rate_config *cfg;
	struct rate_engine_opts opts;
	char *out_dir;
	uint32_t nshards;
	size_t slot_bytes; /* sizeof(struct rate_agg) + nshards * sizeof(struct rate_range) */
	int64_t *shard_latest;
	int64_t watermark;
	int64_t next_close_us;
	struct rate_cust **custs;
	uint32_t ncusts, custs_cap;
	struct rate_cslot *ctab; /* open addressing; the hash is in the slot so that a probe
				  * touches the customer only on a hash match */
	uint32_t ctab_mask;
	struct rate_name names[RATE_METERS_MAX];
	uint32_t nnames;
	struct rate_late *late;
	size_t nlate, late_cap;
	struct rate_stats stats;
};

static inline struct rate_agg *rate_agg_at(const struct rate_engine *e, char *slots, uint32_t m)
{
	return (struct rate_agg *)(slots + (size_t)m * e->slot_bytes);
}

static inline struct rate_range *rate_ranges_at(const struct rate_engine *e, char *slots,
						uint32_t m)
{
	return (struct rate_range *)(slots + (size_t)m * e->slot_bytes + sizeof(struct rate_agg));
}

int rate_cust_add(struct rate_engine *e, const uint8_t *id, uint32_t len,
		  const struct rate_customer_cfg *cfg, struct rate_cust **out);
int rate_cperiod_get(struct rate_engine *e, struct rate_cust *c, int64_t ord,
		     struct rate_cperiod **out);
int rate_adj_get(struct rate_engine *e, struct rate_cperiod *cp, int64_t src_ord,
		 struct rate_adj **out);
int rate_uset_add(struct rate_uset **ps, uint64_t h);
void rate_engine_recompute_next_close(struct rate_engine *e);

#endif
