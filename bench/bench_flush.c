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
 * interleaved `--runs` times (default 2), `--seconds` each (default 5); `--mode M` runs one.
 *
 * The latency floor (`--batch-every-us B`): a broker that did nothing but these windows, with
 * no CPU work, no threads to cross and no network, acknowledges a batch that arrived at time a
 * when the first window starting at or after a completes. Batches arrive every B us over the
 * run; their p50/p99/p99.9 from the recorded windows is printed too. No broker with this
 * commit window and durability rule can have a lower tail on the same disk at the same moment
 * (docs/benchmarks.md, "the latency floor").
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

enum mode { M_CONCURRENT, M_SERIAL, M_ONEFLUSH, M_N };
static const char *const mode_name[M_N] = {"concurrent", "serial", "oneflush"};

static int g_fds[FILES_MAX];
static int g_files = 4;
static long g_file_bytes = 64L << 20; /* --file-mb */

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
		for (long o = 0; o < g_file_bytes; o += (long)sizeof zeros)
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

/* Ack latency of batches arriving every `every` us, each acked by the end of the first window
 * starting at or after its arrival (windows in start order). */
static void print_floor(const long *wstart, const long *wend, int n, long every)
{
	static long ack[WINDOWS_MAX * 4];
	int k = 0, w = 0;
	for (long a = wstart[0]; n > 0 && k < WINDOWS_MAX * 4; a += every) {
		while (w < n && wstart[w] < a)
			w++;
		if (w == n)
			break;
		ack[k++] = wend[w] - a;
	}
	if (!k)
		return;
	qsort(ack, (size_t)k, sizeof *ack, cmp_long);
	printf("%-10s %6d batches  floor ack us: p50 %6ld  p99 %6ld  p99.9 %6ld  max %6ld\n", "", k,
	       ack[k / 2], ack[(long)k * 99 / 100], ack[(long)k * 999 / 1000], ack[k - 1]);
}

static void run(enum mode m, int seconds, long block, long gap_us, long every)
{
	static long lat[WINDOWS_MAX], wstart[WINDOWS_MAX], wend[WINDOWS_MAX];
	static char buf[1 << 20];
	memset(buf, 'x', (size_t)block);
	int n = 0;
	long off = 0, end = now_us() + seconds * 1000000L, c0 = cpu_us();
	while (now_us() < end && n < WINDOWS_MAX) {
		if (off + block > g_file_bytes)
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
		wstart[n] = start;
		wend[n] = now_us();
		lat[n] = wend[n] - start;
		n++;
		off += block;
		long next = start + gap_us;
		long left = next - now_us();
		if (left > 0)
			usleep((useconds_t)left);
	}
	long cpu = cpu_us() - c0;
	if (n == 0)
		return;
	qsort(lat, (size_t)n, sizeof *lat, cmp_long);
	printf("%-10s %6d windows  completion us: p50 %6ld  p90 %6ld  p99 %6ld  max %6ld   "
	       "CPU %4ld us per window\n",
	       mode_name[m], n, lat[n / 2], lat[n * 9 / 10], lat[n * 99 / 100], lat[n - 1],
	       cpu / n);
	if (every > 0)
		print_floor(wstart, wend, n, every);
	fflush(stdout);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: bench_flush [--dir DIR] [--files F] [--bytes W] [--gap-us US]\n"
		   "                   [--seconds S] [--runs R] [--mode M] [--batch-every-us B]\n"
		   "                   [--file-mb N]\n"
		   "  one group-commit window over F files: F fdatasyncs at once (concurrent), one\n"
		   "  after the other (serial), or F sync_file_range + 1 fdatasync (oneflush).\n"
		   "  --mode M              run only M (concurrent, serial or oneflush)\n"
		   "  --file-mb N           zero-filled size of each file (default 64); windows wrap\n"
		   "  --batch-every-us B    also print the latency floor: the ack latency of batches\n"
		   "                        arriving every B us if these windows were all a broker did\n"
		   "  DIR must be on the disk under test (default: the current directory).\n");
}

int main(int argc, char **argv)
{
	const char *dir = ".";
	long block = 16384, gap_us = 2000, every = 0;
	int seconds = 5, runs = 2, only = -1;
	static const struct option opts[] = {
	    {"dir", 1, 0, 'd'},     {"files", 1, 0, 'f'}, {"bytes", 1, 0, 'b'},
	    {"gap-us", 1, 0, 'g'},  {"seconds", 1, 0, 's'}, {"runs", 1, 0, 'r'},
	    {"mode", 1, 0, 'm'},    {"batch-every-us", 1, 0, 'e'}, {"file-mb", 1, 0, 'M'},
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
		case 'e': every = atol(optarg); break;
		case 'M': g_file_bytes = atol(optarg) << 20; break;
		case 'm':
			for (int m = 0; m < M_N; m++)
				if (!strcmp(optarg, mode_name[m]))
					only = m;
			if (only < 0) {
				fprintf(stderr, "bench_flush: unknown --mode %s\n", optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (g_files < 1 || g_files > FILES_MAX || block < 512 || block > (1 << 20) ||
	    gap_us < 0 || seconds < 1 || runs < 1 || every < 0 || g_file_bytes < (1L << 20) ||
	    g_file_bytes > (4096L << 20) || block > g_file_bytes) {
		fprintf(stderr, "bench_flush: --files 1..%d, --bytes 512..1048576, --seconds >= 1, "
				"--runs >= 1, --file-mb 1..4096\n", FILES_MAX);
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
			if (only < 0 || only == m)
				run((enum mode)m, seconds, block, gap_us, every);
	pthread_mutex_lock(&g_mu);
	g_stop = 1;
	pthread_cond_broadcast(&g_cv);
	pthread_mutex_unlock(&g_mu);
	for (int i = 0; i < g_files; i++)
		pthread_join(th[i], NULL);
	return 0;
}
