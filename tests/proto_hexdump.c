/*
 * tests/proto_hexdump.c — prints annotated hex dumps of a real HELLO, a BATCH of two events and
 * its ACK, produced by the real encoders (src/proto.c, src/event.c). docs/protocol.md pastes
 * this output, so the dumps there are byte-exact. Every annotated field is also checked against
 * what proto_frame_parse()/event_decode() read back, so an annotation cannot drift from the
 * codec: the tool exits 1 if one does.
 *
 *   build/bin/proto_hexdump   (no arguments)
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally/event.h"
#include "tally/protocol.h"

static const uint8_t *g_base; /* frame being dumped */
static size_t g_off;          /* next byte to annotate */
static int g_bad;

static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Prints the next `len` bytes, 16 per line, with a description on the first line. */
static void field(size_t len, const char *fmt, ...)
{
	char desc[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(desc, sizeof(desc), fmt, ap);
	va_end(ap);
	for (size_t i = 0; i < len || (len == 0 && i == 0); i += 16) {
		char hex[64] = "";
		size_t m = len - i < 16 ? len - i : 16;
		for (size_t k = 0; k < m; k++)
			snprintf(hex + 3 * k, sizeof(hex) - 3 * k, "%02x ", g_base[g_off + i + k]);
		printf("%04zx  %-48s %s\n", g_off + i, hex, i == 0 ? desc : "");
	}
	g_off += len;
}

static void expect(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "proto_hexdump: annotation disagrees with the codec: %s\n", what);
		g_bad = 1;
	}
}

static const uint8_t *cur(void)
{
	return g_base + g_off;
}

/* The whole frame as plain hex, 32 bytes a line: a test vector to paste into a client's tests. */
static void raw(const uint8_t *f, size_t n)
{
	printf("raw:\n");
	for (size_t i = 0; i < n; i += 32) {
		for (size_t k = i; k < n && k < i + 32; k++)
			printf("%02x", f[k]);
		printf("\n");
	}
	printf("\n");
}

static void header(const uint8_t *f, size_t n, const char *title)
{
	g_base = f;
	g_off = 0;
	uint32_t body_len = (uint32_t)le(f + 12, 4);
	printf("%s: %zu bytes (16-byte header + %" PRIu32 "-byte body)\n", title, n, body_len);
	printf("off   bytes                                            field\n");
	field(4, "magic 0x%08" PRIX64 " = \"TALY\"", le(cur(), 4));
	field(4, "checksum 0x%08" PRIX64 " = low 32 bits of XXH3_64(seed 0) over bytes 0x08..0x%zx",
	      le(cur(), 4), n - 1);
	field(1, "version %u", f[8]);
	static const char *const names[] = {"?",   "HELLO", "HELLO_OK", "BATCH",
					    "ACK", "ERROR", "PING",     "PONG"};
	field(1, "type %u (%s)", f[9], f[9] < 8 ? names[f[9]] : "?");
	field(2, "flags 0");
	field(4, "body_len %" PRIu32, body_len);
	expect(n == 16 + (size_t)body_len, "body_len");
}

static void str_field(size_t len, const char *name)
{
	char s[300];
	size_t m = len < sizeof(s) - 1 ? len : sizeof(s) - 1;
	memcpy(s, cur(), m);
	s[m] = 0;
	field(len, "%s \"%s\"", name, s);
}

