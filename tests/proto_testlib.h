/*
 * tests/proto_testlib.h — small helpers shared by the protocol and event tests, the fuzz seed
 * writer and the hex-dump tool: a byte writer that builds event bodies and frames by hand
 * (so that tests can make invalid ones the encoders refuse to produce), and check macros.
 *
 * Everything is static inline: each including program gets its own copy; nothing here is part
 * of the library. Little-endian throughout, as on the wire (docs/protocol.md).
 */
#ifndef TALLY_PROTO_TESTLIB_H
#define TALLY_PROTO_TESTLIB_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "tally/event.h"
#include "tally/protocol.h"

/* ---- checks: count failures, keep going, exit non-zero at the end ---- */

static int proto_t_failures;
static int proto_t_checks;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		proto_t_checks++;                                                                  \
		if (!(cond)) {                                                                     \
			proto_t_failures++;                                                        \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
		}                                                                                  \
	} while (0)

/* Equality of two integers, printing both on failure. */
#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                                \
		proto_t_checks++;                                                                  \
		if (a_ != b_) {                                                                    \
			proto_t_failures++;                                                        \
			fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld != %lld)\n",       \
				__FILE__, __LINE__, #a, #b, a_, b_);                                \
		}                                                                                  \
	} while (0)

/* Same, with a label for table-driven cases. */
#define CHECK_EQ_CASE(label, a, b)                                                                 \
	do {                                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                                \
		proto_t_checks++;                                                                  \
		if (a_ != b_) {                                                                    \
			proto_t_failures++;                                                        \
			fprintf(stderr, "%s:%d: [%s] %s == %s failed (got %lld, want %lld)\n",     \
				__FILE__, __LINE__, (label), #a, #b, a_, b_);                       \
		}                                                                                  \
	} while (0)

static inline int proto_t_finish(const char *name)
{
	if (proto_t_failures) {
		fprintf(stderr, "%s: %d of %d checks FAILED\n", name, proto_t_failures,
			proto_t_checks);
		return 1;
	}
	printf("%s: all %d checks passed\n", name, proto_t_checks);
	return 0;
}

static inline bool proto_t_view_eq(struct tally_view v, const void *p, size_t n)
{
	return v.len == n && (n == 0 || memcmp(v.ptr, p, n) == 0);
}

static inline struct tally_view proto_t_sv(const char *s)
{
	struct tally_view v = {(const uint8_t *)s, (uint32_t)strlen(s)};
	return v;
}

/* ---- byte writer ---- */

struct proto_wb {
	uint8_t b[1 << 17];
	size_t n;
};

static inline void wb_u8(struct proto_wb *w, uint8_t v)
{
	w->b[w->n++] = v;
}
static inline void wb_u16(struct proto_wb *w, uint16_t v)
{
	for (int i = 0; i < 2; i++)
		wb_u8(w, (uint8_t)(v >> (8 * i)));
}
static inline void wb_u32(struct proto_wb *w, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		wb_u8(w, (uint8_t)(v >> (8 * i)));
}
static inline void wb_u64(struct proto_wb *w, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		wb_u8(w, (uint8_t)(v >> (8 * i)));
}
static inline void wb_bytes(struct proto_wb *w, const void *p, size_t n)
{
	if (n)
		memcpy(w->b + w->n, p, n);
	w->n += n;
}
static inline void wb_fill(struct proto_wb *w, uint8_t c, size_t n)
{
	memset(w->b + w->n, c, n);
	w->n += n;
}

/* Event body header + the three strings, exactly as given (no validation). */
static inline void wb_event_head(struct proto_wb *w, int64_t t, const void *key, size_t key_len,
				 const void *cust, size_t cust_len, const void *name,
				 size_t name_len, unsigned prop_count)
{
	wb_u64(w, (uint64_t)t);
	wb_u8(w, (uint8_t)key_len);
	wb_u8(w, (uint8_t)cust_len);
	wb_u8(w, (uint8_t)name_len);
	wb_u8(w, (uint8_t)prop_count);
	wb_bytes(w, key, key_len);
	wb_bytes(w, cust, cust_len);
	wb_bytes(w, name, name_len);
}
static inline void wb_prop_int(struct proto_wb *w, const char *k, int64_t v)
{
	wb_u8(w, (uint8_t)strlen(k));
	wb_u8(w, TALLY_VALUE_INT);
	wb_bytes(w, k, strlen(k));
	wb_u64(w, (uint64_t)v);
}
static inline void wb_prop_dec(struct proto_wb *w, const char *k, uint8_t scale, int64_t m)
{
	wb_u8(w, (uint8_t)strlen(k));
	wb_u8(w, TALLY_VALUE_DECIMAL);
	wb_bytes(w, k, strlen(k));
	wb_u8(w, scale);
	wb_u64(w, (uint64_t)m);
}
static inline void wb_prop_str(struct proto_wb *w, const char *k, const void *s, size_t n)
{
	wb_u8(w, (uint8_t)strlen(k));
	wb_u8(w, TALLY_VALUE_STRING);
	wb_bytes(w, k, strlen(k));
	wb_u16(w, (uint16_t)n);
	wb_bytes(w, s, n);
}

/* The frame checksum: low 32 bits of XXH3-64 (seed 0) over bytes [8, 16 + body_len). */
static inline uint32_t proto_t_checksum(const uint8_t *frame, size_t frame_len)
{
	return (uint32_t)XXH3_64bits(frame + 8, frame_len - 8);
}

/*
 * Writes a whole frame with an arbitrary header into out (cap >= 16 + body_len) and returns
 * its size. The checksum is computed over what was written, so each malformed case breaks
 * exactly one rule; body_len_field lets a case lie about the length (checksum is then
 * computed over the bytes actually present, which is what a liar would do).
 */
static inline size_t proto_t_frame(uint8_t *out, uint32_t magic, uint8_t version, uint8_t type,
				   uint16_t flags, uint32_t body_len_field, const void *body,
				   size_t body_len)
{
	struct proto_wb *w = malloc(sizeof(*w));
	w->n = 0;
	wb_u32(w, magic);
	wb_u32(w, 0);
	wb_u8(w, version);
	wb_u8(w, type);
	wb_u16(w, flags);
	wb_u32(w, body_len_field);
	wb_bytes(w, body, body_len);
	uint32_t c = proto_t_checksum(w->b, w->n);
	for (int i = 0; i < 4; i++)
		w->b[4 + i] = (uint8_t)(c >> (8 * i));
	size_t n = w->n;
	memcpy(out, w->b, n);
	free(w);
	return n;
}

/* A well-formed frame of `type` around `body`. */
static inline size_t proto_t_frame_ok(uint8_t *out, uint8_t type, const void *body,
				      size_t body_len)
{
	return proto_t_frame(out, PROTO_MAGIC, PROTO_VERSION, type, 0, (uint32_t)body_len, body,
			     body_len);
}

#endif /* TALLY_PROTO_TESTLIB_H */
