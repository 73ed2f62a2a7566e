/*
 * rate_engine.c — the rating engine: meters events into per-(customer, period, meter)
 * aggregates by event time, tracks the watermark, closes customer periods after the grace
 * window, prices late events as adjustments on the next open invoice, and builds invoices
 * (JSON) with provenance. Behaviour: docs/rating.md "Periods and lateness", "Invoices".
 *
 * Invariants:
 *  - watermark = min over shards of the latest ingest time read; it only grows.
 *  - A customer's periods with ordinal <= closed_through are closed: their aggregates change
 *    only by merging late events when the adjustment that carries them is priced, which
 *    happens when the target period closes (always after the source period closed, because
 *    target > source and periods close in ordinal order).
 *  - An event is late iff ingest_time > end(period) + grace. A late event's adjustment goes
 *    to the earliest period Q > its own with end(Q) + grace >= ingest_time: a pure function
 *    of the event, so results do not depend on how shards interleave, provided each shard's
 *    ingest times are non-decreasing (the WAL appends in ingest order).
 *  - A period gets an invoice iff it had an on-time metered event, carries adjustments, or
 *    a previous period of the customer got one (then every later period does: base fees).
 *  - Per event: no allocation once the customer and its period record exist (one record per
 *    customer and period; unique_count sets grow geometrically up to RATE_UNIQUE_MAX).
 * Single-threaded: one engine, one thread.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
/* Inlined XXH3: the hashed inputs here are short (customer ids, 16-byte fingerprints), where a
 * library call costs as much as the hash. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "rate_internal.h"
#include "tally/event.h"
#include "tally/rate.h"

uint64_t rate_fp_hash(struct tally_fp fp)
{
	uint8_t b[16];
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	memcpy(b, &fp.lo, 8);
	memcpy(b + 8, &fp.hi, 8);
#else
	for (int i = 0; i < 8; i++) {
		b[i] = (uint8_t)(fp.lo >> (8 * i));
		b[8 + i] = (uint8_t)(fp.hi >> (8 * i));
	}
#endif
	return XXH3_64bits(b, sizeof b);
}

/* ---- unique sets ---- */

static bool uset_has(const struct rate_uset *s, uint64_t h)
{
	if (!s)
		return false;
	for (uint32_t i = (uint32_t)h & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
		if (s->slots[i] == h)
			return true;
		if (s->slots[i] == 0)
			return false;
	}
}

static void uset_put(struct rate_uset *s, uint64_t h)
{
	uint32_t i = (uint32_t)h & (s->cap - 1);
	while (s->slots[i] != 0 && s->slots[i] != h)
		i = (i + 1) & (s->cap - 1);
	if (s->slots[i] == 0) {
		s->slots[i] = h;
		s->count++;
	}
}

/* Adds h (never 0); 1 if added, 0 if present, -ENOSPC at the cap, -ENOMEM. */
int rate_uset_add(struct rate_uset **ps, uint64_t h)
{
	struct rate_uset *s = *ps;
	if (!s) {
		s = calloc(1, sizeof *s);
		if (!s)
			return -ENOMEM;
		s->cap = 16;
		s->slots = calloc(s->cap, sizeof *s->slots);
		if (!s->slots) {
			free(s);
			return -ENOMEM;
		}
		*ps = s;
	}
	if (uset_has(s, h))
		return 0;
	if (s->count >= RATE_UNIQUE_MAX)
		return -ENOSPC;
	if ((s->count + 1) * 2 > s->cap) { /* keep load <= 1/2 */
		uint32_t ncap = s->cap * 2;
		uint64_t *ns = calloc(ncap, sizeof *ns);
		if (!ns)
			return -ENOMEM;
		struct rate_uset tmp = {.cap = ncap, .count = 0, .slots = ns};
		for (uint32_t i = 0; i < s->cap; i++)
			if (s->slots[i])
				uset_put(&tmp, s->slots[i]);
		free(s->slots);
		*s = tmp;
	}
	uset_put(s, h);
	return 1;
}

static void uset_free(struct rate_uset *s)
{
	if (s) {
		free(s->slots);
		free(s);
	}
}

/* ---- aggregates ---- */

static bool last_wins(int64_t t, uint32_t shard, uint64_t off, const struct rate_agg *a)
{
	if (t != a->last_time_us)
		return t > a->last_time_us;
	if (shard != a->last_shard)
		return shard > a->last_shard;
	return off > a->last_offset;
}

struct rate_val {
	rate_i128 num; /* RATE_QTY_SCALE */
	uint64_t uhash;
};

static void agg_apply(struct rate_engine *e, enum rate_agg_kind kind, struct rate_agg *a,
		      struct rate_range *r, const struct rate_val *v, const struct rate_record *rec,
		      uint64_t fph)
{
	switch (kind) {
	case RATE_AGG_COUNT:
	case RATE_AGG_SUM:
		if (!(a->flags & AGG_OVERFLOW) && rate_add(a->value, v->num, &a->value) != 0) {
			a->flags |= AGG_OVERFLOW;
			e->stats.overflow++;
		}
		break;
	case RATE_AGG_MAX:
		if (!(a->flags & AGG_HAS) || v->num > a->value)
			a->value = v->num;
		break;
	case RATE_AGG_LAST:
		if (!(a->flags & AGG_HAS) ||
		    last_wins(rec->ev->event_time_us, rec->shard, rec->offset, a)) {
			a->value = v->num;
			a->last_time_us = rec->ev->event_time_us;
			a->last_shard = rec->shard;
			a->last_offset = rec->offset;
		}
		break;
	case RATE_AGG_UNIQUE: {
		int rc = rate_uset_add(&a->uset, v->uhash);
		if (rc < 0 && !(a->flags & AGG_CAPPED)) {
			a->flags |= AGG_CAPPED;
			e->stats.overflow++;
		}
		a->value = a->uset ? (rate_i128)a->uset->count * rate_pow10(RATE_QTY_SCALE) : 0;
		break;
	}
	}
	a->flags |= AGG_HAS;
	a->count++;
	a->digest += fph;
	struct rate_range *rr = &r[rec->shard];
	if (rr->first == UINT64_MAX) {
		rr->first = rr->last = rec->offset;
	} else {
		if (rec->offset < rr->first)
			rr->first = rec->offset;
		if (rec->offset > rr->last)
			rr->last = rec->offset;
	}
}

/* Quantity after merging `late` into `old`, without changing either. */
static int agg_merged_qty(enum rate_agg_kind kind, const struct rate_agg *old,
			  const struct rate_agg *late, rate_i128 *out)
{
	if (!(late->flags & AGG_HAS)) {
		*out = old->value;
		return 0;
	}
	if (!(old->flags & AGG_HAS)) {
		*out = late->value;
		return 0;
	}
	switch (kind) {
	case RATE_AGG_COUNT:
	case RATE_AGG_SUM:
		return rate_add(old->value, late->value, out);
	case RATE_AGG_MAX:
		*out = late->value > old->value ? late->value : old->value;
		return 0;
	case RATE_AGG_LAST:
		*out = last_wins(late->last_time_us, late->last_shard, late->last_offset, old)
			       ? late->value
			       : old->value;
		return 0;
	case RATE_AGG_UNIQUE: {
		uint64_t n = old->uset ? old->uset->count : 0;
		if (late->uset)
			for (uint32_t i = 0; i < late->uset->cap; i++)
				if (late->uset->slots[i] && !uset_has(old->uset, late->uset->slots[i]))
					n++;
		*out = (rate_i128)n * rate_pow10(RATE_QTY_SCALE);
		return 0;
	}
	}
	return -EINVAL;
}

