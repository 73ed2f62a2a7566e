/*
 * test_wal.c — WAL round trip across segment rolls, seek by offset, durable-only reads,
 * merged multi-shard reads, segment listing/iteration, option and length checks, clock
 * clamping, ticks, consumer checkpoints and retention; prefill (zeros ahead of the data in the
 * newest segment only, cut by recovery after a crash).
 */
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include "wal_testutil.h"

#define SEED 42

/* Appends events [from, to) of stream SEED to shard s, ticking every 97th record, flushing
   every ~37 records and syncing every ~200. ingest = base + offset * 10 us. */
static void fill(struct wal_shard *s, uint64_t from, uint64_t to, uint64_t seed)
{
	uint8_t body[WT_BODY_MAX];
	for (uint64_t i = from; i < to; i++) {
		uint64_t off;
		int64_t ingest = WT_BASE_TIME_US + (int64_t)i * 10;
		if (i % 97 == 50) {
			CHECK_EQ(wal_append_tick(s, ingest, &off), 0);
		} else {
			struct tally_view b = {body, (uint32_t)wt_event(seed, i, body)};
			CHECK_EQ(wal_append(s, wt_tenant(seed, i), &b, ingest, &off), 0);
		}
		CHECK_EQ(off, i);
		if (wt_mix(i) % 37 == 0)
			CHECK_EQ(wal_flush(s), 0);
		if (wt_mix(i + 1) % 200 == 0) {
			CHECK_EQ(wal_flush(s), 0);
			CHECK_EQ(wal_sync(s, NULL), 0);
		}
	}
}

static void check_record(const struct wal_record *rec, uint64_t off, uint64_t seed)
{
	CHECK_EQ(rec->offset, off);
	CHECK_EQ(rec->ingest_time_us, WT_BASE_TIME_US + (int64_t)off * 10);
	if (off % 97 == 50) {
		CHECK_EQ(rec->kind, WAL_RECORD_TICK);
		return;
	}
	CHECK_EQ(rec->kind, WAL_RECORD_EVENT);
	uint8_t body[WT_BODY_MAX];
	size_t n = wt_event(seed, off, body);
	CHECK_EQ(rec->ev.body.len, n);
	CHECK(memcmp(rec->ev.body.ptr, body, n) == 0);
	struct tally_view t = wt_tenant(seed, off);
	CHECK_EQ(rec->tenant.len, t.len);
	CHECK(t.len == 0 || memcmp(rec->tenant.ptr, t.ptr, t.len) == 0);
	CHECK_EQ(rec->ev.key.len, 24);
}

