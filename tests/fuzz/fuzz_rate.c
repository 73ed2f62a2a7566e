/*
 * tests/fuzz/fuzz_rate.c — libFuzzer target for the rating parsers: the first byte picks
 *   0: the configuration parser (and, when it accepts, pricing a few quantities with every
 *      price it produced — nothing may crash, overflow must be reported, never wrap);
 *   1: decimal parsing, with a format -> parse round trip that must give the same value;
 *   2: time parsing, with a format -> parse round trip.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tally/rate.h"

static void price_all(const struct rate_config *cfg, const struct rate_price_set *set)
{
	static const long long qs[] = {0, 1, 999, 1000, 1001, 123456789, 9000000000000000000LL};
	for (uint32_t i = 0; i < set->count; i++)
		for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
			struct rate_charge ch;
			rate_i128 q;
			if (rate_upscale(qs[k], 0, RATE_QTY_SCALE, &q) != 0)
				continue;
			int rc = rate_charge_compute(&set->prices[i], q, cfg->minor_units,
						     cfg->rounding, &ch);
			if (rc == 0 && ch.amount < 0)
				abort(); /* non-negative prices never give a negative amount */
		}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	const char *s = (const char *)data + 1;
	size_t n = size - 1;
	if (data[0] % 3 == 0) {
		struct rate_config *cfg;
		char err[256];
		if (rate_config_parse(s, n, &cfg, err, sizeof err) == 0) {
			for (uint32_t p = 0; p < cfg->nplans; p++)
				price_all(cfg, &cfg->plans[p].prices);
			for (uint32_t c = 0; c < cfg->ncustomers; c++)
				price_all(cfg, &cfg->customers[c].prices);
			rate_config_free(cfg);
		} else if (err[0] == '\0') {
			abort(); /* every refusal names a field */
		}
	} else if (data[0] % 3 == 1) {
		unsigned scale = (unsigned)(data[0] / 3) % 39;
		rate_i128 v, w;
		if (rate_dec_parse(s, n, scale, &v) == 0) {
			char buf[RATE_DEC_STR_MAX];
			int len = rate_dec_format(v, scale, 0, buf, sizeof buf);
			if (len < 0 || rate_dec_parse(buf, (size_t)len, scale, &w) != 0 || v != w)
				abort();
		}
	} else {
		char z[64];
		if (n >= sizeof z)
			return 0;
		memcpy(z, s, n);
		z[n] = '\0';
		int64_t t, u;
		if (rate_time_parse(z, &t) == 0) {
			char buf[RATE_TIME_STR_MAX];
			rate_time_format(t, buf);
			if (rate_time_parse(buf, &u) != 0 || t != u)
				abort();
		}
	}
	return 0;
}
