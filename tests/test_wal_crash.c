/*
 * test_wal_crash.c — crash recovery and corruption detection:
 *   - the newest segment truncated at EVERY byte of its last two blocks: recovery keeps
 *     exactly the complete blocks (and the reader serves exactly their records);
 *   - bit flips in the last two blocks: in the last one it is a torn tail (truncated), in the
 *     one before it (a valid block follows) it is corruption: refused, file and byte named;
 *   - corruption in the middle of the newest segment and in a sealed segment: refused with
 *     file and byte offset (open with verify_sealed, the reader, wal_segment_verify);
 *   - a missing sealed segment; header length fields 0, 2^31, 2^32-1 (with a valid checksum);
 *     record length fields 0, 2^31, 2^32-1 inside a checksummed payload, and LZ4 payloads that
 *     do not decompress to raw_bytes: recovery refuses them (rule 9: checksummed, so no torn
 *     write), --repair quarantines them, no crash.
 */
#include <lz4.h>

#include "wal_internal.h"
#include "wal_testutil.h"

static struct wt_faultio fio;

static struct wal_options opts(void)
{
	struct wal_options o = {.shard_count = 1,
				.block_bytes_max = 16 << 10,
				.segment_bytes_max = 64 << 10,
				.io = &fio.io};
	return o;
}

/* Writes `blocks` blocks of `per` events each into shard 0 (continuing offsets). */
static void write_blocks(const char *dir, int blocks, int per)
{
	struct wal_options o = opts();
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	struct wal_shard *s = wal_shard(w, 0);
	uint8_t body[WT_BODY_MAX];
	for (int b = 0; b < blocks; b++) {
		for (int k = 0; k < per; k++) {
			uint64_t i = wal_next_offset(s);
			struct tally_view v = {body, (uint32_t)wt_event(1, i, body)};
			CHECK_EQ(
			    wal_append(s, wt_tenant(1, i), &v, WT_BASE_TIME_US + (int64_t)i, NULL),
			    0);
		}
		CHECK_EQ(wal_flush(s), 0);
	}
	CHECK_EQ(wal_close(w), 0);
}

static uint8_t *read_file(const char *path, size_t *len)
{
	*len = wt_file_size(path);
	uint8_t *b = malloc(*len + 1);
	int fd = open(path, O_RDONLY);
	CHECK(fd >= 0 && b);
	CHECK(pread(fd, b, *len, 0) == (ssize_t)*len);
	close(fd);
	return b;
}

static void write_file(const char *path, const uint8_t *b, size_t len)
{
	/* No O_TRUNC (ext4 flushes files truncated to zero on close: slow). */
	int fd = open(path, O_WRONLY | O_CREAT, 0644);
	CHECK(fd >= 0);
	CHECK(pwrite(fd, b, len, 0) == (ssize_t)len);
	CHECK(ftruncate(fd, (off_t)len) == 0);
	close(fd);
}

/* Block start positions of a segment image; returns the count (boundaries[count] = end). */
static int block_bounds(const uint8_t *b, size_t len, uint64_t *bounds, uint32_t *counts, int cap)
{
	int n = 0;
	uint64_t pos = 0;
	while (pos < len && n < cap) {
		bounds[n] = pos;
		counts[n] = wal_get_u32(b + pos + 8);
		pos += WAL_BLOCK_HEADER_BYTES + wal_get_u32(b + pos + 16);
		n++;
	}
	CHECK_EQ(pos, len);
	bounds[n] = pos;
	return n;
}

static uint64_t records_before(const uint64_t *bounds, const uint32_t *counts, int n, uint64_t t,
			       uint64_t *keep_bytes)
{
	uint64_t r = 0;
	*keep_bytes = 0;
	for (int k = 0; k < n && bounds[k + 1] <= t; k++) {
		r += counts[k];
		*keep_bytes = bounds[k + 1];
	}
	return r;
}

