/*
 * test_wal_fault.c — I/O faults through the WAL's seam (tests/wal_testutil.h wt_faultio):
 *   - fdatasync EIO: the shard fails permanently, the durable watermark never advances
 *     again, appends/flushes/syncs return -EIO, and what was durable before is all there;
 *   - write ENOSPC, EIO, short write then ENOSPC: retryable error, the block's records are
 *     discarded (range reported), the file is truncated back, nothing durable is lost, and
 *     writing resumes with the same offsets;
 *   - short write that then completes: no error at all;
 *   - ENOSPC creating the next segment at a roll: retryable, the old segment stays current;
 *   - ftruncate failing after a failed write: the shard fails (-EIO);
 *   - the latency-injection seam forwards every call (the bench uses it for 2 ms syncs).
 */
#include "wal_testutil.h"

static struct wt_faultio fio;

static void append_n(struct wal_shard *s, uint64_t seed, uint64_t n)
{
	uint8_t body[WT_BODY_MAX];
	for (uint64_t k = 0; k < n; k++) {
		uint64_t i = wal_next_offset(s);
		struct tally_view v = {body, (uint32_t)wt_event(seed, i, body)};
		uint64_t off;
		CHECK_EQ(wal_append(s, wt_tenant(seed, i), &v, WT_BASE_TIME_US + (int64_t)i, &off),
			 0);
		CHECK_EQ(off, i);
	}
}

/* Reads shard 0 and checks offsets 0..n-1; record i must be event (seed_of(i), i). */
static void check_contents(const char *dir, uint64_t n, uint64_t seed_lo, uint64_t split,
			   uint64_t seed_hi)
{
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
	struct wal_record rec;
	uint8_t body[WT_BODY_MAX];
	for (uint64_t i = 0; i < n; i++) {
		CHECK_EQ(wal_reader_next(r, &rec), 1);
		CHECK_EQ(rec.offset, i);
		size_t len = wt_event(i < split ? seed_lo : seed_hi, i, body);
		CHECK(rec.ev.body.len == len && memcmp(rec.ev.body.ptr, body, len) == 0);
	}
	CHECK_EQ(wal_reader_next(r, &rec), 0);
	wal_reader_close(r);
}

static void test_fdatasync_eio(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walfault");
	wt_faultio_init(&fio);
	struct wal_options o = {.shard_count = 1, .io = &fio.io};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	append_n(s, 1, 100);
	CHECK_EQ(wal_flush(s), 0);
	uint64_t d;
	CHECK_EQ(wal_sync(s, &d), 0);
	CHECK_EQ(d, 100);
	append_n(s, 1, 50);
	CHECK_EQ(wal_flush(s), 0);
	CHECK_EQ(wal_written_next(s), 150);
	fio.fail_fdatasync = -EIO;
	CHECK_EQ(wal_sync(s, &d), -EIO);
	CHECK_EQ(d, 100);
	CHECK_EQ(wal_durable_next(s), 100);
	CHECK_EQ(wal_shard_failed(s), -EIO);
	CHECK(strstr(wal_last_error(), "fdatasync") != NULL);
	/* The fault is gone, but the shard never recovers: no retry-and-pretend. */
	CHECK_EQ(wal_sync(s, &d), -EIO);
	CHECK_EQ(d, 100);
	struct tally_view none = {0};
	uint8_t body[WT_BODY_MAX];
	struct tally_view v = {body, (uint32_t)wt_event(1, 150, body)};
	CHECK_EQ(wal_append(s, none, &v, WT_BASE_TIME_US, NULL), -EIO);
	CHECK_EQ(wal_append_tick(s, WT_BASE_TIME_US, NULL), -EIO);
	CHECK_EQ(wal_flush(s), 0); /* nothing open */
	CHECK_EQ(wal_durable_next(s), 100);
	/* Readers in other processes never see past 100 either. */
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
	CHECK_EQ(wal_reader_durable_next(r, 0), 100);
	wal_reader_close(r);
	CHECK_EQ(wal_close(w), -EIO);
	/* A restart recovers everything that was durable (and what reached the disk). */
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	uint64_t recovered = wal_next_offset(wal_shard(w, 0));
	CHECK(recovered == 100 || recovered == 150);
	CHECK_EQ(wal_close(w), 0);
	check_contents(dir, recovered, 1, 1000, 1);
	wt_rmrf(dir);
}

