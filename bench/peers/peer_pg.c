/*
 * bench/peers/peer_pg.c — peer-pg: tally-bench's events into a PostgreSQL table with the
 * idempotency key as primary key, one multi-row INSERT ... ON CONFLICT (key) DO NOTHING per
 * batch (one statement = one transaction = one commit).
 *
 * Table: tally_events(key text PRIMARY KEY, body bytea NOT NULL). The statement is prepared
 * once per connection for the full batch size (and once for a shorter last batch); keys are
 * sent as text, bodies as binary parameters. The command tag's row count is the number of
 * events newly stored. Each session runs with synchronous_commit = on, so the INSERT returns
 * only after its commit record is flushed to the WAL (fdatasync, shared by concurrent commits:
 * group commit). Stored count: SELECT count(*).
 *
 * --target: a libpq conninfo (default "host=127.0.0.1 port=5432 dbname=postgres user=postgres").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "peer_common.h"

struct pg_conn {
	PGconn *pg;
	uint32_t prepared_n[2]; /* statement sizes prepared as "ins0", "ins1" (0 = none) */
	const char **values;
	int *lengths;
	int *formats;
	char *sql;
	size_t sql_cap;
};

static PGconn *pg_connect(const struct peer_opts *o, char *err, size_t err_len)
{
	PGconn *pg = PQconnectdb(o->target);
	if (!pg || PQstatus(pg) != CONNECTION_OK) {
		snprintf(err, err_len, "connect '%s': %s", o->target,
		         pg ? PQerrorMessage(pg) : "no memory");
		if (pg)
			PQfinish(pg);
		return NULL;
	}
	return pg;
}

/* Runs a statement without parameters that returns no rows. Returns 0 or -1. */
static int pg_exec(PGconn *pg, const char *sql, char *err, size_t err_len)
{
	PGresult *r = PQexec(pg, sql);
	int rv = 0;
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		snprintf(err, err_len, "%s: %s", sql, PQerrorMessage(pg));
		rv = -1;
	}
	PQclear(r);
	return rv;
}

static int pg_setup(const struct peer_opts *o, char *err, size_t err_len)
{
	PGconn *pg = pg_connect(o, err, err_len);
	if (!pg)
		return -1;
	int rv = pg_exec(pg,
	                 "CREATE TABLE IF NOT EXISTS tally_events (key text PRIMARY KEY, "
	                 "body bytea NOT NULL)",
	                 err, err_len);
	PQfinish(pg);
	return rv;
}

static void *pg_open(const struct peer_opts *o, uint32_t conn_id, char *err, size_t err_len)
{
	struct pg_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, err_len, "no memory");
		return NULL;
	}
	size_t np = 2 * (size_t)o->batch;
	c->values = calloc(np, sizeof(*c->values));
	c->lengths = calloc(np, sizeof(*c->lengths));
	c->formats = calloc(np, sizeof(*c->formats));
	c->sql_cap = 128 + (size_t)o->batch * 24;
	c->sql = malloc(c->sql_cap);
	if (!c->values || !c->lengths || !c->formats || !c->sql) {
		snprintf(err, err_len, "no memory");
		goto out_free;
	}
	for (size_t i = 0; i < np; i++)
		c->formats[i] = (int)(i & 1); /* key as text, body as binary */
	c->pg = pg_connect(o, err, err_len);
	if (!c->pg)
		goto out_free;
	if (pg_exec(c->pg, "SET synchronous_commit = on", err, err_len))
		goto out_close;
	return c;
out_close:
	PQfinish(c->pg);
out_free:
	free(c->values);
	free(c->lengths);
	free(c->formats);
	free(c->sql);
	free(c);
	return NULL;
}

