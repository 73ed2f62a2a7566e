/*
 * wal_testutil.h — helpers shared by the WAL tests (header-only, static functions):
 * temporary directories, a deterministic realistic event generator (api.call, ai.tokens,
 * image.generated, storage.snapshot, sms.sent; customers cus_NNNNNN; 24-char random keys),
 * a fault-injecting I/O seam, and CHECK macros that fail the test with file:line.
 */
#ifndef TALLY_WAL_TESTUTIL_H
#define TALLY_WAL_TESTUTIL_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tally/event.h"
#include "tally/wal.h"

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "%s:%d: CHECK failed: %s (wal: %s)\n", __FILE__, __LINE__, \
				#c, wal_last_error());                                             \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)
#define CHECK_EQ(a, b)                                                                             \
	do {                                                                                       \
		long long _a = (long long)(a), _b = (long long)(b);                                \
		if (_a != _b) {                                                                    \
			fprintf(stderr,                                                            \
				"%s:%d: CHECK_EQ failed: %s = %lld, %s = %lld (wal: %s)\n",        \
				__FILE__, __LINE__, #a, _a, #b, _b, wal_last_error());             \
			exit(1);                                                                   \
		}                                                                                  \
	} while (0)

static inline void wt_tmpdir(char *buf, size_t cap, const char *tag)
{
	const char *base = getenv("TMPDIR");
	snprintf(buf, cap, "%s/tally-%s-XXXXXX", base && *base ? base : "/tmp", tag);
	CHECK(mkdtemp(buf) != NULL);
}

static inline void wt_rmrf(const char *dir)
{
	char cmd[8192];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
}

static inline uint64_t wt_mix(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

#define WT_BODY_MAX     512
#define WT_BASE_TIME_US 1763700000000000ll /* 2025-11-21 */

/*
 * Event number i of stream `seed`, encoded into buf (>= WT_BODY_MAX). Returns the body length.
 * Deterministic: the same (seed, i) always gives the same bytes. ~150 bytes, realistic mix.
 */
static inline size_t wt_event(uint64_t seed, uint64_t i, uint8_t *buf)
{
	static const char alnum[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	uint64_t r = wt_mix(seed * 1000003u + i);
	char key[25], cust[16], sbuf[2][40];
	uint64_t kr = r;
	for (int k = 0; k < 24; k++) {
		if (k % 10 == 0)
			kr = wt_mix(kr + (uint64_t)k);
		key[k] = alnum[kr % 62];
		kr /= 62;
	}
	key[24] = 0;
	snprintf(cust, sizeof cust, "cus_%06u", (unsigned)(wt_mix(r) % 5000));
	struct tally_prop p[8];
	memset(p, 0, sizeof p);
	const char *name;
	uint32_t np = 0;
#define WT_PROP_STR(k, v)                                                                          \
	do {                                                                                       \
		p[np].key = (struct tally_view){(const uint8_t *)(k), (uint32_t)strlen(k)};        \
		p[np].kind = TALLY_VALUE_STRING;                                                   \
		p[np].str = (struct tally_view){(const uint8_t *)(v), (uint32_t)strlen(v)};        \
		np++;                                                                              \
	} while (0)
#define WT_PROP_INT(k, v)                                                                          \
	do {                                                                                       \
		p[np].key = (struct tally_view){(const uint8_t *)(k), (uint32_t)strlen(k)};        \
		p[np].kind = TALLY_VALUE_INT;                                                      \
		p[np].i64 = (v);                                                                   \
		np++;                                                                              \
	} while (0)
	static const char *models[] = {"gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3-70b"};
	static const char *routes[] = {"/v1/search", "/v1/charges", "/v1/customers", "/v1/embed"};
	static const char *regions[] = {"us-east-1", "eu-west-1", "ap-south-1"};
	unsigned t = (unsigned)((r >> 40) % 1000);
	if (t < 550) {
		name = "api.call";
		WT_PROP_STR("route", routes[(r >> 8) % 4]);
		WT_PROP_INT("status", (r >> 12) % 50 ? 200 : 429);
		WT_PROP_INT("latency_ms", (int64_t)((r >> 16) % 900));
		WT_PROP_STR("region", regions[(r >> 20) % 3]);
	} else if (t < 800) {
		name = "ai.tokens";
		WT_PROP_STR("model", models[(r >> 8) % 4]);
		WT_PROP_INT("input_tokens", (int64_t)((r >> 12) % 8000));
		WT_PROP_INT("output_tokens", (int64_t)((r >> 24) % 2000));
		WT_PROP_STR("region", regions[(r >> 20) % 3]);
	} else if (t < 850) {
		name = "image.generated";
		WT_PROP_STR("model", "sdxl-turbo");
		WT_PROP_STR("size", (r >> 8) % 2 ? "1024x1024" : "512x512");
		WT_PROP_INT("count", (int64_t)((r >> 12) % 4 + 1));
	} else if (t < 900) {
		name = "storage.snapshot";
		p[np].key = (struct tally_view){(const uint8_t *)"gb_hours", 8};
		p[np].kind = TALLY_VALUE_DECIMAL;
		p[np].scale = 3;
		p[np].i64 = (int64_t)((r >> 8) % 10000000);
		np++;
		snprintf(sbuf[0], sizeof sbuf[0], "bkt-%u", (unsigned)((r >> 30) % 100));
		WT_PROP_STR("bucket", sbuf[0]);
		WT_PROP_STR("tier", "standard");
	} else {
		name = "sms.sent";
		snprintf(sbuf[1], sizeof sbuf[1], "+1555%07u", (unsigned)((r >> 8) % 10000000));
		WT_PROP_STR("to", sbuf[1]);
		WT_PROP_INT("segments", (int64_t)((r >> 12) % 3 + 1));
		WT_PROP_STR("country", "US");
	}
	static const char *sdks[] = {"python/1.4.2", "node/2.0.11", "go/0.9.7", "ruby/3.1.0"};
	WT_PROP_STR("sdk", sdks[(r >> 36) % 4]);
#undef WT_PROP_STR
#undef WT_PROP_INT
	struct tally_event_in in = {
	    .key = {(const uint8_t *)key, 24},
	    .customer = {(const uint8_t *)cust, (uint32_t)strlen(cust)},
	    .name = {(const uint8_t *)name, (uint32_t)strlen(name)},
	    .event_time_us = WT_BASE_TIME_US + (int64_t)i * 1000 - (int64_t)((r >> 50) % 5000000),
	    .prop_count = np,
	    .props = p,
	};
	long n = event_encode(&in, buf, WT_BODY_MAX);
	CHECK(n > 0);
	return (size_t)n;
}

/* Tenant of event i: a few tenants, sometimes empty. */
static inline struct tally_view wt_tenant(uint64_t seed, uint64_t i)
{
	static const char *tenants[] = {"", "acme", "globex", "initech"};
	const char *t = tenants[wt_mix(seed ^ (i * 7919)) % 4];
	return (struct tally_view){(const uint8_t *)t, (uint32_t)strlen(t)};
}

/* ---------- fault-injecting I/O seam ---------- */

struct wt_faultio {
	struct wal_io io;
	const struct wal_io *inner;
	int log_fds[64];     /* fds of open *.log files (writes to them are the faultable ones) */
	int fail_fdatasync;  /* -errno to return from the next fdatasync, 0 = none */
	int fail_log_pwrite; /* -errno for the next N log pwrites */
	int fail_log_pwrite_n;
	int short_log_pwrite_n; /* next N log pwrites write only half (then the rule above) */
	int fail_ftruncate;     /* -errno for every ftruncate while set */
	int fail_open_log;      /* -errno for opening a new .log while set */
	int noop_sync;          /* skip real syncs (speed for crash tests) */
	long crash_at_op;       /* >= 0: the process "dies" at this I/O op (0-based): that op, if a
				   write, persists only half; every later op fails with -EIO */
	long ops;               /* I/O ops counted (open, pwrite, fdatasync, fsync, ftruncate) */
	/* Power-loss model for *.log files: the size each had at its last fdatasync, and whether
	   its directory entry was fsynced since it was created (wt_power_loss() applies it). */
	struct {
		char path[512];
		int fd;
		uint64_t synced_bytes;
		bool entry_durable;
		bool used;
	} files[64];
	unsigned long syncs, log_pwrites;
};

/* Counts an op; returns 0 to go on, 1 if this is the crashing op, -1 if already dead. */
static inline int wt_crash_step(struct wt_faultio *f)
{
	long op = f->ops++;
	if (f->crash_at_op < 0 || op < f->crash_at_op)
		return 0;
	return op == f->crash_at_op ? 1 : -1;
}

static inline bool wt_is_log_fd(struct wt_faultio *f, int fd)
{
	for (int i = 0; i < 64; i++)
		if (f->log_fds[i] == fd)
			return true;
	return false;
}

static inline int wt_f_open(void *ctx, const char *path, int flags, mode_t mode)
{
	struct wt_faultio *f = ctx;
	if (wt_crash_step(f) != 0)
		return -EIO;
	size_t n = strlen(path);
	bool is_log = n > 4 && strcmp(path + n - 4, ".log") == 0;
	if (is_log && (flags & O_CREAT) && f->fail_open_log)
		return f->fail_open_log;
	bool existed = access(path, F_OK) == 0;
	int fd = f->inner->open(f->inner->ctx, path, flags, mode);
	if (fd >= 0 && is_log) {
		for (int i = 0; i < 64; i++)
			if (f->log_fds[i] < 0) {
				f->log_fds[i] = fd;
				break;
			}
		int slot = -1;
		for (int i = 0; i < 64; i++)
			if (f->files[i].used && !strcmp(f->files[i].path, path))
				slot = i;
		for (int i = 0; i < 64 && slot < 0; i++)
			if (!f->files[i].used)
				slot = i;
		if (slot >= 0) {
			if (!f->files[slot].used) {
				f->files[slot].used = true;
				snprintf(f->files[slot].path, sizeof f->files[slot].path, "%s",
					 path);
				f->files[slot].entry_durable = existed;
				struct stat st;
				f->files[slot].synced_bytes =
				    existed && stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
			}
			f->files[slot].fd = fd;
		}
	}
	return fd;
}

/* After a successful sync of fd: a .log's current size is durable; a directory's entries. */
static inline void wt_track_sync(struct wt_faultio *f, int fd)
{
	struct stat st;
	if (fstat(fd, &st) != 0)
		return;
	for (int i = 0; i < 64; i++) {
		if (!f->files[i].used)
			continue;
		if (S_ISDIR(st.st_mode))
			f->files[i].entry_durable =
			    true; /* (all tracked files share one directory) */
		else if (f->files[i].fd == fd)
			f->files[i].synced_bytes = (uint64_t)st.st_size;
	}
}

/*
 * Power loss: every tracked .log loses what was written after its last fdatasync, except an
 * in-order prefix of `keep_permille` of those bytes (page cache written back in order, the
 * last page torn); a file whose directory entry was never fsynced disappears.
 */
static inline void wt_power_loss(struct wt_faultio *f, unsigned keep_permille)
{
	for (int i = 0; i < 64; i++) {
		if (!f->files[i].used)
			continue;
		struct stat st;
		if (stat(f->files[i].path, &st) != 0)
			continue;
		if (!f->files[i].entry_durable) {
			unlink(f->files[i].path);
			continue;
		}
		uint64_t cur = (uint64_t)st.st_size, synced = f->files[i].synced_bytes;
		if (cur > synced)
			CHECK(truncate(f->files[i].path,
				       (off_t)(synced + (cur - synced) * keep_permille / 1000)) ==
			      0);
	}
}

static inline ssize_t wt_f_pwrite(void *ctx, int fd, const void *buf, size_t n, off_t off)
{
	struct wt_faultio *f = ctx;
	int c = wt_crash_step(f);
	if (c < 0)
		return -EIO;
	if (c > 0) { /* dies in the middle of this write: half of it reaches the file */
		(void)f->inner->pwrite(f->inner->ctx, fd, buf, n / 2, off);
		return -EIO;
	}
	if (wt_is_log_fd(f, fd)) {
		f->log_pwrites++;
		if (f->short_log_pwrite_n > 0 && n > 1) {
			f->short_log_pwrite_n--;
			return f->inner->pwrite(f->inner->ctx, fd, buf, n / 2, off);
		}
		if (f->fail_log_pwrite_n > 0) {
			f->fail_log_pwrite_n--;
			return f->fail_log_pwrite;
		}
	}
	return f->inner->pwrite(f->inner->ctx, fd, buf, n, off);
}

static inline ssize_t wt_f_pread(void *ctx, int fd, void *buf, size_t n, off_t off)
{
	struct wt_faultio *f = ctx;
	return f->inner->pread(f->inner->ctx, fd, buf, n, off);
}

static inline int wt_f_fdatasync(void *ctx, int fd)
{
	struct wt_faultio *f = ctx;
	if (wt_crash_step(f) != 0)
		return -EIO;
	f->syncs++;
	if (f->fail_fdatasync) {
		int e = f->fail_fdatasync;
		f->fail_fdatasync = 0;
		return e;
	}
	int rc = f->noop_sync ? 0 : f->inner->fdatasync(f->inner->ctx, fd);
	if (rc == 0)
		wt_track_sync(f, fd);
	return rc;
}

static inline int wt_f_fsync(void *ctx, int fd)
{
	struct wt_faultio *f = ctx;
	if (wt_crash_step(f) != 0)
		return -EIO;
	int rc = f->noop_sync ? 0 : f->inner->fsync(f->inner->ctx, fd);
	if (rc == 0)
		wt_track_sync(f, fd);
	return rc;
}

static inline int wt_f_ftruncate(void *ctx, int fd, off_t len)
{
	struct wt_faultio *f = ctx;
	if (wt_crash_step(f) != 0)
		return -EIO;
	if (f->fail_ftruncate)
		return f->fail_ftruncate;
	return f->inner->ftruncate(f->inner->ctx, fd, len);
}

static inline int wt_f_close(void *ctx, int fd)
{
	struct wt_faultio *f = ctx;
	for (int i = 0; i < 64; i++) {
		if (f->log_fds[i] == fd)
			f->log_fds[i] = -1;
		if (f->files[i].used && f->files[i].fd == fd)
			f->files[i].fd = -1; /* the number may be reused by another file */
	}
	return f->inner->close(f->inner->ctx, fd);
}

static inline void wt_faultio_init(struct wt_faultio *f)
{
	memset(f, 0, sizeof *f);
	f->crash_at_op = -1;
	for (int i = 0; i < 64; i++)
		f->log_fds[i] = -1;
	f->inner = wal_io_libc();
	f->io = (struct wal_io){.open = wt_f_open,
				.pwrite = wt_f_pwrite,
				.pread = wt_f_pread,
				.fdatasync = wt_f_fdatasync,
				.fsync = wt_f_fsync,
				.ftruncate = wt_f_ftruncate,
				.close = wt_f_close,
				.ctx = f};
}

static inline uint64_t wt_file_size(const char *path)
{
	struct stat st;
	CHECK(stat(path, &st) == 0);
	return (uint64_t)st.st_size;
}

#endif /* TALLY_WAL_TESTUTIL_H */