/* Merges late into old (old becomes the closed period's new state). */
static int agg_merge(struct rate_engine *e, enum rate_agg_kind kind, struct rate_agg *old,
		     struct rate_range *old_r, const struct rate_agg *late,
		     const struct rate_range *late_r)
{
	if (!(late->flags & AGG_HAS))
		return 0;
	rate_i128 q;
	if (agg_merged_qty(kind, old, late, &q) != 0) {
		old->flags |= AGG_OVERFLOW;
	} else {
		if (kind == RATE_AGG_LAST &&
		    (!(old->flags & AGG_HAS) ||
		     last_wins(late->last_time_us, late->last_shard, late->last_offset, old))) {
			old->last_time_us = late->last_time_us;
			old->last_shard = late->last_shard;
			old->last_offset = late->last_offset;
		}
		old->value = q;
	}
	if (kind == RATE_AGG_UNIQUE && late->uset)
		for (uint32_t i = 0; i < late->uset->cap; i++)
			if (late->uset->slots[i] && rate_uset_add(&old->uset, late->uset->slots[i]) < 0)
				old->flags |= AGG_CAPPED;
	old->flags |= AGG_HAS | (late->flags & (AGG_OVERFLOW | AGG_CAPPED));
	old->count += late->count;
	old->digest += late->digest;
	for (uint32_t s = 0; s < e->nshards; s++) {
		if (late_r[s].first == UINT64_MAX)
			continue;
		if (old_r[s].first == UINT64_MAX || late_r[s].first < old_r[s].first)
			old_r[s].first = late_r[s].first;
		if (old_r[s].last == UINT64_MAX || late_r[s].last > old_r[s].last)
			old_r[s].last = late_r[s].last;
	}
	return 0;
}

static void slots_init(struct rate_engine *e, char *slots)
{
	for (uint32_t m = 0; m < e->cfg->nmeters; m++) {
		struct rate_range *r = rate_ranges_at(e, slots, m);
		for (uint32_t sh = 0; sh < e->nshards; sh++)
			r[sh] = (struct rate_range){UINT64_MAX, UINT64_MAX};
	}
}

static int slots_alloc(struct rate_engine *e, char **slots)
{
	*slots = calloc(e->cfg->nmeters, e->slot_bytes);
	if (!*slots)
		return -ENOMEM;
	slots_init(e, *slots);
	return 0;
}

static void slots_release(struct rate_engine *e, char *slots)
{
	if (slots)
		for (uint32_t m = 0; m < e->cfg->nmeters; m++)
			uset_free(rate_agg_at(e, slots, m)->uset);
}

/* ---- customers and their periods ---- */

static int64_t cust_start(const struct rate_engine *e, const struct rate_cust *c, int64_t ord)
{
	return rate_period_start(e->cfg, c->anchor, ord);
}

/* Largest ordinal due (end + grace < watermark), RATE_ORD_NONE if nothing can be. */
static int64_t due_ord(const struct rate_engine *e, const struct rate_cust *c)
{
	if (e->watermark == INT64_MIN)
		return RATE_ORD_NONE;
	/* end(k) + grace < W  <=>  start(k+1) <= W - grace - 1  <=>  k+1 <= ord(W - grace - 1) */
	return rate_period_ord(e->cfg, c->anchor, e->watermark - e->cfg->grace_us - 1) - 1;
}

static int64_t cust_next_close(const struct rate_engine *e, const struct rate_cust *c)
{
	if (c->closed_through == RATE_ORD_NONE)
		return INT64_MIN; /* due as soon as the watermark is known */
	return cust_start(e, c, c->closed_through + 2) + e->cfg->grace_us;
}

static struct rate_cust *cust_find(struct rate_engine *e, const uint8_t *id, uint32_t len,
				   uint64_t h)
{
	for (uint32_t i = (uint32_t)h & e->ctab_mask;; i = (i + 1) & e->ctab_mask) {
		struct rate_cslot *sl = &e->ctab[i];
		if (!sl->c)
			return NULL;
		if (sl->hash == h && sl->c->id_len == len && memcmp(sl->c->id, id, len) == 0)
			return sl->c;
	}
}

static void ctab_put(struct rate_cslot *tab, uint32_t mask, struct rate_cust *c)
{
	uint32_t i = (uint32_t)c->hash & mask;
	while (tab[i].c)
		i = (i + 1) & mask;
	tab[i] = (struct rate_cslot){c->hash, c};
}

static int ctab_insert(struct rate_engine *e, struct rate_cust *c)
{
	if ((e->ncusts + 1) * 2 > e->ctab_mask + 1) { /* keep the load <= 1/2 */
		uint32_t ncap = (e->ctab_mask + 1) * 2;
		struct rate_cslot *nt = calloc(ncap, sizeof *nt);
		if (!nt)
			return -ENOMEM;
		for (uint32_t k = 0; k < e->ncusts; k++)
			ctab_put(nt, ncap - 1, e->custs[k]);
		free(e->ctab);
		e->ctab = nt;
		e->ctab_mask = ncap - 1;
	}
	ctab_put(e->ctab, e->ctab_mask, c);
	return 0;
}

int rate_cust_add(struct rate_engine *e, const uint8_t *id, uint32_t len,
		    const struct rate_customer_cfg *cfg, struct rate_cust **out)
{
	if (e->ncusts >= RATE_CUSTOMERS_MAX)
		return -ENOSPC;
	if (e->ncusts == e->custs_cap) {
		uint32_t ncap = e->custs_cap ? e->custs_cap * 2 : 64;
		struct rate_cust **n = realloc(e->custs, ncap * sizeof *n);
		if (!n)
			return -ENOMEM;
		e->custs = n;
		e->custs_cap = ncap;
	}
	/* 128-byte aligned: the hot first line and the rest of the id form one line pair. */
	struct rate_cust *c = NULL;
	if (posix_memalign((void **)&c, 128, sizeof *c) != 0)
		return -ENOMEM;
	memset(c, 0, sizeof *c);
	if (len == 0 || len > TALLY_CUSTOMER_BYTES_MAX) {
		free(c);
		return -EINVAL;
	}
	memcpy(c->id, id, len);
	c->id[len] = '\0';
	c->id_len = len;
	c->index = e->ncusts;
	c->hash = XXH3_64bits(id, len);
	c->cfg = cfg;
	c->plan = cfg && cfg->plan >= 0 ? cfg->plan : e->cfg->default_plan;
	c->anchor = cfg ? cfg->anchor_day : 1;
	c->cache_start = c->cache_end = 0;
	c->closed_through = RATE_ORD_NONE;
	if (cfg && cfg->ncredits) {
		c->credit_left = calloc(cfg->ncredits, sizeof *c->credit_left);
		if (!c->credit_left) {
			free(c);
			return -ENOMEM;
		}
		for (uint32_t i = 0; i < cfg->ncredits; i++)
			c->credit_left[i] = cfg->credits[i].amount;
	}
	e->custs[e->ncusts] = c;
	if (ctab_insert(e, c) != 0) {
		free(c->credit_left);
		free(c);
		return -ENOMEM;
	}
	e->ncusts++;
	*out = c;
	return 0;
}

