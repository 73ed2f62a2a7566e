/*
 * bench/tally_bench.c — tally-bench, the load harness for tallyd (docs/benchmarks.md).
 *
 * Shape: the main thread parses options, connects every connection (blocking connect, HELLO,
 * HELLO_OK), then runs one or more *phases* (one, or one per --steps rate). Worker threads
 * (--threads, default min(connections, 2)) each own a fixed set of connections and drive them
 * non-blocking from one epoll loop: encode BATCH frames straight into the connection's send
 * buffer (proto_batch_*), write, read, parse ACK/ERROR with proto_frame_parse, record.
 * The main thread prints a progress line each second, then merges the workers' statistics.
 * The progress line also gives the last second's ack latency (p99 and max, every ACK, warm-up
 * included) and the machine's CPU steal over it: each worker records into a second histogram
 * under its own mutex (uncontended but once a second), which the main thread takes and resets.
 *
 * Latency: one sample per BATCH, from its *intended* send time to the arrival of its ACK, in
 * µs, into a log-linear histogram. Closed loop (--max, default): a batch is intended when a
 * slot frees, so intended = send time. Open loop (--rate): batch k of a connection is intended
 * at t0 + k * interval whether or not the connection could send it then; a stall therefore
 * shows up in the latency of every batch that should have been sent during it (no coordinated
 * omission).
 *
 * Checks (--expect): each connection has its own generator stream and key space. Every
 * receipt is checked against the plan, order-independently: for each key exactly one receipt
 * is ACCEPTED; receipts of the same content as the accepted one are DUPLICATE, of the other
 * content CONFLICT; no event is REJECTED; positions of DUPLICATE/CONFLICT match the original.
 * "as planned" counts receipts that are exactly what the plan says (fresh ACCEPTED, dup
 * DUPLICATE, conflict CONFLICT); "reordered" counts consistent receipts where the broker saw a
 * resend before its original (possible with several batches in flight). --verify-wal reads the
 * WAL afterwards (built only when the WAL reader exists: TALLY_BENCH_HAVE_WAL_READER).
 *
 * Memory: all buffers are allocated at start-up; the per-key records for --expect grow by
 * doubling (16 bytes per fresh event). Threads share only the read-only options, the Zipf table,
 * relaxed atomic progress counters and the per-second histograms (under their mutexes).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench_gen.h"
#include "bench_hist.h"
#include "tally/event.h"
#include "tally/version.h"
#include "tally/protocol.h"
#if TALLY_BENCH_HAVE_WAL_READER
#include "tally/wal.h"
#endif

#define NS_PER_S            1000000000ll
#define BENCH_CONNS_MAX     4096u
#define BENCH_THREADS_MAX   64u
#define BENCH_STEPS_MAX     32u
#define BENCH_SLOTS_MAX     1024u
#define BENCH_HELLO_TIMEOUT_S 5
#define BENCH_RBUF_EXTRA    (64u << 10)
#define BENCH_EPOLL_EVENTS  64

/* ---------------------------------------------------------------- options */

struct opts {
	char host[256];
	char port[16];
	char api_key[PROTO_API_KEY_BYTES_MAX + 1];
	uint32_t connections;
	uint32_t threads;
	uint32_t batch;
	uint32_t inflight;       /* 0 = closed: 8, open: the server's maximum */
	uint64_t events;         /* total per phase, 0 = by duration */
	int64_t duration_ns;     /* per phase, 0 = by events */
	int64_t warmup_ns;
	int64_t drain_ns;
	uint64_t rate;           /* events/s, 0 = closed loop */
	uint64_t steps[BENCH_STEPS_MAX];
	uint32_t step_count;
	uint64_t seed;
	uint32_t customers;
	uint32_t zipf_milli;
	uint32_t payload_bytes;
	uint32_t dup_ppm, conflict_ppm, late_ppm;
	int64_t skew_us;
	int64_t base_time_us;    /* 0 = server time at connect */
	bool json, expect, progress, quiet;
	const char *verify_wal;
	char key_prefix[BENCH_GEN_KEY_PREFIX_MAX + 1];
};

static struct opts o = {
	.host = "127.0.0.1",
	.port = "7878",
	.connections = 4,
	.batch = 100,
	.drain_ns = 30 * NS_PER_S,
	.seed = 1,
	.customers = 10000,
	.payload_bytes = BENCH_GEN_PAYLOAD_BYTES_DEF,
	.skew_us = 3600ll * 1000000,
};

/* ---------------------------------------------------------------- statistics */

struct stats {
	struct bench_hist hist;      /* measured batches: ack latency in µs */
	struct bench_hist lag;       /* measured batches: send time - intended time, µs */
	uint64_t batches_acked;      /* all batches acked (warm-up included) */
	uint64_t events_sent;        /* all phases' events written (warm-up included) */
	uint64_t events_acked;       /* events with a receipt */
	uint64_t measured_events;    /* events with a receipt in measured batches */
	uint64_t measured_bytes;     /* their encoded body bytes */
	int64_t measure_start_ns;
	int64_t last_ack_ns;
	uint64_t receipts[5];        /* by enum proto_receipt_status (0 = unknown status) */
	uint64_t rejects[TALLY_REJECT_MAX_ + 1];
	uint64_t errors[PROTO_E_MAX_ + 1]; /* ERROR frames by code (0 = other) */
	uint64_t conn_lost;          /* connections that died */
	uint64_t errored_events;     /* events in batches answered with an ERROR */
	uint64_t unacked_events;     /* events never answered (connection lost, drain timeout) */
	uint64_t expect_checked, expect_planned, expect_reordered, expect_mismatch;
	uint64_t expect_unverified;
};

/* ---------------------------------------------------------------- connections */

enum { KR_ACC_A = 1, KR_ACC_B = 2, KR_DUP_A = 4, KR_DUP_B = 8, KR_CON_A = 16, KR_CON_B = 32,
       KR_UNCERTAIN = 64, KR_POS = 128 };

/* Everything the harness knows about one key of the stream (--expect / --verify-wal). */
struct key_rec {
	uint64_t offset;
	uint16_t shard;
	uint8_t flags;
	uint8_t wal_seen; /* times found in the WAL (saturating) */
};

struct slot {
	uint64_t request_id;   /* 0 = free */
	int64_t intended_ns;
	uint32_t count;
	uint32_t body_bytes;
	bool measured;
	uint64_t *evinfo;      /* count x (fresh_index << 2 | kind) */
};

struct conn {
	uint32_t id;
	int fd;
	bool alive;
	bool send_done;
	bool want_out;
	struct bench_gen gen;
	struct bench_gen_event ev;
	uint32_t frame_bytes_max;
	uint32_t batch_eff;    /* events per batch after the server's limits */
	size_t frame_limit;    /* the largest BATCH frame we can build */
	uint8_t *sbuf;
	size_t scap, soff, slen;
	uint8_t *rbuf;
	size_t rcap, rlen;
	struct slot *slots;
	uint32_t nslots;
	uint32_t inflight_now;
	uint64_t req_counter;
	/* phase state */
	uint64_t quota;        /* events to send this phase, UINT64_MAX = until the duration ends */
	uint64_t phase_sent;
	uint64_t sched_k;      /* open loop: next batch number of the schedule */
	int64_t sched_offset_ns;
	struct key_rec *recs;
	uint64_t recs_cap;
	struct stats *st;      /* the owning worker's stats for the current phase */
	struct worker *w;
};

struct worker {
	uint32_t id;
	pthread_t thread;
	int epfd;
	struct conn **conns;
	uint32_t nconns;
	struct stats *phase_stats; /* [phase count] */
	_Atomic uint64_t prog_sent, prog_acked, prog_dups, prog_errors, prog_inflight;
	pthread_mutex_t sec_mu;    /* guards sec_hist: the worker records, the main thread takes */
	struct bench_hist sec_hist; /* every ACK's latency since the last progress line, µs */
};

struct phase {
	uint64_t rate;
	uint64_t events;
	int64_t duration_ns;
	int64_t warmup_ns;
	int64_t t0_ns;
};

static struct conn *conns;
static struct worker *workers;
static bool sec_on; /* progress lines are shown: workers keep the per-second histograms */
static struct phase phases[BENCH_STEPS_MAX];
static uint32_t phase_count;
static pthread_barrier_t start_barrier;
static _Atomic uint32_t phases_done; /* worker-phase completions; release/acquire on stats */
static struct bench_gen_zipf zipf;
static struct proto_hello_ok server; /* from the first connection */
static char server_tenant[TALLY_TENANT_BYTES_MAX + 1];
static int64_t base_time_us;

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static int64_t wall_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---------------------------------------------------------------- option parsing */

