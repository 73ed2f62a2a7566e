/*
 * bench/bench_proto.c — encode and decode cost per event of the wire codec, for a realistic
 * usage event (~150 bytes on the wire, 3 properties) in BATCHes of 1000.
 *
 *   encode = proto_batch_start + 1000 x proto_batch_add (event_encode) + proto_batch_finish
 *            (which checksums the frame)
 *   decode = proto_frame_parse (header, checksum, batch framing) + 1000 x (proto_batch_next +
 *            event_decode + walk every property)
 * Each run times `--batches` batches; the figure printed is the median over `--runs` runs
 * (min and max too), as wall-clock time and as the thread's CPU time (the latter is steadier
 * on a shared, loaded machine: time spent descheduled is not counted). Single thread, no I/O.
 * Prints figures; asserts nothing about speed.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tally/event.h"
#include "tally/protocol.h"

#define BENCH_BATCH_EVENTS 1000

static uint64_t bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t bench_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static char g_keys[BENCH_BATCH_EVENTS][32];
static struct tally_prop g_props[BENCH_BATCH_EVENTS][3];
static struct tally_event_in g_in[BENCH_BATCH_EVENTS];

static void make_events(void)
{
	for (int i = 0; i < BENCH_BATCH_EVENTS; i++) {
		snprintf(g_keys[i], sizeof(g_keys[i]), "evt_01HZX3K8Q2M4N6P%06d", i); /* 24 */
		struct tally_prop *p = g_props[i];
		p[0] = (struct tally_prop){.key = {(const uint8_t *)"completion_tokens", 17},
					   .kind = TALLY_VALUE_INT,
					   .i64 = 100 + i};
		p[1] = (struct tally_prop){.key = {(const uint8_t *)"model", 5},
					   .kind = TALLY_VALUE_STRING,
					   .str = {(const uint8_t *)"gpt-4o-2024-08-06", 17}};
		p[2] = (struct tally_prop){.key = {(const uint8_t *)"cost_usd", 8},
					   .kind = TALLY_VALUE_DECIMAL,
					   .scale = 6,
					   .i64 = 1500 + i};
		g_in[i] = (struct tally_event_in){
			.key = {(const uint8_t *)g_keys[i], 24},
			.customer = {(const uint8_t *)"cus_000123", 10},
			.name = {(const uint8_t *)"openai.chat.completion.tokens", 29},
			.event_time_us = 1763700000000000 + i,
			.prop_count = 3,
			.props = p,
		};
	}
}

static long encode_batch(uint8_t *buf, size_t cap, uint64_t rid)
{
	struct proto_batch_builder b;
	proto_batch_start(&b, buf, cap, rid);
	for (int i = 0; i < BENCH_BATCH_EVENTS; i++)
		if (proto_batch_add(&b, &g_in[i]) != 0)
			return -1;
	return proto_batch_finish(&b);
}

/* Returns a checksum of what was read so the compiler cannot drop the work; -1 on error. */
static int64_t decode_batch(const uint8_t *buf, size_t len)
{
	struct proto_frame f;
	long n = proto_frame_parse(buf, len, PROTO_FRAME_BYTES_DEFAULT, PROTO_BATCH_EVENTS_DEFAULT,
				   &f, NULL);
	if (n != (long)len || f.type != PROTO_BATCH)
		return -1;
	struct proto_batch_iter it;
	struct tally_view body;
	int64_t sum = 0;
	proto_batch_iter_init(&f.u.batch, &it);
	while (proto_batch_next(&it, &body)) {
		struct tally_event ev;
		if (event_decode(body.ptr, body.len, &ev) != TALLY_REJECT_NONE)
			return -1;
		struct tally_prop_iter pi;
		struct tally_prop p;
		event_prop_iter_init(&ev, &pi);
		while (event_prop_next(&pi, &p))
			sum += p.i64 + p.str.len + p.key.len;
		sum += ev.event_time_us & 0xFF;
	}
	return sum;
}

