/*
 * rate_config.c — parses and validates the rating configuration (JSON, via jansson) into a
 * struct rate_config. The accepted shape is specified in docs/rating.md "Configuration".
 *
 * Invariants of a parsed config: every index (price -> meter, customer -> plan, default
 * plan) is in range; ids are unique within their list; tiers are strictly increasing with
 * an unbounded last tier; every amount is an exact fixed-point value (prices at 12 digits,
 * quantities at 18, credits at the currency's minor unit). Any field the parser does not
 * know is an error, so typos do not silently change a bill.
 * Errors name the field path: "plans[0].prices[1].tiers[2].unit_price: not a decimal string".
 * Runs at start-up only; allocates freely; any thread.
 */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rate_internal.h"
#include "tally/event.h"
#include "tally/rate.h"

#define RATE_PATH_MAX     256
#define RATE_GRACE_MAX_S  (366LL * 86400)
#define RATE_PERIOD_MAX_S (366LL * 86400)

struct pctx {
	char path[RATE_PATH_MAX];
	size_t plen;
	char *err;
	size_t err_cap;
	struct rate_config *cfg;
};

static void push_key(struct pctx *c, const char *k)
{
	int n = snprintf(c->path + c->plen, sizeof c->path - c->plen, "%s%s", c->plen ? "." : "",
			 k);
	if (n > 0)
		c->plen = c->plen + (size_t)n < sizeof c->path ? c->plen + (size_t)n
							      : sizeof c->path - 1;
}

static void push_idx(struct pctx *c, size_t i)
{
	int n = snprintf(c->path + c->plen, sizeof c->path - c->plen, "[%zu]", i);
	if (n > 0)
		c->plen = c->plen + (size_t)n < sizeof c->path ? c->plen + (size_t)n
							      : sizeof c->path - 1;
}

static void pop_to(struct pctx *c, size_t len)
{
	c->plen = len;
	c->path[len] = '\0';
}

__attribute__((format(printf, 2, 3))) static int fail(struct pctx *c, const char *fmt, ...)
{
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (c->err && c->err_cap)
		snprintf(c->err, c->err_cap, "%s: %s", c->plen ? c->path : "(config)", msg);
	return -EINVAL;
}

/* Fails if obj has a key outside allowed[] (NULL-terminated). */
static int check_keys(struct pctx *c, json_t *obj, const char *const *allowed)
{
	const char *key;
	json_t *v;
	json_object_foreach(obj, key, v)
	{
		bool ok = false;
		for (size_t i = 0; allowed[i]; i++)
			if (strcmp(allowed[i], key) == 0)
				ok = true;
		if (!ok) {
			size_t mark = c->plen;
			push_key(c, key);
			int rc = fail(c, "unknown field");
			pop_to(c, mark);
			return rc;
		}
	}
	return 0;
}

/* Runs f on member `key` with the path extended; absent members are passed as NULL. */
#define WITH_KEY(c, key, stmt)                                                                     \
	do {                                                                                       \
		size_t mark_ = (c)->plen;                                                          \
		push_key((c), (key));                                                              \
		rc = (stmt);                                                                       \
		pop_to((c), mark_);                                                                \
	} while (0)

static int get_string(struct pctx *c, json_t *v, size_t max_len, bool required, char **out,
		      uint32_t *out_len)
{
	*out = NULL;
	if (out_len)
		*out_len = 0;
	if (!v || json_is_null(v))
		return required ? fail(c, "missing") : 0;
	if (!json_is_string(v))
		return fail(c, "not a string");
	size_t len = json_string_length(v);
	const char *s = json_string_value(v);
	if (len == 0 || len > max_len)
		return fail(c, "length must be 1..%zu bytes", max_len);
	if (memchr(s, '\0', len))
		return fail(c, "contains a NUL byte");
	*out = strndup(s, len);
	if (!*out)
		return -ENOMEM;
	if (out_len)
		*out_len = (uint32_t)len;
	return 0;
}

