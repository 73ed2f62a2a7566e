/*
 * net.c — tallyd's threads: per-core event loops, connections, frame handling, and the routing
 * of events to the shards that own them. Architecture: docs/architecture.md.
 *
 * Threads and ownership:
 *  - One worker thread per core. Each owns: its SO_REUSEPORT listener, the connections it
 *    accepted, and the shards s with s % threads == id. Nothing a worker owns is touched by
 *    another thread, with two exceptions that are designed for it: a batch slot's receipts
 *    (written at distinct indices by the shard owners, see broker.h) and its atomic `pending`.
 *  - Events cross threads in chunks through the ring mesh (ring.h): the connection's thread
 *    copies the events for worker d into its chunk for d (one SPSC ring per ordered pair),
 *    d runs them through its shards and sends the chunk back for reuse. A slot whose last
 *    event is resolved on another thread is sent back to the connection's thread the same way.
 *    Messages are tagged pointers (low 2 bits).
 *  - A worker sleeps in epoll_wait / io_uring_wait_cqe; a ring message or a finished sync wakes
 *    it through its eventfd. No busy-spinning while idle.
 *  - One admin thread (tally-admin) touches no connection: it reads the workers' relaxed stats
 *    counters for the stats lines and, on cfg->reload_fd (SIGHUP), loads the --auth-file
 *    again and publishes the new key table (release; workers load it with acquire at each
 *    HELLO). Key tables are freed only after the workers stopped: connections point into the
 *    one that let them in.
 *
 * Bounds (no unbounded buffers, whatever clients do):
 *  - a connection's receive buffer grows to at most the negotiated frame size + header;
 *  - a connection has at most inflight_max frames queued or in flight; past that its frames
 *    stay unparsed in its buffer and reading from it stops (TCP flow control does the rest);
 *  - chunks are a fixed pool per (from, to) pair, each able to hold a whole batch; a batch
 *    that finds no free chunk waits (its connection is "stalled") until one comes back;
 *  - at most max_conns connections; a HELLO is capped at PROTO_HELLO_BYTES_MAX and must come
 *    within hello_timeout_ms; a frame once started must complete within read_timeout_ms.
 * Allocation: a batch slot is one malloc per BATCH frame (never per event); everything else is
 * allocated at start-up or when a connection is accepted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "lathist.h"
#include "net.h"
#include "shard.h"
#include "tally/dedup.h"
#include "tally/ring.h"
#include "tally/wal.h"

#define NET_RBUF_INITIAL   (16u << 10)
#define NET_EPOLL_EVENTS   256
#define NET_TIMER_MS       50
#define NET_DRAIN_MAX      512
#define NET_CHUNKS_PER_PAIR 8
#define NET_URING_ENTRIES  4096
#define NET_URING_BUFS     512      /* provided buffers per thread (power of two) */
#define NET_URING_BUF_BYTES (32u << 10)
#define NET_URING_BGID     7
#define NET_SLOT_MSG_BYTES 256 /* room for a failed batch's ERROR message */
#define NET_LINGER_MS      2000
#define NET_STOP_DEADLINE_S 30 /* finishing in-flight batches at SIGTERM, at most */

#define TAG_CHUNK  0u /* from -> to: events to run */
#define TAG_RETURN 1u /* to -> from: chunk run, reusable */
#define TAG_SLOT   2u /* shard owner -> connection's thread: slot resolved */
#define TAG_FD     3u /* accepting thread -> a less loaded one: a new connection (fd << 2) */
#define TAG_MASK   3u

enum conn_state {
	CONN_HELLO = 0,  /* only HELLO accepted */
	CONN_READY,      /* authenticated */
	CONN_AUTHFAIL,   /* bad key: the ERROR goes out after auth_fail_delay_ms */
	CONN_DRAIN,      /* fatal error queued: send what is queued, then linger */
	CONN_LINGER,     /* FIN sent: input is read and dropped until EOF or close_at_us */
};

/* Stages of a batch's latency (struct broker_slot's timestamps), logged at stop. */
enum { LAT_RECEIVE, LAT_DURABLE, LAT_HANDBACK, LAT_SEND, LAT_TOTAL, LAT_N };
static const char *const lat_name[LAT_N] = {"receive", "durable", "handback", "send", "total"};

struct conn {
	int fd;
	uint16_t worker;
	uint8_t state;
	bool closed;       /* fd closed; struct lives until inflight == 0 */
	bool read_paused;  /* not reading: buffer full, inflight cap, stall, or draining */
	bool stalled;      /* on the worker's stalled list (waiting for a chunk) */
	bool want_write;
	bool in_parse;     /* conn_parse() is on the stack: nested calls only ask for another pass */
	bool reparse;
	bool budget_waited;  /* logged once */
	bool budget_waiting; /* counted in broker.budget_waiters */
	uint32_t hold;     /* callers on the stack using this struct: it is not freed meanwhile */
	bool recv_armed;   /* io_uring: the multishot recv is outstanding */
	bool send_armed;   /* io_uring: a sendmsg is outstanding */
	bool cancel_sent;  /* io_uring: the recv is being cancelled (reading paused) */
	int held_head, held_tail; /* io_uring: received buffers not yet copied (-1: none) */
	struct iovec siov[16];    /* io_uring: the outstanding sendmsg's frames */
	struct msghdr smh;
	uint8_t *rbuf;
	uint32_t rlen, rcap;
	uint32_t frame_bytes_max;
	uint32_t inflight; /* slots allocated for this connection and not yet freed */
	const struct broker_tenant *tenant;
	struct broker_slot *sq_head, *sq_tail; /* frames ready to send, in order */
	int64_t hello_deadline_us;
	int64_t last_rx_us;
	int64_t partial_since_us; /* when an incomplete frame started waiting, 0 if none */
	int64_t frame_t0_us;      /* the frame being handled: when its first bytes were read */
	int64_t close_at_us;
	struct conn *prev, *next;  /* worker's list */
	struct conn *next_stalled;
	uint64_t id;
};

struct chunk {
	int64_t sent_us; /* handed to the ring (for the hop histogram) */
	uint16_t from, to;
	uint32_t n, data_len;
	uint32_t items_cap, data_cap;
	struct shard_item *items;
	uint16_t *item_shard;
	uint8_t *data;
	struct chunk *next_free;
};

struct outq {
	void **v;
	size_t n, cap;
};

struct worker {
	uint16_t id;
	struct broker *b;
	pthread_t th;
	int listen_fd;
	int epfd;
	bool uring;
	struct io_uring ring;
	bool uring_ready;
	struct io_uring_buf_ring *br;  /* provided buffers for multishot recv */
	uint8_t *bufs;
	int *held_next;                /* per buffer id: next held buffer of the same conn */
	uint32_t *held_len, *held_off;

	struct conn *conns;
	uint32_t nconns;
	_Atomic uint32_t load; /* open connections, plus those handed to us and not yet taken */
	uint64_t conns_taken, conns_handed; /* for the log line at stop */
	struct conn *stalled;

	struct shard *shards[BROKER_SHARDS_MAX]; /* indexed by global shard id; NULL if not ours */
	/* Our shards' sync groups: one for all of them when they can share a device flush
	   (wal_shard_group_flush), else one per shard (each with its own syncer, so slow
	   fdatasyncs of different shards overlap). */
	struct shard_group *groups[BROKER_SHARDS_MAX];
	uint16_t ngroups;

	struct chunk *out[BROKER_THREADS_MAX];       /* chunk being filled for each worker */
	struct chunk *free_chunks[BROKER_THREADS_MAX];
	struct outq overflow[BROKER_THREADS_MAX];    /* ring was full: retry next iteration */
	bool need_wake[BROKER_THREADS_MAX];

	/* Scratch for grouping a batch's local events by shard. */
	struct shard_item *local;
	uint16_t *local_shard;
	struct shard_item *sorted;
	uint32_t *counts;

	int64_t now_us;
	int64_t last_timer_us;
	struct lathist lat[LAT_N]; /* batches answered by this worker's connections */
	struct lathist turn;       /* loop turns: woken -> about to sleep again, µs */
	struct lathist hop;        /* chunks to us: sent -> we run its events, µs */
	int64_t woke_us;
	int64_t sync_at_us; /* a shard holds a sync back for its next commit window until then */
	bool epoll_us;      /* epoll_pwait2 (microsecond timeouts) works here */
	bool uring_disabled; /* ring created disabled (SINGLE_ISSUER): this thread enables it */
	bool stopping_seen;
	bool lingering;
	int64_t stop_deadline_us;

	/* Answered batches of this worker's connections, for the stats lines: written by this
	   worker only (relaxed), read by the admin thread. receipts[k]: events answered with
	   status k (PROTO_ACCEPTED .. PROTO_REJECTED). */
	_Atomic uint64_t st_batches, st_failed_batches, st_failed_events;
	_Atomic uint64_t st_receipts[PROTO_REJECTED + 1];
};

struct broker {
	const struct broker_config *cfg;
	struct wal *wal;
	struct broker_auth *auth;
	struct broker_tenant default_tenant;
	struct ring_mesh *mesh;
	uint16_t nworkers;
	uint16_t nshards;
	uint16_t port;
	int io;
	struct worker *workers;
	struct shard *shards[BROKER_SHARDS_MAX];
	_Atomic uint32_t nconns;
	_Atomic int64_t slots_live;  /* batch slots not yet freed, all workers */
	_Atomic int64_t rbuf_extra;  /* receive-buffer bytes above NET_RBUF_INITIAL, all conns */
	_Atomic int32_t budget_waiters; /* connections waiting for receive-buffer budget */
	_Atomic bool stopping;
	_Atomic int fatal;
	uint64_t conn_ids;
	int64_t started_us;

	/* The admin thread (tally-admin): a stats line per cfg->stats_interval_s, a total at
	   stop, and the API keys reloaded when cfg->reload_fd turns readable (SIGHUP). It
	   sleeps in poll() on both; admin_fd (an eventfd) wakes it to stop. */
	pthread_t admin_th;
	bool admin_running;
	int admin_fd;
	_Atomic bool admin_stop;
	/* The API keys HELLO is checked against: `auth` at start, then each reloaded table.
	   Connections keep pointers into the table that let them in (their tenant), so no table
	   is freed before the workers have stopped: reloaded ones are kept in auth_owned. */
	_Atomic(struct broker_auth *) auth_cur;
	struct broker_auth **auth_owned;
	size_t auth_owned_n;
};

static void conn_maybe_free(struct worker *w, struct conn *c);
static void conn_close(struct worker *w, struct conn *c);
static void conn_take(struct worker *w, int fd);
static void conn_try_send(struct worker *w, struct conn *c);
static void conn_parse(struct worker *w, struct conn *c);
static void conn_update_read(struct worker *w, struct conn *c);
static void conn_linger(struct worker *w, struct conn *c);

