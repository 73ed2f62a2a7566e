/*
 * proto.c — the tally wire protocol codec. Spec: docs/protocol.md; constants and structs:
 * include/tally/protocol.h.
 *
 * Frame body layouts (offsets from the start of the body, little-endian):
 *   HELLO     0 u16 version | 2 u8 client_name_len (0..64) | 3 u8 reserved=0 |
 *             4 u32 frame_bytes_max wish (0 = default) | 8 u16 api_key_len (0..256) |
 *             10 client_name | api_key                       (exactly 10 + name + key bytes)
 *   HELLO_OK  0 u16 version | 2 u16 shard_count | 4 u32 frame_bytes_max | 8 u32 batch_events_max |
 *             12 u32 inflight_max | 16 i64 server_time_us | 24 i64 max_future_us |
 *             32 i64 max_age_us | 40 u8 tenant_len (0..64) | 41 tenant   (exactly 41 + tenant)
 *   BATCH     0 u64 request_id | 8 u32 event_count | 12 event_count x (u16 len | body[len])
 *   ACK       0 u64 request_id | 8 u32 receipt_count | 12 receipt_count x 16-byte receipts:
 *             u8 status | u8 reason | u16 shard | u32 reserved=0 | u64 offset
 *   ERROR     0 u16 code | 2 u8 fatal (0/1) | 3 u8 reserved=0 | 4 u64 request_id |
 *             12 u16 message_len (0..512) | 14 message             (exactly 14 + message)
 *   PING/PONG 0 u64 nonce                                          (exactly 8)
 *
 * Parse order (the first failing check decides the error): magic (as soon as 4 bytes are
 * there), version, body_len against the limit (before waiting for the body, so a 4 GiB length
 * is refused at once), need-more, checksum, flags, type, body structure.
 *
 * Invariants: the parser never reads outside buf[0..len); every count is checked against the
 * bytes left before use; nothing allocates; reentrant, any thread.
 */
#include <assert.h>
#include <errno.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "byteorder.h"
#include "tally/protocol.h"

static uint32_t frame_checksum(const uint8_t *frame, size_t body_len)
{
	return (uint32_t)XXH3_64bits(frame + 8, 8 + body_len);
}

static void frame_header(uint8_t *buf, uint8_t type, size_t body_len)
{
	tally_put_u32(buf, PROTO_MAGIC);
	buf[8] = PROTO_VERSION;
	buf[9] = type;
	tally_put_u16(buf + 10, 0);
	tally_put_u32(buf + 12, (uint32_t)body_len);
	tally_put_u32(buf + 4, frame_checksum(buf, body_len));
}

static long parse_hello(const uint8_t *b, size_t n, struct proto_hello *h)
{
	if (n < 10)
		return -PROTO_E_MALFORMED;
	h->version = tally_get_u16(b);
	uint8_t nl = b[2];
	h->frame_bytes_max = tally_get_u32(b + 4);
	uint16_t kl = tally_get_u16(b + 8);
	if (b[3] != 0 || nl > PROTO_CLIENT_NAME_BYTES_MAX || kl > PROTO_API_KEY_BYTES_MAX)
		return -PROTO_E_MALFORMED;
	if (n != 10u + nl + kl)
		return -PROTO_E_MALFORMED;
	h->client_name.ptr = b + 10;
	h->client_name.len = nl;
	h->api_key.ptr = b + 10 + nl;
	h->api_key.len = kl;
	return 0;
}

static long parse_hello_ok(const uint8_t *b, size_t n, struct proto_hello_ok *h)
{
	if (n < 41)
		return -PROTO_E_MALFORMED;
	h->version = tally_get_u16(b);
	h->shard_count = tally_get_u16(b + 2);
	h->frame_bytes_max = tally_get_u32(b + 4);
	h->batch_events_max = tally_get_u32(b + 8);
	h->inflight_max = tally_get_u32(b + 12);
	h->server_time_us = (int64_t)tally_get_u64(b + 16);
	h->max_future_us = (int64_t)tally_get_u64(b + 24);
	h->max_age_us = (int64_t)tally_get_u64(b + 32);
	uint8_t tl = b[40];
	if (tl > TALLY_TENANT_BYTES_MAX || n != 41u + tl)
		return -PROTO_E_MALFORMED;
	if (h->frame_bytes_max < PROTO_FRAME_BYTES_MIN || h->frame_bytes_max > PROTO_FRAME_BYTES_MAX ||
	    h->batch_events_max == 0 || h->batch_events_max > PROTO_BATCH_EVENTS_MAX ||
	    h->inflight_max == 0 || h->shard_count == 0)
		return -PROTO_E_MALFORMED;
	h->tenant.ptr = b + 41;
	h->tenant.len = tl;
	return 0;
}