static void read_all_check(const char *dir, uint64_t expect)
{
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
	struct wal_record rec;
	uint64_t n = 0;
	int got;
	uint8_t body[WT_BODY_MAX];
	while ((got = wal_reader_next(r, &rec)) == 1) {
		CHECK_EQ(rec.offset, n);
		size_t len = wt_event(1, n, body);
		CHECK(rec.ev.body.len == len && memcmp(rec.ev.body.ptr, body, len) == 0);
		n++;
	}
	CHECK_EQ(got, 0);
	CHECK_EQ(n, expect);
	wal_reader_close(r);
}

static void test_truncate_every_byte(void)
{
	char dir[512], seg[700];
	wt_tmpdir(dir, sizeof dir, "walcrash");
	write_blocks(dir, 6, 8);
	snprintf(seg, sizeof seg, "%s/wal/shard-00/00000000000000000000.log", dir);
	size_t len;
	uint8_t *orig = read_file(seg, &len);
	uint64_t bounds[64];
	uint32_t counts[64];
	int nb = block_bounds(orig, len, bounds, counts, 63);
	CHECK_EQ(nb, 6);
	unsigned checked = 0;
	for (uint64_t t = bounds[nb - 2]; t <= len; t++) {
		write_file(seg, orig, (size_t)t);
		uint64_t keep;
		uint64_t expect = records_before(bounds, counts, nb, t, &keep);
		struct wal_options o = opts();
		struct wal *w;
		CHECK_EQ(wal_open(dir, &o, &w), 0);
		CHECK_EQ(wal_next_offset(wal_shard(w, 0)), expect);
		CHECK_EQ(wal_durable_next(wal_shard(w, 0)), expect);
		CHECK_EQ(wt_file_size(seg), keep);
		if (t % 61 == 0 || t == len || t == bounds[nb - 1]) {
			read_all_check(dir, expect);
			/* And the writer continues right after the kept blocks. */
			uint8_t body[WT_BODY_MAX];
			struct tally_view v = {body, (uint32_t)wt_event(1, expect, body)};
			uint64_t off;
			CHECK_EQ(wal_append(wal_shard(w, 0), wt_tenant(1, expect), &v,
					    WT_BASE_TIME_US + (int64_t)expect, &off),
				 0);
			CHECK_EQ(off, expect);
			CHECK_EQ(wal_close(w), 0);
			read_all_check(dir, expect + 1);
		} else {
			CHECK_EQ(wal_close(w), 0);
		}
		checked++;
	}
	CHECK(checked > 2 * WAL_BLOCK_HEADER_BYTES);
	printf("truncation: %u positions checked (last two blocks: bytes %" PRIu64 "..%zu)\n",
	       checked, bounds[nb - 2], len);
	free(orig);
	wt_rmrf(dir);
}

