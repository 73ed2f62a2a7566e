/*
 * bench/peers/peer_redis.c — peer-redis: tally-bench's events into a Redis Stream, deduplicated
 * by a SET NX key per idempotency key, atomically, in one Lua script per batch.
 *
 * Per batch: EVALSHA <sha> <n+1> <stream> <key 1..n> <body 1..n>. For each event the script
 * does SET <key> 1 NX EX <dedup window>; only when that set the key it does XADD <stream> *
 * k <key> b <body>. A script runs atomically, so a key can never be in the stream twice, and
 * the whole batch is one round trip. The reply is the number of events newly added.
 * The durability is the server's (appendonly yes, appendfsync always|everysec, chosen by
 * compare.sh): with `always` Redis fsyncs the AOF before it sends the replies of an event-loop
 * iteration. Stored count: XLEN <stream>.
 *
 * --target HOST:PORT (default 127.0.0.1:6379). Each connection is one blocking hiredis context
 * used by one thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "peer_common.h"

#define REDIS_STREAM      "tally:events"
#define REDIS_DEDUP_TTL_S "3024000" /* 35 days: tally's default dedup window */

static const char redis_script[] =
    "local added = 0\n"
    "for i = 2, #KEYS do\n"
    "  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', " REDIS_DEDUP_TTL_S ") then\n"
    "    redis.call('XADD', KEYS[1], '*', 'k', KEYS[i], 'b', ARGV[i - 1])\n"
    "    added = added + 1\n"
    "  end\n"
    "end\n"
    "return added\n";

struct redis_conn {
	redisContext *rc;
	char sha[48];
	const char **argv;
	size_t *argvlen;
};

static int split_target(const char *t, char *host, size_t host_len, int *port)
{
	const char *colon = strrchr(t, ':');
	if (!colon || (size_t)(colon - t) >= host_len)
		return -1;
	memcpy(host, t, (size_t)(colon - t));
	host[colon - t] = '\0';
	char *end;
	long p = strtol(colon + 1, &end, 10);
	if (*end || p <= 0 || p > 65535)
		return -1;
	*port = (int)p;
	return 0;
}

static redisContext *redis_connect(const struct peer_opts *o, char *err, size_t err_len)
{
	char host[256];
	int port;
	if (split_target(o->target, host, sizeof(host), &port)) {
		snprintf(err, err_len, "bad --target '%s' (HOST:PORT)", o->target);
		return NULL;
	}
	redisContext *rc = redisConnect(host, port);
	if (!rc || rc->err) {
		snprintf(err, err_len, "connect %s: %s", o->target, rc ? rc->errstr : "no memory");
		if (rc)
			redisFree(rc);
		return NULL;
	}
	return rc;
}

/* Loads the script; its SHA1 into sha (>= 41 bytes). Returns 0 or -1. */
static int redis_load(redisContext *rc, char *sha, char *err, size_t err_len)
{
	redisReply *r = redisCommand(rc, "SCRIPT LOAD %s", redis_script);
	int rv = -1;
	if (!r)
		snprintf(err, err_len, "SCRIPT LOAD: %s", rc->errstr);
	else if (r->type != REDIS_REPLY_STRING || r->len >= 48)
		snprintf(err, err_len, "SCRIPT LOAD: unexpected reply: %s",
		         r->type == REDIS_REPLY_ERROR ? r->str : "?");
	else {
		memcpy(sha, r->str, (size_t)r->len + 1);
		rv = 0;
	}
	if (r)
		freeReplyObject(r);
	return rv;
}

static int redis_setup(const struct peer_opts *o, char *err, size_t err_len)
{
	redisContext *rc = redis_connect(o, err, err_len);
	if (!rc)
		return -1;
	char sha[48];
	int rv = redis_load(rc, sha, err, err_len);
	redisFree(rc);
	return rv;
}

static void *redis_open(const struct peer_opts *o, uint32_t conn_id, char *err, size_t err_len)
{
	struct redis_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, err_len, "no memory");
		return NULL;
	}
	c->argv = calloc(4 + 2 * (size_t)o->batch, sizeof(*c->argv));
	c->argvlen = calloc(4 + 2 * (size_t)o->batch, sizeof(*c->argvlen));
	if (!c->argv || !c->argvlen) {
		snprintf(err, err_len, "no memory");
		goto out_free;
	}
	c->rc = redis_connect(o, err, err_len);
	if (!c->rc)
		goto out_free;
	if (redis_load(c->rc, c->sha, err, err_len))
		goto out_close;
	return c;
out_close:
	redisFree(c->rc);
out_free:
	free(c->argv);
	free(c->argvlen);
	free(c);
	return NULL;
}

static int redis_send(void *conn, const struct peer_ev *evs, uint32_t n, uint32_t *accepted_out,
                      char *err, size_t err_len)
{
	struct redis_conn *c = conn;
	char numkeys[16];
	int nk = snprintf(numkeys, sizeof(numkeys), "%u", n + 1);
	size_t a = 0;
	c->argv[a] = "EVALSHA", c->argvlen[a++] = 7;
	c->argv[a] = c->sha, c->argvlen[a++] = strlen(c->sha);
	c->argv[a] = numkeys, c->argvlen[a++] = (size_t)nk;
	c->argv[a] = REDIS_STREAM, c->argvlen[a++] = sizeof(REDIS_STREAM) - 1;
	for (uint32_t i = 0; i < n; i++)
		c->argv[a] = evs[i].key, c->argvlen[a++] = evs[i].key_len;
	for (uint32_t i = 0; i < n; i++)
		c->argv[a] = (const char *)evs[i].body, c->argvlen[a++] = evs[i].body_len;
	redisReply *r = redisCommandArgv(c->rc, (int)a, c->argv, c->argvlen);
	if (!r) {
		snprintf(err, err_len, "EVALSHA: %s", c->rc->errstr);
		return -1;
	}
	int rv = 0;
	if (r->type != REDIS_REPLY_INTEGER || r->integer < 0 || (uint64_t)r->integer > n) {
		snprintf(err, err_len, "EVALSHA: unexpected reply: %s",
		         r->type == REDIS_REPLY_ERROR ? r->str : "?");
		rv = -1;
	} else {
		*accepted_out = (uint32_t)r->integer;
	}
	freeReplyObject(r);
	return rv;
}

static void redis_close(void *conn)
{
	struct redis_conn *c = conn;
	redisFree(c->rc);
	free(c->argv);
	free(c->argvlen);
	free(c);
}

static int redis_count(const struct peer_opts *o, uint64_t *count_out, char *err, size_t err_len)
{
	redisContext *rc = redis_connect(o, err, err_len);
	if (!rc)
		return -1;
	redisReply *r = redisCommand(rc, "XLEN %s", REDIS_STREAM);
	int rv = -1;
	if (!r)
		snprintf(err, err_len, "XLEN: %s", rc->errstr);
	else if (r->type != REDIS_REPLY_INTEGER || r->integer < 0)
		snprintf(err, err_len, "XLEN: unexpected reply");
	else {
		*count_out = (uint64_t)r->integer;
		rv = 0;
	}
	if (r)
		freeReplyObject(r);
	redisFree(rc);
	return rv;
}

static const struct peer_ops redis_ops = {
    .name = "redis",
    .target_help = "Redis address HOST:PORT (default 127.0.0.1:6379)",
    .target_def = "127.0.0.1:6379",
    .setup = redis_setup,
    .conn_open = redis_open,
    .send_batch = redis_send,
    .conn_close = redis_close,
    .stored_count = redis_count,
};

int main(int argc, char **argv)
{
	return peer_main(&redis_ops, argc, argv);
}
