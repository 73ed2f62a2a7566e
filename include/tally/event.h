/*
 * tally/event.h — the usage event: limits, the decoded (zero-copy) view, property iteration,
 * the idempotency fingerprint and the content digest.
 *
 * An event travels and is stored in one canonical byte encoding, the *event body*, specified
 * byte by byte in docs/protocol.md ("Event body"). The WAL stores the body exactly as it was
 * received (after validation), so every consumer decodes events with the same code.
 *
 * Event body (little-endian, no padding):
 *   0   i64  event_time_us      microseconds since the Unix epoch, UTC
 *   8   u8   key_len            1..128   idempotency key, opaque bytes
 *   9   u8   customer_len       1..128   customer id, UTF-8
 *   10  u8   name_len           1..64    event name, [A-Za-z0-9._:-]
 *   11  u8   prop_count         0..32
 *   12  key, customer, name bytes, back to back
 *   ..  prop_count properties:
 *         u8 key_len (1..64) | u8 kind | key bytes | value
 *         kind 1 INT:     i64
 *         kind 2 DECIMAL: u8 scale (0..18) | i64 mantissa      value = mantissa * 10^-scale
 *         kind 3 STRING:  u16 len (0..256) | bytes
 *   The body ends exactly after the last property: trailing bytes are an error.
 *   Property keys are unique within an event.
 *
 * Invariants of a `struct tally_event` filled by event_decode(): every view points inside the
 * buffer that was decoded, every limit above holds, and props.ptr/props.len cover exactly the
 * encoded properties, which event_prop_next() can walk without further checks failing.
 * No floating point anywhere: decimals are (int64 mantissa, scale).
 */
#ifndef TALLY_EVENT_H
#define TALLY_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TALLY_KEY_BYTES_MAX        128
#define TALLY_CUSTOMER_BYTES_MAX   128
#define TALLY_NAME_BYTES_MAX       64
#define TALLY_PROPS_MAX            32
#define TALLY_PROP_KEY_BYTES_MAX   64
#define TALLY_PROP_STRING_BYTES_MAX 256
#define TALLY_DECIMAL_SCALE_MAX    18
#define TALLY_TENANT_BYTES_MAX     64
#define TALLY_EVENT_FIXED_BYTES    12
/* Largest possible body: fixed part, the three strings at their caps, 32 string properties. */
#define TALLY_EVENT_BYTES_MAX                                                                       \
	(TALLY_EVENT_FIXED_BYTES + TALLY_KEY_BYTES_MAX + TALLY_CUSTOMER_BYTES_MAX +                 \
	 TALLY_NAME_BYTES_MAX + TALLY_PROPS_MAX * (2 + TALLY_PROP_KEY_BYTES_MAX + 2 +              \
						   TALLY_PROP_STRING_BYTES_MAX))

enum tally_value_kind {
	TALLY_VALUE_INT = 1,
	TALLY_VALUE_DECIMAL = 2,
	TALLY_VALUE_STRING = 3,
};

/*
 * Why an event is rejected. The numeric values are part of the wire protocol (the REJECTED
 * receipt's reason byte) and never change meaning; see docs/protocol.md "Reject reasons".
 */
enum tally_reject {
	TALLY_REJECT_NONE = 0,
	TALLY_REJECT_TRUNCATED = 1,        /* a field runs past the end of the event body */
	TALLY_REJECT_TRAILING_BYTES = 2,   /* bytes left after the last property */
	TALLY_REJECT_KEY_LEN = 3,          /* idempotency key length 0 or > 128 */
	TALLY_REJECT_CUSTOMER_LEN = 4,     /* customer id length 0 or > 128 */
	TALLY_REJECT_CUSTOMER_UTF8 = 5,    /* customer id not valid UTF-8 */
	TALLY_REJECT_NAME_LEN = 6,         /* event name length 0 or > 64 */
	TALLY_REJECT_NAME_CHAR = 7,        /* event name byte outside [A-Za-z0-9._:-] */
	TALLY_REJECT_PROP_COUNT = 8,       /* more than 32 properties */
	TALLY_REJECT_PROP_KEY_LEN = 9,     /* property key length 0 or > 64 */
	TALLY_REJECT_PROP_KIND = 10,       /* unknown property value kind */
	TALLY_REJECT_DECIMAL_SCALE = 11,   /* decimal scale > 18 */
	TALLY_REJECT_PROP_STRING_LEN = 12, /* string value longer than 256 bytes */
	TALLY_REJECT_PROP_DUP_KEY = 13,    /* two properties with the same key */
	TALLY_REJECT_TIME_TOO_OLD = 14,    /* event time older than the max event age (broker) */
	TALLY_REJECT_TIME_TOO_NEW = 15,    /* event time beyond --max-future (broker) */
	TALLY_REJECT_TIME_NEGATIVE = 16,   /* event time before the Unix epoch */
	TALLY_REJECT_PROP_KEY_UTF8 = 17,   /* property key not valid UTF-8 */
	TALLY_REJECT_EVENT_TOO_LARGE = 18, /* event body larger than TALLY_EVENT_BYTES_MAX */
	TALLY_REJECT_MAX_
};

