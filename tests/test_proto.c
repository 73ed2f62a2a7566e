/*
 * tests/test_proto.c — the wire protocol codec (include/tally/protocol.h, src/proto.c):
 * round trip of every frame type with field-by-field comparison, pipelined frames, truncation
 * at every byte of every frame (always 0 = need more, never an error), a table of malformed
 * frames each with its documented proto_error, per-event rejects inside a batch (the rest of
 * the batch proceeds), the builders' limits, and the code/name tables.
 *
 * Malformed frames are built by hand (tests/proto_testlib.h) with a correct checksum unless
 * the case is about the checksum, so each case breaks exactly one rule. Every parse reads from
 * an exact-size heap copy, so ASan catches any read past the end.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "proto_testlib.h"
#include "tally/event.h"
#include "tally/protocol.h"

#define DEF_FRAME PROTO_FRAME_BYTES_DEFAULT
#define DEF_EVENTS PROTO_BATCH_EVENTS_DEFAULT

static uint8_t FB[1 << 21]; /* frame buffer */

/* Parses buf[0..len) from an exact-size heap copy. */
static long parse_copy(const uint8_t *buf, size_t len, uint32_t fmax, uint32_t emax,
		       struct proto_frame *f, size_t *need)
{
	uint8_t *c = malloc(len ? len : 1);
	memcpy(c, buf, len);
	long r = proto_frame_parse(c, len, fmax, emax, f, need);
	/* views must not outlive the copy: callers only look at scalars after this */
	free(c);
	return r;
}

/* ---- round trips ---- */

static void test_hello(void)
{
	static uint8_t key[256];
	for (int i = 0; i < 256; i++)
		key[i] = (uint8_t)i;
	const struct {
		const char *label;
		struct proto_hello h;
	} cases[] = {
		{"hello typical",
		 {.version = 1,
		  .frame_bytes_max = 2u << 20,
		  .client_name = proto_t_sv("tally-send/0.1"),
		  .api_key = proto_t_sv("tk_live_abc")}},
		{"hello empty", {.version = 1}},
		{"hello max",
		 {.version = 0xFFFF,
		  .frame_bytes_max = UINT32_MAX,
		  .client_name = {(const uint8_t *)"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"
						   "nnnnnnnn",
				  64},
		  .api_key = {key, 256}}},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct proto_hello *h = &cases[i].h;
		long n = proto_encode_hello(FB, sizeof(FB), h);
		CHECK_EQ_CASE(cases[i].label, n, 16 + 10 + h->client_name.len + h->api_key.len);
		struct proto_frame f;
		size_t need = 0;
		CHECK_EQ_CASE(cases[i].label, proto_frame_parse(FB, (size_t)n, PROTO_HELLO_BYTES_MAX,
								DEF_EVENTS, &f, &need),
			      n);
		CHECK_EQ(f.type, PROTO_HELLO);
		CHECK_EQ(f.u.hello.version, h->version);
		CHECK_EQ(f.u.hello.frame_bytes_max, h->frame_bytes_max);
		CHECK(proto_t_view_eq(f.u.hello.client_name, h->client_name.ptr,
				      h->client_name.len));
		CHECK(proto_t_view_eq(f.u.hello.api_key, h->api_key.ptr, h->api_key.len));
		CHECK(f.body.ptr == FB + 16 && f.body.len == (uint32_t)n - 16);
		CHECK(n <= (long)PROTO_HELLO_BYTES_MAX);
		/* exact header bytes: "TALY", checksum, version 1, type, flags 0, body_len */
		CHECK(memcmp(FB, "TALY", 4) == 0);
		CHECK_EQ(FB[8], 1);
		CHECK_EQ(FB[9], PROTO_HELLO);
		CHECK_EQ(FB[10] | FB[11], 0);
		CHECK_EQ(FB[12] | FB[13] << 8 | FB[14] << 16 | (uint32_t)FB[15] << 24, n - 16);
		CHECK_EQ(FB[4] | FB[5] << 8 | FB[6] << 16 | (uint32_t)FB[7] << 24,
			 proto_t_checksum(FB, (size_t)n));
		/* -ENOSPC at every capacity below the size */
		for (long cap = 0; cap < n; cap++)
			CHECK_EQ_CASE(cases[i].label, proto_encode_hello(FB, (size_t)cap, h),
				      -ENOSPC);
	}
	struct proto_hello bad = {.version = 1, .client_name = {key, 65}};
	CHECK_EQ(proto_encode_hello(FB, sizeof(FB), &bad), -EINVAL);
	bad = (struct proto_hello){.version = 1, .api_key = {key, 257}};
	CHECK_EQ(proto_encode_hello(FB, sizeof(FB), &bad), -EINVAL);
}

