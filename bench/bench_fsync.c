/*
 * bench_fsync — fdatasync latency of the WAL's write pattern, and what preallocation does to it.
 *
 * N threads (default 8, like tallyd's 8 shard syncers) each write W bytes (default 16 KiB, a
 * group commit) at the end of their own file and fdatasync it, I times. Modes:
 *   append    the file grows with every write (what the WAL does today): each fdatasync must
 *             also commit the inode's new size, i.e. an ext4 journal commit, which all files of
 *             the file system share;
 *   zerofill  the file was first filled with written zeros (PostgreSQL's WAL segments):
 *             overwrites need no metadata, fdatasync flushes data only;
 *   fallocate the space was fallocate()d (size set, extents unwritten): converting an
 *             unwritten extent on write is metadata again;
 *   keepsize  fallocate(FALLOC_FL_KEEP_SIZE): blocks reserved, the size still grows.
 * Prints p50/p90/p99/p99.9/max per mode. Figures: docs/benchmarks.md "fdatasync and
 * preallocation".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum mode { M_APPEND, M_ZEROFILL, M_FALLOCATE, M_KEEPSIZE, M_N };
static const char *const mode_name[M_N] = {"append", "zerofill", "fallocate", "keepsize"};

static const char *dir = ".";
static int nthreads = 8, iters = 1500;
static size_t wbytes = 16384;
static enum mode mode;
static long *lat; /* [thread][iter] microseconds */

static long now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000L + t.tv_nsec / 1000;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void *worker(void *arg)
{
	long id = (long)arg;
	char path[4200];
	snprintf(path, sizeof path, "%s/bench_fsync.%d.%ld", dir, (int)getpid(), id);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die(path);
	off_t total = (off_t)wbytes * iters;
	if (mode == M_ZEROFILL) {
		size_t chunk = 1 << 20;
		char *z = calloc(1, chunk);
		for (off_t o = 0; o < total; o += (off_t)chunk)
			if (pwrite(fd, z, chunk, o) != (ssize_t)chunk)
				die("pwrite zeros");
		free(z);
	} else if (mode == M_FALLOCATE || mode == M_KEEPSIZE) {
		if (fallocate(fd, mode == M_KEEPSIZE ? FALLOC_FL_KEEP_SIZE : 0, 0, total) != 0)
			die("fallocate");
	}
	if (fsync(fd) != 0)
		die("fsync");
	char *buf = malloc(wbytes);
	memset(buf, 'x', wbytes);
	for (int i = 0; i < iters; i++) {
		if (pwrite(fd, buf, wbytes, (off_t)i * (off_t)wbytes) != (ssize_t)wbytes)
			die("pwrite");
		long t0 = now_us();
		if (fdatasync(fd) != 0)
			die("fdatasync");
		lat[id * iters + i] = now_us() - t0;
	}
	free(buf);
	close(fd);
	unlink(path);
	return NULL;
}

static int cmp_long(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;
	return x < y ? -1 : x > y;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench_fsync [--dir DIR] [--threads N] [--iters I] [--bytes W] [--runs R]\n"
		   "  fdatasync latency per mode (append, zerofill, fallocate, keepsize), modes\n"
		   "  interleaved R times (default 2). DIR must be on the disk under test\n"
		   "  (default: the current directory).\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {{"dir", 1, 0, 'd'},   {"threads", 1, 0, 't'},
					   {"iters", 1, 0, 'i'}, {"bytes", 1, 0, 'b'},
					   {"runs", 1, 0, 'r'},  {"help", 0, 0, 'h'},
					   {0, 0, 0, 0}};
	int c, runs = 2;
	while ((c = getopt_long(argc, argv, "d:t:i:b:r:h", lo, NULL)) != -1) {
		switch (c) {
		case 'd': dir = optarg; break;
		case 't': nthreads = atoi(optarg); break;
		case 'i': iters = atoi(optarg); break;
		case 'b': wbytes = strtoul(optarg, NULL, 10); break;
		case 'r': runs = atoi(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (nthreads < 1 || nthreads > 256 || iters < 10 || wbytes < 512 || runs < 1) {
		usage(stderr);
		return 2;
	}
	lat = calloc((size_t)nthreads * iters, sizeof *lat);
	pthread_t *th = calloc((size_t)nthreads, sizeof *th);
	printf("%d threads x %d fdatasyncs of %zu-byte writes each, in %s\n", nthreads, iters,
	       wbytes, dir);
	for (int r = 0; r < runs; r++)
		for (mode = 0; mode < M_N; mode++) {
			for (long i = 0; i < nthreads; i++)
				pthread_create(&th[i], NULL, worker, (void *)i);
			for (int i = 0; i < nthreads; i++)
				pthread_join(th[i], NULL);
			size_t n = (size_t)nthreads * iters;
			qsort(lat, n, sizeof *lat, cmp_long);
			printf("%-9s fdatasync us: p50 %6ld  p90 %6ld  p99 %6ld  p99.9 %6ld  max %6ld\n",
			       mode_name[mode], lat[n / 2], lat[n * 9 / 10], lat[n * 99 / 100],
			       lat[n * 999 / 1000], lat[n - 1]);
			fflush(stdout);
		}
	free(th);
	free(lat);
	return 0;
}
