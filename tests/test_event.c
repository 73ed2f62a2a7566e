/*
 * tests/test_event.c — the event body codec (include/tally/event.h, src/event.c):
 * encode/decode round trips at and inside every limit, every reject reason event_decode can
 * produce (built byte by byte, one broken rule per case), truncation at every byte, the
 * encoder's own validation, UTF-8 and name-character tables, the fingerprint and the content
 * digest (which must ignore the key and see every other field).
 *
 * Not produced by event_decode and so not tested here: TIME_TOO_OLD / TIME_TOO_NEW (the broker
 * compares against its clock).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "proto_testlib.h"
#include "tally/event.h"

static struct proto_wb W; /* scratch writer, reset per case */

static const char KEY24[] = "req_0123456789abcdefghij"; /* 24 bytes */

/* A realistic event with one property of each kind. */
static struct tally_prop g_props[3];
static struct tally_event_in sample_event(void)
{
	g_props[0] = (struct tally_prop){.key = proto_t_sv("tokens"),
					 .kind = TALLY_VALUE_INT,
					 .i64 = 1234};
	g_props[1] = (struct tally_prop){.key = proto_t_sv("model"),
					 .kind = TALLY_VALUE_STRING,
					 .str = proto_t_sv("gpt-4o")};
	g_props[2] = (struct tally_prop){.key = proto_t_sv("cost"),
					 .kind = TALLY_VALUE_DECIMAL,
					 .scale = 6,
					 .i64 = 12345};
	struct tally_event_in in = {
		.key = proto_t_sv(KEY24),
		.customer = proto_t_sv("cus_000123"),
		.name = proto_t_sv("ai.tokens"),
		.event_time_us = 1763700000123456,
		.prop_count = 3,
		.props = g_props,
	};
	return in;
}

static bool prop_eq(const struct tally_prop *a, const struct tally_prop *b)
{
	if (a->kind != b->kind || a->key.len != b->key.len ||
	    memcmp(a->key.ptr, b->key.ptr, a->key.len) != 0)
		return false;
	switch (a->kind) {
	case TALLY_VALUE_INT:
		return a->i64 == b->i64;
	case TALLY_VALUE_DECIMAL:
		return a->i64 == b->i64 && a->scale == b->scale;
	case TALLY_VALUE_STRING:
		return a->str.len == b->str.len &&
		       (a->str.len == 0 || memcmp(a->str.ptr, b->str.ptr, a->str.len) == 0);
	}
	return false;
}

/* Encodes `in`, decodes it back and compares every field. Returns the encoded size. */
static long round_trip(const struct tally_event_in *in, const char *label)
{
	static uint8_t buf[TALLY_EVENT_BYTES_MAX + 64];
	long n = event_encode(in, buf, sizeof(buf));
	CHECK_EQ_CASE(label, n > 0, 1);
	if (n <= 0)
		return n;
	CHECK_EQ_CASE(label, (size_t)n, event_encoded_size(in));
	struct tally_event ev;
	CHECK_EQ_CASE(label, event_decode(buf, (size_t)n, &ev), TALLY_REJECT_NONE);
	CHECK(ev.body.ptr == buf && ev.body.len == (uint32_t)n);
	CHECK(proto_t_view_eq(ev.key, in->key.ptr, in->key.len));
	CHECK(proto_t_view_eq(ev.customer, in->customer.ptr, in->customer.len));
	CHECK(proto_t_view_eq(ev.name, in->name.ptr, in->name.len));
	CHECK_EQ_CASE(label, ev.event_time_us, in->event_time_us);
	CHECK_EQ_CASE(label, ev.prop_count, in->prop_count);
	/* views point inside the decoded buffer */
	CHECK(ev.key.ptr >= buf && ev.key.ptr + ev.key.len <= buf + n);
	CHECK(ev.props.ptr >= buf && ev.props.ptr + ev.props.len == buf + n);
	struct tally_prop_iter it;
	struct tally_prop p;
	uint32_t i = 0;
	event_prop_iter_init(&ev, &it);
	while (event_prop_next(&it, &p)) {
		CHECK_EQ_CASE(label, i < in->prop_count, 1);
		if (i < in->prop_count)
			CHECK(prop_eq(&p, &in->props[i]));
		/* find gives the same property */
		struct tally_prop f;
		CHECK(event_prop_find(&ev, (const char *)p.key.ptr, p.key.len, &f));
		CHECK(prop_eq(&f, &p));
		i++;
	}
	CHECK_EQ_CASE(label, i, in->prop_count);
	/* re-encoding the decoded event gives identical bytes (canonical encoding) */
	return n;
}

