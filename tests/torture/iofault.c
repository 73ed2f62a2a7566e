/*
 * tests/torture/iofault.c — LD_PRELOAD shim (libtorture_iofault.so) that injects I/O faults
 * into a real tallyd, on files under one directory only (docs/reliability.md).
 *
 * It wraps open/openat/creat, pwrite/pwrite64/write/pwritev, fdatasync/fsync,
 * sync_file_range, ftruncate and close. A call on a file whose path (as opened) starts with
 * TORTURE_FAULT_DIR is an *op*; ops are numbered from 1 in the order they start (one global
 * counter, all threads). A sync_file_range that waits (WRITE | WAIT_AFTER) is of the fdatasync
 * kind for TORTURE_FAULT_OP.
 *
 * Environment:
 *   TORTURE_FAULT_DIR    path prefix of the files to act on (e.g. DATA/wal). Unset = inert.
 *   TORTURE_FAULT_MODE   errno (default) | crash | trace
 *   TORTURE_FAULT_OP     which ops count toward AT: any (default) | pwrite | fdatasync
 *   TORTURE_FAULT_AT     the op number (among TORTURE_FAULT_OP ops) where the fault starts
 *   TORTURE_FAULT_COUNT  errno mode: how many ops fail from AT on (default 1; 0 = all later)
 *   TORTURE_FAULT_ERRNO  errno mode: EIO (default) | ENOSPC | SHORT (a pwrite writes only the
 *                        first half of its bytes, at least 1, and returns that count)
 *   TORTURE_FAULT_DROP   errno mode, 1: a failed fdatasync also loses the file's unsynced
 *                        writes (the "fsyncgate" page cache behaviour)
 *   TORTURE_FAULT_SEED   crash mode: seeds the power-loss choices (default 1)
 *   TORTURE_FAULT_LOG    file: one line per op ("trace") and per injected fault
 *   TORTURE_FAULT_EVIL   crash mode, 1: a lying disk that loses the writes covered by the
 *                        last successful fdatasync of each file as well (the suite's
 *                        self-test: the checker must then report lost events)
 *
 * Crash mode = a power loss at op AT: the op itself is done if it is a write (so it is part
 * of the unsynced set), then every write since each file's last successful fdatasync/fsync is
 * reverted and replayed piece by piece (pieces cut at 512-byte boundaries), each piece kept
 * or dropped independently (drop, tear, reorder); space the file grew by is either cut off
 * (size not persisted) or kept with the dropped pieces filled with garbage; a file created
 * since its directory's last fsync may vanish. Then the process SIGKILLs itself.
 *
 * The device cache (the WAL's group flush, docs/reliability.md): a write that a waiting
 * sync_file_range covered is *written back*: on the device, but in its volatile cache, so
 * still lost at a power cut like any unsynced write. A later successful fdatasync/fsync of
 * ANY regular file under the directory flushes the device and makes it durable, but only if
 * it needed no metadata: it overwrote bytes inside the file's size, and no earlier unsynced
 * write of the same file cut the file, touched the same bytes, or grew the file from a size
 * below the write's end (that size or those bytes are not durable yet, so neither is it; a
 * growth further out, as the WAL's zero-fill ahead, leaves the bytes below it alone).
 * Threads: one mutex guards the state; a thread finishing an fdatasync takes it before it
 * returns, so no thread can acknowledge anything once a crash has started.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define FD_MAX 65536
#define PIECE_BYTES 512

enum { M_ERRNO, M_CRASH, M_TRACE };
enum { OP_ANY, OP_PWRITE, OP_FDATASYNC };

struct rec { /* one unsynced write (or truncate) */
	struct rec *next;
	char *path;
	uint64_t seq;
	off_t off;
	size_t n;
	off_t size_before;
	off_t trunc_to; /* -1 for a write */
	uint8_t *old_bytes; /* size n: bytes before the write (those below size_before) */
	uint8_t *new_bytes;
	bool forced_drop; /* EVIL: synced, but the lying disk loses it */
	uint64_t wb_at;   /* 0, or the write-back (sync_file_range) that covered it */
	bool flushed;     /* scratch of flush_device() */
};

