/*
 * rate_money.c — exact decimal arithmetic for rating, the currency table and UTC calendar
 * arithmetic. See docs/rating.md "Money".
 *
 * Invariants: every value is an integer mantissa with a scale known to the caller; nothing
 * here rounds except rate_round(), and nothing wraps: rate_mul/rate_add/rate_upscale check
 * and return -ERANGE. Pure functions, any thread.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "rate_internal.h"
#include "tally/rate.h"

typedef unsigned __int128 rate_u128;

#define RATE_I128_MAX ((rate_i128)(((rate_u128)1 << 127) - 1))
#define RATE_POW10_MAX 38

static rate_i128 pow10_tab[RATE_POW10_MAX + 1];
static bool pow10_ready;

static void pow10_init(void)
{
	rate_i128 p = 1;
	for (unsigned i = 0; i <= RATE_POW10_MAX; i++) {
		pow10_tab[i] = p;
		if (i < RATE_POW10_MAX)
			p *= 10;
	}
	pow10_ready = true;
}

rate_i128 rate_pow10(unsigned n)
{
	/* Benign race: every thread writes the same values. */
	if (!pow10_ready)
		pow10_init();
	return n <= RATE_POW10_MAX ? pow10_tab[n] : 0;
}

static rate_u128 mag(rate_i128 v)
{
	return v < 0 ? (rate_u128)0 - (rate_u128)v : (rate_u128)v;
}

int rate_mul(rate_i128 a, rate_i128 b, rate_i128 *out)
{
	/* Checked by division rather than __builtin_mul_overflow: with clang that builtin needs
	 * compiler-rt's __muloti4 for 128-bit operands, which libgcc does not provide. */
	rate_u128 ua = mag(a), ub = mag(b);
	if (ua != 0 && ub > (rate_u128)RATE_I128_MAX / ua)
		return -ERANGE;
	rate_u128 p = ua * ub;
	*out = ((a < 0) != (b < 0)) ? -(rate_i128)p : (rate_i128)p;
	return 0;
}

int rate_add(rate_i128 a, rate_i128 b, rate_i128 *out)
{
	if (__builtin_add_overflow(a, b, out))
		return -ERANGE;
	return 0;
}

int rate_upscale(rate_i128 v, unsigned from, unsigned to, rate_i128 *out)
{
	if (to < from || to - from > RATE_POW10_MAX)
		return -ERANGE;
	return rate_mul(v, rate_pow10(to - from), out);
}

rate_i128 rate_round(rate_i128 v, unsigned drop, enum rate_rounding mode)
{
	if (drop == 0)
		return v;
	if (drop > RATE_POW10_MAX)
		return 0; /* |v| < 1.8e38 < 0.5e39: always rounds to zero */
	rate_i128 p = rate_pow10(drop);
	rate_i128 q = v / p; /* truncates toward zero */
	rate_i128 r = v % p;
	rate_i128 ar = r < 0 ? -r : r;
	rate_i128 rest = p - ar; /* compare 2|r| with p without overflowing */
	bool away;
	if (ar > rest)
		away = true;
	else if (ar < rest)
		away = false;
	else if (mode == RATE_ROUND_HALF_UP)
		away = true;
	else
		away = (q % 2) != 0;
	if (away)
		q += v < 0 ? -1 : 1;
	return q;
}

unsigned rate_min_scale(rate_i128 v, unsigned scale)
{
	while (scale > 0 && v % 10 == 0) {
		v /= 10;
		scale--;
	}
	return scale;
}

int rate_dec_parse(const char *s, size_t len, unsigned scale, rate_i128 *out)
{
	if (scale > RATE_POW10_MAX)
		return -EINVAL;
	size_t i = 0;
	bool neg = false;
	if (i < len && s[i] == '-') {
		neg = true;
		i++;
	}
	size_t int_digits = 0, frac_digits = 0;
	rate_u128 m = 0;
	const rate_u128 limit = (rate_u128)RATE_I128_MAX;
	for (; i < len && s[i] >= '0' && s[i] <= '9'; i++, int_digits++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (m > (limit - d) / 10)
			return -ERANGE;
		m = m * 10 + d;
	}
	if (int_digits == 0)
		return -EINVAL;
	if (i < len && s[i] == '.') {
		i++;
		for (; i < len && s[i] >= '0' && s[i] <= '9'; i++, frac_digits++) {
			unsigned d = (unsigned)(s[i] - '0');
			if (frac_digits >= scale) {
				if (d != 0)
					return -EDOM;
				continue; /* a trailing zero beyond the scale changes nothing */
			}
			if (m > (limit - d) / 10)
				return -ERANGE;
			m = m * 10 + d;
		}
		if (frac_digits == 0)
			return -EINVAL;
	}
	if (i != len)
		return -EINVAL;
	unsigned have = frac_digits < scale ? (unsigned)frac_digits : scale;
	rate_i128 v;
	if (rate_upscale((rate_i128)m, have, scale, &v) != 0)
		return -ERANGE;
	*out = neg ? -v : v;
	return 0;
}

