/*
 * bench/peers/peer_common.c — the shared driver of the peer benchmarks; see peer_common.h.
 *
 * Invariants: the events of connection i are bench_gen stream i with the configuration
 * tally-bench builds for `--inflight 1` (ref_lag = 2 x batch), so a peer run and a tally-bench
 * run with the same --seed/--events/--connections/--batch/--dup-rate/--payload-bytes/
 * --base-time-us send the same keys and the same bodies, split the same way. The unique count
 * is the number of FRESH events the generators produced (no conflicts are generated here):
 * after the run the peer must have stored exactly that many, and acknowledged exactly that
 * many as new.
 *
 * Memory: every buffer is allocated before the load starts; nothing is allocated per batch
 * here (the peers' client libraries may allocate, which is part of what is measured).
 */
#include "peer_common.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_gen.h"
#include "bench_hist.h"
#include "tally/event.h"

#define PEER_SKEW_US_DEF (3600ll * 1000000) /* tally-bench's --skew default (unused: no late) */

struct peer_worker {
	uint32_t id;
	pthread_t thread;
	const struct peer_ops *ops;
	const struct peer_opts *o;
	pthread_barrier_t *barrier;
	void *conn;
	struct bench_gen gen;
	struct bench_gen_event ev;
	struct peer_ev *evs;
	char *keys;      /* batch x (BENCH_GEN_KEY_BYTES + 1) */
	uint8_t *bodies; /* batch x TALLY_EVENT_BYTES_MAX */
	struct bench_hist hist;
	uint64_t quota;
	uint64_t sent, accepted, fresh, dups_planned;
	int64_t last_ack_ns;
	int failed;
	char err[PEER_ERR_BYTES];
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000ll + ts.tv_nsec / 1000;
}

/* Fills w->evs[0..n) with the next n events of the stream; returns 0 or -1 (encode failed). */
static int fill_batch(struct peer_worker *w, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		bench_gen_next(&w->gen, &w->ev);
		char *key = w->keys + (size_t)i * (BENCH_GEN_KEY_BYTES + 1);
		uint8_t *body = w->bodies + (size_t)i * TALLY_EVENT_BYTES_MAX;
		uint32_t kl = w->ev.in.key.len;
		if (kl > BENCH_GEN_KEY_BYTES)
			return -1;
		memcpy(key, w->ev.in.key.ptr, kl);
		key[kl] = '\0';
		long bl = event_encode(&w->ev.in, body, TALLY_EVENT_BYTES_MAX);
		if (bl <= 0)
			return -1;
		w->evs[i] = (struct peer_ev){key, kl, body, (uint32_t)bl};
		if (w->ev.kind == BENCH_GEN_DUP)
			w->dups_planned++;
	}
	return 0;
}

static void *worker_main(void *arg)
{
	struct peer_worker *w = arg;
	w->conn = w->ops->conn_open(w->o, w->id, w->err, sizeof(w->err));
	if (!w->conn)
		w->failed = 1;
	/* Everyone connected (or failed) before the clock starts. */
	pthread_barrier_wait(w->barrier);
	pthread_barrier_wait(w->barrier); /* main thread took the start time */
	while (!w->failed && w->sent < w->quota) {
		uint64_t left = w->quota - w->sent;
		uint32_t n = left < w->o->batch ? (uint32_t)left : w->o->batch;
		if (fill_batch(w, n)) {
			snprintf(w->err, sizeof(w->err), "event encoding failed");
			w->failed = 1;
			break;
		}
		uint32_t acc = 0;
		int64_t t0 = now_ns();
		if (w->ops->send_batch(w->conn, w->evs, n, &acc, w->err, sizeof(w->err))) {
			w->failed = 1;
			break;
		}
		int64_t t1 = now_ns();
		bench_hist_record(&w->hist, (uint64_t)(t1 - t0) / 1000);
		w->last_ack_ns = t1;
		w->sent += n;
		w->accepted += acc;
	}
	w->fresh = w->gen.count_by_kind[BENCH_GEN_FRESH];
	if (w->conn)
		w->ops->conn_close(w->conn);
	return NULL;
}

