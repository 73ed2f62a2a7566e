/*
 * bench/bench_gen.c — deterministic workload generator for tally-bench (see bench_gen.h for
 * the model). Two kinds of randomness:
 *   - a sequential xoshiro256** per stream decides the kind of each event and which earlier
 *     fresh event a dup/conflict refers to;
 *   - a counter-based splitmix64 seeded from (stream seed, fresh index) draws every field of
 *     a fresh event, so fresh event j can be rebuilt at any time, byte for byte.
 * No clock, no rand(), no heap except the Zipf table. One thread per generator.
 */
#include "bench_gen.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN 0x9E3779B97F4A7C15ull

uint64_t bench_gen_mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xBF58476D1CE4E5B9ull;
	x ^= x >> 27;
	x *= 0x94D049BB133111EBull;
	x ^= x >> 31;
	return x;
}

/* splitmix64 step: state advances by the golden gamma, output is the mix. */
static uint64_t sm_next(uint64_t *state)
{
	*state += GOLDEN;
	return bench_gen_mix64(*state);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t xo_next(uint64_t s[4])
{
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

/* Uniform in [0, n) for n >= 1 (multiply-shift; bias < n / 2^64, irrelevant here). */
static uint64_t below(uint64_t r, uint64_t n)
{
	return (uint64_t)(((unsigned __int128)r * n) >> 64);
}

/* ---------------------------------------------------------------- event mix tables */

enum { T_API = 0, T_AI, T_SMS, T_IMAGE, T_STORAGE, T_COUNT_ };

static const struct {
	const char *name;
	uint32_t weight_pm;
} mix[T_COUNT_] = {
	{"api.call", 550}, {"ai.tokens", 250}, {"sms.sent", 100},
	{"image.generated", 50}, {"storage.snapshot", 50},
};

static const char *const endpoints[] = {"/v1/charges", "/v1/customers", "/v1/search",
					"/v1/embeddings", "/v2/orders", "/v1/files",
					"/v1/invoices", "/v2/payments/intents"};
static const char *const methods[] = {"GET", "POST", "PUT", "DELETE"};
static const char *const llms[] = {"gpt-4o", "claude-3-5-sonnet", "llama-3-70b",
				   "mistral-large", "gemini-1.5-pro"};
static const char *const directions[] = {"input", "output"};
static const char *const img_models[] = {"sdxl", "dall-e-3", "flux-pro"};
static const char *const sizes[] = {"512x512", "1024x1024", "1792x1024", "1024x1792"};
static const char *const tiers[] = {"standard", "infrequent", "archive"};
static const char *const countries[] = {"US", "GB", "DE", "IN", "BR", "FR", "JP", "NG"};
static const char *const carriers[] = {"att", "vodafone", "tmobile", "orange", "airtel"};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define PICK(tab, rng) ((tab)[below(sm_next(rng), NELEM(tab))])

const char *bench_gen_type_name(uint8_t type)
{
	return type < T_COUNT_ ? mix[type].name : "?";
}

static struct tally_view cview(const char *s)
{
	return (struct tally_view){(const uint8_t *)s, (uint32_t)strlen(s)};
}

static void put_str(struct bench_gen_event *e, const char *key, const char *val)
{
	struct tally_prop *p = &e->props[e->in.prop_count++];

	memset(p, 0, sizeof(*p));
	p->key = cview(key);
	p->kind = TALLY_VALUE_STRING;
	p->str = cview(val);
}

static void put_int(struct bench_gen_event *e, const char *key, int64_t v)
{
	struct tally_prop *p = &e->props[e->in.prop_count++];

	memset(p, 0, sizeof(*p));
	p->key = cview(key);
	p->kind = TALLY_VALUE_INT;
	p->i64 = v;
}

static void put_dec(struct bench_gen_event *e, const char *key, int64_t mantissa, uint8_t scale)
{
	struct tally_prop *p = &e->props[e->in.prop_count++];

	memset(p, 0, sizeof(*p));
	p->key = cview(key);
	p->kind = TALLY_VALUE_DECIMAL;
	p->i64 = mantissa;
	p->scale = scale;
}

static const char hexdig[] = "0123456789abcdef";

static void hex64(char *out, uint64_t v)
{
	for (int i = 15; i >= 0; i--) {
		out[i] = hexdig[v & 15];
		v >>= 4;
	}
}

/* ---------------------------------------------------------------- config and keys */

static bool prefix_ok(const char *p)
{
	size_t n = strnlen(p, BENCH_GEN_KEY_PREFIX_MAX + 1);

	if (n > BENCH_GEN_KEY_PREFIX_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_'))
			return false;
	}
	return true;
}

int bench_gen_init(struct bench_gen *g, const struct bench_gen_config *cfg)
{
	if (cfg->customers == 0 || cfg->customers > BENCH_GEN_CUSTOMERS_MAX)
		return -EINVAL;
	if (cfg->zipf && cfg->zipf->n != cfg->customers)
		return -EINVAL;
	if (cfg->payload_bytes > BENCH_GEN_PAYLOAD_BYTES_MAX)
		return -EINVAL;
	if ((uint64_t)cfg->dup_ppm + cfg->conflict_ppm > BENCH_GEN_PPM ||
	    cfg->late_ppm > BENCH_GEN_PPM)
		return -EINVAL;
	if (cfg->late_ppm && cfg->skew_us < 1)
		return -EINVAL;
	if (cfg->stream > 0xFFFF || cfg->time_step_us < 0 || cfg->base_time_us < 0)
		return -EINVAL;
	if (!prefix_ok(cfg->key_prefix))
		return -EINVAL;

	memset(g, 0, sizeof(*g));
	g->cfg = *cfg;
	if (!g->cfg.key_prefix[0])
		memcpy(g->cfg.key_prefix, "ev", 3);
	if (!g->cfg.dup_window)
		g->cfg.dup_window = BENCH_GEN_DUP_WINDOW_DEF;
	g->stream_seed = bench_gen_mix64(cfg->seed ^ bench_gen_mix64(0x5EED0000ull + cfg->stream));
	uint64_t sm = g->stream_seed ^ 0xA5A5A5A5A5A5A5A5ull;
	for (int i = 0; i < 4; i++)
		g->s[i] = sm_next(&sm);
	return 0;
}

size_t bench_gen_key(const struct bench_gen *g, uint64_t fresh_index, char *buf)
{
	size_t n = strlen(g->cfg.key_prefix);

	memcpy(buf, g->cfg.key_prefix, n);
	buf[n++] = '-';
	for (int i = 3; i >= 0; i--)
		buf[n + (size_t)(3 - i)] = hexdig[(g->cfg.stream >> (4 * i)) & 15];
	n += 4;
	buf[n++] = '-';
	/* The mix is a bijection and j -> seed + j * GOLDEN is injective: keys never repeat. */
	hex64(buf + n, bench_gen_mix64(g->stream_seed + fresh_index * GOLDEN));
	n += 16;
	buf[n] = '\0';
	return n;
}

/* ---------------------------------------------------------------- Zipf */

int bench_gen_zipf_build(struct bench_gen_zipf *z, uint32_t n, uint32_t s_milli)
{
	z->n = 0;
	z->cdf = NULL;
	if (n == 0 || n > BENCH_GEN_CUSTOMERS_MAX || s_milli == 0 || s_milli > 5000)
		return -EINVAL;
	uint64_t *cdf = malloc((size_t)n * sizeof(*cdf));
	if (!cdf)
		return -ENOMEM;
	/* Floating point only here, to build the table; sampling is integer. */
	double s = s_milli / 1000.0, total = 0.0, acc = 0.0;
	for (uint32_t k = 1; k <= n; k++)
		total += pow((double)k, -s);
	for (uint32_t k = 1; k <= n; k++) {
		acc += pow((double)k, -s);
		double f = acc / total;
		cdf[k - 1] = f >= 1.0 ? UINT64_MAX : (uint64_t)(f * 18446744073709551615.0);
	}
	cdf[n - 1] = UINT64_MAX;
	z->n = n;
	z->cdf = cdf;
	return 0;
}

void bench_gen_zipf_free(struct bench_gen_zipf *z)
{
	free(z->cdf);
	z->cdf = NULL;
	z->n = 0;
}

uint32_t bench_gen_zipf_pick(const struct bench_gen_zipf *z, uint64_t r)
{
	/* First index with cdf[i] >= r. */
	uint32_t lo = 0, hi = z->n - 1;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (z->cdf[mid] >= r)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

/* ---------------------------------------------------------------- fresh events */

/*
 * Customer id number: a bijection of the 32-bit index (xorshift-multiply rounds with odd
 * multipliers), keyed by the seed, so distinct customers never share an id.
 */
static uint32_t cust_id32(uint64_t seed, uint32_t idx)
{
	uint32_t x = idx ^ (uint32_t)bench_gen_mix64(seed);

	x ^= x >> 16;
	x *= 0x7FEB352Du;
	x ^= x >> 15;
	x *= 0x846CA68Bu;
	x ^= x >> 16;
	return x;
}

void bench_gen_fresh(const struct bench_gen *g, uint64_t j, uint8_t variant,
		     struct bench_gen_event *e)
{
	uint64_t rng = bench_gen_mix64(g->stream_seed ^ (j * 0xD1B54A32D192ED03ull));
	const struct bench_gen_config *c = &g->cfg;

	memset(&e->in, 0, sizeof(e->in));
	e->seq = UINT64_MAX;
	e->fresh_index = j;
	e->kind = BENCH_GEN_FRESH;
	e->variant = variant;

	size_t klen = bench_gen_key(g, j, e->key);
	e->in.key = (struct tally_view){(const uint8_t *)e->key, (uint32_t)klen};

	/* Customer */
	uint64_t r = sm_next(&rng);
	uint32_t cust = c->zipf ? bench_gen_zipf_pick(c->zipf, r) : (uint32_t)below(r, c->customers);
	memcpy(e->customer, "cus_", 4);
	hex64(e->customer + 4, cust_id32(c->seed, cust));
	memmove(e->customer + 4, e->customer + 12, 8); /* "cus_" + 8 hex (low 32 bits) */
	e->customer[12] = '\0';
	e->in.customer = (struct tally_view){(const uint8_t *)e->customer, 12};

	/* Type */
	uint32_t w = (uint32_t)below(sm_next(&rng), 1000), acc = 0;
	uint8_t t = 0;
	for (t = 0; t < T_COUNT_ - 1; t++) {
		acc += mix[t].weight_pm;
		if (w < acc)
			break;
	}
	e->type = t;
	e->in.name = cview(mix[t].name);

	/* Time: late events move back by 1..skew. */
	int64_t ts = c->base_time_us + (int64_t)j * c->time_step_us;
	e->late = false;
	uint64_t lr = sm_next(&rng), ls = sm_next(&rng);
	if (c->late_ppm && below(lr, BENCH_GEN_PPM) < c->late_ppm) {
		e->late = true;
		ts -= 1 + (int64_t)below(ls, (uint64_t)c->skew_us);
		if (ts < 0)
			ts = 0;
	}
	e->in.event_time_us = ts;

	/* Properties: the first one of every type is an INT (the one a conflict changes). */
	e->in.props = e->props;
	switch (t) {
	case T_API: {
		static const int64_t st[] = {200, 200, 200, 200, 200, 200, 201, 204, 404, 429, 500};
		put_int(e, "status", st[below(sm_next(&rng), NELEM(st))]);
		put_str(e, "endpoint", PICK(endpoints, &rng));
		put_str(e, "method", PICK(methods, &rng));
		put_int(e, "duration_ms", 1 + (int64_t)below(sm_next(&rng), 2000));
		break;
	}
	case T_AI:
		put_int(e, "tokens", 1 + (int64_t)below(sm_next(&rng), 8000));
		put_str(e, "model", PICK(llms, &rng));
		put_str(e, "direction", PICK(directions, &rng));
		put_int(e, "cached", (int64_t)below(sm_next(&rng), 2));
		break;
	case T_SMS:
		put_int(e, "segments", 1 + (int64_t)below(sm_next(&rng), 5));
		put_str(e, "country", PICK(countries, &rng));
		put_str(e, "carrier", PICK(carriers, &rng));
		break;
	case T_IMAGE:
		put_int(e, "count", 1 + (int64_t)below(sm_next(&rng), 4));
		put_str(e, "model", PICK(img_models, &rng));
		put_str(e, "size", PICK(sizes, &rng));
		put_int(e, "steps", 20 + (int64_t)below(sm_next(&rng), 31));
		break;
	default: {
		put_int(e, "bytes", 1 + (int64_t)below(sm_next(&rng), 1000000000000ull));
		put_str(e, "tier", PICK(tiers, &rng));
		uint64_t b = sm_next(&rng);
		memcpy(e->strbuf[0], "bkt-", 4);
		hex64(e->strbuf[0] + 4, b);
		e->strbuf[0][12] = '\0'; /* "bkt-" + 8 hex */
		put_str(e, "bucket", e->strbuf[0]);
		put_dec(e, "gb_hours", (int64_t)below(sm_next(&rng), 10000000), 3);
		break;
	}
	}
	if (variant)
		e->props[0].i64 += 1; /* same key, different content */

	/* Padding to payload_bytes with "attrsN" string properties of pseudo-random text. */
	size_t size = event_encoded_size(&e->in);
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	static const char *const pad_keys[] = {"attrs",   "attrs2",  "attrs3",  "attrs4",
					       "attrs5",  "attrs6",  "attrs7",  "attrs8",
					       "attrs9",  "attrs10", "attrs11", "attrs12",
					       "attrs13", "attrs14", "attrs15", "attrs16",
					       "attrs17", "attrs18"};
	size_t pad_filled = 0;
	uint64_t pad_bits = 0;
	for (size_t pk = 0; c->payload_bytes > size && pk < NELEM(pad_keys) &&
			    e->in.prop_count < BENCH_GEN_PROPS_MAX;
	     pk++) {
		size_t overhead = 2 + strlen(pad_keys[pk]) + 2;
		size_t want = c->payload_bytes - size;
		if (want < overhead)
			break;
		size_t len = want - overhead;
		if (len > TALLY_PROP_STRING_BYTES_MAX) {
			len = TALLY_PROP_STRING_BYTES_MAX;
			/* Leave either nothing or enough for the next pad's overhead (<= 12). */
			size_t rest = want - overhead - len;
			if (rest < 12)
				len -= 12 - rest;
		}
		/* All pads view the same buffer (<= 256 bytes each): sizes stay exact. It is filled
		   lazily, only as far as a pad reads it: the bytes are the same as filling it whole
		   (the draws are sequential), at a fraction of the cost for the usual short pad. */
		while (pad_filled < len) {
			if (pad_filled % 10 == 0)
				pad_bits = sm_next(&rng);
			e->pad[pad_filled++] = alphabet[pad_bits & 63];
			pad_bits >>= 6;
		}
		struct tally_prop *p = &e->props[e->in.prop_count++];
		memset(p, 0, sizeof(*p));
		p->key = cview(pad_keys[pk]);
		p->kind = TALLY_VALUE_STRING;
		p->str = (struct tally_view){(const uint8_t *)e->pad, (uint32_t)len};
		size += overhead + len;
	}
}

/* ---------------------------------------------------------------- the stream */

void bench_gen_next(struct bench_gen *g, struct bench_gen_event *out)
{
	const struct bench_gen_config *c = &g->cfg;
	uint64_t u = below(xo_next(g->s), BENCH_GEN_PPM);
	uint64_t pick = xo_next(g->s);
	uint8_t kind = BENCH_GEN_FRESH;

	if (g->fresh_count > 0) {
		if (u < c->dup_ppm)
			kind = BENCH_GEN_DUP;
		else if (u < (uint64_t)c->dup_ppm + c->conflict_ppm)
			kind = BENCH_GEN_CONFLICT;
	}
	if (kind == BENCH_GEN_FRESH) {
		bench_gen_fresh(g, g->fresh_count, 0, out);
		g->fresh_count++;
		if (out->late)
			g->late_count++;
	} else {
		/* Prefer originals at least ref_lag fresh events back (likely acked already). */
		uint64_t avail = g->fresh_count > c->ref_lag ? g->fresh_count - c->ref_lag
							     : g->fresh_count;
		uint64_t win = avail < c->dup_window ? avail : c->dup_window;
		uint64_t j = avail - 1 - below(pick, win);
		bench_gen_fresh(g, j, kind == BENCH_GEN_CONFLICT ? 1 : 0, out);
	}
	out->kind = kind;
	out->seq = g->seq++;
	g->count_by_kind[kind]++;
}

/* ---------------------------------------------------------------- parsing */

/* Parses "I[.F]" into value * 10^frac_digits, integer math. Returns the rest of the string. */
static const char *parse_fixed(const char *s, unsigned frac_digits, uint64_t *out)
{
	uint64_t v = 0;
	unsigned fd = 0;
	bool any = false;

	while (*s >= '0' && *s <= '9') {
		if (v > 1000000000ull)
			return NULL;
		v = v * 10 + (uint64_t)(*s++ - '0');
		any = true;
	}
	for (unsigned i = 0; i < frac_digits; i++)
		v *= 10;
	if (*s == '.') {
		s++;
		uint64_t scale = 1;
		for (unsigned i = 0; i < frac_digits; i++)
			scale *= 10;
		while (*s >= '0' && *s <= '9') {
			any = true;
			if (fd < frac_digits) {
				scale /= 10;
				v += (uint64_t)(*s - '0') * scale;
				fd++;
			} else if (*s != '0') {
				return NULL; /* more precision than we keep: refuse, don't round */
			}
			s++;
		}
	}
	if (!any)
		return NULL;
	*out = v;
	return s;
}

int bench_gen_parse_rate(const char *s, uint32_t *ppm_out)
{
	uint64_t v;
	const char *rest;

	if (!s)
		return -EINVAL;
	if ((rest = parse_fixed(s, 6, &v)) == NULL) /* v = value * 1e6 */
		return -EINVAL;
	if (!strcmp(rest, "")) {
		/* fraction */
	} else if (!strcmp(rest, "%")) {
		v /= 100;
	} else if (!strcmp(rest, "ppm")) {
		if (v % 1000000)
			return -EINVAL;
		v /= 1000000;
	} else if (!strcmp(rest, "pm")) {
		if (v % 1000000)
			return -EINVAL;
		v = v / 1000000 * 1000;
	} else {
		return -EINVAL;
	}
	if (v > BENCH_GEN_PPM)
		return -EINVAL;
	*ppm_out = (uint32_t)v;
	return 0;
}

int bench_gen_parse_milli(const char *s, uint32_t *milli_out)
{
	uint64_t v;
	const char *rest;

	if (!s || (rest = parse_fixed(s, 3, &v)) == NULL)
		return -EINVAL;
	if (!strcmp(rest, "pm")) {
		if (v % 1000)
			return -EINVAL;
		v /= 1000;
	} else if (*rest) {
		return -EINVAL;
	} else if (!strchr(s, '.') && v >= 10000) {
		v /= 1000; /* bare integer >= 10: already per mille */
	}
	if (v > 0xFFFFFFFFull)
		return -EINVAL;
	*milli_out = (uint32_t)v;
	return 0;
}
