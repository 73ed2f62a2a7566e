/*
 * tests/fuzz/fuzz_proto.c — libFuzzer target for the frame parser and the event decoder.
 *
 * Each input is read as a stream of pipelined frames, parsed with three limit sets (the
 * defaults, the HELLO limit, and a tiny one). For every frame that parses:
 *   - the answer is consistent (size = 16 + body_len, views inside the input, every proper
 *     prefix of the frame is "need more");
 *   - the frame is re-encoded with the real encoders/builders and must come out byte-identical
 *     (all encodings are canonical);
 *   - for a BATCH, every event goes through event_decode(); valid events are walked with the
 *     property iterator, looked up with event_prop_find(), digested, fingerprinted and
 *     re-encoded with event_encode(), which must reproduce the body exactly.
 * The input is parsed twice: as given (so checksum failures are exercised) and with every
 * frame's checksum recomputed first (libFuzzer cannot compute XXH3, so without the fix-up
 * almost every mutation would stop at BAD_CHECKSUM and the body parsers would go unexplored).
 * The whole input is also decoded as one bare event body. Any mismatch aborts (a finding).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "tally/event.h"
#include "tally/protocol.h"
#include "fuzz_fixups.h"

#define FUZZ_ASSERT(c)                                                                             \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "fuzz_proto: %s:%d: %s\n", __FILE__, __LINE__, #c);        \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t scratch[(64u << 20) + 64]; /* re-encoding buffer: any frame up to the max fits */

static bool inside(struct tally_view v, const uint8_t *lo, const uint8_t *hi)
{
	return v.len == 0 || (v.ptr >= lo && v.ptr + v.len <= hi);
}

/* Checks one event body; returns its reject reason. */
static enum tally_reject check_event(const uint8_t *body, size_t len)
{
	struct tally_event ev;
	enum tally_reject r = event_decode(body, len, &ev);
	FUZZ_ASSERT(r < TALLY_REJECT_MAX_);
	FUZZ_ASSERT(event_reject_str(r) != NULL && event_reject_code(r) != NULL);
	if (r != TALLY_REJECT_NONE)
		return r;
	const uint8_t *end = body + len;
	FUZZ_ASSERT(ev.body.ptr == body && ev.body.len == len);
	FUZZ_ASSERT(inside(ev.key, body, end) && ev.key.len >= 1 && ev.key.len <= 128);
	FUZZ_ASSERT(inside(ev.customer, body, end) && ev.customer.len >= 1);
	FUZZ_ASSERT(inside(ev.name, body, end) && ev.name.len >= 1 && ev.name.len <= 64);
	FUZZ_ASSERT(ev.event_time_us >= 0 && ev.prop_count <= TALLY_PROPS_MAX);
	FUZZ_ASSERT(event_utf8_valid(ev.customer.ptr, ev.customer.len));
	FUZZ_ASSERT(ev.props.ptr + ev.props.len == end);

	struct tally_prop props[TALLY_PROPS_MAX];
	struct tally_prop_iter it;
	uint32_t n = 0;
	event_prop_iter_init(&ev, &it);
	while (event_prop_next(&it, &props[n])) {
		const struct tally_prop *p = &props[n];
		FUZZ_ASSERT(inside(p->key, ev.props.ptr, end));
		FUZZ_ASSERT(p->kind >= TALLY_VALUE_INT && p->kind <= TALLY_VALUE_STRING);
		FUZZ_ASSERT(p->scale <= TALLY_DECIMAL_SCALE_MAX);
		FUZZ_ASSERT(p->str.len <= TALLY_PROP_STRING_BYTES_MAX && inside(p->str, body, end));
		n++;
		FUZZ_ASSERT(n <= ev.prop_count);
	}
	FUZZ_ASSERT(n == ev.prop_count);
	for (uint32_t i = 0; i < n; i++) {
		struct tally_prop f;
		FUZZ_ASSERT(event_prop_find(&ev, (const char *)props[i].key.ptr, props[i].key.len, &f));
		FUZZ_ASSERT(f.key.ptr == props[i].key.ptr); /* keys are unique: the same one */
	}
	(void)event_content_digest(&ev);
	(void)event_fingerprint(ev.customer, ev.key);

	struct tally_event_in in = {.key = ev.key,
				    .customer = ev.customer,
				    .name = ev.name,
				    .event_time_us = ev.event_time_us,
				    .prop_count = n,
				    .props = props};
	FUZZ_ASSERT(event_encoded_size(&in) == len);
	static uint8_t enc[TALLY_EVENT_BYTES_MAX];
	long w = event_encode(&in, enc, sizeof(enc));
	FUZZ_ASSERT(w == (long)len && memcmp(enc, body, len) == 0);
	return r;
}