static void test_round_trip(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "wal");
	struct wal_options o = {
	    .shard_count = 2, .block_bytes_max = 16 << 10, .segment_bytes_max = 64 << 10};
	struct wal *w;
	const uint64_t N = 6000;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_shard_count(w), 2);
	fill(wal_shard(w, 0), 0, N / 2, SEED);
	fill(wal_shard(w, 1), 0, 1000, SEED + 1);
	CHECK_EQ(wal_close(w), 0);

	/* Reopen (recovery) and continue: offsets continue densely. */
	o.shard_count = 0; /* use the stored count */
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_next_offset(wal_shard(w, 0)), N / 2);
	CHECK_EQ(wal_durable_next(wal_shard(w, 0)), N / 2);
	fill(wal_shard(w, 0), N / 2, N, SEED);
	CHECK_EQ(wal_close(w), 0);

	/* Several segments exist, contiguous, all but the last sealed. */
	struct wal_segment_info segs[64];
	size_t nseg;
	CHECK_EQ(wal_segments_list(dir, 0, segs, 64, &nseg), 0);
	CHECK(nseg >= 4 && nseg <= 64);
	CHECK_EQ(segs[0].base_offset, 0);
	for (size_t k = 0; k < nseg; k++) {
		CHECK_EQ(segs[k].sealed, k + 1 < nseg);
		struct wal_segment_iter *it;
		CHECK_EQ(wal_segment_iter_open(segs[k].path, segs[k].base_offset, UINT64_MAX, false,
					       &it),
			 0);
		struct wal_record rec;
		uint64_t expect = segs[k].base_offset;
		int r;
		while ((r = wal_segment_iter_next(it, &rec)) == 1) {
			check_record(&rec, expect, SEED);
			expect++;
		}
		CHECK_EQ(r, 0);
		CHECK_EQ(expect, k + 1 < nseg ? segs[k + 1].base_offset : N);
		wal_segment_iter_close(it);
		struct wal_segment_stats st;
		CHECK_EQ(wal_segment_verify(segs[k].path, segs[k].base_offset, true, &st), 0);
		CHECK_EQ(st.next_offset, expect);
		CHECK_EQ(st.file_bytes, segs[k].file_bytes);
	}

	/* Sequential read of shard 0. */
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
	struct wal_record rec;
	for (uint64_t i = 0; i < N; i++) {
		CHECK_EQ(wal_reader_next(r, &rec), 1);
		check_record(&rec, i, SEED);
		CHECK_EQ(rec.shard, 0);
	}
	CHECK_EQ(wal_reader_next(r, &rec), 0);
	CHECK_EQ(wal_reader_durable_next(r, 0), N);

	/* Seek by offset: block starts, mid-block, segment boundaries, the very end. */
	for (int k = 0; k < 300; k++) {
		uint64_t target = k < (int)nseg ? segs[k].base_offset : wt_mix((uint64_t)k) % N;
		CHECK_EQ(wal_reader_seek(r, 0, target), 0);
		for (int j = 0; j < 3 && target + (uint64_t)j < N; j++) {
			CHECK_EQ(wal_reader_next(r, &rec), 1);
			check_record(&rec, target + (uint64_t)j, SEED);
		}
	}
	CHECK_EQ(wal_reader_seek(r, 0, N - 1), 0);
	CHECK_EQ(wal_reader_next(r, &rec), 1);
	CHECK_EQ(rec.offset, N - 1);
	CHECK_EQ(wal_reader_next(r, &rec), 0);
	CHECK_EQ(wal_reader_seek(r, 0, N + 5), 0); /* beyond the end: waits */
	CHECK_EQ(wal_reader_next(r, &rec), 0);
	CHECK_EQ(wal_reader_seek_latest(r), 0);
	CHECK_EQ(wal_reader_position(r, 0), N);
	CHECK_EQ(wal_reader_seek(r, 1, 0), -EINVAL); /* not this reader's shard */
	wal_reader_close(r);

	/* All shards merged by ingest time. */
	CHECK_EQ(wal_reader_open(dir, -1, &r), 0);
	uint64_t seen[2] = {0, 0};
	int64_t last = INT64_MIN;
	int got;
	while ((got = wal_reader_next(r, &rec)) == 1) {
		CHECK(rec.ingest_time_us >= last);
		last = rec.ingest_time_us;
		CHECK_EQ(rec.offset, seen[rec.shard]);
		check_record(&rec, rec.offset, rec.shard == 0 ? SEED : SEED + 1);
		seen[rec.shard]++;
	}
	CHECK_EQ(got, 0);
	CHECK_EQ(seen[0], N);
	CHECK_EQ(seen[1], 1000);
	wal_reader_close(r);
	wt_rmrf(dir);
}