static void usage(const struct peer_ops *ops, FILE *f)
{
	fprintf(f,
	        "usage: peer-%s [options]\n"
	        "Sends tally-bench's generated events to %s (closed loop, one batch in flight per\n"
	        "connection, deduplicated by idempotency key), then checks the stored count.\n\n"
	        "  --target T          %s\n"
	        "  --connections N     connections, one thread each (default 4, max %u)\n"
	        "  --batch N           events per batch (default 100, max %u)\n"
	        "  --events N          events in total (default 200000)\n"
	        "  --seed N            generator seed (default 1; as tally-bench --seed)\n"
	        "  --customers N       customer population (default 10000)\n"
	        "  --payload-bytes N   encoded body size (default 150)\n"
	        "  --dup-rate X        exact resends: 0.1, 10%%, 1000ppm (default 0)\n"
	        "  --base-time-us T    event time of the first event (default: now)\n"
	        "  --json              one JSON object on stdout\n"
	        "  --help              this text\n\n"
	        "Exit status: 0 ok, 1 stored/accepted count differs from the unique count,\n"
	        "2 usage, 3 could not set up or connect, 4 a batch failed.\n",
	        ops->name, ops->name, ops->target_help, PEER_CONNS_MAX, PEER_BATCH_MAX);
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-')
		return -1;
	*out = v;
	return 0;
}

static int parse_args(const struct peer_ops *ops, int argc, char **argv, struct peer_opts *o)
{
	enum {
		O_TARGET = 1,
		O_CONNS,
		O_BATCH,
		O_EVENTS,
		O_SEED,
		O_CUST,
		O_PAYLOAD,
		O_DUP,
		O_BASE,
		O_JSON,
		O_HELP
	};
	static const struct option lo[] = {
	    {"target", required_argument, 0, O_TARGET},
	    {"connections", required_argument, 0, O_CONNS},
	    {"batch", required_argument, 0, O_BATCH},
	    {"events", required_argument, 0, O_EVENTS},
	    {"seed", required_argument, 0, O_SEED},
	    {"customers", required_argument, 0, O_CUST},
	    {"payload-bytes", required_argument, 0, O_PAYLOAD},
	    {"dup-rate", required_argument, 0, O_DUP},
	    {"base-time-us", required_argument, 0, O_BASE},
	    {"json", no_argument, 0, O_JSON},
	    {"help", no_argument, 0, O_HELP},
	    {0, 0, 0, 0},
	};
	int c;
	uint64_t u;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		const char *a = optarg;
		bool bad = false;
		switch (c) {
		case O_TARGET:
			bad = strlen(a) >= sizeof(o->target);
			if (!bad)
				strcpy(o->target, a);
			break;
		case O_CONNS:
			bad = parse_u64(a, &u) || u == 0 || u > PEER_CONNS_MAX;
			o->connections = (uint32_t)u;
			break;
		case O_BATCH:
			bad = parse_u64(a, &u) || u == 0 || u > PEER_BATCH_MAX;
			o->batch = (uint32_t)u;
			break;
		case O_EVENTS:
			bad = parse_u64(a, &o->events) || o->events == 0;
			break;
		case O_SEED:
			bad = parse_u64(a, &o->seed);
			break;
		case O_CUST:
			bad = parse_u64(a, &u) || u == 0 || u > BENCH_GEN_CUSTOMERS_MAX;
			o->customers = (uint32_t)u;
			break;
		case O_PAYLOAD:
			bad = parse_u64(a, &u) || u > BENCH_GEN_PAYLOAD_BYTES_MAX;
			o->payload_bytes = (uint32_t)u;
			break;
		case O_DUP:
			bad = bench_gen_parse_rate(a, &o->dup_ppm) != 0;
			break;
		case O_BASE:
			bad = parse_u64(a, &u) || u == 0 || u > (uint64_t)INT64_MAX;
			o->base_time_us = (int64_t)u;
			break;
		case O_JSON:
			o->json = 1;
			break;
		case O_HELP:
			usage(ops, stdout);
			exit(0);
		default:
			usage(ops, stderr);
			return -1;
		}
		if (bad) {
			fprintf(stderr, "peer-%s: bad value for --%s: '%s'\n", ops->name,
			        lo[c - 1].name, a);
			return -1;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "peer-%s: unexpected argument '%s'\n", ops->name, argv[optind]);
		return -1;
	}
	return 0;
}

