/*
 * tools/tally_rate.c — tally-rate: the rating process. Tails the WAL (all shards, merged by
 * ingest time) as a named consumer, feeds every record to the rating engine, writes invoices
 * as periods close, refreshes OUT/usage.json every second, and checkpoints its state
 * (aggregates + WAL positions, one atomic file: OUT/state/<consumer>.ckpt) so that a
 * kill -9 and restart neither double counts nor skips. See docs/rating.md "tally-rate".
 *
 * Exactly once: the checkpoint holds the positions and the state that results from reading
 * exactly up to them. After a crash the records after the checkpoint are read again; an
 * invoice closed in that stretch is rebuilt from the same state and records, so it is
 * rewritten with the same bytes. The WAL consumer checkpoint (DATA/consumers/<consumer>.ckpt,
 * for retention) is saved after our own state, so it never runs ahead of it.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tally/rate.h"
#include "tally/wal.h"
#include "tally/version.h"

#define RATE_CKPT_INTERVAL_MS_DEFAULT 1000
#define RATE_USAGE_INTERVAL_MS        1000
#define RATE_POLL_MS                  200
#define RATE_WAL_WAIT_MS              60000

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: tally-rate --config FILE --data DIR --out DIR [options]\n"
		"\n"
		"Rates the events in the WAL at DIR/wal into invoices under OUT (docs/rating.md).\n"
		"\n"
		"  --config FILE      rating configuration (JSON)\n"
		"  --data DIR         tallyd data directory (the WAL is DIR/wal)\n"
		"  --out DIR          output: invoices/, usage.json, late_arrivals.json,\n"
		"                     unbilled.json, state/<consumer>.ckpt\n"
		"  --once             rate everything durable now, close what is due, exit\n"
		"  --from-scratch     re-rate the whole WAL into OUT, which must be new or empty\n"
		"  --consumer NAME    consumer name for checkpoints (default: rate)\n"
		"  --checkpoint-ms N  state checkpoint interval while busy (default 1000)\n"
		"  --no-fsync         skip fsync of outputs (tests only)\n"
		"  --version          print the version\n"
		"  --help             this text\n"
		"\n"
		"SIGINT, SIGTERM and SIGHUP stop it cleanly: the current step finishes, the state\n"
		"is checkpointed and the summary printed.\n"
		"Exit status: 0 ok, 1 runtime error, 2 usage or configuration error.\n");
}

struct ctx {
	const char *data, *out, *consumer;
	struct rate_engine *eng;
	struct wal_reader *rd;
	uint16_t nshards;
	uint64_t *pos;
	char state_path[4096];
	bool no_fsync;
};

static int save_all(struct ctx *c, bool reports)
{
	for (uint16_t s = 0; s < c->nshards; s++)
		c->pos[s] = wal_reader_position(c->rd, s);
	int rc = rate_engine_save(c->eng, c->pos, c->nshards, c->state_path);
	if (rc != 0) {
		fprintf(stderr, "tally-rate: checkpoint %s: %s\n", c->state_path, strerror(-rc));
		return rc;
	}
	rc = wal_checkpoint_save(c->data, c->consumer, c->pos, c->nshards);
	if (rc != 0)
		fprintf(stderr, "tally-rate: WAL consumer checkpoint: %s (%s)\n", strerror(-rc),
			wal_last_error());
	if (reports && (rc = rate_engine_write_reports(c->eng, c->out)) != 0)
		fprintf(stderr, "tally-rate: reports: %s\n", strerror(-rc));
	return rc;
}

static int write_usage(struct ctx *c)
{
	char *json;
	size_t len;
	char path[4096];
	int rc = rate_engine_usage_json(c->eng, &json, &len);
	if (rc != 0)
		return rc;
	snprintf(path, sizeof path, "%s/usage.json", c->out);
	/* usage.json is a live view, rewritten every second: no fsync needed for it. */
	char *nl = realloc(json, len + 2);
	if (!nl) {
		free(json);
		return -ENOMEM;
	}
	nl[len++] = '\n';
	rc = rate_write_atomic(path, nl, len, false);
	free(nl);
	return rc;
}

static bool dir_empty_or_absent(const char *path)
{
	char cmd[4200];
	struct stat sb;
	if (stat(path, &sb) != 0)
		return errno == ENOENT;
	snprintf(cmd, sizeof cmd, "%s/state", path);
	if (stat(cmd, &sb) == 0)
		return false;
	snprintf(cmd, sizeof cmd, "%s/invoices", path);
	return stat(cmd, &sb) != 0;
}