static void conn_hold(struct conn *c)
{
	c->hold++;
}

static void conn_release(struct worker *w, struct conn *c)
{
	c->hold--;
	conn_maybe_free(w, c);
}

/* Gives an empty receive buffer's memory above the initial size back to the budget. */
static void conn_shrink_rbuf(struct worker *w, struct conn *c)
{
	if (c->rlen != 0 || c->rcap <= NET_RBUF_INITIAL)
		return;
	uint8_t *nb = realloc(c->rbuf, NET_RBUF_INITIAL);
	if (!nb)
		return;
	atomic_fetch_sub(&w->b->rbuf_extra, (int64_t)c->rcap - NET_RBUF_INITIAL);
	c->rbuf = nb;
	c->rcap = NET_RBUF_INITIAL;
}

/* ------------------------------------------------------------------ slots */

static struct broker_slot *slot_alloc(struct worker *w, struct conn *c, uint32_t n,
				      uint64_t request_id)
{
	/* Room for the ACK, or for an ERROR frame with a short message, whichever is larger. */
	size_t cap = proto_ack_size(n);
	if (cap < PROTO_HEADER_BYTES + 14 + NET_SLOT_MSG_BYTES)
		cap = PROTO_HEADER_BYTES + 14 + NET_SLOT_MSG_BYTES;
	struct broker_slot *s = malloc(sizeof *s + cap);
	if (!s)
		return NULL;
	s->next = NULL;
	s->conn = c;
	s->worker = w->id;
	s->n = n;
	s->request_id = request_id;
	s->tenant = c->tenant;
	atomic_init(&s->pending, n);
	atomic_init(&s->error, 0);
	s->len = 0;
	s->sent = 0;
	s->cap = (uint32_t)cap;
	s->t_recv_us = s->t_parsed_us = s->t_resolved_us = s->t_queued_us = 0;
	/*
	 * seq_cst increment, then seq_cst load of `stopping`: a worker that stops after seeing
	 * stopping == true and then slots_live == 0 can never miss a batch slot, because a slot
	 * counted after that load sees stopping == true here and is refused (Dekker). So no
	 * batch can send events to a worker that has already stopped.
	 */
	atomic_fetch_add(&w->b->slots_live, 1);
	if (n > 0 && atomic_load(&w->b->stopping)) {
		atomic_fetch_sub(&w->b->slots_live, 1);
		free(s);
		return NULL;
	}
	c->inflight++;
	return s;
}

static void slot_free(struct worker *w, struct broker_slot *s);

/* A slot's frame was written to the socket in full. */
static void slot_sent(struct worker *w, struct broker_slot *s)
{
	if (s->t_queued_us) {
		int64_t now = broker_now_us();
		lathist_add(&w->lat[LAT_RECEIVE], s->t_parsed_us - s->t_recv_us);
		lathist_add(&w->lat[LAT_DURABLE], s->t_resolved_us - s->t_parsed_us);
		lathist_add(&w->lat[LAT_HANDBACK], s->t_queued_us - s->t_resolved_us);
		lathist_add(&w->lat[LAT_SEND], now - s->t_queued_us);
		lathist_add(&w->lat[LAT_TOTAL], now - s->t_recv_us);
	}
	slot_free(w, s);
}

static void slot_free(struct worker *w, struct broker_slot *s)
{
	struct conn *c = s->conn;
	c->inflight--;
	atomic_fetch_sub_explicit(&w->b->slots_live, 1, memory_order_relaxed);
	free(s);
	conn_maybe_free(w, c);
}

/* Queues a control frame (HELLO_OK, ERROR, PONG) already encoded in buf. */
static void conn_queue_frame(struct worker *w, struct conn *c, const uint8_t *buf, size_t len)
{
	struct broker_slot *s = slot_alloc(w, c, 0, 0);
	if (!s || len > s->cap) {
		if (s)
			slot_free(w, s);
		conn_close(w, c);
		return;
	}
	memcpy(s->frame, buf, len);
	s->len = (uint32_t)len;
	if (c->sq_tail)
		c->sq_tail->next = s;
	else
		c->sq_head = s;
	c->sq_tail = s;
	conn_try_send(w, c);
}

static void conn_send_error(struct worker *w, struct conn *c, int code, bool fatal,
			    uint64_t request_id, const char *msg)
{
	uint8_t buf[PROTO_HEADER_BYTES + 14 + PROTO_ERROR_MSG_BYTES_MAX];
	char text[256];
	snprintf(text, sizeof text, "%s%s%s", proto_error_str(code), msg ? ": " : "",
		 msg ? msg : "");
	long n = proto_encode_error(buf, sizeof buf, (uint16_t)code, fatal, request_id, text);
	if (n > 0)
		conn_queue_frame(w, c, buf, (size_t)n);
	if (fatal && !c->closed) {
		c->state = CONN_DRAIN;
		c->close_at_us = w->now_us + 1000000;
		conn_update_read(w, c);
	}
}

/* The connection's thread: a batch answered (err: with an ERROR, none of it stored). */
static void stats_count(struct worker *w, const struct broker_slot *s, uint16_t err)
{
	if (err) {
		atomic_fetch_add_explicit(&w->st_failed_batches, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&w->st_failed_events, s->n, memory_order_relaxed);
		return;
	}
	uint32_t n[PROTO_REJECTED + 1] = {0};
	const uint8_t *r = s->frame + PROTO_HEADER_BYTES + PROTO_ACK_HEADER_BYTES;
	for (uint32_t i = 0; i < s->n; i++, r += PROTO_RECEIPT_BYTES)
		n[r[0] <= PROTO_REJECTED ? r[0] : 0]++;
	for (int k = PROTO_ACCEPTED; k <= PROTO_REJECTED; k++)
		if (n[k])
			atomic_fetch_add_explicit(&w->st_receipts[k], n[k], memory_order_relaxed);
	atomic_fetch_add_explicit(&w->st_batches, 1, memory_order_relaxed);
}

/* The connection's thread: every event of the slot is resolved; send its ACK or ERROR. */
static void slot_complete_local(struct worker *w, struct broker_slot *s)
{
	struct conn *c = s->conn;
	if (c->closed || atomic_load(&w->b->fatal)) {
		slot_free(w, s);
		return;
	}
	uint16_t err = atomic_load_explicit(&s->error, memory_order_acquire);
	long n;
	if (err) {
		/* Bounded by the slot's reserved room, so the ERROR always fits. */
		char text[NET_SLOT_MSG_BYTES];
		snprintf(text, sizeof text, "%s: batch %llu not stored; retry it with the same keys",
			 proto_error_str(err), (unsigned long long)s->request_id);
		n = proto_encode_error(s->frame, s->cap, err, false, s->request_id, text);
	} else {
		struct proto_ack_builder ab = {.buf = s->frame, .cap = s->cap,
					       .len = proto_ack_size(s->n), .count = s->n};
		n = proto_ack_finish(&ab);
		s->t_queued_us = broker_now_us();
	}
	stats_count(w, s, err);
	if (n <= 0) {
		/* Cannot happen (the slot has room for both); never leave a batch unanswered. */
		broker_log(LOG_ERROR, "conn %llu: could not encode the answer to batch %llu; closing",
			   (unsigned long long)c->id, (unsigned long long)s->request_id);
		slot_free(w, s);
		conn_close(w, c);
		return;
	}
	s->len = (uint32_t)n;
	s->next = NULL;
	if (c->sq_tail)
		c->sq_tail->next = s;
	else
		c->sq_head = s;
	c->sq_tail = s;
	conn_try_send(w, c);
}

static void worker_send_msg(struct worker *w, uint16_t to, void *p, unsigned tag)
{
	void *msg = (void *)((uintptr_t)p | tag);
	struct outq *q = &w->overflow[to];
	if (q->n == 0 && ring_send(w->b->mesh, w->id, to, msg)) {
		w->need_wake[to] = true;
		return;
	}
	if (q->n == q->cap) {
		size_t ncap = q->cap ? q->cap * 2 : 64;
		void **nv = realloc(q->v, ncap * sizeof *nv);
		if (!nv) {
			broker_log(LOG_ERROR, "out of memory queueing a ring message; stopping");
			atomic_store(&w->b->fatal, -ENOMEM);
			return;
		}
		q->v = nv;
		q->cap = ncap;
	}
	q->v[q->n++] = msg;
}

/* shard_resolve_fn: runs on the shard owner's thread (this worker). */
static void worker_resolve(void *ctx, struct broker_slot *s, uint32_t count)
{
	struct worker *w = ctx;
	/* acq_rel: our receipt bytes are released to whoever completes the slot, and the one
	   that completes it acquires every other thread's receipts. */
	if (atomic_fetch_sub_explicit(&s->pending, count, memory_order_acq_rel) != count)
		return;
	s->t_resolved_us = broker_now_us();
	if (s->worker == w->id)
		slot_complete_local(w, s);
	else
		worker_send_msg(w, s->worker, s, TAG_SLOT);
}

static void worker_wake_cb(void *ctx)
{
	struct worker *w = ctx;
	ring_wake(w->b->mesh, w->id);
}

/* ------------------------------------------------------------------ chunks */

static struct chunk *chunk_new(const struct broker_config *cfg, uint16_t from, uint16_t to)
{
	struct chunk *ch = calloc(1, sizeof *ch);
	if (!ch)
		return NULL;
	ch->from = from;
	ch->to = to;
	ch->items_cap = cfg->batch_events_max;
	ch->data_cap = cfg->frame_bytes_max;
	ch->items = malloc(ch->items_cap * sizeof *ch->items);
	ch->item_shard = malloc(ch->items_cap * sizeof *ch->item_shard);
	ch->data = malloc(ch->data_cap);
	if (!ch->items || !ch->item_shard || !ch->data) {
		free(ch->items);
		free(ch->item_shard);
		free(ch->data);
		free(ch);
		return NULL;
	}
	return ch;
}

static void chunk_free(struct chunk *ch)
{
	free(ch->items);
	free(ch->item_shard);
	free(ch->data);
	free(ch);
}

/* Makes sure the chunk for `to` can take a batch of n events and `bytes` bytes. */
static bool chunk_reserve(struct worker *w, uint16_t to, uint32_t n, uint32_t bytes)
{
	struct chunk *ch = w->out[to];
	if (ch && ch->items_cap - ch->n >= n && ch->data_cap - ch->data_len >= bytes)
		return true;
	if (ch && ch->n > 0) {
		ch->sent_us = broker_now_us();
		worker_send_msg(w, to, ch, TAG_CHUNK);
		w->out[to] = NULL;
	}
	if (!w->out[to]) {
		ch = w->free_chunks[to];
		if (!ch)
			return false;
		w->free_chunks[to] = ch->next_free;
		ch->n = 0;
		ch->data_len = 0;
		w->out[to] = ch;
	}
	return true;
}

