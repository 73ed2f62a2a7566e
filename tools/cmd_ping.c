/*
 * cmd_ping.c — `tally ping`: is a tallyd there, does it take this API key, and how long is a
 * round trip? Connects (HELLO with the key), prints what the server said about itself (tenant,
 * shards, limits, its clock against ours), then sends --count PINGs one at a time and reports
 * each PONG's round trip. For scripts and health checks: exit 0 only if every PING was
 * answered. Nothing is written to the server's WAL.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tally/client.h"
#include "tools/cmds.h"

#define PING_COUNT_MAX 100000u

static void usage(FILE *f)
{
	fprintf(f,
		"usage: tally ping [options]\n"
		"\n"
		"Connects to a tallyd (HELLO with the API key), prints the tenant, shards and limits\n"
		"it answered with and its clock against this machine's, then sends PINGs one at a\n"
		"time and prints each round trip. Stores nothing.\n"
		"\n"
		"options:\n"
		"  --connect HOST:PORT  tallyd address (default 127.0.0.1:7878)\n"
		"  --api-key KEY        API key (default: $TALLY_API_KEY)\n"
		"  --count N            PINGs to send (default 3; 0 = only connect)\n"
		"  --interval MS        pause between PINGs (default 200)\n"
		"  --timeout MS         connect and per-PING timeout (default 5000)\n"
		"  --quiet              print only the summary line\n"
		"  --help               this text\n"
		"\n"
		"exit status: 0 connected and every PING answered; 1 could not connect, the key\n"
		"was refused, or a PING went unanswered; 2 usage.\n");
}

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static bool parse_num(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || *end || end == s || s[0] == '-' || v > max)
		return false;
	*out = v;
	return true;
}

int tally_cmd_ping(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"connect", required_argument, NULL, 'c'}, {"api-key", required_argument, NULL, 'k'},
		{"count", required_argument, NULL, 'n'},   {"interval", required_argument, NULL, 'i'},
		{"timeout", required_argument, NULL, 't'}, {"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
	};
	char host[256] = "127.0.0.1";
	uint16_t port = TALLY_CLIENT_PORT_DEFAULT;
	const char *api_key = getenv("TALLY_API_KEY");
	unsigned long count = 3, interval_ms = 200, timeout_ms = 5000;
	bool quiet = false;
	int opt;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "c:k:n:i:t:qh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			if (tally_cli_parse_connect(optarg, host, sizeof(host), &port) < 0) {
				fprintf(stderr, "tally ping: --connect wants HOST:PORT, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case 'k': api_key = optarg; break;
		case 'n':
			if (!parse_num(optarg, PING_COUNT_MAX, &count)) {
				fprintf(stderr, "tally ping: --count wants 0..%u, got \"%s\"\n",
					PING_COUNT_MAX, optarg);
				return 2;
			}
			break;
		case 'i':
			if (!parse_num(optarg, 3600000, &interval_ms)) {
				fprintf(stderr, "tally ping: --interval wants 0..3600000 (ms), got \"%s\"\n",
					optarg);
				return 2;
			}
			break;
		case 't':
			if (!parse_num(optarg, 3600000, &timeout_ms) || timeout_ms == 0) {
				fprintf(stderr, "tally ping: --timeout wants 1..3600000 (ms), got \"%s\"\n",
					optarg);
				return 2;
			}
			break;
		case 'q': quiet = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "tally ping: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		return 2;
	}

	struct tally_client_options o = {.host = host, .port = port, .api_key = api_key,
					 .client_name = "tally-ping",
					 .connect_timeout_ms = (uint32_t)timeout_ms,
					 .io_timeout_ms = (uint32_t)timeout_ms};
	struct tally_client *c = NULL;
	int64_t t0 = mono_ns(), before_us = wall_us();
	int rc = tally_client_connect(&o, &c);
	int64_t hello_ns = mono_ns() - t0, after_us = wall_us();
	if (rc < 0) {
		fprintf(stderr, "tally ping: %s:%u: %s\n", host, port, tally_client_last_error(c));
		tally_client_close(c);
		return 1;
	}
	const struct tally_client_limits *l = tally_client_limits(c);
	/* The server stamped its clock between our send and our receipt of HELLO_OK: compare it
	   with the middle of that span (error at most half the round trip). */
	int64_t skew_us = l->server_time_us - (before_us + (after_us - before_us) / 2);
	if (!quiet)
		printf("tallyd at %s:%u: protocol %u, tenant \"%s\", %u shards; batches up to %" PRIu32
		       " events / %" PRIu32 " bytes, %" PRIu32 " in flight; HELLO in %.3f ms; "
		       "its clock %+.3f ms from ours (±%.3f)\n",
		       host, port, l->version, l->tenant, l->shard_count, l->batch_events_max,
		       l->frame_bytes_max, l->inflight_max, (double)hello_ns / 1e6,
		       (double)skew_us / 1e3, (double)(after_us - before_us) / 2e3);

	int64_t *rtt = count ? calloc(count, sizeof *rtt) : NULL;
	if (count && !rtt) {
		fprintf(stderr, "tally ping: out of memory\n");
		tally_client_close(c);
		return 1;
	}
	unsigned long answered = 0;
	const char *why = NULL;
	for (unsigned long i = 0; i < count; i++) {
		if (i && interval_ms) {
			struct timespec ts = {(time_t)(interval_ms / 1000),
					      (long)(interval_ms % 1000) * 1000000};
			while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
				;
		}
		int64_t s = mono_ns();
		rc = tally_client_ping(c);
		int64_t d = mono_ns() - s;
		if (rc < 0) {
			why = tally_client_last_error(c);
			if (!quiet)
				printf("PING %lu: no PONG: %s\n", i + 1, why);
			break; /* the connection is broken after a timeout or an error */
		}
		rtt[answered++] = d;
		if (!quiet)
			printf("PONG %lu: %.3f ms\n", i + 1, (double)d / 1e6);
	}
	if (count == 0) {
		printf("connected to tallyd at %s:%u as tenant \"%s\" (HELLO in %.3f ms)\n", host, port,
		       l->tenant, (double)hello_ns / 1e6);
	} else if (answered) {
		qsort(rtt, answered, sizeof *rtt, cmp_i64);
		printf("%lu PING(s), %lu PONG(s): round trip min/median/max %.3f/%.3f/%.3f ms\n", count,
		       answered, (double)rtt[0] / 1e6, (double)rtt[(answered - 1) / 2] / 1e6,
		       (double)rtt[answered - 1] / 1e6);
	} else {
		printf("%lu PING(s), 0 PONG(s)%s%s\n", count, why ? ": " : "", why ? why : "");
	}
	free(rtt);
	tally_client_close(c);
	return answered == count ? 0 : 1;
}
