/*
 * tests/torture/torture_abuse.c — abuse against a real tallyd while a well-behaved client of
 * another tenant keeps sending (docs/reliability.md "Abuse"):
 *   flood      --max-conns + 1000 connections, each sending HELLO: every one is answered
 *              (HELLO_OK up to the limit, retryable TOO_MANY_CONNS past it), none hangs
 *   slowloris  frames trickled 1 byte a second (after HELLO: closed by --read-timeout 2;
 *              before HELLO: closed by the 5 s HELLO deadline)
 *   huge       frame headers declaring 4 GiB, before and after HELLO: FRAME_TOO_LARGE at once
 *   prehello   BATCH frames before HELLO: UNEXPECTED, nothing stored
 *   badkey     wrong API keys, 200 connections: AUTH each, nothing stored
 *   tenant     tenant A's events naming tenant B's customers are stored under A only
 * After each case: tallyd is alive, its RSS is under the cap (TORTURE_RSS_CAP_MIB, default 512,
 * which covers the ASan build), and the victim client acknowledged events during the case
 * (its rate per case is printed, not asserted: the machine is shared).
 * Env: TALLY_BIN (dir with tallyd). Exit 0 = all held, 1 = a failure, 77 = tallyd not built.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally/client.h"
#include "tally/protocol.h"
#include "net_testutil.h"
#include "tally/wal.h"
#include "torture_lib.h"
#include "../check.h"

#define MAX_CONNS 300
#define FLOOD_EXTRA 1000
#define KEY_ACME "tk_acme_0123456789abcdef"
#define KEY_GLOBEX "tk_globex_0123456789abcd"

static struct torture_server srv;
static long rss_cap_kib = 512 * 1024, rss_max_kib;

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---------- the victim: a well-behaved client of tenant globex ---------- */

static atomic_long victim_acked;
static atomic_int victim_stop, victim_errors;

static void *victim_main(void *arg)
{
	(void)arg;
	struct tally_client_options o = {.port = srv.port, .api_key = KEY_GLOBEX,
					 .io_timeout_ms = 20000};
	struct tally_client *c = NULL;
	if (tally_client_connect(&o, &c) < 0) {
		fprintf(stderr, "victim: connect: %s\n", tally_client_last_error(c));
		tally_client_close(c);
		atomic_fetch_add(&victim_errors, 1);
		return NULL;
	}
	int64_t base = torture_now_us() - 1000000;
	static struct torture_event ev[100];
	struct tally_event_in in[100];
	struct proto_receipt r[100];
	for (uint64_t b = 0; !atomic_load(&victim_stop); b++) {
		for (int i = 0; i < 100; i++) {
			torture_event_make(&ev[i], "victim", "globex_cus", 0, b * 100 + (uint64_t)i,
					   base);
			in[i] = ev[i].in;
		}
		int rc = tally_client_send_wait(c, in, 100, r);
		if (rc < 0) {
			fprintf(stderr, "victim: %s\n", tally_client_last_error(c));
			atomic_fetch_add(&victim_errors, 1);
			break;
		}
		long ok = 0;
		for (int i = 0; i < 100; i++)
			ok += r[i].status == PROTO_ACCEPTED;
		if (ok != 100)
			atomic_fetch_add(&victim_errors, 1);
		atomic_fetch_add(&victim_acked, ok);
		usleep(2000); /* a steady client, not a flood: ~40k events/s at most */
	}
	tally_client_close(c);
	return NULL;
}

/* ---------- raw sockets ---------- */

static int raw_connect(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(srv.port)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = {.tv_sec = 15};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	return fd;
}

static bool send_all(int fd, const void *buf, size_t n)
{
	return send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n;
}

static bool send_hello(int fd, const char *key)
{
	uint8_t buf[PROTO_HELLO_BYTES_MAX];
	struct proto_hello h = {.version = PROTO_VERSION,
				.client_name = {(const uint8_t *)"abuse", 5},
				.api_key = {(const uint8_t *)key, (uint32_t)strlen(key)}};
	long n = proto_encode_hello(buf, sizeof buf, &h);
	return n > 0 && send_all(fd, buf, (size_t)n);
}


