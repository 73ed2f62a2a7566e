/*
 * test_tallyd — integration tests: the client library against a real tallyd on an ephemeral
 * port, run once per I/O backend (argv[1] = uring | epoll), with argv[2] = on | off for
 * --group-flush (ctest: uring with it on, epoll with it off, so both sync-group layouts run).
 *
 * Covers: receipts (accepted / duplicate / conflict / rejected), duplicates within a batch,
 * across batches, across connections and across kill -9 + restart; pipelined batches matched
 * by request id; malformed frames; data before HELLO, a wrong API key and a wrong tenant
 * (nothing written); many concurrent connections; a client that never reads its ACKs does not
 * stall others; SIGTERM loses nothing in flight (every ACCEPTED key is in the WAL exactly once,
 * checked with the WAL reader).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include "tally/client.h"
#include "tally/protocol.h"
#include "net_testutil.h"
#include "tally/wal.h"
#include "check.h"

static const char *io_mode = "epoll";
static const char *group_flush = "on"; /* --group-flush: one sync group per worker or per shard */
static char bin_dir[1024];

struct server {
	pid_t pid;
	uint16_t port;
	char dir[256];
};

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void server_start(struct server *s, const char *extra1, const char *extra2)
{
	char portfile[300], exe[1100], logf[300];
	snprintf(portfile, sizeof portfile, "%s.port", s->dir);
	snprintf(logf, sizeof logf, "%s.log", s->dir);
	snprintf(exe, sizeof exe, "%s/tallyd", bin_dir);
	unlink(portfile);
	s->pid = fork();
	if (s->pid == 0) {
		int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 2);
			close(fd);
		}
		const char *argv[20] = {exe, "--listen", "127.0.0.1:0", "--data", s->dir,
					"--port-file", portfile, "--io", io_mode, "--threads", "2",
					"--idle-timeout", "60", "--expected-keys", "65536"};
		int n = 15;
		argv[n++] = "--group-flush";
		argv[n++] = group_flush;
		if (extra1)
			argv[n++] = extra1;
		if (extra2)
			argv[n++] = extra2;
		argv[n] = NULL;
		execv(exe, (char **)argv);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		FILE *f = fopen(portfile, "r");
		if (f) {
			unsigned p = 0;
			if (fscanf(f, "%u", &p) == 1 && p) {
				s->port = (uint16_t)p;
				fclose(f);
				return;
			}
			fclose(f);
		}
		int st;
		if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
			fprintf(stderr, "tallyd exited early (status %d); log %s\n", st, logf);
			exit(1);
		}
		usleep(20000);
	}
	fprintf(stderr, "tallyd did not start in 10 s\n");
	kill(s->pid, SIGKILL);
	exit(1);
}

