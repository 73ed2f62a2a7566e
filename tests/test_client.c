/*
 * test_client.c — the client library (src/client.c) against the in-process fake server
 * (tests/client_fake_server.c): HELLO accepted and refused, receipts, pipelining with ACKs
 * out of order, server ERRORs (retryable and fatal), timeouts, a server that closes in the
 * middle of a frame, garbage from the server, connection refused, malformed frames sent raw,
 * batch limits, and a larger pipelined run.
 * Timeouts are checked by their return value and message, never by measuring time.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "client_fake_server.h"
#include "tally/client.h"
#include "check.h"


#define CHECK_STR(hay, needle)                                                                     \
	do {                                                                                       \
		const char *h_ = (hay);                                                            \
		if (!strstr(h_, (needle))) {                                                       \
			fprintf(stderr, "%s:%d: CHECK failed: \"%s\" does not contain \"%s\"\n",    \
				__FILE__, __LINE__, h_, (needle));                                 \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

static struct fake_server *start(struct fake_server_config cfg)
{
	struct fake_server *s = NULL;
	int rc = fake_server_start(&cfg, &s);
	if (rc < 0) {
		fprintf(stderr, "fake_server_start: %s\n", strerror(-rc));
		exit(1);
	}
	return s;
}

static struct tally_client_options opts(struct fake_server *s, const char *key)
{
	struct tally_client_options o = {
		.host = "127.0.0.1",
		.port = fake_server_port(s),
		.api_key = key,
		.client_name = "test-client",
		.connect_timeout_ms = 5000,
		.io_timeout_ms = 10000,
	};
	return o;
}

/* A valid event; key and customer are copied into the caller's storage. */
struct ev_store {
	char key[64];
	char customer[32];
	struct tally_prop props[2];
	struct tally_event_in in;
};

static void make_event(struct ev_store *e, const char *key, int64_t tokens)
{
	snprintf(e->key, sizeof(e->key), "%s", key);
	snprintf(e->customer, sizeof(e->customer), "cust-%d", (int)(tokens % 7));
	e->props[0] = (struct tally_prop){.key = {(const uint8_t *)"tokens", 6},
					  .kind = TALLY_VALUE_INT,
					  .i64 = tokens};
	e->props[1] = (struct tally_prop){.key = {(const uint8_t *)"gpu_s", 5},
					  .kind = TALLY_VALUE_DECIMAL,
					  .scale = 2,
					  .i64 = 125};
	e->in = (struct tally_event_in){
		.key = {(const uint8_t *)e->key, (uint32_t)strlen(e->key)},
		.customer = {(const uint8_t *)e->customer, (uint32_t)strlen(e->customer)},
		.name = {(const uint8_t *)"api.call", 8},
		.event_time_us = 1767225600000000LL + tokens,
		.prop_count = 2,
		.props = e->props,
	};
}

