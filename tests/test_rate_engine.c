/*
 * tests/test_rate_engine.c — the rating engine end to end on real encoded events: invoices
 * for the documented examples, base fee plus overage, price resolution (contract > customer
 * > plan), credits by priority and expiry, period assignment by event time (anchor days),
 * the 23:58 event inside and outside the grace window, tiers continuing in adjustments,
 * report_only, unbilled customers, overflow reporting, 10^6 events through the real
 * metering path, and byte-identical invoices for different arrival orders.
 */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rate_testlib.h"
#include "tally/rate.h"

#define S_US 1000000LL
#define DAY_US (86400 * S_US)

static int64_t T(const char *s)
{
	int64_t t;
	if (rate_time_parse(s, &t) != 0)
		abort();
	return t;
}

/* ---- captured invoices ---- */

struct inv {
	char customer[160];
	int64_t start;
	char *json;
	size_t len;
};

struct cap {
	size_t n;
	struct inv v[256];
};

static int on_invoice(void *ctx, const char *customer, int64_t start, const char *json, size_t len)
{
	struct cap *c = ctx;
	if (c->n == sizeof c->v / sizeof c->v[0])
		return -ENOSPC;
	struct inv *i = &c->v[c->n++];
	snprintf(i->customer, sizeof i->customer, "%s", customer);
	i->start = start;
	i->json = malloc(len + 1);
	memcpy(i->json, json, len);
	i->json[len] = '\0';
	i->len = len;
	return 0;
}

static void cap_free(struct cap *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->v[i].json);
	c->n = 0;
}

static json_t *find_inv(struct cap *c, const char *customer, const char *start)
{
	for (size_t i = 0; i < c->n; i++)
		if (strcmp(c->v[i].customer, customer) == 0 && c->v[i].start == T(start))
			return json_loads(c->v[i].json, 0, NULL);
	return NULL;
}

static const char *jstr(json_t *o, const char *path)
{
	/* path: "a.b[0].c" — only what the tests need */
	char buf[256];
	snprintf(buf, sizeof buf, "%s", path);
	json_t *cur = o;
	for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, ".")) {
		char *br = strchr(tok, '[');
		if (br) {
			*br = '\0';
			cur = json_object_get(cur, tok);
			cur = json_array_get(cur, (size_t)atoi(br + 1));
		} else {
			cur = json_object_get(cur, tok);
		}
	}
	return cur && json_is_string(cur) ? json_string_value(cur) : NULL;
}

static long long jint(json_t *o, const char *path)
{
	char buf[256];
	snprintf(buf, sizeof buf, "%s", path);
	json_t *cur = o;
	for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, ".")) {
		char *br = strchr(tok, '[');
		if (br) {
			*br = '\0';
			cur = json_array_get(json_object_get(cur, tok), (size_t)atoi(br + 1));
		} else {
			cur = json_object_get(cur, tok);
		}
	}
	return cur && json_is_integer(cur) ? json_integer_value(cur) : -1;
}

static size_t jlen(json_t *o, const char *key)
{
	return json_array_size(json_object_get(o, key));
}

/* ---- engine helpers ---- */

static struct rate_config *load(const char *json)
{
	struct rate_config *cfg;
	char err[512];
	if (rate_config_parse(json, strlen(json), &cfg, err, sizeof err) != 0) {
		fprintf(stderr, "config: %s\n", err);
		abort();
	}
	return cfg;
}

static struct rate_engine *engine(const struct rate_config *cfg, uint32_t shards, struct cap *cap,
				  const char *out_dir)
{
	struct rate_engine *e;
	struct rate_engine_opts o = {.shards = shards, .out_dir = out_dir, .on_invoice = on_invoice,
				     .ctx = cap, .no_fsync = true};
	if (rate_engine_create(cfg, &o, &e) != 0)
		abort();
	return e;
}

static uint64_t g_key;

/* Feeds one event. */
static void feed(struct rate_engine *e, const char *customer, const char *name, int64_t t,
		 uint32_t shard, uint64_t offset, int64_t ingest, uint32_t np,
		 const struct tally_prop *props)
{
	struct rate_t_event ev;
	char key[32];
	snprintf(key, sizeof key, "k%llu", (unsigned long long)g_key++);
	rate_t_event(&ev, key, customer, name, t, np, props);
	struct rate_record r = {.ev = &ev.ev, .tenant = rate_t_sv("t1"), .ingest_time_us = ingest,
				.shard = shard, .offset = offset};
	int rc = rate_engine_feed(e, &r);
	CHECK_EQ(rc, 0);
}

static void tick_all(struct rate_engine *e, uint32_t shards, int64_t t)
{
	for (uint32_t s = 0; s < shards; s++)
		CHECK_EQ(rate_engine_tick(e, s, t), 0);
}