struct created {
	struct created *next;
	char *path;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char *fd_path[FD_MAX];
static struct rec *recs, **recs_tail = &recs;
static struct rec *evil_recs; /* EVIL: the writes of each file's last sync */
static struct created *creates;
static uint64_t rec_seq, wb_clock;
static atomic_ulong op_count, op_kind_count;
static int inited, active, mode, op_kind, fault_errno = EIO, drop_on_sync_fail, evil;
static unsigned long fault_at, fault_count = 1;
static uint64_t rng;
static char prefix[4096];
static size_t prefix_len;
static int log_fd = -1;

static int (*r_open)(const char *, int, ...);
static int (*r_openat)(int, const char *, int, ...);
static ssize_t (*r_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*r_pread)(int, void *, size_t, off_t);
static ssize_t (*r_write)(int, const void *, size_t);
static ssize_t (*r_pwritev)(int, const struct iovec *, int, off_t);
static int (*r_fdatasync)(int);
static int (*r_fsync)(int);
static int (*r_ftruncate)(int, off_t);
static int (*r_sync_file_range)(int, off_t, off_t, unsigned int);
static int (*r_close)(int);

static void init(void)
{
	if (__atomic_load_n(&inited, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&mu);
	if (!inited) {
		r_open = dlsym(RTLD_NEXT, "open");
		r_openat = dlsym(RTLD_NEXT, "openat");
		r_pwrite = dlsym(RTLD_NEXT, "pwrite");
		r_pread = dlsym(RTLD_NEXT, "pread");
		r_write = dlsym(RTLD_NEXT, "write");
		r_pwritev = dlsym(RTLD_NEXT, "pwritev");
		r_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
		r_fsync = dlsym(RTLD_NEXT, "fsync");
		r_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
		r_sync_file_range = dlsym(RTLD_NEXT, "sync_file_range");
		r_close = dlsym(RTLD_NEXT, "close");
		const char *d = getenv("TORTURE_FAULT_DIR");
		if (d && *d) {
			snprintf(prefix, sizeof prefix, "%s", d);
			prefix_len = strlen(prefix);
			active = 1;
		}
		const char *m = getenv("TORTURE_FAULT_MODE");
		mode = m && !strcmp(m, "crash") ? M_CRASH : m && !strcmp(m, "trace") ? M_TRACE : M_ERRNO;
		const char *o = getenv("TORTURE_FAULT_OP");
		op_kind = o && !strcmp(o, "pwrite")	     ? OP_PWRITE
			  : o && !strcmp(o, "fdatasync") ? OP_FDATASYNC
							 : OP_ANY;
		const char *s;
		if ((s = getenv("TORTURE_FAULT_AT")))
			fault_at = strtoul(s, NULL, 10);
		if ((s = getenv("TORTURE_FAULT_COUNT")))
			fault_count = strtoul(s, NULL, 10);
		if ((s = getenv("TORTURE_FAULT_ERRNO")) && !strcmp(s, "ENOSPC"))
			fault_errno = ENOSPC;
		if ((s = getenv("TORTURE_FAULT_ERRNO")) && !strcmp(s, "SHORT"))
			fault_errno = -1;
		if ((s = getenv("TORTURE_FAULT_DROP")))
			drop_on_sync_fail = atoi(s);
		if ((s = getenv("TORTURE_FAULT_EVIL")))
			evil = atoi(s);
		rng = (s = getenv("TORTURE_FAULT_SEED")) ? strtoull(s, NULL, 10) : 1;
		rng = rng * 0x9E3779B97F4A7C15ull + 1;
		if ((s = getenv("TORTURE_FAULT_LOG")))
			log_fd = r_open(s, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		__atomic_store_n(&inited, 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&mu);
}

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void logf_(const char *fmt, ...)
{
	if (log_fd < 0)
		return;
	char b[4600];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof b, fmt, ap);
	va_end(ap);
	if (n > 0)
		(void)!r_write(log_fd, b, (size_t)n < sizeof b ? (size_t)n : sizeof b - 1);
}

static bool tracked(int fd)
{
	return active && fd >= 0 && fd < FD_MAX && fd_path[fd];
}

/* Numbers an op; true if the fault starts/continues at it. */
static bool op_hits(int kind, const char *what, const char *path)
{
	unsigned long n = atomic_fetch_add(&op_count, 1) + 1;
	unsigned long k = n;
	if (op_kind != OP_ANY) {
		if (kind != op_kind)
			return false;
		k = atomic_fetch_add(&op_kind_count, 1) + 1;
	}
	if (mode == M_TRACE) {
		logf_("op %lu %s %s\n", n, what, path);
		return false;
	}
	if (!fault_at || k < fault_at)
		return false;
	if (mode == M_ERRNO && fault_count && k >= fault_at + fault_count)
		return false;
	logf_("fault at op %lu (%s #%lu) %s %s\n", n, mode == M_CRASH ? "crash" : "errno", k, what,
	      path);
	return true;
}

static void rec_add(const char *path, int fd, off_t off, const void *buf, size_t n, off_t trunc)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return;
	struct rec *r = calloc(1, sizeof *r);
	r->path = strdup(path);
	r->seq = ++rec_seq;
	r->off = off;
	r->n = n;
	r->size_before = st.st_size;
	r->trunc_to = trunc;
	if (trunc >= 0) { /* a truncate: keep what it cuts off */
		if (trunc < st.st_size) {
			r->off = trunc;
			r->n = (size_t)(st.st_size - trunc);
		} else {
			r->n = 0;
		}
	}
	r->old_bytes = calloc(1, r->n ? r->n : 1);
	if (r->off < st.st_size)
		(void)!r_pread(fd, r->old_bytes, r->n, r->off);
	if (trunc < 0) {
		r->new_bytes = malloc(n ? n : 1);
		memcpy(r->new_bytes, buf, n);
	}
	*recs_tail = r;
	recs_tail = &r->next;
}

static void recs_drop_synced(const char *path, uint64_t seq_before)
{
	struct rec **pp = &recs;
	recs_tail = &recs;
	while (*pp) {
		struct rec *r = *pp;
		if (!strcmp(r->path, path) && r->seq < seq_before) {
			*pp = r->next;
			free(r->path), free(r->old_bytes), free(r->new_bytes), free(r);
			continue;
		}
		pp = &r->next;
		recs_tail = pp;
	}
}

/* EVIL: the lying disk forgets the writes it had kept for `path` before this sync. */
static void evil_forget(const char *path)
{
	for (struct rec **pp = &evil_recs; *pp;) {
		struct rec *r = *pp;
		if (!strcmp(r->path, path)) {
			*pp = r->next;
			free(r->path), free(r->old_bytes), free(r->new_bytes), free(r);
		} else {
			pp = &r->next;
		}
	}
}

static bool overlaps(const struct rec *a, const struct rec *b)
{
	return a->off < b->off + (off_t)b->n && b->off < a->off + (off_t)a->n;
}

/*
 * A device cache flush (a successful fdatasync/fsync of a regular file, started when wb_clock
 * was wb_before): every written-back write that needed no metadata is now durable (see the
 * file comment). With mu held.
 */
static void flush_device(uint64_t wb_before)
{
	for (struct rec *r = recs; r; r = r->next) {
		r->flushed = false;
		if (!r->wb_at || r->wb_at > wb_before || r->trunc_to >= 0 ||
		    r->off + (off_t)r->n > r->size_before)
			continue;
		bool blocked = false;
		for (struct rec *q = recs; q != r && !blocked; q = q->next)
			if (!strcmp(q->path, r->path) && !q->flushed &&
			    (q->trunc_to >= 0 || overlaps(q, r) ||
			     (q->off + (off_t)q->n > q->size_before &&
			      r->off + (off_t)r->n > q->size_before)))
				blocked = true;
		r->flushed = !blocked;
	}
	for (struct rec **pp = &recs; *pp;) {
		struct rec *r = *pp;
		if (!r->flushed) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		r->next = NULL;
		logf_("device flush: %s bytes %lld..%lld durable (written back)\n", r->path,
		      (long long)r->off, (long long)(r->off + (off_t)r->n));
		if (evil) { /* kept as this file's latest synced writes: lost at the cut */
			bool fresh = true;
			for (struct rec *e = evil_recs; e; e = e->next)
				if (!strcmp(e->path, r->path) && e->wb_at == UINT64_MAX)
					fresh = false;
			if (fresh)
				evil_forget(r->path);
			r->forced_drop = true;
			r->wb_at = UINT64_MAX; /* marks "taken by this flush" until the next */
			struct rec **tail = &evil_recs;
			while (*tail)
				tail = &(*tail)->next;
			*tail = r;
		} else {
			free(r->path), free(r->old_bytes), free(r->new_bytes), free(r);
		}
	}
	for (struct rec *e = evil_recs; e; e = e->next)
		if (e->wb_at == UINT64_MAX)
			e->wb_at = 0;
	recs_tail = &recs;
	while (*recs_tail)
		recs_tail = &(*recs_tail)->next;
}

/* Reverts every unsynced write of `path`, newest first; returns the size before them all. */
static off_t revert_path(int fd, const char *path)
{
	size_t n = 0;
	for (struct rec *r = recs; r; r = r->next)
		n += !strcmp(r->path, path);
	if (!n)
		return -1;
	struct rec **list = malloc(n * sizeof *list);
	n = 0;
	for (struct rec *r = recs; r; r = r->next)
		if (!strcmp(r->path, path))
			list[n++] = r;
	for (size_t i = n; i-- > 0;) {
		struct rec *r = list[i];
		if (r->trunc_to >= 0) {
			if (r->n) {
				(void)!r_ftruncate(fd, r->size_before);
				(void)!r_pwrite(fd, r->old_bytes, r->n, r->off);
			}
			continue;
		}
		if (r->off < r->size_before) {
			size_t k = (size_t)(r->size_before - r->off) < r->n ? (size_t)(r->size_before - r->off) : r->n;
			(void)!r_pwrite(fd, r->old_bytes, k, r->off);
		}
		(void)!r_ftruncate(fd, r->size_before);
	}
	off_t orig = list[0]->size_before;
	free(list);
	return orig;
}

/* The power loss: see the file comment. Called with mu held; never returns. */
static void power_loss(void)
{
	if (evil_recs) { /* older than every pending write: they go first */
		struct rec *t = evil_recs;
		while (t->next)
			t = t->next;
		t->next = recs;
		recs = evil_recs;
		evil_recs = NULL;
	}
	/* Distinct paths with unsynced writes. */
	for (struct rec *r = recs; r; r = r->next) {
		bool first = true;
		for (struct rec *q = recs; q != r; q = q->next)
			if (!strcmp(q->path, r->path))
				first = false;
		if (!first)
			continue;
		int fd = r_open(r->path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		off_t orig = revert_path(fd, r->path);
		bool size_kept = rnd() & 1;
		off_t end = orig;
		unsigned kept = 0, dropped = 0;
		for (struct rec *q = r; q; q = q->next) {
			if (strcmp(q->path, r->path))
				continue;
			if (q->trunc_to >= 0) {
				if (rnd() & 1) {
					(void)!r_ftruncate(fd, q->trunc_to);
					end = q->trunc_to;
				}
				continue;
			}
			off_t a = q->off, stop = q->off + (off_t)q->n;
			while (a < stop) {
				off_t b = (a / PIECE_BYTES + 1) * PIECE_BYTES;
				if (b > stop)
					b = stop;
				const uint8_t *src = q->new_bytes + (a - q->off);
				uint8_t garbage[PIECE_BYTES];
				if (!q->forced_drop && rnd() % 4 != 0) { /* kept */
					(void)!r_pwrite(fd, src, (size_t)(b - a), a);
					kept++;
				} else {
					dropped++;
					if (size_kept && b > orig) { /* grown space: garbage */
						off_t g = a > orig ? a : orig;
						for (off_t i = 0; i < b - g; i++)
							garbage[i] = (uint8_t)rnd();
						(void)!r_pwrite(fd, garbage, (size_t)(b - g), g);
					}
				}
				if (b > end)
					end = b;
				a = b;
			}
		}
		if (!size_kept)
			(void)!r_ftruncate(fd, orig);
		logf_("power loss: %s kept %u dropped %u pieces, size %s (%lld -> %lld)\n", r->path,
		      kept, dropped, size_kept ? "kept" : "cut", (long long)orig,
		      (long long)(size_kept ? end : orig));
		(void)!r_fsync(fd);
		r_close(fd);
	}
	for (struct created *c = creates; c; c = c->next)
		if (rnd() & 1) {
			logf_("power loss: %s vanishes (directory not synced)\n", c->path);
			unlink(c->path);
		}
	raise(SIGKILL);
	for (;;)
		pause();
}

static void on_open(int fd, const char *path, int flags, bool existed)
{
	if (fd < 0 || fd >= FD_MAX || !active || strncmp(path, prefix, prefix_len))
		return;
	pthread_mutex_lock(&mu);
	free(fd_path[fd]);
	fd_path[fd] = strdup(path);
	if ((flags & O_CREAT) && !existed) {
		struct created *c = calloc(1, sizeof *c);
		c->path = strdup(path);
		c->next = creates;
		creates = c;
	}
	pthread_mutex_unlock(&mu);
	if ((flags & O_CREAT) && !existed && op_hits(OP_ANY, "create", path) && mode == M_CRASH) {
		pthread_mutex_lock(&mu);
		power_loss();
	}
}

static int do_open(int dirfd, const char *path, int flags, mode_t m, bool at)
{
	init();
	bool existed = active && (flags & O_CREAT) && access(path, F_OK) == 0;
	int fd = at ? r_openat(dirfd, path, flags, m) : r_open(path, flags, m);
	if (fd >= 0)
		on_open(fd, path, flags, existed); /* paths compared as given (tallyd's --data) */
	return fd;
}

int open(const char *path, int flags, ...)
{
	mode_t m = 0;
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		m = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	return do_open(AT_FDCWD, path, flags, m, false);
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t m = 0;
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		m = (mode_t)va_arg(ap, int);
		va_end(ap);
	}
	return do_open(dirfd, path, flags, m, true);
}
int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

static ssize_t do_write(int fd, const void *buf, size_t n, off_t off, bool positional)
{
	init();
	if (!tracked(fd))
		return positional ? r_pwrite(fd, buf, n, off) : r_write(fd, buf, n);
	bool hit = op_hits(OP_PWRITE, "pwrite", fd_path[fd]);
	if (hit && mode == M_ERRNO && fault_errno > 0) {
		errno = fault_errno;
		return -1;
	}
	if (hit && mode == M_ERRNO && n > 1)
		n = n / 2; /* SHORT: a partial write, reported as such */
	pthread_mutex_lock(&mu);
	if (!positional)
		off = lseek(fd, 0, SEEK_CUR);
	if (mode == M_CRASH || drop_on_sync_fail)
		rec_add(fd_path[fd], fd, off, buf, n, -1);
	ssize_t k = positional ? r_pwrite(fd, buf, n, off) : r_write(fd, buf, n);
	int e = errno;
	if (hit && mode == M_CRASH)
		power_loss();
	pthread_mutex_unlock(&mu);
	errno = e;
	return k;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	return do_write(fd, buf, n, off, true);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) __attribute__((alias("pwrite")));

ssize_t write(int fd, const void *buf, size_t n)
{
	return do_write(fd, buf, n, 0, false);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
	init();
	if (!tracked(fd))
		return r_pwritev(fd, iov, cnt, off);
	/* Flatten: the WAL does not use it, but keep the model exact if something does. */
	size_t total = 0;
	for (int i = 0; i < cnt; i++)
		total += iov[i].iov_len;
	uint8_t *b = malloc(total ? total : 1);
	size_t at = 0;
	for (int i = 0; i < cnt; i++) {
		memcpy(b + at, iov[i].iov_base, iov[i].iov_len);
		at += iov[i].iov_len;
	}
	ssize_t k = do_write(fd, b, total, off, true);
	free(b);
	return k;
}

/* TORTURE_FAULT_DROP: a failed sync (or write-back) loses the file's unsynced writes. */
static void drop_unsynced(const char *path, const char *what)
{
	pthread_mutex_lock(&mu);
	int wfd = r_open(path, O_RDWR | O_CLOEXEC);
	if (wfd >= 0) {
		off_t o = revert_path(wfd, path);
		logf_("%s failure drops the unsynced writes of %s (back to %lld bytes)\n", what, path,
		      (long long)o);
		r_close(wfd);
	}
	recs_drop_synced(path, UINT64_MAX);
	pthread_mutex_unlock(&mu);
}

static int do_sync(int fd, bool data_only)
{
	init();
	if (!tracked(fd))
		return data_only ? r_fdatasync(fd) : r_fsync(fd);
	const char *path = fd_path[fd];
	bool hit = op_hits(OP_FDATASYNC, data_only ? "fdatasync" : "fsync", path);
	if (hit && mode == M_CRASH) {
		pthread_mutex_lock(&mu);
		power_loss();
	}
	if (hit && mode == M_ERRNO) {
		if (drop_on_sync_fail)
			drop_unsynced(path, "fsync");
		errno = EIO;
		return -1;
	}
	pthread_mutex_lock(&mu);
	uint64_t before = rec_seq + 1, wb_before = wb_clock;
	pthread_mutex_unlock(&mu);
	int rc = data_only ? r_fdatasync(fd) : r_fsync(fd);
	int e = errno;
	/* Taken before returning: once a crash holds mu, no sync completes, nothing is acked. */
	pthread_mutex_lock(&mu);
	if (rc == 0 && evil) {
		/* The lying disk: forget the previous sync's writes of this file, keep this one's. */
		evil_forget(path);
		struct rec **tail = &evil_recs;
		while (*tail)
			tail = &(*tail)->next;
		for (struct rec **pp = &recs; *pp;) {
			struct rec *r = *pp;
			if (!strcmp(r->path, path) && r->seq < before) {
				*pp = r->next;
				r->next = NULL;
				r->forced_drop = true;
				*tail = r;
				tail = &r->next;
			} else {
				pp = &r->next;
			}
		}
		recs_tail = &recs;
		while (*recs_tail)
			recs_tail = &(*recs_tail)->next;
	}
	if (rc == 0) {
		if (!evil)
			recs_drop_synced(path, before);
		struct stat st;
		if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
			flush_device(wb_before);
		if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
			size_t pl = strlen(path);
			for (struct created **cp = &creates; *cp;) {
				struct created *c = *cp;
				if (!strncmp(c->path, path, pl) && c->path[pl] == '/' &&
				    !strchr(c->path + pl + 1, '/')) {
					*cp = c->next;
					free(c->path), free(c);
				} else {
					cp = &c->next;
				}
			}
		}
	}
	pthread_mutex_unlock(&mu);
	errno = e;
	return rc;
}

int fdatasync(int fd)
{
	return do_sync(fd, true);
}

int fsync(int fd)
{
	return do_sync(fd, false);
}

int sync_file_range(int fd, off_t off, off_t n, unsigned int flags)
{
	init();
	if (!tracked(fd))
		return r_sync_file_range(fd, off, n, flags);
	const char *path = fd_path[fd];
	bool waits = (flags & SYNC_FILE_RANGE_WRITE) && (flags & SYNC_FILE_RANGE_WAIT_AFTER);
	bool hit = op_hits(waits ? OP_FDATASYNC : OP_ANY, waits ? "sync_file_range" :
				   "sync_file_range-start", path);
	if (hit && mode == M_CRASH) {
		pthread_mutex_lock(&mu);
		power_loss();
	}
	if (hit && mode == M_ERRNO && waits) {
		if (drop_on_sync_fail) /* a failed write-back loses the pages, as fsyncgate */
			drop_unsynced(path, "write-back");
		errno = EIO;
		return -1;
	}
	pthread_mutex_lock(&mu);
	uint64_t before = rec_seq + 1; /* writes started later may miss this write-back */
	pthread_mutex_unlock(&mu);
	int rc = r_sync_file_range(fd, off, n, flags);
	int e = errno;
	if (rc == 0 && waits) {
		pthread_mutex_lock(&mu);
		uint64_t t = ++wb_clock;
		off_t end = n ? off + n : (off_t)INT64_MAX;
		for (struct rec *r = recs; r; r = r->next)
			if (!strcmp(r->path, path) && r->seq < before && r->trunc_to < 0 &&
			    !r->wb_at && r->off >= off && r->off + (off_t)r->n <= end)
				r->wb_at = t;
		pthread_mutex_unlock(&mu);
	}
	errno = e;
	return rc;
}

int ftruncate(int fd, off_t len)
{
	init();
	if (!tracked(fd))
		return r_ftruncate(fd, len);
	bool hit = op_hits(OP_ANY, "ftruncate", fd_path[fd]);
	pthread_mutex_lock(&mu);
	if (mode == M_CRASH || drop_on_sync_fail)
		rec_add(fd_path[fd], fd, 0, NULL, 0, len);
	int rc = r_ftruncate(fd, len);
	int e = errno;
	if (hit && mode == M_CRASH)
		power_loss();
	pthread_mutex_unlock(&mu);
	errno = e;
	return rc;
}
int ftruncate64(int fd, off_t len) __attribute__((alias("ftruncate")));

int close(int fd)
{
	init();
	if (fd >= 0 && fd < FD_MAX && fd_path[fd]) {
		pthread_mutex_lock(&mu);
		free(fd_path[fd]);
		fd_path[fd] = NULL;
		pthread_mutex_unlock(&mu);
	}
	return r_close(fd);
}
