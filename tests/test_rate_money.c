/*
 * tests/test_rate_money.c — exact decimals (parse, format, rounding, overflow), the currency
 * table, UTC calendar, and every price model with the documented examples, which
 * must come out exactly (docs/rating.md "Worked examples").
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "rate_testlib.h"
#include "tally/rate.h"

static void test_parse_format(void)
{
	rate_i128 v;
	char b[RATE_DEC_STR_MAX];
	CHECK_EQ(rate_dec_parse("0.000003", 8, 12, &v), 0);
	CHECK(v == 3000000);
	CHECK_EQ(rate_dec_parse("49.00", 5, 2, &v), 0);
	CHECK(v == 4900);
	CHECK_EQ(rate_dec_parse("49.000", 6, 2, &v), 0); /* trailing zero beyond the scale */
	CHECK(v == 4900);
	CHECK_EQ(rate_dec_parse("49.001", 6, 2, &v), -EDOM);
	CHECK_EQ(rate_dec_parse("-1.5", 4, 1, &v), 0);
	CHECK(v == -15);
	CHECK_EQ(rate_dec_parse("007", 3, 0, &v), 0);
	CHECK(v == 7);
	const char *bad[] = {"", "-", ".5", "5.", "1e3", "+1", " 1", "1 ", "1.2.3", "0x10", "1,000"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		CHECK_EQ(rate_dec_parse(bad[i], strlen(bad[i]), 12, &v), -EINVAL);
	/* 2^127 - 1 = 170141183460469231731687303715884105727 parses; one more does not. */
	const char *max = "170141183460469231731687303715884105727";
	CHECK_EQ(rate_dec_parse(max, strlen(max), 0, &v), 0);
	CHECK_EQ(rate_dec_format(v, 0, 0, b, sizeof b), (int)strlen(max));
	CHECK_STR(b, max);
	const char *over = "170141183460469231731687303715884105728";
	CHECK_EQ(rate_dec_parse(over, strlen(over), 0, &v), -ERANGE);
	CHECK_EQ(rate_dec_parse("1", 1, 38, &v), 0); /* 10^38 < 2^127 */
	CHECK_EQ(rate_dec_parse("2", 1, 38, &v), -ERANGE);

	rate_dec_format(3000000, 12, 0, b, sizeof b);
	CHECK_STR(b, "0.000003");
	rate_dec_format(4900, 2, 2, b, sizeof b);
	CHECK_STR(b, "49.00");
	rate_dec_format(300000, 2, 2, b, sizeof b);
	CHECK_STR(b, "3000.00");
	rate_dec_format(-5, 2, 2, b, sizeof b);
	CHECK_STR(b, "-0.05");
	rate_dec_format(rate_pow10(18) * 2500, 18, 0, b, sizeof b);
	CHECK_STR(b, "2500");
	rate_dec_format(5, 18, 0, b, sizeof b);
	CHECK_STR(b, "0.000000000000000005");
	rate_dec_format(7, 0, 2, b, sizeof b);
	CHECK_STR(b, "7.00");
	CHECK_EQ(rate_dec_format(123456, 2, 2, b, 4), -ENOSPC);
	/* Round trip of every scale. */
	for (unsigned s = 0; s <= 18; s++) {
		rate_i128 x = -123456789012345678LL, y;
		int n = rate_dec_format(x, s, 0, b, sizeof b);
		CHECK(n > 0);
		CHECK_EQ(rate_dec_parse(b, (size_t)n, s, &y), 0);
		CHECK(x == y);
	}
}