/* Sends sig and waits; returns the exit status (or 128+signal). */
static int server_stop(struct server *s, int sig)
{
	int st = 0;
	kill(s->pid, sig);
	waitpid(s->pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static struct tally_client *connect_as(const struct server *s, const char *key)
{
	struct tally_client_options o = {.port = s->port, .api_key = key,
					 .io_timeout_ms = 20000};
	struct tally_client *c = NULL;
	int rc = tally_client_connect(&o, &c);
	if (rc < 0) {
		fprintf(stderr, "connect: %s\n", tally_client_last_error(c));
		tally_client_close(c);
		return NULL;
	}
	return c;
}

/* Event storage for building batches. */
struct evbuf {
	char key[64], cust[32], name[32], model[16];
	struct tally_prop props[2];
	struct tally_event_in in;
};

static void make_event(struct evbuf *e, const char *key, const char *cust, int64_t tokens,
		       int64_t t_us)
{
	snprintf(e->key, sizeof e->key, "%s", key);
	snprintf(e->cust, sizeof e->cust, "%s", cust);
	snprintf(e->name, sizeof e->name, "ai.tokens");
	snprintf(e->model, sizeof e->model, "gpt-4o");
	e->props[0] = (struct tally_prop){.key = {(const uint8_t *)"tokens", 6},
					  .kind = TALLY_VALUE_INT, .i64 = tokens};
	e->props[1] = (struct tally_prop){.key = {(const uint8_t *)"model", 5},
					  .kind = TALLY_VALUE_STRING,
					  .str = {(const uint8_t *)e->model, 6}};
	e->in = (struct tally_event_in){
		.key = {(const uint8_t *)e->key, (uint32_t)strlen(e->key)},
		.customer = {(const uint8_t *)e->cust, (uint32_t)strlen(e->cust)},
		.name = {(const uint8_t *)e->name, (uint32_t)strlen(e->name)},
		.event_time_us = t_us,
		.prop_count = 2,
		.props = e->props,
	};
}

/* Counts WAL records whose key equals `key` (all shards). */
static long wal_count_key(const char *dir, const char *key, long *total_out)
{
	struct wal_reader *r;
	if (wal_reader_open(dir, -1, &r) < 0)
		return -1;
	struct wal_record rec;
	long n = 0, total = 0;
	while (wal_reader_next(r, &rec) == 1) {
		if (rec.kind != WAL_RECORD_EVENT)
			continue;
		total++;
		if (key && rec.ev.key.len == strlen(key) && !memcmp(rec.ev.key.ptr, key, rec.ev.key.len))
			n++;
	}
	wal_reader_close(r);
	if (total_out)
		*total_out = total;
	return n;
}

/* Counts the WAL's events stored under tenant a (n[0]), tenant b (n[1]) and any other (n[2]).
   Returns 0, or -1 if the WAL cannot be opened. */
static int wal_count_tenants(const char *dir, const char *a, const char *b, long n[3])
{
	struct wal_reader *r;
	n[0] = n[1] = n[2] = 0;
	if (wal_reader_open(dir, -1, &r) < 0)
		return -1;
	struct wal_record rec;
	while (wal_reader_next(r, &rec) == 1) {
		if (rec.kind != WAL_RECORD_EVENT)
			continue;
		if (rec.tenant.len == strlen(a) && !memcmp(rec.tenant.ptr, a, rec.tenant.len))
			n[0]++;
		else if (rec.tenant.len == strlen(b) && !memcmp(rec.tenant.ptr, b, rec.tenant.len))
			n[1]++;
		else
			n[2]++;
	}
	wal_reader_close(r);
	return 0;
}

static void test_receipts(struct server *s)
{
	struct tally_client *c = connect_as(s, "k");
	CHECK(c != NULL);
	if (!c)
		return;
	int64_t t = now_us();
	struct evbuf e[6];
	make_event(&e[0], "r-1", "cus_1", 10, t);
	make_event(&e[1], "r-2", "cus_1", 20, t);
	make_event(&e[2], "r-1", "cus_1", 10, t);      /* duplicate within the batch */
	make_event(&e[3], "r-2", "cus_1", 21, t);      /* conflict within the batch */
	make_event(&e[4], "r-old", "cus_1", 1, t - 40LL * 86400 * 1000000); /* too old */
	make_event(&e[5], "r-new", "cus_1", 1, t + 3600LL * 1000000);      /* too new */
	struct tally_event_in in[6];
	for (int i = 0; i < 6; i++)
		in[i] = e[i].in;
	struct proto_receipt r[6];
	CHECK_EQ(tally_client_send_wait(c, in, 6, r), 0);
	CHECK_EQ(r[0].status, PROTO_ACCEPTED);
	CHECK_EQ(r[1].status, PROTO_ACCEPTED);
	CHECK_EQ(r[2].status, PROTO_DUPLICATE);
	CHECK_EQ(r[2].offset, r[0].offset);
	CHECK_EQ(r[2].shard, r[0].shard);
	CHECK_EQ(r[3].status, PROTO_CONFLICT);
	CHECK_EQ(r[3].offset, r[1].offset);
	CHECK_EQ(r[4].status, PROTO_REJECTED);
	CHECK_EQ(r[4].reason, TALLY_REJECT_TIME_TOO_OLD);
	CHECK_EQ(r[5].status, PROTO_REJECTED);
	CHECK_EQ(r[5].reason, TALLY_REJECT_TIME_TOO_NEW);

	/* Across batches: the same two again. */
	CHECK_EQ(tally_client_send_wait(c, in, 2, r), 0);
	CHECK_EQ(r[0].status, PROTO_DUPLICATE);
	CHECK_EQ(r[1].status, PROTO_DUPLICATE);

	/* A malformed event in the middle: the rest proceeds. */
	CHECK_EQ(tally_client_batch_begin(c), 0);
	make_event(&e[0], "m-1", "cus_1", 1, t);
	make_event(&e[1], "m-2", "cus_1", 1, t);
	CHECK_EQ(tally_client_batch_add(c, &e[0].in), 0);
	uint8_t bad[64];
	memset(bad, 0, sizeof bad);
	bad[8] = 0; /* key_len 0 */
	bad[9] = 1;
	bad[10] = 1;
	CHECK_EQ(tally_client_batch_add_raw(c, bad, 14), 0);
	CHECK_EQ(tally_client_batch_add(c, &e[1].in), 0);
	uint64_t rid = 0;
	CHECK_EQ(tally_client_batch_send(c, &rid), 0);
	struct tally_client_reply rep;
	CHECK_EQ(tally_client_recv(c, 10000, &rep), 0);
	CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ACK);
	CHECK_EQ(rep.request_id, rid);
	CHECK_EQ(rep.receipt_count, 3);
	if (rep.receipt_count == 3) {
		CHECK_EQ(rep.receipts[0].status, PROTO_ACCEPTED);
		CHECK_EQ(rep.receipts[1].status, PROTO_REJECTED);
		CHECK_EQ(rep.receipts[1].reason, TALLY_REJECT_KEY_LEN);
		CHECK_EQ(rep.receipts[2].status, PROTO_ACCEPTED);
	}
	tally_client_close(c);

	/* Across connections. */
	c = connect_as(s, "k");
	CHECK(c != NULL);
	if (!c)
		return;
	make_event(&e[0], "r-1", "cus_1", 10, t);
	CHECK_EQ(tally_client_send_wait(c, &e[0].in, 1, r), 0);
	CHECK_EQ(r[0].status, PROTO_DUPLICATE);
	tally_client_close(c);
}

/* Many batches in flight on one connection; ACKs matched by request id (any order). */
static void test_pipelining(struct server *s)
{
	struct tally_client *c = connect_as(s, "k");
	CHECK(c != NULL);
	if (!c)
		return;
	enum { NB = 40, PER = 100 };
	static struct evbuf e[PER];
	struct tally_event_in in[PER];
	int64_t t = now_us();
	uint64_t ids[NB];
	int seen[NB] = {0};
	for (int b = 0; b < NB; b++) {
		for (int i = 0; i < PER; i++) {
			char key[64];
			snprintf(key, sizeof key, "pipe-%d-%d", b, i);
			make_event(&e[i], key, "cus_2", i, t);
			in[i] = e[i].in;
		}
		CHECK_EQ(tally_client_send_batch(c, in, PER, &ids[b]), 0);
	}
	int got = 0, accepted = 0;
	while (got < NB) {
		struct tally_client_reply rep;
		int rc = tally_client_recv(c, 10000, &rep);
		CHECK_EQ(rc, 0);
		if (rc)
			break;
		CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ACK);
		for (int b = 0; b < NB; b++)
			if (ids[b] == rep.request_id) {
				CHECK_EQ(seen[b], 0);
				seen[b]++;
			}
		for (uint32_t i = 0; i < rep.receipt_count; i++)
			accepted += rep.receipts[i].status == PROTO_ACCEPTED;
		got++;
	}
	CHECK_EQ(accepted, NB * PER);
	tally_client_close(c);
}

static int raw_connect(uint16_t port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	return fd;
}


static bool raw_closed(int fd)
{
	char b;
	for (;;) {
		ssize_t k = recv(fd, &b, 1, 0);
		if (k == 0)
			return true;
		if (k < 0)
			return errno != EAGAIN && errno != EWOULDBLOCK;
	}
}

static void test_malformed(struct server *s)
{
	/* Garbage instead of a frame: ERROR BAD_MAGIC, then closed. */
	int fd = raw_connect(s->port);
	CHECK(fd >= 0);
	const char junk[] = "GET / HTTP/1.1\r\n\r\n";
	CHECK(send(fd, junk, sizeof junk - 1, 0) > 0);
	uint16_t code = 0;
	CHECK_EQ(net_test_read_frame(fd, &code), PROTO_ERROR);
	CHECK_EQ(code, PROTO_E_BAD_MAGIC);
	CHECK(raw_closed(fd));
	close(fd);

	/* A BATCH before HELLO: ERROR UNEXPECTED, nothing written. */
	fd = raw_connect(s->port);
	uint8_t frame[512];
	struct proto_batch_builder b;
	struct evbuf e;
	make_event(&e, "before-hello", "cus_3", 1, now_us());
	proto_batch_start(&b, frame, sizeof frame, 1);
	CHECK_EQ(proto_batch_add(&b, &e.in), 0);
	long n = proto_batch_finish(&b);
	CHECK(send(fd, frame, (size_t)n, 0) == n);
	code = 0;
	CHECK_EQ(net_test_read_frame(fd, &code), PROTO_ERROR);
	CHECK_EQ(code, PROTO_E_UNEXPECTED);
	CHECK(raw_closed(fd));
	close(fd);

	/* After HELLO: a frame with a bad checksum closes the connection with BAD_CHECKSUM. */
	struct tally_client *c = connect_as(s, "k");
	CHECK(c != NULL);
	if (c) {
		proto_batch_start(&b, frame, sizeof frame, 77);
		make_event(&e, "bad-sum", "cus_3", 1, now_us());
		CHECK_EQ(proto_batch_add(&b, &e.in), 0);
		n = proto_batch_finish(&b);
		frame[n - 1] ^= 0x40;
		CHECK_EQ(tally_client_send_raw(c, frame, (size_t)n), 0);
		struct tally_client_reply rep;
		CHECK_EQ(tally_client_recv(c, 10000, &rep), 0);
		CHECK_EQ(rep.kind, TALLY_CLIENT_REPLY_ERROR);
		CHECK_EQ(rep.error_code, PROTO_E_BAD_CHECKSUM);
		CHECK(rep.fatal);
		tally_client_close(c);
	}
	/* A frame header declaring 4 GiB: refused at once, not waited for. */
	fd = raw_connect(s->port);
	uint8_t hdr[16] = {0x54, 0x41, 0x4c, 0x59, 0, 0, 0, 0, 1, PROTO_HELLO, 0, 0,
			   0xff, 0xff, 0xff, 0xff};
	CHECK(send(fd, hdr, 16, 0) == 16);
	code = 0;
	CHECK_EQ(net_test_read_frame(fd, &code), PROTO_ERROR);
	CHECK_EQ(code, PROTO_E_FRAME_TOO_LARGE);
	close(fd);

	CHECK_EQ(wal_count_key(s->dir, "before-hello", NULL), 0);
	CHECK_EQ(wal_count_key(s->dir, "bad-sum", NULL), 0);
}

