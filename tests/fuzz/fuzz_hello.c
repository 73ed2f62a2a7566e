/*
 * tests/fuzz/fuzz_hello.c — libFuzzer target for tallyd's HELLO path: what a connection may
 * send before it is authenticated, and the --auth-file loader that decides who it is.
 *
 * The first input byte picks the mode:
 *   even: the rest is a stream of frames as a new connection would send them. Each frame is
 *         parsed with the broker's pre-HELLO limit (PROTO_HELLO_BYTES_MAX) after its checksum
 *         is fixed up (libFuzzer cannot compute XXH3). Every HELLO is answered by
 *         broker_hello_answer() — the function src/net.c calls — twice: against a fixed key
 *         table (three tenants) and single-tenant. Checks: a HELLO_OK only for version 1 and
 *         for exactly the keys in the table, naming that key's tenant (never one from the
 *         frame); the answer parses back as HELLO_OK with the same tenant and a frame limit
 *         within [PROTO_FRAME_BYTES_MIN, the server's]; a wrong key is PROTO_E_AUTH.
 *   odd:  the rest is an auth file, loaded with broker_auth_load() from a 0600 memfd. If it
 *         loads, each "<tenant> <key>" line's key must look up to a valid tenant.
 * Nothing may crash, leak or read out of bounds.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "broker.h"
#include "fuzz_fixups.h"

#define FUZZ_ASSERT(c)                                                                             \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "fuzz_hello: %s:%d: %s\n", __FILE__, __LINE__, #c);        \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const keys[][2] = {
	{"acme", "acme-key-0123456789abcdef"},
	{"globex", "globex-key-fedcba9876543210"},
	{"a", "0000000000000000"}, /* the shortest key allowed */
};
#define NKEYS (sizeof keys / sizeof keys[0])

static struct broker_auth *table;
static struct broker_config cfg = {
	.frame_bytes_max = PROTO_FRAME_BYTES_DEFAULT,
	.batch_events_max = PROTO_BATCH_EVENTS_DEFAULT,
	.inflight_max = 64,
	.max_future_us = 300000000,
	.max_age_us = 35LL * 86400 * 1000000,
};
static struct broker_tenant single = {.len = 7, .name = "default"};

/* Writes `len` bytes to a fresh 0600 memfd and loads it as an auth file. */
static int load_auth(const void *text, size_t len, struct broker_auth **out, char *err,
		     size_t errlen)
{
	int fd = memfd_create("fuzz_auth", MFD_CLOEXEC);
	FUZZ_ASSERT(fd >= 0);
	FUZZ_ASSERT(fchmod(fd, 0600) == 0);
	FUZZ_ASSERT(len == 0 || write(fd, text, len) == (ssize_t)len);
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	int rc = broker_auth_load(path, out, err, errlen);
	close(fd);
	return rc;
}

static void init(void)
{
	char text[512] = "# fuzz key table\n";
	for (size_t i = 0; i < NKEYS; i++) {
		strcat(text, keys[i][0]);
		strcat(text, "\t");
		strcat(text, keys[i][1]);
		strcat(text, "\n");
	}
	char err[256];
	if (load_auth(text, strlen(text), &table, err, sizeof err) != 0) {
		fprintf(stderr, "fuzz_hello: key table: %s\n", err);
		abort();
	}
	FUZZ_ASSERT(broker_auth_count(table) == NKEYS);
}

/* The tenant the table gives this key, or NULL (reference: plain comparison). */
static const char *expected_tenant(struct tally_view key)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (key.len == strlen(keys[i][1]) && memcmp(key.ptr, keys[i][1], key.len) == 0)
			return keys[i][0];
	return NULL;
}