static void usage(FILE *f)
{
	fprintf(f,
"usage: tally-bench [options]\n"
"Load generator and checker for tallyd. Closed loop by default; --rate for open loop.\n"
"\n"
"Connection:\n"
"  --connect HOST:PORT     broker address (default 127.0.0.1:7878)\n"
"  --api-key KEY           API key sent in HELLO (default: $TALLY_API_KEY or empty)\n"
"  --connections N         TCP connections (default 4)\n"
"  --threads N             worker threads driving them (default min(connections, 2))\n"
"Load:\n"
"  --max                   closed loop: as fast as ACKs allow (default)\n"
"  --inflight N            batches in flight per connection (closed: 8; open: server max)\n"
"  --rate R                open loop: R events/s in total, paced to a schedule\n"
"  --steps R1,R2,...       open loop at each rate in turn for --duration (default 5 s) each\n"
"  --batch N               events per BATCH (default 100)\n"
"  --events N              events per run/step (default 100000 when no --duration)\n"
"  --duration S            seconds per run/step (decimal ok)\n"
"  --warmup S              seconds of load before measuring (added to the run)\n"
"  --drain S               seconds to wait for outstanding ACKs at the end (default 30)\n"
"Workload (deterministic from --seed):\n"
"  --seed N                generator seed (default 1); same seed = same events and keys\n"
"  --key-prefix P          key prefix, [A-Za-z0-9_]{0,16} (default \"ev\")\n"
"  --customers N           customer population (default 10000)\n"
"  --zipf S                Zipf exponent for customers: 1.1 or 1100pm (default uniform)\n"
"  --payload-bytes N       encoded event body size (default 150; 0 = natural)\n"
"  --dup-rate X            exact resends: 0.1, 10%%, 1000ppm (default 0)\n"
"  --conflict-rate X       same key with different content (default 0)\n"
"  --late-rate X           share of fresh events with a past event time (default 0)\n"
"  --skew S                how far back a late event goes, seconds (default 3600)\n"
"  --base-time-us T        event time of the first event (default: server time)\n"
"Output and checks:\n"
"  --json                  print the summary as JSON on stdout\n"
"  --progress              progress line each second even when stderr is not a TTY\n"
"  --quiet                 no progress line\n"
"  --expect                check every receipt against the plan; exit 1 on a mismatch\n"
"  --verify-wal DIR        after the run, check the broker's WAL in DIR against the receipts\n"
"  --version               print the version\n"
"  --help                  this text\n"
"\n"
"Exit status: 0 ok, 1 check failed (mismatch, lost or errored events under --expect),\n"
"2 usage, 3 could not connect or HELLO refused.\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

/* Seconds with up to 9 decimals, integer math. */
static int parse_secs(const char *s, int64_t *ns_out)
{
	int64_t v = 0, frac = 0, scale = NS_PER_S;
	bool any = false;

	if (!s)
		return -EINVAL;
	for (; *s >= '0' && *s <= '9'; s++, any = true) {
		if (v > 100000000)
			return -EINVAL;
		v = v * 10 + (*s - '0');
	}
	if (*s == '.') {
		for (s++; *s >= '0' && *s <= '9'; s++, any = true) {
			if (scale > 1) {
				scale /= 10;
				frac += (*s - '0') * scale;
			}
		}
	}
	if (!any || *s)
		return -EINVAL;
	*ns_out = v * NS_PER_S + frac;
	return 0;
}

static int parse_steps(const char *s)
{
	char buf[1024];

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	o.step_count = 0;
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		uint64_t r;
		if (o.step_count >= BENCH_STEPS_MAX || parse_u64(t, &r) || r == 0)
			return -EINVAL;
		o.steps[o.step_count++] = r;
	}
	return o.step_count ? 0 : -EINVAL;
}

static int parse_connect(const char *s)
{
	const char *colon = strrchr(s, ':');

	if (!colon || colon == s || (size_t)(colon - s) >= sizeof(o.host) ||
	    strlen(colon + 1) >= sizeof(o.port) || !colon[1])
		return -EINVAL;
	memcpy(o.host, s, (size_t)(colon - s));
	o.host[colon - s] = '\0';
	if (o.host[0] == '[' && o.host[strlen(o.host) - 1] == ']') { /* [::1]:7878 */
		memmove(o.host, o.host + 1, strlen(o.host));
		o.host[strlen(o.host) - 1] = '\0';
	}
	strcpy(o.port, colon + 1);
	return 0;
}

enum {
	OPT_CONNECT = 256, OPT_API_KEY, OPT_CONNS, OPT_THREADS, OPT_MAX, OPT_INFLIGHT, OPT_RATE,
	OPT_STEPS, OPT_BATCH, OPT_EVENTS, OPT_DURATION, OPT_WARMUP, OPT_DRAIN, OPT_SEED,
	OPT_PREFIX, OPT_CUSTOMERS, OPT_ZIPF, OPT_PAYLOAD, OPT_DUP, OPT_CONFLICT, OPT_LATE,
	OPT_SKEW, OPT_BASE_TIME, OPT_JSON, OPT_PROGRESS, OPT_QUIET, OPT_EXPECT, OPT_VERIFY,
	OPT_HELP, OPT_VERSION,
};

static int parse_args(int argc, char **argv)
{
	static const struct option lo[] = {
		{"connect", required_argument, 0, OPT_CONNECT},
		{"api-key", required_argument, 0, OPT_API_KEY},
		{"connections", required_argument, 0, OPT_CONNS},
		{"threads", required_argument, 0, OPT_THREADS},
		{"max", no_argument, 0, OPT_MAX},
		{"inflight", required_argument, 0, OPT_INFLIGHT},
		{"rate", required_argument, 0, OPT_RATE},
		{"steps", required_argument, 0, OPT_STEPS},
		{"batch", required_argument, 0, OPT_BATCH},
		{"events", required_argument, 0, OPT_EVENTS},
		{"duration", required_argument, 0, OPT_DURATION},
		{"warmup", required_argument, 0, OPT_WARMUP},
		{"drain", required_argument, 0, OPT_DRAIN},
		{"seed", required_argument, 0, OPT_SEED},
		{"key-prefix", required_argument, 0, OPT_PREFIX},
		{"customers", required_argument, 0, OPT_CUSTOMERS},
		{"zipf", required_argument, 0, OPT_ZIPF},
		{"payload-bytes", required_argument, 0, OPT_PAYLOAD},
		{"dup-rate", required_argument, 0, OPT_DUP},
		{"conflict-rate", required_argument, 0, OPT_CONFLICT},
		{"late-rate", required_argument, 0, OPT_LATE},
		{"skew", required_argument, 0, OPT_SKEW},
		{"base-time-us", required_argument, 0, OPT_BASE_TIME},
		{"json", no_argument, 0, OPT_JSON},
		{"progress", no_argument, 0, OPT_PROGRESS},
		{"quiet", no_argument, 0, OPT_QUIET},
		{"expect", no_argument, 0, OPT_EXPECT},
		{"verify-wal", required_argument, 0, OPT_VERIFY},
		{"help", no_argument, 0, OPT_HELP},
		{"version", no_argument, 0, OPT_VERSION},
		{0, 0, 0, 0},
	};
	uint64_t u;
	int64_t ns;
	int c;
	bool max = false;
	const char *env_key = getenv("TALLY_API_KEY");

	if (env_key && strlen(env_key) <= PROTO_API_KEY_BYTES_MAX)
		strcpy(o.api_key, env_key);
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		const char *a = optarg;
		int bad = 0;
		switch (c) {
		case OPT_CONNECT: bad = parse_connect(a); break;
		case OPT_API_KEY:
			if (strlen(a) > PROTO_API_KEY_BYTES_MAX)
				bad = 1;
			else
				strcpy(o.api_key, a);
			break;
		case OPT_CONNS:
			bad = parse_u64(a, &u) || u == 0 || u > BENCH_CONNS_MAX;
			o.connections = (uint32_t)u;
			break;
		case OPT_THREADS:
			bad = parse_u64(a, &u) || u == 0 || u > BENCH_THREADS_MAX;
			o.threads = (uint32_t)u;
			break;
		case OPT_MAX: max = true; break;
		case OPT_INFLIGHT:
			bad = parse_u64(a, &u) || u == 0 || u > BENCH_SLOTS_MAX;
			o.inflight = (uint32_t)u;
			break;
		case OPT_RATE: bad = parse_u64(a, &o.rate) || o.rate == 0; break;
		case OPT_STEPS: bad = parse_steps(a); break;
		case OPT_BATCH:
			bad = parse_u64(a, &u) || u == 0 || u > PROTO_BATCH_EVENTS_MAX;
			o.batch = (uint32_t)u;
			break;
		case OPT_EVENTS: bad = parse_u64(a, &o.events) || o.events == 0; break;
		case OPT_DURATION: bad = parse_secs(a, &o.duration_ns) || o.duration_ns == 0; break;
		case OPT_WARMUP: bad = parse_secs(a, &o.warmup_ns); break;
		case OPT_DRAIN: bad = parse_secs(a, &o.drain_ns); break;
		case OPT_SEED: bad = parse_u64(a, &o.seed); break;
		case OPT_PREFIX:
			if (strlen(a) > BENCH_GEN_KEY_PREFIX_MAX)
				bad = 1;
			else
				strcpy(o.key_prefix, a);
			break;
		case OPT_CUSTOMERS:
			bad = parse_u64(a, &u) || u == 0 || u > BENCH_GEN_CUSTOMERS_MAX;
			o.customers = (uint32_t)u;
			break;
		case OPT_ZIPF:
			bad = bench_gen_parse_milli(a, &o.zipf_milli) || o.zipf_milli == 0 ||
			      o.zipf_milli > 5000;
			break;
		case OPT_PAYLOAD:
			bad = parse_u64(a, &u) || u > BENCH_GEN_PAYLOAD_BYTES_MAX;
			o.payload_bytes = (uint32_t)u;
			break;
		case OPT_DUP: bad = bench_gen_parse_rate(a, &o.dup_ppm); break;
		case OPT_CONFLICT: bad = bench_gen_parse_rate(a, &o.conflict_ppm); break;
		case OPT_LATE: bad = bench_gen_parse_rate(a, &o.late_ppm); break;
		case OPT_SKEW:
			bad = parse_secs(a, &ns) || ns < 1000;
			o.skew_us = ns / 1000;
			break;
		case OPT_BASE_TIME:
			bad = parse_u64(a, &u) || u > INT64_MAX;
			o.base_time_us = (int64_t)u;
			break;
		case OPT_JSON: o.json = true; break;
		case OPT_PROGRESS: o.progress = true; break;
		case OPT_QUIET: o.quiet = true; break;
		case OPT_EXPECT: o.expect = true; break;
		case OPT_VERIFY: o.verify_wal = a; break;
		case 'h':
		case OPT_HELP: usage(stdout); exit(0);
		case OPT_VERSION: TALLY_PRINT_VERSION("tally-bench"); exit(0);
		default: usage(stderr); return -EINVAL;
		}
		if (bad) {
			fprintf(stderr, "tally-bench: bad value for --%s: '%s'\n",
				lo[c - OPT_CONNECT].name, a ? a : "");
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tally-bench: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	if ((uint64_t)o.dup_ppm + o.conflict_ppm > BENCH_GEN_PPM) {
		fprintf(stderr, "tally-bench: --dup-rate + --conflict-rate exceed 1\n");
		return -EINVAL;
	}
	if (max && (o.rate || o.step_count)) {
		fprintf(stderr, "tally-bench: --max is the closed loop; it excludes --rate/--steps\n");
		return -EINVAL;
	}
	if (o.rate && o.step_count) {
		fprintf(stderr, "tally-bench: give --rate or --steps, not both\n");
		return -EINVAL;
	}
	if (o.step_count && !o.duration_ns)
		o.duration_ns = 5 * NS_PER_S;
	if (!o.events && !o.duration_ns)
		o.events = 100000;
	if (!o.threads)
		o.threads = o.connections < 2 ? o.connections : 2;
	if (o.threads > o.connections)
		o.threads = o.connections;
	if (o.verify_wal)
		o.expect = true; /* the WAL check needs the per-key records */
	return 0;
}

/* ---------------------------------------------------------------- connect and HELLO */

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
}

/* Blocking connect + HELLO + HELLO_OK. On success c->fd is non-blocking. */
static int conn_open(struct conn *c, struct proto_hello_ok *ok_out, char *tenant_out)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
	int rc = getaddrinfo(o.host, o.port, &hints, &ai);
	int fd = -1;

	if (rc) {
		fprintf(stderr, "tally-bench: %s:%s: %s\n", o.host, o.port, gai_strerror(rc));
		return -EINVAL;
	}
	for (struct addrinfo *p = ai; p; p = p->ai_next) {
		fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC, p->ai_protocol);
		if (fd < 0)
			continue;
		if (connect(fd, p->ai_addr, p->ai_addrlen) == 0)
			break;
		rc = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0) {
		fprintf(stderr, "tally-bench: connect %s:%s: %s\n", o.host, o.port, strerror(-rc));
		return rc ? rc : -ECONNREFUSED;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct timeval tv = {.tv_sec = BENCH_HELLO_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));

	uint8_t buf[PROTO_HELLO_BYTES_MAX + 2048];
	struct proto_hello h = {
		.version = PROTO_VERSION,
		.frame_bytes_max = 0,
		.client_name = {(const uint8_t *)"tally-bench", 11},
		.api_key = {(const uint8_t *)o.api_key, (uint32_t)strlen(o.api_key)},
	};
	long n = proto_encode_hello(buf, sizeof(buf), &h);
	if (n <= 0 || write(fd, buf, (size_t)n) != n) {
		rc = n <= 0 ? (int)n : -EIO;
		fprintf(stderr, "tally-bench: sending HELLO failed\n");
		goto out_close;
	}
	size_t have = 0;
	struct proto_frame f;
	for (;;) {
		long r = proto_frame_parse(buf, have, sizeof(buf), 1, &f, NULL);
		if (r > 0)
			break;
		if (r < 0) {
			fprintf(stderr, "tally-bench: bad reply to HELLO: %s\n", proto_error_str((int)-r));
			rc = -EPROTO;
			goto out_close;
		}
		if (have == sizeof(buf)) {
			rc = -EPROTO;
			goto out_close;
		}
		ssize_t got = read(fd, buf + have, sizeof(buf) - have);
		if (got <= 0) {
			fprintf(stderr, "tally-bench: no reply to HELLO (%s)\n",
				got == 0 ? "connection closed" : strerror(errno));
			rc = -EPROTO;
			goto out_close;
		}
		have += (size_t)got;
	}
	if (f.type == PROTO_ERROR) {
		fprintf(stderr, "tally-bench: HELLO refused: %s (%s): %.*s\n",
			proto_error_code(f.u.error.code), proto_error_str(f.u.error.code),
			(int)f.u.error.message.len, (const char *)f.u.error.message.ptr);
		rc = -EACCES;
		goto out_close;
	}
	if (f.type != PROTO_HELLO_OK) {
		fprintf(stderr, "tally-bench: unexpected frame type %u in reply to HELLO\n", f.type);
		rc = -EPROTO;
		goto out_close;
	}
	*ok_out = f.u.hello_ok;
	if (tenant_out) {
		uint32_t tl = f.u.hello_ok.tenant.len;
		if (tl > TALLY_TENANT_BYTES_MAX)
			tl = TALLY_TENANT_BYTES_MAX;
		memcpy(tenant_out, f.u.hello_ok.tenant.ptr, tl);
		tenant_out[tl] = '\0';
	}
	ok_out->tenant = (struct tally_view){0};
	rc = set_nonblock(fd);
	if (rc)
		goto out_close;
	c->fd = fd;
	return 0;