static void test_hello_ok(void)
{
	static uint8_t tenant[64];
	memset(tenant, 't', sizeof(tenant));
	struct proto_hello_ok h = {
		.version = 1,
		.shard_count = 4,
		.frame_bytes_max = PROTO_FRAME_BYTES_DEFAULT,
		.batch_events_max = PROTO_BATCH_EVENTS_DEFAULT,
		.inflight_max = PROTO_INFLIGHT_DEFAULT,
		.server_time_us = 1763700000123456,
		.max_future_us = 300000000,
		.max_age_us = 35LL * 86400 * 1000000,
		.tenant = proto_t_sv("acme"),
	};
	for (int pass = 0; pass < 3; pass++) {
		if (pass == 1) { /* every field at the other end of its range */
			h.shard_count = 0xFFFF;
			h.frame_bytes_max = PROTO_FRAME_BYTES_MAX;
			h.batch_events_max = PROTO_BATCH_EVENTS_MAX;
			h.inflight_max = UINT32_MAX;
			h.server_time_us = INT64_MAX;
			h.max_future_us = INT64_MIN;
			h.max_age_us = -1;
			h.tenant = (struct tally_view){tenant, 64};
		}
		if (pass == 2) {
			h.frame_bytes_max = PROTO_FRAME_BYTES_MIN;
			h.batch_events_max = 1;
			h.inflight_max = 1;
			h.shard_count = 1;
			h.tenant = (struct tally_view){NULL, 0};
		}
		long n = proto_encode_hello_ok(FB, sizeof(FB), &h);
		CHECK_EQ(n, 16 + 41 + h.tenant.len);
		struct proto_frame f;
		CHECK_EQ(proto_frame_parse(FB, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL), n);
		CHECK_EQ(f.type, PROTO_HELLO_OK);
		CHECK_EQ(f.u.hello_ok.version, h.version);
		CHECK_EQ(f.u.hello_ok.shard_count, h.shard_count);
		CHECK_EQ(f.u.hello_ok.frame_bytes_max, h.frame_bytes_max);
		CHECK_EQ(f.u.hello_ok.batch_events_max, h.batch_events_max);
		CHECK_EQ(f.u.hello_ok.inflight_max, h.inflight_max);
		CHECK(f.u.hello_ok.server_time_us == h.server_time_us);
		CHECK(f.u.hello_ok.max_future_us == h.max_future_us);
		CHECK(f.u.hello_ok.max_age_us == h.max_age_us);
		CHECK(proto_t_view_eq(f.u.hello_ok.tenant, h.tenant.ptr, h.tenant.len));
		for (long cap = 0; cap < n; cap++)
			CHECK_EQ_CASE("hello_ok enospc", proto_encode_hello_ok(FB, (size_t)cap, &h),
				      -ENOSPC);
	}
	struct proto_hello_ok bad = h;
	bad.tenant = (struct tally_view){tenant, 65};
	CHECK_EQ(proto_encode_hello_ok(FB, sizeof(FB), &bad), -EINVAL);

	/*
	 * The encoder must not produce what the parser refuses (a HELLO_OK the client rejects as
	 * MALFORMED would kill every connection). protocol.h: "-EINVAL on a field over its limit".
	 */
	const struct {
		const char *label;
		uint32_t fmax, emax, inflight;
		uint16_t shards;
	} lim[] = {
		{"hello_ok frame_bytes_max > MAX", PROTO_FRAME_BYTES_MAX + 1, 4096, 64, 1},
		{"hello_ok frame_bytes_max < MIN", PROTO_FRAME_BYTES_MIN - 1, 4096, 64, 1},
		{"hello_ok batch_events_max 0", 1u << 20, 0, 64, 1},
		{"hello_ok batch_events_max > MAX", 1u << 20, PROTO_BATCH_EVENTS_MAX + 1, 64, 1},
		{"hello_ok inflight 0", 1u << 20, 4096, 0, 1},
		{"hello_ok shards 0", 1u << 20, 4096, 64, 0},
	};
	for (size_t i = 0; i < sizeof(lim) / sizeof(lim[0]); i++) {
		bad = h;
		bad.frame_bytes_max = lim[i].fmax;
		bad.batch_events_max = lim[i].emax;
		bad.inflight_max = lim[i].inflight;
		bad.shard_count = lim[i].shards;
		long n = proto_encode_hello_ok(FB, sizeof(FB), &bad);
		if (n > 0) {
			struct proto_frame f;
			long r = proto_frame_parse(FB, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL);
			CHECK_EQ_CASE(lim[i].label, r, n); /* either refuse to encode, or parse */
		}
	}
}

static struct tally_prop P3[3];
static struct tally_event_in event_n(int i, char *keybuf)
{
	snprintf(keybuf, 32, "req-%06d", i);
	P3[0] = (struct tally_prop){.key = proto_t_sv("tokens"), .kind = TALLY_VALUE_INT, .i64 = i};
	P3[1] = (struct tally_prop){.key = proto_t_sv("model"),
				    .kind = TALLY_VALUE_STRING,
				    .str = proto_t_sv("gpt-4o")};
	P3[2] = (struct tally_prop){.key = proto_t_sv("cost"),
				    .kind = TALLY_VALUE_DECIMAL,
				    .scale = 4,
				    .i64 = -i};
	return (struct tally_event_in){.key = proto_t_sv(keybuf),
				       .customer = proto_t_sv("cus_000123"),
				       .name = proto_t_sv("ai.tokens"),
				       .event_time_us = 1763700000000000 + i,
				       .prop_count = (uint32_t)(i % 4),
				       .props = P3};
}

static void test_batch(void)
{
	struct proto_batch_builder b;
	char kb[32];
	proto_batch_start(&b, FB, sizeof(FB), 0x0102030405060708ull);
	for (int i = 0; i < 10; i++) {
		struct tally_event_in in = event_n(i, kb);
		CHECK_EQ(proto_batch_add(&b, &in), 0);
	}
	long n = proto_batch_finish(&b);
	CHECK(n > 0);
	struct proto_frame f;
	CHECK_EQ(proto_frame_parse(FB, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL), n);
	CHECK_EQ(f.type, PROTO_BATCH);
	CHECK(f.u.batch.request_id == 0x0102030405060708ull);
	CHECK_EQ(f.u.batch.event_count, 10);
	CHECK(f.u.batch.events.ptr == FB + 16 + 12 && f.u.batch.events.len == (uint32_t)n - 28);
	struct proto_batch_iter it;
	struct tally_view body;
	int i = 0;
	proto_batch_iter_init(&f.u.batch, &it);
	while (proto_batch_next(&it, &body)) {
		struct tally_event_in in = event_n(i, kb);
		uint8_t want[512];
		long wn = event_encode(&in, want, sizeof(want));
		CHECK(proto_t_view_eq(body, want, (size_t)wn));
		struct tally_event ev;
		CHECK_EQ(event_decode(body.ptr, body.len, &ev), TALLY_REJECT_NONE);
		CHECK(proto_t_view_eq(ev.key, kb, strlen(kb)));
		CHECK(ev.event_time_us == in.event_time_us);
		CHECK_EQ(ev.prop_count, in.prop_count);
		struct tally_prop p;
		if (in.prop_count >= 1) {
			CHECK(event_prop_find(&ev, "tokens", 6, &p) && p.i64 == i);
		}
		if (in.prop_count >= 3) {
			CHECK(event_prop_find(&ev, "cost", 4, &p) && p.i64 == -i && p.scale == 4);
		}
		i++;
		CHECK_EQ(it.index, (uint32_t)i);
	}
	CHECK_EQ(i, 10);

	/* raw bodies are carried unchanged, including an invalid one */
	proto_batch_start(&b, FB, sizeof(FB), 7);
	CHECK_EQ(proto_batch_add_raw(&b, (const uint8_t *)"hello", 5), 0);
	CHECK_EQ(proto_batch_add_raw(&b, NULL, 0), 0);
	n = proto_batch_finish(&b);
	CHECK_EQ(n, 16 + 12 + 2 + 5 + 2);
	CHECK_EQ(proto_frame_parse(FB, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL), n);
	proto_batch_iter_init(&f.u.batch, &it);
	CHECK(proto_batch_next(&it, &body) && proto_t_view_eq(body, "hello", 5));
	CHECK(proto_batch_next(&it, &body) && body.len == 0);
	CHECK(!proto_batch_next(&it, &body));
	struct tally_event ev;
	CHECK_EQ(event_decode(body.ptr, body.len, &ev), TALLY_REJECT_TRUNCATED);
	CHECK_EQ(proto_batch_add_raw(&b, FB, 65536), -EINVAL);

	/* -ENOSPC: the builder refuses what does not fit and keeps what it has */
	static uint8_t small[256];
	proto_batch_start(&b, small, sizeof(small), 9);
	int added = 0, rc;
	for (;;) {
		struct tally_event_in in = event_n(3, kb);
		rc = proto_batch_add(&b, &in);
		if (rc != 0)
			break;
		added++;
	}
	CHECK_EQ(rc, -ENOSPC);
	CHECK_EQ(added, 2); /* 28 + 2 x (2 + 87) = 206; a third needs 295 */
	n = proto_batch_finish(&b);
	CHECK_EQ(n, 206);
	CHECK_EQ(proto_frame_parse(small, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL), n);
	CHECK_EQ(f.u.batch.event_count, 2);
	/* an invalid event is refused by the builder with -EINVAL and leaves it unchanged */
	proto_batch_start(&b, FB, sizeof(FB), 1);
	struct tally_event_in bad = event_n(1, kb);
	bad.key.len = 0;
	CHECK_EQ(proto_batch_add(&b, &bad), -EINVAL);
	CHECK_EQ(b.count, 0);
	CHECK_EQ(b.len, 28);
}