static const char BASE_CFG[] =
	"{\"currency\":\"USD\",\"period\":\"month\",\"grace_seconds\":172800,"
	" \"rounding\":\"half_even\",\"late_policy\":\"%s\","
	" \"meters\":["
	"  {\"id\":\"api_calls\",\"event_name\":\"api.call\",\"aggregation\":\"count\"},"
	"  {\"id\":\"tokens\",\"event_name\":\"ai.tokens\",\"aggregation\":\"sum\",\"property\":\"tokens\","
	"   \"filter\":[{\"property\":\"model\",\"equals\":\"gpt-4\"}]},"
	"  {\"id\":\"images\",\"event_name\":\"img.gen\",\"aggregation\":\"count\"},"
	"  {\"id\":\"llm\",\"event_name\":\"llm.tokens\",\"aggregation\":\"sum\",\"property\":\"n\"},"
	"  {\"id\":\"seats\",\"event_name\":\"seats\",\"aggregation\":\"max\",\"property\":\"n\"},"
	"  {\"id\":\"storage\",\"event_name\":\"storage\",\"aggregation\":\"last\",\"property\":\"gb\"},"
	"  {\"id\":\"users\",\"event_name\":\"login\",\"aggregation\":\"unique_count\",\"property\":\"user\","
	"   \"filter\":[{\"property\":\"region\",\"not_equals\":\"test\"}]},"
	"  {\"id\":\"g\",\"event_name\":\"g\",\"aggregation\":\"sum\",\"property\":\"n\"}"
	" ],"
	" \"plans\":["
	"  {\"id\":\"pro\",\"base_fee\":\"49.00\",\"prices\":["
	"   {\"meter\":\"api_calls\",\"model\":\"per_unit\",\"unit_price\":\"0.02\",\"free_units\":1000},"
	"   {\"meter\":\"tokens\",\"model\":\"per_unit\",\"unit_price\":\"0.00001\",\"free_units\":10000},"
	"   {\"meter\":\"images\",\"model\":\"per_unit\",\"unit_price\":\"0.05\",\"free_units\":10},"
	"   {\"meter\":\"llm\",\"model\":\"per_unit\",\"unit_price\":\"0.000003\"},"
	"   {\"meter\":\"seats\",\"model\":\"per_unit\",\"unit_price\":\"10\"},"
	"   {\"meter\":\"storage\",\"model\":\"per_unit\",\"unit_price\":\"0.5\"},"
	"   {\"meter\":\"users\",\"model\":\"per_unit\",\"unit_price\":\"1\"},"
	"   {\"meter\":\"g\",\"model\":\"graduated\",\"tiers\":[{\"up_to\":100,\"unit_price\":\"1\"},"
	"                                               {\"up_to\":null,\"unit_price\":\"0.5\"}]}]},"
	"  {\"id\":\"free\",\"prices\":[{\"meter\":\"api_calls\",\"model\":\"per_unit\",\"unit_price\":\"0.001\",\"free_units\":1000}]}"
	" ],"
	" \"customers\":["
	"  {\"id\":\"cus_abc\",\"plan\":\"pro\"},"
	"  {\"id\":\"cus_ovr\",\"plan\":\"pro\","
	"   \"prices\":[{\"meter\":\"api_calls\",\"model\":\"per_unit\",\"unit_price\":\"0.015\"}],"
	"   \"contracts\":[{\"from\":\"2026-02-01\",\"to\":\"2026-03-01\",\"prices\":"
	"     [{\"meter\":\"api_calls\",\"model\":\"per_unit\",\"unit_price\":\"0.01\"}]}]},"
	"  {\"id\":\"cus_cred\",\"plan\":\"pro\",\"credits\":["
	"     {\"amount\":\"100.00\",\"expires\":\"2026-01-15\",\"priority\":1},"
	"     {\"amount\":\"25.00\",\"expires\":\"2026-06-01\",\"priority\":2},"
	"     {\"amount\":\"5.00\",\"priority\":1},"
	"     {\"amount\":\"3.00\",\"expires\":\"2026-03-01\",\"priority\":2}]},"
	"  {\"id\":\"cus_anchor\",\"plan\":\"pro\",\"billing_anchor_day\":15},"
	"  {\"id\":\"cus_free\",\"plan\":\"free\"}"
	" ],"
	" \"default_plan\":%s}";

static struct rate_config *base_cfg(const char *policy, const char *default_plan)
{
	char buf[8192];
	snprintf(buf, sizeof buf, BASE_CFG, policy, default_plan);
	return load(buf);
}

static void test_documented_invoices(void)
{
	struct rate_config *cfg = base_cfg("adjust_next", "\"pro\"");
	struct cap cap = {0};
	struct rate_engine *e = engine(cfg, 2, &cap, NULL);
	int64_t jan = T("2026-01-01"), ing = jan + 3600 * S_US;
	uint64_t off[2] = {0, 0};
	struct tally_prop gpt4[2] = {rate_t_int_prop("tokens", 1), rate_t_str_prop("model", "gpt-4")};
	struct tally_prop gpt3[2] = {rate_t_int_prop("tokens", 1), rate_t_str_prop("model", "gpt-3")};
	/* 2,500 calls (1,000 free at $0.02 -> $30.00) */
	for (int i = 0; i < 2500; i++, ing += S_US)
		feed(e, "cus_abc", "api.call", jan + i * S_US, (uint32_t)(i & 1), off[i & 1]++, ing, 0, NULL);
	/* 50,000 gpt-4 tokens as 5,000 events of 10 (10,000 free at $0.00001 -> $0.40); gpt-3
	 * tokens are filtered out. */
	gpt4[0].i64 = 10;
	for (int i = 0; i < 5000; i++, ing += S_US) {
		feed(e, "cus_abc", "ai.tokens", jan + DAY_US + i, 0, off[0]++, ing, 2, gpt4);
		if (i < 100)
			feed(e, "cus_abc", "ai.tokens", jan + DAY_US + i, 1, off[1]++, ing, 2, gpt3);
	}
	/* 100 images, 10 free at $0.05 -> $4.50 */
	for (int i = 0; i < 100; i++, ing += S_US)
		feed(e, "cus_abc", "img.gen", jan + 2 * DAY_US + i, 1, off[1]++, ing, 0, NULL);
	/* 15,000 calls of the "free" plan customer: 1,000 free at $0.001 -> $14.00, no base fee */
	for (int i = 0; i < 15000; i++, ing += 1000)
		feed(e, "cus_free", "api.call", jan + 5 * DAY_US + i, (uint32_t)(i & 1), off[i & 1]++, ing, 0, NULL);
	CHECK_EQ(cap.n, 0);
	tick_all(e, 2, T("2026-02-03") - 1); /* end + grace is not yet passed */
	CHECK_EQ(cap.n, 0);
	tick_all(e, 2, T("2026-02-03") + 1);
	CHECK_EQ(cap.n, 2);
	json_t *inv = find_inv(&cap, "cus_abc", "2026-01-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "lines[0].meter"), "api_calls");
		CHECK_STR(jstr(inv, "lines[0].quantity"), "2500");
		CHECK_STR(jstr(inv, "lines[0].free_units"), "1000");
		CHECK_STR(jstr(inv, "lines[0].amount"), "30.00");
		CHECK_EQ(jint(inv, "lines[0].provenance.events"), 2500);
		CHECK_EQ(jint(inv, "lines[0].provenance.wal[0].first_offset"), 0);
		CHECK_STR(jstr(inv, "lines[1].meter"), "tokens");
		CHECK_STR(jstr(inv, "lines[1].quantity"), "50000");
		CHECK_STR(jstr(inv, "lines[1].amount"), "0.40");
		CHECK_EQ(jint(inv, "lines[1].provenance.events"), 5000);
		CHECK_STR(jstr(inv, "lines[2].amount"), "4.50");
		CHECK_STR(jstr(inv, "base_fee"), "49.00");
		CHECK_STR(jstr(inv, "usage_total"), "34.90");
		CHECK_STR(jstr(inv, "total"), "83.90"); /* base fee plus overage */
		CHECK_STR(jstr(inv, "period_end"), "2026-02-01T00:00:00Z");
		json_decref(inv);
	}
	inv = find_inv(&cap, "cus_free", "2026-01-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "lines[0].amount"), "14.00");
		CHECK_STR(jstr(inv, "total"), "14.00");
		json_decref(inv);
	}
	/* The digest is the sum of XXH3-64 of the fingerprints: recompute for the images line. */
	inv = find_inv(&cap, "cus_abc", "2026-01-01");
	struct rate_stats st;
	rate_engine_stats(e, &st);
	CHECK_EQ(st.metered, 2500 + 5000 + 100 + 15000);
	CHECK_EQ(st.unmetered, 100); /* the gpt-3 events */
	CHECK_EQ(st.invoices, 2);
	/* text rendering */
	char *txt = NULL;
	size_t tlen = 0;
	FILE *mf = open_memstream(&txt, &tlen);
	char err[128];
	CHECK_EQ(rate_invoice_render_text(cap.v[0].json, cap.v[0].len, mf, err, sizeof err), 0);
	fclose(mf);
	CHECK(txt && strstr(txt, "TOTAL") && strstr(txt, "83.90 USD") && strstr(txt, "api_calls"));
	free(txt);
	CHECK_EQ(rate_invoice_render_text("{}", 2, stdout, err, sizeof err), -EINVAL);
	json_decref(inv);
	/* February: nothing used, but the customer has started: base fee only. */
	tick_all(e, 2, T("2026-03-04"));
	inv = find_inv(&cap, "cus_abc", "2026-02-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "total"), "49.00");
		CHECK_STR(jstr(inv, "lines[0].quantity"), "0");
		json_decref(inv);
	}
	rate_engine_destroy(e);
	cap_free(&cap);
	rate_config_free(cfg);
}

