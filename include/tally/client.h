/*
 * tally/client.h — a blocking client for the tally wire protocol (docs/protocol.md), with
 * explicit timeouts. Used by `tally send`, the tests, the bench harness and load producers.
 *
 * One struct tally_client is one TCP connection, used by one thread at a time. It sends
 * BATCH frames without waiting for their ACKs (pipelining, up to the negotiated in-flight
 * limit) and reads the replies, which may come out of order, with tally_client_recv().
 * Every buffer is allocated by tally_client_connect(), sized from the limits the server
 * returned in HELLO_OK; nothing is allocated per batch.
 *
 * Errors: every function that can fail returns 0 (or a positive count) on success, or a
 * negative errno (-ETIMEDOUT, -ECONNREFUSED, -ENOSPC...) or a negative enum tally_client_error.
 * tally_client_last_error() then says what happened in words, e.g.
 *   "connection refused to 127.0.0.1:7878"
 *   "server error BAD_CHECKSUM (fatal): checksum mismatch"
 *   "timed out after 5000 ms waiting for ACK"
 * After a fatal error (the server's, a malformed frame from the server, a closed or timed-out
 * connection) the client is *broken*: every later call returns TALLY_CLIENT_E_BROKEN and the
 * caller should close it and reconnect. Batches that were in flight then have an unknown
 * fate; re-sending them is safe because events are deduplicated by idempotency key.
 *
 *   struct tally_client_options o = { .host = "127.0.0.1", .port = 7878, .api_key = "k" };
 *   struct tally_client *c;
 *   if (tally_client_connect(&o, &c) < 0) { puts(tally_client_last_error(c)); goto out; }
 *   ...
 *   out: tally_client_close(c);
 */
#ifndef TALLY_CLIENT_H
#define TALLY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/event.h"
#include "tally/protocol.h"

#define TALLY_CLIENT_PORT_DEFAULT        7878
#define TALLY_CLIENT_CONNECT_TIMEOUT_MS  5000
#define TALLY_CLIENT_IO_TIMEOUT_MS       30000
/* Batches this client tracks in flight at most, whatever the server allows. */
#define TALLY_CLIENT_INFLIGHT_MAX        1024u
#define TALLY_CLIENT_ERROR_BYTES_MAX     768u

/* Client-side error codes (negative, far from any errno). */
enum tally_client_error {
	TALLY_CLIENT_E_SERVER = -1001,   /* the server sent an ERROR frame (see last_error) */
	TALLY_CLIENT_E_PROTOCOL = -1002, /* the server sent a malformed or unexpected frame */
	TALLY_CLIENT_E_CLOSED = -1003,   /* the server closed the connection */
	TALLY_CLIENT_E_INFLIGHT = -1004, /* the in-flight limit is reached: recv() first */
	TALLY_CLIENT_E_BROKEN = -1005,   /* an earlier fatal error: close and reconnect */
	TALLY_CLIENT_E_BUSY = -1006,     /* a blocking call while batches are in flight */
	TALLY_CLIENT_E_NO_BATCH = -1007, /* batch_add/send without batch_begin, or empty */
};

struct tally_client_options {
	const char *host;           /* name or address; NULL = "127.0.0.1" */
	uint16_t port;              /* 0 = TALLY_CLIENT_PORT_DEFAULT */
	const char *api_key;        /* NULL = "" */
	const char *client_name;    /* NULL = "tally-client"; at most 64 bytes */
	int connect_timeout_ms;     /* TCP connect; 0 = TALLY_CLIENT_CONNECT_TIMEOUT_MS */
	int io_timeout_ms;          /* HELLO_OK, each write, blocking waits; 0 = TALLY_CLIENT_IO_TIMEOUT_MS */
	uint32_t frame_bytes_max;   /* wish sent in HELLO; 0 = the server's default */
	uint32_t inflight_max;      /* local cap on batches in flight; 0 = the server's limit */
};

/* What the server said in HELLO_OK. */
struct tally_client_limits {
	uint16_t version;
	uint16_t shard_count;
	uint32_t frame_bytes_max;
	uint32_t batch_events_max;
	uint32_t inflight_max; /* min(server, options.inflight_max, TALLY_CLIENT_INFLIGHT_MAX) */
	int64_t server_time_us;
	int64_t max_future_us;
	int64_t max_age_us;
	uint32_t tenant_len;
	char tenant[TALLY_TENANT_BYTES_MAX + 1]; /* NUL-terminated copy */
};

enum tally_client_reply_kind {
	TALLY_CLIENT_REPLY_ACK = 1,
	TALLY_CLIENT_REPLY_ERROR = 2,
	TALLY_CLIENT_REPLY_PONG = 3,
};

/*
 * One reply. Pointers point into client-owned storage that stays valid until the next call
 * of tally_client_recv(), tally_client_send_wait() or tally_client_ping() on this client.
 */
struct tally_client_reply {
	int kind;                  /* enum tally_client_reply_kind */
	uint64_t request_id;       /* ACK: the batch; ERROR: the batch it concerns or 0 */
	uint32_t receipt_count;    /* ACK: equals the batch's event count */
	const struct proto_receipt *receipts; /* ACK: one per event, in the batch's order */
	uint16_t error_code;       /* ERROR: enum proto_error */
	bool fatal;                /* ERROR: the server closes the connection */
	const char *message;       /* ERROR: NUL-terminated copy of the server's message */
	uint64_t nonce;            /* PONG */
};

struct tally_client;