static void cperiod_free(struct rate_engine *e, struct rate_cperiod *cp)
{
	if (!cp)
		return;
	slots_release(e, cp->slots); /* cp->slots is part of cp's allocation */
	for (uint32_t i = 0; i < cp->nadj; i++) {
		slots_release(e, cp->adj[i].slots);
		free(cp->adj[i].slots);
	}
	free(cp->adj);
	free(cp);
}

static struct rate_cperiod *cperiod_lookup(const struct rate_cust *c, int64_t ord)
{
	if (!c->has_records || ord < c->lo || ord >= c->lo + (int64_t)c->nords)
		return NULL;
	return c->ords[ord - c->lo];
}

/* The record of period `ord`, created if missing. -E2BIG past RATE_PERIODS_SPAN_MAX. */
int rate_cperiod_get(struct rate_engine *e, struct rate_cust *c, int64_t ord,
		       struct rate_cperiod **out)
{
	if (!c->has_records) {
		c->ords_cap = 16;
		c->ords = calloc(c->ords_cap, sizeof *c->ords);
		if (!c->ords)
			return -ENOMEM;
		c->lo = ord;
		c->nords = 1;
		c->has_records = true;
		int64_t due = due_ord(e, c);
		c->closed_through = due < ord - 1 ? due : ord - 1;
		int64_t nc = cust_next_close(e, c);
		if (nc < e->next_close_us)
			e->next_close_us = nc;
	} else if (ord < c->lo || ord >= c->lo + (int64_t)c->nords) {
		int64_t nlo = ord < c->lo ? ord : c->lo;
		int64_t nhi = ord >= c->lo + (int64_t)c->nords ? ord : c->lo + c->nords - 1;
		if (nhi - nlo + 1 > RATE_PERIODS_SPAN_MAX)
			return -E2BIG;
		uint32_t n = (uint32_t)(nhi - nlo + 1);
		if (n > c->ords_cap) {
			uint32_t ncap = c->ords_cap;
			while (ncap < n)
				ncap *= 2;
			struct rate_cperiod **no = realloc(c->ords, ncap * sizeof *no);
			if (!no)
				return -ENOMEM;
			c->ords = no;
			c->ords_cap = ncap;
		}
		uint32_t shift = (uint32_t)(c->lo - nlo);
		if (shift) {
			memmove(c->ords + shift, c->ords, c->nords * sizeof *c->ords);
			memset(c->ords, 0, shift * sizeof *c->ords);
		}
		memset(c->ords + shift + c->nords, 0, (n - shift - c->nords) * sizeof *c->ords);
		c->lo = nlo;
		c->nords = n;
	}
	struct rate_cperiod **slot = &c->ords[ord - c->lo];
	if (!*slot) {
		/* Header and slots in one 64-byte aligned block. */
		size_t head = (sizeof(struct rate_cperiod) + 63) & ~(size_t)63;
		size_t bytes = head + e->cfg->nmeters * e->slot_bytes;
		void *mem = NULL;
		if (posix_memalign(&mem, 64, bytes) != 0)
			return -ENOMEM;
		memset(mem, 0, bytes);
		struct rate_cperiod *cp = mem;
		cp->slots = (char *)mem + head;
		slots_init(e, cp->slots);
		cp->ord = ord;
		cp->closed = ord <= c->closed_through;
		*slot = cp;
	}
	*out = *slot;
	return 0;
}

int rate_adj_get(struct rate_engine *e, struct rate_cperiod *cp, int64_t src_ord,
		   struct rate_adj **out)
{
	uint32_t i = 0;
	while (i < cp->nadj && cp->adj[i].src_ord < src_ord)
		i++;
	if (i < cp->nadj && cp->adj[i].src_ord == src_ord) {
		*out = &cp->adj[i];
		return 0;
	}
	if (cp->nadj == cp->adj_cap) {
		uint32_t ncap = cp->adj_cap ? cp->adj_cap * 2 : 2;
		struct rate_adj *na = realloc(cp->adj, ncap * sizeof *na);
		if (!na)
			return -ENOMEM;
		cp->adj = na;
		cp->adj_cap = ncap;
	}
	struct rate_adj a = {.src_ord = src_ord};
	if (slots_alloc(e, &a.slots) != 0)
		return -ENOMEM;
	memmove(cp->adj + i + 1, cp->adj + i, (cp->nadj - i) * sizeof *cp->adj);
	cp->adj[i] = a;
	cp->nadj++;
	*out = &cp->adj[i];
	return 0;
}

/* ---- metering ---- */

/* 10^(18 - scale) for scale 0..18. */
static const int64_t qty_factor[RATE_QTY_SCALE + 1] = {
	1000000000000000000LL, 100000000000000000LL, 10000000000000000LL, 1000000000000000LL,
	100000000000000LL,     10000000000000LL,     1000000000000LL,     100000000000LL,
	10000000000LL,         1000000000LL,         100000000LL,         10000000LL,
	1000000LL,             100000LL,             10000LL,             1000LL,
	100LL,                 10LL,                 1LL};

/* A numeric property at RATE_QTY_SCALE. Never overflows: |i64| * 10^18 < 9.3e36 < 2^127. */
static bool prop_num(const struct tally_prop *p, rate_i128 *out)
{
	if (p->kind == TALLY_VALUE_INT) {
		*out = (rate_i128)p->i64 * qty_factor[0];
		return true;
	}
	if (p->kind == TALLY_VALUE_DECIMAL && p->scale <= RATE_QTY_SCALE) {
		*out = (rate_i128)p->i64 * qty_factor[p->scale];
		return true;
	}
	return false;
}

static bool value_match(const struct tally_prop *p, const struct rate_value *v)
{
	if (v->is_string)
		return p->kind == TALLY_VALUE_STRING && p->str.len == v->str_len &&
		       memcmp(p->str.ptr, v->str, v->str_len) == 0;
	rate_i128 n;
	return prop_num(p, &n) && n == v->num;
}

static bool filters_pass(const struct rate_meter *m, const struct tally_event *ev)
{
	for (uint32_t i = 0; i < m->nfilters; i++) {
		const struct rate_filter *f = &m->filters[i];
		struct tally_prop p;
		bool found = event_prop_find(ev, f->property, f->property_len, &p);
		bool any = false;
		for (uint32_t k = 0; found && k < f->nvalues && !any; k++)
			any = value_match(&p, &f->values[k]);
		if (f->op == RATE_FILTER_NOT_EQUALS ? any : !any)
			return false;
	}
	return true;
}

static bool meter_value(const struct rate_meter *m, const struct tally_event *ev,
			struct rate_val *v)
{
	struct tally_prop p;
	if (m->agg == RATE_AGG_COUNT) {
		v->num = qty_factor[0]; /* one unit */
		return true;
	}
	if (!event_prop_find(ev, m->property, m->property_len, &p))
		return false;
	if (m->agg == RATE_AGG_UNIQUE) {
		rate_i128 n;
		if (prop_num(&p, &n))
			v->uhash = XXH3_64bits_withSeed(&n, sizeof n, 1);
		else
			v->uhash = XXH3_64bits_withSeed(p.str.ptr, p.str.len, 2);
		if (v->uhash == 0)
			v->uhash = 1;
		return true;
	}
	return prop_num(&p, &v->num);
}

static const struct rate_name *name_find(const struct rate_engine *e, struct tally_view n)
{
	for (uint32_t i = 0; i < e->nnames; i++)
		if (e->names[i].len == n.len && memcmp(e->names[i].name, n.ptr, n.len) == 0)
			return &e->names[i];
	return NULL;
}

