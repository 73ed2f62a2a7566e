/*
 * tests/test_rate_config.c — the rating configuration: the example parses into the
 * expected values; every kind of invalid input is refused with a message naming the field
 * path (docs/rating.md "Configuration").
 */
#include <errno.h>
#include <string.h>

#include "rate_testlib.h"
#include "tally/rate.h"

static const char EXAMPLE[] =
	"{ \"currency\": \"USD\", \"period\": \"month\", \"grace_seconds\": 172800,\n"
	"  \"rounding\": \"half_even\", \"late_policy\": \"adjust_next\",\n"
	"  \"meters\": [ {\"id\": \"api_calls\", \"event_name\": \"api.call\", \"aggregation\": \"count\"},\n"
	"              {\"id\": \"tokens\", \"event_name\": \"ai.tokens\", \"aggregation\": \"sum\", \"property\": \"tokens\",\n"
	"               \"filter\": [{\"property\": \"model\", \"equals\": \"gpt-4\"}]} ],\n"
	"  \"plans\": [ {\"id\": \"pro\", \"base_fee\": \"49.00\", \"prices\": [\n"
	"              {\"meter\": \"api_calls\", \"model\": \"per_unit\", \"unit_price\": \"0.02\", \"free_units\": 1000},\n"
	"              {\"meter\": \"tokens\", \"model\": \"graduated\", \"tiers\": [{\"up_to\": 1000000, \"unit_price\": \"0.00001\"},\n"
	"                                                           {\"up_to\": null, \"unit_price\": \"0.000008\"}]} ]} ],\n"
	"  \"customers\": [ {\"id\": \"cus_abc\", \"plan\": \"pro\", \"billing_anchor_day\": 15,\n"
	"                  \"prices\": [ {\"meter\": \"api_calls\", \"model\": \"per_unit\", \"unit_price\": \"0.015\"} ],\n"
	"                  \"contracts\": [ {\"from\": \"2026-01-01\", \"to\": \"2026-07-01T00:00:00Z\", \"prices\": [\n"
	"                       {\"meter\": \"api_calls\", \"model\": \"package\", \"unit_price\": \"5\", \"package_size\": 1000} ]} ],\n"
	"                  \"credits\": [ {\"amount\": \"100.00\", \"expires\": \"2026-12-31\", \"priority\": 1} ] } ],\n"
	"  \"default_plan\": \"pro\" }\n";

static void test_example(void)
{
	struct rate_config *cfg;
	char err[512];
	int rc = rate_config_parse(EXAMPLE, strlen(EXAMPLE), &cfg, err, sizeof err);
	CHECK_EQ(rc, 0);
	if (rc) {
		fprintf(stderr, "%s\n", err);
		return;
	}
	CHECK_STR(cfg->currency, "USD");
	CHECK_EQ(cfg->minor_units, 2);
	CHECK_EQ(cfg->period, RATE_PERIOD_MONTH);
	CHECK_EQ(cfg->grace_us, 172800LL * 1000000);
	CHECK_EQ(cfg->rounding, RATE_ROUND_HALF_EVEN);
	CHECK_EQ(cfg->late_policy, RATE_LATE_ADJUST_NEXT);
	CHECK_EQ(cfg->nmeters, 2);
	CHECK_EQ(cfg->meters[1].agg, RATE_AGG_SUM);
	CHECK_STR(cfg->meters[1].property, "tokens");
	CHECK_EQ(cfg->meters[1].nfilters, 1);
	CHECK(cfg->meters[1].filters[0].values[0].is_string);
	CHECK_EQ(cfg->nplans, 1);
	CHECK(cfg->plans[0].base_fee == rate_t_dec("49", 12));
	CHECK_EQ(cfg->plans[0].prices.count, 2);
	CHECK(cfg->plans[0].prices.prices[0].free_units == 1000 * rate_pow10(18));
	CHECK_EQ(cfg->plans[0].prices.prices[1].ntiers, 2);
	CHECK(cfg->plans[0].prices.prices[1].tiers[1].unbounded);
	CHECK(cfg->plans[0].prices.prices[1].tiers[1].unit_price == 8000000);
	CHECK_EQ(cfg->ncustomers, 1);
	CHECK_EQ(cfg->customers[0].anchor_day, 15);
	CHECK_EQ(cfg->customers[0].ncontracts, 1);
	CHECK_EQ(cfg->customers[0].contracts[0].prices.prices[0].model, RATE_MODEL_PACKAGE);
	CHECK(cfg->customers[0].credits[0].amount == 10000);
	CHECK_EQ(cfg->default_plan, 0);

	/* Price resolution is exercised through the engine; config keeps all three levels. */
	rate_config_free(cfg);
}

/* Replaces the first occurrence of `from` in EXAMPLE with `to`, parses, expects `msg`. */
static void expect_error(const char *from, const char *to, const char *msg)
{
	char buf[8192];
	const char *p = strstr(EXAMPLE, from);
	if (!p) {
		fprintf(stderr, "test bug: %s not in example\n", from);
		CHECK(0);
		return;
	}
	size_t a = (size_t)(p - EXAMPLE);
	snprintf(buf, sizeof buf, "%.*s%s%s", (int)a, EXAMPLE, to, p + strlen(from));
	struct rate_config *cfg = NULL;
	char err[512] = "";
	int rc = rate_config_parse(buf, strlen(buf), &cfg, err, sizeof err);
	CHECK_EQ(rc, -EINVAL);
	CHECK(cfg == NULL);
	if (strcmp(err, msg) != 0) {
		rate_t_failures++;
		fprintf(stderr, "config error for [%s -> %s]:\n  got      %s\n  expected %s\n", from, to,
			err, msg);
	}
	rate_t_checks++;
	rate_config_free(cfg);
}

