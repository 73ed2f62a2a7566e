/*
 * bench_flush — what one group-commit window costs when a worker's shards each fdatasync, and
 * what it would cost with one device flush for all of them.
 *
 * F files (default 4: one worker's shards with 8 shards on 2 threads), each zero-filled and
 * synced first (the WAL's prefill: later writes overwrite allocated, initialised space). Each
 * window writes W bytes (default 16 KiB) at the same offset of every file, then makes them
 * durable one of three ways:
 *   concurrent  one fdatasync per file, from F persistent threads at once (tallyd today: a
 *               syncer thread per shard);
 *   serial      one fdatasync per file, one after the other, from one thread;
 *   oneflush    sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER) on each file's new bytes,
 *               then a single fdatasync of the first file, whose device cache flush covers
 *               every write completed before it. Only valid for data inside space whose
 *               allocation and size are already durable, on one file system — a design
 *               candidate, not what tallyd does (docs/benchmarks.md, session 4).
 * A window starts every `--gap-us` (default 2000) microseconds. Prints, per mode, the window's
 * completion time (p50/p90/p99/max) and the process CPU (user + system) per window. Modes are
 * interleaved `--runs` times (default 2), `--seconds` each (default 5).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define FILES_MAX 64
#define WINDOWS_MAX 200000
#define FILE_BYTES (64L << 20)

enum mode { M_CONCURRENT, M_SERIAL, M_ONEFLUSH, M_N };
static const char *const mode_name[M_N] = {"concurrent", "serial", "oneflush"};

static int g_fds[FILES_MAX];
static int g_files = 4;

/* Persistent syncer threads for `concurrent`: each waits for a new window number. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static long g_window, g_done;
static int g_stop;

static long now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000L + t.tv_nsec / 1000;
}

static long cpu_us(void)
{
	struct rusage r;
	getrusage(RUSAGE_SELF, &r);
	return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1000000L + r.ru_utime.tv_usec +
	       r.ru_stime.tv_usec;
}

static void *syncer(void *arg)
{
	int fd = g_fds[(long)arg];
	long seen = 0;
	for (;;) {
		pthread_mutex_lock(&g_mu);
		while (g_window == seen && !g_stop)
			pthread_cond_wait(&g_cv, &g_mu);
		if (g_stop) {
			pthread_mutex_unlock(&g_mu);
			return NULL;
		}
		seen = g_window;
		pthread_mutex_unlock(&g_mu);
		if (fdatasync(fd) != 0)
			perror("fdatasync");
		pthread_mutex_lock(&g_mu);
		g_done++;
		pthread_cond_broadcast(&g_cv);
		pthread_mutex_unlock(&g_mu);
	}
}

static int cmp_long(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;
	return x < y ? -1 : x > y;
}

static int open_files(const char *dir)
{
	static char zeros[1 << 20];
	for (int i = 0; i < g_files; i++) {
		char path[4096];
		snprintf(path, sizeof path, "%s/bench_flush.%d", dir, i);
		g_fds[i] = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (g_fds[i] < 0) {
			perror(path);
			return -1;
		}
		unlink(path); /* gone when closed */
		for (long o = 0; o < FILE_BYTES; o += (long)sizeof zeros)
			if (pwrite(g_fds[i], zeros, sizeof zeros, o) != (ssize_t)sizeof zeros) {
				perror("pwrite zeros");
				return -1;
			}
		if (fdatasync(g_fds[i]) != 0) {
			perror("fdatasync");
			return -1;
		}
	}
	return 0;
}

