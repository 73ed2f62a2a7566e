/*
 * tests/proto_corpus.c — writes the seed corpus of fuzz_proto: ~25 small valid and edge frames
 * (and bare event bodies), built with the real encoders where the frame is valid and by hand
 * where it is not. Its output is committed in tests/fuzz/corpus/proto/; rerun it after a
 * format change:   build/bin/proto_corpus tests/fuzz/corpus/proto
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_testlib.h"
#include "tally/event.h"
#include "tally/protocol.h"

static const char *g_dir;
static int g_files;

static void put(const char *name, const uint8_t *b, size_t n)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", g_dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(b, 1, n, f) != n || fclose(f) != 0) {
		fprintf(stderr, "proto_corpus: %s: %s\n", path, strerror(errno));
		exit(1);
	}
	g_files++;
}

static void must(long rc, const char *what)
{
	if (rc < 0) {
		fprintf(stderr, "proto_corpus: %s failed: %ld\n", what, rc);
		exit(1);
	}
}

static struct tally_prop g_props[3];
static struct tally_event_in realistic(const char *key)
{
	g_props[0] = (struct tally_prop){.key = proto_t_sv("tokens"), .kind = TALLY_VALUE_INT, .i64 = 1234};
	g_props[1] = (struct tally_prop){.key = proto_t_sv("model"),
					 .kind = TALLY_VALUE_STRING,
					 .str = proto_t_sv("gpt-4o")};
	g_props[2] = (struct tally_prop){.key = proto_t_sv("cost"),
					 .kind = TALLY_VALUE_DECIMAL,
					 .scale = 6,
					 .i64 = 18510};
	return (struct tally_event_in){.key = proto_t_sv(key),
				       .customer = proto_t_sv("cus_000123"),
				       .name = proto_t_sv("ai.tokens"),
				       .event_time_us = 1763700000000000,
				       .prop_count = 3,
				       .props = g_props};
}

int main(int argc, char **argv)
{
	if (argc != 2 || strcmp(argv[1], "--help") == 0) {
		fprintf(argc == 2 ? stdout : stderr,
			"usage: proto_corpus DIR\n"
			"Writes the fuzz_proto seed corpus (valid and edge frames) into DIR.\n");
		return argc == 2 ? 0 : 2;
	}
	g_dir = argv[1];
	static uint8_t b[65536], t[65536];
	static struct proto_wb w;
	long n;

	struct proto_hello h = {.version = 1,
				.frame_bytes_max = 0,
				.client_name = proto_t_sv("tally-send/0.1"),
				.api_key = proto_t_sv("tk_test_123")};
	n = proto_encode_hello(b, sizeof(b), &h);
	must(n, "hello");
	put("hello", b, (size_t)n);
	size_t hello_n = (size_t)n;

	struct proto_hello_ok ok = {.version = 1,
				    .shard_count = 4,
				    .frame_bytes_max = PROTO_FRAME_BYTES_DEFAULT,
				    .batch_events_max = PROTO_BATCH_EVENTS_DEFAULT,
				    .inflight_max = PROTO_INFLIGHT_DEFAULT,
				    .server_time_us = 1763700000000000,
				    .max_future_us = 300000000,
				    .max_age_us = 3024000000000,
				    .tenant = proto_t_sv("acme")};
	n = proto_encode_hello_ok(b, sizeof(b), &ok);
	must(n, "hello_ok");
	put("hello_ok", b, (size_t)n);

	struct proto_batch_builder bb;
	struct tally_event_in ev = realistic("ai_01HZX3K8Q2M4N6P8R0S2T4V6");
	proto_batch_start(&bb, b, sizeof(b), 1);
	must(proto_batch_add(&bb, &ev), "batch add");
	n = proto_batch_finish(&bb);
	must(n, "batch1");
	put("batch1", b, (size_t)n);
	size_t batch_n = (size_t)n;
	memcpy(t, b, batch_n);

	/* truncated batch (need more) and the same batch with a flipped body byte */
	put("batch1_truncated", b, batch_n - 7);
	b[40] ^= 0x20;
	put("batch1_bad_checksum", b, batch_n);

	/* a batch of three: the middle one has a forbidden name byte */
	w.n = 0;
	wb_event_head(&w, 1000, "k2", 2, "cus_1", 5, "api call", 8, 0);
	proto_batch_start(&bb, b, sizeof(b), 2);
	ev = realistic("k1");
	must(proto_batch_add(&bb, &ev), "add");
	must(proto_batch_add_raw(&bb, w.b, w.n), "add raw");
	ev = realistic("k3");
	ev.prop_count = 0;
	must(proto_batch_add(&bb, &ev), "add");
	n = proto_batch_finish(&bb);
	must(n, "batch3");
	put("batch3_middle_rejected", b, (size_t)n);

	/* one event with 32 properties of all kinds, including extremes and UTF-8 keys */
	{
		static struct tally_prop p[32];
		static char keys[32][16];
		for (int i = 0; i < 32; i++) {
			snprintf(keys[i], sizeof(keys[i]), i % 5 ? "p%02d" : "\xC3\xA9t%02d", i);
			p[i].key = proto_t_sv(keys[i]);
			p[i].kind = (uint8_t)(1 + i % 3);
			p[i].scale = (uint8_t)(i % 19);
			p[i].i64 = i % 2 ? INT64_MIN : INT64_MAX;
			p[i].str = proto_t_sv(i % 4 ? "v" : "");
		}
		ev = realistic("k32");
		ev.props = p;
		ev.prop_count = 32;
		ev.customer = proto_t_sv("cust\xE2\x82\xAC\xF0\x9F\x98\x80");
		ev.name = proto_t_sv("Az09._:-");
		proto_batch_start(&bb, b, sizeof(b), UINT64_MAX);
		must(proto_batch_add(&bb, &ev), "add 32");
		n = proto_batch_finish(&bb);
		must(n, "batch32");
		put("batch_32_props", b, (size_t)n);
	}

	/* ACK with every status */
	struct proto_ack_builder ab;
	proto_ack_start(&ab, b, sizeof(b), 2);
	const struct proto_receipt r[4] = {
		{PROTO_ACCEPTED, 0, 1, 4096},
		{PROTO_DUPLICATE, 0, 0, PROTO_OFFSET_UNKNOWN},
		{PROTO_CONFLICT, 0, 3, 12},
		{PROTO_REJECTED, TALLY_REJECT_NAME_CHAR, 0, PROTO_OFFSET_UNKNOWN},
	};
	for (int i = 0; i < 4; i++)
		must(proto_ack_add(&ab, &r[i]), "ack add");
	n = proto_ack_finish(&ab);
	must(n, "ack");
	put("ack4", b, (size_t)n);

	n = proto_encode_error(b, sizeof(b), PROTO_E_DISK_FULL, false, 7, "WAL out of space");
	must(n, "error");
	put("error", b, (size_t)n);
	n = proto_encode_ping(b, sizeof(b), PROTO_PING, 0x1122334455667788ull);
	must(n, "ping");
	put("ping", b, (size_t)n);
	n = proto_encode_ping(b, sizeof(b), PROTO_PONG, 0x1122334455667788ull);
	must(n, "pong");
	put("pong", b, (size_t)n);

	/* pipelined: HELLO, BATCH, PING in one input */
	{
		size_t off = 0;
		n = proto_encode_hello(b, sizeof(b), &h);
		off += (size_t)n;
		memcpy(b + off, t, batch_n);
		off += batch_n;
		n = proto_encode_ping(b + off, sizeof(b) - off, PROTO_PING, 1);
		off += (size_t)n;
		put("pipeline", b, off);
	}
	(void)hello_n;

	/* hand-made invalid frames */
	static const uint8_t eight[8] = {1, 2, 3, 4, 5, 6, 7, 8};
	n = (long)proto_t_frame(b, 0x50545448, 1, PROTO_PING, 0, 8, eight, 8);
	put("bad_magic", b, (size_t)n);
	n = (long)proto_t_frame(b, PROTO_MAGIC, 1, PROTO_BATCH, 0, UINT32_MAX, NULL, 0);
	put("body_len_max", b, (size_t)n);
	n = (long)proto_t_frame(b, PROTO_MAGIC, 1, 9, 0, 8, eight, 8);
	put("unknown_type", b, (size_t)n);
	n = (long)proto_t_frame(b, PROTO_MAGIC, 1, PROTO_PING, 1, 8, eight, 8);
	put("bad_flags", b, (size_t)n);
	w.n = 0;
	wb_u64(&w, 5);
	wb_u32(&w, 0);
	n = (long)proto_t_frame_ok(b, PROTO_BATCH, w.b, w.n);
	put("batch_empty", b, (size_t)n);
	w.n = 0;
	wb_u64(&w, 5);
	wb_u32(&w, 3); /* count past the bytes */
	wb_u16(&w, 2);
	wb_u16(&w, 0);
	n = (long)proto_t_frame_ok(b, PROTO_BATCH, w.b, w.n);
	put("batch_count_past_end", b, (size_t)n);

	/* bare event bodies (the harness also decodes the whole input as one event) */
	ev = realistic("ai_01HZX3K8Q2M4N6P8R0S2T4V6");
	n = event_encode(&ev, b, sizeof(b));
	must(n, "event");
	put("event_realistic", b, (size_t)n);
	w.n = 0;
	wb_event_head(&w, -5, "k", 1, "c", 1, "n", 1, 0);
	put("event_negative_time", w.b, w.n);
	w.n = 0;
	wb_event_head(&w, 1, "k", 1, "\xED\xA0\x80", 3, "n", 1, 0);
	put("event_surrogate_customer", w.b, w.n);
	w.n = 0;
	wb_event_head(&w, 1, "k", 1, "c", 1, "n", 1, 2);
	wb_prop_dec(&w, "d", 19, 1);
	wb_prop_dec(&w, "d", 18, 1);
	put("event_scale19", w.b, w.n);
	w.n = 0;
	wb_event_head(&w, 1, "k", 1, "c", 1, "n", 1, 2);
	wb_prop_str(&w, "s", "abc", 3);
	wb_prop_str(&w, "s", "abc", 3);
	put("event_dup_key", w.b, w.n);

	printf("proto_corpus: wrote %d files to %s\n", g_files, g_dir);
	return 0;
}