static double ms(uint64_t us)
{
	return (double)us / 1000.0; /* display only */
}

/* The load and the report; ws[] and all are allocated by the caller (and freed by it). */
static int peer_run(const struct peer_ops *ops, struct peer_opts *o, struct peer_worker *ws,
                    struct bench_hist *all)
{
	char err[PEER_ERR_BYTES] = "";
	pthread_barrier_t barrier;
	if (pthread_barrier_init(&barrier, NULL, o->connections + 1)) {
		fprintf(stderr, "peer-%s: cannot create a barrier\n", ops->name);
		return 3;
	}
	for (uint32_t i = 0; i < o->connections; i++) {
		struct peer_worker *w = &ws[i];
		w->id = i;
		w->ops = ops;
		w->o = o;
		w->barrier = &barrier;
		w->quota = o->events / o->connections + (i < o->events % o->connections ? 1 : 0);
		w->evs = calloc(o->batch, sizeof(*w->evs));
		w->keys = malloc((size_t)o->batch * (BENCH_GEN_KEY_BYTES + 1));
		w->bodies = malloc((size_t)o->batch * TALLY_EVENT_BYTES_MAX);
		struct bench_gen_config gc = {
		    .seed = o->seed,
		    .stream = i,
		    .customers = o->customers,
		    .payload_bytes = o->payload_bytes,
		    .dup_ppm = o->dup_ppm,
		    .skew_us = PEER_SKEW_US_DEF,
		    .base_time_us = o->base_time_us,
		    .time_step_us = 1,
		    .ref_lag = 2 * o->batch, /* as tally-bench --inflight 1 */
		};
		if (!w->evs || !w->keys || !w->bodies ||
		    bench_hist_init(&w->hist, BENCH_HIST_HIGHEST_US_DEF) ||
		    bench_gen_init(&w->gen, &gc)) {
			fprintf(stderr, "peer-%s: cannot initialise connection %u\n", ops->name, i);
			return 3;
		}
	}
	for (uint32_t i = 0; i < o->connections; i++) {
		if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i])) {
			/* The threads already started wait at the barrier: nothing to unwind. */
			fprintf(stderr, "peer-%s: cannot start thread\n", ops->name);
			exit(3);
		}
	}
	pthread_barrier_wait(&barrier); /* all connected */
	int64_t t_start = now_ns();
	pthread_barrier_wait(&barrier); /* go */
	for (uint32_t i = 0; i < o->connections; i++)
		pthread_join(ws[i].thread, NULL);
	pthread_barrier_destroy(&barrier);

	uint64_t sent = 0, accepted = 0, fresh = 0, dups_planned = 0;
	int64_t t_end = t_start;
	int failed = 0;
	for (uint32_t i = 0; i < o->connections; i++) {
		struct peer_worker *w = &ws[i];
		if (w->failed) {
			fprintf(stderr, "peer-%s: connection %u: %s\n", ops->name, i, w->err);
			failed = w->conn ? 4 : 3;
		}
		if (bench_hist_merge(all, &w->hist))
			return 3;
		sent += w->sent;
		accepted += w->accepted;
		fresh += w->fresh;
		dups_planned += w->dups_planned;
		if (w->last_ack_ns > t_end)
			t_end = w->last_ack_ns;
	}
	if (failed)
		return failed;

	uint64_t stored = 0;
	if (ops->stored_count(o, &stored, err, sizeof(err))) {
		fprintf(stderr, "peer-%s: cannot count stored events: %s\n", ops->name, err);
		return 3;
	}
	uint64_t wall_us_run = (uint64_t)(t_end - t_start) / 1000;
	if (!wall_us_run)
		wall_us_run = 1;
	uint64_t eps = (uint64_t)((unsigned __int128)sent * 1000000u / wall_us_run);
	bool ok = stored == fresh && accepted == fresh;
	uint64_t p50 = bench_hist_percentile(all, 500000), p90 = bench_hist_percentile(all, 900000),
	         p99 = bench_hist_percentile(all, 990000),
	         p999 = bench_hist_percentile(all, 999000);

	if (o->json) {
		printf("{\"peer\":\"%s\",\"connections\":%u,\"batch\":%u,\"inflight\":1,\"seed\":"
		       "%" PRIu64 ",\"payload_bytes\":%u,\"dup_ppm\":%u,\"events\":%" PRIu64
		       ",\"wall_ms\":%" PRIu64 ",\"events_per_s\":%" PRIu64
		       ",\"latency_us\":{\"batches\":%" PRIu64 ",\"p50\":%" PRIu64
		       ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"p999\":%" PRIu64
		       ",\"max\":%" PRIu64 ",\"mean\":%" PRIu64 "},\"unique\":%" PRIu64
		       ",\"accepted\":%" PRIu64 ",\"duplicates\":%" PRIu64
		       ",\"dups_planned\":%" PRIu64 ",\"stored\":%" PRIu64 ",\"ok\":%s}\n",
		       ops->name, o->connections, o->batch, o->seed, o->payload_bytes, o->dup_ppm,
		       sent, wall_us_run / 1000, eps, all->total, p50, p90, p99, p999, all->max,
		       bench_hist_mean(all), fresh, accepted, sent - accepted, dups_planned, stored,
		       ok ? "true" : "false");
	} else {
		printf("peer-%s: %u connection(s), batch %u, 1 batch in flight per connection\n"
		       "  events       %" PRIu64 " in %.3f s: %" PRIu64 " events/s\n"
		       "  ack latency  %" PRIu64 " batches: p50 %.3f ms p90 %.3f ms p99 %.3f ms "
		       "p99.9 %.3f ms max %.3f ms\n"
		       "  receipts     new %" PRIu64 ", duplicate %" PRIu64
		       " (planned resends %" PRIu64 ")\n"
		       "  stored       %" PRIu64 ", unique events sent %" PRIu64 ": %s\n",
		       ops->name, o->connections, o->batch, sent, (double)wall_us_run / 1e6, eps,
		       all->total, ms(p50), ms(p90), ms(p99), ms(p999), ms(all->max), accepted,
		       sent - accepted, dups_planned, stored, fresh, ok ? "ok" : "MISMATCH");
	}
	if (!ok)
		fprintf(stderr,
		        "peer-%s: stored %" PRIu64 ", acknowledged as new %" PRIu64
		        ", unique %" PRIu64 ": MISMATCH\n",
		        ops->name, stored, accepted, fresh);
	return ok ? 0 : 1;
}