/* The live usage figures (usage.json) equal the invoice written at the close. */
static void test_usage_matches_invoice(void)
{
	struct rate_config *cfg = base_cfg("adjust_next", "\"pro\"");
	struct cap cap = {0};
	struct rate_engine *e = engine(cfg, 1, &cap, NULL);
	int64_t jan = T("2026-01-01");
	struct tally_prop g = rate_t_int_prop("n", 130);
	for (int i = 0; i < 1700; i++)
		feed(e, "cus_abc", "api.call", jan + i, 0, (uint64_t)i, jan + i, 0, NULL);
	feed(e, "cus_abc", "g", jan + 5, 0, 1700, jan + 1700, 1, &g);
	char *json;
	size_t len;
	CHECK_EQ(rate_engine_usage_json(e, &json, &len), 0);
	json_t *u = json_loads(json, 0, NULL);
	free(json);
	CHECK(u != NULL);
	const char *live_total = NULL;
	if (u) {
		CHECK_EQ(jlen(u, "open_periods"), 1);
		live_total = jstr(u, "open_periods[0].total");
		CHECK_STR(live_total, "178.00"); /* 49 + 700 x 0.02 + 100 x 1 + 30 x 0.5 */
	}
	tick_all(e, 1, T("2026-02-04"));
	json_t *inv = find_inv(&cap, "cus_abc", "2026-01-01");
	CHECK(inv != NULL);
	if (inv && live_total) {
		CHECK_STR(jstr(inv, "total"), live_total);
		CHECK_STR(jstr(inv, "lines[7].tiers[1].amount_exact"), "15.00");
	}
	json_decref(inv);
	json_decref(u);
	rate_engine_destroy(e);
	cap_free(&cap);
	rate_config_free(cfg);
}

static void test_million_events(void)
{
	/* 10^6 one-token events through decode-free feed of real decoded events: at $0.000003
	 * per token that is $3.00 exactly; the 10^9 case is priced from the aggregate in
	 * test_rate_money. */
	struct rate_config *cfg = base_cfg("adjust_next", "\"pro\"");
	struct cap cap = {0};
	struct rate_engine *e = engine(cfg, 1, &cap, NULL);
	int64_t jan = T("2026-01-01");
	struct tally_prop p = rate_t_int_prop("n", 1);
	struct rate_t_event ev;
	rate_t_event(&ev, "k", "cus_abc", "llm.tokens", jan, 1, &p);
	struct rate_record r = {.ev = &ev.ev, .tenant = rate_t_sv("t"), .shard = 0, .has_fp = true};
	int bad = 0;
	for (uint32_t i = 0; i < 1000000; i++) {
		/* Distinct fingerprints without re-encoding: the WAL hands them over. */
		r.fp = (struct tally_fp){.lo = i, .hi = 7};
		r.offset = i;
		r.ingest_time_us = jan + i;
		bad |= rate_engine_feed(e, &r);
	}
	CHECK_EQ(bad, 0);
	tick_all(e, 1, T("2026-02-04"));
	json_t *inv = find_inv(&cap, "cus_abc", "2026-01-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "lines[3].meter"), "llm");
		CHECK_STR(jstr(inv, "lines[3].quantity"), "1000000");
		CHECK_STR(jstr(inv, "lines[3].amount"), "3.00");
		CHECK_EQ(jint(inv, "lines[3].provenance.events"), 1000000);
		CHECK_EQ(jint(inv, "lines[3].provenance.wal[0].last_offset"), 999999);
		uint64_t d = 0;
		for (uint32_t i = 0; i < 1000000; i++)
			d += rate_fp_hash((struct tally_fp){.lo = i, .hi = 7});
		char hex[20];
		snprintf(hex, sizeof hex, "%016llx", (unsigned long long)d);
		CHECK_STR(jstr(inv, "lines[3].provenance.fingerprint_digest"), hex);
		json_decref(inv);
	}
	rate_engine_destroy(e);
	cap_free(&cap);
	rate_config_free(cfg);
}