/* Runs items grouped by shard. items/shard_of have n entries, all for shards of this worker. */
static void worker_run_items(struct worker *w, struct shard_item *items, const uint16_t *shard_of,
			     uint32_t n)
{
	uint16_t ns = w->b->nshards;
	if (n == 0)
		return;
	memset(w->counts, 0, (ns + 1) * sizeof *w->counts);
	for (uint32_t i = 0; i < n; i++)
		w->counts[shard_of[i] + 1]++;
	for (uint16_t s = 0; s < ns; s++)
		w->counts[s + 1] += w->counts[s];
	for (uint32_t i = 0; i < n; i++)
		w->sorted[w->counts[shard_of[i]]++] = items[i];
	/* counts[s] is now the end of shard s's run; its start is the previous shard's end. */
	uint32_t start = 0;
	for (uint16_t s = 0; s < ns; s++) {
		uint32_t end = w->counts[s];
		if (end > start)
			shard_submit(w->shards[s], w->sorted + start, end - start, w->now_us);
		start = end;
	}
}

static void worker_handle_msg(struct worker *w, void *msg)
{
	unsigned tag = (unsigned)((uintptr_t)msg & TAG_MASK);
	void *p = (void *)((uintptr_t)msg & ~(uintptr_t)TAG_MASK);
	if (tag == TAG_CHUNK) {
		struct chunk *ch = p;
		lathist_add(&w->hop, broker_now_us() - ch->sent_us);
		worker_run_items(w, ch->items, ch->item_shard, ch->n);
		worker_send_msg(w, ch->from, ch, TAG_RETURN);
	} else if (tag == TAG_RETURN) {
		struct chunk *ch = p;
		ch->next_free = w->free_chunks[ch->to];
		w->free_chunks[ch->to] = ch;
	} else if (tag == TAG_FD) {
		int fd = (int)((uintptr_t)p >> 2);
		atomic_fetch_sub(&w->load, 1); /* the reservation; conn_take counts it again */
		if (atomic_load(&w->b->stopping))
			close(fd);
		else
			conn_take(w, fd);
	} else {
		slot_complete_local(w, p);
	}
}

static void worker_drain_rings(struct worker *w)
{
	void *msgs[NET_DRAIN_MAX];
	size_t n;
	while ((n = ring_drain(w->b->mesh, w->id, msgs, NET_DRAIN_MAX)) > 0)
		for (size_t i = 0; i < n; i++)
			worker_handle_msg(w, msgs[i]);
}

static void worker_flush_out(struct worker *w)
{
	for (uint16_t to = 0; to < w->b->nworkers; to++) {
		if (to == w->id)
			continue;
		if (w->out[to] && w->out[to]->n > 0) {
			w->out[to]->sent_us = broker_now_us();
			worker_send_msg(w, to, w->out[to], TAG_CHUNK);
			w->out[to] = NULL;
		}
		struct outq *q = &w->overflow[to];
		size_t k = 0;
		while (k < q->n && ring_send(w->b->mesh, w->id, to, q->v[k]))
			k++;
		if (k) {
			memmove(q->v, q->v + k, (q->n - k) * sizeof *q->v);
			q->n -= k;
			w->need_wake[to] = true;
		}
		if (w->need_wake[to]) {
			ring_wake(w->b->mesh, to);
			w->need_wake[to] = false;
		}
	}
}

/* ------------------------------------------------------------------ frames */

static void handle_hello(struct worker *w, struct conn *c, const struct proto_hello *h)
{
	const struct broker_hello_env env = {
		.cfg = w->b->cfg,
		.auth = atomic_load_explicit(&w->b->auth_cur, memory_order_acquire),
		.default_tenant = &w->b->default_tenant,
		.nshards = w->b->nshards,
		.now_us = w->now_us,
	};
	uint8_t buf[BROKER_HELLO_OK_BYTES_MAX];
	const struct broker_tenant *t;
	uint32_t fmax;
	uint16_t err;
	const char *msg;
	long n = broker_hello_answer(&env, h, buf, sizeof buf, &t, &fmax, &err, &msg);
	if (n < 0) {
		conn_close(w, c);
		return;
	}
	if (err == PROTO_E_AUTH) {
		/* Delayed, so that guessing keys is slow; nothing more is read meanwhile. */
		c->state = CONN_AUTHFAIL;
		c->close_at_us = w->now_us + (int64_t)w->b->cfg->auth_fail_delay_ms * 1000;
		conn_update_read(w, c);
		broker_log(LOG_WARN, "conn %llu: authentication failed", (unsigned long long)c->id);
		return;
	}
	if (err) {
		conn_send_error(w, c, err, true, 0, msg);
		return;
	}
	c->tenant = t;
	c->frame_bytes_max = fmax;
	c->state = CONN_READY;
	conn_queue_frame(w, c, buf, (size_t)n);
}

/*
 * Returns false if the batch cannot be taken now (no chunk free): the frame stays in the
 * buffer and the connection waits on the stalled list.
 */
static bool handle_batch(struct worker *w, struct conn *c, const struct proto_batch *bt)
{
	const struct broker_config *cfg = w->b->cfg;
	struct broker *b = w->b;
	uint16_t nw = b->nworkers;

	for (uint16_t to = 0; to < nw; to++)
		if (to != w->id && !chunk_reserve(w, to, bt->event_count, bt->events.len))
			return false;
	if (atomic_load(&b->stopping))
		return false; /* shutting down: not taken, no ACK; the client resends it */
	struct broker_slot *s = slot_alloc(w, c, bt->event_count, bt->request_id);
	if (!s) {
		if (atomic_load(&b->stopping))
			return false;
		conn_send_error(w, c, PROTO_E_UNAVAILABLE, false, bt->request_id, "out of memory");
		return true;
	}
	s->t_recv_us = c->frame_t0_us;
	s->t_parsed_us = w->now_us;
	struct proto_ack_builder ab;
	proto_ack_start(&ab, s->frame, s->cap, bt->request_id);

	struct tally_view tenant = {(const uint8_t *)c->tenant->name, c->tenant->len};
	struct proto_batch_iter it;
	struct tally_view body;
	uint32_t nlocal = 0, rejected = 0;
	int64_t now = w->now_us;
	proto_batch_iter_init(bt, &it);
	for (uint32_t i = 0; proto_batch_next(&it, &body); i++) {
		struct tally_event ev;
		enum tally_reject r = event_decode(body.ptr, body.len, &ev);
		if (r == TALLY_REJECT_NONE && ev.event_time_us > now + cfg->max_future_us)
			r = TALLY_REJECT_TIME_TOO_NEW;
		if (r == TALLY_REJECT_NONE && ev.event_time_us < now - cfg->max_age_us)
			r = TALLY_REJECT_TIME_TOO_OLD;
		if (r != TALLY_REJECT_NONE) {
			broker_slot_receipt(s, i, PROTO_REJECTED, (uint8_t)r, 0,
					    PROTO_OFFSET_UNKNOWN);
			rejected++;
			continue;
		}
		struct shard_item item = {
			.slot = s,
			.idx = i,
			.digest = event_content_digest(&ev),
			.fp = event_fingerprint(tenant, ev.key),
			.event_time_us = ev.event_time_us,
			.body = body.ptr,
			.body_len = (uint16_t)body.len,
			.tenant = c->tenant,
		};
		uint16_t shard = dedup_shard_of(item.fp, b->nshards);
		uint16_t owner = (uint16_t)(shard % nw);
		if (owner == w->id) {
			w->local[nlocal] = item;
			w->local_shard[nlocal++] = shard;
		} else {
			struct chunk *ch = w->out[owner];
			memcpy(ch->data + ch->data_len, body.ptr, body.len);
			item.body = ch->data + ch->data_len;
			ch->data_len += body.len;
			ch->items[ch->n] = item;
			ch->item_shard[ch->n++] = shard;
		}
	}
	worker_run_items(w, w->local, w->local_shard, nlocal);
	if (rejected)
		worker_resolve(w, s, rejected);
	return true;
}

/* Parses and handles every complete frame in the buffer that may be handled now. */
static void conn_parse_pass(struct worker *w, struct conn *c);

static void conn_parse(struct worker *w, struct conn *c)
{
	if (c->in_parse) {
		c->reparse = true;
		return;
	}
	conn_hold(c);
	c->in_parse = true;
	do {
		c->reparse = false;
		conn_parse_pass(w, c);
	} while (c->reparse && !c->closed);
	c->in_parse = false;
	conn_release(w, c);
}

static void conn_parse_pass(struct worker *w, struct conn *c)
{
	const struct broker_config *cfg = w->b->cfg;
	uint32_t off = 0;
	while (!c->closed && (c->state == CONN_HELLO || c->state == CONN_READY) && off < c->rlen) {
		/* While stopping, complete frames already received are still handled: only
		   reading from the socket stops (conn_wants_read). */
		if (c->inflight >= cfg->inflight_max)
			break;
		struct proto_frame f;
		size_t need = 0;
		uint32_t limit = c->state == CONN_HELLO ? PROTO_HELLO_BYTES_MAX : c->frame_bytes_max;
		long n = proto_frame_parse(c->rbuf + off, c->rlen - off, limit,
					   cfg->batch_events_max, &f, &need);
		if (n == 0) {
			if (need > c->rcap) {
				/* Grow to the frame's size: bounded by the negotiated maximum, and
				   all connections together by the buffer budget. Over budget, the
				   connection waits (reading paused) until others release memory. */
				int64_t delta = (int64_t)need - c->rcap;
				int64_t was = atomic_fetch_add(&w->b->rbuf_extra, delta);
				if (was + delta > (int64_t)cfg->rbuf_budget_bytes) {
					atomic_fetch_sub(&w->b->rbuf_extra, delta);
					if (!c->budget_waiting) {
						c->budget_waiting = true;
						atomic_fetch_add(&w->b->budget_waiters, 1);
					}
					if (!c->budget_waited) {
						c->budget_waited = true;
						broker_log(LOG_INFO, "conn %llu: waits for receive-buffer "
							   "budget (--max-buffer-mb)",
							   (unsigned long long)c->id);
					}
					if (!c->stalled) {
						c->stalled = true;
						c->next_stalled = w->stalled;
						w->stalled = c;
					}
					break;
				}
				if (c->budget_waiting) {
					c->budget_waiting = false;
					atomic_fetch_sub(&w->b->budget_waiters, 1);
				}
				uint8_t *nb = realloc(c->rbuf, need);
				if (!nb) {
					atomic_fetch_sub(&w->b->rbuf_extra, delta);
					conn_send_error(w, c, PROTO_E_UNAVAILABLE, true, 0,
							"out of memory");
					break;
				}
				if (off) {
					memmove(nb, nb + off, c->rlen - off);
					c->rlen -= off;
					off = 0;
				}
				c->rbuf = nb;
				c->rcap = (uint32_t)need;
			}
			break;
		}
		if (n < 0) {
			conn_send_error(w, c, (int)-n, true, 0, NULL);
			broker_log(LOG_INFO, "conn %llu: %s; closing", (unsigned long long)c->id,
				   proto_error_str((int)-n));
			break;
		}
		if (c->state == CONN_HELLO) {
			if (f.type != PROTO_HELLO) {
				conn_send_error(w, c, PROTO_E_UNEXPECTED, true, 0, "send HELLO first");
				break;
			}
			handle_hello(w, c, &f.u.hello);
		} else if (f.type == PROTO_BATCH) {
			/* The first frame of the buffer may have started in an earlier read. */
			c->frame_t0_us = off == 0 && c->partial_since_us ? c->partial_since_us
									   : w->now_us;
			if (!handle_batch(w, c, &f.u.batch)) {
				if (!c->stalled && !atomic_load(&w->b->stopping)) {
					c->stalled = true;
					c->next_stalled = w->stalled;
					w->stalled = c;
				}
				break;
			}
		} else if (f.type == PROTO_PING) {
			uint8_t buf[PROTO_HEADER_BYTES + 8];
			long m = proto_encode_ping(buf, sizeof buf, PROTO_PONG, f.u.ping_nonce);
			if (m > 0)
				conn_queue_frame(w, c, buf, (size_t)m);
		} else {
			conn_send_error(w, c, PROTO_E_UNEXPECTED, true, 0,
					"clients send HELLO, BATCH and PING only");
			break;
		}
		off += (uint32_t)n;
	}
	if (off > 0 && !c->closed) {
		memmove(c->rbuf, c->rbuf + off, c->rlen - off);
		c->rlen -= off;
	}
	/* An empty big buffer goes back to the initial size when the budget is half used or
	   someone waits for it (idle connections also give theirs back, see worker_timers). */
	if (!c->closed && (atomic_load(&w->b->budget_waiters) > 0 ||
			   atomic_load(&w->b->rbuf_extra) > (int64_t)(cfg->rbuf_budget_bytes / 2)))
		conn_shrink_rbuf(w, c);
	if (!c->closed) {
		/* The read deadline runs from the first bytes of the frame left incomplete: a
		   frame that completed in this pass restarts it. */
		c->partial_since_us = c->rlen == 0 ? 0
				      : off > 0 || !c->partial_since_us ? w->now_us
				      : c->partial_since_us;
		conn_update_read(w, c);
	}
}