static int late_push(struct rate_engine *e, const struct rate_late *l)
{
	if (e->nlate == e->late_cap) {
		size_t ncap = e->late_cap ? e->late_cap * 2 : 64;
		struct rate_late *n = realloc(e->late, ncap * sizeof *n);
		if (!n)
			return -ENOMEM;
		e->late = n;
		e->late_cap = ncap;
	}
	e->late[e->nlate++] = *l;
	return 0;
}

/* h: XXH3-64 of the event's customer id. */
static int process_event(struct rate_engine *e, const struct rate_record *rec, uint64_t h)
{
	const struct tally_event *ev = rec->ev;
	const struct rate_config *cfg = e->cfg;
	e->stats.events++;
	struct rate_cust *c = cust_find(e, ev->customer.ptr, ev->customer.len, h);
	int rc;
	if (!c && (rc = rate_cust_add(e, ev->customer.ptr, ev->customer.len, NULL, &c)) != 0)
		return rc;
	struct tally_fp fp = rec->has_fp ? rec->fp : event_fingerprint(rec->tenant, ev->key);
	uint64_t fph = rate_fp_hash(fp);
	if (c->plan < 0) {
		if (c->unbilled_count == 0 || ev->event_time_us < c->unbilled_first_us)
			c->unbilled_first_us = ev->event_time_us;
		if (c->unbilled_count == 0 || ev->event_time_us > c->unbilled_last_us)
			c->unbilled_last_us = ev->event_time_us;
		c->unbilled_count++;
		c->unbilled_digest += fph;
		e->stats.unbilled++;
		return 0;
	}
	const struct rate_name *nm = name_find(e, ev->name);
	uint8_t ms[RATE_METERS_MAX];
	struct rate_val vals[RATE_METERS_MAX];
	uint32_t n = 0;
	uint64_t mask = 0;
	for (uint32_t i = 0; nm && i < nm->nm; i++) {
		const struct rate_meter *m = &cfg->meters[nm->m[i]];
		if (!filters_pass(m, ev))
			continue;
		if (!meter_value(m, ev, &vals[n])) {
			e->stats.bad_value++;
			continue;
		}
		ms[n++] = nm->m[i];
		mask |= 1ull << nm->m[i];
	}
	if (n == 0) {
		e->stats.unmetered++;
		return 0;
	}
	e->stats.metered++;

	int64_t t = ev->event_time_us;
	if (t < c->cache_start || t >= c->cache_end || c->cache_end == 0) {
		c->cache_ord = rate_period_ord(cfg, c->anchor, t);
		c->cache_start = cust_start(e, c, c->cache_ord);
		c->cache_end = cust_start(e, c, c->cache_ord + 1);
		c->cache_slots = NULL; /* the cached record belongs to cache_ord only */
	}
	int64_t ord = c->cache_ord;
	bool late = rec->ingest_time_us > c->cache_end + cfg->grace_us ||
		    (c->has_records && ord <= c->closed_through);
	struct rate_cperiod *cp;
	char *slots;
	if (!late) {
		/* cache_slots is set only once its record is marked on time, so the common case
		 * reads nothing but the customer's first cache line and the meter's slot. */
		if (!c->cache_slots) {
			if ((rc = rate_cperiod_get(e, c, ord, &cp)) != 0)
				goto out_range;
			cp->ontime = true;
			c->cache_slots = cp->slots;
		}
		slots = c->cache_slots;
	} else {
		e->stats.late++;
		struct rate_late l = {.cust = c->index,
				      .shard = rec->shard,
				      .offset = rec->offset,
				      .event_time_us = t,
				      .ingest_time_us = rec->ingest_time_us,
				      .src_ord = ord,
				      .target_ord = RATE_ORD_NONE,
				      .meters = mask,
				      .fp = fp};
		if (cfg->late_policy == RATE_LATE_REPORT_ONLY)
			return late_push(e, &l);
		int64_t q = rate_late_target_ord(cfg, c->anchor, ord, rec->ingest_time_us);
		if (c->has_records && q <= c->closed_through)
			q = c->closed_through + 1; /* only if a shard's ingest times went back */
		l.target_ord = q;
		if ((rc = rate_cperiod_get(e, c, q, &cp)) != 0)
			goto out_range;
		struct rate_adj *adj;
		if ((rc = rate_adj_get(e, cp, ord, &adj)) != 0)
			return rc;
		if ((rc = late_push(e, &l)) != 0)
			return rc;
		slots = adj->slots;
	}
	for (uint32_t i = 0; i < n; i++)
		agg_apply(e, cfg->meters[ms[i]].agg, rate_agg_at(e, slots, ms[i]),
			  rate_ranges_at(e, slots, ms[i]), &vals[i], rec, fph);
	return 0;
out_range:
	if (rc == -E2BIG) {
		e->stats.out_of_range++;
		return 0;
	}
	return rc;
}

bool rate_meter_matches(const struct rate_config *cfg, uint32_t meter,
			const struct tally_event *ev)
{
	const struct rate_meter *m = &cfg->meters[meter];
	struct rate_val v;
	return m->event_name_len == ev->name.len &&
	       memcmp(m->event_name, ev->name.ptr, ev->name.len) == 0 && filters_pass(m, ev) &&
	       meter_value(m, ev, &v);
}

/* ---- invoices ---- */

static json_t *jdec(rate_i128 v, unsigned scale, unsigned min_frac)
{
	char b[RATE_DEC_STR_MAX];
	if (rate_dec_format(v, scale, min_frac, b, sizeof b) < 0)
		return json_string("?");
	return json_string(b);
}

static json_t *jtime(int64_t us)
{
	char b[RATE_TIME_STR_MAX];
	rate_time_format(us, b);
	return json_string(b);
}

static json_t *jhex64(uint64_t v)
{
	char b[20];
	snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
	return json_string(b);
}

static const char *const agg_names[] = {"count", "sum", "max", "last", "unique_count"};
static const char *const model_names[] = {"per_unit", "graduated", "volume", "package"};

static json_t *provenance_json(const struct rate_engine *e, const struct rate_agg *a,
			       const struct rate_range *r)
{
	json_t *p = json_object(), *wal = json_array();
	json_object_set_new(p, "events", json_integer((json_int_t)a->count));
	json_object_set_new(p, "fingerprint_digest", jhex64(a->digest));
	for (uint32_t s = 0; s < e->nshards; s++) {
		if (r[s].first == UINT64_MAX)
			continue;
		json_t *o = json_object();
		json_object_set_new(o, "shard", json_integer(s));
		json_object_set_new(o, "first_offset", json_integer((json_int_t)r[s].first));
		json_object_set_new(o, "last_offset", json_integer((json_int_t)r[s].last));
		json_array_append_new(wal, o);
	}
	json_object_set_new(p, "wal", wal);
	return p;
}