int main(int argc, char **argv)
{
	const char *config = NULL;
	struct ctx c = {.consumer = "rate"};
	bool once = false, scratch = false;
	long ckpt_ms = RATE_CKPT_INTERVAL_MS_DEFAULT;
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'}, {"data", required_argument, NULL, 'd'},
		{"out", required_argument, NULL, 'o'},    {"once", no_argument, NULL, '1'},
		{"from-scratch", no_argument, NULL, 's'}, {"consumer", required_argument, NULL, 'n'},
		{"checkpoint-ms", required_argument, NULL, 'k'},
		{"no-fsync", no_argument, NULL, 'F'},     {"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'c': config = optarg; break;
		case 'd': c.data = optarg; break;
		case 'o': c.out = optarg; break;
		case '1': once = true; break;
		case 's': scratch = true; break;
		case 'n': c.consumer = optarg; break;
		case 'k': ckpt_ms = strtol(optarg, NULL, 10); break;
		case 'F': c.no_fsync = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': TALLY_PRINT_VERSION("tally-rate"); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!config || !c.data || !c.out || optind != argc || ckpt_ms < 0) {
		usage(stderr);
		return 2;
	}
	if (strlen(c.consumer) == 0 || strlen(c.consumer) > WAL_CONSUMER_NAME_BYTES_MAX ||
	    strchr(c.consumer, '/')) {
		fprintf(stderr, "tally-rate: --consumer: 1..%d bytes, no '/'\n",
			WAL_CONSUMER_NAME_BYTES_MAX);
		return 2;
	}
	char err[512];
	struct rate_config *cfg;
	int rc = rate_config_load(config, &cfg, err, sizeof err);
	if (rc != 0) {
		fprintf(stderr, "tally-rate: %s: %s\n", config, err);
		return 2;
	}
	int status = 1;
	/* Started beside a fresh tallyd (make run), the WAL may not exist yet: wait for it
	 * (tailing mode only; --once has nothing to rate without it). */
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	/* A hang-up (a closed terminal, `make run`'s process group) stops it the same clean way,
	   checkpoint and summary included, instead of SIGHUP's default: dying mid-step. */
	sigaction(SIGHUP, &sa, NULL);
	for (int waited_ms = 0;; waited_ms += RATE_POLL_MS) {
		rc = wal_stored_shard_count(c.data, &c.nshards);
		if (rc == 0 || once || g_stop || waited_ms >= RATE_WAL_WAIT_MS) {
			if (rc != 0 && g_stop) {
				status = 0; /* stopped while waiting: nothing was rated */
				goto out_cfg;
			}
			if (rc != 0) {
				fprintf(stderr, "tally-rate: %s: no WAL (%s) %s\n", c.data,
					strerror(-rc), wal_last_error());
				goto out_cfg;
			}
			break;
		}
		if (waited_ms == 0)
			fprintf(stderr, "tally-rate: waiting for a WAL in %s\n", c.data);
		struct timespec ts = {0, RATE_POLL_MS * 1000000L};
		nanosleep(&ts, NULL);
	}
	if (scratch && !dir_empty_or_absent(c.out)) {
		fprintf(stderr, "tally-rate: --from-scratch needs a new or empty --out (%s has "
				"invoices or state)\n", c.out);
		status = 2;
		goto out_cfg;
	}
	snprintf(c.state_path, sizeof c.state_path, "%s/state/%s.ckpt", c.out, c.consumer);
	struct rate_engine_opts eo = {.shards = c.nshards, .out_dir = c.out, .no_fsync = c.no_fsync};
	if ((rc = rate_engine_create(cfg, &eo, &c.eng)) != 0) {
		fprintf(stderr, "tally-rate: engine: %s\n", strerror(-rc));
		goto out_cfg;
	}
	c.pos = calloc(c.nshards, sizeof *c.pos);
	if (!c.pos)
		goto out_eng;
	bool resumed = false;
	if (!scratch) {
		rc = rate_engine_load(c.eng, c.pos, c.nshards, c.state_path);
		if (rc == 0) {
			resumed = true;
		} else if (rc != -ENOENT) {
			fprintf(stderr, "tally-rate: %s: %s\n", c.state_path,
				rc == -EBADMSG ? "damaged checkpoint"
				: rc == -EINVAL ? "checkpoint does not match the WAL shards or the meters"
						: strerror(-rc));
			goto out_eng;
		}
	}
	if ((rc = wal_reader_open(c.data, -1, &c.rd)) != 0) {
		fprintf(stderr, "tally-rate: WAL reader: %s %s\n", strerror(-rc), wal_last_error());
		goto out_eng;
	}
	if (resumed) {
		for (uint16_t s = 0; s < c.nshards; s++)
			if ((rc = wal_reader_seek(c.rd, s, c.pos[s])) != 0) {
				fprintf(stderr, "tally-rate: shard %u offset %llu: %s\n", s,
					(unsigned long long)c.pos[s],
					rc == -ERANGE ? "deleted by retention" : strerror(-rc));
				goto out_rd;
			}
	} else if ((rc = wal_reader_seek_earliest(c.rd)) != 0) {
		fprintf(stderr, "tally-rate: WAL seek: %s\n", strerror(-rc));
		goto out_rd;
	}
	int64_t last_ckpt = now_ms(), last_usage = 0;
	uint64_t fed_since_ckpt = 0;
	/* Records are copied out of the reader (its views die at its next call) into a batch
	 * that the engine rates with prefetching; the batch is always empty when positions are
	 * taken for a checkpoint, so positions and state match. */
	static struct rate_record batch[RATE_BATCH_MAX];
	static struct tally_event bevs[RATE_BATCH_MAX];
	static uint8_t bodies[RATE_BATCH_MAX][TALLY_EVENT_BYTES_MAX];
	static uint8_t tenants[RATE_BATCH_MAX][TALLY_TENANT_BYTES_MAX];
	size_t nb = 0;
	struct wal_record rec;
	for (;;) {
		int got = g_stop ? 0 : wal_reader_next(c.rd, &rec); /* 1, 0 nothing durable, <0 */
		if (got < 0) {
			fprintf(stderr, "tally-rate: WAL read: %s %s\n", strerror(-got), wal_last_error());
			goto out_rd;
		}
		if (got == 1) {
			struct rate_record *x = &batch[nb];
			*x = (struct rate_record){.ingest_time_us = rec.ingest_time_us,
						  .shard = rec.shard,
						  .offset = rec.offset};
			if (rec.kind == WAL_RECORD_EVENT) {
				rate_event_rebase(&bevs[nb], &rec.ev, bodies[nb]);
				memcpy(tenants[nb], rec.tenant.ptr, rec.tenant.len);
				x->ev = &bevs[nb];
				x->tenant = (struct tally_view){tenants[nb], rec.tenant.len};
			}
			nb++;
			if (nb < RATE_BATCH_MAX)
				continue;
		}
		if (nb > 0) {
			size_t fed = 0;
			if ((rc = rate_engine_feed_batch(c.eng, batch, nb, &fed)) != 0) {
				fprintf(stderr, "tally-rate: rating shard %u offset %llu: %s\n",
					batch[fed].shard, (unsigned long long)batch[fed].offset,
					strerror(-rc));
				goto out_rd;
			}
			fed_since_ckpt += nb;
			nb = 0;
		}
		if (g_stop)
			break;
		if (got == 1 && (fed_since_ckpt & 4095) >= RATE_BATCH_MAX)
			continue; /* look at the clock about every 4096 records */
		int64_t t = now_ms();
		if (fed_since_ckpt && (got == 0 || t - last_ckpt >= ckpt_ms)) {
			if (save_all(&c, false) != 0)
				goto out_rd;
			fed_since_ckpt = 0;
			last_ckpt = t;
		}
		if (got == 0 && once)
			break;
		if (t - last_usage >= RATE_USAGE_INTERVAL_MS) {
			if ((rc = write_usage(&c)) != 0)
				fprintf(stderr, "tally-rate: usage.json: %s\n", strerror(-rc));
			last_usage = t;
		}
		if (got == 0)
			wal_reader_wait(c.rd, RATE_POLL_MS);
	}
	if (save_all(&c, true) != 0 || write_usage(&c) != 0)
		goto out_rd;
	struct rate_stats st;
	rate_engine_stats(c.eng, &st);
	fprintf(stderr,
		"tally-rate: %llu events (%llu metered, %llu late, %llu unbilled, %llu unmetered), "
		"%llu invoices, watermark %lld\n",
		(unsigned long long)st.events, (unsigned long long)st.metered,
		(unsigned long long)st.late, (unsigned long long)st.unbilled,
		(unsigned long long)st.unmetered, (unsigned long long)st.invoices,
		(long long)rate_engine_watermark(c.eng));
	status = 0;
out_rd:
	wal_reader_close(c.rd);
out_eng:
	free(c.pos);
	rate_engine_destroy(c.eng);
out_cfg:
	rate_config_free(cfg);
	return status;
}
