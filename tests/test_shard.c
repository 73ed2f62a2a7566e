/*
 * test_shard — a broker shard (dedup + WAL + syncer thread + durability FIFO) driven directly,
 * with the WAL's I/O seam injecting faults. Runs under TSan in `make tsan` (owner thread and
 * syncer thread) and under ASan in `make test`.
 *
 * Shows: receipts only after the covering fdatasync; in-batch duplicate waits for its original
 * and reports its offset; duplicate/conflict of a durable key answered at once; a write failure
 * (ENOSPC) fails the batch with DISK_FULL, aborts the claims, and a retry is ACCEPTED; a failed
 * fdatasync is fatal and nothing after it is acknowledged; with a commit window, a second
 * sync in the same window waits for the next one and the shard says when.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "broker.h"
#include "shard.h"
#include "tally/wal.h"

static int failures;
#define CHECK_EQ(a, b)                                                                           \
	do {                                                                                     \
		long long _a = (long long)(a), _b = (long long)(b);                              \
		if (_a != _b) {                                                                  \
			fprintf(stderr, "%s:%d: CHECK_EQ failed: %s = %lld, %s = %lld\n",         \
				__FILE__, __LINE__, #a, _a, #b, _b);                             \
			failures++;                                                              \
		}                                                                                \
	} while (0)

/* --- fault-injecting seam --- */
static _Atomic int fail_pwrite_enospc; /* fail the next N pwrites with ENOSPC */
static _Atomic int fail_sync_eio;      /* fail every fdatasync with EIO */
static _Atomic long syncs;
static struct shard_group *grp;
static int64_t sync_at; /* shard_group_poll's "poll me again then" output */

static const struct wal_io *libc_io;
static ssize_t f_pwrite(void *ctx, int fd, const void *b, size_t n, off_t off)
{
	if (atomic_load(&fail_pwrite_enospc) > 0) {
		atomic_fetch_sub(&fail_pwrite_enospc, 1);
		return -ENOSPC;
	}
	return libc_io->pwrite(libc_io->ctx, fd, b, n, off);
}
static _Atomic int sync_sleep_us; /* make every fdatasync take at least this long */
static int f_fdatasync(void *ctx, int fd)
{
	atomic_fetch_add(&syncs, 1);
	if (atomic_load(&sync_sleep_us))
		usleep((useconds_t)atomic_load(&sync_sleep_us));
	if (atomic_load(&fail_sync_eio))
		return -EIO;
	return libc_io->fdatasync(libc_io->ctx, fd);
}
static int f_open(void *ctx, const char *p, int fl, mode_t m)
{
	return libc_io->open(libc_io->ctx, p, fl, m);
}
static ssize_t f_pread(void *ctx, int fd, void *b, size_t n, off_t off)
{
	return libc_io->pread(libc_io->ctx, fd, b, n, off);
}
static int f_fsync(void *ctx, int fd)
{
	return libc_io->fsync(libc_io->ctx, fd);
}
static int f_ftruncate(void *ctx, int fd, off_t l)
{
	return libc_io->ftruncate(libc_io->ctx, fd, l);
}
static int f_close(void *ctx, int fd)
{
	return libc_io->close(libc_io->ctx, fd);
}

/* --- owner-side plumbing --- */
static int wake_fd;
static void wake(void *ctx)
{
	uint64_t one = 1;
	ssize_t rc = write(wake_fd, &one, 8);
	(void)rc;
}
static void resolve(void *ctx, struct broker_slot *s, uint32_t n)
{
	atomic_fetch_sub(&s->pending, n);
}

static struct broker_slot *slot_new(uint32_t n)
{
	size_t cap = proto_ack_size(n);
	struct broker_slot *s = calloc(1, sizeof *s + cap);
	s->n = n;
	s->cap = (uint32_t)cap;
	atomic_init(&s->pending, n);
	return s;
}

static void receipt(struct broker_slot *s, uint32_t i, struct proto_receipt *r)
{
	const uint8_t *p = s->frame + PROTO_HEADER_BYTES + PROTO_ACK_HEADER_BYTES + i * 16;
	r->status = p[0];
	r->reason = p[1];
	r->shard = tally_get_u16(p + 2);
	r->offset = tally_get_u64(p + 8);
}

static struct broker_tenant tenant = {.len = 1, .name = "t"};
static uint8_t bodies[64][256];