/* True once the peer closed (EOF or reset), reading and dropping whatever it sent first. */
static bool peer_closed(int fd, int timeout_ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int64_t end = mono_us() + (int64_t)timeout_ms * 1000;
	for (;;) {
		int left = (int)((end - mono_us()) / 1000);
		if (left < 0)
			return false;
		if (poll(&p, 1, left) <= 0)
			return false;
		char b[512];
		ssize_t k = recv(fd, b, sizeof b, MSG_DONTWAIT);
		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
			return true;
	}
}

/* ---------- phases ---------- */

static void phase_end(const char *name, long acked_before, int64_t t0)
{
	int64_t dt = mono_us() - t0;
	long acked = atomic_load(&victim_acked) - acked_before;
	long rss = torture_rss_kib(srv.pid);
	if (rss > rss_max_kib)
		rss_max_kib = rss;
	bool alive = kill(srv.pid, 0) == 0;
	printf("abuse %-10s %6.1f s  victim %7ld events (%6.0f/s)  tallyd RSS %ld MiB  %s\n", name,
	       (double)dt / 1e6, acked, dt ? (double)acked * 1e6 / (double)dt : 0.0, rss / 1024,
	       alive ? "up" : "DOWN");
	fflush(stdout);
	CHECK(alive);
	CHECK(rss > 0 && rss < rss_cap_kib);
	CHECK(acked > 0); /* the well-behaved client kept going */
}

