/*
 * shard.c — a broker shard: dedup + WAL append on the owner thread, fdatasync on a syncer
 * thread, and the FIFO that turns "durable up to offset N" into receipts.
 *
 * Invariants:
 *  - Every event appended to the WAL (verdict NEW) has a FIFO entry {target = offset + 1} until
 *    the acknowledgement watermark reaches it. A duplicate of a still-pending key gets an entry
 *    {target = everything appended so far}, so it is answered only once its original is durable.
 *    Targets are non-decreasing along the FIFO, so resolving is popping the head.
 *  - The acknowledgement watermark is the WAL's durable watermark (--fsync always) or its
 *    written watermark (--fsync interval, the documented weaker policy).
 *  - When a block write fails (ENOSPC, EIO), the WAL discards offsets [first, ...). Exactly the
 *    FIFO entries with target > first depended on them: they form the FIFO's tail, their
 *    batches fail with a retryable error, and the NEW keys among them are aborted in dedup so a
 *    retry is ACCEPTED. Nothing is ever answered DUPLICATE for an event not in the WAL.
 *  - A failed fdatasync is fatal: shard_poll() returns it and nothing more is acknowledged.
 *  - Group commit: the shards of one owner form a sync group with ONE syncer thread, which
 *    makes all of them durable with one wal_sync_group() call: their blocks are written back
 *    and the device cache is flushed once for all of them (wal.h says when a shard needs its
 *    own fdatasync instead). The owner flushes the open blocks only while the group's syncer
 *    is idle, all in one shard_group_poll(), then kicks it once; while a sync runs, records
 *    accumulate into the next blocks, which the next sync covers. With a commit window W
 *    (cfg->commit_window_us) a group also starts at most one sync per window
 *    [k*W, (k+1)*W) of the wall clock: under load every group syncs at the start of the
 *    same windows (a batch spread over all shards waits for one window, not for several
 *    unaligned ones), and a lone event after a quiet spell is synced at once. Only while the
 *    last sync took less than W/2: slower syncs space themselves out.
 *
 * Threads: everything but syncer_main() and sealer_main() runs on the owner thread. The syncer
 * only calls wal_sync_group() and the wake callback; the group's `busy` (atomic) says whether
 * a sync is running or asked for. The group's member list changes only in shard_open and
 * shard_close (before the owner's loop starts, after it ended), under the group's mutex, which
 * the syncer holds while it reads the list.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lathist.h"
#include "shard.h"
#include "tally/dedup.h"

#define SHARD_QCAP_INIT 4096
#define SHARD_SEAL_QUEUE 16

enum { SEAL_IDLE = 0, SEAL_RUNNING, SEAL_DONE };

struct shard_group {
	const struct broker_config *cfg;
	unsigned id;
	void (*wake)(void *ctx);
	void *wake_ctx;

	pthread_t th;
	pthread_mutex_t mu;            /* members, kick, stop */
	pthread_cond_t cv;             /* the syncer waits on it */
	struct shard *members[BROKER_SHARDS_MAX]; /* increasing shard id */
	size_t n;
	bool kick, stop;
	struct wal_shard *join_ws; /* the shard syncer_kick joined the shared flush with */

	/* Owner thread only. */
	bool want;           /* a shard flushed in this poll: kick the syncer at its end */
	bool kicked;         /* a sync was asked for and its end not yet seen */
	int64_t sync_window; /* index of the commit window the last sync started in */
	int64_t dirty_since_us;      /* first record appended since the last kick, 0 if none */
	struct lathist wait_hist;    /* first record appended -> its sync asked for */
	struct lathist wake_hist;    /* sync done -> the owner saw it */

	_Atomic bool busy;
	_Atomic int sync_error;
	_Atomic uint32_t last_sync_us; /* duration of the last sync (syncer writes, owner reads) */
	int64_t sync_end_us;           /* syncer writes before releasing busy; owner reads after */
	/* Syncer only; read at close (after join). */
	struct lathist sync_hist;
	int64_t slow_logged_us;   /* when the last slow-sync warning was logged, 0 = never */
	uint64_t slow_unlogged;   /* slow syncs since then that were not logged */
	uint64_t slow_total, slow_lines; /* slow syncs in all; of them, logged with a line each */
	struct wal_shard *ws[BROKER_SHARDS_MAX];
};
enum { JOB_SEAL = 1, JOB_COMPACT = 2 };

struct wait_ent {
	uint64_t target;
	struct broker_slot *slot;
	uint32_t idx;
	uint8_t status;
	uint64_t offset;
	struct tally_fp fp;
};

struct shard {
	uint16_t id;
	const struct broker_config *cfg;
	struct shard_group *g;
	struct wal_shard *ws;
	struct dedup_shard *dd;