static void test_round_overflow(void)
{
	/* 2.5 -> 2 (even) / 3 (up); 3.5 -> 4 / 4; -2.5 -> -2 / -3; 2.51 -> 3 */
	CHECK(rate_round(25, 1, RATE_ROUND_HALF_EVEN) == 2);
	CHECK(rate_round(25, 1, RATE_ROUND_HALF_UP) == 3);
	CHECK(rate_round(35, 1, RATE_ROUND_HALF_EVEN) == 4);
	CHECK(rate_round(35, 1, RATE_ROUND_HALF_UP) == 4);
	CHECK(rate_round(-25, 1, RATE_ROUND_HALF_EVEN) == -2);
	CHECK(rate_round(-25, 1, RATE_ROUND_HALF_UP) == -3);
	CHECK(rate_round(251, 2, RATE_ROUND_HALF_EVEN) == 3);
	CHECK(rate_round(249, 2, RATE_ROUND_HALF_UP) == 2);
	CHECK(rate_round(12345, 0, RATE_ROUND_HALF_UP) == 12345);
	CHECK(rate_round(rate_pow10(38), 38, RATE_ROUND_HALF_EVEN) == 1);
	CHECK(rate_round(rate_pow10(38) / 2, 38, RATE_ROUND_HALF_EVEN) == 0);
	CHECK(rate_round(rate_pow10(38) / 2, 38, RATE_ROUND_HALF_UP) == 1);
	CHECK(rate_round(123, 60, RATE_ROUND_HALF_UP) == 0);

	rate_i128 r, big = rate_pow10(30);
	CHECK_EQ(rate_mul(big, big, &r), -ERANGE);
	CHECK_EQ(rate_mul(-big, big, &r), -ERANGE);
	CHECK_EQ(rate_mul(rate_pow10(19), rate_pow10(19), &r), 0);
	CHECK(r == rate_pow10(38));
	CHECK_EQ(rate_mul(-7, 6, &r), 0);
	CHECK(r == -42);
	rate_i128 max = (rate_i128)(((unsigned __int128)1 << 127) - 1);
	CHECK_EQ(rate_add(max, 1, &r), -ERANGE);
	CHECK_EQ(rate_add(max, -1, &r), 0);
	CHECK_EQ(rate_upscale(1, 0, 38, &r), 0);
	CHECK_EQ(rate_upscale(2, 0, 38, &r), -ERANGE);
	CHECK_EQ(rate_min_scale(rate_pow10(18) * 5, 18), 0);
	CHECK_EQ(rate_min_scale(rate_pow10(17) * 5, 18), 1);
	CHECK_EQ(rate_min_scale(0, 18), 0);
}

static void test_currency_time(void)
{
	CHECK_EQ(rate_currency_minor_units("USD"), 2);
	CHECK_EQ(rate_currency_minor_units("JPY"), 0);
	CHECK_EQ(rate_currency_minor_units("KWD"), 3);
	CHECK_EQ(rate_currency_minor_units("XXX"), -1);
	int64_t t;
	char b[RATE_TIME_STR_MAX];
	CHECK_EQ(rate_time_parse("2026-01-31T23:58:00Z", &t), 0);
	CHECK_EQ(t, 1769903880000000LL);
	rate_time_format(t, b);
	CHECK_STR(b, "2026-01-31T23:58:00Z");
	CHECK_EQ(rate_time_parse("2024-02-29", &t), 0);
	rate_time_format(t + 1, b);
	CHECK_STR(b, "2024-02-29T00:00:00.000001Z");
	CHECK_EQ(rate_time_parse("2023-02-29", &t), -EINVAL);
	CHECK_EQ(rate_time_parse("2026-13-01", &t), -EINVAL);
	CHECK_EQ(rate_time_parse("2026-01-01T24:00:00Z", &t), -EINVAL);
	CHECK_EQ(rate_time_parse("2026-01-01 00:00:00", &t), -EINVAL);
}

/* Prices quantity q (integer units) and returns the amount in minor units of USD. */
static rate_i128 price_of(const struct rate_price *p, rate_i128 q_units, enum rate_rounding m)
{
	struct rate_charge ch;
	int rc = rate_charge_compute(p, q_units * rate_pow10(RATE_QTY_SCALE), 2, m, &ch);
	CHECK_EQ(rc, 0);
	return rc == 0 ? ch.amount : -1;
}

static struct rate_price per_unit(const char *unit_price, long long free_units)
{
	struct rate_price p = {.model = RATE_MODEL_PER_UNIT};
	p.unit_price = rate_t_dec(unit_price, RATE_PRICE_SCALE);
	p.free_units = (rate_i128)free_units * rate_pow10(RATE_QTY_SCALE);
	return p;
}