static void abuse_flood(void)
{
	enum { N = MAX_CONNS + FLOOD_EXTRA };
	static int fds[N];
	int opened = 0, hello_ok = 0, too_many = 0, other = 0;
	for (int i = 0; i < N; i++) {
		fds[i] = raw_connect();
		if (fds[i] >= 0 && send_hello(fds[i], KEY_ACME))
			opened++;
	}
	for (int i = 0; i < N; i++) {
		if (fds[i] < 0)
			continue;
		uint16_t code = 0;
		int t = net_test_read_frame(fds[i], &code);
		if (t == PROTO_HELLO_OK)
			hello_ok++;
		else if (t == PROTO_ERROR && code == PROTO_E_TOO_MANY_CONNS)
			too_many++;
		else
			other++;
	}
	printf("abuse flood: %d connections: %d HELLO_OK, %d TOO_MANY_CONNS, %d other\n", opened,
	       hello_ok, too_many, other);
	CHECK_EQ(opened, N);
	CHECK_EQ(other, 0);
	CHECK(hello_ok <= MAX_CONNS);
	CHECK(hello_ok >= MAX_CONNS - 10); /* the victim and stragglers hold a few */
	CHECK(too_many >= FLOOD_EXTRA);
	for (int i = 0; i < N; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	usleep(300000);
	/* The slots come back. */
	struct tally_client_options o = {.port = srv.port, .api_key = KEY_ACME};
	struct tally_client *c = NULL;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	tally_client_close(c);
}

static void abuse_slowloris(void)
{
	enum { AFTER = 50, BEFORE = 20 };
	int fds[AFTER + BEFORE];
	uint8_t frame[AFTER + BEFORE][256];
	for (int i = 0; i < AFTER + BEFORE; i++) {
		fds[i] = raw_connect();
		CHECK(fds[i] >= 0);
		if (i < AFTER) { /* HELLO done, then a BATCH trickled */
			CHECK(send_hello(fds[i], KEY_ACME));
			CHECK_EQ(net_test_read_frame(fds[i], NULL), PROTO_HELLO_OK);
			struct torture_event e;
			torture_event_make(&e, "slow", "acme_cus", 0, (uint64_t)i, torture_now_us());
			struct proto_batch_builder b;
			proto_batch_start(&b, frame[i], sizeof frame[i], 1);
			CHECK_EQ(proto_batch_add(&b, &e.in), 0);
			CHECK(proto_batch_finish(&b) > 0);
		} else { /* a HELLO trickled */
			struct proto_hello h = {.version = PROTO_VERSION,
						.api_key = {(const uint8_t *)KEY_ACME,
							    (uint32_t)strlen(KEY_ACME)}};
			CHECK(proto_encode_hello(frame[i], sizeof frame[i], &h) > 0);
		}
	}
	int64_t t0 = mono_us(), closed_at[AFTER + BEFORE];
	int open_n = AFTER + BEFORE;
	for (int i = 0; i < AFTER + BEFORE; i++)
		closed_at[i] = 0;
	for (int sec = 0; sec < 10 && open_n > 0; sec++) {
		for (int i = 0; i < AFTER + BEFORE; i++) {
			if (closed_at[i] || fds[i] < 0)
				continue;
			if (send(fds[i], &frame[i][sec], 1, MSG_NOSIGNAL) != 1 || peer_closed(fds[i], 0)) {
				closed_at[i] = mono_us();
				open_n--;
			}
		}
		int64_t next = t0 + (int64_t)(sec + 1) * 1000000;
		while (mono_us() < next) {
			for (int i = 0; i < AFTER + BEFORE; i++)
				if (!closed_at[i] && fds[i] >= 0 && peer_closed(fds[i], 0)) {
					closed_at[i] = mono_us();
					open_n--;
				}
			usleep(20000);
		}
	}
	int64_t max_after = 0, max_before = 0;
	for (int i = 0; i < AFTER + BEFORE; i++) {
		CHECK(closed_at[i] != 0);
		int64_t d = closed_at[i] ? closed_at[i] - t0 : INT64_MAX;
		if (i < AFTER && d > max_after)
			max_after = d;
		if (i >= AFTER && d > max_before)
			max_before = d;
		if (fds[i] >= 0)
			close(fds[i]);
	}
	printf("abuse slowloris: %d trickled frames after HELLO closed within %.1f s "
	       "(--read-timeout 2), %d trickled HELLOs within %.1f s (5 s HELLO deadline)\n",
	       AFTER, (double)max_after / 1e6, BEFORE, (double)max_before / 1e6);
}

static void abuse_huge(void)
{
	int refused = 0;
	for (int i = 0; i < 100; i++) {
		int fd = raw_connect();
		CHECK(fd >= 0);
		if (fd < 0)
			continue;
		bool after = i % 2;
		if (after) {
			CHECK(send_hello(fd, KEY_ACME));
			CHECK_EQ(net_test_read_frame(fd, NULL), PROTO_HELLO_OK);
		}
		uint8_t hdr[16] = {0x54, 0x41, 0x4c, 0x59, 0, 0, 0, 0, 1,
				   after ? PROTO_BATCH : PROTO_HELLO, 0, 0, 0xff, 0xff, 0xff, 0xff};
		CHECK(send_all(fd, hdr, sizeof hdr));
		uint16_t code = 0;
		if (net_test_read_frame(fd, &code) == PROTO_ERROR && code == PROTO_E_FRAME_TOO_LARGE &&
		    peer_closed(fd, 5000))
			refused++;
		close(fd);
	}
	printf("abuse huge: 100 frames declaring 4 GiB (50 before HELLO, 50 after): %d refused "
	       "with FRAME_TOO_LARGE and closed\n", refused);
	CHECK_EQ(refused, 100);
}

static void abuse_prehello(void)
{
	int refused = 0;
	for (int i = 0; i < 50; i++) {
		int fd = raw_connect();
		CHECK(fd >= 0);
		if (fd < 0)
			continue;
		uint8_t frame[512];
		struct torture_event e;
		torture_event_make(&e, "prehello", "acme_cus", 0, (uint64_t)i, torture_now_us());
		struct proto_batch_builder b;
		proto_batch_start(&b, frame, sizeof frame, 1);
		CHECK_EQ(proto_batch_add(&b, &e.in), 0);
		long n = proto_batch_finish(&b);
		CHECK(n > 0 && send_all(fd, frame, (size_t)n));
		uint16_t code = 0;
		if (net_test_read_frame(fd, &code) == PROTO_ERROR && code == PROTO_E_UNEXPECTED &&
		    peer_closed(fd, 5000))
			refused++;
		close(fd);
	}
	printf("abuse prehello: 50 BATCH frames before HELLO: %d refused with UNEXPECTED\n",
	       refused);
	CHECK_EQ(refused, 50);
}

static void abuse_badkey(void)
{
	enum { N = 200 };
	int fds[N], auth = 0;
	int64_t t0 = mono_us();
	for (int i = 0; i < N; i++) {
		fds[i] = raw_connect();
		char key[64];
		snprintf(key, sizeof key, "tk_wrong_%04d_0123456789", i);
		CHECK(fds[i] >= 0 && send_hello(fds[i], i % 2 ? key : KEY_ACME "x"));
	}
	for (int i = 0; i < N; i++) {
		uint16_t code = 0;
		if (fds[i] >= 0 && net_test_read_frame(fds[i], &code) == PROTO_ERROR && code == PROTO_E_AUTH)
			auth++;
		if (fds[i] >= 0)
			close(fds[i]);
	}
	printf("abuse badkey: %d wrong API keys: %d refused with AUTH in %.1f s\n", N, auth,
	       (double)(mono_us() - t0) / 1e6);
	CHECK_EQ(auth, N);
	/* The right key still works at once. */
	struct tally_client_options o = {.port = srv.port, .api_key = KEY_ACME};
	struct tally_client *c = NULL;
	CHECK_EQ(tally_client_connect(&o, &c), 0);
	tally_client_close(c);
}

/* acme sends events naming globex's customers; globex sends the same keys. */
static void abuse_tenant(void)
{
	struct tally_client_options oa = {.port = srv.port, .api_key = KEY_ACME};
	struct tally_client_options og = {.port = srv.port, .api_key = KEY_GLOBEX};
	struct tally_client *a = NULL, *g = NULL;
	CHECK_EQ(tally_client_connect(&oa, &a), 0);
	CHECK_EQ(tally_client_connect(&og, &g), 0);
	if (a && g && !failures) {
		int64_t base = torture_now_us() - 1000000;
		static struct torture_event ev[100];
		struct tally_event_in in[100];
		struct proto_receipt r[100];
		for (int i = 0; i < 100; i++) {
			torture_event_make(&ev[i], "iso", "globex_cus", 0, (uint64_t)i, base);
			in[i] = ev[i].in;
		}
		CHECK_EQ(tally_client_send_wait(a, in, 100, r), 0);
		for (int i = 0; i < 100; i++)
			CHECK_EQ(r[i].status, PROTO_ACCEPTED);
		/* The same keys from globex: its own events, not duplicates of acme's. */
		CHECK_EQ(tally_client_send_wait(g, in, 100, r), 0);
		for (int i = 0; i < 100; i++)
			CHECK_EQ(r[i].status, PROTO_ACCEPTED);
		/* And acme again: duplicates of its own. */
		CHECK_EQ(tally_client_send_wait(a, in, 100, r), 0);
		for (int i = 0; i < 100; i++)
			CHECK_EQ(r[i].status, PROTO_DUPLICATE);
	}
	tally_client_close(a);
	tally_client_close(g);
}

/* After tallyd stopped: what the WAL holds for each case. */
static void check_wal(void)
{
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(srv.data, -1, &r), 0);
	if (failures)
		return;
	struct wal_record rec;
	long iso_acme = 0, iso_globex = 0, iso_other = 0, prehello = 0, slow = 0, victim = 0,
	     victim_wrong = 0;
	while (wal_reader_next(r, &rec) == 1) {
		if (rec.kind != WAL_RECORD_EVENT)
			continue;
		char tag[TORTURE_TAG_BYTES_MAX + 1];
		unsigned p;
		uint64_t seq;
		if (!torture_key_parse(rec.ev.key.ptr, rec.ev.key.len, tag, &p, &seq))
			continue;
		bool acme = rec.tenant.len == 4 && !memcmp(rec.tenant.ptr, "acme", 4);
		bool globex = rec.tenant.len == 6 && !memcmp(rec.tenant.ptr, "globex", 6);
		if (!strcmp(tag, "iso"))
			acme ? iso_acme++ : globex ? iso_globex++ : iso_other++;
		else if (!strcmp(tag, "prehello"))
			prehello++;
		else if (!strcmp(tag, "slow"))
			slow++;
		else if (!strcmp(tag, "victim"))
			globex ? victim++ : victim_wrong++;
	}
	wal_reader_close(r);
	printf("abuse wal: tenant case: acme %ld, globex %ld, other %ld; victim %ld (under "
	       "another tenant: %ld); stored from prehello %ld, from slowloris %ld\n",
	       iso_acme, iso_globex, iso_other, victim, victim_wrong, prehello, slow);
	CHECK_EQ(iso_acme, 100);
	CHECK_EQ(iso_globex, 100);
	CHECK_EQ(iso_other, 0);
	CHECK_EQ(victim, atomic_load(&victim_acked));
	CHECK_EQ(victim_wrong, 0);
	CHECK_EQ(prehello, 0);
	CHECK_EQ(slow, 0);
}