out_close:
	close(fd);
	return rc;
}

/* Sizes the connection's buffers from the server's limits; allocates once. */
static int conn_setup(struct conn *c, const struct proto_hello_ok *ok)
{
	uint32_t fbm = ok->frame_bytes_max ? ok->frame_bytes_max : PROTO_FRAME_BYTES_DEFAULT;
	uint32_t bem = ok->batch_events_max ? ok->batch_events_max : PROTO_BATCH_EVENTS_DEFAULT;
	uint32_t ifm = ok->inflight_max ? ok->inflight_max : PROTO_INFLIGHT_DEFAULT;
	/* Largest body this generator makes: payload target, or the natural size (< 200). */
	size_t per = 2 + (o.payload_bytes > 200 ? o.payload_bytes : 200);

	if (fbm > PROTO_FRAME_BYTES_MAX)
		fbm = PROTO_FRAME_BYTES_MAX;
	c->frame_bytes_max = fbm;
	c->batch_eff = o.batch < bem ? o.batch : bem;
	size_t fit = (fbm - PROTO_HEADER_BYTES - PROTO_BATCH_HEADER_BYTES) / per;
	if (c->batch_eff > fit)
		c->batch_eff = (uint32_t)fit;
	if (c->batch_eff == 0)
		return -EINVAL;
	c->frame_limit = PROTO_HEADER_BYTES + PROTO_BATCH_HEADER_BYTES + (size_t)c->batch_eff * per;
	c->nslots = o.inflight ? o.inflight : (o.rate || o.step_count ? ifm : 8);
	if (c->nslots > ifm)
		c->nslots = ifm;
	if (c->nslots > BENCH_SLOTS_MAX)
		c->nslots = BENCH_SLOTS_MAX;
	c->scap = 2 * c->frame_limit;
	c->rcap = proto_ack_size(c->batch_eff) + BENCH_RBUF_EXTRA;
	c->sbuf = malloc(c->scap);
	c->rbuf = malloc(c->rcap);
	c->slots = calloc(c->nslots, sizeof(*c->slots));
	if (!c->sbuf || !c->rbuf || !c->slots)
		return -ENOMEM;
	for (uint32_t i = 0; i < c->nslots; i++) {
		c->slots[i].evinfo = malloc((size_t)c->batch_eff * sizeof(uint64_t));
		if (!c->slots[i].evinfo)
			return -ENOMEM;
	}

	struct bench_gen_config gc = {
		.seed = o.seed,
		.stream = c->id,
		.customers = o.customers,
		.zipf = o.zipf_milli ? &zipf : NULL,
		.payload_bytes = o.payload_bytes,
		.dup_ppm = o.dup_ppm,
		.conflict_ppm = o.conflict_ppm,
		.late_ppm = o.late_ppm,
		.skew_us = o.skew_us,
		.base_time_us = base_time_us,
		.time_step_us = 1,
		/* Resends refer to events at least this far back: normally already acknowledged. */
		.ref_lag = (c->nslots + 1) * c->batch_eff,
	};
	memcpy(gc.key_prefix, o.key_prefix, sizeof(gc.key_prefix));
	return bench_gen_init(&c->gen, &gc);
}

/* ---------------------------------------------------------------- expect records */

static struct key_rec *rec_for(struct conn *c, uint64_t j)
{
	if (j >= c->recs_cap) {
		uint64_t cap = c->recs_cap ? c->recs_cap : 65536;
		while (cap <= j)
			cap *= 2;
		struct key_rec *n = realloc(c->recs, cap * sizeof(*n));
		if (!n) {
			fprintf(stderr, "tally-bench: out of memory for --expect records\n");
			exit(1);
		}
		memset(n + c->recs_cap, 0, (cap - c->recs_cap) * sizeof(*n));
		c->recs = n;
		c->recs_cap = cap;
	}
	return &c->recs[j];
}