static void test_round_trip(void)
{
	struct tally_event_in in = sample_event();
	long n = round_trip(&in, "sample");
	/* 12 + 24 + 10 + 9 + (2+6+8) + (2+5+2+6) + (2+4+1+8) = 101 */
	CHECK_EQ(n, 101);

	/* the exact bytes of the sample, as docs/protocol.md specifies them */
	uint8_t buf[256];
	n = event_encode(&in, buf, sizeof(buf));
	W.n = 0;
	wb_event_head(&W, in.event_time_us, KEY24, 24, "cus_000123", 10, "ai.tokens", 9, 3);
	wb_prop_int(&W, "tokens", 1234);
	wb_prop_str(&W, "model", "gpt-4o", 6);
	wb_prop_dec(&W, "cost", 6, 12345);
	CHECK_EQ(n, (long)W.n);
	CHECK(n == (long)W.n && memcmp(buf, W.b, W.n) == 0);

	/* no properties, time 0 (the epoch itself is valid) */
	in.prop_count = 0;
	in.props = NULL;
	in.event_time_us = 0;
	CHECK_EQ(round_trip(&in, "no props"), 12 + 24 + 10 + 9);

	/* extremes of every value */
	struct tally_prop ext[7] = {
		{.key = proto_t_sv("min"), .kind = TALLY_VALUE_INT, .i64 = INT64_MIN},
		{.key = proto_t_sv("max"), .kind = TALLY_VALUE_INT, .i64 = INT64_MAX},
		{.key = proto_t_sv("d18"), .kind = TALLY_VALUE_DECIMAL, .scale = 18, .i64 = -1},
		{.key = proto_t_sv("d0"), .kind = TALLY_VALUE_DECIMAL, .scale = 0, .i64 = INT64_MIN},
		{.key = proto_t_sv("empty"), .kind = TALLY_VALUE_STRING, .str = {NULL, 0}},
		{.key = proto_t_sv("a"), .kind = TALLY_VALUE_INT, .i64 = 1},
		/* "ab" starts with "a": not a duplicate */
		{.key = proto_t_sv("ab"), .kind = TALLY_VALUE_INT, .i64 = 2},
	};
	in = sample_event();
	in.event_time_us = INT64_MAX;
	in.props = ext;
	in.prop_count = 7;
	round_trip(&in, "extremes");

	/* find must not match a prefix or an extension of a key */
	uint8_t b2[512];
	n = event_encode(&in, b2, sizeof(b2));
	struct tally_event ev;
	if (n > 0 && event_decode(b2, (size_t)n, &ev) == TALLY_REJECT_NONE) {
		struct tally_prop f;
		CHECK(event_prop_find(&ev, "a", 1, &f) && f.i64 == 1);
		CHECK(event_prop_find(&ev, "ab", 2, &f) && f.i64 == 2);
		CHECK(!event_prop_find(&ev, "abc", 3, &f));
		CHECK(!event_prop_find(&ev, "m", 1, &f));
		CHECK(!event_prop_find(&ev, "", 0, &f));
		CHECK(event_prop_find(&ev, "empty", 5, &f) && f.kind == TALLY_VALUE_STRING &&
		      f.str.len == 0);
	} else {
		CHECK(!"extremes did not encode/decode");
	}
}

/* The largest event there is: every string at its cap, 32 string properties at their caps. */
static void test_max_event(void)
{
	static uint8_t key[128], cust[128], name[64], pk[32][64], sv[256];
	static struct tally_prop props[32];
	memset(key, 0xFE, sizeof(key)); /* key is opaque: any byte */
	memset(cust, 'c', sizeof(cust));
	memset(name, 'n', sizeof(name));
	memset(sv, 0xFF, sizeof(sv)); /* string values are opaque bytes */
	for (int i = 0; i < 32; i++) {
		memset(pk[i], 'k', 64);
		pk[i][0] = (uint8_t)('A' + i);
		props[i] = (struct tally_prop){.key = {pk[i], 64},
					       .kind = TALLY_VALUE_STRING,
					       .str = {sv, 256}};
	}
	struct tally_event_in in = {.key = {key, 128},
				    .customer = {cust, 128},
				    .name = {name, 64},
				    .event_time_us = 1,
				    .prop_count = 32,
				    .props = props};
	CHECK_EQ(event_encoded_size(&in), TALLY_EVENT_BYTES_MAX);
	CHECK_EQ(round_trip(&in, "max event"), TALLY_EVENT_BYTES_MAX);

	/* -ENOSPC at every capacity below the size, and nothing written past cap */
	static uint8_t buf[TALLY_EVENT_BYTES_MAX + 1];
	struct tally_event_in s = sample_event();
	size_t need = event_encoded_size(&s);
	for (size_t cap = 0; cap < need; cap++) {
		memset(buf, 0xAA, sizeof(buf));
		CHECK_EQ_CASE("enospc", event_encode(&s, buf, cap), -ENOSPC);
		CHECK(buf[cap] == 0xAA);
	}
	CHECK_EQ(event_encode(&s, buf, need), (long)need);

	/* one byte more than the largest event: EVENT_TOO_LARGE, decided before anything else */
	static uint8_t big[TALLY_EVENT_BYTES_MAX + 1];
	long n = event_encode(&in, big, sizeof(big));
	CHECK_EQ(n, TALLY_EVENT_BYTES_MAX);
	big[TALLY_EVENT_BYTES_MAX] = 0;
	struct tally_event ev;
	CHECK_EQ(event_decode(big, TALLY_EVENT_BYTES_MAX + 1, &ev), TALLY_REJECT_EVENT_TOO_LARGE);
	CHECK_EQ(event_decode(big, TALLY_EVENT_BYTES_MAX, &ev), TALLY_REJECT_NONE);
	static uint8_t huge[65535];
	memset(huge, 0xFF, sizeof(huge));
	CHECK_EQ(event_decode(huge, sizeof(huge), &ev), TALLY_REJECT_EVENT_TOO_LARGE);
}