/* PROTO_BATCH_EVENTS_MAX: 65535 events fit, the 65536th is -E2BIG; limits apply on parse. */
static void test_batch_events_max(void)
{
	static uint8_t big[(size_t)PROTO_BATCH_EVENTS_MAX * 17 + 64];
	struct proto_wb *w = malloc(sizeof(*w));
	w->n = 0;
	wb_event_head(w, 1, "k", 1, "c", 1, "n", 1, 0); /* 15 bytes */
	struct proto_batch_builder b;
	proto_batch_start(&b, big, sizeof(big), 42);
	int rc = 0;
	for (uint32_t i = 0; i < PROTO_BATCH_EVENTS_MAX && rc == 0; i++)
		rc = proto_batch_add_raw(&b, w->b, w->n);
	CHECK_EQ(rc, 0);
	CHECK_EQ(b.count, PROTO_BATCH_EVENTS_MAX);
	CHECK_EQ(proto_batch_add_raw(&b, w->b, w->n), -E2BIG);
	char kb[32];
	struct tally_event_in in = event_n(0, kb);
	CHECK_EQ(proto_batch_add(&b, &in), -E2BIG);
	long n = proto_batch_finish(&b);
	CHECK_EQ(n, 28 + (long)PROTO_BATCH_EVENTS_MAX * 17);
	struct proto_frame f;
	CHECK_EQ(proto_frame_parse(big, (size_t)n, PROTO_FRAME_BYTES_MAX, PROTO_BATCH_EVENTS_MAX, &f,
				   NULL),
		 n);
	CHECK_EQ(f.u.batch.event_count, PROTO_BATCH_EVENTS_MAX);
	CHECK_EQ(proto_frame_parse(big, (size_t)n, PROTO_FRAME_BYTES_MAX, PROTO_BATCH_EVENTS_DEFAULT,
				   &f, NULL),
		 -PROTO_E_BATCH_TOO_LARGE);
	/* and the default frame limit refuses the 1.1 MB frame from its header alone */
	CHECK_EQ(proto_frame_parse(big, 16, DEF_FRAME, PROTO_BATCH_EVENTS_MAX, &f, NULL),
		 -PROTO_E_FRAME_TOO_LARGE);
	free(w);
}

static void test_ack(void)
{
	const struct proto_receipt r[] = {
		{PROTO_ACCEPTED, 0, 3, 123456789012ull},
		{PROTO_DUPLICATE, 0, 0, PROTO_OFFSET_UNKNOWN},
		{PROTO_DUPLICATE, 0, 65535, 0},
		{PROTO_CONFLICT, 0, 1, 77},
		{PROTO_CONFLICT, 0, 0, PROTO_OFFSET_UNKNOWN},
		{PROTO_REJECTED, TALLY_REJECT_NAME_CHAR, 0, PROTO_OFFSET_UNKNOWN},
		{PROTO_REJECTED, TALLY_REJECT_EVENT_TOO_LARGE, 0, PROTO_OFFSET_UNKNOWN},
	};
	const uint32_t nr = sizeof(r) / sizeof(r[0]);
	struct proto_ack_builder b;
	proto_ack_start(&b, FB, sizeof(FB), UINT64_MAX - 1);
	for (uint32_t i = 0; i < nr; i++)
		CHECK_EQ(proto_ack_add(&b, &r[i]), 0);
	long n = proto_ack_finish(&b);
	CHECK_EQ(n, (long)proto_ack_size(nr));
	struct proto_frame f;
	CHECK_EQ(proto_frame_parse(FB, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL), n);
	CHECK_EQ(f.type, PROTO_ACK);
	CHECK(f.u.ack.request_id == UINT64_MAX - 1);
	CHECK_EQ(f.u.ack.receipt_count, nr);
	for (uint32_t i = 0; i < nr && i < f.u.ack.receipt_count; i++) {
		struct proto_receipt g;
		proto_ack_receipt(&f.u.ack, i, &g);
		CHECK_EQ(g.status, r[i].status);
		CHECK_EQ(g.reason, r[i].reason);
		CHECK_EQ(g.shard, r[i].shard);
		CHECK(g.offset == r[i].offset);
	}
	/* exact receipt layout: u8 status | u8 reason | u16 shard | u32 0 | u64 offset */
	const uint8_t *p = FB + 16 + 12;
	CHECK(p[0] == 1 && p[1] == 0 && p[2] == 3 && p[3] == 0);
	CHECK(p[4] == 0 && p[5] == 0 && p[6] == 0 && p[7] == 0);
	uint64_t off = 0;
	for (int k = 7; k >= 0; k--)
		off = off << 8 | p[8 + k];
	CHECK(off == 123456789012ull);

	/* -ENOSPC once the receipt would not fit */
	static uint8_t small[16 + 12 + 2 * 16 + 5];
	proto_ack_start(&b, small, sizeof(small), 5);
	CHECK_EQ(proto_ack_add(&b, &r[0]), 0);
	CHECK_EQ(proto_ack_add(&b, &r[1]), 0);
	CHECK_EQ(proto_ack_add(&b, &r[2]), -ENOSPC);
	n = proto_ack_finish(&b);
	CHECK_EQ(n, (long)proto_ack_size(2));
	CHECK_EQ(proto_frame_parse(small, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL), n);

	/* A receipt the parser would refuse must not be encodable (a broker bug would otherwise
	 * turn into a MALFORMED at the client and a dropped connection). */
	const struct proto_receipt badr[] = {
		{0, 0, 0, 0},
		{5, 0, 0, 0},
		{PROTO_REJECTED, 0, 0, 0},
		{PROTO_ACCEPTED, TALLY_REJECT_KEY_LEN, 0, 0},
	};
	for (size_t i = 0; i < sizeof(badr) / sizeof(badr[0]); i++) {
		proto_ack_start(&b, FB, sizeof(FB), 5);
		int rc = proto_ack_add(&b, &badr[i]);
		if (rc == 0) {
			n = proto_ack_finish(&b);
			CHECK_EQ_CASE("ack encoder accepts what the parser refuses",
				      proto_frame_parse(FB, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL),
				      n);
		}
	}
}