static void expect_receipt(struct conn *c, uint64_t info, const struct proto_receipt *r)
{
	struct stats *st = c->st;
	uint64_t j = info >> 2;
	uint8_t kind = (uint8_t)(info & 3);
	bool b = kind == BENCH_GEN_CONFLICT; /* content variant B */
	struct key_rec *k = rec_for(c, j);
	bool bad = false, planned = false;

	st->expect_checked++;
	switch (r->status) {
	case PROTO_ACCEPTED:
		if (k->flags & (KR_ACC_A | KR_ACC_B)) {
			bad = true; /* the same key stored twice */
			if (st->expect_mismatch < 5)
				fprintf(stderr, "mismatch: conn %u key #%" PRIu64 " ACCEPTED twice\n",
					c->id, j);
		}
		k->flags |= b ? KR_ACC_B : KR_ACC_A;
		planned = kind == BENCH_GEN_FRESH;
		break;
	case PROTO_DUPLICATE:
		k->flags |= b ? KR_DUP_B : KR_DUP_A;
		planned = kind == BENCH_GEN_DUP;
		break;
	case PROTO_CONFLICT:
		k->flags |= b ? KR_CON_B : KR_CON_A;
		planned = kind == BENCH_GEN_CONFLICT;
		break;
	default:
		bad = true;
		if (st->expect_mismatch < 5)
			fprintf(stderr, "mismatch: conn %u key #%" PRIu64 " %s reason %s\n", c->id,
				j, proto_status_str(r->status), event_reject_code(r->reason));
		break;
	}
	if (!bad && r->offset != PROTO_OFFSET_UNKNOWN) {
		if (!(k->flags & KR_POS)) {
			k->flags |= KR_POS;
			k->shard = r->shard;
			k->offset = r->offset;
		} else if (k->shard != r->shard || k->offset != r->offset) {
			bad = true;
			if (st->expect_mismatch < 5)
				fprintf(stderr,
					"mismatch: conn %u key #%" PRIu64 " %s at %u:%" PRIu64
					", original at %u:%" PRIu64 "\n",
					c->id, j, proto_status_str(r->status), r->shard, r->offset,
					k->shard, k->offset);
		}
	}
	if (bad)
		st->expect_mismatch++;
	else if (planned)
		st->expect_planned++;
	else
		st->expect_reordered++;
}

static void mark_uncertain(struct conn *c, const struct slot *s)
{
	if (!o.expect)
		return;
	for (uint32_t i = 0; i < s->count; i++)
		rec_for(c, s->evinfo[i] >> 2)->flags |= KR_UNCERTAIN;
}

/* End of run: every key's receipts must be consistent (see the file header). */
static void expect_final(struct stats *st)
{
	for (uint32_t ci = 0; ci < o.connections; ci++) {
		struct conn *c = &conns[ci];
		uint64_t n = c->gen.fresh_count < c->recs_cap ? c->gen.fresh_count : c->recs_cap;
		for (uint64_t j = 0; j < n; j++) {
			uint8_t f = c->recs[j].flags;
			const char *why = NULL;
			if (!(f & ~(KR_POS | KR_UNCERTAIN))) {
				if (f & KR_UNCERTAIN)
					st->expect_unverified++;
				continue;
			}
			if (!(f & (KR_ACC_A | KR_ACC_B))) {
				if (f & KR_UNCERTAIN)
					st->expect_unverified++;
				else
					why = "DUPLICATE/CONFLICT without any ACCEPTED receipt";
			} else if ((f & KR_ACC_A) && (f & (KR_DUP_B | KR_CON_A))) {
				why = "receipts disagree with the accepted (original) content";
			} else if ((f & KR_ACC_B) && (f & (KR_DUP_A | KR_CON_B))) {
				why = "receipts disagree with the accepted (conflicting) content";
			}
			if (why) {
				if (st->expect_mismatch < 10)
					fprintf(stderr, "mismatch: conn %u key #%" PRIu64 ": %s\n",
						c->id, j, why);
				st->expect_mismatch++;
			}
		}
	}
}

/* ---------------------------------------------------------------- the worker loop */

static void conn_watch(struct conn *c, bool out)
{
	struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};

	if (c->want_out != out && epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev) == 0)
		c->want_out = out;
}

static void conn_dead(struct conn *c, const char *why)
{
	if (!c->alive)
		return;
	if (!o.quiet)
		fprintf(stderr, "\ntally-bench: connection %u lost: %s\n", c->id, why);
	epoll_ctl(c->w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->alive = false;
	c->send_done = true;
	c->st->conn_lost++;
	for (uint32_t i = 0; i < c->nslots; i++) {
		struct slot *s = &c->slots[i];
		if (!s->request_id)
			continue;
		c->st->unacked_events += s->count;
		mark_uncertain(c, s);
		s->request_id = 0;
	}
	c->inflight_now = 0;
	atomic_fetch_add_explicit(&c->w->prog_errors, 1, memory_order_relaxed);
}

static void conn_flush(struct conn *c)
{
	while (c->soff < c->slen) {
		ssize_t n = write(c->fd, c->sbuf + c->soff, c->slen - c->soff);
		if (n > 0) {
			c->soff += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			conn_watch(c, true);
			return;
		}
		conn_dead(c, n < 0 ? strerror(errno) : "write returned 0");
		return;
	}
	c->soff = c->slen = 0;
	conn_watch(c, false);
}

/* Builds one BATCH of up to `n` events into the send buffer. */
static void conn_send_batch(struct conn *c, uint32_t n, int64_t intended_ns, bool measured,
			    int64_t now)
{
	uint32_t si = 0;

	while (c->slots[si].request_id)
		si++; /* a free slot exists: inflight_now < nslots */
	struct slot *s = &c->slots[si];
	uint64_t rid = (++c->req_counter << 16) | si;
	struct proto_batch_builder b;
	uint32_t bytes = 0;

	proto_batch_start(&b, c->sbuf + c->slen, c->scap - c->slen, rid);
	for (uint32_t i = 0; i < n; i++) {
		bench_gen_next(&c->gen, &c->ev);
		size_t before = b.len;
		int rc = proto_batch_add(&b, &c->ev.in);
		if (rc) {
			/* Cannot happen: the frame limit is sized for the generator's largest body. */
			fprintf(stderr, "tally-bench: proto_batch_add: %s\n", strerror(-rc));
			abort();
		}
		s->evinfo[i] = c->ev.fresh_index << 2 | c->ev.kind;
		bytes += (uint32_t)(b.len - before - 2); /* the body, without its u16 length */
	}
	long len = proto_batch_finish(&b);
	if (len <= 0) {
		fprintf(stderr, "tally-bench: proto_batch_finish: %ld\n", len);
		abort();
	}
	c->slen += (size_t)len;
	s->request_id = rid;
	s->intended_ns = intended_ns;
	s->count = n;
	s->body_bytes = bytes;
	s->measured = measured;
	if (measured)
		bench_hist_record(&c->st->lag, now > intended_ns ? (uint64_t)(now - intended_ns) / 1000 : 0);
	c->inflight_now++;
	c->phase_sent += n;
	c->st->events_sent += n;
	atomic_fetch_add_explicit(&c->w->prog_sent, n, memory_order_relaxed);
}

/* Sends what is due; *wake_ns gets the next schedule time when waiting for it. */
static void conn_pump(struct conn *c, const struct phase *ph, int64_t now, int64_t *wake_ns)
{
	bool sent = false;

	while (c->alive && !c->send_done && c->inflight_now < c->nslots) {
		int64_t due;
		if (ph->rate) {
			/* batch k is due at t0 + offset + k * batch * conns / rate seconds */
			unsigned __int128 x = (unsigned __int128)c->sched_k * c->batch_eff *
					      o.connections * NS_PER_S;
			due = ph->t0_ns + c->sched_offset_ns + (int64_t)(x / ph->rate);
			if (ph->duration_ns && due >= ph->t0_ns + ph->warmup_ns + ph->duration_ns) {
				c->send_done = true;
				break;
			}
			if (due > now) {
				if (due < *wake_ns)
					*wake_ns = due;
				break;
			}
		} else {
			due = now;
			if (ph->duration_ns && now >= ph->t0_ns + ph->warmup_ns + ph->duration_ns) {
				c->send_done = true;
				break;
			}
		}
		if (c->phase_sent >= c->quota) {
			c->send_done = true;
			break;
		}
		if (c->scap - c->slen < c->frame_limit) {
			if (c->soff) {
				memmove(c->sbuf, c->sbuf + c->soff, c->slen - c->soff);
				c->slen -= c->soff;
				c->soff = 0;
			}
			if (c->scap - c->slen < c->frame_limit)
				break; /* the socket is full: wait for EPOLLOUT */
		}
		uint64_t left = c->quota - c->phase_sent;
		uint32_t n = left < c->batch_eff ? (uint32_t)left : c->batch_eff;
		conn_send_batch(c, n, due, due >= ph->t0_ns + ph->warmup_ns, now);
		c->sched_k++;
		sent = true;
	}
	if (sent)
		conn_flush(c);
}

static void on_ack(struct conn *c, const struct proto_ack *a, int64_t now)
{
	uint32_t si = (uint32_t)(a->request_id & 0xFFFF);
	struct stats *st = c->st;

	if (si >= c->nslots || c->slots[si].request_id != a->request_id) {
		conn_dead(c, "ACK for an unknown request id");
		return;
	}
	struct slot *s = &c->slots[si];
	if (a->receipt_count != s->count) {
		conn_dead(c, "ACK receipt count differs from the batch's event count");
		return;
	}
	uint64_t dups = 0;
	for (uint32_t i = 0; i < a->receipt_count; i++) {
		struct proto_receipt r;
		proto_ack_receipt(a, i, &r);
		st->receipts[r.status <= PROTO_REJECTED ? r.status : 0]++;
		dups += r.status == PROTO_DUPLICATE;
		if (r.status == PROTO_REJECTED)
			st->rejects[r.reason < TALLY_REJECT_MAX_ ? r.reason : TALLY_REJECT_MAX_]++;
		if (o.expect)
			expect_receipt(c, s->evinfo[i], &r);
	}
	st->events_acked += s->count;
	st->batches_acked++;
	if (s->measured) {
		int64_t lat = now - s->intended_ns;
		bench_hist_record(&st->hist, lat > 0 ? (uint64_t)lat / 1000 : 0);
		st->measured_events += s->count;
		st->measured_bytes += s->body_bytes;
	}
	st->last_ack_ns = now;
	if (sec_on) { /* only when progress lines are shown */
		int64_t lat = now - s->intended_ns;
		pthread_mutex_lock(&c->w->sec_mu);
		bench_hist_record(&c->w->sec_hist, lat > 0 ? (uint64_t)lat / 1000 : 0);
		pthread_mutex_unlock(&c->w->sec_mu);
	}
	atomic_fetch_add_explicit(&c->w->prog_acked, s->count, memory_order_relaxed);
	atomic_fetch_add_explicit(&c->w->prog_dups, dups, memory_order_relaxed);
	s->request_id = 0;
	c->inflight_now--;
}

static void on_error(struct conn *c, const struct proto_errmsg *e)
{
	struct stats *st = c->st;

	st->errors[e->code <= PROTO_E_MAX_ ? e->code : 0]++;
	atomic_fetch_add_explicit(&c->w->prog_errors, 1, memory_order_relaxed);
	if (e->request_id) {
		uint32_t si = (uint32_t)(e->request_id & 0xFFFF);
		if (si < c->nslots && c->slots[si].request_id == e->request_id) {
			struct slot *s = &c->slots[si];
			st->errored_events += s->count;
			mark_uncertain(c, s);
			s->request_id = 0;
			c->inflight_now--;
		}
	}
	if (e->fatal) {
		char why[128];
		snprintf(why, sizeof(why), "ERROR %s (fatal): %.*s", proto_error_code(e->code),
			 (int)(e->message.len < 80 ? e->message.len : 80),
			 (const char *)e->message.ptr);
		conn_dead(c, why);
	}
}

static void conn_read(struct conn *c)
{
	for (;;) {
		if (c->rlen == c->rcap) {
			conn_dead(c, "receive buffer full (frame larger than expected)");
			return;
		}
		ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			conn_dead(c, n == 0 ? "closed by the server" : strerror(errno));
			return;
		}
		c->rlen += (size_t)n;
		size_t off = 0;
		int64_t now = now_ns();
		while (c->alive) {
			struct proto_frame f;
			/*
			 * Parse limit: the receive buffer, which holds the ACK of our largest batch
			 * (16 bytes per event, whatever the events' sizes: docs/protocol.md §7)
			 * plus 64 KiB; every other server frame is small.
			 */
			long r = proto_frame_parse(c->rbuf + off, c->rlen - off, (uint32_t)c->rcap,
						   c->batch_eff, &f, NULL);
			if (r == 0)
				break;
			if (r < 0) {
				char why[96];
				snprintf(why, sizeof(why), "bad frame from the server: %s",
					 proto_error_code((int)-r));
				conn_dead(c, why);
				return;
			}
			off += (size_t)r;
			if (f.type == PROTO_ACK)
				on_ack(c, &f.u.ack, now);
			else if (f.type == PROTO_ERROR)
				on_error(c, &f.u.error);
			else if (f.type != PROTO_PONG)
				conn_dead(c, "unexpected frame type from the server");
		}
		if (!c->alive)
			return;
		memmove(c->rbuf, c->rbuf + off, c->rlen - off);
		c->rlen -= off;
	}
}