	struct wait_ent *q; /* ring buffer, power-of-two capacity */
	size_t qcap, qhead, qlen;

	uint64_t acked_next;
	int64_t last_append_us;
	int64_t seg_max_event_time_us;
	bool dirty;
	int fatal;

	struct dedup_query *qry;
	struct dedup_answer *ans;
	uint64_t *app_off; /* per item of the current chunk: offset appended, or NONE */
	size_t scratch_cap;

	shard_resolve_fn resolve;
	void *resolve_ctx;
	void (*wake)(void *ctx);
	void *wake_ctx;

	pthread_mutex_t mu;
	pthread_cond_t sealer_cv; /* the sealer waits on it (job, sealer_stop) */

	/* Sealing sealed segments' keys into cold runs, off the event loop (see seal_pump). */
	pthread_t sealer;
	bool sealer_started, sealer_stop;
	int job_kind;                  /* JOB_SEAL or JOB_COMPACT, while a job is out */
	struct dedup_sealing *job;     /* handed to the sealer thread */
	struct dedup_compaction *cjob;
	_Atomic int job_state;         /* SEAL_IDLE, SEAL_RUNNING, SEAL_DONE */
	int job_rc;
	int64_t job_wall_us, job_cpu_us; /* the last job's run: wall clock, sealer thread CPU */
	bool compact_due;              /* a seal or merge finished: look for generations to merge */
	struct seal_req { uint64_t base, next; int64_t max_time; } seal_q[SHARD_SEAL_QUEUE];
	unsigned seal_n;
};



static int q_push(struct shard *s, const struct wait_ent *e)
{
	if (s->qlen == s->qcap) {
		/* Grows by doubling: bounded by the events in flight, which the broker caps. */
		size_t ncap = s->qcap * 2;
		struct wait_ent *nq = malloc(ncap * sizeof *nq);
		if (!nq)
			return -ENOMEM;
		for (size_t i = 0; i < s->qlen; i++)
			nq[i] = s->q[(s->qhead + i) & (s->qcap - 1)];
		free(s->q);
		s->q = nq;
		s->qcap = ncap;
		s->qhead = 0;
	}
	s->q[(s->qhead + s->qlen) & (s->qcap - 1)] = *e;
	s->qlen++;
	return 0;
}

static void fail_slot(struct shard *s, struct broker_slot *slot, uint16_t code)
{
	uint16_t zero = 0;
	atomic_compare_exchange_strong(&slot->error, &zero, code);
	s->resolve(s->resolve_ctx, slot, 1);
}

static uint16_t write_error_code(int rc)
{
	return rc == -ENOSPC || rc == -EDQUOT ? PROTO_E_DISK_FULL : PROTO_E_UNAVAILABLE;
}

/* A block write failed and the WAL discarded offsets from `first` on: fail what needed them. */
static void on_write_error(struct shard *s, int rc)
{
	uint64_t first = 0, count = 0;
	int failed = wal_shard_failed(s->ws);
	if (failed) {
		s->fatal = failed;
		broker_log(LOG_ERROR, "shard %u: storage failed: %s; no further acknowledgements",
			   s->id, strerror(-failed));
	} else {
		broker_log(LOG_WARN, "shard %u: WAL write failed: %s (retryable; batches fail)",
			   s->id, strerror(-rc));
	}
	wal_shard_last_discard(s->ws, &first, &count);
	if (count == 0 && !failed)
		return;
	uint16_t code = write_error_code(rc);
	while (s->qlen > 0) {
		struct wait_ent *e = &s->q[(s->qhead + s->qlen - 1) & (s->qcap - 1)];
		if (!failed && e->target <= first)
			break;
		if (e->status == PROTO_ACCEPTED && e->offset >= first)
			dedup_abort(s->dd, e->fp);
		s->qlen--;
		fail_slot(s, e->slot, code);
	}
}

/* The sealer thread: runs one dedup job at a time — sealing a segment's keys (sort, write the
   run, build the bloom) or merging generations (compaction) — then wakes the owner, which
   installs the result. Shares only the job with the owner. */
static void thread_name(const char *what, unsigned id)
{
	char name[16];
	snprintf(name, sizeof name, "tally-%s%u", what, id);
	(void)pthread_setname_np(pthread_self(), name); /* for top -H, perf, gdb */
}