static long parse_batch(const uint8_t *b, size_t n, uint32_t batch_events_max,
			struct proto_batch *bt)
{
	if (n < PROTO_BATCH_HEADER_BYTES)
		return -PROTO_E_MALFORMED;
	bt->request_id = tally_get_u64(b);
	bt->event_count = tally_get_u32(b + 8);
	if (bt->event_count == 0)
		return -PROTO_E_EMPTY_BATCH;
	if (bt->event_count > batch_events_max)
		return -PROTO_E_BATCH_TOO_LARGE;
	const uint8_t *p = b + PROTO_BATCH_HEADER_BYTES, *end = b + n;
	/* Each event takes at least its 2-byte length: a count the bytes cannot hold is malformed. */
	if ((size_t)(end - p) / 2 < bt->event_count)
		return -PROTO_E_MALFORMED;
	for (uint32_t i = 0; i < bt->event_count; i++) {
		if (end - p < 2)
			return -PROTO_E_MALFORMED;
		uint16_t el = tally_get_u16(p);
		p += 2;
		if (end - p < el)
			return -PROTO_E_MALFORMED;
		p += el;
	}
	if (p != end)
		return -PROTO_E_MALFORMED;
	bt->events.ptr = b + PROTO_BATCH_HEADER_BYTES;
	bt->events.len = (uint32_t)(n - PROTO_BATCH_HEADER_BYTES);
	return 0;
}

static long parse_ack(const uint8_t *b, size_t n, struct proto_ack *a)
{
	if (n < PROTO_ACK_HEADER_BYTES)
		return -PROTO_E_MALFORMED;
	a->request_id = tally_get_u64(b);
	a->receipt_count = tally_get_u32(b + 8);
	if ((n - PROTO_ACK_HEADER_BYTES) / PROTO_RECEIPT_BYTES != a->receipt_count ||
	    (n - PROTO_ACK_HEADER_BYTES) % PROTO_RECEIPT_BYTES != 0)
		return -PROTO_E_MALFORMED;
	const uint8_t *r = b + PROTO_ACK_HEADER_BYTES;
	for (uint32_t i = 0; i < a->receipt_count; i++, r += PROTO_RECEIPT_BYTES) {
		if (r[0] < PROTO_ACCEPTED || r[0] > PROTO_REJECTED || tally_get_u32(r + 4) != 0)
			return -PROTO_E_MALFORMED;
		if ((r[0] == PROTO_REJECTED) != (r[1] != 0))
			return -PROTO_E_MALFORMED;
	}
	a->receipts.ptr = b + PROTO_ACK_HEADER_BYTES;
	a->receipts.len = (uint32_t)(n - PROTO_ACK_HEADER_BYTES);
	return 0;
}

static long parse_error(const uint8_t *b, size_t n, struct proto_errmsg *e)
{
	if (n < 14)
		return -PROTO_E_MALFORMED;
	e->code = tally_get_u16(b);
	e->fatal = b[2];
	e->request_id = tally_get_u64(b + 4);
	uint16_t ml = tally_get_u16(b + 12);
	if (e->fatal > 1 || b[3] != 0 || ml > PROTO_ERROR_MSG_BYTES_MAX || n != 14u + ml)
		return -PROTO_E_MALFORMED;
	e->message.ptr = b + 14;
	e->message.len = ml;
	return 0;
}