static void test_resolution_and_credits(void)
{
	struct rate_config *cfg = base_cfg("adjust_next", "null");
	struct cap cap = {0};
	struct rate_engine *e = engine(cfg, 1, &cap, NULL);
	int64_t jan = T("2026-01-01"), feb = T("2026-02-01");
	uint64_t off = 0;
	int64_t ing = jan;
	/* cus_ovr: 1,000 calls in Jan (customer price 0.015 -> 15.00, no free units in its own
	 * price) and 1,000 in Feb (contract price 0.01 -> 10.00). */
	for (int i = 0; i < 1000; i++) {
		feed(e, "cus_ovr", "api.call", jan + i, 0, off++, ing++, 0, NULL);
		feed(e, "cus_ovr", "api.call", feb + i, 0, off++, ing++, 0, NULL);
	}
	/* cus_cred: 2,500 calls in Jan and in Feb: usage 30.00 each. */
	for (int i = 0; i < 2500; i++) {
		feed(e, "cus_cred", "api.call", jan + i, 0, off++, ing++, 0, NULL);
		feed(e, "cus_cred", "api.call", feb + i, 0, off++, ing++, 0, NULL);
	}
	/* An unknown customer with no default plan: unbilled, never dropped. */
	feed(e, "cus_nobody", "api.call", jan + 5, 0, off++, ing++, 0, NULL);
	tick_all(e, 1, T("2026-03-04"));
	json_t *inv = find_inv(&cap, "cus_ovr", "2026-01-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "lines[0].price_source"), "customer");
		CHECK_STR(jstr(inv, "lines[0].amount"), "15.00");
		json_decref(inv);
	}
	inv = find_inv(&cap, "cus_ovr", "2026-02-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "lines[0].price_source"), "contract");
		CHECK_STR(jstr(inv, "lines[0].amount"), "10.00");
		CHECK_STR(jstr(inv, "lines[1].price_source"), "plan");
		json_decref(inv);
	}
	/* Credits in January (period end Feb 1): credit 0 expired on Jan 15 and does not burn;
	 * priority 1 first (credit 2, 5.00), then priority 2 by earliest expiry: credit 3
	 * (3.00, Mar 1) before credit 1 (25.00, Jun 1), which covers the remaining 22.00. */
	inv = find_inv(&cap, "cus_cred", "2026-01-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_EQ(jlen(inv, "credits_applied"), 3);
		CHECK_EQ(jint(inv, "credits_applied[0].credit"), 2);
		CHECK_STR(jstr(inv, "credits_applied[0].applied"), "5.00");
		CHECK_EQ(jint(inv, "credits_applied[1].credit"), 3);
		CHECK_STR(jstr(inv, "credits_applied[1].applied"), "3.00");
		CHECK_EQ(jint(inv, "credits_applied[2].credit"), 1);
		CHECK_STR(jstr(inv, "credits_applied[2].applied"), "22.00");
		CHECK_STR(jstr(inv, "credits_applied[2].remaining"), "3.00");
		CHECK_STR(jstr(inv, "total"), "49.00"); /* credits never burn the base fee */
		json_decref(inv);
	}
	inv = find_inv(&cap, "cus_cred", "2026-02-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_EQ(jlen(inv, "credits_applied"), 1);
		CHECK_STR(jstr(inv, "credits_applied[0].applied"), "3.00");
		CHECK_STR(jstr(inv, "total"), "76.00");
		json_decref(inv);
	}
	/* Reports. */
	char dir[] = "/tmp/test_rate_reportsXXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	CHECK_EQ(rate_engine_write_reports(e, dir), 0);
	char path[256];
	snprintf(path, sizeof path, "%s/unbilled.json", dir);
	json_t *u = json_load_file(path, 0, NULL);
	CHECK(u != NULL);
	if (u) {
		CHECK_STR(jstr(u, "customers[0].customer"), "cus_nobody");
		CHECK_EQ(jint(u, "customers[0].events"), 1);
		json_decref(u);
	}
	struct rate_stats st;
	rate_engine_stats(e, &st);
	CHECK_EQ(st.unbilled, 1);
	snprintf(path, sizeof path, "rm -rf %s", dir);
	CHECK_EQ(system(path), 0);
	rate_engine_destroy(e);
	cap_free(&cap);
	rate_config_free(cfg);
}

static int g_fail_next;

static int on_invoice_flaky(void *ctx, const char *customer, int64_t start, const char *json,
			    size_t len)
{
	if (g_fail_next) {
		g_fail_next = 0;
		return -EIO;
	}
	return on_invoice(ctx, customer, start, json, len);
}

/* A failed invoice write commits nothing: the retry burns the credits once. */
static void test_failed_close_retries(void)
{
	struct rate_config *cfg = base_cfg("adjust_next", "null");
	struct cap cap = {0};
	struct rate_engine *e;
	struct rate_engine_opts o = {.shards = 1, .on_invoice = on_invoice_flaky, .ctx = &cap};
	CHECK_EQ(rate_engine_create(cfg, &o, &e), 0);
	int64_t jan = T("2026-01-01");
	for (int i = 0; i < 2500; i++)
		feed(e, "cus_cred", "api.call", jan + i, 0, (uint64_t)i, jan + i, 0, NULL);
	g_fail_next = 1;
	CHECK_EQ(rate_engine_tick(e, 0, T("2026-02-04")), -EIO);
	CHECK_EQ(cap.n, 0);
	CHECK_EQ(rate_engine_tick(e, 0, T("2026-02-04") + 1), 0);
	CHECK_EQ(cap.n, 1);
	json_t *inv = find_inv(&cap, "cus_cred", "2026-01-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "credits_total"), "30.00");
		CHECK_STR(jstr(inv, "credits_applied[2].remaining"), "3.00");
		json_decref(inv);
	}
	rate_engine_destroy(e);
	cap_free(&cap);
	rate_config_free(cfg);
}