static void run_phase(struct worker *w, uint32_t pi)
{
	const struct phase *ph = &phases[pi];
	struct stats *st = &w->phase_stats[pi];
	struct epoll_event evs[BENCH_EPOLL_EVENTS];
	int64_t drain_deadline = 0;

	st->measure_start_ns = ph->t0_ns + ph->warmup_ns;
	/* Every worker starts at the common t0 (the main thread set it a little ahead). */
	struct timespec t0 = {ph->t0_ns / NS_PER_S, ph->t0_ns % NS_PER_S};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t0, NULL) == EINTR)
		;
	for (uint32_t i = 0; i < w->nconns; i++) {
		struct conn *c = w->conns[i];
		c->st = st;
		c->phase_sent = 0;
		c->sched_k = 0;
		c->send_done = !c->alive;
		if (ph->events) {
			c->quota = ph->events / o.connections +
				   (c->id < ph->events % o.connections ? 1 : 0);
		} else {
			c->quota = UINT64_MAX;
		}
		/* Spread the connections' schedules over one batch interval. */
		if (ph->rate) {
			unsigned __int128 iv = (unsigned __int128)c->batch_eff * o.connections *
					       NS_PER_S / ph->rate;
			c->sched_offset_ns = (int64_t)(iv * c->id / o.connections);
		}
	}
	for (;;) {
		int64_t now = now_ns();
		int64_t wake = now + NS_PER_S / 10;
		bool sending = false, waiting = false;
		uint64_t inflight = 0;

		for (uint32_t i = 0; i < w->nconns; i++) {
			struct conn *c = w->conns[i];
			if (c->alive && !c->send_done)
				conn_pump(c, ph, now, &wake);
			sending |= c->alive && !c->send_done;
			waiting |= c->alive && c->inflight_now > 0;
			inflight += c->inflight_now;
		}
		atomic_store_explicit(&w->prog_inflight, inflight, memory_order_relaxed);
		if (!sending && !waiting)
			break;
		if (!sending) {
			if (!drain_deadline)
				drain_deadline = now + o.drain_ns;
			if (now >= drain_deadline) {
				for (uint32_t i = 0; i < w->nconns; i++)
					if (w->conns[i]->inflight_now)
						conn_dead(w->conns[i], "no ACK before the --drain timeout");
				break;
			}
			if (drain_deadline < wake)
				wake = drain_deadline;
		}
		struct timespec ts = {0, 0};
		if (wake > now) {
			ts.tv_sec = (wake - now) / NS_PER_S;
			ts.tv_nsec = (wake - now) % NS_PER_S;
		}
		int n = epoll_pwait2(w->epfd, evs, BENCH_EPOLL_EVENTS, &ts, NULL);
		for (int i = 0; i < n; i++) {
			struct conn *c = evs[i].data.ptr;
			if (!c->alive)
				continue;
			if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				conn_read(c);
			if (c->alive && (evs[i].events & EPOLLOUT))
				conn_flush(c);
		}
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;

	for (uint32_t pi = 0; pi < phase_count; pi++) {
		pthread_barrier_wait(&start_barrier);
		run_phase(w, pi);
		/* Release: main reads this phase's stats after seeing the count (acquire). */
		atomic_fetch_add_explicit(&phases_done, 1, memory_order_release);
	}
	return NULL;
}

/* ---------------------------------------------------------------- reporting */

/* "12.345" from a value in thousandths. */
static const char *fmt_milli(char *buf, size_t cap, uint64_t milli)
{
	snprintf(buf, cap, "%" PRIu64 ".%03" PRIu64, milli / 1000, milli % 1000);
	return buf;
}

/* µs as "1.234 ms" / "567 µs". */
static const char *fmt_us(char *buf, size_t cap, uint64_t us)
{
	if (us >= 1000)
		snprintf(buf, cap, "%" PRIu64 ".%03" PRIu64 " ms", us / 1000, us % 1000);
	else
		snprintf(buf, cap, "%" PRIu64 " µs", us);
	return buf;
}

static uint64_t per_sec(uint64_t n, int64_t ns)
{
	return ns > 0 ? (uint64_t)((unsigned __int128)n * NS_PER_S / (uint64_t)ns) : 0;
}

/*
 * The time the measured events are divided by: first measured send to last ACK. In an open
 * loop with a duration, at least the scheduled window: N batches are sent over N - 1 intervals,
 * so a short step would otherwise look faster than its schedule.
 */
static int64_t measure_span(const struct stats *s, const struct phase *ph)
{
	int64_t span = s->last_ack_ns - s->measure_start_ns;

	if (ph->rate && ph->duration_ns && span < ph->duration_ns)
		span = ph->duration_ns;
	return span;
}