static void test_hello_ok(void)
{
	struct fake_server *s = start((struct fake_server_config){.api_key = "secret",
								  .frame_bytes_max = 65536,
								  .batch_events_max = 100,
								  .inflight_max = 8,
								  .shard_count = 3,
								  .tenant = "acme"});
	struct tally_client_options o = opts(s, "secret");
	struct tally_client *c;
	int rc = tally_client_connect(&o, &c);
	CHECK_EQ(rc, 0);
	if (rc == 0) {
		const struct tally_client_limits *l = tally_client_limits(c);
		CHECK_EQ(l->version, PROTO_VERSION);
		CHECK_EQ(l->frame_bytes_max, 65536);
		CHECK_EQ(l->batch_events_max, 100);
		CHECK_EQ(l->inflight_max, 8);
		CHECK_EQ(l->shard_count, 3);
		CHECK(!strcmp(l->tenant, "acme"));
		CHECK_EQ(l->tenant_len, 4);
		CHECK(l->server_time_us > 1700000000LL * 1000000);
		CHECK_EQ(tally_client_ping(c), 0);
		CHECK(!strcmp(tally_client_last_error(c), ""));
	}
	tally_client_close(c);

	/* A local in-flight cap below the server's wins; a frame wish lowers the frame limit. */
	o.inflight_max = 3;
	o.frame_bytes_max = 8192;
	rc = tally_client_connect(&o, &c);
	CHECK_EQ(rc, 0);
	if (rc == 0) {
		CHECK_EQ(tally_client_limits(c)->inflight_max, 3);
		CHECK_EQ(tally_client_limits(c)->frame_bytes_max, 8192);
	}
	tally_client_close(c);
	o.frame_bytes_max = 100; /* below PROTO_FRAME_BYTES_MIN: refused locally */
	CHECK_EQ(tally_client_connect(&o, &c), -EINVAL);
	CHECK_STR(tally_client_last_error(c), "frame_bytes_max 100 out of range");
	tally_client_close(c);
	o.frame_bytes_max = 0;

	struct fake_server_stats st;
	fake_server_stats(s, &st);
	CHECK_EQ(st.hellos_ok, 2);
	CHECK_EQ(st.pings, 1);
	CHECK(!strcmp(st.last_client_name, "test-client"));
	fake_server_stop(s);
}

static void test_hello_refused(void)
{
	struct fake_server *s = start((struct fake_server_config){.api_key = "secret"});
	struct tally_client_options o = opts(s, "wrong");
	struct tally_client *c;
	int rc = tally_client_connect(&o, &c);
	CHECK_EQ(rc, TALLY_CLIENT_E_SERVER);
	CHECK(c != NULL);
	CHECK_EQ(tally_client_last_server_error(c), PROTO_E_AUTH);
	CHECK(!strcmp(tally_client_last_error(c), "server error AUTH (fatal): unknown API key"));
	tally_client_close(c);

	/* Bad options are refused before any connection. */
	char longkey[PROTO_API_KEY_BYTES_MAX + 2];
	memset(longkey, 'k', sizeof(longkey) - 1);
	longkey[sizeof(longkey) - 1] = '\0';
	o.api_key = longkey;
	rc = tally_client_connect(&o, &c);
	CHECK_EQ(rc, -EINVAL);
	CHECK_STR(tally_client_last_error(c), "API key is 257 bytes");
	tally_client_close(c);

	struct fake_server_stats st;
	fake_server_stats(s, &st);
	CHECK_EQ(st.conns, 1);
	CHECK_EQ(st.hellos_ok, 0);
	fake_server_stop(s);
}

