/*
 * tests/test_rate_e2e.c — rating end to end through a real tallyd: events sent with
 * `tally send` (out of order, then the same lines twice more: duplicates), an event at the
 * last moment of a period arriving within the grace window and one arriving after it, then
 * tally-rate --once on tallyd's data directory.
 *
 * Shows: duplicates and arrival order do not change totals; the within-grace event lands in
 * its period; the after-grace event becomes an adjustment on the next invoice (or, if that
 * one is still open, in usage.json) and is in the late-arrival report; --from-scratch gives
 * byte-identical invoices. Which of the two edge events is late is decided from the ingest
 * times tallyd actually recorded (read back from the WAL), so a slow machine changes the
 * expectation, not the verdict. Periods are 2 s with a 5 s grace window; the test takes
 * about 10 s.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rate_testlib.h"
#include "tally/rate.h"
#include "tally/wal.h"

#define PERIOD_S 2
#define GRACE_S  5
#define NEVENTS  300

static char g_dir[128], g_bin[1024];
static unsigned g_port;

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_until(int64_t t_us)
{
	int64_t d;
	while ((d = t_us - now_us()) > 0) {
		struct timespec ts = {d / 1000000, (d % 1000000) * 1000};
		nanosleep(&ts, NULL);
	}
}

static pid_t start_tallyd(void)
{
	char exe[1100], data[256], portf[256], logf[256];
	snprintf(exe, sizeof exe, "%s/tallyd", g_bin);
	snprintf(data, sizeof data, "%s/data", g_dir);
	snprintf(portf, sizeof portf, "%s/port", g_dir);
	snprintf(logf, sizeof logf, "%s/tallyd.log", g_dir);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 2);
			close(fd);
		}
		execl(exe, exe, "--listen", "127.0.0.1:0", "--data", data, "--port-file", portf,
		      "--io", "epoll", "--threads", "1", "--shards", "2", "--expected-keys", "65536",
		      (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		FILE *f = fopen(portf, "r");
		if (f) {
			if (fscanf(f, "%u", &g_port) == 1 && g_port) {
				fclose(f);
				return pid;
			}
			fclose(f);
		}
		usleep(20000);
	}
	kill(pid, SIGKILL);
	return -1;
}

/* Writes lines to FILE and sends them; returns tally send's exit status. */
static int send_lines(const char *name, const char *lines)
{
	char path[256], cmd[2048];
	snprintf(path, sizeof path, "%s/%s", g_dir, name);
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	fputs(lines, f);
	fclose(f);
	snprintf(cmd, sizeof cmd, "%s/tally send --connect 127.0.0.1:%u --quiet %s >>%s/send.log 2>&1",
		 g_bin, g_port, path, g_dir);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void line(char **buf, size_t *len, size_t *cap, const char *key, const char *cust,
		 int64_t t_us)
{
	char l[256];
	int n = snprintf(l, sizeof l,
			 "{\"event_id\":\"%s\",\"customer_id\":\"%s\",\"event_name\":\"api.call\","
			 "\"timestamp_us\":%lld}\n",
			 key, cust, (long long)t_us);
	if (*len + (size_t)n + 1 > *cap) {
		*cap = (*cap + (size_t)n + 1) * 2;
		*buf = realloc(*buf, *cap);
	}
	memcpy(*buf + *len, l, (size_t)n + 1);
	*len += (size_t)n;
}

/* Ingest time tallyd recorded for the event with this key (from the WAL), or INT64_MIN. */
static int64_t ingest_of(const char *key)
{
	char data[256];
	snprintf(data, sizeof data, "%s/data", g_dir);
	struct wal_reader *r;
	struct wal_record rec;
	int64_t t = INT64_MIN;
	if (wal_reader_open(data, -1, &r) != 0 || wal_reader_seek_earliest(r) != 0)
		return t;
	while (wal_reader_next(r, &rec) == 1)
		if (rec.kind == WAL_RECORD_EVENT && rec.ev.key.len == strlen(key) &&
		    memcmp(rec.ev.key.ptr, key, rec.ev.key.len) == 0)
			t = rec.ingest_time_us;
	wal_reader_close(r);
	return t;
}

static int run_rate(const char *out, const char *extra)
{
	char cmd[2048];
	snprintf(cmd, sizeof cmd,
		 "%s/tally-rate --config %s/rate.json --data %s/data --out %s/%s --once --no-fsync %s "
		 "2>>%s/rate.log",
		 g_bin, g_dir, g_dir, g_dir, out, extra, g_dir);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static json_t *load_json(const char *rel)
{
	char path[512];
	snprintf(path, sizeof path, "%s/%s", g_dir, rel);
	return json_load_file(path, 0, NULL);
}

static const char *jget(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

int main(void)
{
	const char *bin = getenv("TALLY_BIN");
	if (!bin) {
		printf("TALLY_BIN not set: run through ctest\n");
		return 77;
	}
	snprintf(g_bin, sizeof g_bin, "%s", bin);
	snprintf(g_dir, sizeof g_dir, "/tmp/test_rate_e2eXXXXXX");
	if (!mkdtemp(g_dir))
		return 1;
	char path[256];
	snprintf(path, sizeof path, "%s/rate.json", g_dir);
	FILE *f = fopen(path, "w");
	fprintf(f, "{\"currency\":\"USD\",\"period\":{\"seconds\":%d},\"grace_seconds\":%d,"
		   "\"meters\":[{\"id\":\"calls\",\"event_name\":\"api.call\",\"aggregation\":\"count\"}],"
		   "\"plans\":[{\"id\":\"p\",\"prices\":[{\"meter\":\"calls\",\"model\":\"per_unit\","
		   "\"unit_price\":\"0.01\"}]}],\"default_plan\":\"p\"}",
		PERIOD_S, GRACE_S);
	fclose(f);
	pid_t pid = start_tallyd();
	if (pid < 0) {
		fprintf(stderr, "tallyd did not start (see %s/tallyd.log)\n", g_dir);
		return 1;
	}

	/* P0: the current period; NEVENTS events inside it, in shuffled order, two customers. */
	const int64_t L = PERIOD_S * 1000000LL, G = GRACE_S * 1000000LL;
	int64_t p0 = now_us() / L * L, p0_end = p0 + L;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	int order[NEVENTS], ncust0 = 0;
	for (int i = 0; i < NEVENTS; i++)
		order[i] = i;
	uint64_t x = 88172645463325252ull;
	for (int i = NEVENTS - 1; i > 0; i--) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		int j = (int)(x % (uint64_t)(i + 1)), tmp = order[i];
		order[i] = order[j];
		order[j] = tmp;
	}
	for (int k = 0; k < NEVENTS; k++) {
		int i = order[k];
		char key[32];
		snprintf(key, sizeof key, "ev-%d", i);
		line(&buf, &len, &cap, key, i % 3 ? "cus_e2e" : "cus_two", p0 + (int64_t)i * (L / NEVENTS));
		ncust0 += i % 3 != 0;
	}
	CHECK_EQ(send_lines("a.jsonl", buf), 0);
	CHECK_EQ(send_lines("a.jsonl", buf), 0); /* the same lines again: all duplicates */
	/* and once more in reverse order */
	char *rev = malloc(len + 1), *end = buf + len;
	size_t o = 0;
	while (end > buf) {
		char *s = end - 1;
		while (s > buf && s[-1] != '\n')
			s--;
		memcpy(rev + o, s, (size_t)(end - s));
		o += (size_t)(end - s);
		end = s;
	}
	rev[o] = '\0';
	CHECK_EQ(send_lines("a_rev.jsonl", rev), 0);
	free(rev);

	/* "23:58 on the last day": the last instant of P0, arriving within grace ... */
	len = 0;
	sleep_until(p0_end + 300000);
	line(&buf, &len, &cap, "edge-in", "cus_e2e", p0_end - 2000);
	CHECK_EQ(send_lines("b.jsonl", buf), 0);
	/* ... and again after the grace window. */
	len = 0;
	sleep_until(p0_end + G + 500000);
	line(&buf, &len, &cap, "edge-late", "cus_e2e", p0_end - 2000);
	CHECK_EQ(send_lines("c.jsonl", buf), 0);
	free(buf);
	/* Idle ticks (every second per shard) move the watermark past P0's end + grace. */
	sleep_until(now_us() + 2500000);
	kill(pid, SIGTERM);
	int st;
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);

	int64_t in_ing = ingest_of("edge-in"), late_ing = ingest_of("edge-late");
	CHECK(in_ing != INT64_MIN && late_ing != INT64_MIN);
	bool in_late = in_ing > p0_end + G;     /* expected false unless the machine stalled */
	bool late_late = late_ing > p0_end + G; /* true by construction */
	CHECK(late_late);
	printf("edge-in ingested %.3f s after the period end (%s), edge-late %.3f s (%s)\n",
	       (double)(in_ing - p0_end) / 1e6, in_late ? "late" : "on time",
	       (double)(late_ing - p0_end) / 1e6, late_late ? "late" : "on time");

	CHECK_EQ(run_rate("out1", ""), 0);
	char t[RATE_TIME_STR_MAX], rel[256];
	/* invoice path: out1/invoices/cus_e2e/YYYYMMDDTHHMMSSZ.json */
	rate_time_format(p0, t);
	snprintf(rel, sizeof rel, "out1/invoices/cus_e2e/%.4s%.2s%.2sT%.2s%.2s%.2sZ.json", t, t + 5,
		 t + 8, t + 11, t + 14, t + 17);
	json_t *inv = load_json(rel);
	CHECK(inv != NULL);
	int expect_p0 = ncust0 + (in_late ? 0 : 1);
	if (inv) {
		json_t *l0 = json_array_get(json_object_get(inv, "lines"), 0);
		char q[32];
		snprintf(q, sizeof q, "%d", expect_p0);
		CHECK_STR(jget(l0, "quantity"), q);
		CHECK_EQ(json_integer_value(json_object_get(json_object_get(l0, "provenance"), "events")),
			 expect_p0);
		printf("P0 invoice: %s calls, total %s\n", jget(l0, "quantity"), jget(inv, "total"));
		json_decref(inv);
	}
	/* The late event: in the late-arrival report, and an adjustment of +0.01 on a later
	 * invoice of cus_e2e, or pending in usage.json if that period is still open. */
	json_t *rep = load_json("out1/late_arrivals.json");
	CHECK(rep != NULL);
	size_t nlate = rep ? json_array_size(json_object_get(rep, "late_events")) : 0;
	CHECK_EQ(nlate, in_late ? 2 : 1);
	json_decref(rep);
	char cmd[1024];
	snprintf(cmd, sizeof cmd,
		 "cat %s/out1/invoices/cus_e2e/*.json %s/out1/usage.json | grep -c '\"late_period_start\"'",
		 g_dir, g_dir);
	FILE *p = popen(cmd, "r");
	int nadj = -1;
	if (p) {
		if (fscanf(p, "%d", &nadj) != 1)
			nadj = -1;
		pclose(p);
	}
	CHECK(nadj >= 1);
	printf("late events: %zu, adjustment lines: %d\n", nlate, nadj);

	/* Re-rating the same WAL from scratch into a new directory: identical bytes. */
	CHECK_EQ(run_rate("out2", "--from-scratch"), 0);
	snprintf(cmd, sizeof cmd, "diff -r %s/out1/invoices %s/out2/invoices", g_dir, g_dir);
	CHECK_EQ(system(cmd), 0);

	if (rate_t_failures == 0) {
		snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
		CHECK_EQ(system(cmd), 0);
	} else {
		fprintf(stderr, "left %s for inspection\n", g_dir);
	}
	return rate_t_done("test_rate_e2e");
}