/* ------------------------------------------------------------------ backends */

/* Should the connection be reading right now? */
static bool conn_wants_read(struct worker *w, const struct conn *c)
{
	if (c->closed)
		return false;
	if (c->state == CONN_LINGER)
		return true; /* read and drop until EOF */
	if (c->stalled || atomic_load(&w->b->stopping))
		return false;
	if (c->state != CONN_HELLO && c->state != CONN_READY)
		return false;
	if (c->inflight >= w->b->cfg->inflight_max)
		return false;
	return c->rlen < c->rcap;
}

static void uring_arm_recv(struct worker *w, struct conn *c);
static void uring_arm_send(struct worker *w, struct conn *c);
static bool uring_consume_held(struct worker *w, struct conn *c);
static void uring_cancel_recv(struct worker *w, struct conn *c);
static void conn_on_input(struct worker *w, struct conn *c);

static void epoll_update(struct worker *w, struct conn *c)
{
	struct epoll_event ev = {.data.ptr = c};
	ev.events = (c->read_paused ? 0 : EPOLLIN) | (c->want_write ? EPOLLOUT : 0) | EPOLLRDHUP;
	epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_update_read(struct worker *w, struct conn *c)
{
	if (c->closed)
		return;
	bool paused = !conn_wants_read(w, c);
	if (w->uring) {
		c->read_paused = paused;
		if (!paused && c->held_head >= 0 && uring_consume_held(w, c)) {
			conn_on_input(w, c); /* parses, then comes back here */
			return;
		}
		if (!paused)
			uring_arm_recv(w, c);
		else if (c->held_head >= 0 || c->state != CONN_READY)
			uring_cancel_recv(w, c);
		return;
	}
	if (paused != c->read_paused) {
		c->read_paused = paused;
		epoll_update(w, c);
	}
}

/* Bytes were appended to c->rbuf. */
static void conn_on_input(struct worker *w, struct conn *c)
{
	c->last_rx_us = w->now_us;
	if (c->state == CONN_LINGER) {
		c->rlen = 0;
		conn_update_read(w, c);
		return;
	}
	conn_parse(w, c);
}

/*
 * Closes gracefully: FIN after every queued frame, then input is read and dropped until the
 * client closes or NET_LINGER_MS pass. Closing with unread input would make the kernel reset
 * the connection and discard frames it had not yet delivered (an ACK, an ERROR).
 */
static void conn_linger(struct worker *w, struct conn *c)
{
	if (c->closed || c->state == CONN_LINGER)
		return;
	shutdown(c->fd, SHUT_WR);
	c->state = CONN_LINGER;
	c->close_at_us = w->now_us + NET_LINGER_MS * 1000LL;
	c->rlen = 0;
	conn_update_read(w, c);
}

static void conn_try_send(struct worker *w, struct conn *c)
{
	if (c->closed)
		return;
	if (w->uring) {
		uring_arm_send(w, c);
		return;
	}
	while (c->sq_head) {
		struct iovec iov[64];
		int k = 0;
		for (struct broker_slot *s = c->sq_head; s && k < 64; s = s->next, k++) {
			iov[k].iov_base = s->frame + s->sent;
			iov[k].iov_len = s->len - s->sent;
		}
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)k};
		ssize_t n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			conn_close(w, c);
			return;
		}
		while (n > 0 && c->sq_head) {
			struct broker_slot *s = c->sq_head;
			size_t left = s->len - s->sent;
			if ((size_t)n < left) {
				s->sent += (uint32_t)n;
				n = 0;
				break;
			}
			n -= (ssize_t)left;
			c->sq_head = s->next;
			if (!c->sq_head)
				c->sq_tail = NULL;
			slot_sent(w, s);
		}
	}
	bool want = c->sq_head != NULL;
	if (want != c->want_write) {
		c->want_write = want;
		epoll_update(w, c);
	}
	if (!c->sq_head && c->state == CONN_DRAIN) {
		conn_linger(w, c);
		return;
	}
	/* Sending freed slots: the connection may take frames again. */
	if (c->rlen > 0 && c->state == CONN_READY && !c->stalled)
		conn_parse(w, c);
	else
		conn_update_read(w, c);
}

static void epoll_on_readable(struct worker *w, struct conn *c)
{
	for (int rounds = 0; rounds < 16 && !c->closed && !c->read_paused; rounds++) {
		if (c->rlen == c->rcap)
			break;
		ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, MSG_DONTWAIT);
		if (n == 0) {
			conn_close(w, c);
			return;
		}
		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				conn_close(w, c);
			return;
		}
		c->rlen += (uint32_t)n;
		conn_on_input(w, c);
	}
}

/* io_uring user_data: the conn pointer with the operation in the low bits. */
#define URING_OP_RECV   1u
#define URING_OP_SEND   2u
#define URING_OP_ACCEPT 3u
#define URING_OP_WAKE   4u
#define URING_OP_CANCEL 5u
#define URING_OP_MASK   7u

static struct io_uring_sqe *uring_sqe(struct worker *w)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
	if (!sqe) {
		io_uring_submit(&w->ring);
		sqe = io_uring_get_sqe(&w->ring);
	}
	return sqe;
}

static void uring_recycle(struct worker *w, int bid)
{
	io_uring_buf_ring_add(w->br, w->bufs + (size_t)bid * NET_URING_BUF_BYTES,
			      NET_URING_BUF_BYTES, (unsigned short)bid,
			      io_uring_buf_ring_mask(NET_URING_BUFS), 0);
	/* Publishes the entry to the kernel (a release store of the ring tail). */
	io_uring_buf_ring_advance(w->br, 1);
}

/* Copies held buffers into the connection's buffer while there is room. True if any. */
static bool uring_consume_held(struct worker *w, struct conn *c)
{
	bool any = false;
	while (c->held_head >= 0 && c->rlen < c->rcap) {
		int bid = c->held_head;
		uint32_t left = w->held_len[bid] - w->held_off[bid];
		uint32_t room = c->rcap - c->rlen;
		uint32_t k = left < room ? left : room;
		memcpy(c->rbuf + c->rlen,
		       w->bufs + (size_t)bid * NET_URING_BUF_BYTES + w->held_off[bid], k);
		c->rlen += k;
		w->held_off[bid] += k;
		any = true;
		if (w->held_off[bid] == w->held_len[bid]) {
			c->held_head = w->held_next[bid];
			if (c->held_head < 0)
				c->held_tail = -1;
			uring_recycle(w, bid);
		}
	}
	return any;
}

static void uring_release_held(struct worker *w, struct conn *c)
{
	while (c->held_head >= 0) {
		int bid = c->held_head;
		c->held_head = w->held_next[bid];
		uring_recycle(w, bid);
	}
	c->held_tail = -1;
}

static void uring_arm_recv(struct worker *w, struct conn *c)
{
	if (c->recv_armed || c->closed)
		return;
	struct io_uring_sqe *sqe = uring_sqe(w);
	if (!sqe)
		return;
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = NET_URING_BGID;
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | URING_OP_RECV);
	c->recv_armed = true;
	c->cancel_sent = false;
}

static void uring_cancel_recv(struct worker *w, struct conn *c)
{
	if (!c->recv_armed || c->cancel_sent)
		return;
	struct io_uring_sqe *sqe = uring_sqe(w);
	if (!sqe)
		return;
	io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)c | URING_OP_RECV, 0);
	io_uring_sqe_set_data64(sqe, URING_OP_CANCEL);
	c->cancel_sent = true;
}

static void uring_arm_send(struct worker *w, struct conn *c)
{
	if (c->send_armed || c->closed || !c->sq_head)
		return;
	struct io_uring_sqe *sqe = uring_sqe(w);
	if (!sqe)
		return;
	/* Batched: up to 16 queued frames in one sendmsg. They stay queued (and their memory
	   valid) until the completion says how much went out. */
	int k = 0;
	for (struct broker_slot *s = c->sq_head; s && k < 16; s = s->next, k++) {
		c->siov[k].iov_base = s->frame + s->sent;
		c->siov[k].iov_len = s->len - s->sent;
	}
	memset(&c->smh, 0, sizeof c->smh);
	c->smh.msg_iov = c->siov;
	c->smh.msg_iovlen = (size_t)k;
	io_uring_prep_sendmsg(sqe, c->fd, &c->smh, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | URING_OP_SEND);
	c->send_armed = true;
}