/* One retryable write failure scenario; `arm` sets up the fault. */
/* Where a segment's valid data ends (the file may go on with prefill zeros). */
static uint64_t data_end(const char *seg)
{
	struct wal_segment_stats st;
	int rc = wal_segment_verify(seg, 0, false, &st);
	CHECK(rc == 0 || rc == -EBADMSG);
	return rc == 0 ? wt_file_size(seg) : st.torn_tail_at;
}

static void write_fault_case(const char *name, void (*arm)(void), int expect_rc, uint32_t prefill)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walfault");
	wt_faultio_init(&fio);
	struct wal_options o = {.shard_count = 1, .io = &fio.io, .prefill_bytes = prefill};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	char seg[700];
	snprintf(seg, sizeof seg, "%s/wal/shard-00/00000000000000000000.log", dir);
	append_n(s, 1, 100);
	CHECK_EQ(wal_flush(s), 0);
	CHECK_EQ(wal_sync(s, NULL), 0);
	uint64_t size_before = data_end(seg);
	if (prefill != WAL_PREFILL_OFF) /* the zeros went ahead of the data */
		CHECK(wt_file_size(seg) > size_before);
	append_n(s, 2, 50); /* offsets 100..149: these will be discarded */
	arm();
	CHECK_EQ(wal_flush(s), expect_rc);
	uint64_t first = 0, count = 0;
	wal_shard_last_discard(s, &first, &count);
	CHECK_EQ(first, 100);
	CHECK_EQ(count, 50);
	CHECK_EQ(wal_next_offset(s), 100);
	CHECK_EQ(wal_written_next(s), 100);
	CHECK_EQ(wal_durable_next(s), 100);
	CHECK_EQ(wal_shard_failed(s), 0);
	CHECK_EQ(wt_file_size(seg), size_before); /* truncated back to the last good byte */
	/* Resume: the same offsets are reused by new records. */
	append_n(s, 3, 60);
	CHECK_EQ(wal_flush(s), 0);
	uint64_t d;
	CHECK_EQ(wal_sync(s, &d), 0);
	CHECK_EQ(d, 160);
	CHECK_EQ(wal_close(w), 0);
	check_contents(dir, 160, 1, 100, 3);
	/* And recovery agrees. */
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_next_offset(wal_shard(w, 0)), 160);
	CHECK_EQ(wal_close(w), 0);
	printf("write fault '%s': ok\n", name);
	wt_rmrf(dir);
}

static void arm_enospc(void)
{
	fio.fail_log_pwrite = -ENOSPC;
	fio.fail_log_pwrite_n = 1;
}
static void arm_eio(void)
{
	fio.fail_log_pwrite = -EIO;
	fio.fail_log_pwrite_n = 1;
}
static void arm_short_then_enospc(void)
{
	fio.short_log_pwrite_n = 1;
	fio.fail_log_pwrite = -ENOSPC;
	fio.fail_log_pwrite_n = 1;
}

static void test_short_write_completes(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walfault");
	wt_faultio_init(&fio);
	struct wal_options o = {.shard_count = 1, .io = &fio.io};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	append_n(s, 1, 100);
	fio.short_log_pwrite_n = 3; /* three short writes in a row, then it completes */
	unsigned long before = fio.log_pwrites;
	CHECK_EQ(wal_flush(s), 0);
	CHECK(fio.log_pwrites - before >= 4);
	CHECK_EQ(wal_sync(s, NULL), 0);
	CHECK_EQ(wal_close(w), 0);
	check_contents(dir, 100, 1, 1000, 1);
	wt_rmrf(dir);
}