int peer_main(const struct peer_ops *ops, int argc, char **argv)
{
	struct peer_opts o = {
	    .connections = 4,
	    .batch = 100,
	    .events = 200000,
	    .seed = 1,
	    .customers = 10000,
	    .payload_bytes = BENCH_GEN_PAYLOAD_BYTES_DEF,
	};
	snprintf(o.target, sizeof(o.target), "%s", ops->target_def);
	if (parse_args(ops, argc, argv, &o))
		return 2;
	if (!o.base_time_us)
		o.base_time_us = wall_us();

	char err[PEER_ERR_BYTES] = "";
	if (ops->setup(&o, err, sizeof(err))) {
		fprintf(stderr, "peer-%s: setup failed: %s\n", ops->name, err);
		return 3;
	}

	struct peer_worker *ws = calloc(o.connections, sizeof(*ws));
	struct bench_hist all = {0};
	int rc = 3;
	if (!ws || bench_hist_init(&all, BENCH_HIST_HIGHEST_US_DEF)) {
		fprintf(stderr, "peer-%s: out of memory\n", ops->name);
		goto out_free;
	}
	rc = peer_run(ops, &o, ws, &all);
out_free:
	for (uint32_t i = 0; ws && i < o.connections; i++) {
		free(ws[i].evs);
		free(ws[i].keys);
		free(ws[i].bodies);
		bench_hist_free(&ws[i].hist);
	}
	free(ws);
	bench_hist_free(&all);
	return rc;
}