static void stats_merge(struct stats *dst, const struct stats *src)
{
	if (bench_hist_merge(&dst->hist, &src->hist) || bench_hist_merge(&dst->lag, &src->lag))
		abort(); /* same layout by construction */
	dst->batches_acked += src->batches_acked;
	dst->events_sent += src->events_sent;
	dst->events_acked += src->events_acked;
	dst->measured_events += src->measured_events;
	dst->measured_bytes += src->measured_bytes;
	if (!dst->measure_start_ns || (src->measure_start_ns && src->measure_start_ns < dst->measure_start_ns))
		dst->measure_start_ns = src->measure_start_ns;
	if (src->last_ack_ns > dst->last_ack_ns)
		dst->last_ack_ns = src->last_ack_ns;
	for (int i = 0; i < 5; i++)
		dst->receipts[i] += src->receipts[i];
	for (int i = 0; i <= TALLY_REJECT_MAX_; i++)
		dst->rejects[i] += src->rejects[i];
	for (int i = 0; i <= PROTO_E_MAX_; i++)
		dst->errors[i] += src->errors[i];
	dst->conn_lost += src->conn_lost;
	dst->errored_events += src->errored_events;
	dst->unacked_events += src->unacked_events;
	dst->expect_checked += src->expect_checked;
	dst->expect_planned += src->expect_planned;
	dst->expect_reordered += src->expect_reordered;
	dst->expect_mismatch += src->expect_mismatch;
	dst->expect_unverified += src->expect_unverified;
}

static const uint32_t pcts[] = {500000, 900000, 990000, 999000};
static const char *const pct_names[] = {"p50", "p90", "p99", "p99.9"};

static void print_text(const struct stats *s, const struct phase *ph, int64_t wall_ns)
{
	char a[32], b[32], c[32];
	int64_t span = measure_span(s, ph);
	uint64_t eps = per_sec(s->measured_events, span);
	uint64_t mbps_milli = per_sec(s->measured_bytes, span) / 1000; /* MB/s in thousandths */

	printf("tally-bench: %s loop, %u connection(s), %u thread(s), batch %u, %u batch(es) in "
	       "flight max per connection\n",
	       ph->rate ? "open" : "closed", o.connections, o.threads, conns[0].batch_eff,
	       conns[0].nslots);
	if (ph->rate)
		printf("  target rate      %" PRIu64 " events/s\n", ph->rate);
	printf("  events           %" PRIu64 " sent, %" PRIu64 " acked (%" PRIu64
	       " measured, warm-up excluded) in %s s\n",
	       s->events_sent, s->events_acked, s->measured_events,
	       fmt_milli(a, sizeof(a), (uint64_t)(wall_ns / 1000000)));
	printf("  throughput       %" PRIu64 " events/s, %s MB/s of event bodies\n", eps,
	       fmt_milli(b, sizeof(b), mbps_milli));
	printf("  ack latency      %" PRIu64 " batches:", s->hist.total);
	for (int i = 0; i < 4; i++)
		printf(" %s %s", pct_names[i],
		       fmt_us(a, sizeof(a), bench_hist_percentile(&s->hist, pcts[i])));
	printf(" max %s\n", fmt_us(a, sizeof(a), s->hist.total ? s->hist.max : 0));
	if (ph->rate)
		printf("  send lag         p50 %s p99 %s max %s (intended -> written; included above)\n",
		       fmt_us(a, sizeof(a), bench_hist_percentile(&s->lag, 500000)),
		       fmt_us(b, sizeof(b), bench_hist_percentile(&s->lag, 990000)),
		       fmt_us(c, sizeof(c), s->lag.total ? s->lag.max : 0));
	printf("  receipts         ACCEPTED %" PRIu64 "  DUPLICATE %" PRIu64 "  CONFLICT %" PRIu64
	       "  REJECTED %" PRIu64 "\n",
	       s->receipts[PROTO_ACCEPTED], s->receipts[PROTO_DUPLICATE],
	       s->receipts[PROTO_CONFLICT], s->receipts[PROTO_REJECTED]);
	for (int i = 1; i <= TALLY_REJECT_MAX_; i++)
		if (s->rejects[i])
			printf("    rejected %-18s %" PRIu64 "\n",
			       i < TALLY_REJECT_MAX_ ? event_reject_code((enum tally_reject)i) : "other",
			       s->rejects[i]);
	uint64_t nerr = 0;
	for (int i = 0; i <= PROTO_E_MAX_; i++)
		nerr += s->errors[i];
	printf("  errors           %" PRIu64 " ERROR frame(s), %" PRIu64
	       " connection(s) lost, %" PRIu64 " event(s) errored, %" PRIu64 " unacked\n",
	       nerr, s->conn_lost, s->errored_events, s->unacked_events);
	for (int i = 0; i <= PROTO_E_MAX_; i++)
		if (s->errors[i])
			printf("    %-22s %" PRIu64 "\n", i ? proto_error_code(i) : "other", s->errors[i]);
	if (o.expect)
		printf("  expect           %" PRIu64 " receipts checked: %" PRIu64 " as planned, %" PRIu64
		       " reordered (consistent), %" PRIu64 " MISMATCH, %" PRIu64
		       " keys unverifiable\n",
		       s->expect_checked, s->expect_planned, s->expect_reordered,
		       s->expect_mismatch, s->expect_unverified);
}

static void print_json_stats(FILE *f, const struct stats *s, const struct phase *ph, int64_t wall_ns)
{
	int64_t span = measure_span(s, ph);

	fprintf(f, "{\"mode\":\"%s\",\"target_rate\":%" PRIu64 ",\"events_sent\":%" PRIu64
		   ",\"events_acked\":%" PRIu64 ",\"measured_events\":%" PRIu64
		   ",\"wall_ms\":%" PRId64 ",\"events_per_s\":%" PRIu64 ",\"body_bytes_per_s\":%" PRIu64,
		ph->rate ? "open" : "closed", ph->rate, s->events_sent, s->events_acked,
		s->measured_events, wall_ns / 1000000, per_sec(s->measured_events, span),
		per_sec(s->measured_bytes, span));
	fprintf(f, ",\"latency_us\":{\"batches\":%" PRIu64, s->hist.total);
	static const char *const jn[] = {"p50", "p90", "p99", "p999"};
	for (int i = 0; i < 4; i++)
		fprintf(f, ",\"%s\":%" PRIu64, jn[i], bench_hist_percentile(&s->hist, pcts[i]));
	fprintf(f, ",\"max\":%" PRIu64 ",\"mean\":%" PRIu64 "}", s->hist.total ? s->hist.max : 0,
		bench_hist_mean(&s->hist));
	fprintf(f, ",\"send_lag_us\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64 "}",
		bench_hist_percentile(&s->lag, 500000), bench_hist_percentile(&s->lag, 990000),
		s->lag.total ? s->lag.max : 0);
	fprintf(f, ",\"receipts\":{\"ACCEPTED\":%" PRIu64 ",\"DUPLICATE\":%" PRIu64
		   ",\"CONFLICT\":%" PRIu64 ",\"REJECTED\":%" PRIu64 "}",
		s->receipts[PROTO_ACCEPTED], s->receipts[PROTO_DUPLICATE],
		s->receipts[PROTO_CONFLICT], s->receipts[PROTO_REJECTED]);
	fprintf(f, ",\"rejects\":{");
	bool first = true;
	for (int i = 1; i <= TALLY_REJECT_MAX_; i++)
		if (s->rejects[i]) {
			fprintf(f, "%s\"%s\":%" PRIu64, first ? "" : ",",
				i < TALLY_REJECT_MAX_ ? event_reject_code((enum tally_reject)i) : "other",
				s->rejects[i]);
			first = false;
		}
	fprintf(f, "},\"errors\":{");
	first = true;
	for (int i = 0; i <= PROTO_E_MAX_; i++)
		if (s->errors[i]) {
			fprintf(f, "%s\"%s\":%" PRIu64, first ? "" : ",", i ? proto_error_code(i) : "other",
				s->errors[i]);
			first = false;
		}
	fprintf(f, "},\"connections_lost\":%" PRIu64 ",\"errored_events\":%" PRIu64
		   ",\"unacked_events\":%" PRIu64,
		s->conn_lost, s->errored_events, s->unacked_events);
	if (o.expect)
		fprintf(f, ",\"expect\":{\"checked\":%" PRIu64 ",\"as_planned\":%" PRIu64
			   ",\"reordered\":%" PRIu64 ",\"mismatches\":%" PRIu64
			   ",\"unverifiable_keys\":%" PRIu64 "}",
			s->expect_checked, s->expect_planned, s->expect_reordered, s->expect_mismatch,
			s->expect_unverified);
	fprintf(f, "}");
}

static void print_step_row(const struct stats *s, const struct phase *ph, bool header)
{
	char cells[6][32];
	int64_t span = measure_span(s, ph);
	uint64_t nerr = s->conn_lost + s->errored_events + s->unacked_events;

	if (header)
		printf("%12s %12s %10s %10s %10s %10s %10s %12s %8s\n", "target ev/s", "achieved",
		       "p50", "p90", "p99", "p99.9", "max", "send-lag p99", "errors");
	for (int i = 0; i < 4; i++)
		fmt_us(cells[i], sizeof(cells[i]), bench_hist_percentile(&s->hist, pcts[i]));
	fmt_us(cells[4], sizeof(cells[4]), s->hist.total ? s->hist.max : 0);
	fmt_us(cells[5], sizeof(cells[5]), bench_hist_percentile(&s->lag, 990000));
	printf("%12" PRIu64 " %12" PRIu64 " %10s %10s %10s %10s %10s %12s %8" PRIu64 "\n", ph->rate,
	       per_sec(s->measured_events, span), cells[0], cells[1], cells[2], cells[3], cells[4],
	       cells[5], nerr);
	fflush(stdout);
}