static void test_receipts(void)
{
	struct fake_server *s = start((struct fake_server_config){.shard_count = 2});
	struct tally_client_options o = opts(s, "any");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);

	struct ev_store e[3];
	struct tally_event_in in[3];
	struct proto_receipt r[3];
	for (int i = 0; i < 3; i++) {
		char k[32];
		snprintf(k, sizeof(k), "k%d", i);
		make_event(&e[i], k, 10 + i);
		in[i] = e[i].in;
	}
	CHECK_EQ(tally_client_send_wait(c, in, 3, r), 0);
	uint64_t offs[2] = {0, 0};
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(r[i].status, PROTO_ACCEPTED);
		CHECK_EQ(r[i].reason, 0);
		CHECK(r[i].shard < 2);
		/* Offsets count up from 0 per shard, in batch order. */
		CHECK_EQ(r[i].offset, offs[r[i].shard]++);
	}
	struct proto_receipt first[3];
	memcpy(first, r, sizeof(r));

	/* Same keys, same content: DUPLICATE at the original position. */
	CHECK_EQ(tally_client_send_wait(c, in, 3, r), 0);
	for (int i = 0; i < 3; i++) {
		CHECK_EQ(r[i].status, PROTO_DUPLICATE);
		CHECK_EQ(r[i].shard, first[i].shard);
		CHECK_EQ(r[i].offset, first[i].offset);
	}

	/* Same key, other content: CONFLICT; plus a raw body the server rejects. */
	e[1].props[0].i64 = 999;
	CHECK_EQ(tally_client_batch_begin(c), 0);
	CHECK_EQ(tally_client_batch_add(c, &e[1].in), 0);
	uint8_t body[256];
	struct ev_store bad;
	make_event(&bad, "bad-name", 1);
	long bl = event_encode(&bad.in, body, sizeof(body));
	CHECK(bl > 12);
	/* name starts at 12 + key_len + customer_len: put a space in it. */
	body[12 + bad.in.key.len + bad.in.customer.len + 3] = ' ';
	CHECK_EQ(tally_client_batch_add_raw(c, body, (size_t)bl), 0);
	CHECK_EQ(tally_client_batch_count(c), 2);
	uint64_t id = 0;
	CHECK_EQ(tally_client_batch_send(c, &id), 0);
	CHECK_EQ(tally_client_inflight(c), 1);
	struct tally_client_reply rep;
	CHECK_EQ(tally_client_recv(c, 5000, &rep), 0);
	CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ACK);
	CHECK_EQ(rep.request_id, id);
	CHECK_EQ(rep.receipt_count, 2);
	if (rep.receipt_count == 2) {
		CHECK_EQ(rep.receipts[0].status, PROTO_CONFLICT);
		CHECK_EQ(rep.receipts[0].offset, first[1].offset);
		CHECK_EQ(rep.receipts[1].status, PROTO_REJECTED);
		CHECK_EQ(rep.receipts[1].reason, TALLY_REJECT_NAME_CHAR);
	}
	CHECK_EQ(tally_client_inflight(c), 0);

	/* A PING between batches; recv() sees its PONG. */
	CHECK_EQ(tally_client_send_ping(c, 42), 0);
	CHECK_EQ(tally_client_recv(c, 5000, &rep), 0);
	CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_PONG);
	CHECK_EQ(rep.nonce, 42);
	tally_client_close(c);
	fake_server_stop(s);
}

static void test_pipelining_out_of_order(void)
{
	struct fake_server *s =
		start((struct fake_server_config){.mode = FAKE_REVERSE, .hold = 4, .inflight_max = 4});
	struct tally_client_options o = opts(s, "k");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	CHECK_EQ(tally_client_limits(c)->inflight_max, 4);

	/* Batch b (1..4) holds b events with keys "b<b>-<i>". */
	uint64_t ids[5] = {0};
	struct ev_store e[4];
	struct tally_event_in in[4];
	for (int b = 1; b <= 4; b++) {
		for (int i = 0; i < b; i++) {
			char k[32];
			snprintf(k, sizeof(k), "b%d-%d", b, i);
			make_event(&e[i], k, b * 10 + i);
			in[i] = e[i].in;
		}
		CHECK_EQ(tally_client_send_batch(c, in, (uint32_t)b, &ids[b]), 0);
	}
	CHECK_EQ(tally_client_inflight(c), 4);
	/* The in-flight limit is enforced locally. */
	CHECK_EQ(tally_client_batch_begin(c), TALLY_CLIENT_E_INFLIGHT);
	CHECK_STR(tally_client_last_error(c), "4 batches in flight");
	/* send_wait/ping refuse to run while batches are in flight. */
	CHECK_EQ(tally_client_ping(c), TALLY_CLIENT_E_BUSY);

	/* The server answers newest first; each ACK is matched by its request id. */
	for (int k = 0; k < 4; k++) {
		struct tally_client_reply rep;
		CHECK_EQ(tally_client_recv(c, 5000, &rep), 0);
		CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ACK);
		int b = 4 - k;
		CHECK_EQ(rep.request_id, ids[b]);
		CHECK_EQ(rep.receipt_count, (uint32_t)b);
		for (uint32_t i = 0; i < rep.receipt_count; i++)
			CHECK_EQ(rep.receipts[i].status, PROTO_ACCEPTED);
	}
	CHECK_EQ(tally_client_inflight(c), 0);
	CHECK_EQ(ids[1], 1);
	CHECK_EQ(ids[4], 4);
	tally_client_close(c);
	fake_server_stop(s);
}