/* A client that never reads its ACKs does not stall the others. */
static void test_slow_reader(struct server *s)
{
	struct tally_client *slow = connect_as(s, "k");
	struct tally_client *fast = connect_as(s, "k");
	CHECK(slow && fast);
	if (!slow || !fast)
		goto out;
	static struct evbuf e[200];
	struct tally_event_in in[200];
	int64_t t = now_us();
	/* The slow one fills its in-flight window and never reads. */
	uint32_t lim = tally_client_limits(slow)->inflight_max;
	for (uint32_t b = 0; b < lim; b++) {
		for (int i = 0; i < 200; i++) {
			char key[64];
			snprintf(key, sizeof key, "slow-%u-%d", b, i);
			make_event(&e[i], key, "cus_4", 1, t);
			in[i] = e[i].in;
		}
		if (tally_client_send_batch(slow, in, 200, NULL) < 0)
			break;
	}
	for (int round = 0; round < 20; round++) {
		for (int i = 0; i < 200; i++) {
			char key[64];
			snprintf(key, sizeof key, "fast-%d-%d", round, i);
			make_event(&e[i], key, "cus_4", 1, t);
			in[i] = e[i].in;
		}
		struct proto_receipt r[200];
		int rc = tally_client_send_wait(fast, in, 200, r);
		CHECK_EQ(rc, 0);
		if (rc)
			break;
		CHECK_EQ(r[199].status, PROTO_ACCEPTED);
	}
out:
	tally_client_close(slow);
	tally_client_close(fast);
}

static void test_many_connections(struct server *s, int n)
{
	int *fds = calloc((size_t)n, sizeof *fds);
	int ok = 0;
	for (int i = 0; i < n; i++) {
		fds[i] = raw_connect(s->port);
		if (fds[i] < 0)
			continue;
		uint8_t buf[128];
		struct proto_hello h = {.version = 1, .client_name = {(const uint8_t *)"t", 1}};
		long m = proto_encode_hello(buf, sizeof buf, &h);
		if (send(fds[i], buf, (size_t)m, 0) == m)
			ok++;
	}
	int hello_ok = 0;
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0 && net_test_read_frame(fds[i], NULL) == PROTO_HELLO_OK)
			hello_ok++;
	CHECK_EQ(ok, n);
	CHECK_EQ(hello_ok, n);
	/* All of them still work: a few send a batch and get their ACK. */
	struct tally_client *c = connect_as(s, "k");
	CHECK(c != NULL);
	if (c) {
		struct evbuf e;
		struct proto_receipt r;
		make_event(&e, "after-many", "cus_5", 1, now_us());
		CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r), 0);
		CHECK_EQ(r.status, PROTO_ACCEPTED);
		tally_client_close(c);
	}
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(fds);
}

/* kill -9 then restart: keys acknowledged before are still duplicates. */
static void test_kill9(struct server *s)
{
	struct tally_client *c = connect_as(s, "k");
	CHECK(c != NULL);
	if (!c)
		return;
	struct evbuf e;
	struct proto_receipt r;
	make_event(&e, "k9-key", "cus_6", 5, now_us());
	CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r), 0);
	CHECK_EQ(r.status, PROTO_ACCEPTED);
	tally_client_close(c);
	CHECK_EQ(server_stop(s, SIGKILL), 128 + SIGKILL);
	server_start(s, NULL, NULL);
	c = connect_as(s, "k");
	CHECK(c != NULL);
	if (!c)
		return;
	struct proto_receipt r2;
	CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r2), 0);
	CHECK_EQ(r2.status, PROTO_DUPLICATE);
	CHECK_EQ(r2.offset, r.offset);
	CHECK_EQ(r2.shard, r.shard);
	make_event(&e, "k9-key", "cus_6", 6, e.in.event_time_us);
	CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r2), 0);
	CHECK_EQ(r2.status, PROTO_CONFLICT);
	tally_client_close(c);
}

/* SIGTERM with batches in flight: every ACCEPTED receipt's key is in the WAL exactly once. */
static void test_sigterm(struct server *s)
{
	struct tally_client *c = connect_as(s, "k");
	CHECK(c != NULL);
	if (!c)
		return;
	enum { NB = 30, PER = 200 };
	static struct evbuf e[PER];
	struct tally_event_in in[PER];
	int64_t t = now_us();
	for (int b = 0; b < NB; b++) {
		for (int i = 0; i < PER; i++) {
			char key[64];
			snprintf(key, sizeof key, "term-%d-%d", b, i);
			make_event(&e[i], key, "cus_7", 1, t);
			in[i] = e[i].in;
		}
		if (tally_client_send_batch(c, in, PER, NULL) < 0)
			break;
	}
	kill(s->pid, SIGTERM);
	long accepted = 0;
	for (;;) {
		struct tally_client_reply rep;
		if (tally_client_recv(c, 10000, &rep) < 0)
			break;
		if (rep.kind != TALLY_CLIENT_REPLY_ACK)
			continue;
		for (uint32_t i = 0; i < rep.receipt_count; i++)
			accepted += rep.receipts[i].status == PROTO_ACCEPTED;
	}
	tally_client_close(c);
	int st = 0;
	waitpid(s->pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	/* Batches still unread in the socket at SIGTERM get no ACK (the client retries them);
	   every one the broker took is finished and acknowledged. */
	CHECK(accepted > 0);
	CHECK_EQ(accepted % PER, 0);
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(s->dir, -1, &r), 0);
	long inwal = 0;
	struct wal_record rec;
	while (wal_reader_next(r, &rec) == 1)
		if (rec.kind == WAL_RECORD_EVENT && rec.ev.key.len > 5 &&
		    !memcmp(rec.ev.key.ptr, "term-", 5))
			inwal++;
	wal_reader_close(r);
	CHECK_EQ(inwal, accepted);
}

