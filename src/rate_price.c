/*
 * rate_price.c — pricing one quantity with one price (per_unit, graduated, volume, package),
 * price resolution (contract > customer > plan), and billing periods by event time.
 * See docs/rating.md "Price models" and "Periods".
 *
 * Invariants: the exact amount of a charge is the sum of its parts at one scale
 * (amount_scale); the only rounding is the final rate_round() to the currency's minor unit.
 * Every multiplication and addition is checked (-ERANGE). Pure functions, any thread.
 */
#include <errno.h>
#include <string.h>

#include "rate_internal.h"
#include "tally/rate.h"

static rate_i128 min128(rate_i128 a, rate_i128 b)
{
	return a < b ? a : b;
}

static unsigned umax(unsigned a, unsigned b)
{
	return a > b ? a : b;
}

/* amount += (q / div) * price, all checked. q is exact at the charge's scale (q % div == 0). */
static int add_part(struct rate_charge *c, rate_i128 from, rate_i128 to, bool unbounded,
		    rate_i128 q, rate_i128 div, rate_i128 price)
{
	struct rate_part *p = &c->parts[c->nparts++];
	p->from = from;
	p->to = to;
	p->unbounded = unbounded;
	p->quantity = q;
	p->unit_price = price;
	if (rate_mul(q / div, price, &p->amount) != 0)
		return -ERANGE;
	return rate_add(c->exact, p->amount, &c->exact);
}

int rate_charge_compute(const struct rate_price *price, rate_i128 quantity, unsigned minor_units,
			enum rate_rounding mode, struct rate_charge *c)
{
	if (quantity < 0)
		return -EINVAL;
	memset(c, 0, sizeof *c);
	c->model = price->model;
	c->quantity = quantity;
	c->free_units = min128(price->free_units, quantity);
	c->billable = quantity - c->free_units;

	/* The smallest scale at which every slice is exact: the scale of the quantity, the free
	 * units and every tier bound. Integers need scale 0, so amounts keep 12 digits of
	 * fraction and overflow only past ~1.7e26 currency units. */
	unsigned s = umax(rate_min_scale(quantity, RATE_QTY_SCALE),
			  rate_min_scale(c->free_units, RATE_QTY_SCALE));
	for (uint32_t i = 0; i < price->ntiers; i++)
		if (!price->tiers[i].unbounded)
			s = umax(s, rate_min_scale(price->tiers[i].up_to, RATE_QTY_SCALE));
	rate_i128 div = rate_pow10(RATE_QTY_SCALE - s);
	c->amount_scale = s + RATE_PRICE_SCALE;

	int rc = 0;
	rate_i128 b = c->billable;
	switch (price->model) {
	case RATE_MODEL_PER_UNIT:
		rc = add_part(c, 0, 0, true, b, div, price->unit_price);
		break;
	case RATE_MODEL_GRADUATED: {
		rate_i128 prev = 0;
		for (uint32_t i = 0; i < price->ntiers && rc == 0; i++) {
			const struct rate_tier *t = &price->tiers[i];
			rate_i128 hi = t->unbounded ? b : min128(b, t->up_to);
			if (hi <= prev)
				break;
			rc = add_part(c, prev, t->up_to, t->unbounded, hi - prev, div, t->unit_price);
			prev = t->up_to;
		}
		break;
	}
	case RATE_MODEL_VOLUME: {
		rate_i128 prev = 0;
		for (uint32_t i = 0; i < price->ntiers; i++) {
			const struct rate_tier *t = &price->tiers[i];
			if (t->unbounded || b <= t->up_to) {
				if (b > 0)
					rc = add_part(c, prev, t->up_to, t->unbounded, b, div,
						      t->unit_price);
				break;
			}
			prev = t->up_to;
		}
		break;
	}
	case RATE_MODEL_PACKAGE: {
		if (price->package_size <= 0)
			return -EINVAL;
		/* Whole packages, a partial one rounded up; amount scale is the price's. */
		c->packages = b / price->package_size + (b % price->package_size != 0);
		c->amount_scale = RATE_PRICE_SCALE;
		struct rate_part *p = &c->parts[c->nparts++];
		p->unbounded = true;
		p->quantity = b;
		p->unit_price = price->unit_price;
		rc = rate_mul(c->packages, price->unit_price, &p->amount);
		c->exact = p->amount;
		break;
	}
	}
	if (rc != 0)
		return -ERANGE;
	c->amount = rate_round(c->exact, c->amount_scale - minor_units, mode);
	return 0;
}

static const struct rate_price *find_in_set(const struct rate_price_set *set, uint32_t meter)
{
	for (uint32_t i = 0; i < set->count; i++)
		if (set->prices[i].meter == meter)
			return &set->prices[i];
	return NULL;
}