/* A decimal given as a string (always allowed) or a JSON integer (when allow_int). */
static int get_dec(struct pctx *c, json_t *v, unsigned scale, bool allow_int, bool required,
		   rate_i128 dflt, rate_i128 *out)
{
	*out = dflt;
	if (!v || json_is_null(v))
		return required ? fail(c, "missing") : 0;
	if (allow_int && json_is_integer(v)) {
		if (rate_upscale(json_integer_value(v), 0, scale, out) != 0)
			return fail(c, "out of range");
		return 0;
	}
	if (!json_is_string(v))
		return fail(c, allow_int ? "not an integer or a decimal string"
					 : "not a decimal string");
	int rc = rate_dec_parse(json_string_value(v), json_string_length(v), scale, out);
	if (rc == -EDOM)
		return fail(c, "more than %u fractional digits", scale);
	if (rc == -ERANGE)
		return fail(c, "out of range");
	if (rc != 0)
		return fail(c, allow_int ? "not an integer or a decimal string"
					 : "not a decimal string");
	return 0;
}

static int get_int(struct pctx *c, json_t *v, long long lo, long long hi, long long dflt,
		   long long *out)
{
	*out = dflt;
	if (!v)
		return 0;
	if (!json_is_integer(v))
		return fail(c, "not an integer");
	long long x = json_integer_value(v);
	if (x < lo || x > hi)
		return fail(c, "must be %lld..%lld", lo, hi);
	*out = x;
	return 0;
}

static int get_time(struct pctx *c, json_t *v, bool required, int64_t dflt, int64_t *out)
{
	*out = dflt;
	if (!v || json_is_null(v))
		return required ? fail(c, "missing") : 0;
	if (!json_is_string(v) || rate_time_parse(json_string_value(v), out) != 0)
		return fail(c, "not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC)");
	return 0;
}

static int get_enum(struct pctx *c, json_t *v, const char *const *names, int dflt, int *out)
{
	*out = dflt;
	if (!v)
		return dflt >= 0 ? 0 : fail(c, "missing");
	if (json_is_string(v))
		for (int i = 0; names[i]; i++)
			if (strcmp(names[i], json_string_value(v)) == 0) {
				*out = i;
				return 0;
			}
	char list[160] = "";
	for (int i = 0; names[i]; i++) {
		strncat(list, i ? " | " : "", sizeof list - strlen(list) - 1);
		strncat(list, names[i], sizeof list - strlen(list) - 1);
	}
	return fail(c, "must be one of %s", list);
}

static int get_array(struct pctx *c, json_t *v, size_t max, bool required, size_t *n)
{
	*n = 0;
	if (!v)
		return required ? fail(c, "missing") : 0;
	if (!json_is_array(v))
		return fail(c, "not an array");
	if (json_array_size(v) > max)
		return fail(c, "more than %zu entries", max);
	*n = json_array_size(v);
	return 0;
}

static int meter_index(const struct rate_config *cfg, const char *id)
{
	for (uint32_t i = 0; i < cfg->nmeters; i++)
		if (strcmp(cfg->meters[i].id, id) == 0)
			return (int)i;
	return -1;
}

static int plan_index(const struct rate_config *cfg, const char *id)
{
	for (uint32_t i = 0; i < cfg->nplans; i++)
		if (strcmp(cfg->plans[i].id, id) == 0)
			return (int)i;
	return -1;
}

/* ---- meters ---- */

static int parse_value(struct pctx *c, json_t *v, struct rate_value *out)
{
	memset(out, 0, sizeof *out);
	if (json_is_string(v)) {
		out->is_string = true;
		if (json_string_length(v) > TALLY_PROP_STRING_BYTES_MAX)
			return fail(c, "string longer than %d bytes", TALLY_PROP_STRING_BYTES_MAX);
		out->str_len = (uint32_t)json_string_length(v);
		out->str = malloc(out->str_len + 1);
		if (!out->str)
			return -ENOMEM;
		memcpy(out->str, json_string_value(v), out->str_len + 1);
		return 0;
	}
	if (json_is_integer(v)) {
		if (rate_upscale(json_integer_value(v), 0, RATE_QTY_SCALE, &out->num) != 0)
			return fail(c, "out of range");
		return 0;
	}
	return fail(c, "not a string or an integer (decimals: use a number-free string match)");
}