/* ---- reject cases, built byte by byte ---- */

struct reject_case {
	const char *label;
	enum tally_reject want;
};

static void expect_reject(const char *label, enum tally_reject want)
{
	struct tally_event ev;
	/* decode from an exact-size heap copy so ASan sees any read past the end */
	uint8_t *copy = malloc(W.n ? W.n : 1);
	memcpy(copy, W.b, W.n);
	enum tally_reject got = event_decode(copy, W.n, &ev);
	CHECK_EQ_CASE(label, got, want);
	free(copy);
}

#define STD_HEAD(nprops) wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, "api.call", 8, (nprops))

static void test_rejects(void)
{
	static uint8_t big[512];
	memset(big, 'x', sizeof(big));

	/* sanity: the base event of all cases below is valid */
	W.n = 0;
	STD_HEAD(1);
	wb_prop_int(&W, "n", 1);
	expect_reject("base valid", TALLY_REJECT_NONE);

	/* key length 0 and 129 (bytes present) */
	W.n = 0;
	wb_event_head(&W, 1000, "", 0, "cus_1", 5, "api.call", 8, 0);
	expect_reject("key len 0", TALLY_REJECT_KEY_LEN);
	W.n = 0;
	wb_event_head(&W, 1000, big, 129, "cus_1", 5, "api.call", 8, 0);
	expect_reject("key len 129", TALLY_REJECT_KEY_LEN);
	W.n = 0;
	wb_event_head(&W, 1000, big, 255, "cus_1", 5, "api.call", 8, 0);
	expect_reject("key len 255", TALLY_REJECT_KEY_LEN);
	W.n = 0;
	wb_event_head(&W, 1000, big, 128, "cus_1", 5, "api.call", 8, 0);
	expect_reject("key len 128 ok", TALLY_REJECT_NONE);

	/* customer length 0 and 129 */
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "", 0, "api.call", 8, 0);
	expect_reject("customer len 0", TALLY_REJECT_CUSTOMER_LEN);
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, big, 129, "api.call", 8, 0);
	expect_reject("customer len 129", TALLY_REJECT_CUSTOMER_LEN);
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, big, 128, "api.call", 8, 0);
	expect_reject("customer len 128 ok", TALLY_REJECT_NONE);

	/* customer UTF-8 */
	static const struct {
		const char *label;
		const char *s;
		bool ok;
	} u8[] = {
		{"utf8 2-byte e-acute", "caf\xC3\xA9", true},
		{"utf8 3-byte euro", "\xE2\x82\xAC", true},
		{"utf8 4-byte emoji", "\xF0\x9F\x98\x80", true},
		{"utf8 U+10FFFF", "\xF4\x8F\xBF\xBF", true},
		{"utf8 U+D7FF", "\xED\x9F\xBF", true},
		{"utf8 U+E000", "\xEE\x80\x80", true},
		{"utf8 overlong 2-byte '/'", "\xC0\xAF", false},
		{"utf8 overlong C1", "\xC1\xBF", false},
		{"utf8 overlong 3-byte", "\xE0\x80\xAF", false},
		{"utf8 overlong 3-byte max", "\xE0\x9F\xBF", false},
		{"utf8 overlong 4-byte", "\xF0\x80\x80\xAF", false},
		{"utf8 overlong 4-byte max", "\xF0\x8F\xBF\xBF", false},
		{"utf8 surrogate D800", "\xED\xA0\x80", false},
		{"utf8 surrogate DFFF", "\xED\xBF\xBF", false},
		{"utf8 above U+10FFFF", "\xF4\x90\x80\x80", false},
		{"utf8 F5 lead", "\xF5\x80\x80\x80", false},
		{"utf8 FF", "a\xFF", false},
		{"utf8 lone continuation", "a\x80z", false},
		{"utf8 truncated 2-byte at end", "ab\xC3", false},
		{"utf8 truncated 3-byte at end", "ab\xE2\x82", false},
		{"utf8 truncated 4-byte at end", "\xF0\x9F\x98", false},
		{"utf8 bad continuation", "\xE2\x28\xA1", false},
	};
	for (size_t i = 0; i < sizeof(u8) / sizeof(u8[0]); i++) {
		size_t n = strlen(u8[i].s);
		CHECK_EQ_CASE(u8[i].label, event_utf8_valid((const uint8_t *)u8[i].s, n),
			      u8[i].ok);
		W.n = 0;
		wb_event_head(&W, 1000, "k1", 2, u8[i].s, n, "api.call", 8, 0);
		expect_reject(u8[i].label, u8[i].ok ? TALLY_REJECT_NONE : TALLY_REJECT_CUSTOMER_UTF8);
		/* property keys are UTF-8 too */
		W.n = 0;
		STD_HEAD(1);
		wb_u8(&W, (uint8_t)n);
		wb_u8(&W, TALLY_VALUE_INT);
		wb_bytes(&W, u8[i].s, n);
		wb_u64(&W, 7);
		expect_reject(u8[i].label, u8[i].ok ? TALLY_REJECT_NONE : TALLY_REJECT_PROP_KEY_UTF8);
	}
	/* a NUL byte is valid UTF-8 (U+0000) */
	CHECK(event_utf8_valid((const uint8_t *)"a\0b", 3));
	CHECK(event_utf8_valid((const uint8_t *)"", 0));

	/* event name: length 0, 65, forbidden bytes */
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, "", 0, 0);
	expect_reject("name len 0", TALLY_REJECT_NAME_LEN);
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, big, 65, 0);
	expect_reject("name len 65", TALLY_REJECT_NAME_LEN);
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, big, 64, 0);
	expect_reject("name len 64 ok", TALLY_REJECT_NONE);
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, "api call", 8, 0);
	expect_reject("name with space", TALLY_REJECT_NAME_CHAR);
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, "api/call", 8, 0);
	expect_reject("name with slash", TALLY_REJECT_NAME_CHAR);
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, "api.cal\xC3\xA9", 9, 0);
	expect_reject("name with non-ASCII", TALLY_REJECT_NAME_CHAR);
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, "a\0b", 3, 0);
	expect_reject("name with NUL", TALLY_REJECT_NAME_CHAR);
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, "Az09._:-", 8, 0);
	expect_reject("name all classes ok", TALLY_REJECT_NONE);

	/* 33 properties, each valid and distinct */
	W.n = 0;
	STD_HEAD(33);
	for (int i = 0; i < 33; i++) {
		char k[8];
		snprintf(k, sizeof(k), "p%d", i);
		wb_prop_int(&W, k, i);
	}
	expect_reject("33 properties", TALLY_REJECT_PROP_COUNT);
	W.n = 0;
	STD_HEAD(255);
	expect_reject("255 properties, no bytes", TALLY_REJECT_PROP_COUNT);
	W.n = 0;
	STD_HEAD(32);
	for (int i = 0; i < 32; i++) {
		char k[8];
		snprintf(k, sizeof(k), "p%d", i);
		wb_prop_int(&W, k, i);
	}
	expect_reject("32 properties ok", TALLY_REJECT_NONE);
	/* 32 properties where the last repeats the first */
	W.n = 0;
	STD_HEAD(32);
	for (int i = 0; i < 31; i++) {
		char k[8];
		snprintf(k, sizeof(k), "p%d", i);
		wb_prop_int(&W, k, i);
	}
	wb_prop_int(&W, "p0", 99);
	expect_reject("dup key first/last of 32", TALLY_REJECT_PROP_DUP_KEY);

	/* property key length 0 and 65 */
	W.n = 0;
	STD_HEAD(1);
	wb_u8(&W, 0);
	wb_u8(&W, TALLY_VALUE_INT);
	wb_u64(&W, 1);
	expect_reject("prop key len 0", TALLY_REJECT_PROP_KEY_LEN);
	W.n = 0;
	STD_HEAD(1);
	wb_u8(&W, 65);
	wb_u8(&W, TALLY_VALUE_INT);
	wb_bytes(&W, big, 65);
	wb_u64(&W, 1);
	expect_reject("prop key len 65", TALLY_REJECT_PROP_KEY_LEN);
	W.n = 0;
	STD_HEAD(1);
	wb_u8(&W, 64);
	wb_u8(&W, TALLY_VALUE_INT);
	wb_bytes(&W, big, 64);
	wb_u64(&W, 1);
	expect_reject("prop key len 64 ok", TALLY_REJECT_NONE);

	/* unknown kinds 0, 4 and 255 (followed by 8 bytes, as if an int) */
	static const uint8_t kinds[] = {0, 4, 255};
	for (size_t i = 0; i < sizeof(kinds); i++) {
		W.n = 0;
		STD_HEAD(1);
		wb_u8(&W, 1);
		wb_u8(&W, kinds[i]);
		wb_u8(&W, 'k');
		wb_u64(&W, 1);
		expect_reject("unknown kind", TALLY_REJECT_PROP_KIND);
	}

	/* decimal scale 19 and 255; 18 ok */
	W.n = 0;
	STD_HEAD(1);
	wb_prop_dec(&W, "cost", 19, 1);
	expect_reject("decimal scale 19", TALLY_REJECT_DECIMAL_SCALE);
	W.n = 0;
	STD_HEAD(1);
	wb_prop_dec(&W, "cost", 255, 1);
	expect_reject("decimal scale 255", TALLY_REJECT_DECIMAL_SCALE);
	W.n = 0;
	STD_HEAD(1);
	wb_prop_dec(&W, "cost", 18, 1);
	expect_reject("decimal scale 18 ok", TALLY_REJECT_NONE);

	/* string value 257 bytes (present) and 65535; 256 ok */
	W.n = 0;
	STD_HEAD(1);
	wb_prop_str(&W, "s", big, 257);
	expect_reject("string 257", TALLY_REJECT_PROP_STRING_LEN);
	W.n = 0;
	STD_HEAD(1);
	wb_u8(&W, 1);
	wb_u8(&W, TALLY_VALUE_STRING);
	wb_u8(&W, 's');
	wb_u16(&W, 0xFFFF);
	expect_reject("string 65535, no bytes", TALLY_REJECT_PROP_STRING_LEN);
	W.n = 0;
	STD_HEAD(1);
	wb_prop_str(&W, "s", big, 256);
	expect_reject("string 256 ok", TALLY_REJECT_NONE);

	/* duplicate property key, same and different kinds */
	W.n = 0;
	STD_HEAD(2);
	wb_prop_int(&W, "tokens", 1);
	wb_prop_int(&W, "tokens", 1);
	expect_reject("dup key same value", TALLY_REJECT_PROP_DUP_KEY);
	W.n = 0;
	STD_HEAD(3);
	wb_prop_int(&W, "tokens", 1);
	wb_prop_str(&W, "model", "x", 1);
	wb_prop_dec(&W, "tokens", 2, 1);
	expect_reject("dup key other kind", TALLY_REJECT_PROP_DUP_KEY);
	/* a key that is a prefix of an earlier one, or extends it, is not a duplicate */
	W.n = 0;
	STD_HEAD(3);
	wb_prop_int(&W, "ab", 1);
	wb_prop_int(&W, "a", 2);
	wb_prop_int(&W, "abc", 3);
	expect_reject("prefix keys are distinct", TALLY_REJECT_NONE);

	/* trailing bytes: after the last property, and after the name with no properties */
	W.n = 0;
	STD_HEAD(1);
	wb_prop_int(&W, "n", 1);
	wb_u8(&W, 0);
	expect_reject("trailing 1 byte", TALLY_REJECT_TRAILING_BYTES);
	W.n = 0;
	STD_HEAD(0);
	wb_prop_int(&W, "n", 1); /* a property the count does not announce */
	expect_reject("trailing undeclared prop", TALLY_REJECT_TRAILING_BYTES);

	/* negative time */
	W.n = 0;
	wb_event_head(&W, -1, "k1", 2, "cus_1", 5, "api.call", 8, 0);
	expect_reject("time -1", TALLY_REJECT_TIME_NEGATIVE);
	W.n = 0;
	wb_event_head(&W, INT64_MIN, "k1", 2, "cus_1", 5, "api.call", 8, 0);
	expect_reject("time INT64_MIN", TALLY_REJECT_TIME_NEGATIVE);

	/* truncated fields: declared lengths past the end */
	W.n = 0;
	wb_event_head(&W, 1000, "k1", 2, "cus_1", 5, "api.call", 8, 0);
	W.n -= 1;
	expect_reject("name cut", TALLY_REJECT_TRUNCATED);
	W.n = 0;
	STD_HEAD(1);
	wb_prop_str(&W, "s", "abcdef", 6);
	W.n -= 3;
	expect_reject("string value cut", TALLY_REJECT_TRUNCATED);
	W.n = 0;
	STD_HEAD(2);
	wb_prop_int(&W, "n", 1);
	expect_reject("second property missing", TALLY_REJECT_TRUNCATED);
	W.n = 0;
	expect_reject("empty body", TALLY_REJECT_TRUNCATED);
	W.n = 0;
	wb_u64(&W, 1000);
	wb_u8(&W, 2);
	wb_u8(&W, 5);
	wb_u8(&W, 8);
	expect_reject("11-byte body", TALLY_REJECT_TRUNCATED);
}