/* Restart with another --threads finds every key; another --shards is refused; a quiet
   shard writes tick records; a non-loopback address needs --auth-file or --insecure. */
static void test_restart_shapes(struct server *s)
{
	struct tally_client *c = connect_as(s, "k");
	CHECK(c != NULL);
	if (!c)
		return;
	enum { N = 64 };
	static struct evbuf e[N];
	struct tally_event_in in[N];
	struct proto_receipt r[N];
	int64_t t = now_us();
	for (int i = 0; i < N; i++) {
		char key[32];
		snprintf(key, sizeof key, "shape-%d", i);
		make_event(&e[i], key, "cus_8", i, t);
		in[i] = e[i].in;
	}
	CHECK_EQ(tally_client_send_wait(c, in, N, r), 0);
	int shards_seen[256] = {0}, distinct = 0;
	for (int i = 0; i < N; i++) {
		CHECK_EQ(r[i].status, PROTO_ACCEPTED);
		if (!shards_seen[r[i].shard & 255]++)
			distinct++;
	}
	CHECK(distinct > 1); /* the keys spread over several shards */
	tally_client_close(c);
	/* Quiet for > 1 s: every shard writes a tick. */
	usleep(1600 * 1000);
	CHECK_EQ(server_stop(s, SIGTERM), 0);
	struct wal_reader *rd;
	int ticks = 0;
	CHECK_EQ(wal_reader_open(s->dir, -1, &rd), 0);
	struct wal_record rec;
	while (wal_reader_next(rd, &rec) == 1)
		ticks += rec.kind == WAL_RECORD_TICK;
	wal_reader_close(rd);
	CHECK(ticks >= 8);

	char cmd[1500];
	snprintf(cmd, sizeof cmd, "%s/tallyd --data %s --listen 127.0.0.1:0 --shards 3 2>/dev/null",
		 bin_dir, s->dir);
	CHECK(system(cmd) != 0);
	snprintf(cmd, sizeof cmd, "%s/tallyd --data %s.x --listen 0.0.0.0:0 2>/dev/null", bin_dir,
		 s->dir);
	CHECK(system(cmd) != 0);

	server_start(s, "--threads", "1"); /* the later --threads wins */
	c = connect_as(s, "k");
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK_EQ(tally_client_send_wait(c, in, N, r), 0);
	for (int i = 0; i < N; i++)
		CHECK_EQ(r[i].status, PROTO_DUPLICATE);
	tally_client_close(c);
}

/* Sends keys cold-0..n-1 in batches; counts receipts by status into st[5]. */
static void send_cold(struct server *s, int n, int64_t t, long st[5])
{
	struct tally_client *c = connect_as(s, "k");
	CHECK(c != NULL);
	if (!c)
		return;
	static struct evbuf e[500];
	struct tally_event_in in[500];
	struct proto_receipt r[500];
	for (int base = 0; base < n; base += 500) {
		for (int i = 0; i < 500; i++) {
			char key[32];
			snprintf(key, sizeof key, "cold-%d", base + i);
			make_event(&e[i], key, "cus_10", base + i, t);
			/* A less compressible model string, so that 64 KiB segments roll. */
			snprintf(e[i].model, sizeof e[i].model, "m%08x",
				 (unsigned)((base + i) * 2654435761u));
			e[i].props[1].str.len = 9;
			in[i] = e[i].in;
		}
		if (tally_client_send_wait(c, in, 500, r) != 0) {
			CHECK(!"send_wait failed");
			break;
		}
		for (int i = 0; i < 500; i++)
			st[r[i].status & 3]++;
	}
	tally_client_close(c);
}

/* Keys of sealed segments live in the cold tier (.keys runs + blooms): after kill -9 they are
   still duplicates, and a deleted run is rebuilt from the WAL at start. */
static void test_cold_tier(const char *base)
{
	struct server s;
	snprintf(s.dir, sizeof s.dir, "%s/cold", base);
	server_start(&s, "--segment-bytes", "65536");
	int64_t t = now_us();
	enum { N = 40000 };
	long st[5] = {0};
	send_cold(&s, N, t, st);
	CHECK_EQ(st[PROTO_ACCEPTED], N);
	CHECK_EQ(server_stop(&s, SIGKILL), 128 + SIGKILL);

	char path[600];
	snprintf(path, sizeof path, "%s/dedup/shard-00/00000000000000000000.keys", s.dir);
	CHECK_EQ(access(path, F_OK), 0); /* segment 0 of shard 0 was sealed into a run */
	server_start(&s, "--segment-bytes", "65536");
	memset(st, 0, sizeof st);
	send_cold(&s, N, t, st);
	CHECK_EQ(st[PROTO_DUPLICATE], N);
	CHECK_EQ(server_stop(&s, SIGKILL), 128 + SIGKILL);

	CHECK_EQ(unlink(path), 0);
	server_start(&s, "--segment-bytes", "65536");
	memset(st, 0, sizeof st);
	send_cold(&s, N, t, st);
	CHECK_EQ(st[PROTO_DUPLICATE], N);
	CHECK_EQ(access(path, F_OK), 0); /* rebuilt */
	CHECK_EQ(server_stop(&s, SIGTERM), 0);
	CHECK_EQ(wal_count_key(s.dir, "cold-0", NULL), 1);
}

/* Reads frames from fd until an ACK or ERROR; returns ACCEPTED receipts, or -1. */
static long raw_read_ack(int fd, uint8_t *buf, size_t cap)
{
	size_t len = 0;
	for (;;) {
		struct proto_frame f;
		size_t need;
		long n = proto_frame_parse(buf, len, (uint32_t)cap, 65535, &f, &need);
		if (n > 0) {
			memmove(buf, buf + n, len - (size_t)n);
			len -= (size_t)n;
			if (f.type == PROTO_HELLO_OK)
				continue;
			if (f.type != PROTO_ACK)
				return -1;
			long acc = 0;
			for (uint32_t i = 0; i < f.u.ack.receipt_count; i++) {
				struct proto_receipt r;
				proto_ack_receipt(&f.u.ack, i, &r);
				acc += r.status == PROTO_ACCEPTED;
			}
			return acc;
		}
		if (n < 0 || len == cap)
			return -1;
		ssize_t k = recv(fd, buf + len, cap - len, 0);
		if (k <= 0)
			return -1;
		len += (size_t)k;
	}
}

/* Receive buffers over --max-buffer-mb: frames wait for memory, none is lost. Every
   connection first sends half of a ~650 KB frame, so all of them hold a partial big frame
   at once (6 x 650 KB against a 2 MB budget). */