/* Adds the priced charge's fields to line `l`. */
static void charge_json(const struct rate_engine *e, json_t *l, const struct rate_price *price,
			const struct rate_charge *ch)
{
	unsigned mu = e->cfg->minor_units;
	json_object_set_new(l, "model", json_string(model_names[price->model]));
	json_object_set_new(l, "free_units", jdec(ch->free_units, RATE_QTY_SCALE, 0));
	json_object_set_new(l, "billable_quantity", jdec(ch->billable, RATE_QTY_SCALE, 0));
	if (price->model == RATE_MODEL_PER_UNIT || price->model == RATE_MODEL_PACKAGE)
		json_object_set_new(l, "unit_price", jdec(price->unit_price, RATE_PRICE_SCALE, 0));
	if (price->model == RATE_MODEL_PACKAGE) {
		json_object_set_new(l, "package_size", jdec(price->package_size, RATE_QTY_SCALE, 0));
		json_object_set_new(l, "packages", jdec(ch->packages, 0, 0));
	}
	json_t *tiers = json_array();
	for (uint32_t i = 0; i < ch->nparts; i++) {
		const struct rate_part *p = &ch->parts[i];
		json_t *t = json_object();
		if (price->model == RATE_MODEL_GRADUATED || price->model == RATE_MODEL_VOLUME) {
			json_object_set_new(t, "from", jdec(p->from, RATE_QTY_SCALE, 0));
			json_object_set_new(t, "to", p->unbounded ? json_null()
								  : jdec(p->to, RATE_QTY_SCALE, 0));
		}
		json_object_set_new(t, "quantity", jdec(p->quantity, RATE_QTY_SCALE, 0));
		json_object_set_new(t, "unit_price", jdec(p->unit_price, RATE_PRICE_SCALE, 0));
		json_object_set_new(t, "amount_exact", jdec(p->amount, ch->amount_scale, mu));
		json_array_append_new(tiers, t);
	}
	json_object_set_new(l, "tiers", tiers);
	json_object_set_new(l, "amount_exact", jdec(ch->exact, ch->amount_scale, mu));
}

static int credit_cmp_key(const struct rate_credit *a, uint32_t ia, const struct rate_credit *b,
			  uint32_t ib)
{
	if (a->priority != b->priority)
		return a->priority < b->priority ? -1 : 1;
	if (a->expires_us != b->expires_us)
		return a->expires_us < b->expires_us ? -1 : 1;
	return ia < ib ? -1 : ia > ib;
}

/*
 * Ends an invoice or adjustment line: its error (lerr, counted as an overflow when the line is
 * committed), its amount added to *usage (a total overflow is an error too), and the amount.
 */
static void line_amount(struct rate_engine *e, json_t *l, const char *lerr, bool commit,
			rate_i128 amount, unsigned mu, rate_i128 *usage, bool *err)
{
	if (lerr) {
		json_object_set_new(l, "error", json_string(lerr));
		*err = true;
		e->stats.overflow += commit;
	}
	if (rate_add(*usage, amount, usage) != 0) {
		json_object_set_new(l, "error", json_string("total overflow"));
		*err = true;
	}
	json_object_set_new(l, "amount", jdec(amount, mu, mu));
}

/*
 * Builds the invoice of period cp. commit = true at close: late adjustments are merged into
 * their source periods and credits are burned; false for usage.json previews (no changes).
 * Returns 0 or -ENOMEM; money errors (overflow, negative quantity) are reported in the lines.
 */
static int build_invoice(struct rate_engine *e, struct rate_cust *c, struct rate_cperiod *cp,
			 bool commit, json_t **out)
{
	const struct rate_config *cfg = e->cfg;
	unsigned mu = cfg->minor_units;
	int64_t start = cust_start(e, c, cp->ord), end = cust_start(e, c, cp->ord + 1);
	json_t *inv = json_object(), *lines = json_array(), *adjs = json_array();
	rate_i128 usage = 0;
	bool err = false;
	int rc = 0;

	json_object_set_new(inv, "format", json_string("tally-invoice-1"));
	json_object_set_new(inv, "customer", json_string(c->id));
	json_object_set_new(inv, "plan", json_string(cfg->plans[c->plan].id));
	json_object_set_new(inv, "currency", json_string(cfg->currency));
	json_object_set_new(inv, "period_start", jtime(start));
	json_object_set_new(inv, "period_end", jtime(end));

	for (uint32_t m = 0; m < cfg->nmeters; m++) {
		const struct rate_agg *a = rate_agg_at(e, cp->slots, m);
		const char *src;
		const struct rate_price *price = rate_price_resolve(cfg, c->cfg, c->plan, m, start, &src);
		if (!price && a->count == 0)
			continue;
		json_t *l = json_object();
		json_object_set_new(l, "meter", json_string(cfg->meters[m].id));
		json_object_set_new(l, "aggregation", json_string(agg_names[cfg->meters[m].agg]));
		json_object_set_new(l, "quantity", jdec(a->value, RATE_QTY_SCALE, 0));
		json_object_set_new(l, "price_source", json_string(src));
		rate_i128 amount = 0;
		const char *lerr = NULL;
		if (a->flags & AGG_OVERFLOW)
			lerr = "quantity overflow";
		else if (a->flags & AGG_CAPPED)
			lerr = "unique_count set cap reached";
		else if (price) {
			struct rate_charge ch;
			int crc = rate_charge_compute(price, a->value, mu, cfg->rounding, &ch);
			if (crc == 0) {
				charge_json(e, l, price, &ch);
				amount = ch.amount;
			} else {
				lerr = crc == -ERANGE ? "amount overflow" : "negative quantity";
			}
		}
		line_amount(e, l, lerr, commit, amount, mu, &usage, &err);
		json_object_set_new(l, "provenance",
				    provenance_json(e, a, rate_ranges_at(e, cp->slots, m)));
		json_array_append_new(lines, l);
	}

	for (uint32_t i = 0; i < cp->nadj; i++) {
		struct rate_adj *adj = &cp->adj[i];
		struct rate_cperiod *sp = cperiod_lookup(c, adj->src_ord);
		if (commit && !sp && (rc = rate_cperiod_get(e, c, adj->src_ord, &sp)) != 0)
			goto out;
		int64_t sstart = cust_start(e, c, adj->src_ord);
		for (uint32_t m = 0; m < cfg->nmeters; m++) {
			const struct rate_agg *la = rate_agg_at(e, adj->slots, m);
			if (la->count == 0)
				continue;
			struct rate_agg zero = {0};
			const struct rate_agg *old = sp ? rate_agg_at(e, sp->slots, m) : &zero;
			const char *src;
			const struct rate_price *price =
				rate_price_resolve(cfg, c->cfg, c->plan, m, sstart, &src);
			rate_i128 q_after, amount = 0;
			const char *lerr = NULL;
			json_t *l = json_object();
			json_object_set_new(l, "meter", json_string(cfg->meters[m].id));
			json_object_set_new(l, "late_period_start", jtime(sstart));
			json_object_set_new(l, "price_source", json_string(src));
			if (agg_merged_qty(cfg->meters[m].agg, old, la, &q_after) != 0 ||
			    ((old->flags | la->flags) & (AGG_OVERFLOW | AGG_CAPPED))) {
				lerr = "quantity overflow";
				q_after = old->value;
			}
			json_object_set_new(l, "quantity_before", jdec(old->value, RATE_QTY_SCALE, 0));
			json_object_set_new(l, "quantity_after", jdec(q_after, RATE_QTY_SCALE, 0));
			if (!lerr && price) {
				struct rate_charge before, after;
				int r1 = rate_charge_compute(price, old->value, mu, cfg->rounding, &before);
				int r2 = rate_charge_compute(price, q_after, mu, cfg->rounding, &after);
				if (r1 == 0 && r2 == 0) {
					amount = after.amount - before.amount;
					json_object_set_new(l, "model", json_string(model_names[price->model]));
					json_object_set_new(l, "amount_before", jdec(before.amount, mu, mu));
					json_object_set_new(l, "amount_after", jdec(after.amount, mu, mu));
				} else {
					lerr = (r1 == -ERANGE || r2 == -ERANGE) ? "amount overflow"
										 : "negative quantity";
				}
			}
			line_amount(e, l, lerr, commit, amount, mu, &usage, &err);
			json_object_set_new(l, "provenance",
					    provenance_json(e, la, rate_ranges_at(e, adj->slots, m)));
			json_array_append_new(adjs, l);
			if (commit)
				agg_merge(e, cfg->meters[m].agg, rate_agg_at(e, sp->slots, m),
					  rate_ranges_at(e, sp->slots, m), la,
					  rate_ranges_at(e, adj->slots, m));
		}
	}

	rate_i128 base = rate_round(cfg->plans[c->plan].base_fee, RATE_PRICE_SCALE - mu, cfg->rounding);

	/* Credits burn on usage (lines + adjustments), never on the base fee; by priority, then
	 * earliest expiry, then config order. A credit is usable iff it expires at or after the
	 * period end. */
	json_t *credits = json_array();
	rate_i128 burned = 0;
	if (c->cfg && usage > 0) {
		const struct rate_customer_cfg *cc = c->cfg;
		uint32_t order[RATE_CREDITS_MAX];
		for (uint32_t i = 0; i < cc->ncredits; i++) {
			uint32_t k = i;
			while (k > 0 && credit_cmp_key(&cc->credits[i], i, &cc->credits[order[k - 1]],
						       order[k - 1]) < 0) {
				order[k] = order[k - 1];
				k--;
			}
			order[k] = i;
		}
		rate_i128 owed = usage;
		for (uint32_t k = 0; k < cc->ncredits && owed > 0; k++) {
			uint32_t i = order[k];
			const struct rate_credit *cr = &cc->credits[i];
			if (cr->expires_us < end || c->credit_left[i] <= 0)
				continue;
			rate_i128 b = c->credit_left[i] < owed ? c->credit_left[i] : owed;
			owed -= b;
			burned += b;
			json_t *o = json_object();
			json_object_set_new(o, "credit", json_integer(i));
			json_object_set_new(o, "priority", json_integer(cr->priority));
			json_object_set_new(o, "expires", cr->expires_us == INT64_MAX ? json_null()
										: jtime(cr->expires_us));
			json_object_set_new(o, "applied", jdec(b, mu, mu));
			json_object_set_new(o, "remaining", jdec(c->credit_left[i] - b, mu, mu));
			json_array_append_new(credits, o);
			if (commit)
				c->credit_left[i] -= b;
		}
	}
	rate_i128 subtotal = 0, total = 0;
	if (rate_add(base, usage, &subtotal) != 0)
		err = true;
	total = subtotal - burned;
	json_object_set_new(inv, "lines", lines);
	json_object_set_new(inv, "adjustments", adjs);
	json_object_set_new(inv, "base_fee", jdec(base, mu, mu));
	json_object_set_new(inv, "usage_total", jdec(usage, mu, mu));
	json_object_set_new(inv, "subtotal", jdec(subtotal, mu, mu));
	json_object_set_new(inv, "credits_applied", credits);
	json_object_set_new(inv, "credits_total", jdec(burned, mu, mu));
	json_object_set_new(inv, "total", jdec(total, mu, mu));
	json_object_set_new(inv, "errors", json_boolean(err));
	*out = inv;
	return 0;
out:
	json_decref(inv);
	json_decref(lines);
	json_decref(adjs);
	return rc;
}