static void uring_on_send(struct worker *w, struct conn *c, int res)
{
	c->send_armed = false;
	if (c->closed) {
		conn_maybe_free(w, c);
		return;
	}
	if (res < 0) {
		conn_close(w, c);
		return;
	}
	size_t n = (size_t)res;
	while (n > 0 && c->sq_head) {
		struct broker_slot *s = c->sq_head;
		size_t left = s->len - s->sent;
		if (n < left) {
			s->sent += (uint32_t)n;
			break;
		}
		n -= left;
		c->sq_head = s->next;
		if (!c->sq_head)
			c->sq_tail = NULL;
		slot_sent(w, s);
	}
	if (!c->sq_head && c->state == CONN_DRAIN) {
		conn_linger(w, c);
		return;
	}
	uring_arm_send(w, c);
	if (c->rlen > 0 && c->state == CONN_READY && !c->stalled)
		conn_parse(w, c);
	else
		conn_update_read(w, c);
}

static void uring_on_recv(struct worker *w, struct conn *c, int res, unsigned flags)
{
	bool more = flags & IORING_CQE_F_MORE;
	if (!more)
		c->recv_armed = false;
	if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
		int bid = (int)(flags >> IORING_CQE_BUFFER_SHIFT);
		if (c->closed) {
			uring_recycle(w, bid);
			conn_maybe_free(w, c);
			return;
		}
		w->held_len[bid] = (uint32_t)res;
		w->held_off[bid] = 0;
		w->held_next[bid] = -1;
		if (c->held_tail >= 0)
			w->held_next[c->held_tail] = bid;
		else
			c->held_head = bid;
		c->held_tail = bid;
		if (uring_consume_held(w, c))
			conn_on_input(w, c);
		else
			conn_update_read(w, c);
		return;
	}
	if (c->closed) {
		conn_maybe_free(w, c);
		return;
	}
	if (res == 0) {
		conn_close(w, c);
		return;
	}
	if (res == -ENOBUFS || res == -ECANCELED || res == -EINTR || res == -EAGAIN) {
		/* Out of provided buffers, or paused: re-armed when the connection wants to read
		   again (the stalled list is retried every turn). */
		if (res == -ENOBUFS && !c->stalled) {
			c->stalled = true;
			c->next_stalled = w->stalled;
			w->stalled = c;
		} else {
			conn_update_read(w, c);
		}
		return;
	}
	if (!more)
		conn_close(w, c);
}

/* ------------------------------------------------------------------ connections */

/*
 * SO_REUSEPORT spreads connections by a hash of their addresses: 16 connections from one
 * client often land 11/5 or 12/4 on two workers, and the busier worker then parses three
 * times the events of the other. So a worker that accepts a connection while another worker
 * has fewer hands it over through the ring (TAG_FD), to the least loaded one. Counts are loads of
 * `load` by other threads: a race only makes the balance approximate.
 */
static void conn_accept_fd(struct worker *w, int fd)
{
	struct broker *b = w->b;
	uint16_t best = w->id;
	uint32_t min = atomic_load_explicit(&w->load, memory_order_relaxed);
	for (uint16_t i = 0; i < b->nworkers; i++) {
		uint32_t l = atomic_load_explicit(&b->workers[i].load, memory_order_relaxed);
		if (l < min) {
			min = l;
			best = i;
		}
	}
	if (best != w->id && !atomic_load(&b->stopping)) {
		atomic_fetch_add(&b->workers[best].load, 1);
		w->conns_handed++;
		worker_send_msg(w, best, (void *)((uintptr_t)fd << 2), TAG_FD);
		return;
	}
	conn_take(w, fd);
}

/* Makes fd one of this worker's connections (or refuses it: --max-conns). */
static void conn_take(struct worker *w, int fd)
{
	struct broker *b = w->b;
	if (atomic_fetch_add(&b->nconns, 1) >= b->cfg->max_conns) {
		atomic_fetch_sub(&b->nconns, 1);
		uint8_t buf[256];
		/* fatal = 1: we close now. The code itself is retryable: reconnect later. */
		long n = proto_encode_error(buf, sizeof buf, PROTO_E_TOO_MANY_CONNS, true, 0,
					    "too many connections; retry later");
		if (n > 0) {
			ssize_t rc = send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
			(void)rc;
		}
		close(fd);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct conn *c = calloc(1, sizeof *c);
	uint8_t *rb = malloc(NET_RBUF_INITIAL);
	if (!c || !rb) {
		free(c);
		free(rb);
		close(fd);
		atomic_fetch_sub(&b->nconns, 1);
		return;
	}
	c->fd = fd;
	c->worker = w->id;
	c->rbuf = rb;
	c->rcap = NET_RBUF_INITIAL;
	c->state = CONN_HELLO;
	c->held_head = c->held_tail = -1;
	c->id = __atomic_add_fetch(&b->conn_ids, 1, __ATOMIC_RELAXED);
	c->hello_deadline_us = w->now_us + (int64_t)b->cfg->hello_timeout_ms * 1000;
	c->last_rx_us = w->now_us;
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	w->nconns++;
	w->conns_taken++;
	atomic_fetch_add_explicit(&w->load, 1, memory_order_relaxed);
	if (w->uring) {
		uring_arm_recv(w, c);
	} else {
		struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
		if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
			conn_close(w, c);
	}
}

static void conn_close(struct worker *w, struct conn *c)
{
	if (c->closed)
		return;
	c->closed = true;
	if (w->uring) {
		/* Outstanding operations complete with errors once the socket is shut down;
		   the struct is freed when they have. */
		shutdown(c->fd, SHUT_RDWR);
		uring_release_held(w, c);
		uring_cancel_recv(w, c);
	} else {
		epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	}
	while (c->sq_head) {
		struct broker_slot *s = c->sq_head;
		c->sq_head = s->next;
		c->inflight--;
		atomic_fetch_sub_explicit(&w->b->slots_live, 1, memory_order_relaxed);
		free(s);
	}
	c->sq_tail = NULL;
	if (!w->uring || (!c->recv_armed && !c->send_armed)) {
		close(c->fd);
		c->fd = -1;
	}
	atomic_fetch_sub(&w->b->nconns, 1);
	atomic_fetch_sub_explicit(&w->load, 1, memory_order_relaxed);
	conn_maybe_free(w, c);
}

/* Frees a closed connection once nothing refers to it any more. */
static void conn_maybe_free(struct worker *w, struct conn *c)
{
	if (!c->closed || c->inflight > 0 || c->recv_armed || c->send_armed || c->stalled ||
	    c->hold > 0)
		return;
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	w->nconns--;
	atomic_fetch_sub(&w->b->rbuf_extra, (int64_t)c->rcap - NET_RBUF_INITIAL);
	if (c->budget_waiting)
		atomic_fetch_sub(&w->b->budget_waiters, 1);
	free(c->rbuf);
	free(c);
}

static void worker_retry_stalled(struct worker *w)
{
	struct conn *list = w->stalled;
	w->stalled = NULL;
	while (list) {
		struct conn *c = list;
		list = c->next_stalled;
		c->stalled = false;
		if (c->closed)
			conn_maybe_free(w, c);
		else
			conn_parse(w, c); /* holds c itself */
	}
}

static void worker_timers(struct worker *w)
{
	const struct broker_config *cfg = w->b->cfg;
	int64_t now = w->now_us;
	bool pressure = atomic_load(&w->b->budget_waiters) > 0;
	for (struct conn *c = w->conns, *next; c; c = next) {
		if (pressure && !c->closed)
			conn_shrink_rbuf(w, c);
		if (c->closed) {
			next = c->next;
			continue;
		}
		conn_hold(c);
		if (c->state == CONN_HELLO && now > c->hello_deadline_us) {
			conn_send_error(w, c, PROTO_E_TIMEOUT, true, 0, "no HELLO in time");
		} else if (c->state == CONN_AUTHFAIL && now >= c->close_at_us) {
			conn_send_error(w, c, PROTO_E_AUTH, true, 0, "unknown API key");
		} else if ((c->state == CONN_DRAIN || c->state == CONN_LINGER) &&
			   now >= c->close_at_us) {
			conn_close(w, c);
		} else if (c->partial_since_us && c->state == CONN_READY && !c->stalled &&
			   c->inflight < cfg->inflight_max &&
			   now - c->partial_since_us > (int64_t)cfg->read_timeout_ms * 1000) {
			conn_send_error(w, c, PROTO_E_TIMEOUT, true, 0,
					"frame not completed within the read deadline");
		} else if (c->state == CONN_READY && c->inflight == 0 && c->rlen == 0 &&
			   now - c->last_rx_us > (int64_t)cfg->idle_timeout_ms * 1000) {
			conn_close(w, c);
		}
		next = c->next;
		conn_release(w, c);
	}
}

/* ------------------------------------------------------------------ the loop */

static int worker_poll_shards(struct worker *w)
{
	w->sync_at_us = INT64_MAX;
	for (uint16_t i = 0; i < w->ngroups; i++) {
		int rc = shard_group_poll(w->groups[i], w->now_us, &w->sync_at_us);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static bool worker_quiet(struct worker *w)
{
	for (uint16_t s = 0; s < w->b->nshards; s++)
		if (w->shards[s] && shard_busy(w->shards[s]))
			return false;
	for (uint16_t to = 0; to < w->b->nworkers; to++)
		if (w->overflow[to].n || (w->out[to] && w->out[to]->n))
			return false;
	return true;
}

/* One turn after I/O: rings, shards, stalled connections, timers, outgoing chunks. */
static bool worker_turn(struct worker *w)
{
	struct broker *b = w->b;
	w->now_us = broker_now_us();
	worker_drain_rings(w);
	int rc = worker_poll_shards(w);
	if (rc < 0) {
		int zero = 0;
		if (atomic_compare_exchange_strong(&b->fatal, &zero, rc))
			broker_log(LOG_ERROR, "storage failure (%s): stopping without further "
					      "acknowledgements", strerror(-rc));
		for (uint16_t i = 0; i < b->nworkers; i++)
			ring_wake(b->mesh, i);
		return false;
	}
	if (atomic_load(&b->fatal))
		return false;
	if (w->stalled)
		worker_retry_stalled(w);
	if (w->now_us - w->last_timer_us >= NET_TIMER_MS * 1000) {
		w->last_timer_us = w->now_us;
		worker_timers(w);
	}
	worker_flush_out(w);

	if (atomic_load(&b->stopping)) {
		if (!w->stopping_seen) {
			w->stopping_seen = true;
			w->stop_deadline_us = w->now_us + NET_STOP_DEADLINE_S * 1000000LL;
			if (w->listen_fd >= 0) {
				if (!w->uring)
					epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->listen_fd, NULL);
				shutdown(w->listen_fd, SHUT_RDWR);
			}
			for (struct conn *c = w->conns; c; c = c->next)
				conn_update_read(w, c);
		}
		/* Done when no batch anywhere is unresolved or unsent, and our shards are idle. */
		bool sends_pending = false;
		for (struct conn *c = w->conns; c; c = c->next)
			if (!c->closed && c->sq_head)
				sends_pending = true;
		if (!w->lingering && atomic_load(&b->slots_live) == 0 && worker_quiet(w) &&
		    !sends_pending) {
			/* Everything answered: close every connection gracefully, then stop. */
			w->lingering = true;
			w->stop_deadline_us = w->now_us + (NET_LINGER_MS + 500) * 1000LL;
			for (struct conn *c = w->conns, *next; c; c = next) {
				next = c->next;
				conn_hold(c);
				conn_linger(w, c);
				conn_release(w, c);
			}
		}
		if (w->lingering) {
			bool open = false;
			for (struct conn *c = w->conns; c; c = c->next)
				open |= !c->closed;
			if (!open || w->now_us > w->stop_deadline_us)
				return false;
		} else if (w->now_us > w->stop_deadline_us) {
			broker_log(LOG_WARN, "worker %u: shutdown deadline passed with batches in "
					     "flight (clients will retry them)", w->id);
			return false;
		}
	}
	return true;
}

/* How long the loop may sleep: the timer period, or less when a held-back sync is due. */
static int64_t worker_sleep_us(const struct worker *w)
{
	int64_t us = (atomic_load(&w->b->stopping) ? 10 : NET_TIMER_MS) * 1000LL;
	if (w->sync_at_us != INT64_MAX) {
		int64_t left = w->sync_at_us - broker_now_us();
		us = left < 0 ? 0 : left < us ? left : us;
	}
	return us;
}

static int worker_loop_epoll(struct worker *w)
{
	struct epoll_event evs[NET_EPOLL_EVENTS];
	int wake_fd = ring_wake_fd(w->b->mesh, w->id);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &w->listen_fd};
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->listen_fd, &ev) < 0)
		return -errno;
	ev.data.ptr = &w->epfd; /* marker for the wake eventfd */
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, wake_fd, &ev) < 0)
		return -errno;
	while (worker_turn(w)) {
		lathist_add(&w->turn, broker_now_us() - w->woke_us);
		int64_t us = worker_sleep_us(w);
		int n;
		if (w->epoll_us) {
			struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = us % 1000000 * 1000};
			n = epoll_pwait2(w->epfd, evs, NET_EPOLL_EVENTS, &ts, NULL);
			if (n < 0 && errno == ENOSYS) { /* Linux < 5.11: milliseconds, rounded up */
				w->epoll_us = false;
				continue;
			}
		} else {
			n = epoll_wait(w->epfd, evs, NET_EPOLL_EVENTS, (int)((us + 999) / 1000));
		}
		if (n < 0 && errno != EINTR)
			return -errno;
		w->now_us = w->woke_us = broker_now_us();
		/* Every connection named in this batch stays allocated until the batch is done:
		   handling one event (the wake event resolves batches and sends their ACKs, and a
		   failed send closes that connection) can close another connection whose event is
		   still further down the list. */
		for (int i = 0; i < n; i++)
			if (evs[i].data.ptr != &w->listen_fd && evs[i].data.ptr != &w->epfd)
				conn_hold(evs[i].data.ptr);
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &w->listen_fd) {
				for (int k = 0; k < 64; k++) {
					int fd = accept4(w->listen_fd, NULL, NULL,
							 SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (fd < 0)
						break;
					conn_accept_fd(w, fd);
				}
			} else if (p == &w->epfd) {
				ring_wake_clear(w->b->mesh, w->id);
				worker_drain_rings(w);
			} else {
				struct conn *c = p;
				if (!c->closed &&
				    (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)))
					epoll_on_readable(w, c);
				if (!c->closed && (evs[i].events & EPOLLOUT))
					conn_try_send(w, c);
				if (!c->closed && (evs[i].events & (EPOLLHUP | EPOLLERR)))
					conn_close(w, c);
			}
		}
		for (int i = 0; i < n; i++)
			if (evs[i].data.ptr != &w->listen_fd && evs[i].data.ptr != &w->epfd)
				conn_release(w, evs[i].data.ptr);
	}
	return 0;
}