static void test_durable_only(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "wal");
	struct wal_options o = {.shard_count = 1};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
	struct wal_record rec;
	CHECK_EQ(wal_reader_next(r, &rec), 0);
	uint8_t body[WT_BODY_MAX];
	for (uint64_t i = 0; i < 10; i++) {
		struct tally_view b = {body, (uint32_t)wt_event(7, i, body)};
		CHECK_EQ(wal_append(s, wt_tenant(7, i), &b, 1000, NULL), 0);
	}
	CHECK_EQ(wal_written_next(s), 0);
	CHECK_EQ(wal_flush(s), 0);
	CHECK_EQ(wal_written_next(s), 10);
	CHECK_EQ(wal_durable_next(s), 0);
	CHECK_EQ(wal_reader_next(r, &rec), 0); /* written, not durable: not served */
	CHECK_EQ(wal_reader_wait(r, 5), 0);
	uint64_t d;
	CHECK_EQ(wal_sync(s, &d), 0);
	CHECK_EQ(d, 10);
	CHECK_EQ(wal_reader_wait(r, 1000), 0);
	for (uint64_t i = 0; i < 10; i++) {
		CHECK_EQ(wal_reader_next(r, &rec), 1);
		CHECK_EQ(rec.offset, i);
	}
	CHECK_EQ(wal_reader_next(r, &rec), 0);

	/* Clock going back: clamped to the previous ingest time. */
	uint64_t off;
	CHECK_EQ(wal_append_tick(s, 5000, &off), 0);
	CHECK_EQ(wal_append_tick(s, 4000, &off), 0);
	CHECK_EQ(wal_flush(s), 0);
	CHECK_EQ(wal_sync(s, NULL), 0);
	CHECK_EQ(wal_reader_next(r, &rec), 1);
	CHECK_EQ(rec.ingest_time_us, 5000);
	CHECK_EQ(rec.kind, WAL_RECORD_TICK);
	CHECK_EQ(wal_reader_next(r, &rec), 1);
	CHECK_EQ(rec.ingest_time_us, 5000);
	CHECK_EQ(rec.offset, 11);

	/* Length checks. */
	uint8_t big[TALLY_EVENT_BYTES_MAX + 1];
	memset(big, 0, sizeof big);
	struct tally_view b = {body, 11};
	CHECK_EQ(wal_append(s, wt_tenant(7, 0), &b, 6000, NULL), -EINVAL);
	b = (struct tally_view){big, sizeof big};
	CHECK_EQ(wal_append(s, wt_tenant(7, 0), &b, 6000, NULL), -EINVAL);
	uint8_t t65[65] = {0};
	b = (struct tally_view){body, (uint32_t)wt_event(7, 0, body)};
	CHECK_EQ(wal_append(s, (struct tally_view){t65, 65}, &b, 6000, NULL), -EINVAL);
	CHECK_EQ(wal_append(s, (struct tally_view){t65, 64}, &b, 6000, NULL), 0);
	CHECK_EQ(wal_append_tick(s, -1, NULL), -EINVAL);
	CHECK_EQ(wal_next_offset(s), 13);

	/* Block due by age. */
	CHECK(!wal_block_due(s, 6000 + 100));
	CHECK(wal_block_due(s, 6000 + 200));
	wal_reader_close(r);
	CHECK_EQ(wal_close(w), 0);

	/* Shard count mismatch and missing count are refused with a message. */
	o.shard_count = 3;
	CHECK_EQ(wal_open(dir, &o, &w), -EINVAL);
	CHECK(strstr(wal_last_error(), "created with 1 shards") != NULL);
	o.shard_count = 0;
	o.block_bytes_max = 100;
	CHECK_EQ(wal_open(dir, &o, &w), -EINVAL);
	char dir2[600];
	snprintf(dir2, sizeof dir2, "%s/fresh", dir);
	o.block_bytes_max = 0;
	CHECK_EQ(wal_open(dir2, &o, &w), -EINVAL); /* new WAL, no shard count */

	/* Two writers: the second is refused. */
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal *w2;
	CHECK_EQ(wal_open(dir, &o, &w2), -EBUSY);
	CHECK_EQ(wal_close(w), 0);
	wt_rmrf(dir);
}

