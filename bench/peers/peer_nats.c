/*
 * bench/peers/peer_nats.c — peer-nats: tally-bench's events into a NATS JetStream stream with
 * file storage, deduplicated by the Nats-Msg-Id header (the idempotency key) within the
 * stream's duplicate window.
 *
 * Stream: TALLY, subject tally.events, file storage, one replica, Duplicates = 1 hour (covers
 * any run of this driver). Per batch: n asynchronous publishes (js_PublishAsync with
 * MsgId = key), then wait until the ack handler has seen all n acks. An ack with Duplicate set
 * means the server recognised the key; an error ack fails the run. What an ack means for
 * durability is the server's business: JetStream acknowledges once the message is written to
 * its file store (the OS page cache) and fsyncs on its sync interval (2 minutes by default),
 * which compare.sh measures rather than assumes. Stored count: the stream's message count.
 *
 * Threads: the ack handler runs on the library's thread; the counters it updates are guarded
 * by the connection's mutex, and the sending thread waits on the condition variable.
 *
 * --target: NATS URL (default nats://127.0.0.1:4222).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "peer_common.h"

#define NATS_STREAM        "TALLY"
#define NATS_SUBJECT       "tally.events"
#define NATS_DUP_WINDOW_NS (3600ll * 1000000000ll)
#define NATS_ACK_WAIT_MS   30000

struct nats_conn {
	natsConnection *nc;
	jsCtx *js;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint32_t acks;   /* acks (or errors) seen for the current batch */
	uint32_t added;  /* non-duplicate acks of the current batch */
	uint32_t errors; /* error acks of the current batch */
	char err[PEER_ERR_BYTES];
};

static void nats_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	struct nats_conn *c = closure;
	pthread_mutex_lock(&c->mu);
	if (pa) {
		if (!pa->Duplicate)
			c->added++;
	} else {
		c->errors++;
		if (pae && !c->err[0])
			snprintf(c->err, sizeof(c->err), "publish ack error %d: %s",
			         (int)pae->ErrCode,
			         pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
	}
	c->acks++;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	natsMsg_Destroy(msg);
}

static int nats_connect(const struct peer_opts *o, natsConnection **nc, char *err, size_t err_len)
{
	natsStatus s = natsConnection_ConnectTo(nc, o->target);
	if (s != NATS_OK) {
		snprintf(err, err_len, "connect %s: %s", o->target, natsStatus_GetText(s));
		return -1;
	}
	return 0;
}

static int nats_setup(const struct peer_opts *o, char *err, size_t err_len)
{
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	int rv = -1;
	if (nats_connect(o, &nc, err, err_len))
		return -1;
	natsStatus s = natsConnection_JetStream(&js, nc, NULL);
	if (s != NATS_OK) {
		snprintf(err, err_len, "JetStream context: %s", natsStatus_GetText(s));
		goto out_close;
	}
	jsStreamConfig cfg;
	jsStreamConfig_Init(&cfg);
	const char *subjects[] = {NATS_SUBJECT};
	cfg.Name = NATS_STREAM;
	cfg.Subjects = subjects;
	cfg.SubjectsLen = 1;
	cfg.Storage = js_FileStorage;
	cfg.Replicas = 1;
	cfg.Duplicates = NATS_DUP_WINDOW_NS;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	s = js_AddStream(&si, js, &cfg, NULL, &jerr);
	if (s != NATS_OK) {
		snprintf(err, err_len, "add stream: %s (JetStream error %d): %s",
		         natsStatus_GetText(s), (int)jerr, nats_GetLastError(NULL));
		goto out_js;
	}
	jsStreamInfo_Destroy(si);
	rv = 0;
out_js:
	jsCtx_Destroy(js);
out_close:
	natsConnection_Destroy(nc);
	return rv;
}

static void *nats_open(const struct peer_opts *o, uint32_t conn_id, char *err, size_t err_len)
{
	struct nats_conn *c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(err, err_len, "no memory");
		return NULL;
	}
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	if (nats_connect(o, &c->nc, err, err_len))
		goto out_free;
	jsOptions jo;
	jsOptions_Init(&jo);
	jo.PublishAsync.MaxPending = 2 * (int64_t)o->batch;
	jo.PublishAsync.AckHandler = nats_ack;
	jo.PublishAsync.AckHandlerClosure = c;
	natsStatus s = natsConnection_JetStream(&c->js, c->nc, &jo);
	if (s != NATS_OK) {
		snprintf(err, err_len, "JetStream context: %s", natsStatus_GetText(s));
		goto out_close;
	}
	return c;
out_close:
	natsConnection_Destroy(c->nc);
out_free:
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	free(c);
	return NULL;
}

static int nats_send(void *conn, const struct peer_ev *evs, uint32_t n, uint32_t *accepted_out,
                     char *err, size_t err_len)
{
	struct nats_conn *c = conn;
	pthread_mutex_lock(&c->mu);
	c->acks = c->added = c->errors = 0;
	pthread_mutex_unlock(&c->mu);
	for (uint32_t i = 0; i < n; i++) {
		jsPubOptions po;
		jsPubOptions_Init(&po);
		po.MsgId = evs[i].key;
		po.MaxWait = NATS_ACK_WAIT_MS;
		natsStatus s =
		    js_PublishAsync(c->js, NATS_SUBJECT, evs[i].body, (int)evs[i].body_len, &po);
		if (s != NATS_OK) {
			snprintf(err, err_len, "publish: %s", natsStatus_GetText(s));
			return -1;
		}
	}
	/* Every publish gets exactly one handler call: an ack, or an error (incl. timeout). */
	int rv = 0;
	pthread_mutex_lock(&c->mu);
	while (c->acks < n)
		pthread_cond_wait(&c->cv, &c->mu);
	if (c->errors) {
		snprintf(err, err_len, "%u error ack(s): %s", c->errors, c->err);
		rv = -1;
	} else {
		*accepted_out = c->added;
	}
	pthread_mutex_unlock(&c->mu);
	return rv;
}

static void nats_close(void *conn)
{
	struct nats_conn *c = conn;
	jsCtx_Destroy(c->js);
	natsConnection_Destroy(c->nc);
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	free(c);
}

static int nats_count(const struct peer_opts *o, uint64_t *count_out, char *err, size_t err_len)
{
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	int rv = -1;
	if (nats_connect(o, &nc, err, err_len))
		return -1;
	natsStatus s = natsConnection_JetStream(&js, nc, NULL);
	if (s == NATS_OK) {
		jsStreamInfo *si = NULL;
		jsErrCode jerr = 0;
		s = js_GetStreamInfo(&si, js, NATS_STREAM, NULL, &jerr);
		if (s == NATS_OK) {
			*count_out = si->State.Msgs;
			jsStreamInfo_Destroy(si);
			rv = 0;
		}
		jsCtx_Destroy(js);
	}
	if (rv)
		snprintf(err, err_len, "stream info: %s", natsStatus_GetText(s));
	natsConnection_Destroy(nc);
	return rv;
}

static const struct peer_ops nats_ops = {
    .name = "nats",
    .target_help = "NATS URL (default nats://127.0.0.1:4222)",
    .target_def = "nats://127.0.0.1:4222",
    .setup = nats_setup,
    .conn_open = nats_open,
    .send_batch = nats_send,
    .conn_close = nats_close,
    .stored_count = nats_count,
};

int main(int argc, char **argv)
{
	return peer_main(&nats_ops, argc, argv);
}