#define RATE_JSON_FLAGS (JSON_SORT_KEYS | JSON_INDENT(2) | JSON_ENSURE_ASCII)

/* Customer id as one path component: [A-Za-z0-9_-] and non-leading '.' kept, else %XX. */
static void path_escape(const char *id, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; id[i] && o + 4 < cap; i++) {
		unsigned char ch = (unsigned char)id[i];
		bool keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			    (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' || (ch == '.' && i > 0);
		if (keep)
			out[o++] = (char)ch;
		else
			o += (size_t)snprintf(out + o, cap - o, "%%%02X", ch);
	}
	out[o] = '\0';
}

static int close_one(struct rate_engine *e, struct rate_cust *c, int64_t ord)
{
	struct rate_cperiod *cp = cperiod_lookup(c, ord);
	int rc;
	bool want = c->started || (cp && (cp->ontime || cp->nadj));
	if (!want) {
		if (cp)
			cp->closed = true;
		return 0;
	}
	if (!cp && (rc = rate_cperiod_get(e, c, ord, &cp)) != 0) {
		if (rc != -E2BIG)
			return rc;
		/* An idle customer past RATE_PERIODS_SPAN_MAX periods (tiny {"seconds": N}
		 * periods): no base-fee-only invoice, counted, and rating goes on. */
		e->stats.out_of_range++;
		return 0;
	}
	/* Every source period of an adjustment gets its record now, so that committing below
	 * cannot fail half-way. */
	for (uint32_t i = 0; i < cp->nadj; i++) {
		struct rate_cperiod *sp;
		if ((rc = rate_cperiod_get(e, c, cp->adj[i].src_ord, &sp)) != 0)
			return rc;
	}
	/* The document first, without changing any state: if it cannot be written, nothing was
	 * committed (credits, merges) and the close is simply retried later. */
	json_t *inv;
	if ((rc = build_invoice(e, c, cp, false, &inv)) != 0)
		return rc;
	char *txt = json_dumps(inv, RATE_JSON_FLAGS);
	json_decref(inv);
	if (!txt)
		return -ENOMEM;
	size_t len = strlen(txt);
	char *buf = realloc(txt, len + 2);
	if (!buf) {
		free(txt);
		return -ENOMEM;
	}
	buf[len++] = '\n';
	buf[len] = '\0';
	int64_t start = cust_start(e, c, ord);
	if (e->out_dir) {
		char esc[TALLY_CUSTOMER_BYTES_MAX * 3 + 1], t[RATE_TIME_STR_MAX], path[4096];
		path_escape(c->id, esc, sizeof esc);
		int64_t y;
		unsigned mo, d;
		int64_t days = start / RATE_US_PER_DAY, secs = (start % RATE_US_PER_DAY) / 1000000;
		rate_civil_from_days(days, &y, &mo, &d);
		snprintf(t, sizeof t, "%04lld%02u%02uT%02d%02d%02dZ", (long long)y, mo, d,
			 (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60));
		snprintf(path, sizeof path, "%s/invoices/%s/%s.json", e->out_dir, esc, t);
		rc = rate_write_atomic(path, buf, len, !e->opts.no_fsync);
	}
	if (rc == 0 && e->opts.on_invoice)
		rc = e->opts.on_invoice(e->opts.ctx, c->id, start, buf, len);
	free(buf);
	if (rc != 0)
		return rc;
	/* Written: now commit what the document says (burn credits, merge late units into their
	 * closed periods). Same inputs, so the same figures. */
	if ((rc = build_invoice(e, c, cp, true, &inv)) != 0)
		return rc;
	json_decref(inv);
	c->started = true;
	cp->closed = true;
	e->stats.invoices++;
	return 0;
}