static void test_checkpoint_retention(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "wal");
	uint64_t pos[3] = {5, 6, 7}, got[3];
	CHECK_EQ(wal_checkpoint_load(dir, "rating", got, 3), -ENOENT);
	CHECK_EQ(wal_checkpoint_save(dir, "rating", pos, 3), 0);
	CHECK_EQ(wal_checkpoint_load(dir, "rating", got, 3), 0);
	CHECK(memcmp(pos, got, sizeof pos) == 0);
	CHECK_EQ(wal_checkpoint_load(dir, "rating", got, 2), -EINVAL);
	CHECK_EQ(wal_checkpoint_save(dir, "../evil", pos, 3), -EINVAL);
	CHECK_EQ(wal_checkpoint_save(dir, "", pos, 3), -EINVAL);
	/* Damage it: detected. */
	char path[700];
	snprintf(path, sizeof path, "%s/consumers/rating.ckpt", dir);
	int fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	uint8_t byte = 0x55;
	CHECK(pwrite(fd, &byte, 1, 20) == 1);
	close(fd);
	CHECK_EQ(wal_checkpoint_load(dir, "rating", got, 3), -EBADMSG);
	CHECK(unlink(path) == 0);

	/* Retention: 1 shard, old segments deletable up to the checkpoint. */
	struct wal_options o = {
	    .shard_count = 1, .block_bytes_max = 16 << 10, .segment_bytes_max = 64 << 10};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	fill(wal_shard(w, 0), 0, 3000, SEED);
	CHECK_EQ(wal_close(w), 0);
	struct wal_segment_info segs[64];
	size_t nseg;
	CHECK_EQ(wal_segments_list(dir, 0, segs, 64, &nseg), 0);
	CHECK(nseg >= 3);
	int64_t now = WT_BASE_TIME_US + 400ll * 86400 * 1000000;
	uint64_t age = 399ull * 86400 * 1000000; /* everything is older than that */
	uint64_t ck = segs[2].base_offset;       /* the consumer passed segments 0 and 1 */
	CHECK_EQ(wal_checkpoint_save(dir, "billing", &ck, 1), 0);
	uint32_t deleted;
	CHECK_EQ(wal_retention_run(dir, 401ull * 86400 * 1000000, now, false, &deleted), 0);
	CHECK_EQ(deleted, 0); /* too young */
	CHECK_EQ(wal_retention_run(dir, age, now, false, &deleted), 0);
	CHECK_EQ(deleted, 2);
	size_t nseg2;
	CHECK_EQ(wal_segments_list(dir, 0, segs, 64, &nseg2), 0);
	CHECK_EQ(nseg2, nseg - 2);
	CHECK_EQ(segs[0].base_offset, ck);
	/* The reader starts at the earliest remaining record; deleted offsets are -ERANGE. */
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
	struct wal_record rec;
	CHECK_EQ(wal_reader_next(r, &rec), 1);
	CHECK_EQ(rec.offset, ck);
	CHECK_EQ(wal_reader_seek(r, 0, 0), -ERANGE);
	wal_reader_close(r);
	/* Reopen as writer: still consistent. */
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_next_offset(wal_shard(w, 0)), 3000);
	CHECK_EQ(wal_close(w), 0);
	/* A damaged checkpoint blocks retention (better keep data than guess) unless forced. */
	char bad[700];
	snprintf(bad, sizeof bad, "%s/consumers/broken.ckpt", dir);
	int bfd = open(bad, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(bfd >= 0);
	CHECK(write(bfd, "garbage", 7) == 7);
	close(bfd);
	ck = 2999; /* the good consumer is nearly at the end now */
	CHECK_EQ(wal_checkpoint_save(dir, "billing", &ck, 1), 0);
	CHECK_EQ(wal_retention_run(dir, age, now, false, &deleted), -EBADMSG);
	CHECK_EQ(deleted, 0);
	CHECK(strstr(wal_last_error(), "broken.ckpt") != NULL);
	/* Forced: deletes all sealed segments regardless of the checkpoints. */
	CHECK_EQ(wal_retention_run(dir, age, now, true, &deleted), 0);
	CHECK_EQ(deleted, nseg2 - 1);
	wt_rmrf(dir);
}

/* Footprint is deterministic (same events, same LZ4): <= 60 bytes per ~150-byte event. */
static void test_footprint(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "wal");
	struct wal_options o = {.shard_count = 1};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	uint8_t body[WT_BODY_MAX];
	const uint64_t n = 20000;
	uint64_t body_bytes = 0;
	for (uint64_t i = 0; i < n; i++) {
		struct tally_view b = {body, (uint32_t)wt_event(11, i, body)};
		body_bytes += b.len;
		CHECK_EQ(
		    wal_append(s, wt_tenant(11, i), &b, WT_BASE_TIME_US + (int64_t)i * 20, NULL),
		    0);
	}
	CHECK_EQ(wal_close(w), 0);
	struct wal_segment_info seg;
	size_t cnt;
	CHECK_EQ(wal_segments_list(dir, 0, &seg, 1, &cnt), 0);
	CHECK_EQ(cnt, 1);
	printf("footprint: %.1f bytes/event on disk for %.1f-byte bodies\n",
	       (double)seg.file_bytes / (double)n, (double)body_bytes / (double)n);
	CHECK(body_bytes / n >= 140);
	CHECK(seg.file_bytes <= 60 * n);
	wt_rmrf(dir);
}