/* Every proper prefix of a valid body is TRUNCATED; the full body decodes. */
static void test_truncation_every_byte(void)
{
	struct tally_event_in in = sample_event();
	uint8_t buf[256];
	long n = event_encode(&in, buf, sizeof(buf));
	CHECK(n > 0);
	for (long cut = 0; cut < n; cut++) {
		uint8_t *copy = malloc(cut ? (size_t)cut : 1);
		memcpy(copy, buf, (size_t)cut);
		struct tally_event ev;
		char label[32];
		snprintf(label, sizeof(label), "cut at %ld", cut);
		CHECK_EQ_CASE(label, event_decode(copy, (size_t)cut, &ev), TALLY_REJECT_TRUNCATED);
		free(copy);
	}
	struct tally_event ev;
	CHECK_EQ(event_decode(buf, (size_t)n, &ev), TALLY_REJECT_NONE);
}

/* The encoder refuses every limit violation with -EINVAL. */
static void test_encoder_validates(void)
{
	static uint8_t big[300], buf[16384];
	memset(big, 'x', sizeof(big));
	struct tally_event_in base = sample_event(), in;
	struct tally_prop p[33];

#define ENC_EINVAL(label)                                                                          \
	CHECK_EQ_CASE(label, event_encode(&in, buf, sizeof(buf)), -EINVAL)

	in = base;
	in.key.len = 0;
	ENC_EINVAL("enc key 0");
	in = base;
	in.key = (struct tally_view){big, 129};
	ENC_EINVAL("enc key 129");
	in = base;
	in.customer.len = 0;
	ENC_EINVAL("enc customer 0");
	in = base;
	in.customer = (struct tally_view){big, 129};
	ENC_EINVAL("enc customer 129");
	in = base;
	in.customer = proto_t_sv("\xED\xA0\x80");
	ENC_EINVAL("enc customer surrogate");
	in = base;
	in.name.len = 0;
	ENC_EINVAL("enc name 0");
	in = base;
	in.name = (struct tally_view){big, 65};
	ENC_EINVAL("enc name 65");
	in = base;
	in.name = proto_t_sv("a b");
	ENC_EINVAL("enc name space");
	in = base;
	in.event_time_us = -1;
	ENC_EINVAL("enc negative time");

	for (int i = 0; i < 33; i++) {
		static char keys[33][8];
		snprintf(keys[i], sizeof(keys[i]), "p%d", i);
		p[i] = (struct tally_prop){.key = proto_t_sv(keys[i]), .kind = TALLY_VALUE_INT};
	}
	in = base;
	in.props = p;
	in.prop_count = 33;
	ENC_EINVAL("enc 33 props");
	in.prop_count = 32;
	CHECK(event_encode(&in, buf, sizeof(buf)) > 0);

	struct tally_prop q;
	in = base;
	in.props = &q;
	in.prop_count = 1;
	q = (struct tally_prop){.key = {big, 0}, .kind = TALLY_VALUE_INT};
	ENC_EINVAL("enc prop key 0");
	q = (struct tally_prop){.key = {big, 65}, .kind = TALLY_VALUE_INT};
	ENC_EINVAL("enc prop key 65");
	q = (struct tally_prop){.key = proto_t_sv("k"), .kind = 4};
	ENC_EINVAL("enc kind 4");
	q = (struct tally_prop){.key = proto_t_sv("k"), .kind = TALLY_VALUE_DECIMAL, .scale = 19};
	ENC_EINVAL("enc scale 19");
	q = (struct tally_prop){.key = proto_t_sv("k"),
				.kind = TALLY_VALUE_STRING,
				.str = {big, 257}};
	ENC_EINVAL("enc string 257");
	q = (struct tally_prop){.key = proto_t_sv("\xC0\xAF"), .kind = TALLY_VALUE_INT};
	ENC_EINVAL("enc prop key overlong");

	struct tally_prop d[2] = {
		{.key = proto_t_sv("k"), .kind = TALLY_VALUE_INT},
		{.key = proto_t_sv("k"), .kind = TALLY_VALUE_INT},
	};
	in = base;
	in.props = d;
	in.prop_count = 2;
	ENC_EINVAL("enc dup key");
#undef ENC_EINVAL
}

