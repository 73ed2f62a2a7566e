/*
 * tally/protocol.h — the tally wire protocol: frame codec (zero-copy decode, encode into
 * caller buffers). The byte-by-byte specification is docs/protocol.md; this header mirrors it.
 *
 * Frame (little-endian):
 *   0   u32 magic      0x594C4154 ("TALY" as bytes 54 41 4C 59)
 *   4   u32 checksum   low 32 bits of XXH3-64 over bytes [8, 16 + body_len)
 *   8   u8  version    1
 *   9   u8  type       enum proto_type
 *   10  u16 flags      0 (reserved; non-zero is an error)
 *   12  u32 body_len   <= frame_bytes_max - 16
 *   16  body
 *
 * Parsing returns one of three distinct answers: bytes consumed (> 0), 0 = need more bytes,
 * or a negative enum proto_error. Every length and count is checked against the bytes that
 * are actually left before it is used. Nothing here allocates; decoded frames are views into
 * the caller's buffer and stay valid only as long as it does.
 *
 * Thread safety: every function is reentrant; there is no global state.
 */
#ifndef TALLY_PROTOCOL_H
#define TALLY_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/event.h"

#define PROTO_MAGIC                 0x594C4154u
#define PROTO_VERSION               1
#define PROTO_HEADER_BYTES          16
#define PROTO_FRAME_BYTES_DEFAULT   (1u << 20) /* 1 MiB */
#define PROTO_FRAME_BYTES_MIN       4096u
#define PROTO_FRAME_BYTES_MAX       (64u << 20) /* no server may advertise more */
#define PROTO_BATCH_EVENTS_DEFAULT  4096u
#define PROTO_BATCH_EVENTS_MAX      65535u
#define PROTO_INFLIGHT_DEFAULT      64u
#define PROTO_HELLO_BYTES_MAX       1024u /* a HELLO frame, header included */
#define PROTO_CLIENT_NAME_BYTES_MAX 64u
#define PROTO_API_KEY_BYTES_MAX     256u
#define PROTO_ERROR_MSG_BYTES_MAX   512u
#define PROTO_RECEIPT_BYTES         16u
#define PROTO_BATCH_HEADER_BYTES    12u /* u64 request_id, u32 event_count */
#define PROTO_ACK_HEADER_BYTES      12u /* u64 request_id, u32 receipt_count */

enum proto_type {
	PROTO_HELLO = 1,
	PROTO_HELLO_OK = 2,
	PROTO_BATCH = 3,
	PROTO_ACK = 4,
	PROTO_ERROR = 5,
	PROTO_PING = 6,
	PROTO_PONG = 7,
};

/*
 * Frame-level errors: the codes travel in ERROR frames (as positive numbers) and are returned
 * negated by the parser. A frame error closes the connection; the other codes are sent by the
 * broker for conditions that are not malformed input. Values never change meaning.
 */
enum proto_error {
	PROTO_OK = 0,
	PROTO_E_BAD_MAGIC = 1,       /* fatal: first 4 bytes are not the magic */
	PROTO_E_BAD_VERSION = 2,     /* fatal: frame version is not 1 */
	PROTO_E_BAD_CHECKSUM = 3,    /* fatal: checksum mismatch */
	PROTO_E_FRAME_TOO_LARGE = 4, /* fatal: body_len over the negotiated maximum */
	PROTO_E_UNKNOWN_TYPE = 5,    /* fatal: type not in enum proto_type */
	PROTO_E_BAD_FLAGS = 6,       /* fatal: reserved flags not zero */
	PROTO_E_MALFORMED = 7,       /* fatal: body fields overrun the body, or bytes left over */
	PROTO_E_EMPTY_BATCH = 8,     /* fatal: BATCH with zero events */
	PROTO_E_BATCH_TOO_LARGE = 9, /* fatal: more events than the negotiated maximum */
	PROTO_E_UNEXPECTED = 10,     /* fatal: a frame type not valid in this state/direction */
	PROTO_E_AUTH = 11,           /* fatal: unknown API key */
	PROTO_E_UNSUPPORTED = 12,    /* fatal: protocol version not supported */
	PROTO_E_TOO_MANY_INFLIGHT = 13, /* retryable: too many un-ACKed batches on the connection */
	PROTO_E_DISK_FULL = 14,      /* retryable: the WAL is out of space; nothing acked is lost */
	PROTO_E_UNAVAILABLE = 15,    /* retryable: shutting down or storage failed; reconnect */
	PROTO_E_TIMEOUT = 16,        /* fatal: HELLO or read deadline passed */
	PROTO_E_TOO_MANY_CONNS = 17, /* retryable: --max-conns reached */
	PROTO_E_MAX_
};

enum proto_receipt_status {
	PROTO_ACCEPTED = 1,  /* durable in the WAL at (shard, offset) */
	PROTO_DUPLICATE = 2, /* same key, same content already stored; (shard, offset) of the original if known */
	PROTO_CONFLICT = 3,  /* same key, different content; the first stands; its position if known */
	PROTO_REJECTED = 4,  /* invalid event; reason = enum tally_reject */
};

#define PROTO_OFFSET_UNKNOWN UINT64_MAX

struct proto_receipt {
	uint8_t status; /* enum proto_receipt_status */
	uint8_t reason; /* enum tally_reject when REJECTED, else 0 */
	uint16_t shard;
	uint64_t offset; /* PROTO_OFFSET_UNKNOWN when not known */
};

struct proto_hello {
	uint16_t version;          /* protocol version the client speaks */
	uint32_t frame_bytes_max;  /* client's wish, 0 = server default */
	struct tally_view client_name;
	struct tally_view api_key;
};