static struct shard_item item(struct broker_slot *s, uint32_t idx, const char *key, int64_t v)
{
	struct tally_prop p = {.key = {(const uint8_t *)"v", 1}, .kind = TALLY_VALUE_INT, .i64 = v};
	struct tally_event_in in = {
		.key = {(const uint8_t *)key, (uint32_t)strlen(key)},
		.customer = {(const uint8_t *)"cus", 3},
		.name = {(const uint8_t *)"api.call", 8},
		.event_time_us = 1700000000000000,
		.prop_count = 1,
		.props = &p,
	};
	uint8_t *b = bodies[idx % 64];
	long n = event_encode(&in, b, 256);
	struct tally_event ev;
	if (n < 0 || event_decode(b, (size_t)n, &ev) != TALLY_REJECT_NONE)
		abort();
	struct shard_item it = {
		.slot = s, .idx = idx, .digest = event_content_digest(&ev),
		.fp = event_fingerprint((struct tally_view){(const uint8_t *)"t", 1}, ev.key),
		.event_time_us = ev.event_time_us, .body = b, .body_len = (uint16_t)n,
		.tenant = &tenant,
	};
	return it;
}

/* Polls the shard until the slot is resolved or the shard fails; returns the poll result. */
static int run_until(struct shard *sh, struct broker_slot *s, int max_ms)
{
	for (int i = 0; i < max_ms; i++) {
		int rc = shard_group_poll(grp, broker_now_us(), &sync_at);
		if (rc < 0)
			return rc;
		if (atomic_load(&s->pending) == 0)
			return 0;
		struct pollfd p = {.fd = wake_fd, .events = POLLIN};
		poll(&p, 1, 1);
		uint64_t v;
		ssize_t r = read(wake_fd, &v, 8);
		(void)r;
	}
	return -ETIMEDOUT;
}