/* Seek through a many-entry sparse index, then with a damaged index (must fall back). */
static void test_index_seek(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "wal");
	struct wal_options o = {.shard_count = 1};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	const uint64_t N = 40000;
	fill(wal_shard(w, 0), 0, N, SEED);
	CHECK_EQ(wal_close(w), 0);
	char idx[700];
	snprintf(idx, sizeof idx, "%s/wal/shard-00/00000000000000000000.idx", dir);
	uint64_t idx_bytes = wt_file_size(idx);
	CHECK(idx_bytes >= 16 * 10); /* one entry per 64 KiB of a ~1.8 MB segment */
	CHECK_EQ(idx_bytes % 16, 0);
	for (int pass = 0; pass < 3; pass++) {
		if (pass == 1) { /* entries pointing into the middle of blocks */
			int fd = open(idx, O_RDWR);
			CHECK(fd >= 0);
			for (uint64_t e = 1; e < idx_bytes / 16; e++) {
				uint8_t pos[8];
				CHECK(pread(fd, pos, 8, (off_t)(e * 16 + 8)) == 8);
				pos[0] ^= 0x5;
				CHECK(pwrite(fd, pos, 8, (off_t)(e * 16 + 8)) == 8);
			}
			close(fd);
		}
		if (pass == 2) /* garbage, with a partial trailing entry */
			CHECK(truncate(idx, 37) == 0);
		struct wal_reader *r;
		CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
		struct wal_record rec;
		for (int k = 0; k < 200; k++) {
			uint64_t target = wt_mix((uint64_t)k * 31 + (uint64_t)pass) % N;
			CHECK_EQ(wal_reader_seek(r, 0, target), 0);
			CHECK_EQ(wal_reader_next(r, &rec), 1);
			check_record(&rec, target, SEED);
		}
		wal_reader_close(r);
	}
	/* The writer rebuilds the newest segment's index at open. */
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_close(w), 0);
	CHECK_EQ(wt_file_size(idx), idx_bytes);
	wt_rmrf(dir);
}

/* True if bytes [from, to) of the file are all zero. */
static bool zeros_in(const char *path, uint64_t from, uint64_t to)
{
	int fd = open(path, O_RDONLY);
	CHECK(fd >= 0);
	uint8_t buf[4096];
	bool all = true;
	for (uint64_t at = from; all && at < to;) {
		size_t n = to - at < sizeof buf ? (size_t)(to - at) : sizeof buf;
		CHECK(pread(fd, buf, n, (off_t)at) == (ssize_t)n);
		for (size_t i = 0; i < n; i++)
			all &= buf[i] == 0;
		at += n;
	}
	close(fd);
	return all;
}