/* Annotates one event body at the cursor (after its u16 length) and checks it decodes. */
static void event_fields(size_t len)
{
	struct tally_event ev;
	expect(event_decode(cur(), len, &ev) == TALLY_REJECT_NONE, "event decodes");
	size_t start = g_off;
	int64_t t = (int64_t)le(cur(), 8);
	field(8, "  event_time_us %" PRId64 " (2025-11-21T04:40:00.123456Z)", t);
	expect(t == ev.event_time_us, "event time");
	uint8_t kl = cur()[0], cl = cur()[1], nl = cur()[2], pc = cur()[3];
	field(1, "  key_len %u", kl);
	field(1, "  customer_len %u", cl);
	field(1, "  name_len %u", nl);
	field(1, "  prop_count %u", pc);
	str_field(kl, "  key");
	str_field(cl, "  customer");
	str_field(nl, "  name");
	expect(kl == ev.key.len && cl == ev.customer.len && nl == ev.name.len &&
		       pc == ev.prop_count,
	       "event lengths");
	for (unsigned i = 0; i < pc; i++) {
		uint8_t pkl = cur()[0], kind = cur()[1];
		field(1, "  prop[%u] key_len %u", i, pkl);
		field(1, "  prop[%u] kind %u (%s)", i, kind,
		      kind == 1 ? "INT" : kind == 2 ? "DECIMAL" : "STRING");
		str_field(pkl, "  prop key");
		if (kind == TALLY_VALUE_INT) {
			field(8, "  i64 %" PRId64, (int64_t)le(cur(), 8));
		} else if (kind == TALLY_VALUE_DECIMAL) {
			uint8_t sc = cur()[0];
			field(1, "  scale %u", sc);
			field(8, "  mantissa %" PRId64 "  (value = mantissa x 10^-%u)",
			      (int64_t)le(cur(), 8), sc);
		} else {
			uint16_t sl = (uint16_t)le(cur(), 2);
			field(2, "  string len %u", sl);
			str_field(sl, "  string");
		}
	}
	expect(g_off - start == len, "event ends exactly at its length");
}

static void dump_hello(void)
{
	static uint8_t f[1024];
	struct proto_hello h = {.version = 1,
				.frame_bytes_max = 0,
				.client_name = {(const uint8_t *)"tally-send/0.1", 14},
				.api_key = {(const uint8_t *)"tk_test_4eC39HqLyjWDarjtT1zdp7dc", 32}};
	long n = proto_encode_hello(f, sizeof(f), &h);
	expect(n > 0, "encode hello");
	struct proto_frame fr;
	expect(proto_frame_parse(f, (size_t)n, PROTO_HELLO_BYTES_MAX, 1, &fr, NULL) == n, "parse");
	header(f, (size_t)n, "HELLO (client -> server)");
	field(2, "version 1 (protocol version the client speaks)");
	field(1, "client_name_len %u", f[18]);
	field(1, "reserved 0");
	field(4, "frame_bytes_max %" PRIu64 " (0 = server default)", le(cur(), 4));
	field(2, "api_key_len %" PRIu64, le(cur(), 2));
	str_field(14, "client_name");
	str_field(32, "api_key");
	expect(g_off == (size_t)n, "hello length");
	raw(f, (size_t)n);
}