static void test_error_ping(void)
{
	static char longmsg[700];
	memset(longmsg, 'm', sizeof(longmsg) - 1);
	const struct {
		uint16_t code;
		bool fatal;
		uint64_t rid;
		const char *msg;
		size_t want_len;
	} e[] = {
		{PROTO_E_BAD_CHECKSUM, true, 0, "bad checksum", 12},
		{PROTO_E_DISK_FULL, false, 99, "", 0},
		{PROTO_E_UNAVAILABLE, false, 1, NULL, 0},
		{0xFFFF, true, UINT64_MAX, longmsg, 512}, /* message truncated to 512 */
	};
	for (size_t i = 0; i < sizeof(e) / sizeof(e[0]); i++) {
		long n = proto_encode_error(FB, sizeof(FB), e[i].code, e[i].fatal, e[i].rid, e[i].msg);
		CHECK_EQ(n, (long)(16 + 14 + e[i].want_len));
		struct proto_frame f;
		CHECK_EQ(proto_frame_parse(FB, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL), n);
		CHECK_EQ(f.type, PROTO_ERROR);
		CHECK_EQ(f.u.error.code, e[i].code);
		CHECK_EQ(f.u.error.fatal, e[i].fatal);
		CHECK(f.u.error.request_id == e[i].rid);
		CHECK(proto_t_view_eq(f.u.error.message, e[i].msg ? e[i].msg : "", e[i].want_len));
		for (long cap = 0; cap < n; cap++)
			CHECK_EQ_CASE("error enospc",
				      proto_encode_error(FB, (size_t)cap, e[i].code, e[i].fatal,
							 e[i].rid, e[i].msg),
				      -ENOSPC);
	}
	const uint8_t types[] = {PROTO_PING, PROTO_PONG};
	const uint64_t nonces[] = {0, 1, 0xDEADBEEFCAFEF00Dull, UINT64_MAX};
	for (int t = 0; t < 2; t++)
		for (int k = 0; k < 4; k++) {
			long n = proto_encode_ping(FB, sizeof(FB), types[t], nonces[k]);
			CHECK_EQ(n, 24);
			struct proto_frame f;
			CHECK_EQ(proto_frame_parse(FB, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL),
				 24);
			CHECK_EQ(f.type, types[t]);
			CHECK(f.u.ping_nonce == nonces[k]);
			CHECK_EQ(proto_encode_ping(FB, 23, types[t], nonces[k]), -ENOSPC);
		}
	CHECK_EQ(proto_encode_ping(FB, sizeof(FB), PROTO_BATCH, 1), -EINVAL);
	CHECK_EQ(proto_encode_ping(FB, sizeof(FB), 0, 1), -EINVAL);
}

/* Several frames back to back: each parse consumes exactly one. */
static void test_pipelined(void)
{
	size_t off = 0;
	long n;
	struct proto_hello h = {.version = 1, .client_name = proto_t_sv("c"), .api_key = proto_t_sv("k")};
	n = proto_encode_hello(FB + off, sizeof(FB) - off, &h);
	off += (size_t)n;
	struct proto_batch_builder b;
	char kb[32];
	for (uint64_t rid = 1; rid <= 3; rid++) {
		proto_batch_start(&b, FB + off, sizeof(FB) - off, rid);
		struct tally_event_in in = event_n((int)rid, kb);
		CHECK_EQ(proto_batch_add(&b, &in), 0);
		n = proto_batch_finish(&b);
		off += (size_t)n;
	}
	n = proto_encode_ping(FB + off, sizeof(FB) - off, PROTO_PING, 5);
	off += (size_t)n;
	const uint8_t want[] = {PROTO_HELLO, PROTO_BATCH, PROTO_BATCH, PROTO_BATCH, PROTO_PING};
	size_t pos = 0;
	for (int i = 0; i < 5; i++) {
		struct proto_frame f;
		n = proto_frame_parse(FB + pos, off - pos, DEF_FRAME, DEF_EVENTS, &f, NULL);
		CHECK(n > 0);
		if (n <= 0)
			return;
		CHECK_EQ(f.type, want[i]);
		if (f.type == PROTO_BATCH)
			CHECK(f.u.batch.request_id == (uint64_t)i);
		pos += (size_t)n;
	}
	CHECK_EQ(pos, off);
}

/* ---- truncation: every proper prefix of a valid frame is "need more" ---- */

static void truncate_all(const char *label, const uint8_t *frame, size_t n)
{
	for (size_t cut = 0; cut < n; cut++) {
		struct proto_frame f;
		size_t need = 12345;
		long r = parse_copy(frame, cut, DEF_FRAME, DEF_EVENTS, &f, &need);
		CHECK_EQ_CASE(label, r, 0);
		CHECK_EQ_CASE(label, need, cut < 16 ? 16 : n);
	}
	struct proto_frame f;
	CHECK_EQ_CASE(label, parse_copy(frame, n, DEF_FRAME, DEF_EVENTS, &f, NULL), (long)n);
}

static void test_truncation(void)
{
	static uint8_t fr[4096];
	struct proto_batch_builder b;
	char kb[32];
	proto_batch_start(&b, fr, sizeof(fr), 77);
	for (int i = 0; i < 4; i++) {
		struct tally_event_in in = event_n(i, kb);
		CHECK_EQ(proto_batch_add(&b, &in), 0);
	}
	long n = proto_batch_finish(&b);
	truncate_all("batch prefix", fr, (size_t)n);

	struct proto_hello h = {.version = 1, .client_name = proto_t_sv("cli"), .api_key = proto_t_sv("key")};
	n = proto_encode_hello(fr, sizeof(fr), &h);
	truncate_all("hello prefix", fr, (size_t)n);
	struct proto_hello_ok ok = {.version = 1,
				    .shard_count = 1,
				    .frame_bytes_max = DEF_FRAME,
				    .batch_events_max = DEF_EVENTS,
				    .inflight_max = 64,
				    .tenant = proto_t_sv("acme")};
	n = proto_encode_hello_ok(fr, sizeof(fr), &ok);
	truncate_all("hello_ok prefix", fr, (size_t)n);
	struct proto_ack_builder a;
	proto_ack_start(&a, fr, sizeof(fr), 77);
	struct proto_receipt r = {PROTO_ACCEPTED, 0, 0, 1};
	CHECK_EQ(proto_ack_add(&a, &r), 0);
	n = proto_ack_finish(&a);
	truncate_all("ack prefix", fr, (size_t)n);
	n = proto_encode_error(fr, sizeof(fr), PROTO_E_AUTH, true, 0, "unknown API key");
	truncate_all("error prefix", fr, (size_t)n);
	n = proto_encode_ping(fr, sizeof(fr), PROTO_PONG, 3);
	truncate_all("pong prefix", fr, (size_t)n);
}