static void test_buffer_budget(const char *base)
{
	struct server s;
	snprintf(s.dir, sizeof s.dir, "%s/budget", base);
	server_start(&s, "--max-buffer-mb", "2");
	enum { CONNS = 6, PER = 4000, CAP = 1 << 20 };
	static struct evbuf e[PER];
	uint8_t *frame[CONNS];
	long flen[CONNS];
	int fd[CONNS];
	int64_t t = now_us();
	for (int k = 0; k < CONNS; k++) {
		frame[k] = malloc(CAP);
		struct proto_batch_builder b;
		proto_batch_start(&b, frame[k], CAP, (uint64_t)k + 1);
		for (int i = 0; i < PER; i++) {
			char key[48];
			snprintf(key, sizeof key, "budget-%d-%d", k, i);
			make_event(&e[i], key, "cus_budget_customer_with_a_long_id_0001", i, t);
			CHECK_EQ(proto_batch_add(&b, &e[i].in), 0);
		}
		flen[k] = proto_batch_finish(&b);
		fd[k] = raw_connect(s.port);
		uint8_t hb[128];
		struct proto_hello h = {.version = 1};
		long m = proto_encode_hello(hb, sizeof hb, &h);
		CHECK(send(fd[k], hb, (size_t)m, 0) == m);
	}
	for (int k = 0; k < CONNS; k++)
		CHECK(send(fd[k], frame[k], (size_t)flen[k] / 2, 0) == flen[k] / 2);
	/* The frames cannot complete yet: wait (up to 20 s) until tallyd says one waits. */
	char logf[400], line[512];
	snprintf(logf, sizeof logf, "%s.log", s.dir);
	int waited = 0;
	for (int tries = 0; tries < 200 && !waited; tries++) {
		usleep(100 * 1000);
		FILE *lf = fopen(logf, "r");
		while (lf && fgets(line, sizeof line, lf))
			waited += strstr(line, "waits for receive-buffer budget") != NULL;
		if (lf)
			fclose(lf);
	}
	CHECK(waited > 0); /* the budget was really reached */
	for (int k = 0; k < CONNS; k++) {
		size_t rest = (size_t)(flen[k] - flen[k] / 2);
		CHECK(send(fd[k], frame[k] + flen[k] / 2, rest, 0) == (ssize_t)rest);
	}
	long accepted = 0;
	for (int k = 0; k < CONNS; k++) {
		accepted += raw_read_ack(fd[k], frame[k], CAP);
		close(fd[k]);
		free(frame[k]);
	}
	CHECK_EQ(accepted, (long)CONNS * PER);
	CHECK_EQ(server_stop(&s, SIGTERM), 0);
}

/* Raw-socket reader that keeps what follows a frame for the next call. */
struct raw_reader {
	int fd;
	size_t len;
	uint8_t buf[4096];
};

/* The next frame's type (ACK: *accepted counts its ACCEPTED receipts; ERROR: *code), skipping
   HELLO_OK; -1 on a closed socket, a malformed frame, or nothing within timeout_ms. */
static int raw_next(struct raw_reader *r, int timeout_ms, long *accepted, uint16_t *code)
{
	for (;;) {
		struct proto_frame f;
		size_t need;
		long n = proto_frame_parse(r->buf, r->len, sizeof r->buf, 65535, &f, &need);
		if (n > 0) {
			int type = f.type;
			if (type == PROTO_ACK)
				for (uint32_t i = 0; i < f.u.ack.receipt_count; i++) {
					struct proto_receipt rc;
					proto_ack_receipt(&f.u.ack, i, &rc);
					*accepted += rc.status == PROTO_ACCEPTED;
				}
			if (type == PROTO_ERROR)
				*code = f.u.error.code;
			memmove(r->buf, r->buf + n, r->len - (size_t)n);
			r->len -= (size_t)n;
			if (type == PROTO_HELLO_OK)
				continue;
			return type;
		}
		if (n < 0 || r->len == sizeof r->buf)
			return -1;
		struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = timeout_ms % 1000 * 1000};
		setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		ssize_t k = recv(r->fd, r->buf + r->len, sizeof r->buf - r->len, 0);
		if (k <= 0)
			return -1;
		r->len += (size_t)k;
	}
}

/*
 * The read deadline (--read-timeout) runs per frame: a client whose every write ends inside
 * a frame, but which keeps completing frames, is never cut off (it was, --read-timeout after
 * its first incomplete frame, because a completed frame did not restart the clock), while a
 * frame that stops arriving still is.
 */
static void test_read_deadline(const char *base)
{
	struct server s;
	snprintf(s.dir, sizeof s.dir, "%s/deadline", base);
	server_start(&s, "--read-timeout", "2");
	static struct raw_reader r;
	r.fd = raw_connect(s.port);
	r.len = 0;
	CHECK(r.fd >= 0);
	uint8_t hb[128];
	struct proto_hello h = {.version = 1};
	long m = proto_encode_hello(hb, sizeof hb, &h);
	CHECK(send(r.fd, hb, (size_t)m, 0) == m);

	enum { FRAMES = 5 };
	static uint8_t frame[FRAMES + 1][512];
	long len[FRAMES + 1];
	for (int k = 0; k <= FRAMES; k++) {
		struct proto_batch_builder b;
		struct evbuf e;
		char key[32];
		snprintf(key, sizeof key, "deadline-%d", k);
		make_event(&e, key, "cus_deadline", k, now_us());
		proto_batch_start(&b, frame[k], sizeof frame[k], (uint64_t)k + 1);
		CHECK_EQ(proto_batch_add(&b, &e.in), 0);
		len[k] = proto_batch_finish(&b);
	}
	/* Each write completes one frame and starts the next; 1.2 s apart, 6 s in all. */
	CHECK(send(r.fd, frame[0], (size_t)len[0] / 2, 0) == len[0] / 2);
	for (int k = 0; k < FRAMES; k++) {
		usleep(1200 * 1000);
		uint8_t out[1024];
		size_t rest = (size_t)(len[k] - len[k] / 2), n = rest;
		memcpy(out, frame[k] + len[k] / 2, rest);
		if (k + 1 < FRAMES) {
			memcpy(out + n, frame[k + 1], (size_t)len[k + 1] / 2);
			n += (size_t)len[k + 1] / 2;
		}
		CHECK(send(r.fd, out, n, MSG_NOSIGNAL) == (ssize_t)n);
	}
	long accepted = 0;
	uint16_t code = 0;
	for (int k = 0; k < FRAMES; k++) {
		int type = raw_next(&r, 10000, &accepted, &code);
		CHECK_EQ(type, PROTO_ACK);
		if (type != PROTO_ACK) {
			fprintf(stderr, "  reply %d: type %d, error %u\n", k, type, code);
			break;
		}
	}
	CHECK_EQ(accepted, FRAMES);
	/* Half a frame, then nothing: ERROR TIMEOUT after about 2 s. */
	int64_t t0 = now_us();
	CHECK(send(r.fd, frame[FRAMES], (size_t)len[FRAMES] / 2, MSG_NOSIGNAL) == len[FRAMES] / 2);
	code = 0;
	CHECK_EQ(raw_next(&r, 10000, &accepted, &code), PROTO_ERROR);
	CHECK_EQ(code, PROTO_E_TIMEOUT);
	CHECK(now_us() - t0 >= 2000000);
	close(r.fd);
	CHECK_EQ(server_stop(&s, SIGTERM), 0);

	/* The stop log counts each answered batch once, with its stages in order of time. */
	char logf[400], line[1024];
	snprintf(logf, sizeof logf, "%s.log", s.dir);
	FILE *lf = fopen(logf, "r");
	long batches = -1, receive[3] = {0}, durable[3] = {0}, total[3] = {0};
	while (lf && fgets(line, sizeof line, lf)) {
		const char *p = strstr(line, "batch latency, ");
		const char *d = p ? strstr(p, "durable ") : NULL, *t = p ? strstr(p, "total ") : NULL;
		const char *rv = p ? strstr(p, "receive ") : NULL;
		if (p && d && t && rv) {
			batches = strtol(p + 15, NULL, 10);
			sscanf(rv, "receive %ld/%ld/%ld", &receive[0], &receive[1], &receive[2]);
			sscanf(d, "durable %ld/%ld/%ld", &durable[0], &durable[1], &durable[2]);
			sscanf(t, "total %ld/%ld/%ld", &total[0], &total[1], &total[2]);
		}
	}
	if (lf)
		fclose(lf);
	CHECK_EQ(batches, FRAMES);
	CHECK(durable[0] > 0 && durable[0] <= durable[1] && durable[1] <= durable[2]);
	/* Every frame's first half was read 1.2 s before its second: its receive stage (and so
	   its total) is about 1.2 s, from the read that started it, not from the first frame. */
	CHECK(receive[0] >= 1000000 && receive[2] < 3000000);
	CHECK(total[0] >= receive[0] && total[2] >= durable[2]);
}