static void uring_arm_accept(struct worker *w)
{
	struct io_uring_sqe *sqe = uring_sqe(w);
	if (!sqe)
		return;
	io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, URING_OP_ACCEPT);
}

static uint64_t wake_buf[BROKER_THREADS_MAX];

static void uring_arm_wake(struct worker *w)
{
	struct io_uring_sqe *sqe = uring_sqe(w);
	if (!sqe)
		return;
	io_uring_prep_read(sqe, ring_wake_fd(w->b->mesh, w->id), &wake_buf[w->id], 8, 0);
	io_uring_sqe_set_data64(sqe, URING_OP_WAKE);
}

static int worker_loop_uring(struct worker *w)
{
	uring_arm_accept(w);
	uring_arm_wake(w);
	bool accepting = true;
	while (worker_turn(w)) {
		if (accepting && atomic_load(&w->b->stopping))
			accepting = false;
		int64_t us = worker_sleep_us(w);
		struct __kernel_timespec ts = {.tv_sec = us / 1000000, .tv_nsec = us % 1000000 * 1000};
		struct io_uring_cqe *cqe;
		lathist_add(&w->turn, broker_now_us() - w->woke_us);
		int rc = io_uring_submit_and_wait_timeout(&w->ring, &cqe, 1, &ts, NULL);
		if (rc < 0 && rc != -ETIME && rc != -EINTR)
			return rc;
		w->now_us = w->woke_us = broker_now_us();
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&w->ring, head, cqe) {
			seen++;
			uint64_t ud = io_uring_cqe_get_data64(cqe);
			unsigned op = (unsigned)(ud & URING_OP_MASK);
			struct conn *c = (struct conn *)(uintptr_t)(ud & ~(uint64_t)URING_OP_MASK);
			int res = cqe->res;
			bool more = cqe->flags & IORING_CQE_F_MORE;
			switch (op) {
			case URING_OP_ACCEPT:
				if (res >= 0) {
					if (atomic_load(&w->b->stopping))
						close(res);
					else
						conn_accept_fd(w, res);
				}
				if (!more && accepting && !atomic_load(&w->b->stopping))
					uring_arm_accept(w);
				break;
			case URING_OP_WAKE:
				worker_drain_rings(w);
				uring_arm_wake(w);
				break;
			case URING_OP_RECV:
				conn_hold(c);
				uring_on_recv(w, c, res, cqe->flags);
				conn_release(w, c);
				break;
			case URING_OP_SEND:
				conn_hold(c);
				uring_on_send(w, c, res);
				conn_release(w, c);
				break;
			default:
				break;
			}
		}
		io_uring_cq_advance(&w->ring, seen);
	}
	return 0;
}

/* IORING_REGISTER_ENABLE_RINGS by syscall: Debian 12's liburing 2.3 declares
   io_uring_enable_rings() but does not export it. */
static int uring_enable(struct worker *w)
{
	if (syscall(__NR_io_uring_register, w->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL,
		    0) < 0)
		return -errno;
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	char name[16];
	snprintf(name, sizeof name, "tally-loop%u", (unsigned)w->id);
	(void)pthread_setname_np(pthread_self(), name); /* for top -H, perf, gdb */
	w->now_us = w->woke_us = broker_now_us();
	int rc = 0;
	if (w->uring && w->uring_disabled)
		rc = uring_enable(w); /* this thread becomes the ring's submitter */
	if (rc == 0)
		rc = w->uring ? worker_loop_uring(w) : worker_loop_epoll(w);
	if (rc < 0) {
		broker_log(LOG_ERROR, "worker %u: event loop failed: %s", w->id, strerror(-rc));
		int zero = 0;
		atomic_compare_exchange_strong(&w->b->fatal, &zero, rc);
	}
	/* Close what is left; slots still referenced by other threads keep conns alive until
	   broker_wait() frees everything after all threads stopped. */
	for (struct conn *c = w->conns, *next; c; c = next) {
		next = c->next;
		if (!c->closed)
			conn_close(w, c);
	}
	broker_log(LOG_INFO, "worker %u: took %llu connection(s), handed %llu to other workers; "
			     "%llu loop turns, us p50/p99/max %llu/%llu/%llu; %llu chunks from other "
			     "workers, waited us p50/p99/max %llu/%llu/%llu", w->id,
		   (unsigned long long)w->conns_taken, (unsigned long long)w->conns_handed,
		   (unsigned long long)w->turn.count,
		   (unsigned long long)lathist_permille(&w->turn, 500),
		   (unsigned long long)lathist_permille(&w->turn, 990),
		   (unsigned long long)w->turn.max, (unsigned long long)w->hop.count,
		   (unsigned long long)lathist_permille(&w->hop, 500),
		   (unsigned long long)lathist_permille(&w->hop, 990),
		   (unsigned long long)w->hop.max);
	return NULL;
}

/* ------------------------------------------------------------------ start / stop */

static int listen_socket(const struct broker_config *cfg, uint16_t port, int *out)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	if (inet_pton(AF_INET, cfg->listen_host, &sa.sin_addr) != 1)
		return -EINVAL;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	/* 4096 is a hint: the kernel caps it at net.core.somaxconn. */
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	*out = fd;
	return 0;
}

static bool uring_usable(char *why, size_t len)
{
	struct io_uring r;
	/* Test hook: behave as if the kernel refused io_uring (as with
	   kernel.io_uring_disabled=2 or a seccomp filter), to exercise the fallback. */
	const char *fake = getenv("TALLY_TEST_NO_URING");
	int rc = fake && *fake == '1' ? -EPERM : io_uring_queue_init(8, &r, 0);
	if (rc < 0) {
		snprintf(why, len, "io_uring_queue_init: %s", strerror(-rc));
		return false;
	}
	struct io_uring_probe *p = io_uring_get_probe_ring(&r);
	bool ok = p && io_uring_opcode_supported(p, IORING_OP_ACCEPT) &&
		  io_uring_opcode_supported(p, IORING_OP_RECV) &&
		  io_uring_opcode_supported(p, IORING_OP_SEND);
	if (!ok)
		snprintf(why, len, "kernel lacks IORING_OP_ACCEPT/RECV/SEND");
	if (p)
		io_uring_free_probe(p);
	io_uring_queue_exit(&r);
	return ok;
}

/*
 * The worker's ring. Completions of a multishot recv are task work on the worker's thread;
 * by default the kernel interrupts the thread (an IPI, on a VM a hypervisor exit) to run it
 * at once. DEFER_TASKRUN (Linux 6.1) runs it only when the worker waits for completions,
 * which it does once per loop turn anyway; it needs SINGLE_ISSUER, so the ring starts
 * disabled and the worker thread enables it (becoming its only submitter). Older kernels:
 * COOP_TASKRUN (5.19, no interrupt), else none.
 */
