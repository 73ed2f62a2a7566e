/*
 * client.c — blocking tally protocol client with explicit timeouts (see tally/client.h for
 * the contract, docs/protocol.md for the frames, docs/client.md for a usage example).
 *
 * Threads: a client is used by one thread at a time; there is no global state.
 * Ownership: the client owns its socket, one send buffer (frame_bytes_max, a BATCH is built
 * in place), one receive buffer (the largest frame the server may send: an ACK for
 * batch_events_max events, or frame_bytes_max), the receipt copy handed out by recv() and the
 * table of batches in flight. All are allocated in tally_client_connect(); nothing per batch.
 *
 * Invariants:
 *   - rbuf[rhead, rtail) holds received bytes not yet consumed; a frame is consumed only
 *     after everything the caller gets from it (receipts, message) is copied out.
 *   - inflight[0, inflight_n) are the batches sent and not yet answered (by an ACK, or an
 *     ERROR naming their request id); request ids are unique per connection.
 *   - once `broken` is set, every call fails with TALLY_CLIENT_E_BROKEN and the socket is
 *     never written again.
 * Socket I/O is non-blocking; every wait is a poll() bounded by a deadline in ms.
 */
#include "tally/client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* Frames before HELLO_OK are small: HELLO_OK (<= 121 bytes) or ERROR (<= 542 bytes); they
 * are parsed with PROTO_HELLO_BYTES_MAX as the limit (docs/protocol.md, section 7). */
#define CLIENT_HELLO_RBUF_BYTES 4096u
/* Extra room in the receive buffer so that reads are not one frame at a time. */
#define CLIENT_RBUF_SLACK_BYTES (64u * 1024u)

struct client_inflight {
	uint64_t request_id;
	uint32_t event_count;
};

struct tally_client {
	int fd;
	bool broken;
	bool hello_done;
	bool building;  /* a BATCH is being built in sbuf */
	bool peer_eof;  /* read() returned 0 */
	bool untrusted; /* broken by a protocol violation: buffered replies are not handed out */
	int io_timeout_ms;
	char peer[128]; /* "host:port" for messages */

	struct tally_client_limits lim;
	uint32_t rframe_bytes_max; /* limit passed to the parser for received frames */

	uint8_t *sbuf;
	size_t sbuf_cap;
	struct proto_batch_builder bb;
	uint64_t next_request_id;

	uint8_t *rbuf;
	size_t rbuf_cap;
	size_t rhead;
	size_t rtail;

	struct proto_receipt *receipts; /* batch_events_max entries */
	struct client_inflight *inflight;
	uint32_t inflight_n;

	uint16_t last_server_error;
	char server_msg[PROTO_ERROR_MSG_BYTES_MAX + 1];
	char err[TALLY_CLIENT_ERROR_BYTES_MAX];
};

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left before deadline (-1 deadline = forever), for poll(). */
static int ms_left(int64_t deadline_ms)
{
	if (deadline_ms < 0)
		return -1;
	int64_t left = deadline_ms - now_ms();
	if (left <= 0)
		return 0;
	return left > 1000000000 ? 1000000000 : (int)left;
}

static int64_t deadline_after(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

__attribute__((format(printf, 2, 3))) static void set_err(struct tally_client *c, const char *fmt,
							   ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof(c->err), fmt, ap);
	va_end(ap);
}