static void test_server_error(void)
{
	/* Retryable ERROR for batch 2: surfaced with its message; the connection stays usable. */
	struct fake_server *s = start((struct fake_server_config){.mode = FAKE_ERROR_ON_BATCH,
								  .error_on_batch = 2,
								  .error_code = PROTO_E_DISK_FULL,
								  .error_fatal = false,
								  .error_message = "wal volume full"});
	struct tally_client_options o = opts(s, "k");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	struct ev_store e;
	struct proto_receipt r;
	make_event(&e, "e1", 1);
	CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r), 0);
	CHECK_EQ(r.status, PROTO_ACCEPTED);
	make_event(&e, "e2", 2);
	CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r), TALLY_CLIENT_E_SERVER);
	CHECK(!strcmp(tally_client_last_error(c), "server error DISK_FULL (retryable): wal volume full"));
	CHECK_EQ(tally_client_last_server_error(c), PROTO_E_DISK_FULL);
	CHECK_EQ(tally_client_inflight(c), 0); /* the ERROR named the batch: not in flight */
	CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r), 0);
	CHECK_EQ(r.status, PROTO_ACCEPTED);
	tally_client_close(c);
	fake_server_stop(s);

	/* Fatal ERROR: surfaced through recv(), then the client refuses further use. */
	s = start((struct fake_server_config){.mode = FAKE_ERROR_ON_BATCH,
					      .error_on_batch = 1,
					      .error_code = PROTO_E_UNAVAILABLE,
					      .error_fatal = true,
					      .error_message = "shutting down"});
	o = opts(s, "k");
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	uint64_t id;
	CHECK_EQ(tally_client_send_batch(c, &e.in, 1, &id), 0);
	struct tally_client_reply rep;
	CHECK_EQ(tally_client_recv(c, 5000, &rep), 0);
	CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ERROR);
	CHECK_EQ(rep.error_code, PROTO_E_UNAVAILABLE);
	CHECK(rep.fatal);
	CHECK_EQ(rep.request_id, id);
	CHECK(rep.message && !strcmp(rep.message, "shutting down"));
	CHECK(!strcmp(tally_client_last_error(c), "server error UNAVAILABLE (fatal): shutting down"));
	CHECK_EQ(tally_client_send_batch(c, &e.in, 1, &id), TALLY_CLIENT_E_BROKEN);
	CHECK_STR(tally_client_last_error(c), "shutting down (connection unusable");
	CHECK_EQ(tally_client_recv(c, 0, &rep), TALLY_CLIENT_E_BROKEN);
	tally_client_close(c);
	fake_server_stop(s);
}

static void test_timeouts(void)
{
	/* A server that never answers a batch. */
	struct fake_server *s = start((struct fake_server_config){.mode = FAKE_SILENT});
	struct tally_client_options o = opts(s, "k");
	o.io_timeout_ms = 200;
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	struct ev_store e;
	struct proto_receipt r;
	make_event(&e, "t1", 1);
	CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r), -ETIMEDOUT);
	CHECK(!strcmp(tally_client_last_error(c),
		      "timed out after 200 ms waiting for ACK (request id 1)"));
	/* A timeout does not break the client: the batch is still in flight. */
	CHECK_EQ(tally_client_inflight(c), 1);
	struct tally_client_reply rep;
	CHECK_EQ(tally_client_recv(c, 0, &rep), -ETIMEDOUT);
	CHECK_STR(tally_client_last_error(c), "timed out after 0 ms waiting for a reply");
	CHECK_EQ(tally_client_send_batch(c, &e.in, 1, NULL), 0);
	CHECK_EQ(tally_client_inflight(c), 2);
	tally_client_close(c);
	fake_server_stop(s);

	/* A server that never answers HELLO. */
	s = start((struct fake_server_config){.mode = FAKE_SILENT_HELLO});
	o = opts(s, "k");
	o.io_timeout_ms = 150;
	CHECK_EQ(tally_client_connect(&o, &c), -ETIMEDOUT);
	CHECK(!strcmp(tally_client_last_error(c), "timed out after 150 ms waiting for HELLO_OK"));
	tally_client_close(c);
	fake_server_stop(s);
}

