/*
 * rate_internal.h — helpers shared by the rating sources (src/rate*.c); not a public API.
 */
#ifndef TALLY_RATE_INTERNAL_H
#define TALLY_RATE_INTERNAL_H

#include <stdint.h>

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

/* Price of `meter` for a customer config (may be NULL) and plan at a period starting at
 * start_us: contract > customer > plan. *source gets "contract", "customer" or "plan".
 * NULL when the meter has no price. */
const struct rate_price *rate_price_resolve(const struct rate_config *cfg,
					    const struct rate_customer_cfg *cust, int32_t plan,
					    uint32_t meter, int64_t start_us, const char **source);

#endif