static int uring_init_ring(struct worker *w)
{
	static const unsigned flags[] = {
	    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
	    IORING_SETUP_COOP_TASKRUN,
	    0,
	};
	int rc = -EINVAL;
	for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
		rc = io_uring_queue_init(NET_URING_ENTRIES, &w->ring, flags[i]);
		if (rc == 0) {
			w->uring_disabled = (flags[i] & IORING_SETUP_R_DISABLED) != 0;
			if (w->id == 0)
				broker_log(LOG_DEBUG, "io_uring task work: %s",
					   i == 0 ? "deferred to the loop's wait (DEFER_TASKRUN)"
					   : i == 1 ? "cooperative (COOP_TASKRUN)" : "interrupting");
			return 0;
		}
		if (rc != -EINVAL)
			return rc;
	}
	return rc;
}

static int uring_setup_buffers(struct worker *w)
{
	size_t ring_bytes = NET_URING_BUFS * sizeof(struct io_uring_buf);
	void *mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE,
			 -1, 0);
	if (mem == MAP_FAILED)
		return -errno;
	w->br = mem;
	io_uring_buf_ring_init(w->br);
	struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)mem,
				       .ring_entries = NET_URING_BUFS,
				       .bgid = NET_URING_BGID};
	int rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
	if (rc < 0)
		return rc;
	w->bufs = malloc((size_t)NET_URING_BUFS * NET_URING_BUF_BYTES);
	w->held_next = malloc(NET_URING_BUFS * sizeof *w->held_next);
	w->held_len = malloc(NET_URING_BUFS * sizeof *w->held_len);
	w->held_off = malloc(NET_URING_BUFS * sizeof *w->held_off);
	if (!w->bufs || !w->held_next || !w->held_len || !w->held_off)
		return -ENOMEM;
	for (int i = 0; i < NET_URING_BUFS; i++)
		io_uring_buf_ring_add(w->br, w->bufs + (size_t)i * NET_URING_BUF_BYTES,
				      NET_URING_BUF_BYTES, (unsigned short)i,
				      io_uring_buf_ring_mask(NET_URING_BUFS), i);
	io_uring_buf_ring_advance(w->br, NET_URING_BUFS);
	return 0;
}

static void uring_free_buffers(struct worker *w)
{
	if (w->br)
		munmap(w->br, NET_URING_BUFS * sizeof(struct io_uring_buf));
	free(w->bufs);
	free(w->held_next);
	free(w->held_len);
	free(w->held_off);
}

/* Frees what a worker allocated at start (not its connections). Safe on a partly set-up
   worker: every field starts zeroed or -1. */
static void worker_free(struct worker *w)
{
	if (w->listen_fd >= 0)
		close(w->listen_fd);
	if (w->epfd >= 0)
		close(w->epfd);
	if (w->uring_ready)
		io_uring_queue_exit(&w->ring);
	uring_free_buffers(w);
	for (uint16_t to = 0; to < BROKER_THREADS_MAX; to++) {
		for (struct chunk *ch = w->free_chunks[to], *nx; ch; ch = nx) {
			nx = ch->next_free;
			chunk_free(ch);
		}
		if (w->out[to])
			chunk_free(w->out[to]);
		free(w->overflow[to].v);
	}
	free(w->local);
	free(w->local_shard);
	free(w->sorted);
	free(w->counts);
}

struct shard_opener {
	struct broker *b;
	uint16_t id;
	int rc;
	bool threaded;
	pthread_t th;
};

static void *shard_opener_main(void *arg)
{
	struct shard_opener *o = arg;
	struct worker *w = &o->b->workers[o->id % o->b->nworkers];
	struct shard_group *g = w->ngroups == 1 ? w->groups[0] : w->groups[o->id / o->b->nworkers];
	o->rc = shard_open(o->b->cfg, o->b->wal, o->id, g, worker_resolve, w,
			   &o->b->shards[o->id]);
	return NULL;
}

/* Opens every shard on its own thread; returns the first error (opened shards stay set). */
static int open_shards(struct broker *b)
{
	struct shard_opener *o = calloc(b->nshards, sizeof *o);
	if (!o)
		return -ENOMEM;
	for (uint16_t s = 0; s < b->nshards; s++) {
		o[s] = (struct shard_opener){.b = b, .id = s};
		o[s].threaded = pthread_create(&o[s].th, NULL, shard_opener_main, &o[s]) == 0;
		if (!o[s].threaded)
			shard_opener_main(&o[s]); /* no thread: open it here */
	}
	int rc = 0;
	for (uint16_t s = 0; s < b->nshards; s++) {
		if (o[s].threaded)
			pthread_join(o[s].th, NULL);
		if (o[s].rc < 0 && rc == 0)
			rc = o[s].rc;
	}
	free(o);
	return rc;
}

static void admin_start(struct broker *b);

int broker_start(const struct broker_config *cfg, struct wal *wal, struct broker_auth *auth,
		 struct broker **out)
{
	struct broker *b = calloc(1, sizeof *b);
	if (!b)
		return -ENOMEM;
	b->cfg = cfg;
	b->wal = wal;
	b->auth = auth;
	atomic_init(&b->auth_cur, auth);
	b->admin_fd = -1;
	b->nworkers = cfg->threads;
	b->nshards = wal_shard_count(wal);
	b->io = cfg->io;
	memcpy(b->default_tenant.name, "default", 8);
	b->default_tenant.len = 7;
	int rc;

	if (b->io == BROKER_IO_URING) {
		char why[128];
		if (!uring_usable(why, sizeof why)) {
			broker_log(LOG_WARN, "io_uring unavailable (%s); falling back to epoll", why);
			b->io = BROKER_IO_EPOLL;
		}
	}
	rc = ring_mesh_create(b->nworkers, 1u << 16, &b->mesh);
	if (rc < 0)
		goto out_free;
	b->workers = calloc(b->nworkers, sizeof *b->workers);
	if (!b->workers) {
		rc = -ENOMEM;
		goto out_free;
	}
	for (uint16_t i = 0; i < b->nworkers; i++) {
		struct worker *w = &b->workers[i];
		w->id = i;
		w->epoll_us = true;
		w->b = b;
		w->listen_fd = -1;
		w->epfd = -1;
	}
	bool shared = true;
	for (uint16_t s = 0; s < b->nshards; s++)
		shared &= wal_shard_group_flush(wal_shard(wal, s));
	for (uint16_t s = 0; s < b->nshards; s++) {
		/* Shard s is worker s % n's (s / n)-th: one group per worker, or one per shard. */
		struct worker *w = &b->workers[s % b->nworkers];
		if (shared && w->ngroups == 1)
			continue;
		rc = shard_group_open(cfg, shared ? w->id : s, worker_wake_cb, w,
				      &w->groups[w->ngroups]);
		if (rc < 0)
			goto out_free;
		w->ngroups++;
	}
	/* Shards first: dedup state is rebuilt before anything is accepted, all shards at once
	   (loading cold runs and re-reading the unsealed segments is most of a restart). */
	rc = open_shards(b);
	if (rc < 0)
		goto out_free;
	for (uint16_t s = 0; s < b->nshards; s++)
		b->workers[s % b->nworkers].shards[s] = b->shards[s];
	uint16_t port = cfg->port;
	for (uint16_t i = 0; i < b->nworkers; i++) {
		struct worker *w = &b->workers[i];
		rc = listen_socket(cfg, port, &w->listen_fd);
		if (rc < 0) {
			broker_log(LOG_ERROR, "cannot listen on %s:%u: %s", cfg->listen_host, port,
				   strerror(-rc));
			goto out_free;
		}
		if (port == 0) {
			struct sockaddr_in sa;
			socklen_t sl = sizeof sa;
			getsockname(w->listen_fd, (struct sockaddr *)&sa, &sl);
			port = ntohs(sa.sin_port);
		}
		uint32_t nb = cfg->batch_events_max;
		w->local = malloc(nb * sizeof *w->local);
		w->local_shard = malloc(nb * sizeof *w->local_shard);
		w->sorted = malloc(nb * sizeof *w->sorted);
		w->counts = calloc((size_t)b->nshards + 1, sizeof *w->counts);
		if (!w->local || !w->local_shard || !w->sorted || !w->counts) {
			rc = -ENOMEM;
			goto out_free;
		}
		for (uint16_t to = 0; to < b->nworkers; to++) {
			if (to == i)
				continue;
			for (int k = 0; k < NET_CHUNKS_PER_PAIR; k++) {
				struct chunk *ch = chunk_new(cfg, i, to);
				if (!ch) {
					rc = -ENOMEM;
					goto out_free;
				}
				ch->next_free = w->free_chunks[to];
				w->free_chunks[to] = ch;
			}
		}
		if (b->io == BROKER_IO_URING) {
			rc = uring_init_ring(w);
			if (rc < 0)
				goto out_free;
			w->uring = true;
			w->uring_ready = true;
			rc = uring_setup_buffers(w);
			if (rc < 0)
				goto out_free;
		} else {
			w->epfd = epoll_create1(EPOLL_CLOEXEC);
			if (w->epfd < 0) {
				rc = -errno;
				goto out_free;
			}
		}
	}
	b->port = port;
	b->started_us = broker_now_us();
	admin_start(b);
	*out = b; /* before any thread runs: the WAL's sealed-segment callback reads it */
	for (uint16_t i = 0; i < b->nworkers; i++) {
		rc = -pthread_create(&b->workers[i].th, NULL, worker_main, &b->workers[i]);
		if (rc < 0) {
			/* Threads already started are stopped by broker_wait(). */
			b->nworkers = i;
			atomic_store(&b->stopping, true);
			broker_wait(b);
			*out = NULL;
			return rc;
		}
	}
	return 0; /* *out was set before the threads started */
out_free:
	for (uint16_t s = 0; s < b->nshards; s++)
		if (b->shards[s])
			shard_close(b->shards[s]);
	if (b->workers)
		for (uint16_t i = 0; i < b->nworkers; i++) {
			for (uint16_t k = 0; k < b->workers[i].ngroups; k++)
				(void)shard_group_close(b->workers[i].groups[k]);
			worker_free(&b->workers[i]);
		}
	free(b->workers);
	ring_mesh_destroy(b->mesh);
	free(b);
	return rc;
}

uint16_t broker_port(const struct broker *b)
{
	return b->port;
}

int broker_io(const struct broker *b)
{
	return b->io;
}

bool broker_failed(const struct broker *b)
{
	return atomic_load(&((struct broker *)b)->fatal) != 0;
}