static void *sealer_main(void *arg)
{
	struct shard *s = arg;
	thread_name("seal", s->id);
	dedup_set_thread_write_rate(s->cfg->dedup_write_rate);
	for (;;) {
		pthread_mutex_lock(&s->mu);
		while (atomic_load(&s->job_state) != SEAL_RUNNING && !s->sealer_stop)
			pthread_cond_wait(&s->sealer_cv, &s->mu);
		bool stop = s->sealer_stop && atomic_load(&s->job_state) != SEAL_RUNNING;
		pthread_mutex_unlock(&s->mu);
		if (stop)
			return NULL;
		struct timespec c0, c1;
		int64_t t0 = broker_now_us();
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
		s->job_rc = s->job_kind == JOB_SEAL ? dedup_seal_run(s->job)
						    : dedup_compact_run(s->cjob);
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
		s->job_wall_us = broker_now_us() - t0;
		s->job_cpu_us = (int64_t)(c1.tv_sec - c0.tv_sec) * 1000000 +
				(c1.tv_nsec - c0.tv_nsec) / 1000;
		/* Release: the owner that sees SEAL_DONE sees the finished job and job_rc. */
		atomic_store_explicit(&s->job_state, SEAL_DONE, memory_order_release);
		s->wake(s->wake_ctx);
	}
}

static void job_start(struct shard *s, int kind)
{
	pthread_mutex_lock(&s->mu);
	s->job_kind = kind;
	atomic_store(&s->job_state, SEAL_RUNNING);
	pthread_cond_signal(&s->sealer_cv);
	pthread_mutex_unlock(&s->mu);
}

/*
 * Owner thread: installs a finished job, then starts the next one: queued seals first, then
 * merges of cold generations (every lookup that misses the hot table probes one bloom per
 * generation, so they must stay few). Merges are looked for only after a seal or a merge.
 */
static void seal_pump(struct shard *s)
{
	if (atomic_load_explicit(&s->job_state, memory_order_acquire) == SEAL_DONE) {
		int rc = s->job_kind == JOB_SEAL ? dedup_seal_finish(s->dd, s->job)
						 : dedup_compact_finish(s->dd, s->cjob);
		if (rc == 0)
			rc = s->job_rc;
		if (rc < 0)
			broker_log(LOG_WARN, "shard %u: %s failed: %s (keys stay where they were)",
				   s->id, s->job_kind == JOB_SEAL ? "sealing a dedup generation"
								  : "merging dedup generations",
				   strerror(-rc));
		else
			broker_log(LOG_INFO, "shard %u: %s in %lld ms (%lld ms of CPU)", s->id,
				   s->job_kind == JOB_SEAL ? "sealed a dedup generation"
							   : "merged dedup generations",
				   (long long)(s->job_wall_us / 1000), (long long)(s->job_cpu_us / 1000));
		s->job = NULL;
		s->cjob = NULL;
		s->compact_due = true;
		atomic_store(&s->job_state, SEAL_IDLE);
		rc = dedup_expire(s->dd, broker_now_us());
		if (rc > 0)
			broker_log(LOG_INFO, "shard %u: expired %d dedup generation(s)", s->id, rc);
	}
	/* Closing: nothing new starts; queued segments are rebuilt from the WAL at next start. */
	if (atomic_load(&s->job_state) != SEAL_IDLE || s->sealer_stop)
		return;
	if (s->seal_n > 0) {
		struct seal_req r = s->seal_q[0];
		memmove(s->seal_q, s->seal_q + 1, --s->seal_n * sizeof r);
		dedup_set_durable(s->dd, wal_durable_next(s->ws));
		int rc = dedup_seal_begin(s->dd, r.base, r.next, r.max_time, &s->job);
		if (rc < 0) {
			broker_log(LOG_WARN, "shard %u: cannot seal dedup generation %llu..%llu: %s "
					     "(keys stay hot)", s->id, (unsigned long long)r.base,
				   (unsigned long long)r.next, strerror(-rc));
			return;
		}
		job_start(s, JOB_SEAL);
		return;
	}
	if (s->compact_due) {
		int rc = dedup_compact_begin(s->dd, &s->cjob);
		if (rc == 1) {
			job_start(s, JOB_COMPACT);
			return;
		}
		if (rc < 0)
			broker_log(LOG_WARN, "shard %u: cannot merge dedup generations: %s", s->id,
				   strerror(-rc));
		s->compact_due = false;
	}
}

static void syncer_kick(struct shard_group *g)
{
	/* Join the shared flush now (the syncer consumes it): a group commit of another thread
	   that reaches its flush first waits for this one's write-backs and flushes once for
	   both. Every batch spread over both threads' shards waits for both commits anyway. */
	struct wal_shard *any = g->members[0]->ws;
	wal_shared_flush_join(any);
	atomic_store_explicit(&g->busy, true, memory_order_relaxed);
	pthread_mutex_lock(&g->mu);
	g->kick = true;
	g->join_ws = any;
	pthread_mutex_unlock(&g->mu);
	/* After the unlock: a syncer woken while the mutex is still held would only block
	   on it again (one more futex wait and context switch per group commit). */
	pthread_cond_signal(&g->cv);
}