static void test_bit_flips(void)
{
	char dir[512], seg[700];
	wt_tmpdir(dir, sizeof dir, "walcrash");
	write_blocks(dir, 6, 8);
	snprintf(seg, sizeof seg, "%s/wal/shard-00/00000000000000000000.log", dir);
	size_t len;
	uint8_t *orig = read_file(seg, &len);
	uint8_t *img = malloc(len);
	uint64_t bounds[64];
	uint32_t counts[64];
	int nb = block_bounds(orig, len, bounds, counts, 63);
	uint64_t keep;
	uint64_t before_last = records_before(bounds, counts, nb, bounds[nb - 1], &keep);
	for (int k = 0; k < 400; k++) {
		uint64_t span = len - bounds[nb - 2];
		uint64_t pos = bounds[nb - 2] + wt_mix((uint64_t)k) % span;
		/* Headers are small: make sure every header byte gets flipped too. */
		if (k < 2 * WAL_BLOCK_HEADER_BYTES)
			pos = (k < WAL_BLOCK_HEADER_BYTES ? bounds[nb - 2] : bounds[nb - 1]) +
			      (uint64_t)(k % WAL_BLOCK_HEADER_BYTES);
		memcpy(img, orig, len);
		img[pos] ^= (uint8_t)(1u << (wt_mix((uint64_t)k + 99) % 8));
		write_file(seg, img, len);
		struct wal_options o = opts();
		struct wal *w;
		int rc = wal_open(dir, &o, &w);
		if (pos >= bounds[nb - 1]) {
			/* Last block damaged, nothing valid after it: a torn tail. */
			CHECK_EQ(rc, 0);
			CHECK_EQ(wal_next_offset(wal_shard(w, 0)), before_last);
			CHECK_EQ(wal_close(w), 0);
		} else {
			CHECK_EQ(rc, -EBADMSG);
			char want[64];
			snprintf(want, sizeof want, "at byte %" PRIu64 " ", bounds[nb - 2]);
			CHECK(strstr(wal_last_error(), "00000000000000000000.log") != NULL);
			CHECK(strstr(wal_last_error(), want) != NULL);
			/* Nothing was truncated by the refusal. */
			CHECK_EQ(wt_file_size(seg), len);
		}
	}
	/* Corruption in the middle of the newest segment. */
	memcpy(img, orig, len);
	img[bounds[2] + 100] ^= 0x10;
	write_file(seg, img, len);
	struct wal_options o = opts();
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), -EBADMSG);
	char want[64];
	snprintf(want, sizeof want, "at byte %" PRIu64 " ", bounds[2]);
	CHECK(strstr(wal_last_error(), want) != NULL);
	/* --repair quarantines the tail (never silently) and opens. */
	o.repair = true;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_next_offset(wal_shard(w, 0)), counts[0] + counts[1]);
	CHECK_EQ(wal_close(w), 0);
	char q[800];
	snprintf(q, sizeof q, "%s.quarantine-%" PRIu64, seg, bounds[2]);
	CHECK_EQ(wt_file_size(q), len - bounds[2]);
	free(img);
	free(orig);
	wt_rmrf(dir);
}

static void test_sealed_corruption(void)
{
	char dir[512], seg0[WAL_PATH_BYTES_MAX], seg1[WAL_PATH_BYTES_MAX];
	wt_tmpdir(dir, sizeof dir, "walcrash");
	write_blocks(dir, 300, 8); /* ~0.8 KiB blocks, 64 KiB segments: several segments */
	struct wal_segment_info segs[16];
	size_t nseg;
	CHECK_EQ(wal_segments_list(dir, 0, segs, 16, &nseg), 0);
	CHECK(nseg >= 3);
	snprintf(seg0, sizeof seg0, "%s", segs[0].path);
	snprintf(seg1, sizeof seg1, "%s", segs[1].path);
	size_t len;
	uint8_t *orig = read_file(seg0, &len);
	uint64_t bounds[256];
	uint32_t counts[256];
	int nb = block_bounds(orig, len, bounds, counts, 255);
	CHECK(nb > 10);
	uint8_t *img = malloc(len);
	memcpy(img, orig, len);
	img[bounds[5] + 90] ^= 0x01;
	write_file(seg0, img, len);

	struct wal_options o = opts();
	o.verify_sealed = true;
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), -EBADMSG);
	char want[64];
	snprintf(want, sizeof want, "at byte %" PRIu64 " ", bounds[5]);
	CHECK(strstr(wal_last_error(), seg0) != NULL);
	CHECK(strstr(wal_last_error(), want) != NULL);
	CHECK(strstr(wal_last_error(), "sealed") != NULL);

	/* The reader refuses at the same place, after serving the blocks before it. */
	struct wal_reader *r;
	CHECK_EQ(wal_reader_open(dir, 0, &r), 0);
	struct wal_record rec;
	uint64_t n = 0;
	int got;
	while ((got = wal_reader_next(r, &rec)) == 1)
		n++;
	CHECK_EQ(got, -EBADMSG);
	CHECK_EQ(n, 5 * 8);
	CHECK(strstr(wal_last_error(), want) != NULL);
	wal_reader_close(r);
	/* So does verify. */
	struct wal_segment_stats st;
	CHECK_EQ(wal_segment_verify(seg0, 0, true, &st), -EBADMSG);
	CHECK_EQ(st.torn_tail_at, bounds[5]);

	/* A torn last block in a sealed segment is corruption too (default open). */
	write_file(seg0, orig, len - 3);
	o.verify_sealed = false;
	CHECK_EQ(wal_open(dir, &o, &w), -EBADMSG);
	CHECK(strstr(wal_last_error(), seg0) != NULL);
	write_file(seg0, orig, len);
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_close(w), 0);

	/* A missing sealed segment: offset gap. */
	char moved[WAL_PATH_BYTES_MAX + 8];
	snprintf(moved, sizeof moved, "%s.moved", seg1);
	CHECK(rename(seg1, moved) == 0);
	CHECK_EQ(wal_open(dir, &o, &w), -EBADMSG);
	CHECK(strstr(wal_last_error(), "next segment starts at") != NULL);
	CHECK(rename(moved, seg1) == 0);
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_close(w), 0);
	free(img);
	free(orig);
	wt_rmrf(dir);
}