static void test_close_mid_frame(void)
{
	struct fake_server *s = start((struct fake_server_config){.mode = FAKE_CLOSE_MID_FRAME});
	struct tally_client_options o = opts(s, "k");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	struct ev_store e[5];
	struct tally_event_in in[5];
	struct proto_receipt r[5];
	for (int i = 0; i < 5; i++) {
		char k[32];
		snprintf(k, sizeof(k), "m%d", i);
		make_event(&e[i], k, i);
		in[i] = e[i].in;
	}
	CHECK_EQ(tally_client_send_wait(c, in, 5, r), TALLY_CLIENT_E_CLOSED);
	/* ACK of 5 receipts = 16 + 12 + 80 = 108 bytes; the server sent half. */
	CHECK_STR(tally_client_last_error(c), "closed the connection in the middle of a frame (54 of 108 bytes received)");
	CHECK_EQ(tally_client_ping(c), TALLY_CLIENT_E_BROKEN);
	tally_client_close(c);
	fake_server_stop(s);
}

static void test_garbage(void)
{
	struct fake_server *s = start((struct fake_server_config){.mode = FAKE_GARBAGE});
	struct tally_client_options o = opts(s, "k");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	struct ev_store e;
	struct proto_receipt r;
	make_event(&e, "g", 1);
	CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r), TALLY_CLIENT_E_PROTOCOL);
	CHECK_STR(tally_client_last_error(c), "malformed frame from the server");
	CHECK_STR(tally_client_last_error(c), "BAD_MAGIC");
	tally_client_close(c);
	fake_server_stop(s);
}

static void test_connection_refused(void)
{
	/* A port nobody listens on: an ephemeral one bound here and kept bound (never listening)
	   until the connect was refused, so that no other process (a tallyd of a test running
	   beside this one, listening on port 0) can be given it meanwhile. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	CHECK_EQ(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	CHECK_EQ(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	uint16_t port = ntohs(a.sin_port);

	struct tally_client_options o = {.host = "127.0.0.1", .port = port};
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), -ECONNREFUSED);
	char want[64];
	snprintf(want, sizeof(want), "connection refused to 127.0.0.1:%u", port);
	CHECK(!strcmp(tally_client_last_error(c), want));
	tally_client_close(c);
	close(fd);

	o.host = "no-such-host.invalid";
	CHECK_EQ(tally_client_connect(&o, &c), -EHOSTUNREACH);
	CHECK_STR(tally_client_last_error(c), "cannot resolve host \"no-such-host.invalid\"");
	tally_client_close(c);
}

static void test_send_raw_malformed(void)
{
	struct fake_server *s = start((struct fake_server_config){0});
	struct tally_client_options o = opts(s, "k");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	uint8_t frame[PROTO_HEADER_BYTES + 8];
	long n = proto_encode_ping(frame, sizeof(frame), PROTO_PING, 7);
	CHECK_EQ(n, sizeof(frame));
	frame[PROTO_HEADER_BYTES] ^= 0x01; /* the checksum no longer matches */
	CHECK_EQ(tally_client_send_raw(c, frame, (size_t)n), 0);
	struct tally_client_reply rep;
	CHECK_EQ(tally_client_recv(c, 5000, &rep), 0);
	CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ERROR);
	CHECK_EQ(rep.error_code, PROTO_E_BAD_CHECKSUM);
	CHECK(rep.fatal);
	CHECK_STR(tally_client_last_error(c), "server error BAD_CHECKSUM (fatal)");
	CHECK_EQ(tally_client_send_raw(c, frame, (size_t)n), TALLY_CLIENT_E_BROKEN);
	tally_client_close(c);
	struct fake_server_stats st;
	fake_server_stats(s, &st);
	CHECK_EQ(st.last_frame_error, PROTO_E_BAD_CHECKSUM);
	fake_server_stop(s);
}