static void usage(FILE *o)
{
	fprintf(o, "usage: bench_proto [--runs N] [--batches N]\n"
		   "Encode and decode ns/event of the tally wire codec for a ~150-byte event with 3\n"
		   "properties, in batches of %d. Prints the median of N runs (default 7 runs of\n"
		   "200 batches).\n",
		BENCH_BATCH_EVENTS);
}

int main(int argc, char **argv)
{
	int runs = 7, batches = 200;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
			runs = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--batches") && i + 1 < argc) {
			batches = atoi(argv[++i]);
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (runs < 1 || runs > 101 || batches < 1) {
		usage(stderr);
		return 2;
	}
	make_events();
	static uint8_t buf[PROTO_FRAME_BYTES_DEFAULT];
	long len = encode_batch(buf, sizeof(buf), 1);
	if (len <= 0) {
		fprintf(stderr, "bench_proto: encoding failed\n");
		return 1;
	}
	size_t ev_bytes = event_encoded_size(&g_in[0]);
	printf("bench_proto: event body %zu bytes (+2 length prefix), batch frame %ld bytes, "
	       "%d events/batch, %d runs x %d batches\n",
	       ev_bytes, len, BENCH_BATCH_EVENTS, runs, batches);

	double enc[101], dec[101], par[101], enc_cpu[101], dec_cpu[101];
	int64_t sink = 0;
	for (int r = 0; r < runs; r++) {
		uint64_t c0 = bench_cpu_ns(), t0 = bench_now_ns();
		for (int b = 0; b < batches; b++)
			sink += encode_batch(buf, sizeof(buf), (uint64_t)b);
		uint64_t c1 = bench_cpu_ns(), t1 = bench_now_ns();
		for (int b = 0; b < batches; b++) {
			int64_t s = decode_batch(buf, (size_t)len);
			if (s < 0) {
				fprintf(stderr, "bench_proto: decoding failed\n");
				return 1;
			}
			sink += s;
		}
		uint64_t c2 = bench_cpu_ns(), t2 = bench_now_ns();
		for (int b = 0; b < batches; b++) {
			struct proto_frame f;
			sink += proto_frame_parse(buf, (size_t)len, PROTO_FRAME_BYTES_DEFAULT,
						  PROTO_BATCH_EVENTS_DEFAULT, &f, NULL);
		}
		uint64_t t3 = bench_now_ns();
		double nev = (double)batches * BENCH_BATCH_EVENTS;
		enc[r] = (double)(t1 - t0) / nev;
		dec[r] = (double)(t2 - t1) / nev;
		par[r] = (double)(t3 - t2) / nev;
		enc_cpu[r] = (double)(c1 - c0) / nev;
		dec_cpu[r] = (double)(c2 - c1) / nev;
	}
	qsort(enc, (size_t)runs, sizeof(double), cmp_double);
	qsort(dec, (size_t)runs, sizeof(double), cmp_double);
	qsort(par, (size_t)runs, sizeof(double), cmp_double);
	qsort(enc_cpu, (size_t)runs, sizeof(double), cmp_double);
	qsort(dec_cpu, (size_t)runs, sizeof(double), cmp_double);
	printf("encode: median %.1f ns/event (min %.1f, max %.1f)  = %.0f MB/s\n", enc[runs / 2],
	       enc[0], enc[runs - 1], (double)len / BENCH_BATCH_EVENTS / enc[runs / 2] * 1e3);
	printf("decode: median %.1f ns/event (min %.1f, max %.1f)  = %.0f MB/s\n", dec[runs / 2],
	       dec[0], dec[runs - 1], (double)len / BENCH_BATCH_EVENTS / dec[runs / 2] * 1e3);
	printf("cpu time: encode median %.1f ns/event, decode median %.1f ns/event\n",
	       enc_cpu[runs / 2], dec_cpu[runs / 2]);
	printf("  of which frame parse (header, checksum, batch framing): median %.1f ns/event\n",
	       par[runs / 2]);
	printf("(sink %" PRId64 ")\n", sink & 1);
	return 0;
}