/*
 * Syncer: a group commit whose sync took at least --slow-sync-ms. Every acknowledgement of the
 * group's shards waited for it, so the operator hears of it: the first one at once, then at
 * most one line per SLOW_SYNC_LOG_US with the number left unlogged meanwhile (a disk that
 * stays slow must not flood the log), and the total at close.
 */
#define SLOW_SYNC_LOG_US 10000000
static void slow_sync(struct shard_group *g, uint64_t us, size_t n)
{
	g->slow_total++;
	if (g->slow_logged_us && g->sync_end_us - g->slow_logged_us < SLOW_SYNC_LOG_US) {
		g->slow_unlogged++;
		return;
	}
	char more[96] = "";
	if (g->slow_unlogged)
		snprintf(more, sizeof more, "; %llu more over %u ms since the last such line",
			 (unsigned long long)g->slow_unlogged, g->cfg->slow_sync_ms);
	broker_log(LOG_WARN, "sync group %u: a group commit of %zu shard(s) took %llu ms to "
			     "sync (--slow-sync-ms %u)%s: acknowledgements wait for the disk",
		   g->id, n, (unsigned long long)(us / 1000), g->cfg->slow_sync_ms, more);
	g->slow_logged_us = g->sync_end_us;
	g->slow_unlogged = 0;
	g->slow_lines++;
}

static void *syncer_main(void *arg)
{
	struct shard_group *g = arg;
	thread_name("sync", g->id);
	for (;;) {
		pthread_mutex_lock(&g->mu);
		while (!g->kick && !g->stop) {
			if (g->cfg->fsync_mode == WAL_FSYNC_INTERVAL) {
				struct timespec ts;
				clock_gettime(CLOCK_REALTIME, &ts);
				uint64_t ns = (uint64_t)ts.tv_nsec +
					      (uint64_t)g->cfg->fsync_interval_ms * 1000000u;
				ts.tv_sec += (time_t)(ns / 1000000000u);
				ts.tv_nsec = (long)(ns % 1000000000u);
				if (pthread_cond_timedwait(&g->cv, &g->mu, &ts) == ETIMEDOUT)
					break;
			} else {
				pthread_cond_wait(&g->cv, &g->mu);
			}
		}
		bool stop = g->stop;
		/* syncer_kick joined the shared flush for this sync, through join_ws (which lives
		   until wal_close, whatever shards leave the group meanwhile). */
		struct wal_shard *joined = g->kick ? g->join_ws : NULL;
		g->kick = false;
		size_t n = 0;
		for (size_t i = 0; i < g->n; i++) {
			struct wal_shard *ws = g->members[i]->ws;
			if (wal_written_next(ws) > wal_durable_next(ws))
				g->ws[n++] = ws;
		}
		pthread_mutex_unlock(&g->mu);

		int64_t t0 = broker_now_us();
		if (n > 0) {
			int rc = joined ? wal_sync_group_joined(g->ws, n) : wal_sync_group(g->ws, n);
			if (rc < 0)
				atomic_store(&g->sync_error, rc);
		} else if (joined) {
			wal_shared_flush_leave(joined);
		}
		g->sync_end_us = broker_now_us();
		if (n > 0) {
			uint64_t us = (uint64_t)(g->sync_end_us - t0);
			atomic_store_explicit(&g->last_sync_us, us > UINT32_MAX ? UINT32_MAX : (uint32_t)us,
					      memory_order_relaxed);
			lathist_add(&g->sync_hist, (int64_t)us);
			if (g->cfg->slow_sync_ms && us >= (uint64_t)g->cfg->slow_sync_ms * 1000)
				slow_sync(g, us, n);
		}
		/* Release: the owner that sees busy == false also sees the new watermarks. */
		atomic_store_explicit(&g->busy, false, memory_order_release);
		g->wake(g->wake_ctx);
		if (stop)
			return NULL;
	}
}

int shard_group_open(const struct broker_config *cfg, unsigned id, void (*wake)(void *ctx),
		     void *wake_ctx, struct shard_group **out)
{
	struct shard_group *g = calloc(1, sizeof *g);
	if (!g)
		return -ENOMEM;
	g->cfg = cfg;
	g->id = id;
	g->wake = wake;
	g->wake_ctx = wake_ctx;
	g->sync_window = INT64_MIN;
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
	int rc = -pthread_create(&g->th, NULL, syncer_main, g);
	if (rc < 0) {
		pthread_mutex_destroy(&g->mu);
		pthread_cond_destroy(&g->cv);
		free(g);
		return rc;
	}
	*out = g;
	return 0;
}