static int parse_filter(struct pctx *c, json_t *f, struct rate_filter *out)
{
	static const char *const keys[] = {"property", "equals", "not_equals", "in", NULL};
	int rc;
	if (!json_is_object(f))
		return fail(c, "not an object");
	if ((rc = check_keys(c, f, keys)) != 0)
		return rc;
	WITH_KEY(c, "property",
		 get_string(c, json_object_get(f, "property"), TALLY_PROP_KEY_BYTES_MAX, true,
			    &out->property, &out->property_len));
	if (rc)
		return rc;
	json_t *eq = json_object_get(f, "equals"), *ne = json_object_get(f, "not_equals"),
	       *in = json_object_get(f, "in");
	if ((eq != NULL) + (ne != NULL) + (in != NULL) != 1)
		return fail(c, "exactly one of equals, not_equals, in is required");
	if (in) {
		size_t n;
		out->op = RATE_FILTER_IN;
		WITH_KEY(c, "in", get_array(c, in, RATE_FILTER_VALUES_MAX, true, &n));
		if (rc)
			return rc;
		if (n == 0) {
			WITH_KEY(c, "in", fail(c, "empty"));
			return rc;
		}
		for (size_t i = 0; i < n; i++) {
			size_t mark = c->plen;
			push_key(c, "in");
			push_idx(c, i);
			rc = parse_value(c, json_array_get(in, i), &out->values[i]);
			pop_to(c, mark);
			if (rc)
				return rc;
			out->nvalues++;
		}
		return 0;
	}
	out->op = eq ? RATE_FILTER_EQUALS : RATE_FILTER_NOT_EQUALS;
	out->nvalues = 1;
	WITH_KEY(c, eq ? "equals" : "not_equals", parse_value(c, eq ? eq : ne, &out->values[0]));
	return rc;
}

static int parse_meter(struct pctx *c, json_t *m, struct rate_meter *out)
{
	static const char *const keys[] = {"id", "event_name", "aggregation", "property",
					   "filter", NULL};
	static const char *const aggs[] = {"count", "sum", "max", "last", "unique_count", NULL};
	int rc, agg;
	if (!json_is_object(m))
		return fail(c, "not an object");
	if ((rc = check_keys(c, m, keys)) != 0)
		return rc;
	WITH_KEY(c, "id", get_string(c, json_object_get(m, "id"), RATE_ID_BYTES_MAX, true,
				     &out->id, NULL));
	if (rc)
		return rc;
	if (meter_index(c->cfg, out->id) >= 0) {
		WITH_KEY(c, "id", fail(c, "duplicate meter id \"%s\"", out->id));
		return rc;
	}
	WITH_KEY(c, "event_name",
		 get_string(c, json_object_get(m, "event_name"), TALLY_NAME_BYTES_MAX, true,
			    &out->event_name, &out->event_name_len));
	if (rc)
		return rc;
	for (uint32_t i = 0; i < out->event_name_len; i++)
		if (!event_name_char_ok((uint8_t)out->event_name[i])) {
			WITH_KEY(c, "event_name", fail(c, "character outside [A-Za-z0-9._:-]"));
			return rc;
		}
	WITH_KEY(c, "aggregation", get_enum(c, json_object_get(m, "aggregation"), aggs, -1, &agg));
	if (rc)
		return rc;
	out->agg = (enum rate_agg_kind)agg;
	WITH_KEY(c, "property",
		 get_string(c, json_object_get(m, "property"), TALLY_PROP_KEY_BYTES_MAX,
			    out->agg != RATE_AGG_COUNT, &out->property, &out->property_len));
	if (rc)
		return rc;
	if (out->agg == RATE_AGG_COUNT && out->property) {
		WITH_KEY(c, "property", fail(c, "not used by aggregation count"));
		return rc;
	}
	json_t *fl = json_object_get(m, "filter");
	size_t n;
	WITH_KEY(c, "filter", get_array(c, fl, RATE_FILTERS_MAX, false, &n));
	if (rc)
		return rc;
	for (size_t i = 0; i < n; i++) {
		size_t mark = c->plen;
		push_key(c, "filter");
		push_idx(c, i);
		rc = parse_filter(c, json_array_get(fl, i), &out->filters[i]);
		pop_to(c, mark);
		if (rc)
			return rc;
		out->nfilters++;
	}
	return 0;
}

/* ---- prices ---- */