/* Name of the statement prepared for n rows, preparing it first if needed; NULL on error. */
static const char *pg_stmt(struct pg_conn *c, uint32_t n, char *err, size_t err_len)
{
	static const char *names[2] = {"ins0", "ins1"};
	for (int i = 0; i < 2; i++)
		if (c->prepared_n[i] == n)
			return names[i];
	int slot = c->prepared_n[0] ? 1 : 0;
	if (c->prepared_n[slot]) {
		/* A third size: drop the old short one (only happens with odd --events splits). */
		char dealloc[32];
		snprintf(dealloc, sizeof(dealloc), "DEALLOCATE %s", names[slot]);
		if (pg_exec(c->pg, dealloc, err, err_len))
			return NULL;
		c->prepared_n[slot] = 0;
	}
	size_t off =
	    (size_t)snprintf(c->sql, c->sql_cap, "INSERT INTO tally_events (key, body) VALUES ");
	for (uint32_t i = 0; i < n; i++)
		off += (size_t)snprintf(c->sql + off, c->sql_cap - off, "%s($%u,$%u)", i ? "," : "",
		                        2 * i + 1, 2 * i + 2);
	snprintf(c->sql + off, c->sql_cap - off, " ON CONFLICT (key) DO NOTHING");
	PGresult *r = PQprepare(c->pg, names[slot], c->sql, 0, NULL);
	int st = PQresultStatus(r);
	PQclear(r);
	if (st != PGRES_COMMAND_OK) {
		snprintf(err, err_len, "PREPARE: %s", PQerrorMessage(c->pg));
		return NULL;
	}
	c->prepared_n[slot] = n;
	return names[slot];
}

static int pg_send(void *conn, const struct peer_ev *evs, uint32_t n, uint32_t *accepted_out,
                   char *err, size_t err_len)
{
	struct pg_conn *c = conn;
	const char *stmt = pg_stmt(c, n, err, err_len);
	if (!stmt)
		return -1;
	for (uint32_t i = 0; i < n; i++) {
		c->values[2 * i] = evs[i].key;
		c->lengths[2 * i] = (int)evs[i].key_len;
		c->values[2 * i + 1] = (const char *)evs[i].body;
		c->lengths[2 * i + 1] = (int)evs[i].body_len;
	}
	PGresult *r =
	    PQexecPrepared(c->pg, stmt, (int)(2 * n), c->values, c->lengths, c->formats, 0);
	int rv = -1;
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		snprintf(err, err_len, "INSERT: %s", PQerrorMessage(c->pg));
	} else {
		char *end;
		unsigned long added = strtoul(PQcmdTuples(r), &end, 10);
		if (*end || added > n) {
			snprintf(err, err_len, "INSERT: odd row count '%s'", PQcmdTuples(r));
		} else {
			*accepted_out = (uint32_t)added;
			rv = 0;
		}
	}
	PQclear(r);
	return rv;
}

static void pg_close(void *conn)
{
	struct pg_conn *c = conn;
	PQfinish(c->pg);
	free(c->values);
	free(c->lengths);
	free(c->formats);
	free(c->sql);
	free(c);
}

static int pg_count(const struct peer_opts *o, uint64_t *count_out, char *err, size_t err_len)
{
	PGconn *pg = pg_connect(o, err, err_len);
	if (!pg)
		return -1;
	PGresult *r = PQexec(pg, "SELECT count(*) FROM tally_events");
	int rv = -1;
	if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
		snprintf(err, err_len, "count: %s", PQerrorMessage(pg));
	} else {
		*count_out = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
		rv = 0;
	}
	PQclear(r);
	PQfinish(pg);
	return rv;
}

static const struct peer_ops pg_ops = {
    .name = "pg",
    .target_help = "libpq conninfo (default \"host=127.0.0.1 port=5432 dbname=postgres "
                   "user=postgres\")",
    .target_def = "host=127.0.0.1 port=5432 dbname=postgres user=postgres",
    .setup = pg_setup,
    .conn_open = pg_open,
    .send_batch = pg_send,
    .conn_close = pg_close,
    .stored_count = pg_count,
};

int main(int argc, char **argv)
{
	return peer_main(&pg_ops, argc, argv);
}