static void answer(const struct proto_hello *h, const struct broker_auth *auth)
{
	const struct broker_hello_env env = {
		.cfg = &cfg, .auth = auth, .default_tenant = &single, .nshards = 8, .now_us = 42,
	};
	uint8_t buf[BROKER_HELLO_OK_BYTES_MAX];
	const struct broker_tenant *t = NULL;
	uint32_t fmax = 0;
	uint16_t err = 0;
	const char *msg = NULL;
	long n = broker_hello_answer(&env, h, buf, sizeof buf, &t, &fmax, &err, &msg);
	FUZZ_ASSERT(n >= 0); /* the buffer always fits */
	const char *want = auth ? expected_tenant(h->api_key) : single.name;
	if (h->version != PROTO_VERSION) {
		FUZZ_ASSERT(n == 0 && err == PROTO_E_UNSUPPORTED && msg && !t);
		return;
	}
	if (!want) {
		FUZZ_ASSERT(n == 0 && err == PROTO_E_AUTH && msg && !t);
		return;
	}
	FUZZ_ASSERT(n > 0 && err == 0 && t);
	FUZZ_ASSERT(t->len == strlen(want) && memcmp(t->name, want, t->len) == 0);
	FUZZ_ASSERT(fmax >= PROTO_FRAME_BYTES_MIN && fmax <= cfg.frame_bytes_max);
	if (h->frame_bytes_max >= PROTO_FRAME_BYTES_MIN && h->frame_bytes_max <= cfg.frame_bytes_max)
		FUZZ_ASSERT(fmax == h->frame_bytes_max);

	struct proto_frame f;
	long m = proto_frame_parse(buf, (size_t)n, PROTO_FRAME_BYTES_DEFAULT, 1, &f, NULL);
	FUZZ_ASSERT(m == n && f.type == PROTO_HELLO_OK);
	FUZZ_ASSERT(f.u.hello_ok.tenant.len == t->len &&
		    memcmp(f.u.hello_ok.tenant.ptr, t->name, t->len) == 0);
	FUZZ_ASSERT(f.u.hello_ok.frame_bytes_max == fmax && f.u.hello_ok.shard_count == 8);
}

static void frames(const uint8_t *d, size_t size)
{
	size_t off = 0;
	while (off < size) {
		struct proto_frame f;
		long n = proto_frame_parse(d + off, size - off, PROTO_HELLO_BYTES_MAX,
					   PROTO_BATCH_EVENTS_DEFAULT, &f, NULL);
		if (n <= 0)
			return; /* need more (the deadline closes it) or an error (closed) */
		FUZZ_ASSERT((size_t)n <= size - off && (size_t)n <= PROTO_HELLO_BYTES_MAX);
		if (f.type != PROTO_HELLO)
			return; /* the broker answers UNEXPECTED and closes */
		FUZZ_ASSERT(f.u.hello.api_key.len <= PROTO_API_KEY_BYTES_MAX);
		answer(&f.u.hello, table);
		answer(&f.u.hello, NULL);
		off += (size_t)n;
	}
}

static void auth_file(const uint8_t *d, size_t size)
{
	struct broker_auth *a = NULL;
	char err[256];
	err[0] = 0;
	int rc = load_auth(d, size, &a, err, sizeof err);
	if (rc != 0) {
		FUZZ_ASSERT(rc < 0 && err[0] && !a);
		return;
	}
	FUZZ_ASSERT(a && broker_auth_count(a) >= 1);
	/* Every key line must resolve to some valid tenant (the last line with that key). */
	char *text = strndup((const char *)d, size);
	FUZZ_ASSERT(text);
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *s2 = NULL;
		char *tenant = strtok_r(line, " \t\r", &s2);
		char *key = tenant ? strtok_r(NULL, " \t\r", &s2) : NULL;
		if (!key || tenant[0] == '#' || memchr(d, 0, size))
			continue;
		const struct broker_tenant *t =
		    broker_auth_lookup(a, (const uint8_t *)key, strlen(key));
		FUZZ_ASSERT(t && t->len >= 1 && t->len <= TALLY_TENANT_BYTES_MAX);
		for (unsigned i = 0; i < t->len; i++)
			FUZZ_ASSERT(event_name_char_ok((uint8_t)t->name[i]));
	}
	free(text);
	broker_auth_free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!table)
		init();
	if (size == 0 || size > (1u << 16))
		return 0;
	if (data[0] & 1) {
		auth_file(data + 1, size - 1);
		return 0;
	}
	uint8_t *copy = malloc(size);
	FUZZ_ASSERT(copy);
	memcpy(copy, data + 1, size - 1);
	frames(data + 1, size - 1); /* as given: checksum failures */
	fuzz_fix_frame_checksums(copy, size - 1);
	frames(copy, size - 1);
	free(copy);
	return 0;
}