static int parse_tiers(struct pctx *c, json_t *arr, struct rate_price *p)
{
	static const char *const keys[] = {"up_to", "unit_price", NULL};
	size_t n;
	int rc = get_array(c, arr, RATE_TIERS_MAX, true, &n);
	if (rc)
		return rc;
	if (n == 0)
		return fail(c, "empty");
	for (size_t i = 0; i < n; i++) {
		size_t mark = c->plen;
		push_idx(c, i);
		json_t *t = json_array_get(arr, i);
		struct rate_tier *tier = &p->tiers[i];
		if (!json_is_object(t)) {
			rc = fail(c, "not an object");
			goto out;
		}
		if ((rc = check_keys(c, t, keys)) != 0)
			goto out;
		json_t *up = json_object_get(t, "up_to");
		if (!up) {
			WITH_KEY(c, "up_to", fail(c, "missing (null for the last tier)"));
			goto out;
		}
		tier->unbounded = json_is_null(up);
		WITH_KEY(c, "up_to", get_dec(c, up, RATE_QTY_SCALE, true, false, 0, &tier->up_to));
		if (rc)
			goto out;
		if (tier->unbounded && i + 1 != n) {
			WITH_KEY(c, "up_to", fail(c, "null only in the last tier"));
			goto out;
		}
		if (!tier->unbounded && i + 1 == n) {
			WITH_KEY(c, "up_to", fail(c, "the last tier must have \"up_to\": null"));
			goto out;
		}
		if (!tier->unbounded &&
		    (tier->up_to <= 0 || (i > 0 && tier->up_to <= p->tiers[i - 1].up_to))) {
			WITH_KEY(c, "up_to", fail(c, "must be greater than the previous tier's"));
			goto out;
		}
		WITH_KEY(c, "unit_price", get_dec(c, json_object_get(t, "unit_price"),
						  RATE_PRICE_SCALE, false, true, 0,
						  &tier->unit_price));
		if (rc)
			goto out;
		if (tier->unit_price < 0) {
			WITH_KEY(c, "unit_price", fail(c, "negative"));
			goto out;
		}
		p->ntiers++;
	out:
		pop_to(c, mark);
		if (rc)
			return rc;
	}
	return 0;
}

static int parse_price(struct pctx *c, json_t *j, struct rate_price *p)
{
	static const char *const keys[] = {"meter", "model", "unit_price", "free_units",
					   "tiers", "package_size", NULL};
	static const char *const models[] = {"per_unit", "graduated", "volume", "package", NULL};
	int rc, model;
	char *meter = NULL;
	if (!json_is_object(j))
		return fail(c, "not an object");
	if ((rc = check_keys(c, j, keys)) != 0)
		return rc;
	WITH_KEY(c, "meter",
		 get_string(c, json_object_get(j, "meter"), RATE_ID_BYTES_MAX, true, &meter, NULL));
	if (rc)
		return rc;
	int mi = meter_index(c->cfg, meter);
	free(meter);
	if (mi < 0) {
		WITH_KEY(c, "meter", fail(c, "no such meter"));
		return rc;
	}
	p->meter = (uint32_t)mi;
	WITH_KEY(c, "model", get_enum(c, json_object_get(j, "model"), models, -1, &model));
	if (rc)
		return rc;
	p->model = (enum rate_model)model;
	WITH_KEY(c, "free_units", get_dec(c, json_object_get(j, "free_units"), RATE_QTY_SCALE,
					  true, false, 0, &p->free_units));
	if (rc)
		return rc;
	if (p->free_units < 0) {
		WITH_KEY(c, "free_units", fail(c, "negative"));
		return rc;
	}
	bool tiered = p->model == RATE_MODEL_GRADUATED || p->model == RATE_MODEL_VOLUME;
	json_t *up = json_object_get(j, "unit_price"), *tiers = json_object_get(j, "tiers"),
	       *ps = json_object_get(j, "package_size");
	if (tiered) {
		if (up) {
			WITH_KEY(c, "unit_price", fail(c, "not used by a tiered model (use tiers)"));
			return rc;
		}
		WITH_KEY(c, "tiers", parse_tiers(c, tiers, p));
		if (rc)
			return rc;
	} else {
		if (tiers) {
			WITH_KEY(c, "tiers", fail(c, "only for graduated and volume"));
			return rc;
		}
		WITH_KEY(c, "unit_price",
			 get_dec(c, up, RATE_PRICE_SCALE, false, true, 0, &p->unit_price));
		if (rc)
			return rc;
		if (p->unit_price < 0) {
			WITH_KEY(c, "unit_price", fail(c, "negative"));
			return rc;
		}
	}
	if (p->model == RATE_MODEL_PACKAGE) {
		WITH_KEY(c, "package_size",
			 get_dec(c, ps, RATE_QTY_SCALE, true, true, 0, &p->package_size));
		if (rc)
			return rc;
		if (p->package_size <= 0) {
			WITH_KEY(c, "package_size", fail(c, "must be positive"));
			return rc;
		}
	} else if (ps) {
		WITH_KEY(c, "package_size", fail(c, "only for package"));
		return rc;
	}
	return 0;
}