int shard_group_close(struct shard_group *g)
{
	if (!g)
		return 0;
	pthread_mutex_lock(&g->mu);
	g->stop = true;
	pthread_cond_signal(&g->cv);
	pthread_mutex_unlock(&g->mu);
	pthread_join(g->th, NULL);
	int rc = atomic_load(&g->sync_error);
	if (g->slow_total)
		broker_log(LOG_WARN, "sync group %u: %llu group commit(s) took %u ms or more to sync "
				     "(%llu logged one by one)", g->id,
			   (unsigned long long)g->slow_total, g->cfg->slow_sync_ms,
			   (unsigned long long)g->slow_lines);
	if (g->sync_hist.count) {
		/* The syncer has been joined: its counters are stable. */
		const struct lathist *h[3] = {&g->wait_hist, &g->sync_hist, &g->wake_hist};
		unsigned long long v[3][3];
		for (int k = 0; k < 3; k++) {
			v[k][0] = lathist_permille(h[k], 500);
			v[k][1] = lathist_permille(h[k], 990);
			v[k][2] = h[k]->max;
		}
		broker_log(LOG_INFO, "sync group %u: %llu group commits, us p50/p99/max: wait for "
				     "the window %llu/%llu/%llu, sync %llu/%llu/%llu, owner wake-up "
				     "%llu/%llu/%llu", g->id, (unsigned long long)g->sync_hist.count,
			   v[0][0], v[0][1], v[0][2], v[1][0], v[1][1], v[1][2], v[2][0], v[2][1],
			   v[2][2]);
	}
	pthread_mutex_destroy(&g->mu);
	pthread_cond_destroy(&g->cv);
	free(g);
	return rc;
}

/* Reads every record of one segment, feeding keys to fn. Returns 0 or -errno. */
static int scan_segment(const struct wal_segment_info *seg, uint64_t limit,
			int (*fn)(void *ctx, const struct wal_record *rec), void *ctx)
{
	struct wal_segment_iter *it;
	int rc = wal_segment_iter_open(seg->path, seg->base_offset, limit, true, &it);
	if (rc < 0)
		return rc;
	struct wal_record rec;
	while ((rc = wal_segment_iter_next(it, &rec)) > 0) {
		if (rec.kind != WAL_RECORD_EVENT)
			continue;
		rc = fn(ctx, &rec);
		if (rc < 0)
			break;
	}
	wal_segment_iter_close(it);
	return rc < 0 ? rc : 0;
}

struct rebuild_ctx {
	struct dedup_key *keys;
	size_t n, cap;
	int64_t max_time;
};

static int collect_key(void *arg, const struct wal_record *rec)
{
	struct rebuild_ctx *c = arg;
	if (c->n == c->cap) {
		size_t ncap = c->cap ? c->cap * 2 : 65536;
		struct dedup_key *nk = realloc(c->keys, ncap * sizeof *nk);
		if (!nk)
			return -ENOMEM;
		c->keys = nk;
		c->cap = ncap;
	}
	c->keys[c->n].fp = event_fingerprint(rec->tenant, rec->ev.key);
	c->keys[c->n].digest = event_content_digest(&rec->ev);
	c->keys[c->n].offset = rec->offset;
	c->n++;
	if (rec->ev.event_time_us > c->max_time)
		c->max_time = rec->ev.event_time_us;
	return 0;
}

static int restore_key(void *arg, const struct wal_record *rec)
{
	struct shard *s = arg;
	if (rec->ev.event_time_us > s->seg_max_event_time_us)
		s->seg_max_event_time_us = rec->ev.event_time_us;
	return dedup_restore_key(s->dd, event_fingerprint(rec->tenant, rec->ev.key),
				 event_content_digest(&rec->ev), rec->offset);
}

/* Rebuilds dedup state from the WAL: missing or bad runs of sealed segments, then the tail. */
static int restore(struct shard *s)
{
	size_t count = 0;
	int rc = wal_segments_list(s->cfg->data_dir, s->id, NULL, 0, &count);
	if (rc < 0)
		return rc;
	if (count == 0)
		return 0;
	struct wal_segment_info *segs = calloc(count, sizeof *segs);
	if (!segs)
		return -ENOMEM;
	rc = wal_segments_list(s->cfg->data_dir, s->id, segs, count, &count);
	if (rc < 0)
		goto out;
	uint64_t durable = wal_durable_next(s->ws);
	dedup_set_durable(s->dd, durable);
	for (size_t i = 0; i < count; i++) {
		if (!segs[i].sealed) {
			rc = scan_segment(&segs[i], UINT64_MAX, restore_key, s);
			if (rc < 0)
				goto out;
			continue;
		}
		if (dedup_has_generation(s->dd, segs[i].base_offset))
			continue;
		uint64_t next = i + 1 < count ? segs[i + 1].base_offset : durable;
		struct rebuild_ctx c = {.max_time = 0};
		rc = scan_segment(&segs[i], next, collect_key, &c);
		if (rc == 0)
			rc = dedup_rebuild_generation(s->dd, segs[i].base_offset, next, c.max_time,
						      c.keys, c.n);
		free(c.keys);
		if (rc < 0)
			goto out;
		broker_log(LOG_INFO, "shard %u: rebuilt dedup run of segment %020llu (%zu keys)",
			   s->id, (unsigned long long)segs[i].base_offset, c.n);
	}
out:
	free(segs);
	return rc;
}

