/*
 * tests/fuzz/fuzz_wal_recover.c — libFuzzer target for WAL recovery as tallyd runs it:
 * wal_open() on a data directory whose shard holds the input as segment files.
 *
 * Input: byte 0 = mode, the rest = segment bytes (every complete block gets a correct
 * checksum first, as in fuzz_wal.c, so mutations reach what lies behind the checksum gate).
 *   mode bit 0 clear: the rest is the shard's only segment (base offset 0).
 *   mode bit 0 set:   bytes 1..2 (u16 LE, modulo the length) split the rest into a sealed
 *                     segment at base 0 and a newest segment whose base is the sealed one's
 *                     record count (+1 if mode bit 1 is set: a gap that must be refused).
 * Recovery must either open (a torn tail truncated) or refuse with -EBADMSG; a refusal must
 * then open with --repair unless the damage lies in a sealed segment. After any successful
 * open: every record is readable with consecutive offsets, next_offset equals their count,
 * one more record can be appended, synced and is found after a reopen, and a second recovery
 * of that directory changes nothing. Nothing may crash, leak or read out of bounds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wal_internal.h"
#include "fuzz_fixups.h"

#define FUZZ_ASSERT(c)                                                                             \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "fuzz_wal_recover: %s:%d: %s (%s)\n", __FILE__, __LINE__,  \
				#c, wal_last_error());                                             \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char root[256];  /* DATA */
static char shard_dir[300];

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void write_file(const char *path, const uint8_t *d, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	FUZZ_ASSERT(fd >= 0);
	FUZZ_ASSERT(n == 0 || write(fd, d, n) == (ssize_t)n);
	close(fd);
}

static void write_segment(uint64_t base, const uint8_t *d, size_t n)
{
	char path[400];
	snprintf(path, sizeof path, "%s/%020llu.log", shard_dir, (unsigned long long)base);
	write_file(path, d, n);
}

/* Reads every record of shard 0; returns the count (offsets must run 0, 1, 2, ...). */
static uint64_t read_all(void)
{
	struct wal_reader *r;
	FUZZ_ASSERT(wal_reader_open(root, 0, &r) == 0);
	struct wal_record rec;
	uint64_t n = 0;
	int rc;
	while ((rc = wal_reader_next(r, &rec)) == 1) {
		FUZZ_ASSERT(rec.offset == n && rec.shard == 0);
		FUZZ_ASSERT(rec.kind == WAL_RECORD_EVENT || rec.kind == WAL_RECORD_TICK);
		n++;
	}
	FUZZ_ASSERT(rc == 0);
	wal_reader_close(r);
	return n;
}

/* Opens (rc returned), and on success checks the recovered state and appends one tick. */
static int open_and_check(bool repair)
{
	struct wal_options opt = {.shard_count = 1, .repair = repair};
	struct wal *w;
	int rc = wal_open(root, &opt, &w);
	if (rc != 0)
		return rc;
	struct wal_shard *s = wal_shard(w, 0);
	uint64_t next = wal_next_offset(s);
	FUZZ_ASSERT(wal_durable_next(s) == next);
	FUZZ_ASSERT(read_all() == next);
	uint64_t off;
	FUZZ_ASSERT(wal_append_tick(s, 1, &off) == 0 && off == next);
	FUZZ_ASSERT(wal_flush(s) == 0 && wal_sync(s, NULL) == 0);
	FUZZ_ASSERT(wal_close(w) == 0);

	/* A clean directory now: recovery must open it as it is, without repair. */
	opt.repair = false;
	FUZZ_ASSERT(wal_open(root, &opt, &w) == 0);
	FUZZ_ASSERT(wal_next_offset(wal_shard(w, 0)) == next + 1);
	FUZZ_ASSERT(wal_close(w) == 0);
	FUZZ_ASSERT(read_all() == next + 1);
	return 0;
}

static void setup(void)
{
	const char *tmp = getenv("TMPDIR");
	if (access("/dev/shm", W_OK) == 0)
		tmp = "/dev/shm";
	snprintf(root, sizeof root, "%s/fuzz_wal_recover.XXXXXX", tmp ? tmp : "/tmp");
	FUZZ_ASSERT(mkdtemp(root));
	snprintf(shard_dir, sizeof shard_dir, "%s/wal/shard-00", root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!root[0])
		setup();
	if (size < 1 || size > (1u << 20))
		return 0;
	uint8_t mode = data[0];
	/* A fresh data directory with one shard. */
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	struct wal_options opt = {.shard_count = 1};
	struct wal *w;
	FUZZ_ASSERT(mkdir(root, 0755) == 0);
	FUZZ_ASSERT(wal_open(root, &opt, &w) == 0);
	FUZZ_ASSERT(wal_close(w) == 0);
	char path[400];
	snprintf(path, sizeof path, "%s/00000000000000000000.log", shard_dir);
	FUZZ_ASSERT(unlink(path) == 0 || errno == ENOENT);
	snprintf(path, sizeof path, "%s/00000000000000000000.idx", shard_dir);
	(void)unlink(path);

	const uint8_t *rest = data + 1;
	size_t n = size - 1;
	bool sealed_part = false;
	uint8_t *buf;
	if ((mode & 1) && n >= 2) {
		size_t cut = ((size_t)rest[0] | (size_t)rest[1] << 8) % (n - 1);
		rest += 2;
		n -= 2;
		buf = malloc(n ? n : 1);
		FUZZ_ASSERT(buf);
		memcpy(buf, rest, n);
		fuzz_fix_block_checksums(buf, cut);
		fuzz_fix_block_checksums(buf + cut, n - cut);
		write_segment(0, buf, cut);
		struct wal_segment_stats st;
		snprintf(path, sizeof path, "%s/00000000000000000000.log", shard_dir);
		uint64_t records = 0;
		int vr = wal_segment_verify(path, 0, false, &st);
		if (vr == 0 || vr == -EBADMSG)
			records = st.records; /* a torn sealed segment: its valid prefix */
		write_segment(records + ((mode & 2) ? 1 : 0), buf + cut, n - cut);
		sealed_part = true;
	} else {
		buf = malloc(n ? n : 1);
		FUZZ_ASSERT(buf);
		memcpy(buf, rest, n);
		fuzz_fix_block_checksums(buf, n);
		write_segment(0, buf, n);
	}
	free(buf);

	int rc = open_and_check(false);
	FUZZ_ASSERT(rc == 0 || rc == -EBADMSG);
	if (rc == -EBADMSG) {
		rc = open_and_check(true);
		/* --repair cuts a bad tail of the newest segment; a sealed one stays refused. */
		FUZZ_ASSERT(rc == 0 || (rc == -EBADMSG && sealed_part));
	}
	return 0;
}