static void run(enum mode m, int seconds, long block, long gap_us)
{
	static long lat[WINDOWS_MAX];
	static char buf[1 << 20];
	memset(buf, 'x', (size_t)block);
	int n = 0;
	long off = 0, end = now_us() + seconds * 1000000L, c0 = cpu_us();
	while (now_us() < end && n < WINDOWS_MAX) {
		if (off + block > FILE_BYTES)
			off = 0; /* still inside the zero-filled, synced space */
		long start = now_us();
		for (int i = 0; i < g_files; i++)
			if (pwrite(g_fds[i], buf, (size_t)block, off) != (ssize_t)block)
				perror("pwrite");
		if (m == M_CONCURRENT) {
			pthread_mutex_lock(&g_mu);
			long target = g_done + g_files;
			g_window++;
			pthread_cond_broadcast(&g_cv);
			while (g_done < target)
				pthread_cond_wait(&g_cv, &g_mu);
			pthread_mutex_unlock(&g_mu);
		} else if (m == M_SERIAL) {
			for (int i = 0; i < g_files; i++)
				if (fdatasync(g_fds[i]) != 0)
					perror("fdatasync");
		} else {
			for (int i = 0; i < g_files; i++) /* start every write, then wait for each */
				sync_file_range(g_fds[i], off, block,
						SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE);
			for (int i = 0; i < g_files; i++)
				sync_file_range(g_fds[i], off, block,
						SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
						    SYNC_FILE_RANGE_WAIT_AFTER);
			if (fdatasync(g_fds[0]) != 0)
				perror("fdatasync");
		}
		lat[n++] = now_us() - start;
		off += block;
		long next = start + gap_us;
		long left = next - now_us();
		if (left > 0)
			usleep((useconds_t)left);
	}
	long cpu = cpu_us() - c0;
	qsort(lat, (size_t)n, sizeof *lat, cmp_long);
	printf("%-10s %6d windows  completion us: p50 %6ld  p90 %6ld  p99 %6ld  max %6ld   "
	       "CPU %4ld us per window\n",
	       mode_name[m], n, lat[n / 2], lat[n * 9 / 10], lat[n * 99 / 100], lat[n - 1],
	       n ? cpu / n : 0);
	fflush(stdout);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench_flush [--dir DIR] [--files F] [--bytes W] [--gap-us US]\n"
		   "                   [--seconds S] [--runs R]\n"
		   "  one group-commit window over F files: F fdatasyncs at once (concurrent), one\n"
		   "  after the other (serial), or F sync_file_range + 1 fdatasync (oneflush).\n"
		   "  DIR must be on the disk under test (default: the current directory).\n");
}

int main(int argc, char **argv)
{
	const char *dir = ".";
	long block = 16384, gap_us = 2000;
	int seconds = 5, runs = 2;
	static const struct option opts[] = {
	    {"dir", 1, 0, 'd'},     {"files", 1, 0, 'f'}, {"bytes", 1, 0, 'b'},
	    {"gap-us", 1, 0, 'g'},  {"seconds", 1, 0, 's'}, {"runs", 1, 0, 'r'},
	    {"help", 0, 0, 'h'},    {0, 0, 0, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'd': dir = optarg; break;
		case 'f': g_files = atoi(optarg); break;
		case 'b': block = atol(optarg); break;
		case 'g': gap_us = atol(optarg); break;
		case 's': seconds = atoi(optarg); break;
		case 'r': runs = atoi(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (g_files < 1 || g_files > FILES_MAX || block < 512 || block > (1 << 20) ||
	    gap_us < 0 || seconds < 1 || runs < 1) {
		fprintf(stderr, "bench_flush: --files 1..%d, --bytes 512..1048576, --seconds >= 1, "
				"--runs >= 1\n", FILES_MAX);
		return 2;
	}
	if (open_files(dir) < 0)
		return 1;
	pthread_t th[FILES_MAX];
	for (long i = 0; i < g_files; i++)
		pthread_create(&th[i], NULL, syncer, (void *)i);
	printf("%d files x %ld-byte writes per window, a window every %ld us, in %s\n", g_files,
	       block, gap_us, dir);
	for (int r = 0; r < runs; r++)
		for (int m = 0; m < M_N; m++)
			run((enum mode)m, seconds, block, gap_us);
	pthread_mutex_lock(&g_mu);
	g_stop = 1;
	pthread_cond_broadcast(&g_cv);
	pthread_mutex_unlock(&g_mu);
	for (int i = 0; i < g_files; i++)
		pthread_join(th[i], NULL);
	return 0;
}