int main(void)
{
	const char *bin = getenv("TALLY_BIN");
	snprintf(srv.bin, sizeof srv.bin, "%s/tallyd", bin ? bin : "build/bin");
	if (access(srv.bin, X_OK) != 0) {
		printf("SKIP: %s is not built\n", srv.bin);
		return 77;
	}
	const char *cap = getenv("TORTURE_RSS_CAP_MIB");
	if (cap)
		rss_cap_kib = atol(cap) * 1024;
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		if (rl.rlim_max < MAX_CONNS + FLOOD_EXTRA + 200) {
			printf("SKIP: RLIMIT_NOFILE hard limit %lu is too low for the flood\n",
			       (unsigned long)rl.rlim_max);
			return 77;
		}
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl); /* tallyd inherits it */
	}
	signal(SIGPIPE, SIG_IGN);
	char base[] = "/tmp/torture_abuse.XXXXXX";
	if (!mkdtemp(base))
		return 1;
	snprintf(srv.data, sizeof srv.data, "%s/data", base);
	snprintf(srv.port_file, sizeof srv.port_file, "%s/port", base);
	snprintf(srv.log, sizeof srv.log, "%s/tallyd.log", base);
	char authf[TORTURE_PATH_BYTES_MAX];
	snprintf(authf, sizeof authf, "%s/keys", base);
	FILE *f = fopen(authf, "w");
	fprintf(f, "acme %s\nglobex %s\n", KEY_ACME, KEY_GLOBEX);
	fclose(f);
	chmod(authf, 0600);
	char maxc[16];
	snprintf(maxc, sizeof maxc, "%d", MAX_CONNS);
	const char *extra[] = {"--auth-file", authf, "--max-conns", maxc, "--read-timeout", "2",
			       "--threads", "2", "--expected-keys", "65536", NULL};
	int st = 0;
	if (torture_server_start(&srv, extra, NULL, &st) < 0) {
		fprintf(stderr, "tallyd did not start (status %d), log %s\n", st, srv.log);
		return 1;
	}
	pthread_t victim;
	pthread_create(&victim, NULL, victim_main, NULL);
	usleep(1000000);
	long a0 = atomic_load(&victim_acked);
	int64_t t0 = mono_us();
	usleep(1000000);
	phase_end("baseline", a0, t0);

	struct {
		const char *name;
		void (*fn)(void);
	} cases[] = {{"flood", abuse_flood},     {"slowloris", abuse_slowloris},
		     {"huge", abuse_huge},       {"prehello", abuse_prehello},
		     {"badkey", abuse_badkey},   {"tenant", abuse_tenant}};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		a0 = atomic_load(&victim_acked);
		t0 = mono_us();
		cases[i].fn();
		usleep(200000);
		phase_end(cases[i].name, a0, t0);
	}
	atomic_store(&victim_stop, 1);
	pthread_join(victim, NULL);
	CHECK_EQ(atomic_load(&victim_errors), 0);
	CHECK_EQ(torture_server_stop(&srv, SIGTERM), 0);
	check_wal();
	printf("torture_abuse: %s, %d failure(s); tallyd RSS max %ld MiB (cap %ld MiB)\n",
	       failures ? "FAILED" : "passed", failures, rss_max_kib / 1024, rss_cap_kib / 1024);
	if (!failures) {
		char cmd[TORTURE_PATH_BYTES_MAX + 16];
		snprintf(cmd, sizeof cmd, "rm -rf %s", base);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", base);
	} else {
		fprintf(stderr, "data and log kept in %s\n", base);
	}
	return failures ? 1 : 0;
}
