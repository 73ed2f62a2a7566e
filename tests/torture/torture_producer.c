/*
 * tests/torture/torture_producer.c — the ledger producer: several connections (one thread
 * each) send deterministic events (torture_lib.h) as pipelined batches, and record every
 * receipt durably (append + fdatasync to the producer's ledger) before counting it.
 *
 * It behaves like a real SDK: a batch with no ACK (connection closed, tallyd killed, a
 * retryable ERROR for its request id) is re-sent with the SAME keys and the SAME content,
 * after reconnecting if needed, until it is acknowledged. On SIGTERM/SIGINT, --stop-file,
 * --duration-s or --events it stops making new batches and drains: it keeps retrying what is
 * unacknowledged until every batch has its ACK (or --drain-timeout-s passes), then writes the
 * "# end" line. The port is re-read from --port-file at every connect, so tallyd may restart
 * on another port.
 *
 * Threads: one per producer id; each owns its connection, window and ledger file; the only
 * shared state is the stop flag (atomic) and the stats printed at the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally/client.h"
#include "torture_lib.h"

#define PRODUCERS_MAX 64
#define WINDOW_MAX 32
#define BATCH_EVENTS_MAX 1024

static struct {
	const char *port_file;
	uint16_t port;
	const char *ledger_dir;
	const char *tag;
	const char *cprefix;
	const char *api_key;
	const char *stop_file;
	unsigned producers, first_id, batch, window;
	uint64_t events; /* per producer, 0 = unlimited */
	uint64_t rate;   /* events/s per producer, 0 = unlimited */
	int duration_s, drain_timeout_s;
	int64_t base_us;
	int quiet;
} opt = {.tag = "t", .cprefix = "cus", .api_key = "torture-key-0123456789",
	 .producers = 4, .batch = 64, .window = 4, .drain_timeout_s = 120};

static atomic_int stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&stop_flag, 1);
}

struct batch {
	uint64_t first_seq;
	uint32_t count;
	uint64_t rid;
	bool sent;
};

struct producer {
	pthread_t thread;
	unsigned id;
	int ledger_fd;
	uint64_t next_seq;
	struct batch win[WINDOW_MAX];
	unsigned nwin;
	/* stats */
	uint64_t acked, accepted, duplicate, conflict, rejected, batches_sent, resends;
	uint64_t reconnects, connect_failures, server_errors, ledger_errors;
	int result;
};

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint16_t current_port(void)
{
	if (!opt.port_file)
		return opt.port;
	FILE *f = fopen(opt.port_file, "r");
	unsigned p = 0;
	if (f) {
		if (fscanf(f, "%u", &p) != 1)
			p = 0;
		fclose(f);
	}
	return (uint16_t)p;
}

static int ledger_write(struct producer *p, const char *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t k = write(p->ledger_fd, buf + done, len - done);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		done += (size_t)k;
	}
	/* A receipt counts only once it is on disk: the ledger is the client's proof. */
	return fdatasync(p->ledger_fd) < 0 ? -errno : 0;
}

static int send_batch(struct tally_client *c, struct producer *p, struct batch *b)
{
	static _Thread_local struct torture_event ev[BATCH_EVENTS_MAX];
	static _Thread_local struct tally_event_in in[BATCH_EVENTS_MAX];
	for (uint32_t i = 0; i < b->count; i++) {
		torture_event_make(&ev[i], opt.tag, opt.cprefix, p->id, b->first_seq + i,
				   opt.base_us);
		in[i] = ev[i].in;
	}
	int rc = tally_client_send_batch(c, in, b->count, &b->rid);
	if (rc == 0) {
		b->sent = true;
		p->batches_sent++;
	}
	return rc;
}