static void test_periods_and_lateness(const char *policy)
{
	bool adjust = strcmp(policy, "adjust_next") == 0;
	struct rate_config *cfg = base_cfg(policy, "\"pro\"");
	struct cap cap = {0};
	char dir[] = "/tmp/test_rate_outXXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	struct rate_engine *e = engine(cfg, 2, &cap, dir);
	uint64_t off = 0;
	struct tally_prop n90 = rate_t_int_prop("n", 90), n20 = rate_t_int_prop("n", 20),
			  n5 = rate_t_int_prop("n", 5);
	/* Graduated meter g: first 100 at 1.00, the rest at 0.50. January: 90 on time. */
	feed(e, "cus_abc", "g", T("2026-01-10"), 0, off++, T("2026-01-10"), 1, &n90);
	/* 23:58 on the last day, arriving within grace (Feb 2): lands in January. */
	int64_t t2358 = T("2026-01-31T23:58:00Z");
	feed(e, "cus_abc", "g", t2358, 1, off++, T("2026-02-02T10:00:00Z"), 1, &n5);
	/* cus_anchor (anchor day 15): Jan 14 belongs to the Dec 15 period; Jan 15 to Jan 15's. */
	feed(e, "cus_anchor", "api.call", T("2026-01-14T23:59:59Z"), 0, off++, T("2026-01-16"), 0, NULL);
	feed(e, "cus_anchor", "api.call", T("2026-01-15"), 0, off++, T("2026-01-16"), 0, NULL);
	/* Close January (watermark past Feb 3). */
	tick_all(e, 2, T("2026-02-03T00:00:01Z"));
	json_t *inv = find_inv(&cap, "cus_abc", "2026-01-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "lines[7].meter"), "g");
		CHECK_STR(jstr(inv, "lines[7].quantity"), "95");
		CHECK_STR(jstr(inv, "lines[7].amount"), "95.00");
		CHECK_EQ(jlen(inv, "adjustments"), 0);
		json_decref(inv);
	}
	inv = find_inv(&cap, "cus_anchor", "2025-12-15");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "period_end"), "2026-01-15T00:00:00Z");
		CHECK_STR(jstr(inv, "lines[0].quantity"), "1");
		json_decref(inv);
	}
	CHECK(find_inv(&cap, "cus_anchor", "2026-01-15") == NULL); /* still open */
	/* Another 23:58 event, 20 units, arriving after grace (Feb 4): January is final, so it
	 * becomes an adjustment on February, priced as the difference it makes to January with
	 * tiers continuing: 95 -> 115 costs 5 x 1.00 + 15 x 0.50 = 12.50 (not 20 x 1.00). */
	feed(e, "cus_abc", "g", t2358, 0, off++, T("2026-02-04"), 1, &n20);
	tick_all(e, 2, T("2026-03-04"));
	inv = find_inv(&cap, "cus_abc", "2026-02-01");
	CHECK(inv != NULL);
	if (inv) {
		if (adjust) {
			CHECK_EQ(jlen(inv, "adjustments"), 1);
			CHECK_STR(jstr(inv, "adjustments[0].meter"), "g");
			CHECK_STR(jstr(inv, "adjustments[0].late_period_start"), "2026-01-01T00:00:00Z");
			CHECK_STR(jstr(inv, "adjustments[0].quantity_before"), "95");
			CHECK_STR(jstr(inv, "adjustments[0].quantity_after"), "115");
			CHECK_STR(jstr(inv, "adjustments[0].amount"), "12.50");
			CHECK_EQ(jint(inv, "adjustments[0].provenance.events"), 1);
			CHECK_STR(jstr(inv, "total"), "61.50");
		} else {
			CHECK_EQ(jlen(inv, "adjustments"), 0);
			CHECK_STR(jstr(inv, "total"), "49.00");
		}
		CHECK_STR(jstr(inv, "lines[7].quantity"), "0");
		json_decref(inv);
	}
	/* The January invoice file did not change, and it matches what the callback saw. */
	char path[512];
	snprintf(path, sizeof path, "%s/invoices/cus_abc/20260101T000000Z.json", dir);
	FILE *f = fopen(path, "rb");
	CHECK(f != NULL);
	if (f) {
		static char buf[65536];
		size_t n = fread(buf, 1, sizeof buf, f);
		fclose(f);
		bool same = false;
		for (size_t i = 0; i < cap.n; i++)
			if (strcmp(cap.v[i].customer, "cus_abc") == 0 && cap.v[i].start == T("2026-01-01"))
				same = cap.v[i].len == n && memcmp(cap.v[i].json, buf, n) == 0;
		CHECK(same);
	}
	/* The late-arrival report lists the late event (and only it). */
	CHECK_EQ(rate_engine_write_reports(e, dir), 0);
	snprintf(path, sizeof path, "%s/late_arrivals.json", dir);
	json_t *rep = json_load_file(path, 0, NULL);
	CHECK(rep != NULL);
	if (rep) {
		CHECK_EQ(jlen(rep, "late_events"), 1);
		CHECK_STR(jstr(rep, "late_events[0].event_time"), "2026-01-31T23:58:00Z");
		CHECK_STR(jstr(rep, "late_events[0].ingest_time"), "2026-02-04T00:00:00Z");
		CHECK_STR(jstr(rep, "late_events[0].meters[0]"), "g");
		if (adjust)
			CHECK_STR(jstr(rep, "late_events[0].adjusted_in_period_start"), "2026-02-01T00:00:00Z");
		else
			CHECK(json_is_null(json_object_get(json_array_get(json_object_get(rep, "late_events"), 0),
							   "adjusted_in_period_start")));
		json_decref(rep);
	}
	struct rate_stats st;
	rate_engine_stats(e, &st);
	CHECK_EQ(st.late, 1);
	snprintf(path, sizeof path, "rm -rf %s", dir);
	CHECK_EQ(system(path), 0);
	rate_engine_destroy(e);
	cap_free(&cap);
	rate_config_free(cfg);
}

static void test_aggregations_and_overflow(void)
{
	struct rate_config *cfg = base_cfg("adjust_next", "\"pro\"");
	struct cap cap = {0};
	struct rate_engine *e = engine(cfg, 1, &cap, NULL);
	int64_t jan = T("2026-01-01");
	uint64_t off = 0;
	struct tally_prop p;
	/* max: seats 3, 7, 5 -> 7 x 10 = 70.00 */
	int seats[] = {3, 7, 5};
	for (int i = 0; i < 3; i++) {
		p = rate_t_int_prop("n", seats[i]);
		feed(e, "cus_abc", "seats", jan + i, 0, off++, jan + i, 1, &p);
	}
	/* last by event time, not arrival: 2.5 GB at t=20 arrives before 9 GB at t=10 -> 2.5 */
	p = rate_t_dec_prop("gb", 25, 1);
	feed(e, "cus_abc", "storage", jan + 20, 0, off++, jan + 20, 1, &p);
	p = rate_t_dec_prop("gb", 9, 0);
	feed(e, "cus_abc", "storage", jan + 10, 0, off++, jan + 21, 1, &p);
	/* unique_count: users a, b, a, c(region test: filtered) -> 2 */
	const char *users[] = {"a", "b", "a", "c"};
	for (int i = 0; i < 4; i++) {
		struct tally_prop up[2] = {rate_t_str_prop("user", users[i]),
					   rate_t_str_prop("region", i == 3 ? "test" : "eu")};
		feed(e, "cus_abc", "login", jan + 30 + i, 0, off++, jan + 30, 2, up);
	}
	/* sum overflow: 20 x INT64_MAX tokens exceed the 128-bit quantity (9.2e36 each). */
	p = rate_t_int_prop("n", INT64_MAX);
	for (int i = 0; i < 20; i++)
		feed(e, "cus_abc", "g", jan + 40, 0, off++, jan + 40, 1, &p);
	/* a string where a number is needed: counted as bad_value, not billed */
	p = rate_t_str_prop("n", "12");
	feed(e, "cus_abc", "llm.tokens", jan + 50, 0, off++, jan + 50, 1, &p);
	tick_all(e, 1, T("2026-02-04"));
	json_t *inv = find_inv(&cap, "cus_abc", "2026-01-01");
	CHECK(inv != NULL);
	if (inv) {
		CHECK_STR(jstr(inv, "lines[4].meter"), "seats");
		CHECK_STR(jstr(inv, "lines[4].amount"), "70.00");
		CHECK_STR(jstr(inv, "lines[5].quantity"), "2.5");
		CHECK_STR(jstr(inv, "lines[5].amount"), "1.25");
		CHECK_STR(jstr(inv, "lines[6].quantity"), "2");
		CHECK_STR(jstr(inv, "lines[6].amount"), "2.00");
		CHECK_STR(jstr(inv, "lines[7].error"), "quantity overflow");
		CHECK_STR(jstr(inv, "lines[7].amount"), "0.00");
		CHECK(json_is_true(json_object_get(inv, "errors")));
		json_decref(inv);
	}
	struct rate_stats st;
	rate_engine_stats(e, &st);
	CHECK(st.overflow >= 1);
	CHECK_EQ(st.bad_value, 1);
	rate_engine_destroy(e);
	cap_free(&cap);
	rate_config_free(cfg);
}

