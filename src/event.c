/*
 * event.c — decoding, validation and encoding of the canonical event body, plus the
 * idempotency fingerprint and the content digest. Format: include/tally/event.h and
 * docs/protocol.md ("Event body").
 *
 * Invariants: event_decode() reads nothing outside buf[0..len) and checks every length against
 * the bytes left before using it; on success every view in the event lies inside buf. The
 * property iterator may then walk the properties without checks failing (it still never reads
 * past props.ptr + props.len). No allocation; reentrant; any thread.
 */
#include <errno.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "tally/event.h"
#include "byteorder.h"

bool event_name_char_ok(uint8_t c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == ':' || c == '-';
}

bool event_utf8_valid(const uint8_t *s, size_t len)
{
	/* Ids, names and keys are nearly always short ASCII: one branch-free pass decides it. */
	uint8_t any = 0;
	for (size_t k = 0; k < len; k++)
		any |= s[k];
	if (!(any & 0x80))
		return true;
	size_t i = 0;
	while (i < len) {
		/* Fast path: eight ASCII bytes at a time (ids and keys are nearly always ASCII). */
		if (len - i >= 8) {
			uint64_t w;
			memcpy(&w, s + i, 8);
			if (!(w & 0x8080808080808080ull)) {
				i += 8;
				continue;
			}
		}
		uint8_t c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t need;
		uint32_t cp;
		if (c >= 0xC2 && c <= 0xDF) {
			need = 1;
			cp = c & 0x1F;
		} else if (c >= 0xE0 && c <= 0xEF) {
			need = 2;
			cp = c & 0x0F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			need = 3;
			cp = c & 0x07;
		} else {
			return false; /* continuation byte, overlong lead C0/C1, or > F4 */
		}
		if (len - i - 1 < need)
			return false;
		for (size_t k = 1; k <= need; k++) {
			uint8_t cc = s[i + k];
			if ((cc & 0xC0) != 0x80)
				return false;
			cp = (cp << 6) | (cc & 0x3F);
		}
		if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) || cp > 0x10FFFF ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += need + 1;
	}
	return true;
}

/*
 * Decodes one property at *pp (not past end). Returns TALLY_REJECT_NONE and advances *pp, or
 * the reason. `out` may be NULL when only validating.
 */
static enum tally_reject prop_decode(const uint8_t **pp, const uint8_t *end,
				     struct tally_prop *out)
{
	const uint8_t *p = *pp;
	struct tally_prop pr;

	if (end - p < 2)
		return TALLY_REJECT_TRUNCATED;
	uint8_t klen = p[0];
	pr.kind = p[1];
	p += 2;
	if (klen == 0 || klen > TALLY_PROP_KEY_BYTES_MAX)
		return TALLY_REJECT_PROP_KEY_LEN;
	if (end - p < klen)
		return TALLY_REJECT_TRUNCATED;
	pr.key.ptr = p;
	pr.key.len = klen;
	p += klen;
	pr.scale = 0;
	pr.i64 = 0;
	pr.str.ptr = NULL;
	pr.str.len = 0;
	switch (pr.kind) {
	case TALLY_VALUE_INT:
		if (end - p < 8)
			return TALLY_REJECT_TRUNCATED;
		pr.i64 = (int64_t)tally_get_u64(p);
		p += 8;
		break;
	case TALLY_VALUE_DECIMAL:
		if (end - p < 9)
			return TALLY_REJECT_TRUNCATED;
		pr.scale = p[0];
		if (pr.scale > TALLY_DECIMAL_SCALE_MAX)
			return TALLY_REJECT_DECIMAL_SCALE;
		pr.i64 = (int64_t)tally_get_u64(p + 1);
		p += 9;
		break;
	case TALLY_VALUE_STRING: {
		if (end - p < 2)
			return TALLY_REJECT_TRUNCATED;
		uint16_t slen = tally_get_u16(p);
		p += 2;
		if (slen > TALLY_PROP_STRING_BYTES_MAX)
			return TALLY_REJECT_PROP_STRING_LEN;
		if (end - p < slen)
			return TALLY_REJECT_TRUNCATED;
		pr.str.ptr = p;
		pr.str.len = slen;
		p += slen;
		break;
	}
	default:
		return TALLY_REJECT_PROP_KIND;
	}
	if (out)
		*out = pr;
	*pp = p;
	return TALLY_REJECT_NONE;
}

enum tally_reject event_decode(const uint8_t *buf, size_t len, struct tally_event *ev)
{
	if (len > TALLY_EVENT_BYTES_MAX)
		return TALLY_REJECT_EVENT_TOO_LARGE;
	if (len < TALLY_EVENT_FIXED_BYTES)
		return TALLY_REJECT_TRUNCATED;