/* Re-encodes a parsed frame and compares it with the original bytes. */
static void check_reencode(const uint8_t *frame, long n, const struct proto_frame *f)
{
	long w = -1;
	switch (f->type) {
	case PROTO_HELLO:
		w = proto_encode_hello(scratch, sizeof(scratch), &f->u.hello);
		break;
	case PROTO_HELLO_OK:
		w = proto_encode_hello_ok(scratch, sizeof(scratch), &f->u.hello_ok);
		break;
	case PROTO_ERROR: {
		char msg[PROTO_ERROR_MSG_BYTES_MAX + 1];
		const struct proto_errmsg *e = &f->u.error;
		FUZZ_ASSERT(e->message.len <= PROTO_ERROR_MSG_BYTES_MAX);
		memcpy(msg, e->message.ptr, e->message.len);
		msg[e->message.len] = 0;
		if (strlen(msg) != e->message.len)
			return; /* an embedded NUL cannot go through the C-string encoder */
		w = proto_encode_error(scratch, sizeof(scratch), e->code, e->fatal, e->request_id,
				       msg);
		break;
	}
	case PROTO_PING:
	case PROTO_PONG:
		w = proto_encode_ping(scratch, sizeof(scratch), f->type, f->u.ping_nonce);
		break;
	case PROTO_BATCH: {
		struct proto_batch_builder b;
		struct proto_batch_iter it;
		struct tally_view body;
		proto_batch_start(&b, scratch, sizeof(scratch), f->u.batch.request_id);
		proto_batch_iter_init(&f->u.batch, &it);
		while (proto_batch_next(&it, &body))
			FUZZ_ASSERT(proto_batch_add_raw(&b, body.ptr, body.len) == 0);
		w = proto_batch_finish(&b);
		break;
	}
	case PROTO_ACK: {
		struct proto_ack_builder b;
		proto_ack_start(&b, scratch, sizeof(scratch), f->u.ack.request_id);
		for (uint32_t i = 0; i < f->u.ack.receipt_count; i++) {
			struct proto_receipt r;
			proto_ack_receipt(&f->u.ack, i, &r);
			FUZZ_ASSERT(proto_status_str(r.status) != NULL);
			FUZZ_ASSERT(proto_ack_add(&b, &r) == 0);
		}
		w = proto_ack_finish(&b);
		break;
	}
	default:
		FUZZ_ASSERT(!"parser accepted an unknown type");
	}
	FUZZ_ASSERT(w == n && memcmp(scratch, frame, (size_t)n) == 0);
}

static void check_frame(const uint8_t *buf, size_t len, long n, const struct proto_frame *f,
			uint32_t fmax, uint32_t emax)
{
	FUZZ_ASSERT((size_t)n <= len && n <= (long)fmax);
	FUZZ_ASSERT(f->body.ptr == buf + PROTO_HEADER_BYTES);
	FUZZ_ASSERT((long)f->body.len + PROTO_HEADER_BYTES == n);
	/* one byte short of a frame that parses is always "need more", never an error */
	struct proto_frame g;
	size_t need = 0;
	FUZZ_ASSERT(proto_frame_parse(buf, (size_t)n - 1, fmax, emax, &g, &need) == 0);
	FUZZ_ASSERT(need == ((size_t)n - 1 < PROTO_HEADER_BYTES ? PROTO_HEADER_BYTES : (size_t)n));

	if (f->type == PROTO_BATCH) {
		const struct proto_batch *b = &f->u.batch;
		FUZZ_ASSERT(b->event_count >= 1 && b->event_count <= emax);
		FUZZ_ASSERT(inside(b->events, buf, buf + n));
		struct proto_batch_iter it;
		struct tally_view body;
		uint32_t count = 0;
		const uint8_t *last_end = b->events.ptr;
		proto_batch_iter_init(b, &it);
		while (proto_batch_next(&it, &body)) {
			FUZZ_ASSERT(body.ptr == last_end + 2);
			last_end = body.ptr + body.len;
			(void)check_event(body.ptr, body.len);
			count++;
		}
		FUZZ_ASSERT(count == b->event_count);
		FUZZ_ASSERT(last_end == b->events.ptr + b->events.len);
	} else if (f->type == PROTO_ACK) {
		FUZZ_ASSERT((size_t)f->u.ack.receipt_count * PROTO_RECEIPT_BYTES ==
			    f->u.ack.receipts.len);
	}
	check_reencode(buf, n, f);
}

static void parse_stream(const uint8_t *data, size_t size, uint32_t fmax, uint32_t emax)
{
	size_t pos = 0;
	while (pos < size) {
		struct proto_frame f;
		size_t need = 0;
		long n = proto_frame_parse(data + pos, size - pos, fmax, emax, &f, &need);
		if (n < 0) {
			FUZZ_ASSERT(-n > 0 && -n < PROTO_E_MAX_);
			FUZZ_ASSERT(proto_error_code((int)n) != NULL);
			return;
		}
		if (n == 0) {
			FUZZ_ASSERT(need > size - pos);
			return;
		}
		check_frame(data + pos, size - pos, n, &f, fmax, emax);
		pos += (size_t)n;
	}
}

static void parse_all(const uint8_t *data, size_t size)
{
	parse_stream(data, size, PROTO_FRAME_BYTES_DEFAULT, PROTO_BATCH_EVENTS_DEFAULT);
	parse_stream(data, size, PROTO_HELLO_BYTES_MAX, PROTO_BATCH_EVENTS_DEFAULT);
	parse_stream(data, size, 64, 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	parse_all(data, size);
	(void)check_event(data, size);
	/* an exact-size copy, so ASan still sees reads past the end */
	uint8_t *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	fuzz_fix_frame_checksums(copy, size);
	if (memcmp(copy, data, size) != 0)
		parse_all(copy, size);
	free(copy);
	return 0;
}