/* ---- arrival order ---- */

struct gen_ev {
	char customer[16];
	const char *name;
	int64_t t, ingest;
	uint32_t shard;
	uint64_t offset;
	int64_t n;
	char key[24];
};

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

#define GEN_SHARDS 3
#define GEN_N      6000

static char g_ckpt_dir[64];

/* Saves the state, destroys the engine, and resumes in a new one (as after kill -9 right
 * after a checkpoint). The positions must come back unchanged. */
static struct rate_engine *restart(struct rate_engine *e, const struct rate_config *cfg,
				   struct cap *cap, size_t *pos)
{
	char path[128];
	uint64_t saved[GEN_SHARDS], loaded[GEN_SHARDS];
	snprintf(path, sizeof path, "%s/state.ckpt", g_ckpt_dir);
	for (uint32_t s = 0; s < GEN_SHARDS; s++)
		saved[s] = pos[s];
	CHECK_EQ(rate_engine_save(e, saved, GEN_SHARDS, path), 0);
	rate_engine_destroy(e);
	e = engine(cfg, GEN_SHARDS, cap, NULL);
	CHECK_EQ(rate_engine_load(e, loaded, GEN_SHARDS, path), 0);
	CHECK(memcmp(saved, loaded, sizeof saved) == 0);
	return e;
}

static void run_order(struct gen_ev *evs, size_t n, int mode, struct cap *cap)
{
	struct rate_config *cfg = base_cfg("adjust_next", "\"pro\"");
	struct rate_engine *e = engine(cfg, GEN_SHARDS, cap, NULL);
	/* Per shard queues in offset order (the WAL order). */
	size_t idx[GEN_SHARDS][GEN_N], cnt[GEN_SHARDS] = {0}, pos[GEN_SHARDS] = {0};
	for (size_t i = 0; i < n; i++)
		idx[evs[i].shard][cnt[evs[i].shard]++] = i;
	size_t done = 0;
	while (done < n) {
		uint32_t s;
		if (mode == 0) /* shard after shard */
			for (s = 0; pos[s] == cnt[s]; s++)
				;
		else /* random interleaving */
			do
				s = (uint32_t)(rng() % GEN_SHARDS);
			while (pos[s] == cnt[s]);
		struct gen_ev *g = &evs[idx[s][pos[s]++]];
		struct tally_prop p = rate_t_int_prop("n", g->n);
		if (mode == 3) {
			/* Batched feeding: the same records, grouped 1..40 at a time. */
			static struct rate_t_event bev[40];
			static struct rate_record br[40];
			static size_t nb, want = 1;
			rate_t_event(&bev[nb], g->key, g->customer, g->name, g->t, 1, &p);
			br[nb] = (struct rate_record){.ev = &bev[nb].ev, .tenant = rate_t_sv("t"),
						      .ingest_time_us = g->ingest, .shard = g->shard,
						      .offset = g->offset};
			nb++;
			done++;
			if (nb == want || done == n) {
				size_t fed = 0;
				CHECK_EQ(rate_engine_feed_batch(e, br, nb, &fed), 0);
				CHECK_EQ(fed, nb);
				nb = 0;
				want = 1 + rng() % 40;
			}
			continue;
		}
		struct rate_t_event ev;
		rate_t_event(&ev, g->key, g->customer, g->name, g->t, 1, &p);
		struct rate_record r = {.ev = &ev.ev, .tenant = rate_t_sv("t"),
					.ingest_time_us = g->ingest, .shard = g->shard, .offset = g->offset};
		CHECK_EQ(rate_engine_feed(e, &r), 0);
		done++;
		if (mode == 2 && rng() % 500 == 0)
			e = restart(e, cfg, cap, pos);
	}
	tick_all(e, GEN_SHARDS, T("2027-01-01"));
	rate_engine_destroy(e);
	rate_config_free(cfg);
}

/*
 * Crash between checkpoints: save at the half, keep rating to the end (invoices A), then
 * resume from the checkpoint in a new engine and replay the rest in another interleaving
 * (invoices B). Every invoice the replay writes again must be byte-identical to the first
 * one, so rewriting it is harmless, and none may be missing.
 */
static void test_crash_replay(struct gen_ev *evs, size_t n)
{
	struct rate_config *cfg = base_cfg("adjust_next", "\"pro\"");
	struct cap a = {0}, b = {0};
	struct rate_engine *e = engine(cfg, GEN_SHARDS, &a, NULL);
	static size_t idx[GEN_SHARDS][GEN_N];
	size_t cnt[GEN_SHARDS] = {0}, pos[GEN_SHARDS] = {0}, done = 0;
	char path[128];
	snprintf(path, sizeof path, "%s/crash.ckpt", g_ckpt_dir);
	for (size_t i = 0; i < n; i++)
		idx[evs[i].shard][cnt[evs[i].shard]++] = i;
	size_t a_at_ckpt = 0;
	for (int phase = 0; phase < 2; phase++) {
		while (done < n) {
			uint32_t s;
			if (phase == 0)
				do
					s = (uint32_t)(rng() % GEN_SHARDS);
				while (pos[s] == cnt[s]);
			else
				for (s = GEN_SHARDS - 1; pos[s] == cnt[s]; s--)
					;
			struct gen_ev *g = &evs[idx[s][pos[s]++]];
			struct tally_prop p = rate_t_int_prop("n", g->n);
			struct rate_t_event ev;
			rate_t_event(&ev, g->key, g->customer, g->name, g->t, 1, &p);
			struct rate_record r = {.ev = &ev.ev, .tenant = rate_t_sv("t"),
						.ingest_time_us = g->ingest, .shard = g->shard,
						.offset = g->offset};
			CHECK_EQ(rate_engine_feed(e, &r), 0);
			done++;
			if (phase == 0 && done == n / 2) {
				uint64_t p64[GEN_SHARDS];
				for (uint32_t k = 0; k < GEN_SHARDS; k++)
					p64[k] = pos[k];
				CHECK_EQ(rate_engine_save(e, p64, GEN_SHARDS, path), 0);
				a_at_ckpt = a.n;
			}
		}
		tick_all(e, GEN_SHARDS, T("2027-01-01"));
		rate_engine_destroy(e);
		if (phase == 1)
			break;
		/* "kill -9" and restart from the checkpoint */
		e = engine(cfg, GEN_SHARDS, &b, NULL);
		uint64_t p64[GEN_SHARDS];
		CHECK_EQ(rate_engine_load(e, p64, GEN_SHARDS, path), 0);
		done = 0;
		for (uint32_t k = 0; k < GEN_SHARDS; k++) {
			pos[k] = p64[k];
			done += pos[k];
		}
	}
	size_t same = 0;
	for (size_t i = 0; i < b.n; i++)
		for (size_t k = 0; k < a.n; k++)
			if (strcmp(a.v[k].customer, b.v[i].customer) == 0 && a.v[k].start == b.v[i].start)
				same += a.v[k].len == b.v[i].len &&
					memcmp(a.v[k].json, b.v[i].json, a.v[k].len) == 0;
	printf("crash replay: %zu invoices before the checkpoint, %zu rewritten, %zu identical\n",
	       a_at_ckpt, b.n, same);
	CHECK(b.n > 0);
	CHECK_EQ(same, b.n);
	CHECK_EQ(a_at_ckpt + b.n, a.n);
	cap_free(&a);
	cap_free(&b);
	rate_config_free(cfg);
}