static void test_documented_examples(void)
{
	struct rate_price p;
	p = per_unit("0.02", 1000);
	CHECK_STR(rate_t_fmt(price_of(&p, 2500, RATE_ROUND_HALF_EVEN), 2), "30.00");
	p = per_unit("0.001", 1000);
	CHECK_STR(rate_t_fmt(price_of(&p, 15000, RATE_ROUND_HALF_EVEN), 2), "14.00");
	p = per_unit("0.00001", 10000);
	CHECK_STR(rate_t_fmt(price_of(&p, 50000, RATE_ROUND_HALF_EVEN), 2), "0.40");
	p = per_unit("0.05", 10);
	CHECK_STR(rate_t_fmt(price_of(&p, 100, RATE_ROUND_HALF_EVEN), 2), "4.50");
	/* 1,000,000,000 one-token events at $0.000003: the aggregate, fed directly. */
	p = per_unit("0.000003", 0);
	CHECK_STR(rate_t_fmt(price_of(&p, 1000000000, RATE_ROUND_HALF_EVEN), 2), "3000.00");
	/* Free units above the quantity: nothing billable, nothing negative. */
	p = per_unit("0.02", 1000);
	CHECK_STR(rate_t_fmt(price_of(&p, 999, RATE_ROUND_HALF_EVEN), 2), "0.00");
	/* JPY: 0 minor digits. 1234 units at 0.5 = 617 */
	struct rate_charge ch;
	p = per_unit("0.5", 0);
	CHECK_EQ(rate_charge_compute(&p, 1234 * rate_pow10(18), 0, RATE_ROUND_HALF_EVEN, &ch), 0);
	CHECK(ch.amount == 617);
	/* Decimal quantity: 2.5 GB-hours at 0.013 = 0.0325 -> 0.03 (even) / 0.03 (up: 3.25->3) */
	p = per_unit("0.013", 0);
	CHECK_EQ(rate_charge_compute(&p, rate_t_dec("2.5", 18), 2, RATE_ROUND_HALF_EVEN, &ch), 0);
	CHECK_STR(rate_t_fmt(ch.amount, 2), "0.03");
	CHECK(ch.exact == rate_t_dec("0.0325", ch.amount_scale));
}

static void test_rounding_modes(void)
{
	/* 1 unit at 0.125: exact 0.125 -> 0.12 (half_even) / 0.13 (half_up). */
	struct rate_price p = per_unit("0.125", 0);
	CHECK_STR(rate_t_fmt(price_of(&p, 1, RATE_ROUND_HALF_EVEN), 2), "0.12");
	CHECK_STR(rate_t_fmt(price_of(&p, 1, RATE_ROUND_HALF_UP), 2), "0.13");
	/* 3 units: 0.375 -> 0.38 both. */
	CHECK_STR(rate_t_fmt(price_of(&p, 3, RATE_ROUND_HALF_EVEN), 2), "0.38");
	CHECK_STR(rate_t_fmt(price_of(&p, 3, RATE_ROUND_HALF_UP), 2), "0.38");
	/* One rounding per line: 3 tiers each 0.004 would round to 0.00 each; summed 0.012 -> 0.01 */
	struct rate_price g = {.model = RATE_MODEL_GRADUATED, .ntiers = 3};
	g.tiers[0] = (struct rate_tier){.up_to = 1 * rate_pow10(18), .unit_price = rate_t_dec("0.004", 12)};
	g.tiers[1] = (struct rate_tier){.up_to = 2 * rate_pow10(18), .unit_price = rate_t_dec("0.004", 12)};
	g.tiers[2] = (struct rate_tier){.unbounded = true, .unit_price = rate_t_dec("0.004", 12)};
	CHECK_STR(rate_t_fmt(price_of(&g, 3, RATE_ROUND_HALF_EVEN), 2), "0.01");
}