	const uint8_t *end = buf + len;
	ev->body.ptr = buf;
	ev->body.len = (uint32_t)len;
	ev->event_time_us = (int64_t)tally_get_u64(buf);
	uint8_t klen = buf[8], clen = buf[9], nlen = buf[10], pcount = buf[11];

	if (klen == 0 || klen > TALLY_KEY_BYTES_MAX)
		return TALLY_REJECT_KEY_LEN;
	if (clen == 0 || clen > TALLY_CUSTOMER_BYTES_MAX)
		return TALLY_REJECT_CUSTOMER_LEN;
	if (nlen == 0 || nlen > TALLY_NAME_BYTES_MAX)
		return TALLY_REJECT_NAME_LEN;
	if (pcount > TALLY_PROPS_MAX)
		return TALLY_REJECT_PROP_COUNT;
	if (ev->event_time_us < 0)
		return TALLY_REJECT_TIME_NEGATIVE;

	const uint8_t *p = buf + TALLY_EVENT_FIXED_BYTES;
	if ((size_t)(end - p) < (size_t)klen + clen + nlen)
		return TALLY_REJECT_TRUNCATED;
	ev->key.ptr = p;
	ev->key.len = klen;
	p += klen;
	ev->customer.ptr = p;
	ev->customer.len = clen;
	p += clen;
	ev->name.ptr = p;
	ev->name.len = nlen;
	p += nlen;
	if (!event_utf8_valid(ev->customer.ptr, clen))
		return TALLY_REJECT_CUSTOMER_UTF8;
	for (uint32_t i = 0; i < nlen; i++)
		if (!event_name_char_ok(ev->name.ptr[i]))
			return TALLY_REJECT_NAME_CHAR;

	/* Keys seen so far, for the duplicate-key check: at most 32, compared pairwise. */
	struct tally_view keys[TALLY_PROPS_MAX];
	ev->props.ptr = p;
	ev->prop_count = pcount;
	for (uint32_t i = 0; i < pcount; i++) {
		struct tally_prop pr;
		enum tally_reject r = prop_decode(&p, end, &pr);
		if (r != TALLY_REJECT_NONE)
			return r;
		if (!event_utf8_valid(pr.key.ptr, pr.key.len))
			return TALLY_REJECT_PROP_KEY_UTF8;
		for (uint32_t k = 0; k < i; k++)
			if (keys[k].len == pr.key.len && !memcmp(keys[k].ptr, pr.key.ptr, pr.key.len))
				return TALLY_REJECT_PROP_DUP_KEY;
		keys[i] = pr.key;
	}
	if (p != end)
		return TALLY_REJECT_TRAILING_BYTES;
	ev->props.len = (uint32_t)(p - ev->props.ptr);
	return TALLY_REJECT_NONE;
}

void event_prop_iter_init(const struct tally_event *ev, struct tally_prop_iter *it)
{
	it->p = ev->props.ptr;
	it->end = ev->props.ptr + ev->props.len;
}

bool event_prop_next(struct tally_prop_iter *it, struct tally_prop *out)
{
	if (it->p >= it->end)
		return false;
	/* Validated by event_decode(); a failure here means the caller broke the contract. */
	if (prop_decode(&it->p, it->end, out) != TALLY_REJECT_NONE) {
		it->p = it->end;
		return false;
	}
	return true;
}

bool event_prop_find(const struct tally_event *ev, const char *key, size_t key_len,
		     struct tally_prop *out)
{
	struct tally_prop_iter it;
	event_prop_iter_init(ev, &it);
	while (event_prop_next(&it, out))
		if (out->key.len == key_len && !memcmp(out->key.ptr, key, key_len))
			return true;
	return false;
}

size_t event_encoded_size(const struct tally_event_in *in)
{
	size_t n = TALLY_EVENT_FIXED_BYTES + in->key.len + in->customer.len + in->name.len;
	for (uint32_t i = 0; i < in->prop_count; i++) {
		const struct tally_prop *pr = &in->props[i];
		n += 2 + pr->key.len;
		switch (pr->kind) {
		case TALLY_VALUE_INT:
			n += 8;
			break;
		case TALLY_VALUE_DECIMAL:
			n += 9;
			break;
		default:
			n += 2 + pr->str.len;
			break;
		}
	}
	return n;
}