static int parse_price_set(struct pctx *c, json_t *arr, struct rate_price_set *set)
{
	size_t n;
	int rc = get_array(c, arr, RATE_PRICES_MAX, false, &n);
	if (rc || n == 0)
		return rc;
	set->prices = calloc(n, sizeof *set->prices);
	if (!set->prices)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		size_t mark = c->plen;
		push_idx(c, i);
		rc = parse_price(c, json_array_get(arr, i), &set->prices[i]);
		if (rc == 0)
			for (uint32_t k = 0; k < set->count; k++)
				if (set->prices[k].meter == set->prices[i].meter) {
					push_key(c, "meter");
					rc = fail(c, "meter priced twice in the same list");
				}
		pop_to(c, mark);
		if (rc)
			return rc;
		set->count++;
	}
	return 0;
}

static int parse_plan(struct pctx *c, json_t *j, struct rate_plan *p)
{
	static const char *const keys[] = {"id", "base_fee", "prices", NULL};
	int rc;
	if (!json_is_object(j))
		return fail(c, "not an object");
	if ((rc = check_keys(c, j, keys)) != 0)
		return rc;
	WITH_KEY(c, "id",
		 get_string(c, json_object_get(j, "id"), RATE_ID_BYTES_MAX, true, &p->id, NULL));
	if (rc)
		return rc;
	if (plan_index(c->cfg, p->id) >= 0) {
		WITH_KEY(c, "id", fail(c, "duplicate plan id \"%s\"", p->id));
		return rc;
	}
	WITH_KEY(c, "base_fee", get_dec(c, json_object_get(j, "base_fee"), RATE_PRICE_SCALE, false,
					false, 0, &p->base_fee));
	if (rc)
		return rc;
	if (p->base_fee < 0) {
		WITH_KEY(c, "base_fee", fail(c, "negative"));
		return rc;
	}
	WITH_KEY(c, "prices", parse_price_set(c, json_object_get(j, "prices"), &p->prices));
	return rc;
}

/* ---- customers ---- */

static int parse_contract(struct pctx *c, json_t *j, struct rate_contract *k)
{
	static const char *const keys[] = {"from", "to", "prices", NULL};
	int rc;
	if (!json_is_object(j))
		return fail(c, "not an object");
	if ((rc = check_keys(c, j, keys)) != 0)
		return rc;
	WITH_KEY(c, "from", get_time(c, json_object_get(j, "from"), true, 0, &k->from_us));
	if (rc)
		return rc;
	WITH_KEY(c, "to", get_time(c, json_object_get(j, "to"), false, INT64_MAX, &k->to_us));
	if (rc)
		return rc;
	if (k->to_us <= k->from_us) {
		WITH_KEY(c, "to", fail(c, "not after from"));
		return rc;
	}
	WITH_KEY(c, "prices", parse_price_set(c, json_object_get(j, "prices"), &k->prices));
	return rc;
}

