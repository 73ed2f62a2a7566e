/*
 * test_wal_cli.c — `tally wal dump|verify|stats|retain` end to end on a generated WAL:
 * exit codes, JSON lines content, and corruption reported with file and byte offset.
 * Skipped (77) when the tally binary was not built.
 */
#include <sys/wait.h>

#include "wal_testutil.h"

static char tally[1024];

/* Runs `tally wal ARGS` with stdout+stderr to a file; returns the exit code, output in out. */
static int run(const char *args, char *out, size_t cap)
{
	char cmd[4096], path[] = "/tmp/tally-walcli-out-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	close(fd);
	snprintf(cmd, sizeof cmd, "'%s' wal %s > '%s' 2>&1", tally, args, path);
	int st = system(cmd);
	FILE *f = fopen(path, "r");
	CHECK(f);
	size_t n = fread(out, 1, cap - 1, f);
	out[n] = 0;
	fclose(f);
	unlink(path);
	CHECK(WIFEXITED(st));
	return WEXITSTATUS(st);
}

int main(void)
{
	const char *bin = getenv("TALLY_BIN");
	snprintf(tally, sizeof tally, "%s/tally", bin ? bin : ".");
	if (access(tally, X_OK) != 0) {
		printf("skipped: %s not built\n", tally);
		return 77;
	}
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walcli");
	struct wal_options o = {
	    .shard_count = 2, .block_bytes_max = 16 << 10, .segment_bytes_max = 64 << 10};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	uint8_t body[WT_BODY_MAX];
	for (uint16_t sh = 0; sh < 2; sh++)
		for (uint64_t i = 0; i < 2000; i++) {
			struct tally_view v = {body, (uint32_t)wt_event(sh, i, body)};
			CHECK_EQ(wal_append(wal_shard(w, sh), wt_tenant(sh, i), &v,
					    WT_BASE_TIME_US + (int64_t)i, NULL),
				 0);
			if (i % 500 == 499)
				CHECK_EQ(wal_append_tick(wal_shard(w, sh),
							 WT_BASE_TIME_US + (int64_t)i, NULL),
					 0);
		}
	CHECK_EQ(wal_close(w), 0);

	static char out[4 << 20];
	char args[1024];
	snprintf(args, sizeof args, "verify --data '%s'", dir);
	CHECK_EQ(run(args, out, sizeof out), 0);
	CHECK(strstr(out, "verify: ok") != NULL);
	snprintf(args, sizeof args, "stats --data '%s'", dir);
	CHECK_EQ(run(args, out, sizeof out), 0);
	CHECK(strstr(out, "shard 00:") && strstr(out, "shard 01:"));
	CHECK(strstr(out, "records 2004 (events 2000, ticks 4)") != NULL);
	snprintf(args, sizeof args, "dump --data '%s' --shard 1 --from 10 --limit 3", dir);
	CHECK_EQ(run(args, out, sizeof out), 0);
	CHECK(strncmp(out, "{\"shard\":1,\"offset\":10,", 22) == 0);
	int lines = 0;
	for (char *p = out; *p; p++)
		lines += *p == '\n';
	CHECK_EQ(lines, 3);
	/* The event's key and customer appear as JSON strings. */
	struct tally_event ev;
	size_t len = wt_event(1, 10, body);
	CHECK_EQ(event_decode(body, len, &ev), TALLY_REJECT_NONE);
	char want[128];
	snprintf(want, sizeof want, "\"key\":\"%.*s\"", (int)ev.key.len, (const char *)ev.key.ptr);
	CHECK(strstr(out, want) != NULL);
	snprintf(args, sizeof args, "dump --data '%s'", dir);
	CHECK_EQ(run(args, out, sizeof out), 0);
	lines = 0;
	for (char *p = out; *p; p++)
		lines += *p == '\n';
	CHECK_EQ(lines, 2 * 2004);
	CHECK_EQ(run("bogus --data /nonexistent", out, sizeof out), 2);
	CHECK_EQ(run("--help", out, sizeof out), 0);
	CHECK(strstr(out, "usage: tally wal") != NULL);

	/* Retention with nothing old enough deletes nothing. */
	snprintf(args, sizeof args, "retain --data '%s' --days 400", dir);
	CHECK_EQ(run(args, out, sizeof out), 0);
	CHECK(strstr(out, "0 segment(s) deleted") != NULL);

	/* Corrupt a byte in the middle of shard 0's first (sealed) segment. */
	char seg[800];
	snprintf(seg, sizeof seg, "%s/wal/shard-00/00000000000000000000.log", dir);
	int fd = open(seg, O_RDWR);
	CHECK(fd >= 0);
	uint8_t b;
	CHECK(pread(fd, &b, 1, 3000) == 1);
	b ^= 0x40;
	CHECK(pwrite(fd, &b, 1, 3000) == 1);
	close(fd);
	snprintf(args, sizeof args, "verify --data '%s'", dir);
	CHECK_EQ(run(args, out, sizeof out), 1);
	CHECK(strstr(out, "CORRUPT") && strstr(out, seg) && strstr(out, "at byte "));
	CHECK(strstr(out, "CORRUPTION FOUND") != NULL);

	wt_rmrf(dir);
	printf("test_wal_cli: OK\n");
	return 0;
}