/*
 * Model check: for every (customer, period, meter), the amount on the period's own invoice
 * plus every adjustment later made for that period must equal the price of ALL its events'
 * usage (on time and late), computed here independently of the engine's bookkeeping.
 */
struct model_row {
	char customer[16];
	int64_t start;
	int meter;
	rate_i128 qty;      /* RATE_QTY_SCALE */
	bool has;           /* for max */
	rate_i128 billed;   /* minor units, from the invoices */
};

static struct model_row *model_get(struct model_row *rows, size_t *n, const char *cust,
				   int64_t start, int meter)
{
	for (size_t i = 0; i < *n; i++)
		if (rows[i].start == start && rows[i].meter == meter && !strcmp(rows[i].customer, cust))
			return &rows[i];
	struct model_row *r = &rows[(*n)++];
	memset(r, 0, sizeof *r);
	snprintf(r->customer, sizeof r->customer, "%s", cust);
	r->start = start;
	r->meter = meter;
	return r;
}

static void model_check(const struct gen_ev *evs, size_t n, const struct cap *cap)
{
	struct rate_config *cfg = base_cfg("adjust_next", "\"pro\"");
	static struct model_row rows[4096];
	size_t nrows = 0;
	int m_calls = rate_config_meter(cfg, "api_calls"), m_g = rate_config_meter(cfg, "g"),
	    m_seats = rate_config_meter(cfg, "seats");
	for (size_t i = 0; i < n; i++) {
		const struct gen_ev *g = &evs[i];
		int m = !strcmp(g->name, "api.call") ? m_calls : !strcmp(g->name, "g") ? m_g
			: !strcmp(g->name, "seats")   ? m_seats : -1;
		if (m < 0)
			continue; /* storage: the events carry no "gb", so nothing is metered */
		int64_t start, end;
		rate_period_bounds(cfg, 1, g->t, &start, &end);
		struct model_row *r = model_get(rows, &nrows, g->customer, start, m);
		rate_i128 v = (rate_i128)g->n * rate_pow10(RATE_QTY_SCALE);
		if (m == m_calls)
			r->qty += rate_pow10(RATE_QTY_SCALE);
		else if (m == m_g)
			r->qty += v;
		else if (!r->has || v > r->qty)
			r->qty = v;
		r->has = true;
	}
	for (size_t k = 0; k < cap->n; k++) {
		json_t *inv = json_loads(cap->v[k].json, 0, NULL);
		const char *cust = json_string_value(json_object_get(inv, "customer"));
		const char *lists[2] = {"lines", "adjustments"};
		for (int li = 0; li < 2; li++) {
			size_t i;
			json_t *l;
			json_array_foreach(json_object_get(inv, lists[li]), i, l)
			{
				int m = rate_config_meter(cfg, json_string_value(json_object_get(l, "meter")));
				if (m != m_calls && m != m_g && m != m_seats)
					continue;
				int64_t start = li == 0 ? cap->v[k].start
						       : T(json_string_value(json_object_get(l, "late_period_start")));
				struct model_row *r = model_get(rows, &nrows, cust, start, m);
				const char *a = json_string_value(json_object_get(l, "amount"));
				r->billed += rate_t_dec(a, 2);
			}
		}
		json_decref(inv);
	}
	size_t ok = 0;
	for (size_t i = 0; i < nrows; i++) {
		const struct rate_price *p = NULL; /* every generated customer is on plan "pro" */
		for (uint32_t k = 0; k < cfg->plans[0].prices.count; k++)
			if ((int)cfg->plans[0].prices.prices[k].meter == rows[i].meter)
				p = &cfg->plans[0].prices.prices[k];
		CHECK(p != NULL);
		if (!p)
			continue;
		struct rate_charge ch;
		CHECK_EQ(rate_charge_compute(p, rows[i].qty, 2, RATE_ROUND_HALF_EVEN, &ch), 0);
		if (ch.amount == rows[i].billed)
			ok++;
		else
			fprintf(stderr, "model: %s %lld meter %d: billed %s, usage costs %s\n",
				rows[i].customer, (long long)rows[i].start, rows[i].meter,
				rate_t_fmt(rows[i].billed, 2), rate_t_fmt(ch.amount, 2));
	}
	printf("model check: %zu of %zu (customer, period, meter) totals equal the price of all "
	       "their usage\n", ok, nrows);
	CHECK_EQ(ok, nrows);
	CHECK(nrows > 50);
	rate_config_free(cfg);
}

static int inv_cmp(const void *a, const void *b)
{
	const struct inv *x = a, *y = b;
	int r = strcmp(x->customer, y->customer);
	return r ? r : (x->start > y->start) - (x->start < y->start);
}