/* The machine's steal and total CPU ticks (/proc/stat "cpu" line); 0 and 0 if unreadable. */
static void cpu_ticks(uint64_t *steal, uint64_t *total)
{
	unsigned long long v[8] = {0};
	*steal = *total = 0;
	FILE *f = fopen("/proc/stat", "r");
	if (!f)
		return;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
		   &v[4], &v[5], &v[6], &v[7]) == 8) {
		*steal = v[7];
		for (int i = 0; i < 8; i++)
			*total += v[i];
	}
	fclose(f);
}

static void progress_line(int64_t t0, bool tty)
{
	uint64_t sent = 0, acked = 0, dups = 0, errs = 0, infl = 0;
	static uint64_t last_acked, last_steal, last_total;
	static int64_t last_ns;
	static struct bench_hist sec; /* the workers' last second, merged */
	static bool sec_ok;
	int64_t now = now_ns();

	if (!sec_ok)
		sec_ok = bench_hist_init(&sec, BENCH_HIST_HIGHEST_US_DEF) == 0;
	else
		bench_hist_reset(&sec);
	for (uint32_t i = 0; i < o.threads; i++) {
		pthread_mutex_lock(&workers[i].sec_mu);
		if (sec_ok && bench_hist_merge(&sec, &workers[i].sec_hist) != 0)
			sec_ok = false; /* cannot happen: same range; the line just goes without */
		bench_hist_reset(&workers[i].sec_hist);
		pthread_mutex_unlock(&workers[i].sec_mu);
	}
	char tail[96] = "";
	if (sec_ok && sec.total) {
		char p99[32], mx[32];
		fmt_us(p99, sizeof p99, bench_hist_percentile(&sec, 990000));
		fmt_us(mx, sizeof mx, sec.max);
		snprintf(tail, sizeof tail, "  last 1 s: p99 %s max %s", p99, mx);
	}
	uint64_t steal, total;
	cpu_ticks(&steal, &total);
	if (total > last_total && last_total && steal >= last_steal) {
		size_t l = strlen(tail);
		snprintf(tail + l, sizeof tail - l, " steal %" PRIu64 "%%",
			 (steal - last_steal) * 100 / (total - last_total));
	}
	last_steal = steal;
	last_total = total;

	for (uint32_t i = 0; i < o.threads; i++) {
		sent += atomic_load_explicit(&workers[i].prog_sent, memory_order_relaxed);
		acked += atomic_load_explicit(&workers[i].prog_acked, memory_order_relaxed);
		dups += atomic_load_explicit(&workers[i].prog_dups, memory_order_relaxed);
		errs += atomic_load_explicit(&workers[i].prog_errors, memory_order_relaxed);
		infl += atomic_load_explicit(&workers[i].prog_inflight, memory_order_relaxed);
	}
	if (!last_ns)
		last_ns = t0; /* the first line's rate covers the time since the start */
	uint64_t rate = now > last_ns && acked >= last_acked
				? per_sec(acked - last_acked, now - last_ns) : 0;
	last_acked = acked;
	last_ns = now;
	fprintf(stderr,
		"%s[%4" PRId64 "s] %" PRIu64 " ev/s  sent %" PRIu64 "  acked %" PRIu64
		"  dup %" PRIu64 ".%" PRIu64 "%%  inflight %" PRIu64 " batches  errors %" PRIu64 "%s%s",
		tty ? "\r\033[K" : "", (int64_t)((now - t0) / NS_PER_S), rate, sent, acked,
		acked ? dups * 100 / acked : 0, acked ? dups * 1000 / acked % 10 : 0, infl, errs,
		tail, tty ? "" : "\n");
}

/* ---------------------------------------------------------------- WAL verification */

static uint64_t mul_inverse(uint64_t a)
{
	uint64_t x = a; /* Newton: each step doubles the correct low bits (a odd) */

	for (int i = 0; i < 6; i++)
		x *= 2 - a * x;
	return x;
}

static uint64_t unmix64(uint64_t x)
{
	x ^= x >> 31 ^ x >> 62;
	x *= mul_inverse(0x94D049BB133111EBull);
	x ^= x >> 27 ^ x >> 54;
	x *= mul_inverse(0xBF58476D1CE4E5B9ull);
	x ^= x >> 30 ^ x >> 60;
	return x;
}

/* Maps a key made by this run's generators back to (connection, fresh index). */
static bool key_lookup(struct tally_view key, uint32_t *conn_out, uint64_t *j_out)
{
	const char *pfx = conns[0].gen.cfg.key_prefix;
	size_t pl = strlen(pfx);
	char buf[BENCH_GEN_KEY_BYTES + 1];

	if (key.len != pl + 22 || memcmp(key.ptr, pfx, pl) || key.ptr[pl] != '-' ||
	    key.ptr[pl + 5] != '-')
		return false;
	uint64_t stream = 0, h = 0;
	for (size_t i = 0; i < 4 + 16; i++) {
		uint8_t ch = key.ptr[pl + 1 + i + (i >= 4)];
		int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
		if (d < 0)
			return false;
		if (i < 4)
			stream = stream << 4 | (uint64_t)d;
		else
			h = h << 4 | (uint64_t)d;
	}
	if (stream >= o.connections)
		return false;
	const struct bench_gen *g = &conns[stream].gen;
	uint64_t j = (unmix64(h) - g->stream_seed) * mul_inverse(0x9E3779B97F4A7C15ull);
	if (j >= g->fresh_count)
		return false;
	bench_gen_key(g, j, buf);
	if (memcmp(buf, key.ptr, key.len))
		return false;
	*conn_out = (uint32_t)stream;
	*j_out = j;
	return true;
}

#if !TALLY_BENCH_HAVE_WAL_READER
static int verify_wal(const char *dir)
{
	(void)key_lookup;
	fprintf(stderr, "tally-bench: --verify-wal %s: the WAL reader is not built into this "
			"binary\n", dir);
	return 1;
}
#else
static int verify_wal(const char *dir)
{
	struct wal_reader *r;
	int rc = wal_reader_open(dir, -1, &r);
	if (rc) {
		fprintf(stderr, "tally-bench: --verify-wal %s: %s\n", dir, strerror(-rc));
		return 1;
	}
	uint64_t records = 0, ours = 0, foreign = 0, twice = 0, wrong_pos = 0, not_accepted = 0;
	uint64_t wrong_content = 0, missing = 0, dup_orig_missing = 0, accepted = 0;
	struct wal_record rec;
	static struct bench_gen_event e;
	uint8_t body[TALLY_EVENT_BYTES_MAX];

	while ((rc = wal_reader_next(r, &rec)) == 1) {
		records++;
		if (rec.kind != WAL_RECORD_EVENT)
			continue;
		uint32_t ci;
		uint64_t j;
		if (!key_lookup(rec.ev.key, &ci, &j)) {
			foreign++;
			continue;
		}
		ours++;
		struct key_rec *k = j < conns[ci].recs_cap ? &conns[ci].recs[j] : NULL;
		if (!k || !(k->flags & (KR_ACC_A | KR_ACC_B))) {
			/* In the WAL but never ACCEPTED to us: allowed only if its ACK was lost. */
			if (!k || !(k->flags & KR_UNCERTAIN))
				not_accepted++;
			if (k && k->wal_seen < 255)
				k->wal_seen++;
			continue;
		}
		if (k->wal_seen++) {
			twice++;
			continue;
		}
		if ((k->flags & KR_POS) && (k->shard != rec.shard || k->offset != rec.offset))
			wrong_pos++;
		/* The stored body must be exactly the variant that was accepted. */
		bench_gen_fresh(&conns[ci].gen, j, (k->flags & KR_ACC_B) ? 1 : 0, &e);
		long n = event_encode(&e.in, body, sizeof(body));
		if (n <= 0 || (uint32_t)n != rec.ev.body.len || memcmp(body, rec.ev.body.ptr, (size_t)n))
			wrong_content++;
	}
	wal_reader_close(r);
	if (rc < 0) {
		fprintf(stderr, "tally-bench: --verify-wal: reading the WAL: %s\n", strerror(-rc));
		return 1;
	}
	for (uint32_t ci = 0; ci < o.connections; ci++) {
		struct conn *c = &conns[ci];
		uint64_t n = c->gen.fresh_count < c->recs_cap ? c->gen.fresh_count : c->recs_cap;
		for (uint64_t j = 0; j < n; j++) {
			const struct key_rec *k = &c->recs[j];
			if (k->flags & (KR_ACC_A | KR_ACC_B)) {
				accepted++;
				if (!k->wal_seen)
					missing++;
			} else if ((k->flags & (KR_DUP_A | KR_DUP_B | KR_CON_A | KR_CON_B)) &&
				   !k->wal_seen) {
				dup_orig_missing++;
			}
		}
	}
	uint64_t bad = twice + wrong_pos + not_accepted + wrong_content + missing + dup_orig_missing;
	printf("verify-wal %s: %" PRIu64 " records read, %" PRIu64 " events of this run, %" PRIu64
	       " from elsewhere\n", dir, records, ours, foreign);
	printf("  accepted keys %" PRIu64 ": missing from the WAL %" PRIu64 ", stored twice %" PRIu64
	       ", at another position %" PRIu64 ", other content %" PRIu64 "\n",
	       accepted, missing, twice, wrong_pos, wrong_content);
	printf("  in the WAL but never acknowledged %" PRIu64 ", duplicates whose original is "
	       "missing %" PRIu64 "\n", not_accepted, dup_orig_missing);
	printf("  verify-wal: %s\n", bad ? "MISMATCH" : "ok");
	return bad ? 1 : 0;
}
#endif