static void test_batch_limits(void)
{
	struct fake_server *s = start(
		(struct fake_server_config){.frame_bytes_max = PROTO_FRAME_BYTES_MIN, .batch_events_max = 8});
	struct tally_client_options o = opts(s, "k");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	struct ev_store e[9];
	struct tally_event_in in[9];
	for (int i = 0; i < 9; i++) {
		char k[32];
		snprintf(k, sizeof(k), "l%d", i);
		make_event(&e[i], k, i);
		in[i] = e[i].in;
	}
	CHECK_EQ(tally_client_send_batch(c, in, 9, NULL), -E2BIG);
	CHECK_STR(tally_client_last_error(c), "must be 1..8");
	CHECK_EQ(tally_client_send_batch(c, in, 0, NULL), -EINVAL);

	/* batch_add refuses the 9th event; the batch keeps its 8. */
	CHECK_EQ(tally_client_batch_begin(c), 0);
	for (int i = 0; i < 8; i++)
		CHECK_EQ(tally_client_batch_add(c, &in[i]), 0);
	CHECK_EQ(tally_client_batch_add(c, &in[8]), -E2BIG);
	CHECK_EQ(tally_client_batch_count(c), 8);
	CHECK_EQ(tally_client_batch_send(c, NULL), 0);
	struct tally_client_reply rep;
	CHECK_EQ(tally_client_recv(c, 5000, &rep), 0);
	CHECK_EQ(rep.receipt_count, 8);

	/* Events with 32 long strings do not fit 4 KiB frames. */
	static char big[TALLY_PROPS_MAX][16];
	static char val[TALLY_PROP_STRING_BYTES_MAX];
	memset(val, 'v', sizeof(val));
	struct tally_prop props[TALLY_PROPS_MAX];
	for (int i = 0; i < TALLY_PROPS_MAX; i++) {
		snprintf(big[i], sizeof(big[i]), "p%d", i);
		props[i] = (struct tally_prop){.key = {(const uint8_t *)big[i], (uint32_t)strlen(big[i])},
					       .kind = TALLY_VALUE_STRING,
					       .str = {(const uint8_t *)val, sizeof(val)}};
	}
	in[0].props = props;
	in[0].prop_count = TALLY_PROPS_MAX;
	CHECK_EQ(tally_client_send_batch(c, in, 1, NULL), -ENOSPC);
	CHECK_STR(tally_client_last_error(c), "does not fit in a frame of 4096 bytes");

	/* An invalid event is refused locally; nothing is sent. */
	make_event(&e[0], "inv", 1);
	e[0].in.name = (struct tally_view){(const uint8_t *)"bad name", 8};
	CHECK_EQ(tally_client_send_batch(c, &e[0].in, 1, NULL), -EINVAL);
	CHECK_EQ(tally_client_inflight(c), 0);
	CHECK_EQ(tally_client_ping(c), 0); /* still usable */
	CHECK_EQ(tally_client_batch_send(c, NULL), TALLY_CLIENT_E_NO_BATCH);
	tally_client_close(c);
	fake_server_stop(s);
}