/* After power loss a file can come back longer than its data: zeros, or stale garbage. */
static void test_garbage_tail(void)
{
	char dir[512], seg[700];
	wt_tmpdir(dir, sizeof dir, "walcrash");
	write_blocks(dir, 3, 8);
	snprintf(seg, sizeof seg, "%s/wal/shard-00/00000000000000000000.log", dir);
	size_t len;
	uint8_t *orig = read_file(seg, &len);
	uint8_t *img = malloc(len + 8192);
	for (int kind = 0; kind < 3; kind++) {
		memcpy(img, orig, len);
		for (size_t i = 0; i < 8192; i++)
			img[len + i] = kind == 0 ? 0 : (uint8_t)wt_mix(i * 3 + (uint64_t)kind);
		if (kind == 2) /* a stray magic with a bad block behind it */
			wal_put_u32(img + len + 100, WAL_BLOCK_MAGIC);
		write_file(seg, img, len + 8192);
		struct wal_options o = opts();
		struct wal *w;
		CHECK_EQ(wal_open(dir, &o, &w), 0);
		CHECK_EQ(wal_next_offset(wal_shard(w, 0)), 24);
		CHECK_EQ(wal_close(w), 0);
		CHECK_EQ(wt_file_size(seg), len);
		read_all_check(dir, 24);
	}
	free(img);
	free(orig);
	wt_rmrf(dir);
}

/* Rewrites the header field at `field_off` of the block at `pos` and re-checksums it, so
   only the field's own rule can reject it. */
static void patch_header(uint8_t *img, uint64_t pos, size_t field_off, uint32_t v)
{
	uint32_t stored_orig = wal_get_u32(img + pos + 16);
	wal_put_u32(img + pos + field_off, v);
	uint64_t c = wal_block_checksum(img + pos, img + pos + WAL_BLOCK_HEADER_BYTES, stored_orig);
	wal_put_u64(img + pos + 64, c);
}

/*
 * The newest segment `seg` holds valid blocks up to byte `good` (`records` records), then one
 * checksummed block whose payload breaks rule 9. Recovery must refuse to open (-EBADMSG, file
 * and byte named, nothing truncated); --repair quarantines from `good` and opens; then every
 * reader serves exactly the good records.
 */