long event_encode(const struct tally_event_in *in, uint8_t *buf, size_t cap)
{
	if (in->key.len == 0 || in->key.len > TALLY_KEY_BYTES_MAX || in->customer.len == 0 ||
	    in->customer.len > TALLY_CUSTOMER_BYTES_MAX || in->name.len == 0 ||
	    in->name.len > TALLY_NAME_BYTES_MAX || in->prop_count > TALLY_PROPS_MAX ||
	    in->event_time_us < 0)
		return -EINVAL;
	/*
	 * The byte-level rules are the decoder's (event_decode): UTF-8 customer and property keys,
	 * name characters, unique property keys. They are checked here on the input rather than
	 * by decoding the output, which cost a client as much as the encoding itself;
	 * test_event's test_encoder_agrees keeps the two from disagreeing.
	 */
	if (!event_utf8_valid(in->customer.ptr, in->customer.len))
		return -EINVAL;
	for (uint32_t i = 0; i < in->name.len; i++)
		if (!event_name_char_ok(in->name.ptr[i]))
			return -EINVAL;
	for (uint32_t i = 0; i < in->prop_count; i++) {
		const struct tally_prop *pr = &in->props[i];
		if (pr->key.len == 0 || pr->key.len > TALLY_PROP_KEY_BYTES_MAX)
			return -EINVAL;
		if (!event_utf8_valid(pr->key.ptr, pr->key.len))
			return -EINVAL;
		for (uint32_t k = 0; k < i; k++)
			if (in->props[k].key.len == pr->key.len &&
			    !memcmp(in->props[k].key.ptr, pr->key.ptr, pr->key.len))
				return -EINVAL;
		if (pr->kind == TALLY_VALUE_DECIMAL && pr->scale > TALLY_DECIMAL_SCALE_MAX)
			return -EINVAL;
		if (pr->kind == TALLY_VALUE_STRING && pr->str.len > TALLY_PROP_STRING_BYTES_MAX)
			return -EINVAL;
		if (pr->kind < TALLY_VALUE_INT || pr->kind > TALLY_VALUE_STRING)
			return -EINVAL;
	}
	size_t need = event_encoded_size(in);
	if (need > TALLY_EVENT_BYTES_MAX)
		return -EINVAL;
	if (need > cap)
		return -ENOSPC;

	uint8_t *p = buf;
	tally_put_u64(p, (uint64_t)in->event_time_us);
	p[8] = (uint8_t)in->key.len;
	p[9] = (uint8_t)in->customer.len;
	p[10] = (uint8_t)in->name.len;
	p[11] = (uint8_t)in->prop_count;
	p += TALLY_EVENT_FIXED_BYTES;
	memcpy(p, in->key.ptr, in->key.len);
	p += in->key.len;
	memcpy(p, in->customer.ptr, in->customer.len);
	p += in->customer.len;
	memcpy(p, in->name.ptr, in->name.len);
	p += in->name.len;
	for (uint32_t i = 0; i < in->prop_count; i++) {
		const struct tally_prop *pr = &in->props[i];
		p[0] = (uint8_t)pr->key.len;
		p[1] = pr->kind;
		p += 2;
		memcpy(p, pr->key.ptr, pr->key.len);
		p += pr->key.len;
		switch (pr->kind) {
		case TALLY_VALUE_INT:
			tally_put_u64(p, (uint64_t)pr->i64);
			p += 8;
			break;
		case TALLY_VALUE_DECIMAL:
			p[0] = pr->scale;
			tally_put_u64(p + 1, (uint64_t)pr->i64);
			p += 9;
			break;
		default:
			tally_put_u16(p, (uint16_t)pr->str.len);
			p += 2;
			if (pr->str.len)
				memcpy(p, pr->str.ptr, pr->str.len);
			p += pr->str.len;
			break;
		}
	}
	return (long)(p - buf);
}

struct tally_fp event_fingerprint(struct tally_view tenant, struct tally_view key)
{
	/* u8 tenant_len | tenant | key in one contiguous buffer: both are capped, so it fits. */
	uint8_t tmp[1 + TALLY_TENANT_BYTES_MAX + TALLY_KEY_BYTES_MAX];
	uint32_t tl = tenant.len > TALLY_TENANT_BYTES_MAX ? TALLY_TENANT_BYTES_MAX : tenant.len;
	uint32_t kl = key.len > TALLY_KEY_BYTES_MAX ? TALLY_KEY_BYTES_MAX : key.len;
	tmp[0] = (uint8_t)tl;
	if (tl)
		memcpy(tmp + 1, tenant.ptr, tl);
	if (kl)
		memcpy(tmp + 1 + tl, key.ptr, kl);
	XXH128_hash_t h = XXH3_128bits(tmp, 1 + tl + kl);
	struct tally_fp fp = {.lo = h.low64, .hi = h.high64};
	return fp;
}