/*
 * The encoder checks the byte-level rules on its input; the decoder on the bytes. For random
 * inputs drawn to break each rule now and then (bytes from UTF-8 fragments, name characters
 * and others; property keys that repeat), the encoder must accept exactly the events whose
 * bytes, written here without any check, the decoder accepts.
 */
static uint64_t agree_rng = 0x9E3779B97F4A7C15ull;
static uint32_t agree_next(uint32_t n)
{
	agree_rng ^= agree_rng << 13;
	agree_rng ^= agree_rng >> 7;
	agree_rng ^= agree_rng << 17;
	return (uint32_t)(agree_rng % n);
}
static void agree_fill(uint8_t *p, uint32_t len)
{
	static const uint8_t pool[] = {'a', 'Z', '0', '.', '_', ':', '-', ' ', '/', 0x00, 0x7F,
				       0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80,
				       0xC0, 0xED, 0xA0, 0xFF, 0x80};
	for (uint32_t i = 0; i < len; i++)
		p[i] = agree_next(8) ? (uint8_t)('a' + agree_next(26)) : pool[agree_next(sizeof pool)];
}
static void test_encoder_agrees(void)
{
	static uint8_t strs[40][64], buf[16384];
	struct tally_prop props[6];
	unsigned accepted = 0, refused = 0;
	for (int iter = 0; iter < 200000; iter++) {
		struct tally_event_in in = sample_event();
		uint32_t cl = 1 + agree_next(6), nl = 1 + agree_next(6);
		agree_fill(strs[0], cl);
		agree_fill(strs[1], nl);
		in.customer = (struct tally_view){strs[0], cl};
		in.name = (struct tally_view){strs[1], nl};
		in.prop_count = agree_next(6);
		in.props = props;
		for (uint32_t i = 0; i < in.prop_count; i++) {
			uint32_t kl = 1 + agree_next(3);
			agree_fill(strs[2 + i], kl);
			props[i] = (struct tally_prop){.key = {strs[2 + i], kl},
						       .kind = TALLY_VALUE_INT,
						       .i64 = (int64_t)i};
		}
		W.n = 0;
		wb_event_head(&W, in.event_time_us, in.key.ptr, in.key.len, in.customer.ptr,
			      in.customer.len, in.name.ptr, in.name.len, in.prop_count);
		for (uint32_t i = 0; i < in.prop_count; i++) {
			wb_u8(&W, (uint8_t)props[i].key.len);
			wb_u8(&W, TALLY_VALUE_INT);
			wb_bytes(&W, props[i].key.ptr, props[i].key.len);
			wb_u64(&W, (uint64_t)props[i].i64);
		}
		struct tally_event ev;
		bool dec_ok = event_decode(W.b, W.n, &ev) == TALLY_REJECT_NONE;
		long n = event_encode(&in, buf, sizeof(buf));
		if (n > 0) {
			accepted++;
			CHECK_EQ_CASE("encoder accepts what the decoder refuses", dec_ok, true);
			CHECK_EQ_CASE("encoder bytes differ from the plain writer's",
				      (size_t)n == W.n && !memcmp(buf, W.b, W.n), true);
		} else {
			refused++;
			CHECK_EQ_CASE("encoder refusal", n, -EINVAL);
			CHECK_EQ_CASE("encoder refuses what the decoder accepts", dec_ok, false);
		}
		if (proto_t_failures > 20)
			break;
	}
	/* Both outcomes must be common, or the test checks nothing. */
	CHECK(accepted > 20000);
	CHECK(refused > 20000);
}