static void test_tiers_volume_package(void)
{
	/* Graduated: first 1,000,000 at 0.00001, rest at 0.000008.
	 * 1,500,000 -> 10.00 + 4.00 = 14.00 */
	struct rate_price g = {.model = RATE_MODEL_GRADUATED, .ntiers = 2};
	g.tiers[0] = (struct rate_tier){.up_to = 1000000 * rate_pow10(18), .unit_price = rate_t_dec("0.00001", 12)};
	g.tiers[1] = (struct rate_tier){.unbounded = true, .unit_price = rate_t_dec("0.000008", 12)};
	struct rate_charge ch;
	CHECK_EQ(rate_charge_compute(&g, 1500000 * rate_pow10(18), 2, RATE_ROUND_HALF_EVEN, &ch), 0);
	CHECK_STR(rate_t_fmt(ch.amount, 2), "14.00");
	CHECK_EQ(ch.nparts, 2);
	CHECK(ch.parts[0].quantity == 1000000 * rate_pow10(18));
	CHECK(ch.parts[1].quantity == 500000 * rate_pow10(18));
	/* Below the first bound: one part. */
	CHECK_EQ(rate_charge_compute(&g, 10 * rate_pow10(18), 2, RATE_ROUND_HALF_EVEN, &ch), 0);
	CHECK_EQ(ch.nparts, 1);

	/* Volume: <= 1,000,000 at 0.01, above at 0.005. 999,999 -> 9999.99; 1,000,001 -> 5000.005
	 * -> 5000.00 (half_even) / 5000.01 (half_up): more units, smaller bill. */
	struct rate_price v = {.model = RATE_MODEL_VOLUME, .ntiers = 2};
	v.tiers[0] = (struct rate_tier){.up_to = 1000000 * rate_pow10(18), .unit_price = rate_t_dec("0.01", 12)};
	v.tiers[1] = (struct rate_tier){.unbounded = true, .unit_price = rate_t_dec("0.005", 12)};
	rate_i128 a = price_of(&v, 999999, RATE_ROUND_HALF_EVEN);
	rate_i128 b = price_of(&v, 1000001, RATE_ROUND_HALF_EVEN);
	CHECK_STR(rate_t_fmt(a, 2), "9999.99");
	CHECK_STR(rate_t_fmt(b, 2), "5000.00");
	CHECK(b < a);
	CHECK_STR(rate_t_fmt(price_of(&v, 1000001, RATE_ROUND_HALF_UP), 2), "5000.01");
	CHECK_STR(rate_t_fmt(price_of(&v, 1000000, RATE_ROUND_HALF_UP), 2), "10000.00");

	/* Package: 100 units per package at 5.00, partial packages round up. */
	struct rate_price k = {.model = RATE_MODEL_PACKAGE, .package_size = 100 * rate_pow10(18),
			       .unit_price = rate_t_dec("5", 12)};
	CHECK_STR(rate_t_fmt(price_of(&k, 250, RATE_ROUND_HALF_EVEN), 2), "15.00");
	CHECK_STR(rate_t_fmt(price_of(&k, 200, RATE_ROUND_HALF_EVEN), 2), "10.00");
	CHECK_STR(rate_t_fmt(price_of(&k, 0, RATE_ROUND_HALF_EVEN), 2), "0.00");
	CHECK_STR(rate_t_fmt(price_of(&k, 1, RATE_ROUND_HALF_EVEN), 2), "5.00");
}

static void test_charge_overflow(void)
{
	struct rate_price p = per_unit("9000000", 0);
	struct rate_charge ch;
	/* 10^20 units at 9,000,000 = 9e26 > ~1.7e26 representable at 12 fractional digits. */
	rate_i128 q = rate_pow10(20) * rate_pow10(18);
	CHECK_EQ(rate_charge_compute(&p, q, 2, RATE_ROUND_HALF_EVEN, &ch), -ERANGE);
	/* 10^13 units: 9e19, fine. */
	CHECK_EQ(rate_charge_compute(&p, rate_pow10(13) * rate_pow10(18), 2, RATE_ROUND_HALF_EVEN, &ch), 0);
	CHECK_STR(rate_t_fmt(ch.amount, 2), "90000000000000000000.00");
	CHECK_EQ(rate_charge_compute(&p, -1, 2, RATE_ROUND_HALF_EVEN, &ch), -EINVAL);
}

int main(void)
{
	test_parse_format();
	test_round_overflow();
	test_currency_time();
	test_documented_examples();
	test_rounding_modes();
	test_tiers_volume_package();
	test_charge_overflow();
	return rate_t_done("test_rate_money");
}