static void test_prefill(void)
{
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "walprefill");
	const uint64_t n = 40000;
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		/* Several 256 KiB segments with the default 1 MiB prefill (capped per segment);
		   everything synced, then the process dies without wal_close. */
		struct wal_options o = {.shard_count = 1, .segment_bytes_max = 256 << 10};
		struct wal *w;
		CHECK_EQ(wal_open(dir, &o, &w), 0);
		struct wal_shard *s = wal_shard(w, 0);
		fill(s, 0, n, SEED);
		CHECK_EQ(wal_flush(s), 0);
		CHECK_EQ(wal_sync(s, NULL), 0);
		_exit(0);
	}
	int st;
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
	struct wal_segment_info segs[256];
	size_t ns;
	CHECK_EQ(wal_segments_list(dir, 0, segs, 256, &ns), 0);
	CHECK(ns >= 3);
	for (size_t i = 0; i < ns; i++) {
		struct wal_segment_stats vs;
		int rc = wal_segment_verify(segs[i].path, segs[i].base_offset, true, &vs);
		if (i + 1 < ns) {
			/* Sealed: ends exactly with its last block. */
			CHECK_EQ(rc, 0);
			CHECK_EQ(vs.file_bytes, wt_file_size(segs[i].path));
		} else {
			/* Newest, left by a dead writer: data, then prefill zeros to the file end. */
			CHECK_EQ(rc, -EBADMSG);
			CHECK(wt_file_size(segs[i].path) > vs.torn_tail_at);
			CHECK(zeros_in(segs[i].path, vs.torn_tail_at, wt_file_size(segs[i].path)));
		}
	}
	/* Recovery cuts the zeros; every record is there; appends continue after them. */
	struct wal_options o = {.shard_count = 1, .segment_bytes_max = 256 << 10};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	CHECK_EQ(wal_next_offset(s), n);
	CHECK_EQ(wal_durable_next(s), n);
	fill(s, n, n + 5000, SEED);
	CHECK_EQ(wal_close(w), 0);
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
	struct wal_record rec;
	uint64_t got = 0;
	int rc;
	while ((rc = wal_reader_next(r, &rec)) == 1)
		check_record(&rec, got++, SEED);
	CHECK_EQ(rc, 0);
	CHECK_EQ(got, n + 5000);
	wal_reader_close(r);
	/* wal_close leaves no zeros: every segment verifies to its end. */
	CHECK_EQ(wal_segments_list(dir, 0, segs, 256, &ns), 0);
	for (size_t i = 0; i < ns; i++) {
		struct wal_segment_stats vs;
		CHECK_EQ(wal_segment_verify(segs[i].path, segs[i].base_offset, true, &vs), 0);
		CHECK_EQ(vs.file_bytes, wt_file_size(segs[i].path));
	}
	wt_rmrf(dir);
}

/*
 * Shards fed the same records do not roll together: shard i's first segment rolls i/count of
 * half the roll size early (so their dedup seals do not all run at once), later segments at the
 * full size, which keeps the shards apart.
 */
static void test_staggered_rolls(void)
{
	enum { SHARDS = 4, N = 24000, SEG = 256 << 10 };
	char dir[512];
	wt_tmpdir(dir, sizeof dir, "wal-stagger");
	struct wal_options o = {
	    .shard_count = SHARDS, .block_bytes_max = 16 << 10, .segment_bytes_max = SEG};
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	for (uint16_t i = 0; i < SHARDS; i++)
		fill(wal_shard(w, i), 0, N, SEED);
	CHECK_EQ(wal_close(w), 0);

	uint64_t first_end[SHARDS], second_len[SHARDS], first_bytes[SHARDS];
	for (uint16_t i = 0; i < SHARDS; i++) {
		struct wal_segment_info segs[64];
		size_t nseg;
		CHECK_EQ(wal_segments_list(dir, i, segs, 64, &nseg), 0);
		CHECK(nseg >= 3);
		first_end[i] = segs[1].base_offset;
		second_len[i] = segs[2].base_offset - segs[1].base_offset;
		first_bytes[i] = segs[0].file_bytes;
		CHECK(first_bytes[i] <= (uint64_t)SEG - (uint64_t)SEG / 2 / SHARDS * i);
	}
	for (uint16_t i = 1; i < SHARDS; i++) {
		CHECK(first_end[i] < first_end[i - 1]);
		/* A full-size second segment everywhere: within one block's records of shard 0's. */
		CHECK(second_len[i] + 200 > second_len[0] && second_len[0] + 200 > second_len[i]);
	}
	/* Shard 3 rolled at 5/8 of the size: well before shard 0. */
	CHECK(first_bytes[SHARDS - 1] * 10 < first_bytes[0] * 7);
	CHECK(first_bytes[0] > (uint64_t)SEG / 8 * 7);
}

/* Page-cache residency of [from, to) of `path`, one byte per page (1 = cached) into `res`. */
static size_t resident_pages(const char *path, uint8_t *res, size_t cap)
{
	int fd = open(path, O_RDONLY);
	CHECK(fd >= 0);
	off_t size = lseek(fd, 0, SEEK_END);
	size_t pages = ((size_t)size + 4095) / 4096;
	CHECK(pages <= cap);
	if (pages) {
		void *m = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
		CHECK(m != MAP_FAILED);
		CHECK(mincore(m, (size_t)size, res) == 0);
		munmap(m, (size_t)size);
	}
	close(fd);
	return pages;
}