static int parse_credit(struct pctx *c, json_t *j, struct rate_credit *k)
{
	static const char *const keys[] = {"amount", "expires", "priority", NULL};
	int rc;
	long long prio;
	if (!json_is_object(j))
		return fail(c, "not an object");
	if ((rc = check_keys(c, j, keys)) != 0)
		return rc;
	WITH_KEY(c, "amount", get_dec(c, json_object_get(j, "amount"), c->cfg->minor_units, false,
				      true, 0, &k->amount));
	if (rc)
		return rc;
	if (k->amount < 0) {
		WITH_KEY(c, "amount", fail(c, "negative"));
		return rc;
	}
	WITH_KEY(c, "expires",
		 get_time(c, json_object_get(j, "expires"), false, INT64_MAX, &k->expires_us));
	if (rc)
		return rc;
	WITH_KEY(c, "priority",
		 get_int(c, json_object_get(j, "priority"), -1000000, 1000000, 0, &prio));
	k->priority = prio;
	return rc;
}

static int parse_customer(struct pctx *c, json_t *j, struct rate_customer_cfg *cu)
{
	static const char *const keys[] = {"id", "plan", "billing_anchor_day", "prices",
					   "contracts", "credits", NULL};
	int rc;
	long long anchor;
	char *plan = NULL;
	size_t n;
	if (!json_is_object(j))
		return fail(c, "not an object");
	if ((rc = check_keys(c, j, keys)) != 0)
		return rc;
	WITH_KEY(c, "id", get_string(c, json_object_get(j, "id"), TALLY_CUSTOMER_BYTES_MAX, true,
				     &cu->id, &cu->id_len));
	if (rc)
		return rc;
	if (!event_utf8_valid((const uint8_t *)cu->id, cu->id_len)) {
		WITH_KEY(c, "id", fail(c, "not valid UTF-8"));
		return rc;
	}
	for (uint32_t i = 0; i < c->cfg->ncustomers; i++)
		if (strcmp(c->cfg->customers[i].id, cu->id) == 0) {
			WITH_KEY(c, "id", fail(c, "duplicate customer id \"%s\"", cu->id));
			return rc;
		}
	cu->plan = -1;
	WITH_KEY(c, "plan",
		 get_string(c, json_object_get(j, "plan"), RATE_ID_BYTES_MAX, false, &plan, NULL));
	if (rc)
		return rc;
	if (plan) {
		cu->plan = plan_index(c->cfg, plan);
		free(plan);
		if (cu->plan < 0) {
			WITH_KEY(c, "plan", fail(c, "no such plan"));
			return rc;
		}
	}
	WITH_KEY(c, "billing_anchor_day",
		 get_int(c, json_object_get(j, "billing_anchor_day"), 1, 31, 1, &anchor));
	if (rc)
		return rc;
	cu->anchor_day = (uint32_t)anchor;
	WITH_KEY(c, "prices", parse_price_set(c, json_object_get(j, "prices"), &cu->prices));
	if (rc)
		return rc;
	json_t *ks = json_object_get(j, "contracts");
	WITH_KEY(c, "contracts", get_array(c, ks, RATE_CONTRACTS_MAX, false, &n));
	if (rc)
		return rc;
	if (n && !(cu->contracts = calloc(n, sizeof *cu->contracts)))
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		size_t mark = c->plen;
		push_key(c, "contracts");
		push_idx(c, i);
		rc = parse_contract(c, json_array_get(ks, i), &cu->contracts[i]);
		pop_to(c, mark);
		cu->ncontracts++; /* counted even on failure so that free releases its prices */
		if (rc)
			return rc;
	}
	json_t *cr = json_object_get(j, "credits");
	WITH_KEY(c, "credits", get_array(c, cr, RATE_CREDITS_MAX, false, &n));
	if (rc)
		return rc;
	if (n && !(cu->credits = calloc(n, sizeof *cu->credits)))
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		size_t mark = c->plen;
		push_key(c, "credits");
		push_idx(c, i);
		rc = parse_credit(c, json_array_get(cr, i), &cu->credits[i]);
		pop_to(c, mark);
		if (rc)
			return rc;
		cu->ncredits++;
	}
	return 0;
}

/* ---- top level ---- */