static void test_arrival_order(void)
{
	static struct gen_ev evs[GEN_N];
	int64_t jan = T("2026-01-01");
	int64_t ingest[GEN_SHARDS] = {jan, jan, jan};
	uint64_t off[GEN_SHARDS] = {0};
	const char *names[] = {"api.call", "g", "seats", "storage"};
	for (size_t i = 0; i < GEN_N; i++) {
		struct gen_ev *g = &evs[i];
		uint32_t s = (uint32_t)(rng() % GEN_SHARDS);
		ingest[s] += (int64_t)(rng() % (4 * 3600 * S_US)); /* non-decreasing per shard */
		g->shard = s;
		g->offset = off[s]++;
		g->ingest = ingest[s];
		/* Mostly recent event times; some days old (on time or late depending on grace). */
		int64_t back = (rng() % 10 == 0) ? (int64_t)(rng() % (5 * DAY_US)) : (int64_t)(rng() % (3600 * S_US));
		g->t = g->ingest - back;
		if (g->t < jan)
			g->t = jan;
		snprintf(g->customer, sizeof g->customer, "c%u", (unsigned)(rng() % 7));
		g->name = names[rng() % 4];
		g->n = (int64_t)(rng() % 50) + 1;
		snprintf(g->key, sizeof g->key, "e%zu", i);
	}
	struct cap a = {0}, b = {0}, c = {0};
	run_order(evs, GEN_N, 0, &a);
	run_order(evs, GEN_N, 1, &b);
	snprintf(g_ckpt_dir, sizeof g_ckpt_dir, "/tmp/test_rate_ckptXXXXXX");
	CHECK(mkdtemp(g_ckpt_dir) != NULL);
	run_order(evs, GEN_N, 2, &c); /* random interleaving with ~12 restarts from checkpoints */
	CHECK_EQ(c.n, a.n);
	qsort(c.v, c.n, sizeof c.v[0], inv_cmp);
	CHECK(a.n > 10);
	CHECK_EQ(a.n, b.n);
	qsort(a.v, a.n, sizeof a.v[0], inv_cmp);
	qsort(b.v, b.n, sizeof b.v[0], inv_cmp);
	size_t same = 0, adjusted = 0;
	for (size_t i = 0; i < a.n && i < b.n; i++) {
		same += a.v[i].len == b.v[i].len && memcmp(a.v[i].json, b.v[i].json, a.v[i].len) == 0;
		adjusted += strstr(a.v[i].json, "late_period_start") != NULL;
	}
	printf("arrival order: %zu invoices (%zu with adjustments), %zu byte-identical\n", a.n,
	       adjusted, same);
	CHECK_EQ(same, a.n);
	CHECK(adjusted > 0); /* the mix did include late events */
	struct cap bt = {0};
	run_order(evs, GEN_N, 3, &bt); /* random interleaving, fed in batches */
	CHECK_EQ(bt.n, a.n);
	qsort(bt.v, bt.n, sizeof bt.v[0], inv_cmp);
	same = 0;
	for (size_t i = 0; i < a.n && i < bt.n; i++)
		same += a.v[i].len == bt.v[i].len && memcmp(a.v[i].json, bt.v[i].json, a.v[i].len) == 0;
	printf("batched feeding: %zu of %zu byte-identical\n", same, a.n);
	CHECK_EQ(same, a.n);
	cap_free(&bt);
	same = 0;
	for (size_t i = 0; i < a.n && i < c.n; i++)
		same += a.v[i].len == c.v[i].len && memcmp(a.v[i].json, c.v[i].json, a.v[i].len) == 0;
	printf("with restarts from checkpoints: %zu of %zu byte-identical\n", same, a.n);
	CHECK_EQ(same, a.n);
	/* A damaged checkpoint is refused, never half-loaded. */
	char path[128];
	snprintf(path, sizeof path, "%s/state.ckpt", g_ckpt_dir);
	FILE *f = fopen(path, "r+b");
	CHECK(f != NULL);
	if (f) {
		fseek(f, 40, SEEK_SET);
		int ch = fgetc(f);
		fseek(f, 40, SEEK_SET);
		fputc(ch ^ 1, f);
		fclose(f);
		struct rate_config *cfg = base_cfg("adjust_next", "\"pro\"");
		struct cap d = {0};
		struct rate_engine *e = engine(cfg, GEN_SHARDS, &d, NULL);
		uint64_t pos[GEN_SHARDS];
		CHECK_EQ(rate_engine_load(e, pos, GEN_SHARDS, path), -EBADMSG);
		rate_engine_destroy(e);
		e = engine(cfg, GEN_SHARDS, &d, NULL);
		snprintf(path, sizeof path, "%s/none.ckpt", g_ckpt_dir);
		CHECK_EQ(rate_engine_load(e, pos, GEN_SHARDS, path), -ENOENT);
		rate_engine_destroy(e);
		rate_config_free(cfg);
	}
	model_check(evs, GEN_N, &a);
	test_crash_replay(evs, GEN_N);
	snprintf(path, sizeof path, "rm -rf %s", g_ckpt_dir);
	CHECK_EQ(system(path), 0);
	cap_free(&a);
	cap_free(&b);
	cap_free(&c);
}

/* Regression: reports of an engine that has seen no customer yet (tally-rate's first
   usage.json after a restart on an empty WAL) passed NULL to memcpy (UBSan, torture_rate). */
static void test_empty_engine_reports(void)
{
	/* No "customers": nothing is preloaded, so the engine starts with no customer array. */
	struct rate_config *cfg = load(
		"{\"currency\":\"USD\",\"period\":\"month\",\"grace_seconds\":0,"
		"\"rounding\":\"half_even\",\"late_policy\":\"adjust_next\","
		"\"meters\":[{\"id\":\"calls\",\"event_name\":\"api.call\",\"aggregation\":\"count\"}],"
		"\"plans\":[{\"id\":\"pro\",\"base_fee\":\"1.00\",\"prices\":[{\"meter\":\"calls\","
		"\"model\":\"per_unit\",\"unit_price\":\"0.01\"}]}],\"default_plan\":\"pro\"}");
	struct cap cap = {0};
	char dir[] = "/tmp/test_rate_empty.XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	struct rate_engine *e = engine(cfg, 2, &cap, dir);
	char *json = NULL;
	size_t len = 0;
	CHECK_EQ(rate_engine_usage_json(e, &json, &len), 0);
	CHECK(json != NULL && strstr(json, "open_periods") != NULL);
	free(json);
	CHECK_EQ(rate_engine_write_reports(e, dir), 0);
	rate_engine_destroy(e);
	rate_config_free(cfg);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK_EQ(system(cmd), 0);
}

int main(void)
{
	test_empty_engine_reports();
	test_documented_invoices();
	test_usage_matches_invoice();
	test_million_events();
	test_resolution_and_credits();
	test_failed_close_retries();
	test_periods_and_lateness("adjust_next");
	test_periods_and_lateness("report_only");
	test_aggregations_and_overflow();
	test_arrival_order();
	return rate_t_done("test_rate_engine");
}