/* A view into someone else's buffer: never owns, never NUL-terminated. */
struct tally_view {
	const uint8_t *ptr;
	uint32_t len;
};

/* One property, as produced by event_prop_next() or given to the encoder. */
struct tally_prop {
	struct tally_view key;
	uint8_t kind;  /* enum tally_value_kind */
	uint8_t scale; /* DECIMAL only: 0..18 */
	int64_t i64;   /* INT value, or DECIMAL mantissa */
	struct tally_view str; /* STRING only */
};

/* A decoded event: views into the decoded buffer (see the invariants above). */
struct tally_event {
	struct tally_view body; /* the whole encoded body, as stored in the WAL */
	struct tally_view key;
	struct tally_view customer;
	struct tally_view name;
	int64_t event_time_us;
	uint32_t prop_count;
	struct tally_view props; /* the encoded properties */
};

/* An event to encode: the caller owns every buffer it points to. */
struct tally_event_in {
	struct tally_view key;
	struct tally_view customer;
	struct tally_view name;
	int64_t event_time_us;
	uint32_t prop_count;
	const struct tally_prop *props;
};

struct tally_prop_iter {
	const uint8_t *p;
	const uint8_t *end;
};

/* 128-bit idempotency fingerprint: XXH3-128 of (tenant, key); see docs/dedup.md. */
struct tally_fp {
	uint64_t lo;
	uint64_t hi;
};

/*
 * Decodes and validates one event body of `len` bytes at `buf` into `ev` (views into buf).
 * Returns TALLY_REJECT_NONE (0) or the first reason that applies; `ev` is then unspecified.
 */
enum tally_reject event_decode(const uint8_t *buf, size_t len, struct tally_event *ev)
	__attribute__((warn_unused_result));

/* Bytes event_encode() will write for `in` (no validation). */
size_t event_encoded_size(const struct tally_event_in *in);

/*
 * Encodes `in` as an event body into buf[0..cap). Returns the bytes written (> 0), or
 * -ENOSPC if cap is too small, or -EINVAL if `in` breaks a limit (the encoder validates so
 * that clients fail early; the server validates again).
 */
long event_encode(const struct tally_event_in *in, uint8_t *buf, size_t cap)
	__attribute__((warn_unused_result));

/* Starts walking the properties of a decoded event. */
void event_prop_iter_init(const struct tally_event *ev, struct tally_prop_iter *it);

/* Next property into `out`: true, or false at the end. Only valid on a decoded event. */
bool event_prop_next(struct tally_prop_iter *it, struct tally_prop *out);

/* Finds a property by key; true if found. */
bool event_prop_find(const struct tally_event *ev, const char *key, size_t key_len,
		     struct tally_prop *out);

/* XXH3-128 over u8 tenant_len | tenant | key. Tenant is 0..64 bytes. */
struct tally_fp event_fingerprint(struct tally_view tenant, struct tally_view key);

/*
 * 32-bit digest of everything in the event except its idempotency key: event time, customer,
 * name and properties (in the order sent). Same key + same digest = DUPLICATE; same key and a
 * different digest = CONFLICT.
 */
uint32_t event_content_digest(const struct tally_event *ev);

/* Human-readable name of a reject reason ("customer id not valid UTF-8"). Never NULL. */
const char *event_reject_str(enum tally_reject r);

/* Short stable token for a reject reason ("CUSTOMER_UTF8"), for logs and JSON. Never NULL. */
const char *event_reject_code(enum tally_reject r);

/* True if buf[0..len) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool event_utf8_valid(const uint8_t *buf, size_t len);

/* True if c is allowed in an event name: [A-Za-z0-9._:-]. */
bool event_name_char_ok(uint8_t c);

#endif /* TALLY_EVENT_H */