static void test_enospc_at_roll_and_append(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walfault");
	wt_faultio_init(&fio);
	/* segment_age_us = 1: every block after a segment's first one rolls to a new segment. */
	struct wal_options o = {
	    .shard_count = 1, .io = &fio.io, .block_bytes_max = 16 << 10, .segment_age_us = 1};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	uint64_t n = 100;
	append_n(s, 1, n);
	CHECK_EQ(wal_flush(s), 0);
	CHECK_EQ(wal_sync(s, NULL), 0);
	append_n(s, 2, 100);
	fio.fail_open_log = -ENOSPC;
	CHECK_EQ(wal_flush(s), -ENOSPC);
	uint64_t first, count;
	wal_shard_last_discard(s, &first, &count);
	CHECK_EQ(first, n);
	CHECK_EQ(count, 100);
	CHECK_EQ(wal_shard_failed(s), 0);
	fio.fail_open_log = 0;
	/* wal_append sealing a full block fails: the record passed was not appended. */
	append_n(s, 3, 10);
	fio.fail_log_pwrite = -ENOSPC;
	fio.fail_log_pwrite_n = 1000000;
	uint8_t body[WT_BODY_MAX];
	int rc = 0;
	uint64_t appended = 10;
	while (rc == 0) {
		uint64_t i = wal_next_offset(s);
		struct tally_view v = {body, (uint32_t)wt_event(3, i, body)};
		rc = wal_append(s, wt_tenant(3, i), &v, WT_BASE_TIME_US + (int64_t)i, NULL);
		if (rc == 0)
			appended++;
	}
	CHECK_EQ(rc, -ENOSPC);
	wal_shard_last_discard(s, &first, &count);
	CHECK_EQ(first, n);
	CHECK_EQ(count, appended);
	CHECK_EQ(wal_next_offset(s), n);
	fio.fail_log_pwrite_n = 0;
	append_n(s, 3, 50);
	CHECK_EQ(wal_flush(s), 0);
	CHECK_EQ(wal_sync(s, NULL), 0);
	CHECK_EQ(wal_close(w), 0);
	check_contents(dir, n + 50, 1, n, 3);
	wt_rmrf(dir);
}

static void test_ftruncate_fails(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walfault");
	wt_faultio_init(&fio);
	struct wal_options o = {.shard_count = 1, .io = &fio.io};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	append_n(s, 1, 10);
	CHECK_EQ(wal_flush(s), 0);
	CHECK_EQ(wal_sync(s, NULL), 0);
	append_n(s, 1, 10);
	fio.short_log_pwrite_n = 1;
	fio.fail_log_pwrite = -ENOSPC;
	fio.fail_log_pwrite_n = 1;
	fio.fail_ftruncate = -EIO;
	CHECK_EQ(wal_flush(s), -EIO);
	CHECK_EQ(wal_shard_failed(s), -EIO);
	CHECK_EQ(wal_durable_next(s), 10);
	fio.fail_ftruncate = 0;
	CHECK_EQ(wal_close(w), -EIO);
	/* Restart: the half-written block is a torn tail; the 10 durable records are there. */
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_next_offset(wal_shard(w, 0)), 10);
	CHECK_EQ(wal_close(w), 0);
	check_contents(dir, 10, 1, 1000, 1);
	wt_rmrf(dir);
}

static void test_delay_seam(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walfault");
	wt_faultio_init(&fio);
	struct wal_io_delay d;
	wal_io_delay_init(&d, &fio.io, 100);
	struct wal_options o = {.shard_count = 1, .io = &d.io};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	append_n(wal_shard(w, 0), 1, 10);
	CHECK_EQ(wal_flush(wal_shard(w, 0)), 0);
	unsigned long before = fio.syncs;
	CHECK_EQ(wal_sync(wal_shard(w, 0), NULL), 0);
	CHECK_EQ(fio.syncs - before, 1); /* forwarded to the inner seam */
	fio.fail_fdatasync = -EIO;       /* and errors come back through it */
	append_n(wal_shard(w, 0), 1, 10);
	CHECK_EQ(wal_flush(wal_shard(w, 0)), 0);
	CHECK_EQ(wal_sync(wal_shard(w, 0), NULL), -EIO);
	CHECK_EQ(wal_close(w), -EIO);
	wt_rmrf(dir);
}