/* One line: each stage of the batches' latency over the broker's life, all workers merged. */
static void log_batch_latency(struct broker *b)
{
	struct lathist all[LAT_N];
	memset(all, 0, sizeof all);
	for (uint16_t i = 0; i < b->nworkers; i++)
		for (int k = 0; k < LAT_N; k++)
			lathist_merge(&all[k], &b->workers[i].lat[k]);
	if (all[LAT_TOTAL].count == 0)
		return;
	char line[512];
	size_t len = 0;
	for (int k = 0; k < LAT_N && len < sizeof line; k++)
		len += (size_t)snprintf(line + len, sizeof line - len, "%s%s %llu/%llu/%llu",
					k ? ", " : "", lat_name[k],
					(unsigned long long)lathist_permille(&all[k], 500),
					(unsigned long long)lathist_permille(&all[k], 990),
					(unsigned long long)all[k].max);
	broker_log(LOG_INFO, "batch latency, %llu batches, us p50/p99/max: %s",
		   (unsigned long long)all[LAT_TOTAL].count, line);
}

/* ------------------------------------------------------------------ stats lines */

struct net_stats {
	uint64_t batches, failed_batches, failed_events, receipts[PROTO_REJECTED + 1];
};

static void stats_read(struct broker *b, struct net_stats *t)
{
	memset(t, 0, sizeof *t);
	for (uint16_t i = 0; i < b->nworkers; i++) {
		struct worker *w = &b->workers[i];
		t->batches += atomic_load_explicit(&w->st_batches, memory_order_relaxed);
		t->failed_batches += atomic_load_explicit(&w->st_failed_batches, memory_order_relaxed);
		t->failed_events += atomic_load_explicit(&w->st_failed_events, memory_order_relaxed);
		for (int k = PROTO_ACCEPTED; k <= PROTO_REJECTED; k++)
			t->receipts[k] += atomic_load_explicit(&w->st_receipts[k], memory_order_relaxed);
	}
}

/* One line: `what` (the last interval, or the whole run), from a - b; conns < 0: the number
   of open connections is left out. */
static void stats_log(const char *what, const struct net_stats *a, const struct net_stats *b,
		      int64_t us, int64_t conns)
{
	char open_now[48] = "";
	if (conns >= 0)
		snprintf(open_now, sizeof open_now, "; %lld connections open", (long long)conns);
	uint64_t r[PROTO_REJECTED + 1];
	uint64_t events = 0;
	for (int k = PROTO_ACCEPTED; k <= PROTO_REJECTED; k++)
		events += (r[k] = a->receipts[k] - b->receipts[k]);
	uint64_t per_s = us > 0 ? (uint64_t)((unsigned __int128)events * 1000000 / (uint64_t)us) : 0;
	broker_log(LOG_INFO, "stats, %s: %llu events in %llu batches (%llu ev/s): %llu accepted, "
			     "%llu duplicate, %llu conflict, %llu rejected; %llu batches (%llu events) "
			     "failed with a retryable error%s", what,
		   (unsigned long long)events, (unsigned long long)(a->batches - b->batches),
		   (unsigned long long)per_s, (unsigned long long)r[PROTO_ACCEPTED],
		   (unsigned long long)r[PROTO_DUPLICATE], (unsigned long long)r[PROTO_CONFLICT],
		   (unsigned long long)r[PROTO_REJECTED],
		   (unsigned long long)(a->failed_batches - b->failed_batches),
		   (unsigned long long)(a->failed_events - b->failed_events), open_now);
}

/* Admin thread: reads the --auth-file again; on success new HELLOs are checked against it. */
static void auth_reload(struct broker *b)
{
	const char *path = b->cfg->auth_file;
	if (!path) {
		broker_log(LOG_WARN, "reload asked for, but tallyd runs without --auth-file: nothing "
				     "to reload");
		return;
	}
	struct broker_auth *cur = atomic_load_explicit(&b->auth_cur, memory_order_relaxed);
	size_t before = cur ? broker_auth_count(cur) : 0;
	char err[512];
	struct broker_auth *a = NULL;
	if (broker_auth_load(path, &a, err, sizeof err) < 0) {
		broker_log(LOG_WARN, "auth: reloading %s failed: %s; the %zu key(s) loaded before stay "
				     "in use", path, err, before);
		return;
	}
	struct broker_auth **v = realloc(b->auth_owned, (b->auth_owned_n + 1) * sizeof *v);
	if (!v) {
		broker_auth_free(a);
		broker_log(LOG_WARN, "auth: reloading %s: out of memory; the %zu key(s) loaded before "
				     "stay in use", path, before);
		return;
	}
	b->auth_owned = v;
	b->auth_owned[b->auth_owned_n++] = a;
	/* Release: a worker that loads the new table (acquire) sees it whole. */
	atomic_store_explicit(&b->auth_cur, a, memory_order_release);
	broker_log(LOG_INFO, "auth: reloaded %s: %zu key(s), was %zu; new connections are checked "
			     "against it, connections already authenticated keep their tenant",
		   path, broker_auth_count(a), before);
}

/* Logs a stats line every cfg->stats_interval_s seconds in which a batch was answered or the
   number of open connections changed (an idle broker stays quiet); reloads the API keys when
   asked. */
static void *admin_main(void *arg)
{
	struct broker *b = arg;
	(void)pthread_setname_np(pthread_self(), "tally-admin");
	struct net_stats prev, cur;
	memset(&prev, 0, sizeof prev);
	uint32_t prev_conns = 0;
	int64_t prev_us = broker_now_us();
	int64_t interval_us = (int64_t)b->cfg->stats_interval_s * 1000000;
	int64_t next_us = prev_us + interval_us;
	char what[32];
	snprintf(what, sizeof what, "last %u s", b->cfg->stats_interval_s);
	while (!atomic_load(&b->admin_stop)) {
		int timeout = -1;
		if (interval_us) {
			int64_t left = next_us - broker_now_us();
			timeout = left <= 0 ? 0 : (int)((left + 999) / 1000);
		}
		struct pollfd pfd[2] = {{.fd = b->admin_fd, .events = POLLIN},
					{.fd = b->cfg->reload_fd, .events = POLLIN}};
		int n = poll(pfd, b->cfg->reload_fd >= 0 ? 2 : 1, timeout);
		if (atomic_load(&b->admin_stop))
			break;
		if (n > 0 && (pfd[1].revents & POLLIN)) {
			/* Drain every queued signal (a signalfd reads whole siginfo records). */
			struct signalfd_siginfo si[4];
			while (read(b->cfg->reload_fd, si, sizeof si) > 0)
				;
			auth_reload(b);
		}
		int64_t now = broker_now_us();
		if (!interval_us || now < next_us)
			continue;
		next_us += interval_us;
		if (next_us <= now) /* the machine slept or stalled: no burst of lines */
			next_us = now + interval_us;
		stats_read(b, &cur);
		uint32_t conns = atomic_load_explicit(&b->nconns, memory_order_relaxed);
		if (cur.batches != prev.batches || cur.failed_batches != prev.failed_batches ||
		    conns != prev_conns)
			stats_log(what, &cur, &prev, now - prev_us, conns);
		prev = cur;
		prev_conns = conns;
		prev_us = now;
	}
	return NULL;
}

static void admin_start(struct broker *b)
{
	b->admin_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (b->admin_fd >= 0 && pthread_create(&b->admin_th, NULL, admin_main, b) == 0) {
		b->admin_running = true;
		return;
	}
	broker_log(LOG_WARN, "no admin thread: no stats lines, and SIGHUP reloads nothing");
	if (b->admin_fd >= 0)
		close(b->admin_fd);
	b->admin_fd = -1;
}

static void admin_stop(struct broker *b, int64_t started_us)
{
	if (b->admin_running) {
		atomic_store(&b->admin_stop, true);
		uint64_t one = 1;
		ssize_t r = write(b->admin_fd, &one, sizeof one);
		(void)r;
		pthread_join(b->admin_th, NULL);
		b->admin_running = false;
	}
	if (b->admin_fd >= 0)
		close(b->admin_fd);
	b->admin_fd = -1;
	struct net_stats all, zero;
	stats_read(b, &all);
	memset(&zero, 0, sizeof zero);
	int64_t us = broker_now_us() - started_us;
	char what[48];
	snprintf(what, sizeof what, "whole run of %lld s", (long long)(us / 1000000));
	stats_log(what, &all, &zero, us, -1);
}

void broker_request_stop(struct broker *b)
{
	atomic_store(&b->stopping, true);
	for (uint16_t i = 0; i < b->nworkers; i++)
		ring_wake(b->mesh, i);
}

int broker_wait(struct broker *b)
{
	for (uint16_t i = 0; i < b->nworkers; i++)
		pthread_join(b->workers[i].th, NULL);
	admin_stop(b, b->started_us);
	log_batch_latency(b);
	/* Chunks sent back just before their owner stopped are still in the rings. */
	for (uint16_t i = 0; i < b->nworkers; i++) {
		void *msgs[NET_DRAIN_MAX];
		size_t n;
		while ((n = ring_drain(b->mesh, i, msgs, NET_DRAIN_MAX)) > 0)
			for (size_t k = 0; k < n; k++) {
				unsigned tag = (unsigned)((uintptr_t)msgs[k] & TAG_MASK);
				struct chunk *ch = (void *)((uintptr_t)msgs[k] & ~(uintptr_t)TAG_MASK);
				if (tag == TAG_RETURN) {
					ch->next_free = b->workers[i].free_chunks[ch->to];
					b->workers[i].free_chunks[ch->to] = ch;
				} else if (tag == TAG_CHUNK) {
					chunk_free(ch); /* only after a fatal stop */
				} else if (tag == TAG_FD) {
					close((int)((uintptr_t)ch >> 2)); /* handed over, never taken */
				}
			}
	}
	int fatal = atomic_load(&b->fatal);
	int rc = fatal;
	for (uint16_t s = 0; s < b->nshards; s++) {
		if (!b->shards[s])
			continue;
		int r = fatal ? 0 : shard_close(b->shards[s]);
		if (fatal)
			(void)shard_close(b->shards[s]);
		if (r < 0 && rc == 0)
			rc = r;
	}
	for (uint16_t i = 0; i < b->nworkers; i++) {
		struct worker *w = &b->workers[i];
		for (uint16_t k = 0; k < w->ngroups; k++) {
			int r = shard_group_close(w->groups[k]);
			if (r < 0 && rc == 0 && !fatal)
				rc = r;
		}
		/* Connections kept alive by slots that never completed (fatal stop). */
		while (w->conns) {
			struct conn *c = w->conns;
			w->conns = c->next;
			if (c->fd >= 0)
				close(c->fd);
			free(c->rbuf);
			free(c);
		}
		worker_free(w);
	}
	free(b->workers);
	ring_mesh_destroy(b->mesh);
	/* Reloaded key tables: no connection is left to point into them. */
	for (size_t i = 0; i < b->auth_owned_n; i++)
		broker_auth_free(b->auth_owned[i]);
	free(b->auth_owned);
	free(b);
	return rc;
}

void broker_on_segment_sealed(void *ctx, uint16_t shard, uint64_t base, uint64_t next)
{
	struct broker *b = *(struct broker **)ctx;
	if (b && shard < b->nshards && b->shards[shard])
		shard_segment_sealed(b->shards[shard], base, next);
}