/* io_uring refused by the kernel: tallyd says why and serves with epoll. */
static void test_uring_fallback(const char *base)
{
	struct server s;
	snprintf(s.dir, sizeof s.dir, "%s/fallback", base);
	setenv("TALLY_TEST_NO_URING", "1", 1);
	const char *saved = io_mode;
	io_mode = "uring";
	server_start(&s, NULL, NULL);
	io_mode = saved;
	unsetenv("TALLY_TEST_NO_URING");
	struct tally_client *c = connect_as(&s, "k");
	CHECK(c != NULL);
	if (c) {
		struct evbuf e;
		struct proto_receipt r;
		make_event(&e, "fallback-1", "cus_9", 1, now_us());
		CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r), 0);
		CHECK_EQ(r.status, PROTO_ACCEPTED);
		tally_client_close(c);
	}
	CHECK_EQ(server_stop(&s, SIGTERM), 0);
	char logf[400], line[512];
	snprintf(logf, sizeof logf, "%s.log", s.dir);
	FILE *f = fopen(logf, "r");
	int said = 0, epoll = 0;
	while (f && fgets(line, sizeof line, f)) {
		said += strstr(line, "io_uring unavailable") != NULL;
		epoll += strstr(line, "io epoll") != NULL;
	}
	if (f)
		fclose(f);
	CHECK_EQ(said, 1);
	CHECK_EQ(epoll, 1);
}

/* Parses a stats line's counts; returns 1 if `line` is one (of the kind `what` starts). */
static int parse_stats(const char *line, const char *what, unsigned long long v[6])
{
	const char *p = strstr(line, "INFO  stats, ");
	if (!p || strncmp(p + 13, what, strlen(what)) != 0 || !(p = strchr(p, ':')))
		return 0;
	unsigned long long rate;
	return sscanf(p, ": %llu events in %llu batches (%llu ev/s): %llu accepted, %llu duplicate, "
			 "%llu conflict, %llu rejected", &v[0], &v[1], &rate, &v[2], &v[3], &v[4],
		      &v[5]) == 7;
}

/* --stats-interval 1: a line per second with traffic, and the whole run's at stop. Two batches,
   the first answered ACCEPTED x2, DUPLICATE, CONFLICT, REJECTED x2, the second DUPLICATE x2, a
   second apart: the interval lines add up to the whole run's, which is exactly that. */
static void test_stats_lines(const char *base)
{
	struct server s;
	snprintf(s.dir, sizeof s.dir, "%s/stats", base);
	server_start(&s, "--stats-interval", "1");
	struct tally_client *c = connect_as(&s, "k");
	CHECK(c != NULL);
	if (c) {
		int64_t t = now_us();
		struct evbuf e[6];
		make_event(&e[0], "st-1", "cus_1", 10, t);
		make_event(&e[1], "st-2", "cus_1", 20, t);
		make_event(&e[2], "st-1", "cus_1", 10, t);
		make_event(&e[3], "st-2", "cus_1", 21, t);
		make_event(&e[4], "st-old", "cus_1", 1, t - 40LL * 86400 * 1000000);
		make_event(&e[5], "st-new", "cus_1", 1, t + 3600LL * 1000000);
		struct tally_event_in in[6];
		for (int i = 0; i < 6; i++)
			in[i] = e[i].in;
		struct proto_receipt r[6];
		CHECK_EQ(tally_client_send_wait(c, in, 6, r), 0);
		usleep(1300000);
		CHECK_EQ(tally_client_send_wait(c, in, 2, r), 0);
		tally_client_close(c);
	}
	usleep(1300000);
	CHECK_EQ(server_stop(&s, SIGTERM), 0);
	char logf[400], line[1024];
	snprintf(logf, sizeof logf, "%s.log", s.dir);
	FILE *f = fopen(logf, "r");
	CHECK(f != NULL);
	unsigned long long sum[6] = {0}, all[6] = {0}, v[6];
	int intervals = 0, totals = 0;
	while (f && fgets(line, sizeof line, f)) {
		if (parse_stats(line, "last 1 s", v)) {
			intervals++;
			for (int k = 0; k < 6; k++)
				sum[k] += v[k];
		} else if (parse_stats(line, "whole run", v)) {
			totals++;
			memcpy(all, v, sizeof all);
		}
	}
	if (f)
		fclose(f);
	fprintf(stderr, "stats lines: %d interval(s); whole run: %llu events, %llu batches, "
			"%llu/%llu/%llu/%llu accepted/duplicate/conflict/rejected\n", intervals,
		all[0], all[1], all[2], all[3], all[4], all[5]);
	CHECK_EQ(totals, 1);
	CHECK(intervals >= 2); /* the batches were more than a second apart */
	const unsigned long long want[6] = {8, 2, 2, 3, 1, 2};
	for (int k = 0; k < 6; k++) {
		CHECK_EQ(all[k], want[k]);
		CHECK_EQ(sum[k], want[k]);
	}
}

