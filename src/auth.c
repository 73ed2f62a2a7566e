/*
 * auth.c — API keys and tenants for tallyd --auth-file.
 *
 * File format (docs/architecture.md "Authentication"): UTF-8 text, one key per line:
 *     <tenant> <api-key>
 * separated by spaces or tabs; '#' starts a comment line; blank lines are ignored. Tenant:
 * 1..64 bytes of [A-Za-z0-9._:-]; key: 16..256 bytes with no white space. The file must not be
 * readable or writable by "other" (mode & 007 == 0): a world-readable key file is refused.
 *
 * Lookup compares the presented key with EVERY stored key, each over the full stored length,
 * without early exit, so its time does not reveal which key (or prefix) matched.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.h"

#define AUTH_KEY_BYTES_MIN 16
#define AUTH_KEYS_MAX 65536

struct auth_entry {
	struct broker_tenant tenant;
	uint16_t key_len;
	uint8_t key[PROTO_API_KEY_BYTES_MAX];
};

struct broker_auth {
	size_t n;
	struct auth_entry *e;
};

static bool tenant_ok(const char *s, size_t n)
{
	if (n == 0 || n > TALLY_TENANT_BYTES_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!event_name_char_ok((uint8_t)s[i]))
			return false;
	return true;
}

int broker_auth_load(const char *path, struct broker_auth **out, char *err, size_t errlen)
{
	struct stat st;
	int rc = 0;
	FILE *f = fopen(path, "re");
	if (!f) {
		snprintf(err, errlen, "cannot open auth file %s: %s", path, strerror(errno));
		return -errno;
	}
	if (fstat(fileno(f), &st) < 0 || (st.st_mode & 007)) {
		snprintf(err, errlen, "auth file %s is accessible by other users (mode %03o); "
			 "run: chmod 600 %s", path, (unsigned)(st.st_mode & 0777), path);
		fclose(f);
		return -EPERM;
	}
	struct broker_auth *a = calloc(1, sizeof *a);
	size_t cap = 16;
	if (a)
		a->e = calloc(cap, sizeof *a->e);
	if (!a || !a->e) {
		rc = -ENOMEM;
		goto out_fail;
	}
	char line[1024];
	unsigned lineno = 0;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		size_t len = strlen(line);
		if (len == sizeof line - 1 && line[len - 1] != '\n') {
			snprintf(err, errlen, "%s:%u: line too long", path, lineno);
			rc = -EINVAL;
			goto out_fail;
		}
		char *save = NULL;
		char *tenant = strtok_r(line, " \t\r\n", &save);
		if (!tenant || tenant[0] == '#')
			continue;
		char *key = strtok_r(NULL, " \t\r\n", &save);
		char *extra = strtok_r(NULL, " \t\r\n", &save);
		if (!key || extra) {
			snprintf(err, errlen, "%s:%u: expected '<tenant> <api-key>'", path, lineno);
			rc = -EINVAL;
			goto out_fail;
		}
		size_t tl = strlen(tenant), kl = strlen(key);
		if (!tenant_ok(tenant, tl)) {
			snprintf(err, errlen, "%s:%u: tenant must be 1..64 bytes of [A-Za-z0-9._:-]",
				 path, lineno);
			rc = -EINVAL;
			goto out_fail;
		}
		if (kl < AUTH_KEY_BYTES_MIN || kl > PROTO_API_KEY_BYTES_MAX) {
			snprintf(err, errlen, "%s:%u: API key must be %d..%u bytes", path, lineno,
				 AUTH_KEY_BYTES_MIN, PROTO_API_KEY_BYTES_MAX);
			rc = -EINVAL;
			goto out_fail;
		}
		if (a->n == AUTH_KEYS_MAX) {
			snprintf(err, errlen, "%s: more than %d keys", path, AUTH_KEYS_MAX);
			rc = -E2BIG;
			goto out_fail;
		}
		if (a->n == cap) {
			struct auth_entry *ne = realloc(a->e, cap * 2 * sizeof *ne);
			if (!ne) {
				rc = -ENOMEM;
				goto out_fail;
			}
			a->e = ne;
			cap *= 2;
		}
		struct auth_entry *e = &a->e[a->n++];
		memset(e, 0, sizeof *e);
		e->tenant.len = (uint8_t)tl;
		memcpy(e->tenant.name, tenant, tl);
		e->key_len = (uint16_t)kl;
		memcpy(e->key, key, kl);
	}
	if (a->n == 0) {
		snprintf(err, errlen, "%s: no API keys", path);
		rc = -EINVAL;
		goto out_fail;
	}
	fclose(f);
	*out = a;
	return 0;
out_fail:
	if (rc == -ENOMEM)
		snprintf(err, errlen, "out of memory reading %s", path);
	broker_auth_free(a);
	fclose(f);
	return rc;
}

const struct broker_tenant *broker_auth_lookup(const struct broker_auth *a, const uint8_t *key,
					       size_t len)
{
	const struct broker_tenant *found = NULL;
	for (size_t i = 0; i < a->n; i++) {
		const struct auth_entry *e = &a->e[i];
		/* diff is 0 only for an exact match; every byte of every key is examined. */
		unsigned diff = (unsigned)(e->key_len ^ len);
		for (size_t k = 0; k < e->key_len; k++)
			diff |= (unsigned)(e->key[k] ^ (k < len ? key[k] : 0));
		volatile unsigned match = (diff == 0);
		if (match)
			found = &e->tenant;
	}
	return found;
}

size_t broker_auth_count(const struct broker_auth *a)
{
	return a->n;
}

void broker_auth_free(struct broker_auth *a)
{
	if (!a)
		return;
	free(a->e);
	free(a);
}

long broker_hello_answer(const struct broker_hello_env *env, const struct proto_hello *h,
			 uint8_t *buf, size_t cap, const struct broker_tenant **tenant,
			 uint32_t *frame_bytes_max, uint16_t *error, const char **message)
{
	const struct broker_config *cfg = env->cfg;
	*tenant = NULL;
	*error = 0;
	*message = NULL;
	if (h->version != PROTO_VERSION) {
		*error = PROTO_E_UNSUPPORTED;
		*message = "this server speaks version 1";
		return 0;
	}
	const struct broker_tenant *t = env->default_tenant;
	if (env->auth) {
		t = broker_auth_lookup(env->auth, h->api_key.ptr, h->api_key.len);
		if (!t) {
			*error = PROTO_E_AUTH;
			*message = "authentication failed";
			return 0;
		}
	}
	uint32_t fmax = cfg->frame_bytes_max;
	if (h->frame_bytes_max && h->frame_bytes_max < fmax)
		fmax = h->frame_bytes_max < PROTO_FRAME_BYTES_MIN ? PROTO_FRAME_BYTES_MIN
								  : h->frame_bytes_max;
	struct proto_hello_ok ok = {
		.version = PROTO_VERSION,
		.shard_count = env->nshards,
		.frame_bytes_max = fmax,
		.batch_events_max = cfg->batch_events_max,
		.inflight_max = cfg->inflight_max,
		.server_time_us = env->now_us,
		.max_future_us = cfg->max_future_us,
		.max_age_us = cfg->max_age_us,
		.tenant = {(const uint8_t *)t->name, t->len},
	};
	long n = proto_encode_hello_ok(buf, cap, &ok);
	if (n < 0)
		return n;
	*tenant = t;
	*frame_bytes_max = fmax;
	return n;
}