static void test_many_pipelined(void)
{
	enum { BATCHES = 300, PER = 50 };
	struct fake_server *s = start((struct fake_server_config){
		.inflight_max = 16, .shard_count = 4, .mode = FAKE_REVERSE, .hold = 3});
	struct tally_client_options o = opts(s, "k");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	static struct ev_store e[PER];
	struct tally_event_in in[PER];
	uint32_t sent = 0, acked = 0;
	uint64_t accepted = 0, max_off[4] = {0};
	uint64_t seen_ids = 0;
	while (acked < BATCHES) {
		while (sent < BATCHES && tally_client_inflight(c) < tally_client_limits(c)->inflight_max) {
			for (int i = 0; i < PER; i++) {
				char k[32];
				snprintf(k, sizeof(k), "p%u-%d", sent, i);
				make_event(&e[i], k, i);
				in[i] = e[i].in;
			}
			int rc = tally_client_send_batch(c, in, PER, NULL);
			CHECK_EQ(rc, 0);
			if (rc)
				goto out;
			sent++;
		}
		struct tally_client_reply rep;
		/* REVERSE holds 3: at the tail fewer than 3 may be pending, so they never come.
		 * Stop there and count what is missing. */
		int rc = tally_client_recv(c, sent == BATCHES ? 300 : 5000, &rep);
		if (rc == -ETIMEDOUT && sent == BATCHES)
			break;
		CHECK_EQ(rc, 0);
		if (rc)
			goto out;
		CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ACK);
		CHECK_EQ(rep.receipt_count, PER);
		seen_ids += rep.request_id;
		for (uint32_t i = 0; i < rep.receipt_count; i++) {
			accepted += rep.receipts[i].status == PROTO_ACCEPTED;
			if (rep.receipts[i].shard < 4 && rep.receipts[i].offset + 1 > max_off[rep.receipts[i].shard])
				max_off[rep.receipts[i].shard] = rep.receipts[i].offset + 1;
		}
		acked++;
	}
	/* All but the held tail were answered, each once. */
	CHECK(acked >= BATCHES - 2);
	CHECK_EQ(acked + tally_client_inflight(c), BATCHES);
	CHECK_EQ(accepted, (uint64_t)acked * PER);
	CHECK(seen_ids > 0);
	/* Offsets are dense per shard over everything the server accepted. */
	struct fake_server_stats st;
	fake_server_stats(s, &st);
	CHECK_EQ(st.accepted, (uint64_t)BATCHES * PER);
	CHECK(max_off[0] + max_off[1] + max_off[2] + max_off[3] <= st.accepted);
out:
	tally_client_close(c);
	fake_server_stop(s);
}

/* Replies written in pieces: the client reassembles partial headers and bodies. */
static void test_trickle(void)
{
	struct fake_server *s = start((struct fake_server_config){.mode = FAKE_TRICKLE, .tenant = "t"});
	struct tally_client_options o = opts(s, "k");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0); /* HELLO_OK itself came in pieces */
	CHECK(c && !strcmp(tally_client_limits(c)->tenant, "t"));
	struct ev_store e[3];
	struct tally_event_in in[3];
	struct proto_receipt r[3];
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 3; i++) {
			char k[32];
			snprintf(k, sizeof(k), "tr%d-%d", round, i);
			make_event(&e[i], k, i);
			in[i] = e[i].in;
		}
		CHECK_EQ(tally_client_send_wait(c, in, 3, r), 0);
		for (int i = 0; i < 3; i++)
			CHECK_EQ(r[i].status, PROTO_ACCEPTED);
	}
	CHECK_EQ(tally_client_ping(c), 0);
	tally_client_close(c);
	fake_server_stop(s);
}

/* ACKs that do not match what is in flight are protocol errors. */
static void test_bad_acks(void)
{
	int modes[2] = {FAKE_WRONG_ACK_ID, FAKE_SHORT_ACK};
	const char *msgs[2] = {"protocol error: ACK for request id 1001, which is not in flight",
			       "protocol error: ACK for request id 1 has 1 receipts for 2 events"};
	for (int m = 0; m < 2; m++) {
		struct fake_server *s = start((struct fake_server_config){.mode = modes[m]});
		struct tally_client_options o = opts(s, "k");
		struct tally_client *c;
		CHECK_EQ(tally_client_connect(&o, &c), 0);
		struct ev_store e[2];
		struct tally_event_in in[2];
		struct proto_receipt r[2];
		make_event(&e[0], "ba0", 0);
		make_event(&e[1], "ba1", 1);
		in[0] = e[0].in;
		in[1] = e[1].in;
		CHECK_EQ(tally_client_send_wait(c, in, 2, r), TALLY_CLIENT_E_PROTOCOL);
		CHECK(!strcmp(tally_client_last_error(c), msgs[m]));
		CHECK_EQ(tally_client_ping(c), TALLY_CLIENT_E_BROKEN);
		tally_client_close(c);
		fake_server_stop(s);
	}
}