long proto_frame_parse(const uint8_t *buf, size_t len, uint32_t frame_bytes_max,
		       uint32_t batch_events_max, struct proto_frame *out, size_t *need_bytes)
{
	assert(frame_bytes_max >= PROTO_HEADER_BYTES);
	if (need_bytes)
		*need_bytes = PROTO_HEADER_BYTES;
	if (len >= 4 && tally_get_u32(buf) != PROTO_MAGIC)
		return -PROTO_E_BAD_MAGIC;
	if (len < PROTO_HEADER_BYTES)
		return 0;
	if (buf[8] != PROTO_VERSION)
		return -PROTO_E_BAD_VERSION;
	uint32_t body_len = tally_get_u32(buf + 12);
	if (body_len > frame_bytes_max - PROTO_HEADER_BYTES)
		return -PROTO_E_FRAME_TOO_LARGE;
	size_t total = PROTO_HEADER_BYTES + (size_t)body_len;
	if (need_bytes)
		*need_bytes = total;
	if (len < total)
		return 0;
	if (tally_get_u32(buf + 4) != frame_checksum(buf, body_len))
		return -PROTO_E_BAD_CHECKSUM;
	if (tally_get_u16(buf + 10) != 0)
		return -PROTO_E_BAD_FLAGS;

	const uint8_t *b = buf + PROTO_HEADER_BYTES;
	long rc;
	out->type = buf[9];
	out->body.ptr = b;
	out->body.len = body_len;
	switch (out->type) {
	case PROTO_HELLO:
		rc = parse_hello(b, body_len, &out->u.hello);
		break;
	case PROTO_HELLO_OK:
		rc = parse_hello_ok(b, body_len, &out->u.hello_ok);
		break;
	case PROTO_BATCH:
		rc = parse_batch(b, body_len, batch_events_max, &out->u.batch);
		break;
	case PROTO_ACK:
		rc = parse_ack(b, body_len, &out->u.ack);
		break;
	case PROTO_ERROR:
		rc = parse_error(b, body_len, &out->u.error);
		break;
	case PROTO_PING:
	case PROTO_PONG:
		rc = body_len == 8 ? 0 : -PROTO_E_MALFORMED;
		if (rc == 0)
			out->u.ping_nonce = tally_get_u64(b);
		break;
	default:
		return -PROTO_E_UNKNOWN_TYPE;
	}
	if (rc < 0)
		return rc;
	return (long)total;
}

void proto_batch_iter_init(const struct proto_batch *b, struct proto_batch_iter *it)
{
	it->p = b->events.ptr;
	it->end = b->events.ptr + b->events.len;
	it->index = 0;
}

bool proto_batch_next(struct proto_batch_iter *it, struct tally_view *body)
{
	/* Framing was checked by parse_batch(); the bounds checks stay as a second fence. */
	if (it->end - it->p < 2)
		return false;
	uint16_t el = tally_get_u16(it->p);
	if (it->end - it->p - 2 < el)
		return false;
	body->ptr = it->p + 2;
	body->len = el;
	it->p += 2 + (size_t)el;
	it->index++;
	return true;
}

void proto_ack_receipt(const struct proto_ack *a, uint32_t index, struct proto_receipt *out)
{
	assert(index < a->receipt_count);
	const uint8_t *r = a->receipts.ptr + (size_t)index * PROTO_RECEIPT_BYTES;
	out->status = r[0];
	out->reason = r[1];
	out->shard = tally_get_u16(r + 2);
	out->offset = tally_get_u64(r + 8);
}

long proto_encode_hello(uint8_t *buf, size_t cap, const struct proto_hello *h)
{
	if (h->client_name.len > PROTO_CLIENT_NAME_BYTES_MAX ||
	    h->api_key.len > PROTO_API_KEY_BYTES_MAX)
		return -EINVAL;
	size_t body = 10 + (size_t)h->client_name.len + h->api_key.len;
	if (cap < PROTO_HEADER_BYTES + body)
		return -ENOSPC;
	uint8_t *b = buf + PROTO_HEADER_BYTES;
	tally_put_u16(b, h->version);
	b[2] = (uint8_t)h->client_name.len;
	b[3] = 0;
	tally_put_u32(b + 4, h->frame_bytes_max);
	tally_put_u16(b + 8, (uint16_t)h->api_key.len);
	if (h->client_name.len)
		memcpy(b + 10, h->client_name.ptr, h->client_name.len);
	if (h->api_key.len)
		memcpy(b + 10 + h->client_name.len, h->api_key.ptr, h->api_key.len);
	frame_header(buf, PROTO_HELLO, body);
	return (long)(PROTO_HEADER_BYTES + body);
}

long proto_encode_hello_ok(uint8_t *buf, size_t cap, const struct proto_hello_ok *h)
{
	/* The same bounds the parser enforces, so an encoded frame always parses. */
	if (h->tenant.len > TALLY_TENANT_BYTES_MAX || h->frame_bytes_max < PROTO_FRAME_BYTES_MIN ||
	    h->frame_bytes_max > PROTO_FRAME_BYTES_MAX || h->batch_events_max == 0 ||
	    h->batch_events_max > PROTO_BATCH_EVENTS_MAX || h->inflight_max == 0 ||
	    h->shard_count == 0)
		return -EINVAL;
	size_t body = 41 + (size_t)h->tenant.len;
	if (cap < PROTO_HEADER_BYTES + body)
		return -ENOSPC;
	uint8_t *b = buf + PROTO_HEADER_BYTES;
	tally_put_u16(b, h->version);
	tally_put_u16(b + 2, h->shard_count);
	tally_put_u32(b + 4, h->frame_bytes_max);
	tally_put_u32(b + 8, h->batch_events_max);
	tally_put_u32(b + 12, h->inflight_max);
	tally_put_u64(b + 16, (uint64_t)h->server_time_us);
	tally_put_u64(b + 24, (uint64_t)h->max_future_us);
	tally_put_u64(b + 32, (uint64_t)h->max_age_us);
	b[40] = (uint8_t)h->tenant.len;
	if (h->tenant.len)
		memcpy(b + 41, h->tenant.ptr, h->tenant.len);
	frame_header(buf, PROTO_HELLO_OK, body);
	return (long)(PROTO_HEADER_BYTES + body);
}