static void test_name_chars(void)
{
	int allowed = 0;
	for (int c = 0; c < 256; c++) {
		bool want = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			    (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' || c == '-';
		char label[16];
		snprintf(label, sizeof(label), "char %d", c);
		CHECK_EQ_CASE(label, event_name_char_ok((uint8_t)c), want);
		allowed += want;
	}
	CHECK_EQ(allowed, 66);
}

static void test_fingerprint(void)
{
	struct tally_view k = proto_t_sv("req-1");
	struct tally_fp a = event_fingerprint(proto_t_sv("acme"), k);
	struct tally_fp a2 = event_fingerprint(proto_t_sv("acme"), proto_t_sv("req-1"));
	struct tally_fp b = event_fingerprint(proto_t_sv("globex"), k);
	struct tally_fp c = event_fingerprint(proto_t_sv("acme"), proto_t_sv("req-2"));
	struct tally_fp e = event_fingerprint(proto_t_sv(""), k);
	CHECK(a.lo == a2.lo && a.hi == a2.hi);
	CHECK(a.lo != b.lo || a.hi != b.hi);
	CHECK(a.lo != c.lo || a.hi != c.hi);
	CHECK(a.lo != e.lo || a.hi != e.hi);
	/* the tenant is length-prefixed: ("ab","c") and ("a","bc") differ */
	struct tally_fp x = event_fingerprint(proto_t_sv("ab"), proto_t_sv("c"));
	struct tally_fp y = event_fingerprint(proto_t_sv("a"), proto_t_sv("bc"));
	CHECK(x.lo != y.lo || x.hi != y.hi);

	/* exactly XXH3-128 over u8 tenant_len | tenant | key, as event.h documents */
	uint8_t m[1 + 4 + 5] = {4, 'a', 'c', 'm', 'e', 'r', 'e', 'q', '-', '1'};
	XXH128_hash_t h = XXH3_128bits(m, sizeof(m));
	CHECK(a.lo == h.low64 && a.hi == h.high64);
}

/* Decodes W into ev (the static buffer stays alive) and returns the digest. */
static uint32_t digest_of(struct proto_wb *w)
{
	struct tally_event ev;
	enum tally_reject r = event_decode(w->b, w->n, &ev);
	CHECK_EQ(r, TALLY_REJECT_NONE);
	return r == TALLY_REJECT_NONE ? event_content_digest(&ev) : 0;
}

static void test_content_digest(void)
{
	static struct proto_wb w0, w1;
	/* Build the base and variants; each variant changes one thing. */
#define BASE(wb, t, key, cust, name)                                                               \
	do {                                                                                       \
		(wb)->n = 0;                                                                       \
		wb_event_head((wb), (t), key, strlen(key), cust, strlen(cust), name, strlen(name), \
			      3);                                                                  \
	} while (0)
	BASE(&w0, 1000, "key-A", "cus_1", "ai.tokens");
	wb_prop_int(&w0, "tokens", 100);
	wb_prop_str(&w0, "model", "gpt-4o", 6);
	wb_prop_dec(&w0, "cost", 2, 150);
	uint32_t d0 = digest_of(&w0);

	/* a different key, same content: the same digest */
	BASE(&w1, 1000, "another-key-B", "cus_1", "ai.tokens");
	wb_prop_int(&w1, "tokens", 100);
	wb_prop_str(&w1, "model", "gpt-4o", 6);
	wb_prop_dec(&w1, "cost", 2, 150);
	CHECK_EQ(digest_of(&w1), d0);

	struct {
		const char *label;
		int what;
	} v[] = {
		{"time", 0},       {"customer", 1},   {"name", 2},       {"int value", 3},
		{"prop key", 4},   {"string", 5},     {"scale", 6},      {"mantissa", 7},
		{"kind", 8},       {"prop order", 9}, {"fewer props", 10}, {"shift cust/name", 11},
	};
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		int x = v[i].what;
		const char *cust = x == 1 ? "cus_2" : x == 11 ? "cus_1a" : "cus_1";
		const char *name = x == 2 ? "ai.tokenz" : x == 11 ? "i.tokens" : "ai.tokens";
		BASE(&w1, x == 0 ? 1001 : 1000, "key-A", cust, name);
		if (x == 10)
			w1.b[11] = 2;
		if (x == 9) {
			wb_prop_str(&w1, "model", "gpt-4o", 6);
			wb_prop_int(&w1, "tokens", 100);
		} else {
			if (x == 8)
				wb_prop_dec(&w1, "tokens", 0, 100);
			else
				wb_prop_int(&w1, x == 4 ? "tokenz" : "tokens", x == 3 ? 101 : 100);
			wb_prop_str(&w1, "model", x == 5 ? "gpt-4o-mini" : "gpt-4o",
				    x == 5 ? 11 : 6);
		}
		if (x != 10)
			wb_prop_dec(&w1, "cost", x == 6 ? 3 : 2, x == 7 ? 151 : 150);
		CHECK_EQ_CASE(v[i].label, digest_of(&w1) != d0, 1);
	}
	/* 1.50 (150, scale 2) vs 1.5 (15, scale 1): equal amounts, different encodings.
	 * The digest is over the encoding, so these differ: a client must resend byte-identical
	 * events to get DUPLICATE (documented in docs/protocol.md). */
	BASE(&w1, 1000, "key-A", "cus_1", "ai.tokens");
	wb_prop_int(&w1, "tokens", 100);
	wb_prop_str(&w1, "model", "gpt-4o", 6);
	wb_prop_dec(&w1, "cost", 1, 15);
	CHECK_EQ(digest_of(&w1) != d0, 1);
#undef BASE
}

static void test_reject_names(void)
{
	for (int r = 0; r <= TALLY_REJECT_MAX_ + 5; r++) {
		const char *s = event_reject_str((enum tally_reject)r);
		const char *c = event_reject_code((enum tally_reject)r);
		CHECK(s != NULL && c != NULL);
		if (r > 0 && r < TALLY_REJECT_MAX_ && c && s) {
			CHECK(strlen(c) > 0 && strlen(s) > 0);
			for (int q = 1; q < r; q++)
				CHECK(strcmp(c, event_reject_code((enum tally_reject)q)) != 0);
		}
	}
	CHECK(strcmp(event_reject_code(TALLY_REJECT_CUSTOMER_UTF8), "CUSTOMER_UTF8") == 0);
	CHECK(event_reject_str(-1) != NULL);
}

int main(void)
{
	test_round_trip();
	test_max_event();
	test_rejects();
	test_truncation_every_byte();
	test_encoder_validates();
	test_encoder_agrees();
	test_name_chars();
	test_fingerprint();
	test_content_digest();
	test_reject_names();
	return proto_t_finish("test_event");
}