uint32_t event_content_digest(const struct tally_event *ev)
{
	/*
	 * Everything but the key: the 8-byte time, the three lengths after key_len (key_len itself
	 * belongs to the key), and the bytes after the key. Hashed as two contiguous pieces.
	 */
	const uint8_t *b = ev->body.ptr;
	uint8_t head[11];
	memcpy(head, b, 8);
	memcpy(head + 8, b + 9, 3);
	uint64_t seed = XXH3_64bits(head, sizeof head);
	size_t after = TALLY_EVENT_FIXED_BYTES + ev->key.len;
	return (uint32_t)XXH3_64bits_withSeed(b + after, ev->body.len - after, seed);
}

static const char *const reject_str[TALLY_REJECT_MAX_] = {
	[TALLY_REJECT_NONE] = "ok",
	[TALLY_REJECT_TRUNCATED] = "a field runs past the end of the event",
	[TALLY_REJECT_TRAILING_BYTES] = "bytes left after the last property",
	[TALLY_REJECT_KEY_LEN] = "idempotency key must be 1..128 bytes",
	[TALLY_REJECT_CUSTOMER_LEN] = "customer id must be 1..128 bytes",
	[TALLY_REJECT_CUSTOMER_UTF8] = "customer id is not valid UTF-8",
	[TALLY_REJECT_NAME_LEN] = "event name must be 1..64 bytes",
	[TALLY_REJECT_NAME_CHAR] = "event name may only contain A-Z a-z 0-9 . _ : -",
	[TALLY_REJECT_PROP_COUNT] = "more than 32 properties",
	[TALLY_REJECT_PROP_KEY_LEN] = "property key must be 1..64 bytes",
	[TALLY_REJECT_PROP_KIND] = "unknown property value kind",
	[TALLY_REJECT_DECIMAL_SCALE] = "decimal scale must be 0..18",
	[TALLY_REJECT_PROP_STRING_LEN] = "string property value longer than 256 bytes",
	[TALLY_REJECT_PROP_DUP_KEY] = "two properties have the same key",
	[TALLY_REJECT_TIME_TOO_OLD] = "event time is older than the maximum event age",
	[TALLY_REJECT_TIME_TOO_NEW] = "event time is too far in the future",
	[TALLY_REJECT_TIME_NEGATIVE] = "event time is before 1970-01-01",
	[TALLY_REJECT_PROP_KEY_UTF8] = "property key is not valid UTF-8",
	[TALLY_REJECT_EVENT_TOO_LARGE] = "event larger than the maximum event size",
};

static const char *const reject_code[TALLY_REJECT_MAX_] = {
	[TALLY_REJECT_NONE] = "NONE",
	[TALLY_REJECT_TRUNCATED] = "TRUNCATED",
	[TALLY_REJECT_TRAILING_BYTES] = "TRAILING_BYTES",
	[TALLY_REJECT_KEY_LEN] = "KEY_LEN",
	[TALLY_REJECT_CUSTOMER_LEN] = "CUSTOMER_LEN",
	[TALLY_REJECT_CUSTOMER_UTF8] = "CUSTOMER_UTF8",
	[TALLY_REJECT_NAME_LEN] = "NAME_LEN",
	[TALLY_REJECT_NAME_CHAR] = "NAME_CHAR",
	[TALLY_REJECT_PROP_COUNT] = "PROP_COUNT",
	[TALLY_REJECT_PROP_KEY_LEN] = "PROP_KEY_LEN",
	[TALLY_REJECT_PROP_KIND] = "PROP_KIND",
	[TALLY_REJECT_DECIMAL_SCALE] = "DECIMAL_SCALE",
	[TALLY_REJECT_PROP_STRING_LEN] = "PROP_STRING_LEN",
	[TALLY_REJECT_PROP_DUP_KEY] = "PROP_DUP_KEY",
	[TALLY_REJECT_TIME_TOO_OLD] = "TIME_TOO_OLD",
	[TALLY_REJECT_TIME_TOO_NEW] = "TIME_TOO_NEW",
	[TALLY_REJECT_TIME_NEGATIVE] = "TIME_NEGATIVE",
	[TALLY_REJECT_PROP_KEY_UTF8] = "PROP_KEY_UTF8",
	[TALLY_REJECT_EVENT_TOO_LARGE] = "EVENT_TOO_LARGE",
};

const char *event_reject_str(enum tally_reject r)
{
	if ((unsigned)r >= TALLY_REJECT_MAX_ || !reject_str[r])
		return "unknown reject reason";
	return reject_str[r];
}

const char *event_reject_code(enum tally_reject r)
{
	if ((unsigned)r >= TALLY_REJECT_MAX_ || !reject_code[r])
		return "UNKNOWN";
	return reject_code[r];
}