/* strerror() with a lower-case first letter, to read well inside a sentence. */
static const char *errstr(int e, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s", strerror(e));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

/* Marks the client unusable; returns err for the caller to pass on. */
static int fail_broken(struct tally_client *c, int err)
{
	c->broken = true;
	return err;
}

static int check_usable(struct tally_client *c)
{
	if (c->broken) {
		/* Keep the message that broke it, add why this call failed. */
		if (!strstr(c->err, "(connection unusable"))
			snprintf(c->err + strlen(c->err), sizeof(c->err) - strlen(c->err),
				 " (connection unusable: close and reconnect)");
		return TALLY_CLIENT_E_BROKEN;
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Receive side                                                                              */

/*
 * Reads what the socket has into rbuf (compacting first if the tail is full).
 * Returns bytes read (> 0), -EAGAIN if nothing is there, 0 at end of stream (peer_eof set),
 * or -errno.
 */
static long read_some(struct tally_client *c)
{
	if (c->rtail == c->rbuf_cap && c->rhead > 0) {
		memmove(c->rbuf, c->rbuf + c->rhead, c->rtail - c->rhead);
		c->rtail -= c->rhead;
		c->rhead = 0;
	}
	if (c->rtail == c->rbuf_cap)
		return -ENOBUFS; /* cannot happen: the buffer holds the largest frame */
	for (;;) {
		ssize_t n = recv(c->fd, c->rbuf + c->rtail, c->rbuf_cap - c->rtail, 0);
		if (n > 0) {
			c->rtail += (size_t)n;
			return n;
		}
		if (n == 0) {
			c->peer_eof = true;
			return 0;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return -EAGAIN;
		return -errno;
	}
}

/*
 * Tries to parse one frame at rhead. Returns its size (> 0) with *f filled, 0 if more bytes
 * are needed (*need = total bytes needed from rhead when known), or a negative proto_error.
 */
static long parse_next(struct tally_client *c, struct proto_frame *f, size_t *need)
{
	*need = PROTO_HEADER_BYTES;
	if (c->rtail == c->rhead)
		return 0;
	uint32_t batch_max = c->hello_done ? c->lim.batch_events_max : PROTO_BATCH_EVENTS_DEFAULT;
	return proto_frame_parse(c->rbuf + c->rhead, c->rtail - c->rhead, c->rframe_bytes_max,
				 batch_max, f, need);
}

static int find_inflight(const struct tally_client *c, uint64_t request_id)
{
	for (uint32_t i = 0; i < c->inflight_n; i++)
		if (c->inflight[i].request_id == request_id)
			return (int)i;
	return -1;
}

static void drop_inflight(struct tally_client *c, int index)
{
	c->inflight[index] = c->inflight[c->inflight_n - 1];
	c->inflight_n--;
}

/* Copies an ERROR frame into the client and last_error. The message is made printable. */
static void take_error(struct tally_client *c, const struct proto_errmsg *e)
{
	size_t n = e->message.len;
	if (n > PROTO_ERROR_MSG_BYTES_MAX)
		n = PROTO_ERROR_MSG_BYTES_MAX;
	for (size_t i = 0; i < n; i++) {
		uint8_t b = e->message.ptr[i];
		c->server_msg[i] = (b >= 0x20 && b != 0x7f) ? (char)b : '?';
	}
	c->server_msg[n] = '\0';
	c->last_server_error = e->code;
	set_err(c, "server error %s (%s): %s", proto_error_code(e->code),
		e->fatal                           ? "fatal"
		: proto_error_retryable(e->code) ? "retryable"
						 : "not fatal",
		n ? c->server_msg : proto_error_str(e->code));
}

static const char *frame_type_name(uint8_t type)
{
	switch (type) {
	case PROTO_HELLO: return "HELLO";
	case PROTO_HELLO_OK: return "HELLO_OK";
	case PROTO_BATCH: return "BATCH";
	case PROTO_ACK: return "ACK";
	case PROTO_ERROR: return "ERROR";
	case PROTO_PING: return "PING";
	case PROTO_PONG: return "PONG";
	default: return "unknown";
	}
}

/*
 * Turns a parsed frame (after HELLO) into a reply. Returns 0, or TALLY_CLIENT_E_PROTOCOL
 * (client broken) for a frame the server should not have sent.
 */
static int handle_frame(struct tally_client *c, const struct proto_frame *f,
			struct tally_client_reply *out)
{
	memset(out, 0, sizeof(*out));
	switch (f->type) {
	case PROTO_ACK: {
		int i = find_inflight(c, f->u.ack.request_id);
		if (i < 0) {
			set_err(c, "protocol error: ACK for request id %llu, which is not in flight",
				(unsigned long long)f->u.ack.request_id);
			c->untrusted = true;
			return fail_broken(c, TALLY_CLIENT_E_PROTOCOL);
		}
		if (f->u.ack.receipt_count != c->inflight[i].event_count) {
			set_err(c, "protocol error: ACK for request id %llu has %u receipts for %u events",
				(unsigned long long)f->u.ack.request_id, f->u.ack.receipt_count,
				c->inflight[i].event_count);
			c->untrusted = true;
			return fail_broken(c, TALLY_CLIENT_E_PROTOCOL);
		}
		for (uint32_t k = 0; k < f->u.ack.receipt_count; k++)
			proto_ack_receipt(&f->u.ack, k, &c->receipts[k]);
		drop_inflight(c, i);
		out->kind = TALLY_CLIENT_REPLY_ACK;
		out->request_id = f->u.ack.request_id;
		out->receipt_count = f->u.ack.receipt_count;
		out->receipts = c->receipts;
		return 0;
	}
	case PROTO_ERROR: {
		take_error(c, &f->u.error);
		/* The batch it names will get no ACK: it is no longer in flight. */
		int i = f->u.error.request_id ? find_inflight(c, f->u.error.request_id) : -1;
		if (i >= 0)
			drop_inflight(c, i);
		if (f->u.error.fatal)
			c->broken = true;
		out->kind = TALLY_CLIENT_REPLY_ERROR;
		out->request_id = f->u.error.request_id;
		out->error_code = f->u.error.code;
		out->fatal = f->u.error.fatal != 0;
		out->message = c->server_msg;
		return 0;
	}
	case PROTO_PONG:
		out->kind = TALLY_CLIENT_REPLY_PONG;
		out->nonce = f->u.ping_nonce;
		return 0;
	default:
		set_err(c, "protocol error: unexpected %s frame (type %u) from the server",
			frame_type_name(f->type), f->type);
		c->untrusted = true;
		return fail_broken(c, TALLY_CLIENT_E_PROTOCOL);
	}
}

/*
 * Waits until one whole frame is at rhead, up to timeout_ms (-1 forever, 0 no wait).
 * Returns its size (> 0) with *f filled (the caller consumes it), or -ETIMEDOUT (client
 * still usable), TALLY_CLIENT_E_CLOSED / TALLY_CLIENT_E_PROTOCOL / -errno (client broken).
 * `what` names what we wait for, for the timeout message.
 */
static long wait_frame(struct tally_client *c, int timeout_ms, struct proto_frame *f,
		       const char *what)
{
	int64_t deadline = deadline_after(timeout_ms);
	char eb[96];
	for (;;) {
		size_t need = 0;
		long n = parse_next(c, f, &need);
		if (n > 0)
			return n;
		if (n < 0) {
			set_err(c, "protocol error: malformed frame from the server: %s (%s)",
				proto_error_str((int)-n), proto_error_code((int)-n));
			return fail_broken(c, TALLY_CLIENT_E_PROTOCOL);
		}
		if (c->peer_eof) {
			size_t have = c->rtail - c->rhead;
			if (have)
				set_err(c, "server %s closed the connection in the middle of a frame "
					   "(%zu of %zu bytes received) while waiting for %s",
					c->peer, have, need > have ? need : have + 1, what);
			else
				set_err(c, "server %s closed the connection while waiting for %s",
					c->peer, what);
			return fail_broken(c, TALLY_CLIENT_E_CLOSED);
		}
		long r = read_some(c);
		if (r > 0 || r == 0)
			continue; /* parse again; EOF is handled above */
		if (r != -EAGAIN) {
			set_err(c, "receive from %s failed: %s", c->peer, errstr((int)-r, eb, sizeof(eb)));
			return fail_broken(c, (int)r);
		}
		int left = ms_left(deadline);
		if (left == 0) {
			set_err(c, "timed out after %d ms waiting for %s", timeout_ms, what);
			return -ETIMEDOUT;
		}
		struct pollfd p = {.fd = c->fd, .events = POLLIN};
		int pr = poll(&p, 1, left);
		if (pr < 0 && errno != EINTR) {
			set_err(c, "poll failed: %s", errstr(errno, eb, sizeof(eb)));
			return fail_broken(c, -errno);
		}
	}
}

/* ---------------------------------------------------------------------------------------- */
/* Send side                                                                                 */

/*
 * Writes buf[0..len) within io_timeout_ms. While the socket is full it keeps reading what
 * the server sends (into rbuf, while there is room) so that neither side can block the other.
 */
static int write_all(struct tally_client *c, const uint8_t *buf, size_t len, const char *what)
{
	int64_t deadline = deadline_after(c->io_timeout_ms);
	char eb[96];
	size_t off = 0;
	while (off < len) {
		ssize_t n = send(c->fd, buf + off, len - off, MSG_NOSIGNAL);
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			int e = errno;
			/* If the server said why before closing, that is the better message: look
			 * for an ERROR among the complete frames received (without consuming them). */
			(void)read_some(c);
			for (size_t at = c->rhead; at < c->rtail;) {
				struct proto_frame f;
				long fn = proto_frame_parse(c->rbuf + at, c->rtail - at, c->rframe_bytes_max,
							    c->hello_done ? c->lim.batch_events_max
									  : PROTO_BATCH_EVENTS_DEFAULT,
							    &f, NULL);
				if (fn <= 0)
					break;
				if (f.type == PROTO_ERROR) {
					take_error(c, &f.u.error);
					return fail_broken(c, TALLY_CLIENT_E_SERVER);
				}
				at += (size_t)fn;
			}
			set_err(c, "sending %s to %s failed: %s", what, c->peer,
				errstr(e, eb, sizeof(eb)));
			return fail_broken(c, -e);
		}
		int left = ms_left(deadline);
		if (left == 0) {
			set_err(c, "timed out after %d ms sending %s to %s (%zu of %zu bytes written)",
				c->io_timeout_ms, what, c->peer, off, len);
			return fail_broken(c, -ETIMEDOUT);
		}
		bool room = !c->peer_eof && (c->rtail < c->rbuf_cap || c->rhead > 0);
		struct pollfd p = {.fd = c->fd, .events = (short)(POLLOUT | (room ? POLLIN : 0))};
		int pr = poll(&p, 1, left);
		if (pr < 0 && errno != EINTR) {
			set_err(c, "poll failed: %s", errstr(errno, eb, sizeof(eb)));
			return fail_broken(c, -errno);
		}
		if (pr > 0 && (p.revents & POLLIN) && room) {
			long r = read_some(c);
			if (r < 0 && r != -EAGAIN && r != -ENOBUFS) {
				set_err(c, "receive from %s failed: %s", c->peer,
					errstr((int)-r, eb, sizeof(eb)));
				return fail_broken(c, (int)r);
			}
		}
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Connect and HELLO                                                                         */

static int tcp_connect(struct tally_client *c, const char *host, uint16_t port, int timeout_ms)
{
	char portstr[8];
	char eb[96];
	snprintf(portstr, sizeof(portstr), "%u", port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	struct addrinfo *res = NULL;
	int g = getaddrinfo(host, portstr, &hints, &res);
	if (g != 0) {
		set_err(c, "cannot resolve host \"%s\": %s", host, gai_strerror(g));
		return -EHOSTUNREACH;
	}
	int64_t deadline = deadline_after(timeout_ms);
	int err = -ECONNREFUSED;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
				ai->ai_protocol);
		if (fd < 0) {
			err = -errno;
			set_err(c, "socket() failed: %s", errstr(errno, eb, sizeof(eb)));
			continue;
		}
		int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
		if (r < 0 && errno == EINPROGRESS) {
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			int pr;
			do
				pr = poll(&p, 1, ms_left(deadline));
			while (pr < 0 && errno == EINTR);
			if (pr == 0) {
				close(fd);
				err = -ETIMEDOUT;
				set_err(c, "timed out after %d ms connecting to %s", timeout_ms, c->peer);
				break; /* the deadline is for the whole connect */
			}
			int soerr = 0;
			socklen_t sl = sizeof(soerr);
			if (pr < 0)
				soerr = errno;
			else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
				soerr = errno;
			r = soerr ? -1 : 0;
			errno = soerr;
		}
		if (r < 0) {
			err = -errno;
			set_err(c, "%s to %s", errstr(errno, eb, sizeof(eb)), c->peer);
			close(fd);
			continue;
		}
		int one = 1;
		/* Small frames (HELLO, a short BATCH) must not wait for Nagle's delayed ACK. */
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c->fd = fd;
		err = 0;
		break;
	}
	freeaddrinfo(res);
	return err;
}

/* Checks and stores HELLO_OK's limits, then sizes the buffers from them. */
static int take_hello_ok(struct tally_client *c, const struct proto_hello_ok *h,
			 uint32_t inflight_wish)
{
	if (h->version != PROTO_VERSION) {
		set_err(c, "protocol error: the server answered with protocol version %u, not %u",
			h->version, PROTO_VERSION);
		return fail_broken(c, TALLY_CLIENT_E_PROTOCOL);
	}
	if (h->frame_bytes_max < PROTO_FRAME_BYTES_MIN || h->frame_bytes_max > PROTO_FRAME_BYTES_MAX ||
	    h->batch_events_max == 0 || h->batch_events_max > PROTO_BATCH_EVENTS_MAX ||
	    h->inflight_max == 0 || h->tenant.len > TALLY_TENANT_BYTES_MAX) {
		set_err(c, "protocol error: HELLO_OK limits out of range (frame_bytes_max %u, "
			   "batch_events_max %u, inflight_max %u, tenant %u bytes)",
			h->frame_bytes_max, h->batch_events_max, h->inflight_max, h->tenant.len);
		return fail_broken(c, TALLY_CLIENT_E_PROTOCOL);
	}
	struct tally_client_limits *l = &c->lim;
	l->version = h->version;
	l->shard_count = h->shard_count;
	l->frame_bytes_max = h->frame_bytes_max;
	l->batch_events_max = h->batch_events_max;
	l->inflight_max = h->inflight_max;
	if (inflight_wish && inflight_wish < l->inflight_max)
		l->inflight_max = inflight_wish;
	if (l->inflight_max > TALLY_CLIENT_INFLIGHT_MAX)
		l->inflight_max = TALLY_CLIENT_INFLIGHT_MAX;
	l->server_time_us = h->server_time_us;
	l->max_future_us = h->max_future_us;
	l->max_age_us = h->max_age_us;
	l->tenant_len = h->tenant.len;
	memcpy(l->tenant, h->tenant.ptr, h->tenant.len);
	l->tenant[h->tenant.len] = '\0';

	/* The largest frame the server may send us: an ACK for a full batch, or anything else
	 * up to frame_bytes_max. */
	size_t ack_max = proto_ack_size(l->batch_events_max);
	size_t rmax = ack_max > l->frame_bytes_max ? ack_max : l->frame_bytes_max;
	c->rframe_bytes_max = (uint32_t)rmax;

	uint8_t *sbuf = malloc(l->frame_bytes_max);
	uint8_t *rbuf = malloc(rmax + CLIENT_RBUF_SLACK_BYTES);
	struct proto_receipt *rc = calloc(l->batch_events_max, sizeof(*rc));
	struct client_inflight *inf = calloc(l->inflight_max, sizeof(*inf));
	if (!sbuf || !rbuf || !rc || !inf) {
		free(sbuf);
		free(rbuf);
		free(rc);
		free(inf);
		set_err(c, "out of memory for the client buffers (%zu bytes)",
			(size_t)l->frame_bytes_max + rmax);
		return fail_broken(c, -ENOMEM);
	}
	memcpy(rbuf, c->rbuf + c->rhead, c->rtail - c->rhead);
	c->rtail -= c->rhead;
	c->rhead = 0;
	free(c->sbuf);
	free(c->rbuf);
	c->sbuf = sbuf;
	c->sbuf_cap = l->frame_bytes_max;
	c->rbuf = rbuf;
	c->rbuf_cap = rmax + CLIENT_RBUF_SLACK_BYTES;
	c->receipts = rc;
	c->inflight = inf;
	return 0;
}

int tally_client_connect(const struct tally_client_options *o, struct tally_client **out)
{
	*out = NULL;
	struct tally_client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	*out = c;
	c->fd = -1;
	c->next_request_id = 1;

	const char *host = o->host ? o->host : "127.0.0.1";
	uint16_t port = o->port ? o->port : TALLY_CLIENT_PORT_DEFAULT;
	const char *key = o->api_key ? o->api_key : "";
	const char *name = o->client_name ? o->client_name : "tally-client";
	int cto = o->connect_timeout_ms > 0 ? o->connect_timeout_ms : TALLY_CLIENT_CONNECT_TIMEOUT_MS;
	c->io_timeout_ms = o->io_timeout_ms > 0 ? o->io_timeout_ms : TALLY_CLIENT_IO_TIMEOUT_MS;
	snprintf(c->peer, sizeof(c->peer), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);

	if (strlen(key) > PROTO_API_KEY_BYTES_MAX) {
		set_err(c, "API key is %zu bytes; at most %u", strlen(key), PROTO_API_KEY_BYTES_MAX);
		return fail_broken(c, -EINVAL);
	}
	if (strlen(name) > PROTO_CLIENT_NAME_BYTES_MAX) {
		set_err(c, "client name is %zu bytes; at most %u", strlen(name),
			PROTO_CLIENT_NAME_BYTES_MAX);
		return fail_broken(c, -EINVAL);
	}
	if (o->frame_bytes_max &&
	    (o->frame_bytes_max < PROTO_FRAME_BYTES_MIN || o->frame_bytes_max > PROTO_FRAME_BYTES_MAX)) {
		set_err(c, "frame_bytes_max %u out of range [%u, %u]", o->frame_bytes_max,
			PROTO_FRAME_BYTES_MIN, PROTO_FRAME_BYTES_MAX);
		return fail_broken(c, -EINVAL);
	}

	/* HELLO-phase buffers; replaced by the negotiated ones in take_hello_ok(). */
	c->sbuf_cap = PROTO_HELLO_BYTES_MAX;
	c->sbuf = malloc(c->sbuf_cap);
	c->rbuf_cap = CLIENT_HELLO_RBUF_BYTES;
	c->rbuf = malloc(c->rbuf_cap);
	c->rframe_bytes_max = PROTO_HELLO_BYTES_MAX;
	if (!c->sbuf || !c->rbuf) {
		set_err(c, "out of memory");
		return fail_broken(c, -ENOMEM);
	}

	int err = tcp_connect(c, host, port, cto);
	if (err < 0)
		return fail_broken(c, err);

	struct proto_hello h = {
		.version = PROTO_VERSION,
		.frame_bytes_max = o->frame_bytes_max,
		.client_name = {(const uint8_t *)name, (uint32_t)strlen(name)},
		.api_key = {(const uint8_t *)key, (uint32_t)strlen(key)},
	};
	long n = proto_encode_hello(c->sbuf, c->sbuf_cap, &h);
	if (n < 0) {
		set_err(c, "cannot encode HELLO: %s", strerror((int)-n));
		return fail_broken(c, (int)n);
	}
	err = write_all(c, c->sbuf, (size_t)n, "HELLO");
	if (err < 0)
		return err;

	struct proto_frame f;
	long fn = wait_frame(c, c->io_timeout_ms, &f, "HELLO_OK");
	if (fn < 0)
		return fail_broken(c, (int)fn);
	if (f.type == PROTO_ERROR) {
		take_error(c, &f.u.error);
		return fail_broken(c, TALLY_CLIENT_E_SERVER);
	}
	if (f.type != PROTO_HELLO_OK) {
		set_err(c, "protocol error: expected HELLO_OK, got a %s frame (type %u)",
			frame_type_name(f.type), f.type);
		return fail_broken(c, TALLY_CLIENT_E_PROTOCOL);
	}
	/* The frame is consumed only now: take_hello_ok() copies the tenant out of it (and the
	 * unconsumed bytes into the new receive buffer) before freeing the HELLO-phase buffer. */
	err = take_hello_ok(c, &f.u.hello_ok, o->inflight_max);
	if (err < 0)
		return err;
	c->rhead += (size_t)fn;
	c->hello_done = true;
	c->err[0] = '\0';
	return 0;
}

void tally_client_close(struct tally_client *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	free(c->sbuf);
	free(c->rbuf);
	free(c->receipts);
	free(c->inflight);
	free(c);
}

const char *tally_client_last_error(const struct tally_client *c)
{
	return c ? c->err : "out of memory";
}

uint16_t tally_client_last_server_error(const struct tally_client *c)
{
	return c ? c->last_server_error : 0;
}

const struct tally_client_limits *tally_client_limits(const struct tally_client *c)
{
	return &c->lim;
}

uint32_t tally_client_inflight(const struct tally_client *c)
{
	return c->inflight_n;
}

int tally_client_fd(const struct tally_client *c)
{
	return c->fd;
}

/* ---------------------------------------------------------------------------------------- */
/* Batches                                                                                   */

int tally_client_batch_begin(struct tally_client *c)
{
	int err = check_usable(c);
	if (err < 0)
		return err;
	if (c->inflight_n >= c->lim.inflight_max) {
		set_err(c, "%u batches in flight, the limit: receive ACKs before sending more",
			c->inflight_n);
		return TALLY_CLIENT_E_INFLIGHT;
	}
	proto_batch_start(&c->bb, c->sbuf, c->sbuf_cap, c->next_request_id);
	c->building = true;
	return 0;
}

static int batch_add_common(struct tally_client *c, int r)
{
	if (r == -ENOSPC)
		set_err(c, "batch full: event %u does not fit in a frame of %u bytes",
			c->bb.count + 1, c->lim.frame_bytes_max);
	else if (r == -EINVAL)
		set_err(c, "event breaks a limit of the event model (see tally/event.h)");
	else if (r < 0)
		set_err(c, "cannot add event to batch: %s", strerror(-r));
	return r;
}

int tally_client_batch_add(struct tally_client *c, const struct tally_event_in *ev)
{
	if (!c->building) {
		set_err(c, "tally_client_batch_add() without tally_client_batch_begin()");
		return TALLY_CLIENT_E_NO_BATCH;
	}
	if (c->bb.count >= c->lim.batch_events_max) {
		set_err(c, "batch full: the server takes at most %u events per batch",
			c->lim.batch_events_max);
		return -E2BIG;
	}
	return batch_add_common(c, proto_batch_add(&c->bb, ev));
}

int tally_client_batch_add_raw(struct tally_client *c, const uint8_t *body, size_t len)
{
	if (!c->building) {
		set_err(c, "tally_client_batch_add_raw() without tally_client_batch_begin()");
		return TALLY_CLIENT_E_NO_BATCH;
	}
	if (c->bb.count >= c->lim.batch_events_max) {
		set_err(c, "batch full: the server takes at most %u events per batch",
			c->lim.batch_events_max);
		return -E2BIG;
	}
	return batch_add_common(c, proto_batch_add_raw(&c->bb, body, len));
}

uint32_t tally_client_batch_count(const struct tally_client *c)
{
	return c->building ? c->bb.count : 0;
}

int tally_client_batch_send(struct tally_client *c, uint64_t *request_id_out)
{
	int err = check_usable(c);
	if (err < 0)
		return err;
	if (!c->building || c->bb.count == 0) {
		set_err(c, "no events to send: tally_client_batch_begin() and _add() first");
		return TALLY_CLIENT_E_NO_BATCH;
	}
	long n = proto_batch_finish(&c->bb);
	c->building = false;
	if (n < 0) {
		set_err(c, "cannot finish batch: %s", strerror((int)-n));
		return (int)n;
	}
	uint64_t id = c->next_request_id++;
	uint32_t count = c->bb.count;
	err = write_all(c, c->sbuf, (size_t)n, "BATCH");
	if (err < 0)
		return err;
	c->inflight[c->inflight_n].request_id = id;
	c->inflight[c->inflight_n].event_count = count;
	c->inflight_n++;
	if (request_id_out)
		*request_id_out = id;
	return 0;
}

int tally_client_send_batch(struct tally_client *c, const struct tally_event_in *evs, uint32_t n,
			    uint64_t *request_id_out)
{
	int err = tally_client_batch_begin(c);
	if (err < 0)
		return err;
	if (n == 0 || n > c->lim.batch_events_max) {
		c->building = false;
		set_err(c, "batch of %u events: must be 1..%u (the server's batch_events_max)", n,
			c->lim.batch_events_max);
		return n == 0 ? -EINVAL : -E2BIG;
	}
	for (uint32_t i = 0; i < n; i++) {
		err = tally_client_batch_add(c, &evs[i]);
		if (err < 0) {
			c->building = false;
			if (err == -ENOSPC)
				set_err(c, "batch of %u events does not fit in a frame of %u bytes "
					   "(event %u overflows): send fewer per batch",
					n, c->lim.frame_bytes_max, i);
			else if (err == -EINVAL)
				set_err(c, "event %u of the batch breaks a limit of the event model", i);
			return err;
		}
	}
	return tally_client_batch_send(c, request_id_out);
}

int tally_client_send_raw(struct tally_client *c, const uint8_t *frame, size_t len)
{
	int err = check_usable(c);
	if (err < 0)
		return err;
	return write_all(c, frame, len, "raw frame");
}

int tally_client_send_ping(struct tally_client *c, uint64_t nonce)
{
	int err = check_usable(c);
	if (err < 0)
		return err;
	uint8_t buf[PROTO_HEADER_BYTES + 8];
	long n = proto_encode_ping(buf, sizeof(buf), PROTO_PING, nonce);
	if (n < 0) {
		set_err(c, "cannot encode PING: %s", strerror((int)-n));
		return (int)n;
	}
	return write_all(c, buf, (size_t)n, "PING");
}

int tally_client_recv(struct tally_client *c, int timeout_ms, struct tally_client_reply *out)
{
	struct proto_frame f;
	if (c->broken && c->hello_done && !c->untrusted) {
		/* Replies that arrived whole before the failure are still handed out: a receipt
		 * that reached us is never dropped. A malformed frame at rhead stays unread. */
		size_t need;
		long fn = parse_next(c, &f, &need);
		if (fn > 0) {
			char keep[TALLY_CLIENT_ERROR_BYTES_MAX];
			memcpy(keep, c->err, sizeof(keep));
			int herr = handle_frame(c, &f, out);
			if (herr == 0 && f.type != PROTO_ERROR)
				memcpy(c->err, keep, sizeof(keep)); /* keep what broke the client */
			c->rhead += (size_t)fn;
			return herr < 0 ? TALLY_CLIENT_E_BROKEN : 0;
		}
	}
	int err = check_usable(c);
	if (err < 0)
		return err;
	long n = wait_frame(c, timeout_ms, &f, "a reply");
	if (n < 0)
		return (int)n;
	err = handle_frame(c, &f, out);
	c->rhead += (size_t)n;
	if (c->rhead == c->rtail)
		c->rhead = c->rtail = 0;
	return err;
}

int tally_client_send_wait(struct tally_client *c, const struct tally_event_in *evs, uint32_t n,
			   struct proto_receipt *receipts)
{
	int err = check_usable(c);
	if (err < 0)
		return err;
	if (c->inflight_n) {
		set_err(c, "tally_client_send_wait() with %u batches in flight: use recv()",
			c->inflight_n);
		return TALLY_CLIENT_E_BUSY;
	}
	uint64_t id;
	err = tally_client_send_batch(c, evs, n, &id);
	if (err < 0)
		return err;
	int64_t deadline = deadline_after(c->io_timeout_ms);
	for (;;) {
		struct tally_client_reply r;
		err = tally_client_recv(c, ms_left(deadline), &r);
		if (err == -ETIMEDOUT) {
			set_err(c, "timed out after %d ms waiting for ACK (request id %llu)",
				c->io_timeout_ms, (unsigned long long)id);
			return err;
		}
		if (err < 0)
			return err;
		if (r.kind == TALLY_CLIENT_REPLY_ACK) {
			/* Only our batch is in flight, so recv() matched it to `id`. */
			memcpy(receipts, r.receipts, (size_t)r.receipt_count * sizeof(*receipts));
			return 0;
		}
		if (r.kind == TALLY_CLIENT_REPLY_ERROR)
			return TALLY_CLIENT_E_SERVER;
		/* A PONG of an earlier send_ping(): not ours to report; keep waiting. */
	}
}

int tally_client_ping(struct tally_client *c)
{
	int err = check_usable(c);
	if (err < 0)
		return err;
	if (c->inflight_n) {
		set_err(c, "tally_client_ping() with %u batches in flight: use send_ping() and recv()",
			c->inflight_n);
		return TALLY_CLIENT_E_BUSY;
	}
	uint64_t nonce = (uint64_t)now_ms() ^ 0x74616c6cULL;
	err = tally_client_send_ping(c, nonce);
	if (err < 0)
		return err;
	int64_t deadline = deadline_after(c->io_timeout_ms);
	for (;;) {
		struct tally_client_reply r;
		err = tally_client_recv(c, ms_left(deadline), &r);
		if (err == -ETIMEDOUT) {
			set_err(c, "timed out after %d ms waiting for PONG", c->io_timeout_ms);
			return err;
		}
		if (err < 0)
			return err;
		if (r.kind == TALLY_CLIENT_REPLY_ERROR)
			return TALLY_CLIENT_E_SERVER;
		if (r.kind == TALLY_CLIENT_REPLY_PONG && r.nonce == nonce)
			return 0;
	}
}

const char *tally_client_strerror(int err)
{
	switch (err) {
	case TALLY_CLIENT_E_SERVER: return "the server sent an ERROR frame";
	case TALLY_CLIENT_E_PROTOCOL: return "the server sent a malformed or unexpected frame";
	case TALLY_CLIENT_E_CLOSED: return "the server closed the connection";
	case TALLY_CLIENT_E_INFLIGHT: return "too many batches in flight";
	case TALLY_CLIENT_E_BROKEN: return "connection unusable after an earlier error";
	case TALLY_CLIENT_E_BUSY: return "batches are in flight";
	case TALLY_CLIENT_E_NO_BATCH: return "no batch being built";
	default: return err < 0 ? strerror(-err) : "success";
	}
}