/* Handles one reply. Returns 0, or <0 if the connection must be dropped. */
static int on_reply(struct producer *p, const struct tally_client_reply *r)
{
	if (r->kind == TALLY_CLIENT_REPLY_ERROR) {
		p->server_errors++;
		for (unsigned i = 0; i < p->nwin; i++)
			if (p->win[i].sent && p->win[i].rid == r->request_id) {
				p->win[i].sent = false; /* retry it, same keys */
				p->resends++;
			}
		if (!opt.quiet)
			fprintf(stderr, "producer %u: server error %s%s: %s\n", p->id,
				proto_error_code(r->error_code), r->fatal ? " (fatal)" : "",
				r->message);
		if (!r->fatal)
			usleep(20000); /* retryable (disk full, unavailable): back off a little */
		return r->fatal ? -1 : 0;
	}
	if (r->kind != TALLY_CLIENT_REPLY_ACK)
		return 0;
	unsigned i;
	for (i = 0; i < p->nwin; i++)
		if (p->win[i].sent && p->win[i].rid == r->request_id)
			break;
	if (i == p->nwin) {
		fprintf(stderr, "producer %u: ACK for unknown request %" PRIu64 "\n", p->id,
			r->request_id);
		p->result = 1;
		return -1;
	}
	struct batch *b = &p->win[i];
	if (r->receipt_count != b->count) {
		fprintf(stderr, "producer %u: ACK with %u receipts for %u events\n", p->id,
			r->receipt_count, b->count);
		p->result = 1;
		return -1;
	}
	static _Thread_local char buf[BATCH_EVENTS_MAX * 64];
	size_t len = 0;
	for (uint32_t k = 0; k < r->receipt_count; k++) {
		const struct proto_receipt *rc = &r->receipts[k];
		long long off = rc->offset == PROTO_OFFSET_UNKNOWN ? -1 : (long long)rc->offset;
		len += (size_t)snprintf(buf + len, sizeof buf - len, "%" PRIu64 " %u %u %u %lld\n",
					b->first_seq + k, rc->status, rc->reason, rc->shard, off);
	}
	int wrc = ledger_write(p, buf, len);
	if (wrc < 0) {
		/* Not recorded = not counted: keep the batch and retry (it will be DUPLICATE). */
		fprintf(stderr, "producer %u: ledger write: %s\n", p->id, strerror(-wrc));
		p->ledger_errors++;
		b->sent = false;
		return 0;
	}
	for (uint32_t k = 0; k < r->receipt_count; k++) {
		switch (r->receipts[k].status) {
		case PROTO_ACCEPTED: p->accepted++, p->acked++; break;
		case PROTO_DUPLICATE: p->duplicate++, p->acked++; break;
		case PROTO_CONFLICT: p->conflict++; break;
		default: p->rejected++; break;
		}
	}
	memmove(&p->win[i], &p->win[i + 1], (p->nwin - i - 1) * sizeof p->win[0]);
	p->nwin--;
	return 0;
}

/* Drops the connection after handing out every reply that arrived whole before it broke. */
static void drop(struct producer *p, struct tally_client **cp)
{
	struct tally_client *c = *cp;
	struct tally_client_reply r;
	for (int i = 0; i < 100000 && tally_client_recv(c, 0, &r) == 0; i++)
		(void)on_reply(p, &r);
	tally_client_close(c);
	*cp = NULL;
	for (unsigned i = 0; i < p->nwin; i++) {
		if (p->win[i].sent)
			p->resends++;
		p->win[i].sent = false;
	}
}

static bool want_stop(const struct producer *p, int64_t t0_ms)
{
	if (atomic_load(&stop_flag))
		return true;
	if (opt.events && p->next_seq >= opt.events)
		return true;
	if (opt.duration_s && mono_ms() - t0_ms >= (int64_t)opt.duration_s * 1000)
		return true;
	if (opt.stop_file && access(opt.stop_file, F_OK) == 0)
		return true;
	return false;
}