/*
 * Connects (TCP, TCP_NODELAY), sends HELLO and waits for HELLO_OK, then allocates the
 * buffers from the negotiated limits. Returns 0, or -errno (-ECONNREFUSED, -ETIMEDOUT,
 * -EINVAL for bad options...), or TALLY_CLIENT_E_SERVER if the server answered ERROR
 * (e.g. AUTH), or TALLY_CLIENT_E_PROTOCOL / TALLY_CLIENT_E_CLOSED.
 * *out is set even on failure (unless memory for the client itself could not be had, then
 * NULL) so that tally_client_last_error(*out) can say why: tally_client_close() it either way.
 */
int tally_client_connect(const struct tally_client_options *o, struct tally_client **out)
	__attribute__((warn_unused_result));

/* Closes the socket and frees everything. NULL is a no-op. */
void tally_client_close(struct tally_client *c);

/* What the last failure was, in words. Never NULL; "" if nothing failed. NULL c: out of memory. */
const char *tally_client_last_error(const struct tally_client *c);

/* Code of the last ERROR frame received from the server (enum proto_error), 0 if none. */
uint16_t tally_client_last_server_error(const struct tally_client *c);

/* The negotiated limits (valid after a successful connect). */
const struct tally_client_limits *tally_client_limits(const struct tally_client *c);

/* Batches sent whose ACK has not been received yet. */
uint32_t tally_client_inflight(const struct tally_client *c);

/* The socket, for callers that poll several clients. */
int tally_client_fd(const struct tally_client *c);

/*
 * Builds one BATCH in the client's send buffer, then sends it:
 *   tally_client_batch_begin(c);
 *   tally_client_batch_add(c, &ev)   0; -ENOSPC the frame is full; -E2BIG batch_events_max
 *                                    reached (the batch stays as it was: send it and begin
 *                                    another); -EINVAL the event breaks a limit of event.h
 *   tally_client_batch_add_raw(c, body, len)   an already-encoded body, sent as is (tests,
 *                                    and `tally send`, which validates bodies itself)
 *   tally_client_batch_send(c, &request_id)
 * begin returns TALLY_CLIENT_E_INFLIGHT when the in-flight limit is reached (recv first).
 * batch_send writes the whole frame, waiting up to io_timeout_ms; while it waits for the
 * socket to drain it also reads what the server sends, so a server that answers while we
 * write cannot deadlock us. Request ids are 1, 2, 3... per connection.
 */
int tally_client_batch_begin(struct tally_client *c) __attribute__((warn_unused_result));
int tally_client_batch_add(struct tally_client *c, const struct tally_event_in *ev)
	__attribute__((warn_unused_result));
int tally_client_batch_add_raw(struct tally_client *c, const uint8_t *body, size_t len)
	__attribute__((warn_unused_result));
/* Events in the batch being built. */
uint32_t tally_client_batch_count(const struct tally_client *c);
int tally_client_batch_send(struct tally_client *c, uint64_t *request_id_out /* OUT, may be NULL */)
	__attribute__((warn_unused_result));

/*
 * begin + add each of evs[0..n) + send. -E2BIG if n > batch_events_max, -ENOSPC if the
 * events do not fit in one frame, -EINVAL if an event breaks a limit; nothing is sent then.
 */
int tally_client_send_batch(struct tally_client *c, const struct tally_event_in *evs, uint32_t n,
			    uint64_t *request_id_out /* OUT, may be NULL */)
	__attribute__((warn_unused_result));

/*
 * Sends frame[0..len) as is (tests send malformed frames). Not counted as in flight: the
 * caller matches whatever comes back. len must be <= the negotiated frame_bytes_max
 * unless it is larger on purpose: the client does not check.
 */
int tally_client_send_raw(struct tally_client *c, const uint8_t *frame, size_t len)
	__attribute__((warn_unused_result));

/* Sends a PING with this nonce without waiting; its PONG comes through recv(). */
int tally_client_send_ping(struct tally_client *c, uint64_t nonce)
	__attribute__((warn_unused_result));

/*
 * Waits up to timeout_ms (-1 = forever, 0 = only what is already there) for the next reply.
 * Returns 0 with *out filled: an ACK (matched to an in-flight batch, its receipts copied),
 * an ERROR (code, fatal, message; also recorded in last_error; a fatal one breaks the
 * client), or a PONG. Returns -ETIMEDOUT when nothing complete arrived in time (the client
 * stays usable), TALLY_CLIENT_E_CLOSED when the server closed (even in the middle of a
 * frame), TALLY_CLIENT_E_PROTOCOL for a malformed frame, an ACK for an unknown request id
 * or with the wrong receipt count.
 * On a broken client, recv() first hands out the replies that had arrived whole before the
 * failure (so a receipt that reached the client is never dropped), then returns
 * TALLY_CLIENT_E_BROKEN.
 */
int tally_client_recv(struct tally_client *c, int timeout_ms, struct tally_client_reply *out)
	__attribute__((warn_unused_result));

/*
 * Sends evs[0..n) as one batch and waits up to io_timeout_ms for its ACK; copies the n
 * receipts to receipts[0..n). Only when nothing else is in flight (else TALLY_CLIENT_E_BUSY).
 * Returns 0, or an error of send_batch/recv, or TALLY_CLIENT_E_SERVER if the server answered
 * with an ERROR.
 */
int tally_client_send_wait(struct tally_client *c, const struct tally_event_in *evs, uint32_t n,
			   struct proto_receipt *receipts /* OUT: n entries */)
	__attribute__((warn_unused_result));

/* PING and wait for the matching PONG, up to io_timeout_ms. Only when nothing is in flight. */
int tally_client_ping(struct tally_client *c) __attribute__((warn_unused_result));

/* "server sent an ERROR frame" etc. for a negative return value (errno values too). */
const char *tally_client_strerror(int err);

#endif /* TALLY_CLIENT_H */