int shard_open(const struct broker_config *cfg, struct wal *wal, uint16_t id,
	       struct shard_group *g, shard_resolve_fn resolve, void *resolve_ctx,
	       struct shard **out)
{
	struct shard *s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	s->id = id;
	s->cfg = cfg;
	s->ws = wal_shard(wal, id);
	s->g = g;
	s->wake = g->wake;
	s->wake_ctx = g->wake_ctx;
	s->resolve = resolve;
	s->resolve_ctx = resolve_ctx;
	s->qcap = SHARD_QCAP_INIT;
	s->q = malloc(s->qcap * sizeof *s->q);
	s->scratch_cap = cfg->batch_events_max;
	s->qry = malloc(s->scratch_cap * sizeof *s->qry);
	s->ans = malloc(s->scratch_cap * sizeof *s->ans);
	s->app_off = malloc(s->scratch_cap * sizeof *s->app_off);
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->sealer_cv, NULL);
	int rc = -ENOMEM;
	if (!s->q || !s->qry || !s->ans || !s->app_off)
		goto out_free;

	char dir[WAL_PATH_BYTES_MAX];
	snprintf(dir, sizeof dir, "%s/dedup", cfg->data_dir);
	struct dedup_options dopt = {
		.expected_keys = cfg->expected_keys,
		.window_us = cfg->dedup_window_us,
		.dir = dir,
		.seal_journal = true, /* a seal takes its keys without scanning the hot table */
	};
	rc = dedup_shard_open(&dopt, id, &s->dd);
	if (rc < 0) {
		broker_log(LOG_ERROR, "shard %u: dedup open failed: %s", id, strerror(-rc));
		goto out_free;
	}
	rc = restore(s);
	if (rc < 0) {
		broker_log(LOG_ERROR, "shard %u: rebuilding dedup state from the WAL failed: %s",
			   id, strerror(-rc));
		goto out_free;
	}
	s->acked_next = wal_durable_next(s->ws);
	s->last_append_us = broker_now_us();
	rc = -pthread_create(&s->sealer, NULL, sealer_main, s);
	if (rc < 0) {
		(void)shard_close(s);
		return rc;
	}
	s->sealer_started = true;
	/* Join the group, keeping it in shard id order (wal_sync_group's lock order). */
	pthread_mutex_lock(&g->mu);
	size_t at = g->n;
	while (at > 0 && g->members[at - 1]->id > id) {
		g->members[at] = g->members[at - 1];
		at--;
	}
	g->members[at] = s;
	g->n++;
	pthread_mutex_unlock(&g->mu);
	*out = s;
	return 0;
out_free:
	if (s->dd)
		dedup_shard_close(s->dd);
	free(s->q);
	free(s->qry);
	free(s->ans);
	free(s->app_off);
	free(s);
	return rc;
}

/* The offset of the original of item i, claimed earlier in the same chunk (verdict NEW). */
static uint64_t chunk_original(struct shard *s, const struct shard_item *items, size_t i)
{
	for (size_t j = i; j-- > 0;)
		if (items[j].fp.lo == items[i].fp.lo && items[j].fp.hi == items[i].fp.hi &&
		    s->ans[j].verdict == DEDUP_NEW)
			return s->app_off[j];
	return DEDUP_OFFSET_NONE;
}

static void submit_one(struct shard *s, const struct shard_item *it, size_t i, int64_t now_us,
		       struct shard_item *items)
{
	struct dedup_answer *a = &s->ans[i];
	struct wait_ent e = {.slot = it->slot, .idx = it->idx, .fp = it->fp};
	uint64_t off;
	int rc;

