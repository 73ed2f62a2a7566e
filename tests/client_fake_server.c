/*
 * client_fake_server.c — in-process fake tally server for client tests (contract in
 * client_fake_server.h). One server thread; the test thread only calls start/stats/stop.
 * Counters are shared between the two under `lock`. Test code: it allocates freely.
 */
#include "client_fake_server.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FAKE_KEYS_MAX   65536u
#define FAKE_HELD_MAX   256u
#define FAKE_SHARDS_MAX 64u

struct fake_key {
	uint8_t key[TALLY_KEY_BYTES_MAX];
	uint8_t key_len;
	uint32_t digest;
	uint16_t shard;
	uint64_t offset;
};

struct fake_held {
	uint8_t *frame;
	size_t len;
};

struct fake_server {
	struct fake_server_config cfg;
	int lfd;
	int stop_pipe[2];
	uint16_t port;
	pthread_t thread;
	bool joined;
	pthread_mutex_t lock;
	struct fake_server_stats st;

	/* Server-thread state. */
	struct fake_key *keys;
	uint32_t key_count;
	uint64_t shard_next[FAKE_SHARDS_MAX];
	struct fake_held held[FAKE_HELD_MAX];
	uint32_t held_n;
	uint8_t *rbuf;
	size_t rbuf_cap;
	uint8_t *sbuf;
	size_t sbuf_cap;
	uint32_t conn_frame_bytes_max; /* negotiated for the current connection */
};

/* ---------------------------------------------------------------------------------------- */

static int put_escaped(char *buf, size_t cap, size_t *at, const uint8_t *p, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	for (size_t i = 0; i < n; i++) {
		uint8_t b = p[i];
		bool plain = b > 0x20 && b < 0x7f && b != '%' && b != ',' && b != '=';
		size_t need = plain ? 1 : 3;
		if (*at + need >= cap)
			return -ENOSPC;
		if (plain) {
			buf[(*at)++] = (char)b;
		} else {
			buf[(*at)++] = '%';
			buf[(*at)++] = hex[b >> 4];
			buf[(*at)++] = hex[b & 15];
		}
	}
	buf[*at] = '\0';
	return 0;
}

static int put_str(char *buf, size_t cap, size_t *at, const char *s)
{
	size_t n = strlen(s);
	if (*at + n >= cap)
		return -ENOSPC;
	memcpy(buf + *at, s, n + 1);
	*at += n;
	return 0;
}

/* Exact decimal text of mantissa * 10^-scale. */
static void decimal_text(int64_t m, unsigned scale, char *out, size_t cap)
{
	char digits[32];
	uint64_t u = m < 0 ? (uint64_t)0 - (uint64_t)m : (uint64_t)m;
	int nd = snprintf(digits, sizeof(digits), "%llu", (unsigned long long)u);
	char tmp[48];
	size_t t = 0;
	if (m < 0)
		tmp[t++] = '-';
	if (scale == 0) {
		memcpy(tmp + t, digits, (size_t)nd);
		t += (size_t)nd;
	} else if ((unsigned)nd <= scale) {
		tmp[t++] = '0';
		tmp[t++] = '.';
		for (unsigned i = (unsigned)nd; i < scale; i++)
			tmp[t++] = '0';
		memcpy(tmp + t, digits, (size_t)nd);
		t += (size_t)nd;
	} else {
		memcpy(tmp + t, digits, (size_t)nd - scale);
		t += (size_t)nd - scale;
		tmp[t++] = '.';
		memcpy(tmp + t, digits + nd - scale, scale);
		t += scale;
	}
	tmp[t] = '\0';
	snprintf(out, cap, "%s", tmp);
}

int fake_server_event_line(const struct tally_event *ev, char *buf, size_t cap)
{
	size_t at = 0;
	char num[64];
	int e = 0;
	if (cap == 0)
		return -ENOSPC;
	buf[0] = '\0';
	e |= put_str(buf, cap, &at, "key=");
	e |= put_escaped(buf, cap, &at, ev->key.ptr, ev->key.len);
	e |= put_str(buf, cap, &at, " customer=");
	e |= put_escaped(buf, cap, &at, ev->customer.ptr, ev->customer.len);
	e |= put_str(buf, cap, &at, " name=");
	e |= put_escaped(buf, cap, &at, ev->name.ptr, ev->name.len);
	snprintf(num, sizeof(num), " time_us=%lld props=", (long long)ev->event_time_us);
	e |= put_str(buf, cap, &at, num);
	struct tally_prop_iter it;
	struct tally_prop p;
	event_prop_iter_init(ev, &it);
	bool first = true;
	while (event_prop_next(&it, &p)) {
		if (!first)
			e |= put_str(buf, cap, &at, ",");
		first = false;
		e |= put_escaped(buf, cap, &at, p.key.ptr, p.key.len);
		switch (p.kind) {
		case TALLY_VALUE_INT:
			snprintf(num, sizeof(num), ":int:%lld", (long long)p.i64);
			e |= put_str(buf, cap, &at, num);
			break;
		case TALLY_VALUE_DECIMAL:
			e |= put_str(buf, cap, &at, ":dec:");
			decimal_text(p.i64, p.scale, num, sizeof(num));
			e |= put_str(buf, cap, &at, num);
			break;
		default:
			e |= put_str(buf, cap, &at, ":str:");
			e |= put_escaped(buf, cap, &at, p.str.ptr, p.str.len);
			break;
		}
	}
	return e ? -ENOSPC : (int)at;
}