long proto_encode_error(uint8_t *buf, size_t cap, uint16_t code, bool fatal, uint64_t request_id,
			const char *message)
{
	size_t ml = message ? strlen(message) : 0;
	if (ml > PROTO_ERROR_MSG_BYTES_MAX)
		ml = PROTO_ERROR_MSG_BYTES_MAX; /* a message is for humans: truncate rather than fail */
	size_t body = 14 + ml;
	if (cap < PROTO_HEADER_BYTES + body)
		return -ENOSPC;
	uint8_t *b = buf + PROTO_HEADER_BYTES;
	tally_put_u16(b, code);
	b[2] = fatal ? 1 : 0;
	b[3] = 0;
	tally_put_u64(b + 4, request_id);
	tally_put_u16(b + 12, (uint16_t)ml);
	if (ml)
		memcpy(b + 14, message, ml);
	frame_header(buf, PROTO_ERROR, body);
	return (long)(PROTO_HEADER_BYTES + body);
}

long proto_encode_ping(uint8_t *buf, size_t cap, uint8_t type, uint64_t nonce)
{
	if (type != PROTO_PING && type != PROTO_PONG)
		return -EINVAL;
	if (cap < PROTO_HEADER_BYTES + 8)
		return -ENOSPC;
	tally_put_u64(buf + PROTO_HEADER_BYTES, nonce);
	frame_header(buf, type, 8);
	return PROTO_HEADER_BYTES + 8;
}

void proto_batch_start(struct proto_batch_builder *b, uint8_t *buf, size_t cap,
		       uint64_t request_id)
{
	b->buf = buf;
	b->cap = cap;
	b->len = PROTO_HEADER_BYTES + PROTO_BATCH_HEADER_BYTES;
	b->count = 0;
	b->request_id = request_id;
}

int proto_batch_add(struct proto_batch_builder *b, const struct tally_event_in *ev)
{
	if (b->count >= PROTO_BATCH_EVENTS_MAX)
		return -E2BIG;
	if (b->len + 2 > b->cap)
		return -ENOSPC;
	long n = event_encode(ev, b->buf + b->len + 2, b->cap - b->len - 2);
	if (n < 0)
		return (int)n;
	tally_put_u16(b->buf + b->len, (uint16_t)n);
	b->len += 2 + (size_t)n;
	b->count++;
	return 0;
}

int proto_batch_add_raw(struct proto_batch_builder *b, const uint8_t *body, size_t len)
{
	if (b->count >= PROTO_BATCH_EVENTS_MAX)
		return -E2BIG;
	if (len > UINT16_MAX)
		return -EINVAL;
	if (b->len + 2 + len > b->cap)
		return -ENOSPC;
	tally_put_u16(b->buf + b->len, (uint16_t)len);
	if (len)
		memcpy(b->buf + b->len + 2, body, len);
	b->len += 2 + len;
	b->count++;
	return 0;
}

long proto_batch_finish(struct proto_batch_builder *b)
{
	if (b->count == 0)
		return -EINVAL; /* the parser refuses an empty BATCH (EMPTY_BATCH) */
	if (b->cap < PROTO_HEADER_BYTES + PROTO_BATCH_HEADER_BYTES)
		return -ENOSPC;
	uint8_t *body = b->buf + PROTO_HEADER_BYTES;
	tally_put_u64(body, b->request_id);
	tally_put_u32(body + 8, b->count);
	frame_header(b->buf, PROTO_BATCH, b->len - PROTO_HEADER_BYTES);
	return (long)b->len;
}

void proto_ack_start(struct proto_ack_builder *b, uint8_t *buf, size_t cap, uint64_t request_id)
{
	b->buf = buf;
	b->cap = cap;
	b->len = PROTO_HEADER_BYTES + PROTO_ACK_HEADER_BYTES;
	b->count = 0;
	if (cap >= b->len)
		tally_put_u64(buf + PROTO_HEADER_BYTES, request_id);
}