/*
 * The writer "dies" at every I/O operation of a workload in turn (that op, if a write,
 * persists half; every later op fails), then a fresh open recovers: every record that a
 * wal_sync had reported durable is there, intact, and offsets are dense.
 */
static uint64_t crash_workload(const char *dir, long crash_at, long *ops_out)
{
	wt_faultio_init(&fio);
	fio.noop_sync = 1;
	fio.crash_at_op = crash_at;
	/* segment_age_us = 1: every block after a segment's first rolls (sync, create, dir fsync)
	 */
	struct wal_options o = {.shard_count = 1, .io = &fio.io, .segment_age_us = 1};
	struct wal *w;
	uint64_t durable = 0;
	if (wal_open(dir, &o, &w) != 0)
		goto out;
	struct wal_shard *s = wal_shard(w, 0);
	uint8_t body[WT_BODY_MAX];
	for (int b = 0; b < 6; b++) {
		for (int k = 0; k < 5; k++) {
			uint64_t i = wal_next_offset(s);
			struct tally_view v = {body, (uint32_t)wt_event(9, i, body)};
			if (wal_append(s, wt_tenant(9, i), &v, WT_BASE_TIME_US + (int64_t)i * 100,
				       NULL))
				goto out_close;
		}
		if (wal_flush(s) != 0)
			goto out_close;
		if (b % 2 == 1) {
			uint64_t d;
			if (wal_sync(s, &d) != 0)
				goto out_close;
			durable = d;
		}
	}
out_close:
	(void)wal_close(w);
out:
	*ops_out = fio.ops;
	return durable;
}

static void test_crash_at_every_op(bool power_loss)
{
	long total = 0;
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walfault");
	CHECK_EQ(crash_workload(dir, -1, &total), 30);
	wt_rmrf(dir);
	CHECK(total > 20);
	for (long k = 0; k <= total; k++) {
		wt_tmpdir(dir, sizeof dir, "walfault");
		long ops;
		uint64_t durable = crash_workload(dir, k, &ops);
		if (power_loss) /* keep 0%, a torn part, or all of the unsynced bytes */
			wt_power_loss(&fio, (unsigned)(k % 3 == 0 ? 0 : k % 3 == 1 ? 377 : 1000));
		struct wal_options o = {.shard_count = 1};
		struct wal *w;
		CHECK_EQ(wal_open(dir, &o, &w), 0);
		uint64_t next = wal_next_offset(wal_shard(w, 0));
		CHECK(next >= durable);
		CHECK_EQ(wal_close(w), 0);
		check_contents(dir, next, 9, UINT64_MAX, 9);
		wt_rmrf(dir);
	}
	printf("%s at every I/O op: %ld ops checked\n", power_loss ? "power loss" : "crash",
	       total + 1);
}

int main(void)
{
	test_fdatasync_eio();
	for (int k = 0; k < 2; k++) {
		uint32_t prefill = k ? 0 /* default: 1 MiB */ : WAL_PREFILL_OFF;
		write_fault_case("ENOSPC", arm_enospc, -ENOSPC, prefill);
		write_fault_case("EIO", arm_eio, -EIO, prefill);
		write_fault_case("short write then ENOSPC", arm_short_then_enospc, -ENOSPC,
				 prefill);
	}
	test_short_write_completes();
	test_enospc_at_roll_and_append();
	test_ftruncate_fails();
	test_delay_seam();
	test_crash_at_every_op(false);
	test_crash_at_every_op(true);
	printf("test_wal_fault: OK\n");
	return 0;
}