/* ---- malformed frames ---- */

static int n_malformed;

static void expect(const char *label, const uint8_t *frame, size_t n, uint32_t fmax,
		   uint32_t emax, long want)
{
	struct proto_frame f;
	long r = parse_copy(frame, n, fmax, emax, &f, NULL);
	CHECK_EQ_CASE(label, r, want);
	n_malformed++;
}

/* Writes a frame of `type` with body W into FB and checks the parse result. */
static struct proto_wb W;
static void expect_body(const char *label, uint8_t type, long want)
{
	size_t n = proto_t_frame_ok(FB, type, W.b, W.n);
	expect(label, FB, n, DEF_FRAME, DEF_EVENTS, want);
}

/* A valid batch body of `count` small valid events into W (header count may be overridden). */
static void batch_body(uint64_t rid, uint32_t count_field, int events)
{
	static struct proto_wb ev;
	ev.n = 0;
	wb_event_head(&ev, 1000, "k1", 2, "cus_1", 5, "api.call", 8, 1);
	wb_prop_int(&ev, "n", 1);
	W.n = 0;
	wb_u64(&W, rid);
	wb_u32(&W, count_field);
	for (int i = 0; i < events; i++) {
		wb_u16(&W, (uint16_t)ev.n);
		wb_bytes(&W, ev.b, ev.n);
	}
}

static void test_malformed_framing(void)
{
	size_t n;
	uint8_t body8[8] = {1, 2, 3, 4, 5, 6, 7, 8};

	n = proto_t_frame(FB, 0x594C4155, 1, PROTO_PING, 0, 8, body8, 8);
	expect("bad magic", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_MAGIC);
	n = proto_t_frame(FB, 0x54414C59, 1, PROTO_PING, 0, 8, body8, 8); /* byte-swapped */
	expect("magic big-endian", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_MAGIC);
	expect("bad magic, 4 bytes only", (const uint8_t *)"HTTP", 4, DEF_FRAME, DEF_EVENTS,
	       -PROTO_E_BAD_MAGIC);
	expect("bad magic, 3 bytes: need more", (const uint8_t *)"GET", 3, DEF_FRAME, DEF_EVENTS,
	       0);
	expect("empty input: need more", (const uint8_t *)"", 0, DEF_FRAME, DEF_EVENTS, 0);

	n = proto_t_frame(FB, PROTO_MAGIC, 0, PROTO_PING, 0, 8, body8, 8);
	expect("version 0", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_VERSION);
	n = proto_t_frame(FB, PROTO_MAGIC, 2, PROTO_PING, 0, 8, body8, 8);
	expect("version 2", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_VERSION);
	expect("version 2, header only", FB, 16, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_VERSION);

	n = proto_t_frame_ok(FB, PROTO_PING, body8, 8);
	FB[20] ^= 1;
	expect("checksum: body byte flipped", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_CHECKSUM);
	n = proto_t_frame_ok(FB, PROTO_PING, body8, 8);
	FB[4] ^= 0x80;
	expect("checksum: checksum flipped", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_CHECKSUM);
	n = proto_t_frame_ok(FB, PROTO_PING, body8, 8);
	FB[9] = PROTO_PONG; /* the checksum covers the type byte */
	expect("checksum: type changed", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_CHECKSUM);
	n = proto_t_frame_ok(FB, PROTO_PING, body8, 8);
	FB[10] = 1; /* ... and the flags */
	expect("checksum: flags changed", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_CHECKSUM);
	n = proto_t_frame_ok(FB, PROTO_PING, body8, 8);
	FB[4] = (uint8_t)(FB[4] + 1); /* XXH32 or full 64 bits would not match either */
	expect("checksum: off by one", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_CHECKSUM);

	n = proto_t_frame(FB, PROTO_MAGIC, 1, PROTO_PING, 1, 8, body8, 8);
	expect("flags 1", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_FLAGS);
	n = proto_t_frame(FB, PROTO_MAGIC, 1, PROTO_PING, 0x8000, 8, body8, 8);
	expect("flags 0x8000", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_BAD_FLAGS);

	const uint8_t bad_types[] = {0, 8, 9, 0x80, 255};
	for (size_t i = 0; i < sizeof(bad_types); i++) {
		n = proto_t_frame(FB, PROTO_MAGIC, 1, bad_types[i], 0, 8, body8, 8);
		expect("unknown type", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_UNKNOWN_TYPE);
	}

	/* Over the limit: refused from the 16-byte header alone, without waiting for the body. */
	n = proto_t_frame(FB, PROTO_MAGIC, 1, PROTO_BATCH, 0, 4096 - 16 + 1, NULL, 0);
	expect("body_len limit+1, header only", FB, n, 4096, DEF_EVENTS, -PROTO_E_FRAME_TOO_LARGE);
	n = proto_t_frame(FB, PROTO_MAGIC, 1, PROTO_BATCH, 0, 4096 - 16, NULL, 0);
	expect("body_len at limit, header only: need more", FB, n, 4096, DEF_EVENTS, 0);
	size_t need = 0;
	struct proto_frame f;
	CHECK_EQ(proto_frame_parse(FB, n, 4096, DEF_EVENTS, &f, &need), 0);
	CHECK_EQ(need, 4096);
	n = proto_t_frame(FB, PROTO_MAGIC, 1, PROTO_BATCH, 0, UINT32_MAX, NULL, 0);
	expect("body_len 2^32-1", FB, n, DEF_FRAME, DEF_EVENTS, -PROTO_E_FRAME_TOO_LARGE);
	expect("body_len 2^32-1, limit MAX", FB, n, PROTO_FRAME_BYTES_MAX, DEF_EVENTS,
	       -PROTO_E_FRAME_TOO_LARGE);
	n = proto_t_frame(FB, PROTO_MAGIC, 1, PROTO_BATCH, 0, UINT32_MAX - 15, NULL, 0);
	expect("body_len 2^32-16 (wraps with +16)", FB, n, DEF_FRAME, DEF_EVENTS,
	       -PROTO_E_FRAME_TOO_LARGE);
	n = proto_t_frame(FB, PROTO_MAGIC, 1, PROTO_HELLO, 0, PROTO_HELLO_BYTES_MAX, NULL, 0);
	expect("HELLO over PROTO_HELLO_BYTES_MAX", FB, n, PROTO_HELLO_BYTES_MAX, DEF_EVENTS,
	       -PROTO_E_FRAME_TOO_LARGE);
	/* a full, correctly checksummed frame one byte over the limit */
	batch_body(1, 1, 1);
	while (W.n < 4096 - 16 + 1)
		wb_u8(&W, 0);
	n = proto_t_frame_ok(FB, PROTO_BATCH, W.b, W.n);
	expect("full frame 1 byte over limit", FB, n, 4096, DEF_EVENTS, -PROTO_E_FRAME_TOO_LARGE);
}