static void test_errors(void)
{
	expect_error("\"0.000008\"", "0.000008",
		     "plans[0].prices[1].tiers[1].unit_price: not a decimal string");
	expect_error("\"0.000008\"", "\"0.0000080000001\"",
		     "plans[0].prices[1].tiers[1].unit_price: more than 12 fractional digits");
	expect_error("\"0.00001\"", "\"1e-5\"",
		     "plans[0].prices[1].tiers[0].unit_price: not a decimal string");
	expect_error("{\"up_to\": null, \"unit_price\": \"0.000008\"}",
		     "{\"up_to\": 2000000, \"unit_price\": \"0.000008\"}",
		     "plans[0].prices[1].tiers[1].up_to: the last tier must have \"up_to\": null");
	expect_error("{\"up_to\": 1000000,", "{\"up_to\": null,",
		     "plans[0].prices[1].tiers[0].up_to: null only in the last tier");
	expect_error("\"USD\"", "\"XYZ\"", "currency: unknown currency: set \"minor_units\"");
	expect_error("\"month\"", "\"week\"",
		     "period: must be one of month | day | hour | {\"seconds\": N}");
	expect_error("\"month\"", "{\"seconds\": 0}", "period.seconds: must be 1..31622400");
	expect_error("\"half_even\"", "\"bankers\"", "rounding: must be one of half_even | half_up");
	expect_error("\"adjust_next\"", "\"drop\"",
		     "late_policy: must be one of adjust_next | report_only");
	expect_error("\"aggregation\": \"count\"", "\"aggregation\": \"avg\"",
		     "meters[0].aggregation: must be one of count | sum | max | last | unique_count");
	expect_error("\"property\": \"tokens\",", "",
		     "meters[1].property: missing");
	expect_error("\"equals\": \"gpt-4\"", "\"equals\": \"gpt-4\", \"in\": [1]",
		     "meters[1].filter[0]: exactly one of equals, not_equals, in is required");
	expect_error("{\"meter\": \"tokens\"", "{\"meter\": \"tokenz\"",
		     "plans[0].prices[1].meter: no such meter");
	expect_error("\"plan\": \"pro\"", "\"plan\": \"enterprise\"",
		     "customers[0].plan: no such plan");
	expect_error("\"billing_anchor_day\": 15", "\"billing_anchor_day\": 32",
		     "customers[0].billing_anchor_day: must be 1..31");
	expect_error("\"amount\": \"100.00\"", "\"amount\": \"100.001\"",
		     "customers[0].credits[0].amount: more than 2 fractional digits");
	expect_error("\"expires\": \"2026-12-31\"", "\"expires\": \"tomorrow\"",
		     "customers[0].credits[0].expires: not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC)");
	expect_error("\"to\": \"2026-07-01T00:00:00Z\"", "\"to\": \"2025-07-01\"",
		     "customers[0].contracts[0].to: not after from");
	expect_error("\"package_size\": 1000", "\"package_size\": 0",
		     "customers[0].contracts[0].prices[0].package_size: must be positive");
	expect_error("\"default_plan\": \"pro\"", "\"default_plan\": \"free\"",
		     "default_plan: no such plan");
	expect_error("\"grace_seconds\"", "\"grace_secs\"", "grace_secs: unknown field");
	expect_error("\"free_units\": 1000", "\"free_units\": 1000, \"freebies\": 1",
		     "plans[0].prices[0].freebies: unknown field");
	expect_error("\"base_fee\": \"49.00\"", "\"base_fee\": 49.0",
		     "plans[0].base_fee: not a decimal string");
	expect_error("\"free_units\": 1000", "\"free_units\": \"-5\"",
		     "plans[0].prices[0].free_units: negative");
	expect_error("{\"id\": \"tokens\"", "{\"id\": \"api_calls\"",
		     "meters[1].id: duplicate meter id \"api_calls\"");
	expect_error("\"event_name\": \"api.call\"", "\"event_name\": \"api call\"",
		     "meters[0].event_name: character outside [A-Za-z0-9._:-]");
	expect_error("\"meters\": [", "\"meterz\": [", "meterz: unknown field");
	expect_error("{ \"currency\"", "[ \"currency\"",
		     "(config): JSON error at line 1 column 13: ']' expected near ':'");
}

static void test_small_configs(void)
{
	struct rate_config *cfg;
	char err[256];
	const char *jpy = "{\"currency\":\"JPY\",\"period\":{\"seconds\":60},\"meters\":[{\"id\":\"m\","
			  "\"event_name\":\"e\",\"aggregation\":\"unique_count\",\"property\":\"u\"}]}";
	CHECK_EQ(rate_config_parse(jpy, strlen(jpy), &cfg, err, sizeof err), 0);
	if (cfg) {
		CHECK_EQ(cfg->minor_units, 0);
		CHECK_EQ(cfg->period, RATE_PERIOD_SECONDS);
		CHECK_EQ(cfg->period_us, 60000000);
		CHECK_EQ(cfg->default_plan, -1);
		CHECK_EQ(cfg->rounding, RATE_ROUND_HALF_EVEN);
		rate_config_free(cfg);
	}
	const char *nomet = "{\"currency\":\"EUR\",\"meters\":[]}";
	CHECK_EQ(rate_config_parse(nomet, strlen(nomet), &cfg, err, sizeof err), -EINVAL);
	CHECK_STR(err, "meters: empty");
	CHECK_EQ(rate_config_load("/nonexistent/rate.json", &cfg, err, sizeof err), -ENOENT);
}

int main(void)
{
	test_example();
	test_errors();
	test_small_configs();
	return rate_t_done("test_rate_config");
}