/* ---------------------------------------------------------------- main */

/* Frees what main() allocated (so that leak checkers see a clean exit). */
static void cleanup(void)
{
	for (uint32_t t = 0; t < o.threads; t++) {
		struct worker *w = &workers[t];
		for (uint32_t pi = 0; pi < phase_count && w->phase_stats; pi++) {
			bench_hist_free(&w->phase_stats[pi].hist);
			bench_hist_free(&w->phase_stats[pi].lag);
		}
		free(w->phase_stats);
		free(w->conns);
		bench_hist_free(&w->sec_hist);
		if (w->epfd > 0)
			close(w->epfd);
	}
	for (uint32_t i = 0; i < o.connections; i++) {
		struct conn *c = &conns[i];
		if (c->alive)
			close(c->fd);
		for (uint32_t k = 0; k < c->nslots && c->slots; k++)
			free(c->slots[k].evinfo);
		free(c->slots);
		free(c->sbuf);
		free(c->rbuf);
		free(c->recs);
	}
	free(workers);
	free(conns);
	bench_gen_zipf_free(&zipf);
}

static void on_sigint(int sig)
{
	(void)sig;
	_exit(130);
}

int main(int argc, char **argv)
{
	int exit_code = 0;

	if (parse_args(argc, argv))
		return 2;
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_sigint);
	if (o.zipf_milli && bench_gen_zipf_build(&zipf, o.customers, o.zipf_milli)) {
		fprintf(stderr, "tally-bench: cannot build the Zipf table\n");
		return 2;
	}

	conns = calloc(o.connections, sizeof(*conns));
	workers = calloc(o.threads, sizeof(*workers));
	if (!conns || !workers)
		return 1;
	for (uint32_t i = 0; i < o.connections; i++) {
		struct proto_hello_ok ok = {0};
		conns[i].id = i;
		if (conn_open(&conns[i], &ok, i == 0 ? server_tenant : NULL))
			return 3;
		if (i == 0) {
			server = ok;
			base_time_us = o.base_time_us ? o.base_time_us : wall_us();
			/* Late events must stay inside the broker's accepted window. */
			if (o.late_ppm && ok.max_age_us > 0 && o.skew_us >= ok.max_age_us / 2) {
				o.skew_us = ok.max_age_us / 2;
				fprintf(stderr, "tally-bench: --skew lowered to %" PRId64
						" s (half the broker's max event age)\n",
					o.skew_us / 1000000);
			}
		}
		if (conn_setup(&conns[i], &ok)) {
			fprintf(stderr, "tally-bench: cannot set up connection %u\n", i);
			return 2;
		}
		conns[i].alive = true;
	}

	if (o.step_count) {
		for (uint32_t i = 0; i < o.step_count; i++)
			phases[i] = (struct phase){o.steps[i], o.events, o.duration_ns, o.warmup_ns, 0};
		phase_count = o.step_count;
	} else {
		phases[0] = (struct phase){o.rate, o.events, o.duration_ns, o.warmup_ns, 0};
		phase_count = 1;
	}

	/* Before the workers start (pthread_create orders it): progress lines shown, so the
	   workers keep the per-second histograms. */
	sec_on = !o.quiet && (isatty(STDERR_FILENO) || o.progress);
	pthread_barrier_init(&start_barrier, NULL, o.threads + 1);
	for (uint32_t t = 0; t < o.threads; t++) {
		struct worker *w = &workers[t];
		w->id = t;
		w->epfd = epoll_create1(EPOLL_CLOEXEC);
		w->conns = calloc(o.connections, sizeof(*w->conns));
		w->phase_stats = calloc(phase_count, sizeof(*w->phase_stats));
		if (w->epfd < 0 || !w->conns || !w->phase_stats)
			return 1;
		pthread_mutex_init(&w->sec_mu, NULL);
		if (bench_hist_init(&w->sec_hist, BENCH_HIST_HIGHEST_US_DEF))
			return 1;
		for (uint32_t pi = 0; pi < phase_count; pi++)
			if (bench_hist_init(&w->phase_stats[pi].hist, BENCH_HIST_HIGHEST_US_DEF) ||
			    bench_hist_init(&w->phase_stats[pi].lag, BENCH_HIST_HIGHEST_US_DEF))
				return 1;
		for (uint32_t i = t; i < o.connections; i += o.threads) {
			struct conn *c = &conns[i];
			struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
			c->w = w;
			if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev))
				return 1;
			w->conns[w->nconns++] = c;
		}
		if (pthread_create(&w->thread, NULL, worker_main, w))
			return 1;
	}

	bool tty = isatty(STDERR_FILENO);
	bool show = !o.quiet && (tty || o.progress);
	struct stats total_all;
	memset(&total_all, 0, sizeof(total_all));
	if (bench_hist_init(&total_all.hist, BENCH_HIST_HIGHEST_US_DEF) ||
	    bench_hist_init(&total_all.lag, BENCH_HIST_HIGHEST_US_DEF))
		return 1;
	int64_t run_start = now_ns();
	if (o.json)
		printf("{\"connections\":%u,\"threads\":%u,\"batch\":%u,\"seed\":%" PRIu64
		       ",\"payload_bytes\":%u,\"dup_ppm\":%u,\"conflict_ppm\":%u,\"late_ppm\":%u"
		       ",\"tenant\":\"",
		       o.connections, o.threads, conns[0].batch_eff, o.seed, o.payload_bytes,
		       o.dup_ppm, o.conflict_ppm, o.late_ppm);
	if (o.json) {
		/* The tenant comes from the server: escape everything that is not plain ASCII. */
		for (const unsigned char *t = (const unsigned char *)server_tenant; *t; t++)
			if (*t < 0x20 || *t >= 0x7f || *t == '"' || *t == '\\')
				printf("\\u%04x", *t);
			else
				putchar(*t);
		printf("\",\"phases\":[");
	}
	for (uint32_t pi = 0; pi < phase_count; pi++) {
		phases[pi].t0_ns = now_ns() + NS_PER_S / 100;
		pthread_barrier_wait(&start_barrier);
		int64_t next_progress = phases[pi].t0_ns + NS_PER_S;
		while (atomic_load_explicit(&phases_done, memory_order_acquire) <
		       (pi + 1) * o.threads) {
			struct timespec ts = {0, 20 * 1000000};
			nanosleep(&ts, NULL);
			if (show && now_ns() >= next_progress) {
				progress_line(run_start, tty);
				next_progress += NS_PER_S;
			}
		}
		if (show && tty)
			fprintf(stderr, "\r\033[K");
		struct stats ps;
		memset(&ps, 0, sizeof(ps));
		if (bench_hist_init(&ps.hist, BENCH_HIST_HIGHEST_US_DEF) ||
		    bench_hist_init(&ps.lag, BENCH_HIST_HIGHEST_US_DEF))
			return 1;
		for (uint32_t t = 0; t < o.threads; t++)
			stats_merge(&ps, &workers[t].phase_stats[pi]);
		int64_t wall = now_ns() - phases[pi].t0_ns;
		if (o.json) {
			if (pi)
				printf(",");
			print_json_stats(stdout, &ps, &phases[pi], wall);
		} else if (o.step_count) {
			print_step_row(&ps, &phases[pi], pi == 0);
		} else {
			print_text(&ps, &phases[pi], wall);
		}
		stats_merge(&total_all, &ps);
		bench_hist_free(&ps.hist);
		bench_hist_free(&ps.lag);
	}
	for (uint32_t t = 0; t < o.threads; t++)
		pthread_join(workers[t].thread, NULL);

	if (o.expect) {
		expect_final(&total_all);
		bool lost = total_all.unacked_events || total_all.errored_events;
		bool fail = total_all.expect_mismatch || lost;
		FILE *f = o.json ? stderr : stdout;
		fprintf(f, "expect: %" PRIu64 " receipts checked, %" PRIu64 " as planned, %" PRIu64
			   " reordered, %" PRIu64 " mismatches, %" PRIu64
			   " unverifiable keys (errored/unacked batches): %s\n",
			total_all.expect_checked, total_all.expect_planned,
			total_all.expect_reordered, total_all.expect_mismatch,
			total_all.expect_unverified, fail ? "FAIL" : "ok");
		if (fail)
			exit_code = 1;
	}
	if (o.json)
		printf("],\"expect_failed\":%s}\n", exit_code ? "true" : "false");
	fflush(stdout);
	if (o.verify_wal) {
		if (o.json) /* keep stdout valid JSON: the WAL report goes to stderr */
			fflush(stdout), dup2(STDERR_FILENO, STDOUT_FILENO);
		if (verify_wal(o.verify_wal))
			exit_code = 1;
	}
	bench_hist_free(&total_all.hist);
	bench_hist_free(&total_all.lag);
	cleanup();
	return exit_code;
}