static void check_payload_refused(const char *dir, const char *seg, uint64_t good,
				  uint64_t records)
{
	size_t total = wt_file_size(seg);
	struct wal_segment_stats st;
	CHECK_EQ(wal_segment_verify(seg, 0, true, &st), -EBADMSG);
	CHECK_EQ(st.torn_tail_at, good);
	struct wal_options o = opts();
	struct wal *w;
	CHECK_EQ(wal_open(dir, &o, &w), -EBADMSG);
	char want[64];
	snprintf(want, sizeof want, "at byte %" PRIu64 " ", good);
	CHECK(strstr(wal_last_error(), "00000000000000000000.log") != NULL);
	CHECK(strstr(wal_last_error(), want) != NULL);
	CHECK(strstr(wal_last_error(), "no torn write") != NULL);
	CHECK_EQ(wt_file_size(seg), total);
	o.repair = true;
	CHECK_EQ(wal_open(dir, &o, &w), 0);
	CHECK_EQ(wal_next_offset(wal_shard(w, 0)), records);
	CHECK_EQ(wal_close(w), 0);
	CHECK_EQ(wt_file_size(seg), good);
	char q[800];
	snprintf(q, sizeof q, "%s.quarantine-%" PRIu64, seg, good);
	CHECK_EQ(wt_file_size(q), total - good);
	CHECK_EQ(unlink(q), 0);
	read_all_check(dir, records);
}