static void test_malformed_bodies(void)
{
	static uint8_t big[600];
	memset(big, 'x', sizeof(big));

	/* HELLO: 0 u16 version | 2 u8 name_len | 3 u8 0 | 4 u32 fmax | 8 u16 key_len | name | key */
#define HELLO_HEAD(nl, rsv, kl)                                                                    \
	do {                                                                                       \
		W.n = 0;                                                                           \
		wb_u16(&W, 1);                                                                     \
		wb_u8(&W, (nl));                                                                   \
		wb_u8(&W, (rsv));                                                                  \
		wb_u32(&W, 0);                                                                     \
		wb_u16(&W, (kl));                                                                  \
	} while (0)
	HELLO_HEAD(3, 0, 2);
	wb_bytes(&W, "cliky", 5);
	expect_body("hello valid by hand", PROTO_HELLO, 16 + 15);
	W.n = 9;
	expect_body("hello body 9 bytes", PROTO_HELLO, -PROTO_E_MALFORMED);
	HELLO_HEAD(65, 0, 0);
	wb_bytes(&W, big, 65);
	expect_body("hello name 65", PROTO_HELLO, -PROTO_E_MALFORMED);
	HELLO_HEAD(0, 0, 257);
	wb_bytes(&W, big, 257);
	expect_body("hello api key 257", PROTO_HELLO, -PROTO_E_MALFORMED);
	HELLO_HEAD(10, 0, 0);
	wb_bytes(&W, "cli", 3);
	expect_body("hello name past end", PROTO_HELLO, -PROTO_E_MALFORMED);
	HELLO_HEAD(3, 0, 200);
	wb_bytes(&W, "cliky", 5);
	expect_body("hello key past end", PROTO_HELLO, -PROTO_E_MALFORMED);
	HELLO_HEAD(3, 0, 2);
	wb_bytes(&W, "cliky!", 6);
	expect_body("hello trailing byte", PROTO_HELLO, -PROTO_E_MALFORMED);
	HELLO_HEAD(3, 1, 2);
	wb_bytes(&W, "cliky", 5);
	expect_body("hello reserved byte", PROTO_HELLO, -PROTO_E_MALFORMED);
#undef HELLO_HEAD

	/* HELLO_OK: 41-byte fixed part then tenant */
#define HOK_HEAD(fmax, emax, tl)                                                                   \
	do {                                                                                       \
		W.n = 0;                                                                           \
		wb_u16(&W, 1);                                                                     \
		wb_u16(&W, 2);                                                                     \
		wb_u32(&W, (fmax));                                                                \
		wb_u32(&W, (emax));                                                                \
		wb_u32(&W, 64);                                                                    \
		wb_u64(&W, 1);                                                                     \
		wb_u64(&W, 2);                                                                     \
		wb_u64(&W, 3);                                                                     \
		wb_u8(&W, (tl));                                                                   \
	} while (0)
	HOK_HEAD(1u << 20, 4096, 4);
	wb_bytes(&W, "acme", 4);
	expect_body("hello_ok valid by hand", PROTO_HELLO_OK, 16 + 45);
	W.n = 40;
	expect_body("hello_ok 40 bytes", PROTO_HELLO_OK, -PROTO_E_MALFORMED);
	HOK_HEAD(1u << 20, 4096, 65);
	wb_bytes(&W, big, 65);
	expect_body("hello_ok tenant 65", PROTO_HELLO_OK, -PROTO_E_MALFORMED);
	HOK_HEAD(1u << 20, 4096, 10);
	wb_bytes(&W, "acme", 4);
	expect_body("hello_ok tenant past end", PROTO_HELLO_OK, -PROTO_E_MALFORMED);
	HOK_HEAD(1u << 20, 4096, 4);
	wb_bytes(&W, "acme!", 5);
	expect_body("hello_ok trailing", PROTO_HELLO_OK, -PROTO_E_MALFORMED);
	HOK_HEAD(4095, 4096, 0);
	expect_body("hello_ok frame max < 4096", PROTO_HELLO_OK, -PROTO_E_MALFORMED);
	HOK_HEAD((64u << 20) + 1, 4096, 0);
	expect_body("hello_ok frame max > 64 MiB", PROTO_HELLO_OK, -PROTO_E_MALFORMED);
	HOK_HEAD(1u << 20, 0, 0);
	expect_body("hello_ok batch max 0", PROTO_HELLO_OK, -PROTO_E_MALFORMED);
	HOK_HEAD(1u << 20, 65536, 0);
	expect_body("hello_ok batch max 65536", PROTO_HELLO_OK, -PROTO_E_MALFORMED);
#undef HOK_HEAD

	/* BATCH */
	batch_body(1, 3, 3);
	expect_body("batch valid by hand", PROTO_BATCH, (long)(16 + W.n));
	W.n = 11;
	expect_body("batch body 11 bytes", PROTO_BATCH, -PROTO_E_MALFORMED);
	batch_body(1, 0, 0);
	expect_body("batch zero events", PROTO_BATCH, -PROTO_E_EMPTY_BATCH);
	batch_body(1, 0, 1);
	expect_body("batch count 0 with an event", PROTO_BATCH, -PROTO_E_EMPTY_BATCH);
	batch_body(1, 5, 5);
	{
		size_t n = proto_t_frame_ok(FB, PROTO_BATCH, W.b, W.n);
		expect("batch 5 events, max 4", FB, n, DEF_FRAME, 4, -PROTO_E_BATCH_TOO_LARGE);
		expect("batch 5 events, max 5", FB, n, DEF_FRAME, 5, (long)n);
	}
	batch_body(1, DEF_EVENTS + 1, 1);
	expect_body("batch count default+1", PROTO_BATCH, -PROTO_E_BATCH_TOO_LARGE);
	batch_body(1, UINT32_MAX, 1);
	expect_body("batch count 2^32-1", PROTO_BATCH, -PROTO_E_BATCH_TOO_LARGE);
	batch_body(1, 3, 2);
	expect_body("batch count past bytes left", PROTO_BATCH, -PROTO_E_MALFORMED);
	batch_body(1, 1000, 2);
	expect_body("batch count 1000, 2 events", PROTO_BATCH, -PROTO_E_MALFORMED);
	batch_body(1, 2, 2);
	W.b[12] = (uint8_t)(W.b[12] + 1); /* first event's length + 1: shifts the rest */
	expect_body("batch event len +1 (first)", PROTO_BATCH, -PROTO_E_MALFORMED);
	batch_body(1, 2, 2);
	{
		size_t second = 12 + 2 + (W.b[12] | (size_t)W.b[13] << 8);
		W.b[second] = (uint8_t)(W.b[second] + 1);
	}
	expect_body("batch last event len past body", PROTO_BATCH, -PROTO_E_MALFORMED);
	batch_body(1, 1, 1);
	W.b[12] = 0xFF;
	W.b[13] = 0xFF;
	expect_body("batch event len 65535", PROTO_BATCH, -PROTO_E_MALFORMED);
	batch_body(1, 1, 1);
	wb_u8(&W, 0);
	expect_body("batch trailing 1 byte", PROTO_BATCH, -PROTO_E_MALFORMED);
	batch_body(1, 1, 1);
	wb_u16(&W, 0);
	expect_body("batch trailing empty-event prefix", PROTO_BATCH, -PROTO_E_MALFORMED);
	batch_body(1, 2, 1);
	wb_u8(&W, 0);
	wb_u8(&W, 0); /* 2 bytes left: count check passes, then len 0 fits: valid framing */
	expect_body("batch 2nd event empty body (framing ok)", PROTO_BATCH, (long)(16 + W.n));
	batch_body(1, 2, 1);
	wb_u8(&W, 5);
	expect_body("batch half a length prefix", PROTO_BATCH, -PROTO_E_MALFORMED);

	/* ACK */
#define ACK_HEAD(count)                                                                            \
	do {                                                                                       \
		W.n = 0;                                                                           \
		wb_u64(&W, 9);                                                                     \
		wb_u32(&W, (count));                                                               \
	} while (0)
#define RECEIPT(st, rs, rsv)                                                                       \
	do {                                                                                       \
		wb_u8(&W, (st));                                                                   \
		wb_u8(&W, (rs));                                                                   \
		wb_u16(&W, 0);                                                                     \
		wb_u32(&W, (rsv));                                                                 \
		wb_u64(&W, 0);                                                                     \
	} while (0)
	ACK_HEAD(1);
	RECEIPT(PROTO_ACCEPTED, 0, 0);
	expect_body("ack valid by hand", PROTO_ACK, 16 + 28);
	W.n = 11;
	expect_body("ack body 11 bytes", PROTO_ACK, -PROTO_E_MALFORMED);
	ACK_HEAD(2);
	RECEIPT(PROTO_ACCEPTED, 0, 0);
	expect_body("ack count past bytes", PROTO_ACK, -PROTO_E_MALFORMED);
	ACK_HEAD(UINT32_MAX);
	RECEIPT(PROTO_ACCEPTED, 0, 0);
	expect_body("ack count 2^32-1", PROTO_ACK, -PROTO_E_MALFORMED);
	ACK_HEAD(1);
	RECEIPT(PROTO_ACCEPTED, 0, 0);
	wb_u8(&W, 0);
	expect_body("ack trailing byte", PROTO_ACK, -PROTO_E_MALFORMED);
	ACK_HEAD(0);
	RECEIPT(PROTO_ACCEPTED, 0, 0);
	expect_body("ack count 0 with a receipt", PROTO_ACK, -PROTO_E_MALFORMED);
	ACK_HEAD(1);
	RECEIPT(0, 0, 0);
	expect_body("ack status 0", PROTO_ACK, -PROTO_E_MALFORMED);
	ACK_HEAD(1);
	RECEIPT(5, 0, 0);
	expect_body("ack status 5", PROTO_ACK, -PROTO_E_MALFORMED);
	ACK_HEAD(1);
	RECEIPT(PROTO_ACCEPTED, 0, 1);
	expect_body("ack reserved not 0", PROTO_ACK, -PROTO_E_MALFORMED);
	ACK_HEAD(1);
	RECEIPT(PROTO_REJECTED, 0, 0);
	expect_body("ack REJECTED without reason", PROTO_ACK, -PROTO_E_MALFORMED);
	ACK_HEAD(1);
	RECEIPT(PROTO_DUPLICATE, 3, 0);
	expect_body("ack DUPLICATE with reason", PROTO_ACK, -PROTO_E_MALFORMED);
#undef ACK_HEAD
#undef RECEIPT

	/* ERROR: 0 u16 code | 2 u8 fatal | 3 u8 0 | 4 u64 request_id | 12 u16 len | message */
#define ERR_HEAD(fatal, rsv, ml)                                                                   \
	do {                                                                                       \
		W.n = 0;                                                                           \
		wb_u16(&W, PROTO_E_AUTH);                                                          \
		wb_u8(&W, (fatal));                                                                \
		wb_u8(&W, (rsv));                                                                  \
		wb_u64(&W, 0);                                                                     \
		wb_u16(&W, (ml));                                                                  \
	} while (0)
	ERR_HEAD(1, 0, 3);
	wb_bytes(&W, "bad", 3);
	expect_body("error valid by hand", PROTO_ERROR, 16 + 17);
	W.n = 13;
	expect_body("error body 13 bytes", PROTO_ERROR, -PROTO_E_MALFORMED);
	ERR_HEAD(2, 0, 3);
	wb_bytes(&W, "bad", 3);
	expect_body("error fatal 2", PROTO_ERROR, -PROTO_E_MALFORMED);
	ERR_HEAD(1, 7, 3);
	wb_bytes(&W, "bad", 3);
	expect_body("error reserved byte", PROTO_ERROR, -PROTO_E_MALFORMED);
	ERR_HEAD(1, 0, 513);
	wb_bytes(&W, big, 513);
	expect_body("error message 513", PROTO_ERROR, -PROTO_E_MALFORMED);
	ERR_HEAD(1, 0, 30);
	wb_bytes(&W, "bad", 3);
	expect_body("error message past end", PROTO_ERROR, -PROTO_E_MALFORMED);
	ERR_HEAD(1, 0, 3);
	wb_bytes(&W, "bad!", 4);
	expect_body("error trailing", PROTO_ERROR, -PROTO_E_MALFORMED);
#undef ERR_HEAD

	/* PING / PONG: exactly 8 bytes */
	W.n = 0;
	wb_fill(&W, 1, 7);
	expect_body("ping 7 bytes", PROTO_PING, -PROTO_E_MALFORMED);
	W.n = 0;
	wb_fill(&W, 1, 9);
	expect_body("pong 9 bytes", PROTO_PONG, -PROTO_E_MALFORMED);
	W.n = 0;
	expect_body("ping empty", PROTO_PING, -PROTO_E_MALFORMED);
}