static size_t count_resident(const uint8_t *res, size_t from_page, size_t to_page)
{
	size_t n = 0;
	for (size_t i = from_page; i < to_page; i++)
		n += res[i] & 1;
	return n;
}

/*
 * Drop-behind (docs/wal-format.md "Page cache"): after each sync, the current segment's durable
 * bytes more than cache_keep_bytes behind its end leave the page cache; a sealed segment leaves
 * it whole. With WAL_CACHE_KEEP_ALL nothing is dropped. Residency is read with mincore() before
 * anything reads the files.
 */
static void test_drop_behind(void)
{
	static uint8_t res[2][8192];
	for (int keep_all = 0; keep_all < 2; keep_all++) {
		char dir[512];
		wt_tmpdir(dir, sizeof dir, "waldrop");
		struct statfs sf;
		CHECK(statfs(dir, &sf) == 0);
		if (sf.f_type == 0x01021994 /* TMPFS_MAGIC: the cache is the storage */) {
			printf("test_wal: drop-behind skipped on tmpfs\n");
			wt_rmrf(dir);
			return;
		}
		struct wal_options o = {.shard_count = 1, .segment_bytes_max = 4 << 20,
					.cache_keep_bytes = keep_all ? WAL_CACHE_KEEP_ALL : 1 << 20};
		struct wal *w;
		CHECK_EQ(wal_open(dir, &o, &w), 0);
		struct wal_shard *s = wal_shard(w, 0);
		struct wal_segment_info segs[8];
		size_t ns = 0;
		uint64_t n = 0;
		/* Into the second segment by 2.5 MiB or more, syncing every 1000 records. */
		for (;;) {
			fill(s, n, n + 1000, SEED);
			n += 1000;
			CHECK_EQ(wal_flush(s), 0);
			CHECK_EQ(wal_sync(s, NULL), 0);
			CHECK_EQ(wal_segments_list(dir, 0, segs, 8, &ns), 0);
			/* segment 0 took base_offset records for 4 MiB: 2.75 MiB more is 11/16 of it */
			uint64_t base = ns == 2 ? segs[1].base_offset : 0;
			if (ns == 2 && (n - base) * 16 >= base * 11)
				break;
			CHECK(ns <= 2);
		}
		size_t p0 = resident_pages(segs[0].path, res[0], 8192);
		size_t p1 = resident_pages(segs[1].path, res[1], 8192);
		/* Only now read the files: where the newest one's data ends (then its prefill). */
		struct wal_segment_stats vs;
		int vrc = wal_segment_verify(segs[1].path, segs[1].base_offset, true, &vs);
		CHECK(vrc == 0 || vrc == -EBADMSG); /* -EBADMSG: the prefill zeros after the data */
		uint64_t end = vs.torn_tail_at != UINT64_MAX ? vs.torn_tail_at : vs.file_bytes;
		CHECK(end > (5u << 19)); /* 2.5 MiB of data in the newest segment */
		CHECK(end / 4096 <= p1);
		size_t old0 = count_resident(res[0], 0, p0);
		size_t below = count_resident(res[1], 0, (end - (1u << 20) - (256u << 10)) / 4096);
		size_t tail = count_resident(res[1], (end - (512u << 10)) / 4096, end / 4096);
		printf("test_wal: drop-behind %s: sealed segment %zu of %zu pages cached; newest: %zu "
		       "cached below its last 1.25 MiB, %zu of the last 512 KiB\n",
		       keep_all ? "off" : "on", old0, p0, below, tail);
		if (keep_all) {
			CHECK(old0 > p0 / 2);
			CHECK(below > 0);
		} else {
			CHECK_EQ(old0, 0);
			CHECK_EQ(below, 0);
			CHECK(tail > 0); /* the kept stretch stays cached */
		}
		CHECK_EQ(wal_close(w), 0);
		wt_rmrf(dir);
	}
}

int main(void)
{
	test_footprint();
	test_index_seek();
	test_round_trip();
	test_durable_only();
	test_checkpoint_retention();
	test_prefill();
	test_staggered_rolls();
	test_drop_behind();
	printf("test_wal: OK\n");
	return 0;
}