int main(void)
{
	char dir[] = "/tmp/test_shard.XXXXXX";
	if (!mkdtemp(dir))
		return 1;
	broker_log_min = LOG_ERROR + 1; /* the fault cases log on purpose */
	libc_io = wal_io_libc();
	struct wal_io io = {f_open, f_pwrite, f_pread, f_fdatasync, f_fsync, f_ftruncate, f_close,
			    NULL, NULL, NULL};
	struct wal_options wo = {.shard_count = 1, .io = &io};
	struct wal *wal;
	if (wal_open(dir, &wo, &wal) != 0) {
		fprintf(stderr, "wal_open: %s\n", wal_last_error());
		return 1;
	}
	wake_fd = eventfd(0, EFD_NONBLOCK);
	struct broker_config cfg = {.data_dir = dir, .batch_events_max = 64,
				    .dedup_window_us = 35LL * 86400 * 1000000,
				    .fsync_mode = WAL_FSYNC_ALWAYS, .expected_keys = 1024};
	struct shard *sh;
	if (shard_group_open(&cfg, 0, wake, NULL, &grp) != 0 ||
	    shard_open(&cfg, wal, 0, grp, resolve, NULL, &sh) != 0)
		return 1;

	/* 1. New keys, an in-batch duplicate and an in-batch conflict. */
	struct broker_slot *s1 = slot_new(4);
	struct shard_item it1[4] = {item(s1, 0, "a", 1), item(s1, 1, "b", 1), item(s1, 2, "a", 1),
				    item(s1, 3, "b", 2)};
	long syncs0 = atomic_load(&syncs);
	shard_submit(sh, it1, 4, broker_now_us());
	CHECK_EQ(atomic_load(&s1->pending), 4); /* nothing answered before it is durable */
	CHECK_EQ(run_until(sh, s1, 5000), 0);
	CHECK_EQ(atomic_load(&syncs) > syncs0, 1);
	struct proto_receipt r[4];
	for (int i = 0; i < 4; i++)
		receipt(s1, (uint32_t)i, &r[i]);
	CHECK_EQ(r[0].status, PROTO_ACCEPTED);
	CHECK_EQ(r[1].status, PROTO_ACCEPTED);
	CHECK_EQ(r[2].status, PROTO_DUPLICATE);
	CHECK_EQ(r[2].offset, r[0].offset);
	CHECK_EQ(r[3].status, PROTO_CONFLICT);
	CHECK_EQ(r[3].offset, r[1].offset);
	CHECK_EQ(wal_durable_next(wal_shard(wal, 0)) > r[1].offset, 1);

	/* 2. Durable key again: answered at once, without waiting for a sync. */
	struct broker_slot *s2 = slot_new(2);
	struct shard_item it2[2] = {item(s2, 0, "a", 1), item(s2, 1, "a", 9)};
	shard_submit(sh, it2, 2, broker_now_us());
	CHECK_EQ(atomic_load(&s2->pending), 0);
	receipt(s2, 0, &r[0]);
	receipt(s2, 1, &r[1]);
	CHECK_EQ(r[0].status, PROTO_DUPLICATE);
	CHECK_EQ(r[1].status, PROTO_CONFLICT);

	/* 3. ENOSPC on the block write: batch fails, claims aborted, the retry is ACCEPTED. */
	struct broker_slot *s3 = slot_new(2);
	struct shard_item it3[2] = {item(s3, 0, "c", 1), item(s3, 1, "d", 1)};
	atomic_store(&fail_pwrite_enospc, 1);
	shard_submit(sh, it3, 2, broker_now_us());
	CHECK_EQ(run_until(sh, s3, 5000), 0);
	CHECK_EQ(atomic_load(&s3->error), PROTO_E_DISK_FULL);
	struct broker_slot *s4 = slot_new(2);
	struct shard_item it4[2] = {item(s4, 0, "c", 1), item(s4, 1, "d", 1)};
	shard_submit(sh, it4, 2, broker_now_us());
	CHECK_EQ(run_until(sh, s4, 5000), 0);
	CHECK_EQ(atomic_load(&s4->error), 0);
	receipt(s4, 0, &r[0]);
	receipt(s4, 1, &r[1]);
	CHECK_EQ(r[0].status, PROTO_ACCEPTED);
	CHECK_EQ(r[1].status, PROTO_ACCEPTED);

	/* 3b. Commit window: one sync per window; the next waits for the window's end. */
	const int64_t W = 200000;
	cfg.commit_window_us = (uint32_t)W;
	int64_t t = broker_now_us();
	usleep((useconds_t)(W - t % W + 1000)); /* 1 ms into a fresh window */
	int64_t k = broker_now_us() / W;
	struct broker_slot *sx = slot_new(1), *sy = slot_new(1);
	struct shard_item itx[1] = {item(sx, 0, "wx", 1)}, ity[1] = {item(sy, 0, "wy", 1)};
	shard_submit(sh, itx, 1, broker_now_us());
	CHECK_EQ(run_until(sh, sx, 5000), 0); /* first sync of the window: at once */
	CHECK_EQ(broker_now_us() / W, k);
	long syncs1 = atomic_load(&syncs);
	shard_submit(sh, ity, 1, broker_now_us());
	/* The syncer may still be finishing sx's sync (busy): until it is idle a poll neither
	   holds nor starts a sync. */
	for (int i = 0; i < 100; i++) {
		sync_at = INT64_MAX;
		CHECK_EQ(shard_group_poll(grp, broker_now_us(), &sync_at), 0);
		if (sync_at != INT64_MAX)
			break;
		usleep(1000);
	}
	CHECK_EQ(sync_at, (k + 1) * W); /* held back, and the shard says until when */
	CHECK_EQ(atomic_load(&sy->pending), 1);
	CHECK_EQ(atomic_load(&syncs), syncs1);
	CHECK_EQ(run_until(sh, sy, 5000), 0);
	CHECK_EQ(broker_now_us() >= (k + 1) * W, 1); /* acknowledged only in the next window */
	/* 3c. Syncs taking half a window or more are not held back: the next starts at once. */
	atomic_store(&sync_sleep_us, (int)(W * 6 / 10));
	struct broker_slot *sz = slot_new(1), *sw = slot_new(1);
	struct shard_item itz[1] = {item(sz, 0, "wz", 1)}, itw[1] = {item(sw, 0, "ww", 1)};
	t = broker_now_us();
	usleep((useconds_t)(W - t % W + 1000));
	shard_submit(sh, itz, 1, broker_now_us());
	CHECK_EQ(run_until(sh, sz, 5000), 0); /* a slow sync: 120 ms of the 200 ms window */
	long syncs2 = atomic_load(&syncs);
	shard_submit(sh, itw, 1, broker_now_us());
	for (int i = 0; i < 100; i++) { /* until the sync starts (or, wrongly, is held) */
		sync_at = INT64_MAX;
		CHECK_EQ(shard_group_poll(grp, broker_now_us(), &sync_at), 0);
		if (sync_at != INT64_MAX || atomic_load(&syncs) > syncs2)
			break;
		usleep(1000);
	}
	CHECK_EQ(sync_at, INT64_MAX); /* nothing held: the sync was started at once */
	CHECK_EQ(run_until(sh, sw, 5000), 0);
	CHECK_EQ(atomic_load(&syncs) > syncs2, 1);
	atomic_store(&sync_sleep_us, 0);
	cfg.commit_window_us = 0;
	free(sx);
	free(sy);
	free(sz);
	free(sw);

	/* 4. fdatasync EIO: fatal, and the event it covered is never acknowledged. */
	struct broker_slot *s5 = slot_new(1);
	struct shard_item it5[1] = {item(s5, 0, "e", 1)};
	atomic_store(&fail_sync_eio, 1);
	shard_submit(sh, it5, 1, broker_now_us());
	int rc = run_until(sh, s5, 5000);
	CHECK_EQ(rc, -EIO);
	CHECK_EQ(atomic_load(&s5->pending), 1);
	CHECK_EQ(shard_group_poll(grp, broker_now_us(), &sync_at), -EIO);

	(void)shard_close(sh);
	(void)shard_group_close(grp);
	(void)wal_close(wal);
	free(s1);
	free(s2);
	free(s3);
	free(s4);
	free(s5);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
	printf("test_shard: %s, %d failure(s)\n", failures ? "FAILED" : "passed", failures);
	return failures ? 1 : 0;
}