int rate_dec_format(rate_i128 m, unsigned scale, unsigned min_frac, char *buf, size_t cap)
{
	char digits[48];
	int nd = 0;
	rate_u128 u = mag(m);
	do {
		digits[nd++] = (char)('0' + (int)(u % 10));
		u /= 10;
	} while (u != 0);
	/* digits[] is little-endian; make sure there is one integer digit. */
	while (nd <= (int)scale)
		digits[nd++] = '0';
	int frac = (int)scale;
	/* Trim trailing fractional zeros down to min_frac. */
	int skip = 0;
	while (frac - skip > (int)min_frac && digits[skip] == '0')
		skip++;
	int pad = (int)min_frac > frac ? (int)min_frac - frac : 0;
	int shown_frac = frac - skip + pad;
	size_t need = (m < 0 ? 1u : 0u) + (size_t)(nd - frac) + (shown_frac ? 1u + (size_t)shown_frac : 0u) + 1u;
	if (need > cap)
		return -ENOSPC;
	size_t o = 0;
	if (m < 0)
		buf[o++] = '-';
	for (int k = nd - 1; k >= frac; k--)
		buf[o++] = digits[k];
	if (shown_frac) {
		buf[o++] = '.';
		for (int k = frac - 1; k >= skip; k--)
			buf[o++] = digits[k];
		for (int k = 0; k < pad; k++)
			buf[o++] = '0';
	}
	buf[o] = '\0';
	return (int)o;
}

/* ISO 4217 minor units of the common currencies; extend with "minor_units" in the config. */
static const struct {
	char code[4];
	int minor;
} currency_tab[] = {
	{"AED", 2}, {"ARS", 2}, {"AUD", 2}, {"BHD", 3}, {"BRL", 2}, {"CAD", 2}, {"CHF", 2},
	{"CLP", 0}, {"CNY", 2}, {"CZK", 2}, {"DKK", 2}, {"EUR", 2}, {"GBP", 2}, {"HKD", 2},
	{"HUF", 2}, {"IDR", 2}, {"ILS", 2}, {"INR", 2}, {"ISK", 0}, {"JOD", 3}, {"JPY", 0},
	{"KRW", 0}, {"KWD", 3}, {"MXN", 2}, {"MYR", 2}, {"NOK", 2}, {"NZD", 2}, {"OMR", 3},
	{"PHP", 2}, {"PLN", 2}, {"RON", 2}, {"SAR", 2}, {"SEK", 2}, {"SGD", 2}, {"THB", 2},
	{"TND", 3}, {"TRY", 2}, {"TWD", 2}, {"UAH", 2}, {"USD", 2}, {"VND", 0}, {"ZAR", 2},
};

int rate_currency_minor_units(const char *code)
{
	for (size_t i = 0; i < sizeof currency_tab / sizeof currency_tab[0]; i++)
		if (strcmp(currency_tab[i].code, code) == 0)
			return currency_tab[i].minor;
	return -1;
}

/* ---- calendar: days <-> civil dates (H. Hinnant's algorithms, proleptic Gregorian) ---- */

int64_t rate_days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

void rate_civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t yy = (int64_t)yoe + era * 400;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;
	*d = doy - (153 * mp + 2) / 5 + 1;
	*m = mp < 10 ? mp + 3 : mp - 9;
	*y = yy + (*m <= 2);
}

unsigned rate_days_in_month(int64_t y, unsigned m)
{
	static const unsigned dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	if (m == 2) {
		bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
		return leap ? 29 : 28;
	}
	return dim[m - 1];
}

#define US_PER_DAY RATE_US_PER_DAY

static int parse_uint(const char *s, int n, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	*out = v;
	return 0;
}

int rate_time_parse(const char *s, int64_t *us)
{
	size_t len = strlen(s);
	unsigned y, mo, d, h = 0, mi = 0, se = 0;
	if (len != 10 && len != 20)
		return -EINVAL;
	if (parse_uint(s, 4, &y) || s[4] != '-' || parse_uint(s + 5, 2, &mo) || s[7] != '-' ||
	    parse_uint(s + 8, 2, &d))
		return -EINVAL;
	if (len == 20) {
		if (s[10] != 'T' || parse_uint(s + 11, 2, &h) || s[13] != ':' ||
		    parse_uint(s + 14, 2, &mi) || s[16] != ':' || parse_uint(s + 17, 2, &se) ||
		    s[19] != 'Z')
			return -EINVAL;
	}
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > rate_days_in_month(y, mo) || h > 23 ||
	    mi > 59 || se > 59)
		return -EINVAL;
	int64_t days = rate_days_from_civil(y, mo, d);
	*us = days * US_PER_DAY + ((int64_t)h * 3600 + mi * 60 + se) * 1000000LL;
	return 0;
}

int rate_time_format(int64_t us, char buf[RATE_TIME_STR_MAX])
{
	int64_t days = us >= 0 ? us / US_PER_DAY : -((-us + US_PER_DAY - 1) / US_PER_DAY);
	int64_t rem = us - days * US_PER_DAY;
	int64_t y;
	unsigned m, d;
	rate_civil_from_days(days, &y, &m, &d);
	int64_t secs = rem / 1000000, frac = rem % 1000000;
	if (frac)
		return snprintf(buf, RATE_TIME_STR_MAX, "%04lld-%02u-%02uT%02d:%02d:%02d.%06dZ",
				(long long)y, m, d, (int)(secs / 3600), (int)(secs / 60 % 60),
				(int)(secs % 60), (int)frac);
	return snprintf(buf, RATE_TIME_STR_MAX, "%04lld-%02u-%02uT%02d:%02d:%02dZ", (long long)y, m,
			d, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60));
}