static void test_length_fields(void)
{
	char dir[512], seg[700];
	wt_tmpdir(dir, sizeof dir, "walcrash");
	write_blocks(dir, 4, 8);
	snprintf(seg, sizeof seg, "%s/wal/shard-00/00000000000000000000.log", dir);
	size_t len;
	uint8_t *orig = read_file(seg, &len);
	uint64_t bounds[16];
	uint32_t counts[16];
	int nb = block_bounds(orig, len, bounds, counts, 15);
	uint8_t *img = malloc(len);
	static const uint32_t vals[] = {0, 1u << 31, UINT32_MAX};
	static const size_t fields[] = {8 /* record_count */, 12 /* raw */, 16 /* stored */};
	for (size_t f = 0; f < 3; f++)
		for (size_t v = 0; v < 3; v++)
			for (int which = 1; which <= 2; which++) {
				int blk = which == 1 ? 1 : nb - 1; /* a middle block / the last */
				memcpy(img, orig, len);
				patch_header(img, bounds[blk], fields[f], vals[v]);
				write_file(seg, img, len);
				struct wal_segment_stats st;
				CHECK_EQ(wal_segment_verify(seg, 0, true, &st), -EBADMSG);
				CHECK_EQ(st.torn_tail_at, bounds[blk]);
				struct wal_segment_iter *it;
				CHECK_EQ(wal_segment_iter_open(seg, 0, UINT64_MAX, false, &it), 0);
				struct wal_record rec;
				int got;
				while ((got = wal_segment_iter_next(it, &rec)) == 1) {
				}
				CHECK_EQ(got, -EBADMSG);
				wal_segment_iter_close(it);
				struct wal_options o = opts();
				struct wal *w;
				int rc = wal_open(dir, &o, &w);
				if (blk == nb - 1) {
					CHECK_EQ(rc, 0); /* torn tail: truncated */
					CHECK_EQ(wal_next_offset(wal_shard(w, 0)),
						 (uint64_t)8 * (nb - 1));
					CHECK_EQ(wal_close(w), 0);
				} else {
					CHECK_EQ(rc, -EBADMSG);
				}
			}

	/* Record-level lengths inside a valid, checksummed block: appended as a new last block. */
	static const uint64_t blens[] = {0, 1ull << 31, UINT32_MAX, 11, TALLY_EVENT_BYTES_MAX + 1};
	for (size_t v = 0; v < 5 + 2; v++) {
		uint8_t raw[64], blk[WAL_BLOCK_HEADER_BYTES + 128];
		size_t n = 0;
		raw[n++] = WAL_RECORD_EVENT;
		raw[n++] = 0; /* ingest delta */
		if (v < 5) {
			raw[n++] = 0; /* tenant length */
			n += wal_put_varint(raw + n, blens[v]);
			memset(raw + n, 'x', 12);
			n += 12;
		} else {
			raw[n++] = v == 5 ? 65 : 255; /* tenant length over the cap */
			memset(raw + n, 't', 20);
			n += 20;
		}
		struct wal_block_hdr h = {.magic = WAL_BLOCK_MAGIC,
					  .version = 1,
					  .codec = WAL_CODEC_NONE,
					  .record_count = 1,
					  .raw_bytes = (uint32_t)n,
					  .stored_bytes = (uint32_t)n,
					  .first_offset = 8u * nb,
					  .first_ingest_time_us = WT_BASE_TIME_US + 1000000,
					  .max_ingest_time_us = WT_BASE_TIME_US + 1000000,
					  .min_event_time_us = 0,
					  .max_event_time_us = 0};
		wal_block_hdr_encode(&h, blk);
		memcpy(blk + WAL_BLOCK_HEADER_BYTES, raw, n);
		wal_put_u64(blk + 64, wal_block_checksum(blk, raw, n));
		uint8_t *img2 = malloc(len + sizeof blk);
		memcpy(img2, orig, len);
		memcpy(img2 + len, blk, WAL_BLOCK_HEADER_BYTES + n);
		write_file(seg, img2, len + WAL_BLOCK_HEADER_BYTES + n);
		free(img2);
		struct wal_segment_stats st;
		CHECK_EQ(wal_segment_verify(seg, 0, true, &st), -EBADMSG);
		CHECK_EQ(st.torn_tail_at, len);
		/* Header and checksum are valid, so this is no torn write; the payload does not
		   decode (rule 9), so it is corruption: recovery refuses it, naming file and
		   byte, rather than accept what readers would refuse (or cut it silently). */
		check_payload_refused(dir, seg, len, 8u * nb);
	}
	/* An LZ4 block whose payload does not decompress to raw_bytes (found by
	   fuzz_wal_recover: recovery used to accept it and every reader then failed on it). */
	for (int v = 0; v < 2; v++) {
		uint8_t junk[40], blk[WAL_BLOCK_HEADER_BYTES + sizeof junk];
		for (size_t i = 0; i < sizeof junk; i++)
			junk[i] = (uint8_t)wt_mix(i + 7u * (uint64_t)v);
		int stored = (int)sizeof junk;
		if (v == 1) /* a real LZ4 stream, but 1 byte short of raw_bytes */
			stored = LZ4_compress_default("tally-tally-tally-tally-tally-tally",
						      (char *)junk, 35, (int)sizeof junk);
		CHECK(stored > 0);
		struct wal_block_hdr h = {.magic = WAL_BLOCK_MAGIC,
					  .version = 1,
					  .codec = WAL_CODEC_LZ4,
					  .record_count = 1,
					  .raw_bytes = 36,
					  .stored_bytes = (uint32_t)stored,
					  .first_offset = 8u * nb,
					  .first_ingest_time_us = WT_BASE_TIME_US + 1000000,
					  .max_ingest_time_us = WT_BASE_TIME_US + 1000000,
					  .min_event_time_us = INT64_MAX,
					  .max_event_time_us = INT64_MIN};
		wal_block_hdr_encode(&h, blk);
		memcpy(blk + WAL_BLOCK_HEADER_BYTES, junk, (size_t)stored);
		wal_put_u64(blk + 64, wal_block_checksum(blk, junk, (uint32_t)stored));
		uint8_t *img2 = malloc(len + sizeof blk);
		memcpy(img2, orig, len);
		memcpy(img2 + len, blk, WAL_BLOCK_HEADER_BYTES + (size_t)stored);
		write_file(seg, img2, len + WAL_BLOCK_HEADER_BYTES + (size_t)stored);
		free(img2);
		check_payload_refused(dir, seg, len, 8u * nb);
	}
	free(img);
	free(orig);
	wt_rmrf(dir);
}

int main(void)
{
	wt_faultio_init(&fio);
	fio.noop_sync = 1; /* thousands of reopens: skip the real syncs */
	test_truncate_every_byte();
	test_bit_flips();
	test_sealed_corruption();
	test_length_fields();
	test_garbage_tail();
	printf("test_wal_crash: OK\n");
	return 0;
}