struct proto_hello_ok {
	uint16_t version;
	uint16_t shard_count;
	uint32_t frame_bytes_max;
	uint32_t batch_events_max;
	uint32_t inflight_max;
	int64_t server_time_us;
	int64_t max_future_us;
	int64_t max_age_us;
	struct tally_view tenant;
};

struct proto_batch {
	uint64_t request_id;
	uint32_t event_count;
	struct tally_view events; /* event_count x (u16 len | body), framing already checked */
};

struct proto_ack {
	uint64_t request_id;
	uint32_t receipt_count;
	struct tally_view receipts; /* receipt_count x 16 bytes */
};

struct proto_errmsg {
	uint16_t code;  /* enum proto_error */
	uint8_t fatal;  /* 1: the sender closes the connection */
	uint64_t request_id; /* the BATCH it concerns, 0 if none */
	struct tally_view message;
};

struct proto_frame {
	uint8_t type;
	struct tally_view body;
	union {
		struct proto_hello hello;
		struct proto_hello_ok hello_ok;
		struct proto_batch batch;
		struct proto_ack ack;
		struct proto_errmsg error;
		uint64_t ping_nonce; /* PING and PONG */
	} u;
};

struct proto_batch_iter {
	const uint8_t *p;
	const uint8_t *end;
	uint32_t index;
};

/*
 * Parses one frame from buf[0..len). frame_bytes_max bounds header + body.
 * Returns the frame's size in bytes (> 0) with `out` filled, 0 if more bytes are needed
 * (`*need_bytes`, if not NULL, gets the total size needed when known, else 16), or a negative
 * enum proto_error. The body is fully validated structurally (including, for a BATCH, the
 * event_count framing of every event); events themselves are validated by event_decode().
 */
long proto_frame_parse(const uint8_t *buf, size_t len, uint32_t frame_bytes_max,
		       uint32_t batch_events_max, struct proto_frame *out, size_t *need_bytes)
	__attribute__((warn_unused_result));

/* Iterates the events of a parsed BATCH: sets *body to the next event's body view. */
void proto_batch_iter_init(const struct proto_batch *b, struct proto_batch_iter *it);
bool proto_batch_next(struct proto_batch_iter *it, struct tally_view *body);

/* Reads receipt `index` (< receipt_count) of a parsed ACK. */
void proto_ack_receipt(const struct proto_ack *a, uint32_t index, struct proto_receipt *out);

/*
 * Encoders write one whole frame (header with checksum + body) into buf[0..cap) and return
 * its size (> 0), or -ENOSPC if cap is too small, or -EINVAL on a field over its limit.
 */
long proto_encode_hello(uint8_t *buf, size_t cap, const struct proto_hello *h)
	__attribute__((warn_unused_result));
long proto_encode_hello_ok(uint8_t *buf, size_t cap, const struct proto_hello_ok *h)
	__attribute__((warn_unused_result));
long proto_encode_error(uint8_t *buf, size_t cap, uint16_t code, bool fatal, uint64_t request_id,
			const char *message) __attribute__((warn_unused_result));
long proto_encode_ping(uint8_t *buf, size_t cap, uint8_t type, uint64_t nonce)
	__attribute__((warn_unused_result));

/*
 * BATCH builder: events are encoded straight into the caller's buffer.
 *   proto_batch_start(&b, buf, cap, request_id);
 *   proto_batch_add(&b, &ev) ... (0, -ENOSPC when the frame would not fit, -EINVAL, -E2BIG
 *                                 past PROTO_BATCH_EVENTS_MAX)
 *   n = proto_batch_finish(&b);   frame size, header and checksum written; -EINVAL if empty
 * proto_batch_add_raw() appends an already-encoded event body (for fuzzing and tests, which
 * need to send invalid events).
 */
struct proto_batch_builder {
	uint8_t *buf;
	size_t cap;
	size_t len;
	uint32_t count;
	uint64_t request_id;
};
void proto_batch_start(struct proto_batch_builder *b, uint8_t *buf, size_t cap,
		       uint64_t request_id);
int proto_batch_add(struct proto_batch_builder *b, const struct tally_event_in *ev)
	__attribute__((warn_unused_result));
int proto_batch_add_raw(struct proto_batch_builder *b, const uint8_t *body, size_t len)
	__attribute__((warn_unused_result));
long proto_batch_finish(struct proto_batch_builder *b) __attribute__((warn_unused_result));

/* ACK builder, same pattern: receipts are 16 bytes each. */
struct proto_ack_builder {
	uint8_t *buf;
	size_t cap;
	size_t len;
	uint32_t count;
};
void proto_ack_start(struct proto_ack_builder *b, uint8_t *buf, size_t cap, uint64_t request_id);
int proto_ack_add(struct proto_ack_builder *b, const struct proto_receipt *r)
	__attribute__((warn_unused_result));
long proto_ack_finish(struct proto_ack_builder *b) __attribute__((warn_unused_result));

/* Bytes an ACK of n receipts takes. */
static inline size_t proto_ack_size(uint32_t n)
{
	return PROTO_HEADER_BYTES + PROTO_ACK_HEADER_BYTES + (size_t)n * PROTO_RECEIPT_BYTES;
}

/* "bad checksum" etc. Never NULL. */
const char *proto_error_str(int code);
/* "BAD_CHECKSUM" etc. Never NULL. */
const char *proto_error_code(int code);
/* True if an ERROR with this code should be retried by the client (after reconnecting). */
bool proto_error_retryable(int code);
/* "ACCEPTED" etc. Never NULL. */
const char *proto_status_str(int status);

#endif /* TALLY_PROTOCOL_H */