static int close_due(struct rate_engine *e)
{
	int64_t next = INT64_MAX;
	for (uint32_t k = 0; k < e->ncusts; k++) {
		struct rate_cust *c = e->custs[k];
		if (!c->has_records)
			continue;
		int64_t due = due_ord(e, c);
		int64_t o = c->closed_through + 1;
		while (o <= due) {
			if (!c->started && o < c->lo) {
				o = c->lo <= due ? c->lo : due + 1;
				c->closed_through = o - 1;
				continue;
			}
			if (!c->started && o >= c->lo + (int64_t)c->nords) {
				c->closed_through = due;
				break;
			}
			int rc = close_one(e, c, o);
			if (rc != 0)
				return rc;
			c->closed_through = o;
			o++;
		}
		int64_t nc = cust_next_close(e, c);
		if (nc < next)
			next = nc;
	}
	e->next_close_us = next;
	return 0;
}

void rate_engine_recompute_next_close(struct rate_engine *e)
{
	int64_t next = INT64_MAX;
	for (uint32_t k = 0; k < e->ncusts; k++) {
		if (!e->custs[k]->has_records)
			continue;
		int64_t nc = cust_next_close(e, e->custs[k]);
		if (nc < next)
			next = nc;
	}
	e->next_close_us = next;
}

/* ---- public ---- */

int rate_engine_create(const struct rate_config *cfg, const struct rate_engine_opts *opts,
		       struct rate_engine **out)
{
	*out = NULL;
	if (!opts || opts->shards == 0 || opts->shards > RATE_SHARDS_MAX)
		return -EINVAL;
	struct rate_engine *e = calloc(1, sizeof *e);
	if (!e)
		return -ENOMEM;
	e->cfg = cfg;
	e->opts = *opts;
	e->nshards = opts->shards;
	/* Rounded to a cache line so that every aggregate starts one (its ranges follow). */
	e->slot_bytes = (sizeof(struct rate_agg) + e->nshards * sizeof(struct rate_range) + 63) &
			~(size_t)63;
	e->watermark = INT64_MIN;
	e->next_close_us = INT64_MAX;
	int rc = -ENOMEM;
	if (opts->out_dir && !(e->out_dir = strdup(opts->out_dir)))
		goto out_free;
	e->opts.out_dir = e->out_dir;
	if (!(e->shard_latest = malloc(e->nshards * sizeof *e->shard_latest)))
		goto out_free;
	for (uint32_t s = 0; s < e->nshards; s++)
		e->shard_latest[s] = INT64_MIN;
	e->ctab_mask = 1023;
	if (!(e->ctab = calloc(e->ctab_mask + 1, sizeof *e->ctab)))
		goto out_free;
	for (uint32_t m = 0; m < cfg->nmeters; m++) {
		struct tally_view v = {(const uint8_t *)cfg->meters[m].event_name,
				       cfg->meters[m].event_name_len};
		struct rate_name *nm = (struct rate_name *)name_find(e, v);
		if (!nm) {
			nm = &e->names[e->nnames++];
			nm->name = cfg->meters[m].event_name;
			nm->len = v.len;
		}
		nm->m[nm->nm++] = (uint8_t)m;
	}
	for (uint32_t i = 0; i < cfg->ncustomers; i++) {
		struct rate_cust *c;
		const struct rate_customer_cfg *cc = &cfg->customers[i];
		if ((rc = rate_cust_add(e, (const uint8_t *)cc->id, cc->id_len, cc, &c)) != 0)
			goto out_free;
	}
	*out = e;
	return 0;
out_free:
	rate_engine_destroy(e);
	return rc;
}

void rate_engine_destroy(struct rate_engine *e)
{
	if (!e)
		return;
	for (uint32_t k = 0; k < e->ncusts; k++) {
		struct rate_cust *c = e->custs[k];
		for (uint32_t i = 0; i < c->nords; i++)
			cperiod_free(e, c->ords[i]);
		free(c->ords);
		free(c->credit_left);
		free(c);
	}
	free(e->custs);
	free(e->ctab);
	free(e->late);
	free(e->shard_latest);
	free(e->out_dir);
	free(e);
}

static int feed_one(struct rate_engine *e, const struct rate_record *rec, uint64_t h)
{
	if (rec->shard >= e->nshards)
		return -EINVAL;
	if (rec->ev) {
		int rc = process_event(e, rec, h);
		if (rc != 0)
			return rc;
	}
	int64_t prev = e->shard_latest[rec->shard];
	if (rec->ingest_time_us <= prev)
		return 0;
	e->shard_latest[rec->shard] = rec->ingest_time_us;
	if (prev != e->watermark)
		return 0; /* this shard was not the minimum: the watermark cannot move */
	int64_t w = INT64_MAX;
	for (uint32_t s = 0; s < e->nshards; s++)
		if (e->shard_latest[s] < w)
			w = e->shard_latest[s];
	e->watermark = w;
	if (w > e->next_close_us || (w != INT64_MIN && prev == INT64_MIN))
		return close_due(e);
	return 0;
}

static uint64_t customer_hash(const struct rate_record *rec)
{
	return rec->ev ? XXH3_64bits(rec->ev->customer.ptr, rec->ev->customer.len) : 0;
}

int rate_engine_feed(struct rate_engine *e, const struct rate_record *rec)
{
	return feed_one(e, rec, customer_hash(rec));
}

/* The customer whose slot matches hash h, without comparing ids (a prefetch hint only). */
static struct rate_cust *cust_hint(const struct rate_engine *e, uint64_t h)
{
	for (uint32_t i = (uint32_t)h & e->ctab_mask;; i = (i + 1) & e->ctab_mask) {
		const struct rate_cslot *sl = &e->ctab[i];
		if (!sl->c || sl->hash == h)
			return sl->c;
	}
}

int rate_engine_feed_batch(struct rate_engine *e, const struct rate_record *recs, size_t n,
			   size_t *fed)
{
	if (fed)
		*fed = 0;
	uint64_t h[RATE_BATCH_MAX];
	struct rate_cust *hint[RATE_BATCH_MAX];
	for (size_t base = 0; base < n; base += RATE_BATCH_MAX) {
		size_t k = n - base < RATE_BATCH_MAX ? n - base : RATE_BATCH_MAX;
		const struct rate_record *r = recs + base;
		/* Three passes of prefetches, each using what the previous one brought in: the
		 * table slots, then the customers, then the meters' slots of their current period.
		 * The records are then fed exactly as one by one. */
		for (size_t i = 0; i < k; i++) {
			h[i] = customer_hash(&r[i]);
			__builtin_prefetch(&e->ctab[(uint32_t)h[i] & e->ctab_mask]);
		}
		for (size_t i = 0; i < k; i++) {
			hint[i] = r[i].ev ? cust_hint(e, h[i]) : NULL;
			if (hint[i])
				__builtin_prefetch(hint[i]);
		}
		for (size_t i = 0; i < k; i++) {
			if (!hint[i] || !hint[i]->cache_slots)
				continue;
			const struct rate_name *nm = name_find(e, r[i].ev->name);
			for (uint32_t m = 0; nm && m < nm->nm; m++)
				__builtin_prefetch(rate_agg_at(e, hint[i]->cache_slots, nm->m[m]), 1);
		}
		for (size_t i = 0; i < k; i++) {
			int rc = feed_one(e, &r[i], h[i]);
			if (rc != 0)
				return rc;
			if (fed)
				(*fed)++;
		}
	}
	return 0;
}