	s->app_off[i] = DEDUP_OFFSET_NONE;
	switch (a->verdict) {
	case DEDUP_NEW: {
		struct tally_view tenant = {(const uint8_t *)it->tenant->name, it->tenant->len};
		struct tally_view body = {it->body, it->body_len};
		rc = wal_append(s->ws, tenant, &body, now_us, &off);
		if (rc < 0) {
			dedup_abort(s->dd, it->fp);
			on_write_error(s, rc);
			fail_slot(s, it->slot, write_error_code(rc));
			return;
		}
		dedup_set_offset_hint(s->dd, it->fp, a->slot, off);
		s->app_off[i] = off;
		s->dirty = true;
		s->last_append_us = now_us;
		if (!s->g->dirty_since_us)
			s->g->dirty_since_us = now_us;
		if (it->event_time_us > s->seg_max_event_time_us)
			s->seg_max_event_time_us = it->event_time_us;
		e.target = off + 1;
		e.status = PROTO_ACCEPTED;
		e.offset = off;
		break;
	}
	case DEDUP_DUPLICATE:
	case DEDUP_CONFLICT:
		broker_slot_receipt(it->slot, it->idx,
				    a->verdict == DEDUP_DUPLICATE ? PROTO_DUPLICATE : PROTO_CONFLICT,
				    0, s->id, a->offset);
		s->resolve(s->resolve_ctx, it->slot, 1);
		return;
	case DEDUP_PENDING_DUPLICATE:
	case DEDUP_PENDING_CONFLICT:
		off = a->offset;
		if (off == DEDUP_OFFSET_NONE) {
			off = chunk_original(s, items, i);
			if (off == DEDUP_OFFSET_NONE) {
				/* Its original in this chunk failed to append and was aborted:
				   this event is now the first of its key. Check it again. */
				dedup_check_claim(s->dd, &s->qry[i], 1, a);
				submit_one(s, it, i, now_us, items);
				return;
			}
		}
		e.target = wal_next_offset(s->ws);
		e.status = a->verdict == DEDUP_PENDING_DUPLICATE ? PROTO_DUPLICATE : PROTO_CONFLICT;
		e.offset = off;
		break;
	case DEDUP_TOO_OLD:
		broker_slot_receipt(it->slot, it->idx, PROTO_REJECTED, TALLY_REJECT_TIME_TOO_OLD,
				    0, PROTO_OFFSET_UNKNOWN);
		s->resolve(s->resolve_ctx, it->slot, 1);
		return;
	default: /* DEDUP_FULL */
		fail_slot(s, it->slot, PROTO_E_UNAVAILABLE);
		return;
	}
	if (q_push(s, &e) < 0) {
		/* Out of memory for the wait queue: the event is in the WAL but cannot be
		   tracked; fail the batch (a retry is answered DUPLICATE once durable). */
		fail_slot(s, it->slot, PROTO_E_UNAVAILABLE);
	}
}

void shard_submit(struct shard *s, struct shard_item *items, size_t n, int64_t now_us)
{
	while (n > 0) {
		size_t k = n < s->scratch_cap ? n : s->scratch_cap;
		for (size_t i = 0; i < k; i++) {
			s->qry[i].fp = items[i].fp;
			s->qry[i].digest = items[i].digest;
			s->qry[i].event_time_us = items[i].event_time_us;
		}
		dedup_check_claim(s->dd, s->qry, k, s->ans);
		for (size_t i = 0; i < k; i++)
			submit_one(s, &items[i], i, now_us, items);
		items += k;
		n -= k;
	}
}

static int shard_poll(struct shard *s, int64_t now_us, int64_t *sync_at_us)
{
	struct shard_group *g = s->g;
	int err = atomic_load(&g->sync_error);
	if (err && !s->fatal) {
		s->fatal = err;
		broker_log(LOG_ERROR, "shard %u: fdatasync failed: %s; no further acknowledgements",
			   s->id, strerror(-err));
	}
	if (s->fatal)
		return s->fatal;

	seal_pump(s);
	bool busy = atomic_load_explicit(&g->busy, memory_order_acquire);
	uint64_t ack = s->cfg->fsync_mode == WAL_FSYNC_ALWAYS ? wal_durable_next(s->ws)
							      : wal_written_next(s->ws);
	if (ack > s->acked_next) {
		s->acked_next = ack;
		dedup_set_durable(s->dd, ack);
	}
	while (s->qlen > 0) {
		struct wait_ent *e = &s->q[s->qhead];
		if (e->target > s->acked_next)
			break;
		broker_slot_receipt(e->slot, e->idx, e->status, 0, s->id, e->offset);
		s->resolve(s->resolve_ctx, e->slot, 1);
		s->qhead = (s->qhead + 1) & (s->qcap - 1);
		s->qlen--;
	}

	if (s->cfg->tick_idle_ms && now_us - s->last_append_us >= (int64_t)s->cfg->tick_idle_ms * 1000) {
		int rc = wal_append_tick(s->ws, now_us, NULL);
		if (rc < 0)
			on_write_error(s, rc);
		else
			s->dirty = true;
		s->last_append_us = now_us;
	}

	bool interval = s->cfg->fsync_mode == WAL_FSYNC_INTERVAL;
	/* The window only amortises syncs that are short next to it: a sync that took half a
	   window or more already spaces the next one out, and holding it would add latency for
	   no saving (a disk whose fdatasync takes 2 ms, against the default 2.5 ms window). */
	if (s->dirty && !interval && !busy && s->cfg->commit_window_us &&
	    2 * (uint64_t)atomic_load_explicit(&g->last_sync_us, memory_order_relaxed) <
		s->cfg->commit_window_us) {
		int64_t win = now_us / s->cfg->commit_window_us;
		if (win == g->sync_window) {
			/* Synced in this window already: hold the records for the next one. */
			int64_t at = (win + 1) * (int64_t)s->cfg->commit_window_us;
			if (at < *sync_at_us)
				*sync_at_us = at;
			return s->fatal;
		}
	}
	if (s->dirty && (interval || !busy)) {
		int rc = wal_flush(s->ws);
		s->dirty = false;
		if (rc < 0)
			on_write_error(s, rc);
		if (!interval && wal_written_next(s->ws) > wal_durable_next(s->ws))
			g->want = true;
	}
	return s->fatal;
}