static int parse_period(struct pctx *c, json_t *v, struct rate_config *cfg)
{
	static const char *const names[] = {"month", "day", "hour", NULL};
	int rc, k;
	cfg->period = RATE_PERIOD_MONTH;
	if (!v)
		return 0;
	if (json_is_object(v)) {
		static const char *const keys[] = {"seconds", NULL};
		long long s;
		if ((rc = check_keys(c, v, keys)) != 0)
			return rc;
		if (!json_object_get(v, "seconds")) {
			WITH_KEY(c, "seconds", fail(c, "missing"));
			return rc;
		}
		WITH_KEY(c, "seconds",
			 get_int(c, json_object_get(v, "seconds"), 1, RATE_PERIOD_MAX_S, 0, &s));
		cfg->period = RATE_PERIOD_SECONDS;
		cfg->period_us = s * 1000000LL;
		return rc;
	}
	if (!json_is_string(v))
		return fail(c, "must be one of month | day | hour | {\"seconds\": N}");
	rc = get_enum(c, v, names, -1, &k);
	if (rc)
		return fail(c, "must be one of month | day | hour | {\"seconds\": N}");
	cfg->period = (enum rate_period_kind)k;
	return 0;
}

static int parse_root(struct pctx *c, json_t *root)
{
	static const char *const keys[] = {"currency",  "minor_units", "period",   "grace_seconds",
					   "rounding",  "late_policy", "meters",   "plans",
					   "customers", "default_plan", NULL};
	static const char *const roundings[] = {"half_even", "half_up", NULL};
	static const char *const policies[] = {"adjust_next", "report_only", NULL};
	struct rate_config *cfg = c->cfg;
	int rc, k;
	long long x;
	size_t n;
	if (!json_is_object(root))
		return fail(c, "not a JSON object");
	if ((rc = check_keys(c, root, keys)) != 0)
		return rc;

	json_t *cur = json_object_get(root, "currency");
	if (!cur || !json_is_string(cur) || json_string_length(cur) != 3) {
		WITH_KEY(c, "currency", fail(c, "must be a 3-letter ISO 4217 code"));
		return rc;
	}
	memcpy(cfg->currency, json_string_value(cur), 4);
	int minor = rate_currency_minor_units(cfg->currency);
	json_t *mu = json_object_get(root, "minor_units");
	if (mu) {
		WITH_KEY(c, "minor_units", get_int(c, mu, 0, 6, 0, &x));
		if (rc)
			return rc;
		minor = (int)x;
	} else if (minor < 0) {
		WITH_KEY(c, "currency", fail(c, "unknown currency: set \"minor_units\""));
		return rc;
	}
	cfg->minor_units = (unsigned)minor;
	WITH_KEY(c, "period", parse_period(c, json_object_get(root, "period"), cfg));
	if (rc)
		return rc;
	WITH_KEY(c, "grace_seconds",
		 get_int(c, json_object_get(root, "grace_seconds"), 0, RATE_GRACE_MAX_S, 0, &x));
	if (rc)
		return rc;
	cfg->grace_us = x * 1000000LL;
	WITH_KEY(c, "rounding", get_enum(c, json_object_get(root, "rounding"), roundings, 0, &k));
	if (rc)
		return rc;
	cfg->rounding = (enum rate_rounding)k;
	WITH_KEY(c, "late_policy",
		 get_enum(c, json_object_get(root, "late_policy"), policies, 0, &k));
	if (rc)
		return rc;
	cfg->late_policy = (enum rate_late_policy)k;

	json_t *ms = json_object_get(root, "meters");
	WITH_KEY(c, "meters", get_array(c, ms, RATE_METERS_MAX, true, &n));
	if (rc)
		return rc;
	if (n == 0) {
		WITH_KEY(c, "meters", fail(c, "empty"));
		return rc;
	}
	if (!(cfg->meters = calloc(n, sizeof *cfg->meters)))
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		size_t mark = c->plen;
		push_key(c, "meters");
		push_idx(c, i);
		rc = parse_meter(c, json_array_get(ms, i), &cfg->meters[i]);
		pop_to(c, mark);
		cfg->nmeters++; /* counted even on failure so that free releases it */
		if (rc)
			return rc;
	}

	json_t *ps = json_object_get(root, "plans");
	WITH_KEY(c, "plans", get_array(c, ps, RATE_PLANS_MAX, false, &n));
	if (rc)
		return rc;
	if (n && !(cfg->plans = calloc(n, sizeof *cfg->plans)))
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		size_t mark = c->plen;
		push_key(c, "plans");
		push_idx(c, i);
		rc = parse_plan(c, json_array_get(ps, i), &cfg->plans[i]);
		pop_to(c, mark);
		cfg->nplans++;
		if (rc)
			return rc;
	}

	json_t *cs = json_object_get(root, "customers");
	WITH_KEY(c, "customers", get_array(c, cs, RATE_CUSTOMERS_MAX, false, &n));
	if (rc)
		return rc;
	if (n && !(cfg->customers = calloc(n, sizeof *cfg->customers)))
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		size_t mark = c->plen;
		push_key(c, "customers");
		push_idx(c, i);
		rc = parse_customer(c, json_array_get(cs, i), &cfg->customers[i]);
		pop_to(c, mark);
		cfg->ncustomers++;
		if (rc)
			return rc;
	}

	cfg->default_plan = -1;
	json_t *dp = json_object_get(root, "default_plan");
	if (dp && !json_is_null(dp)) {
		if (!json_is_string(dp) || (cfg->default_plan = plan_index(cfg, json_string_value(dp))) < 0) {
			WITH_KEY(c, "default_plan", fail(c, "no such plan"));
			return rc;
		}
	}
	return 0;
}