int proto_ack_add(struct proto_ack_builder *b, const struct proto_receipt *r)
{
	if (r->status < PROTO_ACCEPTED || r->status > PROTO_REJECTED ||
	    (r->status == PROTO_REJECTED) != (r->reason != 0))
		return -EINVAL;
	if (b->len + PROTO_RECEIPT_BYTES > b->cap)
		return -ENOSPC;
	uint8_t *p = b->buf + b->len;
	p[0] = r->status;
	p[1] = r->reason;
	tally_put_u16(p + 2, r->shard);
	tally_put_u32(p + 4, 0);
	tally_put_u64(p + 8, r->offset);
	b->len += PROTO_RECEIPT_BYTES;
	b->count++;
	return 0;
}

long proto_ack_finish(struct proto_ack_builder *b)
{
	if (b->cap < PROTO_HEADER_BYTES + PROTO_ACK_HEADER_BYTES)
		return -ENOSPC;
	tally_put_u32(b->buf + PROTO_HEADER_BYTES + 8, b->count);
	frame_header(b->buf, PROTO_ACK, b->len - PROTO_HEADER_BYTES);
	return (long)b->len;
}

struct proto_error_info {
	const char *code;
	const char *text;
	bool retryable;
};

static const struct proto_error_info error_info[PROTO_E_MAX_] = {
	[PROTO_OK] = {"OK", "no error", false},
	[PROTO_E_BAD_MAGIC] = {"BAD_MAGIC", "frame does not start with the magic TALY", false},
	[PROTO_E_BAD_VERSION] = {"BAD_VERSION", "frame version is not 1", false},
	[PROTO_E_BAD_CHECKSUM] = {"BAD_CHECKSUM", "frame checksum mismatch", false},
	[PROTO_E_FRAME_TOO_LARGE] = {"FRAME_TOO_LARGE", "frame larger than the negotiated maximum",
				     false},
	[PROTO_E_UNKNOWN_TYPE] = {"UNKNOWN_TYPE", "unknown frame type", false},
	[PROTO_E_BAD_FLAGS] = {"BAD_FLAGS", "reserved frame flags are not zero", false},
	[PROTO_E_MALFORMED] = {"MALFORMED", "frame body is malformed", false},
	[PROTO_E_EMPTY_BATCH] = {"EMPTY_BATCH", "batch has no events", false},
	[PROTO_E_BATCH_TOO_LARGE] = {"BATCH_TOO_LARGE", "batch has more events than allowed",
				     false},
	[PROTO_E_UNEXPECTED] = {"UNEXPECTED", "frame type not allowed here", false},
	[PROTO_E_AUTH] = {"AUTH", "authentication failed", false},
	[PROTO_E_UNSUPPORTED] = {"UNSUPPORTED", "protocol version not supported", false},
	[PROTO_E_TOO_MANY_INFLIGHT] = {"TOO_MANY_INFLIGHT", "too many batches in flight", true},
	[PROTO_E_DISK_FULL] = {"DISK_FULL", "storage is full; retry later", true},
	[PROTO_E_UNAVAILABLE] = {"UNAVAILABLE", "server unavailable; retry", true},
	[PROTO_E_TIMEOUT] = {"TIMEOUT", "deadline passed", false},
	[PROTO_E_TOO_MANY_CONNS] = {"TOO_MANY_CONNS", "too many connections", true},
};

static const struct proto_error_info *error_lookup(int code)
{
	/* Compared as unsigned: negating INT_MIN would be undefined. */
	unsigned u = code < 0 ? 0u - (unsigned)code : (unsigned)code;
	if (u >= PROTO_E_MAX_)
		return NULL;
	return &error_info[u];
}

const char *proto_error_str(int code)
{
	const struct proto_error_info *e = error_lookup(code);
	return e ? e->text : "unknown error code";
}

const char *proto_error_code(int code)
{
	const struct proto_error_info *e = error_lookup(code);
	return e ? e->code : "UNKNOWN";
}

bool proto_error_retryable(int code)
{
	const struct proto_error_info *e = error_lookup(code);
	return e ? e->retryable : false;
}

const char *proto_status_str(int status)
{
	switch (status) {
	case PROTO_ACCEPTED:
		return "ACCEPTED";
	case PROTO_DUPLICATE:
		return "DUPLICATE";
	case PROTO_CONFLICT:
		return "CONFLICT";
	case PROTO_REJECTED:
		return "REJECTED";
	default:
		return "UNKNOWN";
	}
}