/* A batch where event 2 of 3 is malformed: the frame parses; events 1 and 3 decode. */
static void test_batch_partial_reject(void)
{
	static struct proto_wb e1, e2, e3;
	e1.n = e2.n = e3.n = 0;
	wb_event_head(&e1, 1000, "k1", 2, "cus_1", 5, "api.call", 8, 1);
	wb_prop_int(&e1, "n", 1);
	wb_event_head(&e2, 1000, "k2", 2, "cus_1", 5, "api call", 8, 0); /* forbidden space */
	wb_event_head(&e3, 1000, "k3", 2, "cus_1", 5, "api.call", 8, 0);
	const struct {
		struct proto_wb *bad;
		enum tally_reject want;
	} mids[] = {
		{&e2, TALLY_REJECT_NAME_CHAR},
		{NULL, TALLY_REJECT_TRUNCATED},       /* an empty body */
		{NULL, TALLY_REJECT_EVENT_TOO_LARGE}, /* 20000 bytes */
	};
	static uint8_t zeros[20000];
	for (size_t m = 0; m < 3; m++) {
		struct proto_batch_builder b;
		proto_batch_start(&b, FB, sizeof(FB), 555);
		CHECK_EQ(proto_batch_add_raw(&b, e1.b, e1.n), 0);
		if (m == 0)
			CHECK_EQ(proto_batch_add_raw(&b, e2.b, e2.n), 0);
		else if (m == 1)
			CHECK_EQ(proto_batch_add_raw(&b, NULL, 0), 0);
		else
			CHECK_EQ(proto_batch_add_raw(&b, zeros, sizeof(zeros)), 0);
		CHECK_EQ(proto_batch_add_raw(&b, e3.b, e3.n), 0);
		long n = proto_batch_finish(&b);
		struct proto_frame f;
		CHECK_EQ(proto_frame_parse(FB, (size_t)n, DEF_FRAME, DEF_EVENTS, &f, NULL), n);
		struct proto_batch_iter it;
		struct tally_view body;
		enum tally_reject got[3] = {99, 99, 99};
		int i = 0;
		proto_batch_iter_init(&f.u.batch, &it);
		while (i < 3 && proto_batch_next(&it, &body)) {
			struct tally_event ev;
			got[i] = event_decode(body.ptr, body.len, &ev);
			if (got[i] == TALLY_REJECT_NONE)
				CHECK(proto_t_view_eq(ev.key, i == 0 ? "k1" : "k3", 2));
			i++;
		}
		CHECK_EQ(i, 3);
		CHECK(!proto_batch_next(&it, &body));
		CHECK_EQ(got[0], TALLY_REJECT_NONE);
		CHECK_EQ_CASE(event_reject_code(mids[m].want), got[1], mids[m].want);
		CHECK_EQ(got[2], TALLY_REJECT_NONE);
	}
}