/* ---------------------------------------------------------------------------------------- */

static int send_all_now(struct fake_server *s, int fd, const uint8_t *p, size_t len);

/* Writes everything or gives up (client gone, or the stop pipe fired). FAKE_TRICKLE writes
 * in three pieces with pauses between them. */
static int send_all(struct fake_server *s, int fd, const uint8_t *p, size_t len)
{
	if (s->cfg.mode != FAKE_TRICKLE || len <= 17)
		return send_all_now(s, fd, p, len);
	int rc = send_all_now(s, fd, p, 7);
	usleep(2000);
	if (rc == 0)
		rc = send_all_now(s, fd, p + 7, 10);
	usleep(2000);
	if (rc == 0)
		rc = send_all_now(s, fd, p + 17, len - 17);
	return rc;
}

static int send_all_now(struct fake_server *s, int fd, const uint8_t *p, size_t len)
{
	while (len) {
		struct pollfd pf[2] = {{.fd = fd, .events = POLLOUT}, {.fd = s->stop_pipe[0], .events = POLLIN}};
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (pf[1].revents)
			return -ECANCELED;
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int send_error(struct fake_server *s, int fd, uint16_t code, bool fatal, uint64_t rid,
		      const char *msg)
{
	uint8_t buf[PROTO_HEADER_BYTES + 14 + PROTO_ERROR_MSG_BYTES_MAX];
	long n = proto_encode_error(buf, sizeof(buf), code, fatal, rid, msg);
	if (n < 0)
		return (int)n;
	return send_all(s, fd, buf, (size_t)n);
}

/* Open-addressing table keyed by the fingerprint; a slot with key_len 0 is empty. */
static struct fake_key *find_slot(struct fake_server *s, struct tally_fp fp, struct tally_view key)
{
	for (uint32_t i = 0; i < FAKE_KEYS_MAX; i++) {
		struct fake_key *k = &s->keys[(fp.lo + i) & (FAKE_KEYS_MAX - 1)];
		if (k->key_len == 0 || (k->key_len == key.len && !memcmp(k->key, key.ptr, key.len)))
			return k;
	}
	return NULL;
}

static void receipt_for(struct fake_server *s, const struct tally_view *body,
			struct proto_receipt *r)
{
	struct tally_event ev;
	memset(r, 0, sizeof(*r));
	enum tally_reject rj = event_decode(body->ptr, body->len, &ev);
	if (s->cfg.dump) {
		if (rj == TALLY_REJECT_NONE) {
			char line[16384];
			if (fake_server_event_line(&ev, line, sizeof(line)) >= 0)
				fprintf(s->cfg.dump, "%s\n", line);
		} else {
			fprintf(s->cfg.dump, "rejected %s\n", event_reject_code(rj));
		}
	}
	if (rj != TALLY_REJECT_NONE) {
		r->status = PROTO_REJECTED;
		r->reason = (uint8_t)rj;
		r->offset = PROTO_OFFSET_UNKNOWN;
		return;
	}
	uint32_t digest = event_content_digest(&ev);
	const char *tenant = s->cfg.tenant;
	struct tally_fp fp = event_fingerprint(
		(struct tally_view){(const uint8_t *)tenant, (uint32_t)strlen(tenant)}, ev.key);
	struct fake_key *k = find_slot(s, fp, ev.key);
	if (k && k->key_len) {
		r->status = k->digest == digest ? PROTO_DUPLICATE : PROTO_CONFLICT;
		r->shard = k->shard;
		r->offset = k->offset;
		return;
	}
	uint16_t shard = (uint16_t)(fp.hi % s->cfg.shard_count);
	r->status = PROTO_ACCEPTED;
	r->shard = shard;
	r->offset = s->shard_next[shard]++;
	/* Remember the key while the table is at most 3/4 full (enough for any test). */
	if (k && s->key_count < FAKE_KEYS_MAX / 4 * 3) {
		s->key_count++;
		memcpy(k->key, ev.key.ptr, ev.key.len);
		k->key_len = (uint8_t)ev.key.len;
		k->digest = digest;
		k->shard = r->shard;
		k->offset = r->offset;
	}
}

static void flush_held(struct fake_server *s, int fd, int *rc)
{
	for (uint32_t i = s->held_n; i-- > 0;) {
		if (*rc == 0)
			*rc = send_all(s, fd, s->held[i].frame, s->held[i].len);
		free(s->held[i].frame);
	}
	s->held_n = 0;
}

/* Handles one BATCH. Returns 0 to continue, 1 to close the connection, or -errno. */
static int on_batch(struct fake_server *s, int fd, const struct proto_batch *b)
{
	uint64_t nbatch;
	pthread_mutex_lock(&s->lock);
	nbatch = ++s->st.batches;
	pthread_mutex_unlock(&s->lock);

	if (s->cfg.mode == FAKE_ERROR_ON_BATCH && nbatch == s->cfg.error_on_batch) {
		int rc = send_error(s, fd, s->cfg.error_code, s->cfg.error_fatal, b->request_id,
				    s->cfg.error_message);
		return rc < 0 ? rc : (s->cfg.error_fatal ? 1 : 0);
	}
	if (s->cfg.mode == FAKE_SILENT)
		return 0;
	if (s->cfg.mode == FAKE_GARBAGE) {
		static const uint8_t junk[] = "HTTP/1.1 400 Bad Request\r\n\r\nthis is not tally";
		int rc = send_all(s, fd, junk, sizeof(junk) - 1);
		return rc < 0 ? rc : 0;
	}

	struct proto_ack_builder ab;
	proto_ack_start(&ab, s->sbuf, s->sbuf_cap,
			b->request_id + (s->cfg.mode == FAKE_WRONG_ACK_ID ? 1000 : 0));
	struct proto_batch_iter it;
	struct tally_view body;
	uint64_t acc = 0, dup = 0, con = 0, rej = 0;
	proto_batch_iter_init(b, &it);
	while (proto_batch_next(&it, &body)) {
		struct proto_receipt r;
		receipt_for(s, &body, &r);
		acc += r.status == PROTO_ACCEPTED;
		dup += r.status == PROTO_DUPLICATE;
		con += r.status == PROTO_CONFLICT;
		rej += r.status == PROTO_REJECTED;
		if (s->cfg.mode == FAKE_SHORT_ACK && it.index == b->event_count)
			continue; /* leave out the last receipt */
		if (proto_ack_add(&ab, &r) < 0)
			return -ENOSPC;
	}
	if (s->cfg.dump)
		fflush(s->cfg.dump);
	pthread_mutex_lock(&s->lock);
	s->st.events += b->event_count;
	s->st.accepted += acc;
	s->st.duplicates += dup;
	s->st.conflicts += con;
	s->st.rejected += rej;
	pthread_mutex_unlock(&s->lock);

	long n = proto_ack_finish(&ab);
	if (n < 0)
		return (int)n;
	if (s->cfg.mode == FAKE_CLOSE_MID_FRAME) {
		int rc = send_all(s, fd, s->sbuf, (size_t)n / 2);
		return rc < 0 ? rc : 1;
	}
	if (s->cfg.mode == FAKE_REVERSE) {
		uint8_t *copy = malloc((size_t)n);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, s->sbuf, (size_t)n);
		s->held[s->held_n].frame = copy;
		s->held[s->held_n].len = (size_t)n;
		s->held_n++;
		int rc = 0;
		if (s->held_n >= s->cfg.hold || s->held_n == FAKE_HELD_MAX)
			flush_held(s, fd, &rc);
		return rc;
	}
	int rc = send_all(s, fd, s->sbuf, (size_t)n);
	return rc < 0 ? rc : 0;
}

static int on_hello(struct fake_server *s, int fd, const struct proto_hello *h)
{
	pthread_mutex_lock(&s->lock);
	memcpy(s->st.last_client_name, h->client_name.ptr, h->client_name.len);
	s->st.last_client_name[h->client_name.len] = '\0';
	pthread_mutex_unlock(&s->lock);
	if (s->cfg.mode == FAKE_SILENT_HELLO)
		return 0;
	if (s->cfg.mode == FAKE_HELLO_ERROR) {
		int rc = send_error(s, fd, s->cfg.error_code, true, 0, s->cfg.error_message);
		return rc < 0 ? rc : 1;
	}
	if (h->version != PROTO_VERSION) {
		int rc = send_error(s, fd, PROTO_E_UNSUPPORTED, true, 0, "protocol version not supported");
		return rc < 0 ? rc : 1;
	}
	if (s->cfg.api_key && (h->api_key.len != strlen(s->cfg.api_key) ||
			       memcmp(h->api_key.ptr, s->cfg.api_key, h->api_key.len))) {
		int rc = send_error(s, fd, PROTO_E_AUTH, true, 0, "unknown API key");
		return rc < 0 ? rc : 1;
	}
	/* docs/protocol.md section 7: min(server_max, max(wish, 4096)). */
	s->conn_frame_bytes_max = s->cfg.frame_bytes_max;
	if (h->frame_bytes_max && h->frame_bytes_max < s->conn_frame_bytes_max)
		s->conn_frame_bytes_max = h->frame_bytes_max < PROTO_FRAME_BYTES_MIN
						  ? PROTO_FRAME_BYTES_MIN
						  : h->frame_bytes_max;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct proto_hello_ok ok = {
		.version = PROTO_VERSION,
		.shard_count = s->cfg.shard_count,
		.frame_bytes_max = s->conn_frame_bytes_max,
		.batch_events_max = s->cfg.batch_events_max,
		.inflight_max = s->cfg.inflight_max,
		.server_time_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000,
		.max_future_us = 300LL * 1000000,
		.max_age_us = 35LL * 86400 * 1000000,
		.tenant = {(const uint8_t *)s->cfg.tenant, (uint32_t)strlen(s->cfg.tenant)},
	};
	uint8_t buf[PROTO_HEADER_BYTES + 41 + TALLY_TENANT_BYTES_MAX];
	long n = proto_encode_hello_ok(buf, sizeof(buf), &ok);
	if (n < 0)
		return (int)n;
	pthread_mutex_lock(&s->lock);
	s->st.hellos_ok++;
	pthread_mutex_unlock(&s->lock);
	int rc = send_all(s, fd, buf, (size_t)n);
	return rc < 0 ? rc : 0;
}

/* Serves one connection until it closes, misbehaves or the server stops. */
static void serve(struct fake_server *s, int fd)
{
	size_t head = 0, tail = 0;
	bool hello = false;
	s->conn_frame_bytes_max = s->cfg.frame_bytes_max;
	s->held_n = 0;
	for (;;) {
		struct proto_frame f;
		size_t need = 0;
		long n = tail > head ? proto_frame_parse(s->rbuf + head, tail - head,
							  hello ? s->conn_frame_bytes_max
								: PROTO_HELLO_BYTES_MAX,
							  s->cfg.batch_events_max, &f, &need)
				     : 0;
		if (n < 0) {
			pthread_mutex_lock(&s->lock);
			s->st.last_frame_error = (int)-n;
			pthread_mutex_unlock(&s->lock);
			(void)send_error(s, fd, (uint16_t)-n, true, 0, proto_error_str((int)-n));
			break;
		}
		if (n > 0) {
			int rc;
			if (!hello && f.type != PROTO_HELLO) {
				(void)send_error(s, fd, PROTO_E_UNEXPECTED, true, 0, "HELLO expected first");
				break;
			}
			if (f.type == PROTO_HELLO) {
				if (hello) {
					(void)send_error(s, fd, PROTO_E_UNEXPECTED, true, 0, "second HELLO");
					break;
				}
				hello = true;
				rc = on_hello(s, fd, &f.u.hello);
			} else if (f.type == PROTO_BATCH) {
				rc = on_batch(s, fd, &f.u.batch);
			} else if (f.type == PROTO_PING) {
				pthread_mutex_lock(&s->lock);
				s->st.pings++;
				pthread_mutex_unlock(&s->lock);
				uint8_t pong[PROTO_HEADER_BYTES + 8];
				long pn = proto_encode_ping(pong, sizeof(pong), PROTO_PONG, f.u.ping_nonce);
				rc = pn < 0 ? (int)pn : send_all(s, fd, pong, (size_t)pn);
			} else {
				(void)send_error(s, fd, PROTO_E_UNEXPECTED, true, 0,
						 "frame type not valid from a client");
				break;
			}
			if (rc != 0)
				break;
			head += (size_t)n;
			if (head == tail)
				head = tail = 0;
			continue;
		}
		/* Need more bytes. */
		if (tail == s->rbuf_cap) {
			memmove(s->rbuf, s->rbuf + head, tail - head);
			tail -= head;
			head = 0;
		}
		struct pollfd pf[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->stop_pipe[0], .events = POLLIN}};
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[1].revents)
			break;
		ssize_t r = recv(fd, s->rbuf + tail, s->rbuf_cap - tail, MSG_DONTWAIT);
		if (r == 0)
			break;
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			break;
		}
		tail += (size_t)r;
	}
	for (uint32_t i = 0; i < s->held_n; i++)
		free(s->held[i].frame);
	s->held_n = 0;
	close(fd);
}