static void *producer_main(void *arg)
{
	struct producer *p = arg;
	struct tally_client *c = NULL;
	int64_t t0 = mono_ms(), drain_deadline = 0, last_reply = mono_ms();
	int backoff_ms = 10;
	for (;;) {
		bool stopping = want_stop(p, t0);
		if (stopping && !drain_deadline)
			drain_deadline = mono_ms() + (int64_t)opt.drain_timeout_s * 1000;
		if (stopping && (p->nwin == 0 || mono_ms() > drain_deadline))
			break;
		if (!c) {
			struct tally_client_options o = {
			    .port = current_port(), .api_key = opt.api_key,
			    .client_name = "torture-producer", .connect_timeout_ms = 2000,
			    .io_timeout_ms = 10000};
			if (o.port == 0 || tally_client_connect(&o, &c) < 0) {
				tally_client_close(c);
				c = NULL;
				p->connect_failures++;
				usleep((useconds_t)backoff_ms * 1000);
				backoff_ms = backoff_ms < 200 ? backoff_ms * 2 : 200;
				continue;
			}
			backoff_ms = 10;
			p->reconnects++;
			last_reply = mono_ms();
		}
		int rc = 0;
		for (unsigned i = 0; i < p->nwin && rc == 0; i++)
			if (!p->win[i].sent) {
				rc = send_batch(c, p, &p->win[i]);
				if (rc == TALLY_CLIENT_E_INFLIGHT)
					rc = 0; /* the window is bigger than the server's: wait */
			}
		if (rc == 0 && !stopping && p->nwin < opt.window) {
			bool rate_ok = true;
			if (opt.rate) {
				int64_t el = mono_ms() - t0;
				rate_ok = p->next_seq < (uint64_t)(el + 1) * opt.rate / 1000;
			}
			if (rate_ok) {
				struct batch *b = &p->win[p->nwin++];
				*b = (struct batch){.first_seq = p->next_seq, .count = opt.batch};
				if (opt.events && b->first_seq + b->count > opt.events)
					b->count = (uint32_t)(opt.events - b->first_seq);
				p->next_seq += b->count;
				rc = send_batch(c, p, b);
				if (rc == TALLY_CLIENT_E_INFLIGHT)
					rc = 0;
			}
		}
		if (rc < 0) {
			drop(p, &c);
			continue;
		}
		struct tally_client_reply r;
		int wait_ms = tally_client_inflight(c) ? 100 : 5;
		rc = tally_client_recv(c, wait_ms, &r);
		if (rc == -ETIMEDOUT) {
			if (tally_client_inflight(c) && mono_ms() - last_reply > 20000) {
				fprintf(stderr, "producer %u: no reply for 20 s: reconnecting\n", p->id);
				drop(p, &c);
			}
			continue;
		}
		if (rc < 0 || on_reply(p, &r) < 0) {
			drop(p, &c);
			continue;
		}
		last_reply = mono_ms();
	}
	if (c)
		drop(p, &c);
	char end[128];
	int n = snprintf(end, sizeof end, "# end next_seq=%" PRIu64 " unacked=%u\n", p->next_seq,
			 p->nwin);
	if (ledger_write(p, end, (size_t)n) < 0)
		p->result = 1;
	if (p->nwin) {
		fprintf(stderr, "producer %u: %u batch(es) still unacknowledged at the deadline\n",
			p->id, p->nwin);
		p->result = 2;
	}
	return NULL;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: torture_producer --ledger DIR (--port-file F | --port N) [options]\n\n"
		"Sends deterministic events over several retrying connections and records every\n"
		"receipt durably in DIR/ledger-<tag>-p<id>.txt (see tests/torture/torture_lib.h).\n\n"
		"  --tag T              key prefix (default t)\n"
		"  --customer-prefix P  customer ids P_<id>_<n> (default cus)\n"
		"  --producers N        connections, one thread each (default 4, max %d)\n"
		"  --first-id N         first producer id (default 0)\n"
		"  --batch N            events per batch (default 64, max %d)\n"
		"  --window N           batches in flight per connection (default 4, max %d)\n"
		"  --events N           events per producer, then drain (default unlimited)\n"
		"  --rate N             events/s per producer (default unlimited)\n"
		"  --duration-s S       stop after S seconds, then drain\n"
		"  --stop-file F        stop when F exists, then drain\n"
		"  --drain-timeout-s S  give up draining after S s (exit 2; default 120)\n"
		"  --api-key K          (default torture-key-0123456789)\n"
		"  --base-us T          event time of seq 0 (default: now)\n"
		"  --quiet              do not log server errors\n"
		"Exit: 0 every batch acknowledged, 2 some left unacknowledged, 1 error.\n",
		PRODUCERS_MAX, BATCH_EVENTS_MAX, WINDOW_MAX);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
	    {"port-file", 1, 0, 'f'}, {"port", 1, 0, 'P'},      {"ledger", 1, 0, 'l'},
	    {"tag", 1, 0, 't'},       {"customer-prefix", 1, 0, 'c'}, {"producers", 1, 0, 'n'},
	    {"first-id", 1, 0, 'i'},  {"batch", 1, 0, 'b'},     {"window", 1, 0, 'w'},
	    {"events", 1, 0, 'e'},    {"rate", 1, 0, 'r'},      {"duration-s", 1, 0, 'd'},
	    {"stop-file", 1, 0, 's'}, {"drain-timeout-s", 1, 0, 'D'}, {"api-key", 1, 0, 'k'},
	    {"base-us", 1, 0, 'B'},   {"quiet", 0, 0, 'q'},     {"help", 0, 0, 'h'},
	    {0, 0, 0, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'f': opt.port_file = optarg; break;
		case 'P': opt.port = (uint16_t)atoi(optarg); break;
		case 'l': opt.ledger_dir = optarg; break;
		case 't': opt.tag = optarg; break;
		case 'c': opt.cprefix = optarg; break;
		case 'n': opt.producers = (unsigned)atoi(optarg); break;
		case 'i': opt.first_id = (unsigned)atoi(optarg); break;
		case 'b': opt.batch = (unsigned)atoi(optarg); break;
		case 'w': opt.window = (unsigned)atoi(optarg); break;
		case 'e': opt.events = strtoull(optarg, NULL, 10); break;
		case 'r': opt.rate = strtoull(optarg, NULL, 10); break;
		case 'd': opt.duration_s = atoi(optarg); break;
		case 's': opt.stop_file = optarg; break;
		case 'D': opt.drain_timeout_s = atoi(optarg); break;
		case 'k': opt.api_key = optarg; break;
		case 'B': opt.base_us = strtoll(optarg, NULL, 10); break;
		case 'q': opt.quiet = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (!opt.ledger_dir || (!opt.port_file && !opt.port) || opt.producers < 1 ||
	    opt.producers > PRODUCERS_MAX || opt.batch < 1 || opt.batch > BATCH_EVENTS_MAX ||
	    opt.window < 1 || opt.window > WINDOW_MAX || strlen(opt.tag) > TORTURE_TAG_BYTES_MAX ||
	    strlen(opt.cprefix) > 24) {
		usage(stderr);
		return 1;
	}
	if (!opt.base_us)
		opt.base_us = torture_now_us() - 1000000; /* seq is added: keep it in the past */
	mkdir(opt.ledger_dir, 0755);
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	static struct producer ps[PRODUCERS_MAX];
	for (unsigned i = 0; i < opt.producers; i++) {
		struct producer *p = &ps[i];
		p->id = opt.first_id + i;
		char path[TORTURE_PATH_BYTES_MAX];
		snprintf(path, sizeof path, "%s/ledger-%s-p%u.txt", opt.ledger_dir, opt.tag, p->id);
		p->ledger_fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
		if (p->ledger_fd < 0) {
			fprintf(stderr, "torture_producer: %s: %s (one ledger per run)\n", path,
				strerror(errno));
			return 1;
		}
		char hdr[256];
		int n = snprintf(hdr, sizeof hdr,
				 "# ledger v1 tag=%s producer=%u base_us=%" PRId64 " cprefix=%s\n",
				 opt.tag, p->id, opt.base_us, opt.cprefix);
		if (ledger_write(p, hdr, (size_t)n) < 0)
			return 1;
	}
	for (unsigned i = 0; i < opt.producers; i++)
		if (pthread_create(&ps[i].thread, NULL, producer_main, &ps[i]) != 0)
			return 1;
	int result = 0;
	struct producer tot = {0};
	for (unsigned i = 0; i < opt.producers; i++) {
		pthread_join(ps[i].thread, NULL);
		struct producer *p = &ps[i];
		tot.acked += p->acked, tot.accepted += p->accepted, tot.duplicate += p->duplicate;
		tot.conflict += p->conflict, tot.rejected += p->rejected;
		tot.batches_sent += p->batches_sent, tot.resends += p->resends;
		tot.reconnects += p->reconnects, tot.connect_failures += p->connect_failures;
		tot.server_errors += p->server_errors, tot.ledger_errors += p->ledger_errors;
		tot.next_seq += p->next_seq;
		if (p->result > result)
			result = p->result;
		close(p->ledger_fd);
	}
	printf("torture_producer tag=%s producers=%u sent=%" PRIu64 " acked=%" PRIu64
	       " accepted=%" PRIu64 " duplicate=%" PRIu64 " conflict=%" PRIu64 " rejected=%" PRIu64
	       " batches=%" PRIu64 " resent_batches=%" PRIu64 " connects=%" PRIu64
	       " connect_failures=%" PRIu64 " server_errors=%" PRIu64 " exit=%d\n",
	       opt.tag, opt.producers, tot.next_seq, tot.acked, tot.accepted, tot.duplicate,
	       tot.conflict, tot.rejected, tot.batches_sent, tot.resends, tot.reconnects,
	       tot.connect_failures, tot.server_errors, result);
	return result;
}