/* The server sends a fatal ERROR and closes while the client is still writing big batches:
 * the write fails, and the client reports the server's ERROR rather than "broken pipe".
 * The ACK of the batch before it, which had arrived, is still handed out by recv(). */
static void test_error_while_writing(void)
{
	struct fake_server *s = start((struct fake_server_config){.mode = FAKE_ERROR_ON_BATCH,
								  .error_on_batch = 2,
								  .error_code = PROTO_E_UNAVAILABLE,
								  .error_fatal = true,
								  .error_message = "bye"});
	struct tally_client_options o = opts(s, "k");
	struct tally_client *c;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	static char keys[TALLY_PROPS_MAX][16];
	static char val[TALLY_PROP_STRING_BYTES_MAX];
	memset(val, 'w', sizeof(val));
	struct tally_prop props[TALLY_PROPS_MAX];
	for (int i = 0; i < TALLY_PROPS_MAX; i++) {
		snprintf(keys[i], sizeof(keys[i]), "p%d", i);
		props[i] = (struct tally_prop){.key = {(const uint8_t *)keys[i], (uint32_t)strlen(keys[i])},
					       .kind = TALLY_VALUE_STRING,
					       .str = {(const uint8_t *)val, sizeof(val)}};
	}
	struct ev_store e;
	make_event(&e, "first", 1);
	uint64_t first_id = 0;
	CHECK_EQ(tally_client_send_batch(c, &e.in, 1, &first_id), 0);
	make_event(&e, "w", 1);
	e.in.props = props;
	e.in.prop_count = TALLY_PROPS_MAX;
	int rc = 0;
	/* Up to 64 batches of ~1 MiB: far more than the socket buffers hold. */
	for (int b = 0; b < 64 && rc == 0; b++) {
		rc = tally_client_batch_begin(c);
		while (rc == 0)
			rc = tally_client_batch_add(c, &e.in);
		CHECK_EQ(rc, -ENOSPC);
		rc = tally_client_batch_send(c, NULL);
	}
	CHECK_EQ(rc, TALLY_CLIENT_E_SERVER);
	CHECK(!strcmp(tally_client_last_error(c), "server error UNAVAILABLE (fatal): bye"));
	/* Broken, but what arrived whole is delivered: ACK of batch 1, the ERROR, then BROKEN. */
	struct tally_client_reply rep;
	CHECK_EQ(tally_client_recv(c, 0, &rep), 0);
	CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ACK);
	CHECK_EQ(rep.request_id, first_id);
	CHECK_EQ(rep.receipt_count, 1);
	CHECK_EQ(rep.receipts[0].status, PROTO_ACCEPTED);
	CHECK(!strcmp(tally_client_last_error(c), "server error UNAVAILABLE (fatal): bye"));
	CHECK_EQ(tally_client_recv(c, 0, &rep), 0);
	CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ERROR);
	CHECK_EQ(rep.request_id, 2);
	CHECK_EQ(tally_client_recv(c, 0, &rep), TALLY_CLIENT_E_BROKEN);
	tally_client_close(c);
	fake_server_stop(s);
}

int main(void)
{
	test_hello_ok();
	test_hello_refused();
	test_receipts();
	test_pipelining_out_of_order();
	test_server_error();
	test_timeouts();
	test_close_mid_frame();
	test_garbage();
	test_connection_refused();
	test_send_raw_malformed();
	test_batch_limits();
	test_many_pipelined();
	test_trickle();
	test_bad_acks();
	test_error_while_writing();
	if (failures) {
		fprintf(stderr, "test_client: %d checks failed\n", failures);
		return 1;
	}
	printf("test_client: all checks passed\n");
	return 0;
}