/*
 * docs/protocol.md 5.4/7: an ACK can be larger than its BATCH (16 bytes per receipt, events as
 * small as their 2-byte prefix), so a client parses server frames with
 * max(frame_bytes_max, 28 + 16 x batch_events_max).
 */
static void test_ack_larger_than_batch(void)
{
	struct proto_batch_builder b;
	static uint8_t bf[4096];
	proto_batch_start(&b, bf, sizeof(bf), 3);
	uint32_t n = 0;
	while (proto_batch_add_raw(&b, NULL, 0) == 0)
		n++;
	CHECK_EQ(n, (4096 - 28) / 2);
	long bn = proto_batch_finish(&b);
	CHECK_EQ(bn, 4096);
	struct proto_frame f;
	CHECK_EQ(proto_frame_parse(bf, (size_t)bn, 4096, DEF_EVENTS, &f, NULL), bn);
	struct proto_ack_builder a;
	proto_ack_start(&a, FB, sizeof(FB), 3);
	struct proto_receipt r = {PROTO_REJECTED, TALLY_REJECT_TRUNCATED, 0, PROTO_OFFSET_UNKNOWN};
	for (uint32_t i = 0; i < n; i++)
		CHECK_EQ(proto_ack_add(&a, &r), 0);
	long an = proto_ack_finish(&a);
	CHECK_EQ(an, (long)proto_ack_size(n));
	CHECK(an > bn);
	CHECK_EQ(proto_frame_parse(FB, (size_t)an, 4096, DEF_EVENTS, &f, NULL),
		 -PROTO_E_FRAME_TOO_LARGE);
	uint32_t client_limit = (uint32_t)proto_ack_size(DEF_EVENTS);
	CHECK_EQ(proto_frame_parse(FB, (size_t)an, client_limit, DEF_EVENTS, &f, NULL), an);
	CHECK_EQ(f.u.ack.receipt_count, n);
}

static void test_tables(void)
{
	for (int c = 1; c < PROTO_E_MAX_; c++) {
		const char *code = proto_error_code(c);
		CHECK(code && strcmp(code, "UNKNOWN") != 0);
		CHECK(proto_error_str(c) != NULL);
		/* the same name for +c and -c (the parser returns negatives) */
		CHECK(strcmp(proto_error_code(-c), code) == 0);
		for (int d = 1; d < c; d++)
			CHECK(strcmp(code, proto_error_code(d)) != 0);
		bool want = c == PROTO_E_TOO_MANY_INFLIGHT || c == PROTO_E_DISK_FULL ||
			    c == PROTO_E_UNAVAILABLE || c == PROTO_E_TOO_MANY_CONNS;
		CHECK_EQ_CASE(code, proto_error_retryable(c), want);
	}
	CHECK(strcmp(proto_error_code(PROTO_E_BAD_CHECKSUM), "BAD_CHECKSUM") == 0);
	CHECK(proto_error_str(PROTO_E_MAX_) != NULL && proto_error_code(1000) != NULL);
	CHECK(!proto_error_retryable(1000));
	CHECK(strcmp(proto_status_str(PROTO_ACCEPTED), "ACCEPTED") == 0);
	CHECK(strcmp(proto_status_str(PROTO_DUPLICATE), "DUPLICATE") == 0);
	CHECK(strcmp(proto_status_str(PROTO_CONFLICT), "CONFLICT") == 0);
	CHECK(strcmp(proto_status_str(PROTO_REJECTED), "REJECTED") == 0);
	CHECK(proto_status_str(0) != NULL && proto_status_str(-7) != NULL);
}

/* Last: any int must be safe to name ("Never NULL"); INT_MIN used to be negated (UB). */
static void test_tables_int_min(void)
{
	CHECK(proto_error_str(INT_MIN) != NULL);
	CHECK(proto_error_code(INT_MIN) != NULL);
	CHECK(!proto_error_retryable(INT_MIN));
}

/* An empty BATCH would be refused by the parser (EMPTY_BATCH): the builder refuses first. */
static void test_empty_batch_refused(void)
{
	uint8_t buf[64];
	struct proto_batch_builder b;
	proto_batch_start(&b, buf, sizeof buf, 1);
	CHECK_EQ(proto_batch_finish(&b), -EINVAL);
}

int main(void)
{
	test_empty_batch_refused();
	test_hello();
	test_hello_ok();
	test_batch();
	test_batch_events_max();
	test_ack();
	test_error_ping();
	test_pipelined();
	test_truncation();
	test_malformed_framing();
	test_malformed_bodies();
	test_batch_partial_reject();
	test_ack_larger_than_batch();
	test_tables();
	printf("test_proto: %d malformed-frame cases\n", n_malformed);
	fflush(stdout);
	test_tables_int_min();
	return proto_t_finish("test_proto");
}