static void *server_main(void *arg)
{
	struct fake_server *s = arg;
	int served = 0;
	while (s->cfg.max_conns == 0 || served < s->cfg.max_conns) {
		struct pollfd pf[2] = {{.fd = s->lfd, .events = POLLIN}, {.fd = s->stop_pipe[0], .events = POLLIN}};
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[1].revents)
			break;
		int fd = accept(s->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		pthread_mutex_lock(&s->lock);
		s->st.conns++;
		pthread_mutex_unlock(&s->lock);
		served++;
		serve(s, fd);
	}
	return NULL;
}

int fake_server_start(const struct fake_server_config *cfg, struct fake_server **out)
{
	*out = NULL;
	struct fake_server *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->cfg = *cfg;
	if (!s->cfg.frame_bytes_max)
		s->cfg.frame_bytes_max = PROTO_FRAME_BYTES_DEFAULT;
	if (!s->cfg.batch_events_max)
		s->cfg.batch_events_max = PROTO_BATCH_EVENTS_DEFAULT;
	if (!s->cfg.inflight_max)
		s->cfg.inflight_max = PROTO_INFLIGHT_DEFAULT;
	if (!s->cfg.shard_count)
		s->cfg.shard_count = 4;
	if (s->cfg.shard_count > FAKE_SHARDS_MAX)
		s->cfg.shard_count = FAKE_SHARDS_MAX;
	if (!s->cfg.tenant)
		s->cfg.tenant = "test";
	if (!s->cfg.hold)
		s->cfg.hold = 2;
	pthread_mutex_init(&s->lock, NULL);
	s->lfd = -1;
	s->stop_pipe[0] = s->stop_pipe[1] = -1;
	s->rbuf_cap = (size_t)s->cfg.frame_bytes_max + 65536;
	s->sbuf_cap = proto_ack_size(s->cfg.batch_events_max);
	s->rbuf = malloc(s->rbuf_cap);
	s->sbuf = malloc(s->sbuf_cap);
	s->keys = calloc(FAKE_KEYS_MAX, sizeof(*s->keys));
	int err = -ENOMEM;
	if (!s->rbuf || !s->sbuf || !s->keys)
		goto out_free;
	if (pipe(s->stop_pipe) < 0) {
		err = -errno;
		goto out_free;
	}
	s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->lfd < 0) {
		err = -errno;
		goto out_free;
	}
	int one = 1;
	(void)setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons(cfg->port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	if (bind(s->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(s->lfd, 16) < 0 ||
	    getsockname(s->lfd, (struct sockaddr *)&a, &al) < 0) {
		err = -errno;
		goto out_free;
	}
	s->port = ntohs(a.sin_port);
	err = -pthread_create(&s->thread, NULL, server_main, s);
	if (err < 0)
		goto out_free;
	*out = s;
	return 0;
out_free:
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->stop_pipe[0] >= 0) {
		close(s->stop_pipe[0]);
		close(s->stop_pipe[1]);
	}
	free(s->rbuf);
	free(s->sbuf);
	free(s->keys);
	free(s);
	return err;
}

uint16_t fake_server_port(const struct fake_server *s)
{
	return s->port;
}

void fake_server_stats(struct fake_server *s, struct fake_server_stats *out)
{
	pthread_mutex_lock(&s->lock);
	*out = s->st;
	pthread_mutex_unlock(&s->lock);
}

void fake_server_wait(struct fake_server *s)
{
	if (!s->joined) {
		pthread_join(s->thread, NULL);
		s->joined = true;
	}
}

void fake_server_stop(struct fake_server *s)
{
	if (!s)
		return;
	if (!s->joined) {
		ssize_t w = write(s->stop_pipe[1], "x", 1);
		(void)w;
		fake_server_wait(s);
	}
	close(s->lfd);
	close(s->stop_pipe[0]);
	close(s->stop_pipe[1]);
	pthread_mutex_destroy(&s->lock);
	free(s->rbuf);
	free(s->sbuf);
	free(s->keys);
	free(s);
}