const struct rate_price *rate_price_resolve(const struct rate_config *cfg,
					    const struct rate_customer_cfg *cust, int32_t plan,
					    uint32_t meter, int64_t start_us, const char **source)
{
	const struct rate_price *p;
	if (cust) {
		/* The first contract (config order) active at the period start wins. */
		for (uint32_t i = 0; i < cust->ncontracts; i++) {
			const struct rate_contract *k = &cust->contracts[i];
			if (start_us >= k->from_us && start_us < k->to_us &&
			    (p = find_in_set(&k->prices, meter)) != NULL) {
				*source = "contract";
				return p;
			}
		}
		if ((p = find_in_set(&cust->prices, meter)) != NULL) {
			*source = "customer";
			return p;
		}
	}
	if (plan >= 0 && (p = find_in_set(&cfg->plans[plan].prices, meter)) != NULL) {
		*source = "plan";
		return p;
	}
	*source = "none";
	return NULL;
}

/* ---- periods ---- */

static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;
	return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static int64_t fixed_len_us(const struct rate_config *cfg)
{
	switch (cfg->period) {
	case RATE_PERIOD_DAY:
		return RATE_US_PER_DAY;
	case RATE_PERIOD_HOUR:
		return 3600000000LL;
	case RATE_PERIOD_SECONDS:
		return cfg->period_us;
	case RATE_PERIOD_MONTH:
		break;
	}
	return 0;
}

static unsigned anchor_in(int64_t y, unsigned m, unsigned anchor_day)
{
	unsigned dim = rate_days_in_month(y, m);
	return anchor_day < dim ? anchor_day : dim;
}

int64_t rate_period_ord(const struct rate_config *cfg, unsigned anchor_day, int64_t t_us)
{
	if (cfg->period != RATE_PERIOD_MONTH)
		return floor_div(t_us, fixed_len_us(cfg));
	int64_t days = floor_div(t_us, RATE_US_PER_DAY);
	int64_t y;
	unsigned m, d;
	rate_civil_from_days(days, &y, &m, &d);
	int64_t ord = y * 12 + (int64_t)(m - 1);
	if (d < anchor_in(y, m, anchor_day))
		ord--;
	return ord;
}

int64_t rate_period_start(const struct rate_config *cfg, unsigned anchor_day, int64_t ord)
{
	if (cfg->period != RATE_PERIOD_MONTH)
		return ord * fixed_len_us(cfg);
	int64_t y = floor_div(ord, 12);
	unsigned m = (unsigned)(ord - y * 12) + 1;
	return rate_days_from_civil(y, m, anchor_in(y, m, anchor_day)) * RATE_US_PER_DAY;
}

int64_t rate_late_target_ord(const struct rate_config *cfg, unsigned anchor_day, int64_t ord,
			     int64_t ingest_time_us)
{
	/* Earliest Q > ord with end(Q) + grace >= ingest, i.e. Q + 1 = the first k with
	 * start(k) >= ingest - grace. */
	int64_t u = ingest_time_us - cfg->grace_us;
	int64_t o = rate_period_ord(cfg, anchor_day, u);
	int64_t q = rate_period_start(cfg, anchor_day, o) == u ? o - 1 : o;
	return q < ord + 1 ? ord + 1 : q;
}

void rate_period_bounds(const struct rate_config *cfg, unsigned anchor_day, int64_t t_us,
			int64_t *start_us, int64_t *end_us)
{
	int64_t o = rate_period_ord(cfg, anchor_day, t_us);
	*start_us = rate_period_start(cfg, anchor_day, o);
	*end_us = rate_period_start(cfg, anchor_day, o + 1);
}

int64_t rate_late_target_start(const struct rate_config *cfg, unsigned anchor_day,
			       int64_t event_time_us, int64_t ingest_time_us)
{
	int64_t o = rate_period_ord(cfg, anchor_day, event_time_us);
	return rate_period_start(cfg, anchor_day,
				 rate_late_target_ord(cfg, anchor_day, o, ingest_time_us));
}

const struct rate_customer_cfg *rate_config_customer(const struct rate_config *cfg,
						     const char *id)
{
	for (uint32_t i = 0; i < cfg->ncustomers; i++)
		if (strcmp(cfg->customers[i].id, id) == 0)
			return &cfg->customers[i];
	return NULL;
}

int rate_config_meter(const struct rate_config *cfg, const char *id)
{
	for (uint32_t i = 0; i < cfg->nmeters; i++)
		if (strcmp(cfg->meters[i].id, id) == 0)
			return (int)i;
	return -1;
}