/* Runs `tally ping` with extra arguments against s; returns its exit status, output in out. */
static int run_ping(const struct server *s, const char *args, char *out, size_t cap)
{
	char cmd[1400];
	snprintf(cmd, sizeof cmd, "%s/tally ping --connect 127.0.0.1:%u --interval 0 --timeout 10000 %s 2>&1",
		 bin_dir, s->port, args);
	FILE *p = popen(cmd, "r");
	if (!p)
		return -1;
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* `tally ping`: HELLO, then PINGs one at a time; exit 0 only when every PING was answered. */
static void test_ping_cli(struct server *s)
{
	char out[4096];
	CHECK_EQ(run_ping(s, "--count 3", out, sizeof out), 0);
	fprintf(stderr, "%s", out);
	CHECK(strstr(out, "tenant \"default\", 8 shards") != NULL);
	CHECK(strstr(out, "3 PING(s), 3 PONG(s): round trip") != NULL);
	CHECK_EQ(run_ping(s, "--count 0 --quiet", out, sizeof out), 0);
	CHECK(strstr(out, "connected to tallyd") != NULL);
	CHECK_EQ(run_ping(s, "--count x", out, sizeof out), 2);
}

/* A disk whose syncs take 150 ms (--sync-delay-us) against the default --slow-sync-ms 100:
   the first slow sync of each sync group is logged at once, later ones within 10 s are only
   counted, and the stop line of each group gives its total. Twelve events sent one after the
   other need twelve syncs at least, so some group (there are at most 8) has two or more. */
static void test_slow_sync(const char *base)
{
	struct server s;
	snprintf(s.dir, sizeof s.dir, "%s/slowsync", base);
	int64_t t0 = now_us();
	server_start(&s, "--sync-delay-us", "150000");
	struct tally_client *c = connect_as(&s, "k");
	CHECK(c != NULL);
	for (int i = 0; c && i < 12; i++) {
		struct evbuf e;
		struct proto_receipt r;
		char key[32];
		snprintf(key, sizeof key, "slow-%d", i);
		make_event(&e, key, "cus_9", 1, now_us());
		CHECK_EQ(tally_client_send_wait(c, &e.in, 1, &r), 0);
		CHECK_EQ(r.status, PROTO_ACCEPTED);
	}
	if (c)
		tally_client_close(c);
	CHECK_EQ(server_stop(&s, SIGTERM), 0);
	int64_t took_us = now_us() - t0;
	char logf[400], line[1024];
	snprintf(logf, sizeof logf, "%s.log", s.dir);
	FILE *f = fopen(logf, "r");
	CHECK(f != NULL);
	unsigned long long total = 0, logged = 0;
	int at_once = 0, summaries = 0;
	while (f && fgets(line, sizeof line, f)) {
		if (!strstr(line, "WARN"))
			continue;
		if (strstr(line, "to sync (--slow-sync-ms 100)"))
			at_once++;
		const char *q = strstr(line, "sync group ");
		unsigned g;
		unsigned long long t, u;
		if (q && strstr(q, "or more to sync") &&
		    sscanf(q, "sync group %u: %llu group commit(s) took 100 ms or more to sync "
			      "(%llu logged", &g, &t, &u) == 3) {
			total += t;
			logged += u;
			summaries++;
		}
	}
	if (f)
		fclose(f);
	fprintf(stderr, "slow syncs: %llu in all over %d group(s), %d lines as they happened "
			"(%llu by the stop lines), in %lld ms\n", total, summaries, at_once, logged,
		(long long)(took_us / 1000));
	CHECK(total >= 12);
	CHECK(summaries >= 1);
	CHECK_EQ(logged, (unsigned long long)at_once);
	CHECK(total > logged); /* twelve or more slow syncs, some of them only counted */
	if (took_us < 9000000) /* within 10 s: one line at once per group, the rest counted */
		CHECK_EQ(at_once, summaries);
}

/* Connections are balanced over the workers whatever SO_REUSEPORT's hash does: 16 clients
   connected one after the other end 8/8 (the log line each worker writes at stop). Three
   fresh brokers: by the hash alone, an exact 8/8 split of 16 comes up 20 % of the time. */
static void test_balance(const char *base)
{
	for (int round = 0; round < 3; round++) {
		struct server s;
		snprintf(s.dir, sizeof s.dir, "%s/balance%d", base, round);
		server_start(&s, "--log-level", "info");
		struct tally_client *c[16];
		for (int i = 0; i < 16; i++)
			CHECK(c[i] = connect_as(&s, "k"));
		for (int i = 0; i < 16; i++)
			tally_client_close(c[i]);
		CHECK_EQ(server_stop(&s, SIGTERM), 0);
		char logf[600], line[512];
		snprintf(logf, sizeof logf, "%s.log", s.dir);
		FILE *f = fopen(logf, "r");
		CHECK(f != NULL);
		unsigned long long took[2] = {0, 0}, handed = 0;
		int seen = 0;
		while (f && fgets(line, sizeof line, f)) {
			unsigned w;
			unsigned long long t, h;
			const char *p = strstr(line, "worker ");
			if (p && sscanf(p, "worker %u: took %llu connection(s), handed %llu", &w, &t,
					&h) == 3 && w < 2) {
				took[w] = t;
				handed += h;
				seen++;
			}
		}
		if (f)
			fclose(f);
		CHECK_EQ(seen, 2);
		CHECK_EQ(took[0], 8);
		CHECK_EQ(took[1], 8);
		fprintf(stderr, "balance round %d: %llu/%llu taken, %llu handed over\n", round,
			took[0], took[1], handed);
	}
}

static void test_auth(const char *base)
{
	struct server s;
	snprintf(s.dir, sizeof s.dir, "%s/auth", base);
	char authf[300];
	snprintf(authf, sizeof authf, "%s/keys", base);
	FILE *f = fopen(authf, "w");
	fprintf(f, "# tenant key\nacme key-acme-0123456789abcdef\nglobex key-globex-0123456789abcd\n");
	fclose(f);
	chmod(authf, 0644);
	/* World-readable key file: refused. */
	char exe[2048];
	snprintf(exe, sizeof exe, "%s/tallyd --data %s --auth-file %s --listen 127.0.0.1:0 2>/dev/null",
		 bin_dir, s.dir, authf);
	CHECK(system(exe) != 0);
	chmod(authf, 0600);
	server_start(&s, "--auth-file", authf);

	struct tally_client_options o = {.port = s.port, .api_key = "wrong-key-0123456789",
					 .io_timeout_ms = 10000};
	struct tally_client *c = NULL;
	int rc = tally_client_connect(&o, &c);
	CHECK_EQ(rc, TALLY_CLIENT_E_SERVER);
	CHECK_EQ(tally_client_last_server_error(c), PROTO_E_AUTH);
	tally_client_close(c);

	/* `tally ping` with a wrong key: refused, exit 1; with a right one: its tenant. */
	char out[4096];
	CHECK_EQ(run_ping(&s, "--count 1 --api-key wrong-key-0123456789", out, sizeof out), 1);
	CHECK(strstr(out, "AUTH") != NULL);
	CHECK_EQ(run_ping(&s, "--count 1 --api-key key-globex-0123456789abcd", out, sizeof out), 0);
	CHECK(strstr(out, "tenant \"globex\"") != NULL);

	struct tally_client *a = connect_as(&s, "key-acme-0123456789abcdef");
	struct tally_client *g = connect_as(&s, "key-globex-0123456789abcd");
	CHECK(a && g);
	if (a && g) {
		CHECK(!strcmp(tally_client_limits(a)->tenant, "acme"));
		CHECK(!strcmp(tally_client_limits(g)->tenant, "globex"));
		/* The same key and customer under two tenants are two events. */
		struct evbuf e;
		struct proto_receipt r;
		make_event(&e, "shared-key", "cus_globex_1", 1, now_us());
		CHECK_EQ(tally_client_send_wait(a, &e.in, 1, &r), 0);
		CHECK_EQ(r.status, PROTO_ACCEPTED);
		CHECK_EQ(tally_client_send_wait(g, &e.in, 1, &r), 0);
		CHECK_EQ(r.status, PROTO_ACCEPTED);
		CHECK_EQ(tally_client_send_wait(a, &e.in, 1, &r), 0);
		CHECK_EQ(r.status, PROTO_DUPLICATE);
	}
	tally_client_close(a);
	tally_client_close(g);
	CHECK_EQ(server_stop(&s, SIGTERM), 0);
	/* Stored under the tenant of the key that sent them, never the other. */
	long n[3];
	CHECK_EQ(wal_count_tenants(s.dir, "acme", "globex", n), 0);
	CHECK_EQ(n[0], 1);
	CHECK_EQ(n[1], 1);
	CHECK_EQ(n[2], 0);
}

/* Waits up to 10 s for `want` lines of the server's log to contain `needle`. */
static int wait_log(const struct server *s, const char *needle, int want)
{
	char logf[400], line[1024];
	snprintf(logf, sizeof logf, "%s.log", s->dir);
	for (int i = 0; i < 500; i++) {
		int n = 0;
		FILE *f = fopen(logf, "r");
		while (f && fgets(line, sizeof line, f))
			n += strstr(line, needle) != NULL;
		if (f)
			fclose(f);
		if (n >= want)
			return n;
		usleep(20000);
	}
	return 0;
}

static void write_keys(const char *path, const char *text, mode_t mode)
{
	char tmp[400];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	CHECK(f != NULL);
	if (!f)
		return;
	fputs(text, f);
	fclose(f);
	chmod(tmp, mode);
	CHECK_EQ(rename(tmp, path), 0); /* as an operator would: the new file whole, or the old */
}

/* SIGHUP reloads --auth-file: a key added works, a key removed is refused from then on, a
   connection it let in before keeps its tenant; a reload that fails (here: the file made
   world-readable) keeps the keys in use. */
static void test_auth_reload(const char *base)
{
	struct server s;
	snprintf(s.dir, sizeof s.dir, "%s/authreload", base);
	char authf[300];
	snprintf(authf, sizeof authf, "%s/keys-reload", base);
	write_keys(authf, "acme key-acme-0123456789abcdef\n", 0600);
	server_start(&s, "--auth-file", authf);
	struct tally_client *a = connect_as(&s, "key-acme-0123456789abcdef");
	CHECK(a != NULL);

	write_keys(authf, "initech key-initech-0123456789ab\n", 0600);
	kill(s.pid, SIGHUP);
	CHECK(wait_log(&s, "auth: reloaded", 1) == 1);
	struct tally_client *n = connect_as(&s, "key-initech-0123456789ab");
	CHECK(n != NULL);
	if (n)
		CHECK(!strcmp(tally_client_limits(n)->tenant, "initech"));
	struct tally_client_options o = {.port = s.port, .api_key = "key-acme-0123456789abcdef",
					 .io_timeout_ms = 10000};
	struct tally_client *gone = NULL;
	CHECK_EQ(tally_client_connect(&o, &gone), TALLY_CLIENT_E_SERVER);
	CHECK_EQ(tally_client_last_server_error(gone), PROTO_E_AUTH);
	tally_client_close(gone);

	struct evbuf e;
	struct proto_receipt r;
	make_event(&e, "reload-1", "cus_1", 1, now_us());
	if (a) { /* let in before the reload: still acme */
		CHECK_EQ(tally_client_send_wait(a, &e.in, 1, &r), 0);
		CHECK_EQ(r.status, PROTO_ACCEPTED);
	}
	if (n) {
		CHECK_EQ(tally_client_send_wait(n, &e.in, 1, &r), 0);
		CHECK_EQ(r.status, PROTO_ACCEPTED); /* another tenant: another event */
	}

	chmod(authf, 0644);
	kill(s.pid, SIGHUP);
	CHECK(wait_log(&s, "auth: reloading", 1) == 1);
	CHECK(wait_log(&s, "accessible by other users", 1) == 1);
	struct tally_client *n2 = connect_as(&s, "key-initech-0123456789ab");
	CHECK(n2 != NULL);
	tally_client_close(n2);
	tally_client_close(n);
	tally_client_close(a);
	CHECK_EQ(server_stop(&s, SIGTERM), 0);
	CHECK_EQ(wait_log(&s, "auth: reloaded", 1), 1); /* the failed reload did not count */

	long per[3];
	CHECK_EQ(wal_count_tenants(s.dir, "acme", "initech", per), 0);
	CHECK_EQ(per[0], 1);
	CHECK_EQ(per[1], 1);
	CHECK_EQ(per[2], 0);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		io_mode = argv[1];
	if (argc > 2)
		group_flush = argv[2];
	const char *b = getenv("TALLY_BIN");
	snprintf(bin_dir, sizeof bin_dir, "%s", b ? b : "./bin");
	char base[] = "/tmp/test_tallyd.XXXXXX";
	if (!mkdtemp(base)) {
		perror("mkdtemp");
		return 1;
	}
	struct server s;
	snprintf(s.dir, sizeof s.dir, "%s/data", base);
	server_start(&s, NULL, NULL);
	fprintf(stderr, "tallyd (%s) on port %u, data %s\n", io_mode, s.port, s.dir);

	test_receipts(&s);
	test_ping_cli(&s);
	test_pipelining(&s);
	test_malformed(&s);
	test_slow_reader(&s);
	test_many_connections(&s, 2000);
	test_kill9(&s);
	test_sigterm(&s);
	server_start(&s, NULL, NULL);
	test_restart_shapes(&s);
	CHECK_EQ(server_stop(&s, SIGTERM), 0);
	test_auth(base);
	test_auth_reload(base);
	test_balance(base);
	test_cold_tier(base);
	test_buffer_budget(base);
	test_read_deadline(base);
	test_slow_sync(base);
	test_stats_lines(base);
	if (!strcmp(io_mode, "uring"))
		test_uring_fallback(base);

	long total = 0;
	CHECK_EQ(wal_count_key(s.dir, "r-1", &total), 1);
	CHECK_EQ(wal_count_key(s.dir, "k9-key", NULL), 1);
	if (failures == 0) {
		char cmd[400];
		snprintf(cmd, sizeof cmd, "rm -rf %s", base);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", base);
	} else {
		fprintf(stderr, "data kept in %s (logs: %s/*.log)\n", base, base);
	}
	printf("test_tallyd(%s): %s, %d failure(s), %ld events in the WAL\n", io_mode,
	       failures ? "FAILED" : "passed", failures, total);
	return failures ? 1 : 0;
}