static void dump_batch_and_ack(void)
{
	static uint8_t f[4096];
	struct tally_prop p1[3] = {
		{.key = {(const uint8_t *)"tokens", 6}, .kind = TALLY_VALUE_INT, .i64 = 1234},
		{.key = {(const uint8_t *)"model", 5},
		 .kind = TALLY_VALUE_STRING,
		 .str = {(const uint8_t *)"gpt-4o", 6}},
		{.key = {(const uint8_t *)"cost", 4},
		 .kind = TALLY_VALUE_DECIMAL,
		 .scale = 6,
		 .i64 = 18510},
	};
	struct tally_prop p2[1] = {
		{.key = {(const uint8_t *)"bytes", 5}, .kind = TALLY_VALUE_INT, .i64 = 52428800},
	};
	struct tally_event_in e1 = {.key = {(const uint8_t *)"req_8f14e45fceea167a", 20},
				    .customer = {(const uint8_t *)"cus_000123", 10},
				    .name = {(const uint8_t *)"ai.tokens", 9},
				    .event_time_us = 1763700000123456,
				    .prop_count = 3,
				    .props = p1};
	struct tally_event_in e2 = {.key = {(const uint8_t *)"req_c9f0f895fb98ab91", 20},
				    .customer = {(const uint8_t *)"cus_000123", 10},
				    .name = {(const uint8_t *)"storage.write", 13},
				    .event_time_us = 1763700000123456,
				    .prop_count = 1,
				    .props = p2};
	struct proto_batch_builder b;
	proto_batch_start(&b, f, sizeof(f), 42);
	expect(proto_batch_add(&b, &e1) == 0 && proto_batch_add(&b, &e2) == 0, "batch add");
	long n = proto_batch_finish(&b);
	struct proto_frame fr;
	expect(proto_frame_parse(f, (size_t)n, PROTO_FRAME_BYTES_DEFAULT, 4096, &fr, NULL) == n,
	       "parse batch");
	header(f, (size_t)n, "BATCH (client -> server), request_id 42, two events");
	field(8, "request_id %" PRIu64, le(cur(), 8));
	field(4, "event_count %" PRIu64, le(cur(), 4));
	for (int i = 0; i < 2; i++) {
		uint16_t el = (uint16_t)le(cur(), 2);
		field(2, "event[%d] length %u, then the event body:", i, el);
		event_fields(el);
	}
	expect(g_off == (size_t)n, "batch length");
	raw(f, (size_t)n);

	static uint8_t a[256];
	struct proto_ack_builder ab;
	proto_ack_start(&ab, a, sizeof(a), 42);
	struct proto_receipt r1 = {PROTO_ACCEPTED, 0, 2, 1048576};
	struct proto_receipt r2 = {PROTO_DUPLICATE, 0, 2, 1040384};
	expect(proto_ack_add(&ab, &r1) == 0 && proto_ack_add(&ab, &r2) == 0, "ack add");
	n = proto_ack_finish(&ab);
	expect(proto_frame_parse(a, (size_t)n, PROTO_FRAME_BYTES_DEFAULT, 4096, &fr, NULL) == n,
	       "parse ack");
	header(a, (size_t)n, "ACK (server -> client) for request_id 42");
	field(8, "request_id %" PRIu64, le(cur(), 8));
	field(4, "receipt_count %" PRIu64, le(cur(), 4));
	for (int i = 0; i < 2; i++) {
		uint8_t st = cur()[0];
		field(1, "receipt[%d] status %u (%s)", i, st, proto_status_str(st));
		field(1, "receipt[%d] reason %u (0 unless REJECTED)", i, cur()[0]);
		field(2, "receipt[%d] shard %" PRIu64, i, le(cur(), 2));
		field(4, "receipt[%d] reserved 0", i);
		field(8, "receipt[%d] offset %" PRIu64, i, le(cur(), 8));
	}
	expect(g_off == (size_t)n, "ack length");
	raw(a, (size_t)n);
}

static void dump_error_ping(void)
{
	static uint8_t f[1024];
	const char *msg = "WAL out of space";
	long n = proto_encode_error(f, sizeof(f), PROTO_E_DISK_FULL, false, 43, msg);
	struct proto_frame fr;
	expect(n > 0 && proto_frame_parse(f, (size_t)n, PROTO_HELLO_BYTES_MAX, 1, &fr, NULL) == n,
	       "error");
	header(f, (size_t)n, "ERROR (server -> client): DISK_FULL, retryable, for request_id 43");
	field(2, "code %" PRIu64 " (%s)", le(cur(), 2), proto_error_code(PROTO_E_DISK_FULL));
	field(1, "fatal %u (0 = the connection stays open)", cur()[0]);
	field(1, "reserved 0");
	field(8, "request_id %" PRIu64 " (the BATCH this answers; 0 = none)", le(cur(), 8));
	field(2, "message_len %" PRIu64, le(cur(), 2));
	str_field(strlen(msg), "message");
	expect(g_off == (size_t)n && fr.u.error.request_id == 43, "error length");
	raw(f, (size_t)n);

	n = proto_encode_ping(f, sizeof(f), PROTO_PING, 0x0123456789ABCDEFull);
	expect(n == 24 && proto_frame_parse(f, 24, 64, 1, &fr, NULL) == 24, "ping");
	header(f, (size_t)n, "PING (client -> server), nonce 0x0123456789ABCDEF");
	field(8, "nonce 0x%016" PRIX64 " (PONG echoes it)", le(cur(), 8));
	raw(f, (size_t)n);
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		printf("usage: proto_hexdump\nPrints annotated hex dumps of a HELLO, a BATCH of two "
		       "events and its ACK, made by the real encoders (for docs/protocol.md).\n");
		return strcmp(argv[1], "--help") == 0 ? 0 : 2;
	}
	dump_hello();
	dump_batch_and_ack();
	dump_error_ping();
	return g_bad;
}