int shard_group_poll(struct shard_group *g, int64_t now_us, int64_t *sync_at_us)
{
	int first = 0;
	if (g->kicked && !atomic_load_explicit(&g->busy, memory_order_acquire)) {
		g->kicked = false;
		lathist_add(&g->wake_hist, now_us - g->sync_end_us);
	}
	for (size_t i = 0; i < g->n; i++) {
		int rc = shard_poll(g->members[i], now_us, sync_at_us);
		if (rc < 0 && first == 0)
			first = rc;
	}
	if (g->want) {
		g->want = false;
		if (g->cfg->commit_window_us)
			g->sync_window = now_us / g->cfg->commit_window_us;
		if (g->dirty_since_us) {
			lathist_add(&g->wait_hist, now_us - g->dirty_since_us);
			g->dirty_since_us = 0;
		}
		g->kicked = true;
		syncer_kick(g);
	}
	return first;
}

bool shard_busy(const struct shard *s)
{
	return s->qlen > 0 || s->dirty;
}

uint16_t shard_id(const struct shard *s)
{
	return s->id;
}

int shard_close(struct shard *s)
{
	int rc = 0;
	if (!s)
		return 0;
	if (!s->fatal && s->dirty) {
		rc = wal_flush(s->ws);
		s->dirty = false;
	}
	if (s->sealer_started) {
		pthread_mutex_lock(&s->mu);
		s->sealer_stop = true;
		pthread_cond_signal(&s->sealer_cv);
		pthread_mutex_unlock(&s->mu);
		pthread_join(s->sealer, NULL); /* a running job completes first */
		if (atomic_load(&s->job_state) == SEAL_DONE)
			seal_pump(s); /* installs it; sealer_stop keeps it from starting another */
	}
	/* Leave the group, then make the last blocks durable here (the group's syncer may
	   still be syncing this shard too: wal_sync and wal_sync_group share its sync_lock). */
	struct shard_group *g = s->g;
	pthread_mutex_lock(&g->mu);
	for (size_t i = 0; i < g->n; i++)
		if (g->members[i] == s) {
			memmove(g->members + i, g->members + i + 1,
				(g->n - i - 1) * sizeof *g->members);
			g->n--;
			break;
		}
	pthread_mutex_unlock(&g->mu);
	if (rc == 0 && !s->fatal)
		rc = wal_sync(s->ws, NULL);
	if (rc == 0)
		rc = atomic_load(&g->sync_error);
	dedup_shard_close(s->dd);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->sealer_cv);
	free(s->q);
	free(s->qry);
	free(s->ans);
	free(s->app_off);
	free(s);
	return rc;
}

void shard_segment_sealed(struct shard *s, uint64_t base, uint64_t next)
{
	struct seal_req r = {base, next, s->seg_max_event_time_us};
	s->seg_max_event_time_us = 0;
	if (s->seal_n == SHARD_SEAL_QUEUE) {
		/* The sealer is far behind (16 segments): seal this one here, stalling the loop,
		   rather than keep an unbounded queue. */
		dedup_set_durable(s->dd, wal_durable_next(s->ws));
		int rc = dedup_seal_generation(s->dd, base, next, r.max_time);
		if (rc < 0)
			broker_log(LOG_WARN, "shard %u: sealing dedup generation %llu..%llu failed: "
					     "%s (keys stay hot)", s->id, (unsigned long long)base,
				   (unsigned long long)next, strerror(-rc));
		return;
	}
	s->seal_q[s->seal_n++] = r;
	seal_pump(s);
}