void rate_event_rebase(struct tally_event *dst, const struct tally_event *src, uint8_t *body)
{
	const uint8_t *b = src->body.ptr;
	memcpy(body, b, src->body.len);
	*dst = *src;
	dst->body.ptr = body;
	dst->key.ptr = body + (src->key.ptr - b);
	dst->customer.ptr = body + (src->customer.ptr - b);
	dst->name.ptr = body + (src->name.ptr - b);
	dst->props.ptr = body + (src->props.ptr - b);
}

int rate_engine_tick(struct rate_engine *e, uint32_t shard, int64_t ingest_time_us)
{
	struct rate_record r = {.ev = NULL, .shard = shard, .ingest_time_us = ingest_time_us};
	return rate_engine_feed(e, &r);
}

int64_t rate_engine_watermark(const struct rate_engine *e)
{
	return e->watermark;
}

void rate_engine_stats(const struct rate_engine *e, struct rate_stats *out)
{
	*out = e->stats;
}

static int cust_cmp(const void *a, const void *b)
{
	const struct rate_cust *x = *(const struct rate_cust *const *)a,
			       *y = *(const struct rate_cust *const *)b;
	size_t n = x->id_len < y->id_len ? x->id_len : y->id_len;
	int r = memcmp(x->id, y->id, n);
	return r ? r : (x->id_len > y->id_len) - (x->id_len < y->id_len);
}

static struct rate_engine *late_sort_engine; /* qsort has no context argument in C17 */

static int late_cmp(const void *a, const void *b)
{
	const struct rate_late *x = a, *y = b;
	int r = cust_cmp(&late_sort_engine->custs[x->cust], &late_sort_engine->custs[y->cust]);
	if (r)
		return r;
	if (x->event_time_us != y->event_time_us)
		return x->event_time_us < y->event_time_us ? -1 : 1;
	if (x->shard != y->shard)
		return x->shard < y->shard ? -1 : 1;
	return (x->offset > y->offset) - (x->offset < y->offset);
}

static int dump_to(json_t *doc, const char *dir, const char *name, bool sync)
{
	char path[4096];
	char *txt = json_dumps(doc, RATE_JSON_FLAGS);
	json_decref(doc);
	if (!txt)
		return -ENOMEM;
	size_t len = strlen(txt);
	char *buf = realloc(txt, len + 2);
	if (!buf) {
		free(txt);
		return -ENOMEM;
	}
	buf[len++] = '\n';
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int rc = rate_write_atomic(path, buf, len, sync);
	free(buf);
	return rc;
}

int rate_engine_write_reports(struct rate_engine *e, const char *dir)
{
	const struct rate_config *cfg = e->cfg;
	late_sort_engine = e;
	if (e->nlate)
		qsort(e->late, e->nlate, sizeof *e->late, late_cmp);
	json_t *doc = json_object(), *arr = json_array();
	for (size_t i = 0; i < e->nlate; i++) {
		const struct rate_late *l = &e->late[i];
		const struct rate_cust *c = e->custs[l->cust];
		json_t *o = json_object(), *ms = json_array();
		char fp[40];
		snprintf(fp, sizeof fp, "%016llx%016llx", (unsigned long long)l->fp.hi,
			 (unsigned long long)l->fp.lo);
		json_object_set_new(o, "customer", json_string(c->id));
		json_object_set_new(o, "event_time", jtime(l->event_time_us));
		json_object_set_new(o, "ingest_time", jtime(l->ingest_time_us));
		json_object_set_new(o, "period_start", jtime(cust_start(e, c, l->src_ord)));
		json_object_set_new(o, "adjusted_in_period_start",
				    l->target_ord == RATE_ORD_NONE ? json_null()
								   : jtime(cust_start(e, c, l->target_ord)));
		json_object_set_new(o, "shard", json_integer(l->shard));
		json_object_set_new(o, "offset", json_integer((json_int_t)l->offset));
		json_object_set_new(o, "fingerprint", json_string(fp));
		for (uint32_t m = 0; m < cfg->nmeters; m++)
			if (l->meters & (1ull << m))
				json_array_append_new(ms, json_string(cfg->meters[m].id));
		json_object_set_new(o, "meters", ms);
		json_array_append_new(arr, o);
	}
	json_object_set_new(doc, "late_policy", json_string(cfg->late_policy == RATE_LATE_ADJUST_NEXT
								   ? "adjust_next"
								   : "report_only"));
	json_object_set_new(doc, "late_events", arr);
	int rc = dump_to(doc, dir, "late_arrivals.json", !e->opts.no_fsync);
	if (rc != 0)
		return rc;

	struct rate_cust **sorted = malloc((e->ncusts + 1) * sizeof *sorted);
	if (!sorted)
		return -ENOMEM;
	if (e->ncusts) /* custs is NULL before the first customer: memcpy(NULL) is UB */
		memcpy(sorted, e->custs, e->ncusts * sizeof *sorted);
	qsort(sorted, e->ncusts, sizeof *sorted, cust_cmp);
	doc = json_object();
	arr = json_array();
	for (uint32_t k = 0; k < e->ncusts; k++) {
		const struct rate_cust *c = sorted[k];
		if (c->unbilled_count == 0)
			continue;
		json_t *o = json_object();
		json_object_set_new(o, "customer", json_string(c->id));
		json_object_set_new(o, "events", json_integer((json_int_t)c->unbilled_count));
		json_object_set_new(o, "fingerprint_digest", jhex64(c->unbilled_digest));
		json_object_set_new(o, "first_event_time", jtime(c->unbilled_first_us));
		json_object_set_new(o, "last_event_time", jtime(c->unbilled_last_us));
		json_array_append_new(arr, o);
	}
	free(sorted);
	json_object_set_new(doc, "reason", json_string("customer has no plan and there is no default_plan"));
	json_object_set_new(doc, "customers", arr);
	return dump_to(doc, dir, "unbilled.json", !e->opts.no_fsync);
}

int rate_engine_usage_json(struct rate_engine *e, char **json, size_t *len)
{
	struct rate_cust **sorted = malloc((e->ncusts + 1) * sizeof *sorted);
	if (!sorted)
		return -ENOMEM;
	if (e->ncusts) /* custs is NULL before the first customer: memcpy(NULL) is UB */
		memcpy(sorted, e->custs, e->ncusts * sizeof *sorted);
	qsort(sorted, e->ncusts, sizeof *sorted, cust_cmp);
	json_t *doc = json_object(), *arr = json_array();
	int rc = 0;
	for (uint32_t k = 0; k < e->ncusts && rc == 0; k++) {
		struct rate_cust *c = sorted[k];
		for (uint32_t i = 0; i < c->nords && rc == 0; i++) {
			struct rate_cperiod *cp = c->ords[i];
			if (!cp || cp->closed || cp->ord <= c->closed_through ||
			    !(cp->ontime || cp->nadj))
				continue;
			json_t *inv;
			if ((rc = build_invoice(e, c, cp, false, &inv)) == 0)
				json_array_append_new(arr, inv);
		}
	}
	free(sorted);
	json_object_set_new(doc, "watermark",
			    e->watermark == INT64_MIN ? json_null() : jtime(e->watermark));
	json_object_set_new(doc, "open_periods", arr);
	if (rc != 0) {
		json_decref(doc);
		return rc;
	}
	*json = json_dumps(doc, RATE_JSON_FLAGS);
	json_decref(doc);
	if (!*json)
		return -ENOMEM;
	*len = strlen(*json);
	return 0;
}
