/*
 * wal_io.c — the WAL's I/O seam: the libc implementation (every call returns -errno on
 * failure, never -1) and a wrapper that injects a fixed sleep before every sync (fdatasync,
 * fsync: each is one device cache flush), used by the benchmarks to model a slow disk.
 * Fault-injecting seams for tests live in tests/wal_testutil.h.
 */
#define _GNU_SOURCE /* sync_file_range */
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "wal_internal.h"

static int libc_open(void *ctx, const char *path, int flags, mode_t mode)
{
	int fd = open(path, flags, mode);
	return fd < 0 ? -errno : fd;
}

static ssize_t libc_pwrite(void *ctx, int fd, const void *buf, size_t n, off_t off)
{
	ssize_t r = pwrite(fd, buf, n, off);
	return r < 0 ? -errno : r;
}

static ssize_t libc_pread(void *ctx, int fd, void *buf, size_t n, off_t off)
{
	ssize_t r = pread(fd, buf, n, off);
	return r < 0 ? -errno : r;
}

static int libc_fdatasync(void *ctx, int fd)
{
	return fdatasync(fd) < 0 ? -errno : 0;
}

static int libc_fsync(void *ctx, int fd)
{
	return fsync(fd) < 0 ? -errno : 0;
}

static int libc_ftruncate(void *ctx, int fd, off_t len)
{
	return ftruncate(fd, len) < 0 ? -errno : 0;
}

static int libc_close(void *ctx, int fd)
{
	return close(fd) < 0 ? -errno : 0;
}

static int libc_sync_range(void *ctx, int fd, off_t off, off_t n, bool wait)
{
	unsigned flags = wait ? SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
				    SYNC_FILE_RANGE_WAIT_AFTER
			      : SYNC_FILE_RANGE_WRITE;
	return sync_file_range(fd, off, n, flags) < 0 ? -errno : 0;
}

static int libc_drop_cache(void *ctx, int fd, off_t off, off_t n)
{
	return -posix_fadvise(fd, off, n, POSIX_FADV_DONTNEED);
}

static const struct wal_io wal_io_libc_v = {
    .open = libc_open,
    .pwrite = libc_pwrite,
    .pread = libc_pread,
    .fdatasync = libc_fdatasync,
    .fsync = libc_fsync,
    .ftruncate = libc_ftruncate,
    .close = libc_close,
    .sync_range = libc_sync_range,
    .drop_cache = libc_drop_cache,
    .ctx = NULL,
};

const struct wal_io *wal_io_libc(void)
{
	return &wal_io_libc_v;
}

static void delay_sleep(const struct wal_io_delay *d)
{
	struct timespec ts = {.tv_sec = d->sync_delay_us / 1000000u,
			      .tv_nsec = (long)(d->sync_delay_us % 1000000u) * 1000};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
	}
}

#define D(ctx) ((struct wal_io_delay *)(ctx))
static int delay_open(void *ctx, const char *path, int flags, mode_t mode)
{
	return D(ctx)->inner->open(D(ctx)->inner->ctx, path, flags, mode);
}
static ssize_t delay_pwrite(void *ctx, int fd, const void *buf, size_t n, off_t off)
{
	return D(ctx)->inner->pwrite(D(ctx)->inner->ctx, fd, buf, n, off);
}
static ssize_t delay_pread(void *ctx, int fd, void *buf, size_t n, off_t off)
{
	return D(ctx)->inner->pread(D(ctx)->inner->ctx, fd, buf, n, off);
}
static int delay_fdatasync(void *ctx, int fd)
{
	delay_sleep(D(ctx));
	return D(ctx)->inner->fdatasync(D(ctx)->inner->ctx, fd);
}
static int delay_fsync(void *ctx, int fd)
{
	delay_sleep(D(ctx));
	return D(ctx)->inner->fsync(D(ctx)->inner->ctx, fd);
}
static int delay_ftruncate(void *ctx, int fd, off_t len)
{
	return D(ctx)->inner->ftruncate(D(ctx)->inner->ctx, fd, len);
}
static int delay_close(void *ctx, int fd)
{
	return D(ctx)->inner->close(D(ctx)->inner->ctx, fd);
}
/* No delay: a write-back without a cache flush is what the modelled disk does fast. */
static int delay_sync_range(void *ctx, int fd, off_t off, off_t n, bool wait)
{
	return D(ctx)->inner->sync_range(D(ctx)->inner->ctx, fd, off, n, wait);
}
static int delay_drop_cache(void *ctx, int fd, off_t off, off_t n)
{
	return D(ctx)->inner->drop_cache(D(ctx)->inner->ctx, fd, off, n);
}
#undef D

void wal_io_delay_init(struct wal_io_delay *d, const struct wal_io *inner, uint32_t sync_delay_us)
{
	d->inner = inner ? inner : wal_io_libc();
	d->sync_delay_us = sync_delay_us;
	d->io = (struct wal_io){
	    .open = delay_open,
	    .pwrite = delay_pwrite,
	    .pread = delay_pread,
	    .fdatasync = delay_fdatasync,
	    .fsync = delay_fsync,
	    .ftruncate = delay_ftruncate,
	    .close = delay_close,
	    .sync_range = d->inner->sync_range ? delay_sync_range : NULL,
	    .drop_cache = d->inner->drop_cache ? delay_drop_cache : NULL,
	    .ctx = d,
	};
}