static void free_set(struct rate_price_set *s)
{
	free(s->prices);
}

void rate_config_free(struct rate_config *cfg)
{
	if (!cfg)
		return;
	for (uint32_t i = 0; i < cfg->nmeters; i++) {
		struct rate_meter *m = &cfg->meters[i];
		free(m->id);
		free(m->event_name);
		free(m->property);
		for (uint32_t f = 0; f < RATE_FILTERS_MAX; f++) {
			free(m->filters[f].property);
			for (uint32_t v = 0; v < RATE_FILTER_VALUES_MAX; v++)
				free(m->filters[f].values[v].str);
		}
	}
	free(cfg->meters);
	for (uint32_t i = 0; i < cfg->nplans; i++) {
		free(cfg->plans[i].id);
		free_set(&cfg->plans[i].prices);
	}
	free(cfg->plans);
	for (uint32_t i = 0; i < cfg->ncustomers; i++) {
		struct rate_customer_cfg *cu = &cfg->customers[i];
		free(cu->id);
		free_set(&cu->prices);
		for (uint32_t k = 0; k < cu->ncontracts; k++)
			free_set(&cu->contracts[k].prices);
		free(cu->contracts);
		free(cu->credits);
	}
	free(cfg->customers);
	free(cfg);
}

int rate_config_parse(const char *json, size_t len, struct rate_config **out, char *err,
		      size_t err_cap)
{
	struct pctx c = {.err = err, .err_cap = err_cap};
	json_error_t jerr;
	*out = NULL;
	if (err && err_cap)
		err[0] = '\0';
	json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		if (err && err_cap)
			snprintf(err, err_cap, "(config): JSON error at line %d column %d: %s",
				 jerr.line, jerr.column, jerr.text);
		return -EINVAL;
	}
	c.cfg = calloc(1, sizeof *c.cfg);
	if (!c.cfg) {
		json_decref(root);
		return -ENOMEM;
	}
	int rc = parse_root(&c, root);
	json_decref(root);
	if (rc != 0) {
		if (rc == -ENOMEM && err && err_cap)
			snprintf(err, err_cap, "(config): out of memory");
		rate_config_free(c.cfg);
		return rc;
	}
	*out = c.cfg;
	return 0;
}

int rate_config_load(const char *path, struct rate_config **out, char *err, size_t err_cap)
{
	*out = NULL;
	FILE *f = fopen(path, "rb");
	if (!f) {
		int e = errno;
		snprintf(err, err_cap, "%s: %s", path, strerror(e));
		return -e;
	}
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int rc = 0;
	for (;;) {
		if (cap - len < 65536) {
			if (cap > (64u << 20)) {
				snprintf(err, err_cap, "%s: larger than 64 MiB", path);
				rc = -EFBIG;
				goto out;
			}
			cap = cap ? cap * 2 : 65536;
			char *nb = realloc(buf, cap);
			if (!nb) {
				rc = -ENOMEM;
				goto out;
			}
			buf = nb;
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0)
			break;
	}
	if (ferror(f)) {
		snprintf(err, err_cap, "%s: read error", path);
		rc = -EIO;
		goto out;
	}
	rc = rate_config_parse(buf, len, out, err, err_cap);
out:
	free(buf);
	fclose(f);
	return rc;
}
