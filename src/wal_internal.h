/*
 * wal_internal.h — private pieces shared by src/wal*.c: the block header codec, the block
 * validity check, varints, paths and the thread-local error message. Format: docs/wal-format.md.
 */
#ifndef TALLY_WAL_INTERNAL_H
#define TALLY_WAL_INTERNAL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tally/wal.h"

#define WAL_BLOCK_MAGIC          0x424C5754u /* "TWLB" as bytes 54 57 4C 42 */
#define WAL_CODEC_NONE           0
#define WAL_CODEC_LZ4            1
#define WAL_WATERMARK_MAGIC      0x4D575754u /* "TWWM" */
#define WAL_WATERMARK_BYTES      64
#define WAL_INDEX_ENTRY_BYTES    16
#define WAL_INDEX_INTERVAL_BYTES (64u << 10) /* one index entry per 64 KiB of segment */
#define WAL_SEGMENT_NAME_LEN     24          /* 20 digits + ".log" */
/* LZ4_COMPRESSBOUND(WAL_BLOCK_RAW_BYTES_MAX), spelled out so this header needs no lz4.h. */
#define WAL_BLOCK_STORED_BYTES_MAX (WAL_BLOCK_RAW_BYTES_MAX + WAL_BLOCK_RAW_BYTES_MAX / 255 + 16)

/* Decoded block header (docs/wal-format.md "Block header"). */
struct wal_block_hdr {
	uint32_t magic;
	uint8_t version;
	uint8_t codec;
	uint16_t flags;
	uint32_t record_count;
	uint32_t raw_bytes;
	uint32_t stored_bytes;
	uint32_t reserved;
	uint64_t first_offset;
	int64_t first_ingest_time_us;
	int64_t max_ingest_time_us;
	int64_t min_event_time_us;
	int64_t max_event_time_us;
	uint64_t checksum;
};

static inline void wal_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void wal_put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline void wal_put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t wal_get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t wal_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t wal_get_u64(const uint8_t *p)
{
	return (uint64_t)wal_get_u32(p) | (uint64_t)wal_get_u32(p + 4) << 32;
}

/* Unsigned LEB128. Returns bytes written (1..10). */
static inline size_t wal_put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}
/* Returns bytes consumed, or 0 if truncated / longer than 10 bytes / overflowing. */
static inline size_t wal_get_varint(const uint8_t *p, size_t avail, uint64_t *v)
{
	uint64_t r = 0;
	for (size_t i = 0; i < avail && i < 10; i++) {
		uint64_t b = p[i] & 0x7f;
		if (i == 9 && p[i] > 1)
			return 0;
		r |= b << (7 * i);
		if (!(p[i] & 0x80)) {
			*v = r;
			return i + 1;
		}
	}
	return 0;
}

void wal_block_hdr_encode(const struct wal_block_hdr *h, uint8_t out[WAL_BLOCK_HEADER_BYTES]);
void wal_block_hdr_decode(const uint8_t in[WAL_BLOCK_HEADER_BYTES], struct wal_block_hdr *h);
/* Header-only validity (every field rule except the checksum and offset continuity).
   Returns NULL if fine, else a static string saying which rule failed. */
const char *wal_block_hdr_check(const struct wal_block_hdr *h);
/* XXH3-64 over header bytes [0, 64) then the stored payload. */
uint64_t wal_block_checksum(const uint8_t hdr[WAL_BLOCK_HEADER_BYTES], const uint8_t *payload,
			    size_t stored_bytes);

/*
 * Decompresses (or copies) the payload into raw[0..raw_cap) and checks that exactly
 * h->raw_bytes came out. Returns 0 or -EBADMSG (message in *why).
 */
int wal_block_unpack(const struct wal_block_hdr *h, const uint8_t *payload, uint8_t *raw,
		     size_t raw_cap, const char **why);

/*
 * Decodes the record at raw[*pos..raw_len) into rec (views into raw). `prev_ingest` is the
 * previous record's ingest time (the block's first_ingest_time_us for the first record).
 * Returns 0 or -EBADMSG with *why set. Does not fill rec->offset/shard.
 */
int wal_record_decode(const uint8_t *raw, size_t raw_len, size_t *pos, int64_t prev_ingest,
		      struct wal_record *rec, const char **why);

/* Thread-local error message (wal_last_error). */
void wal_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Paths. Each returns 0 or -ENAMETOOLONG. */
int wal_path_shard_dir(char *buf, size_t cap, const char *data_dir, uint16_t shard);
int wal_path_segment(char *buf, size_t cap, const char *shard_dir, uint64_t base, const char *ext);

/* Parses "<20 digits>.log"; true and *base if it is a segment file name. */
bool wal_parse_segment_name(const char *name, uint64_t *base);

/* Lists segment base offsets of a shard directory, sorted; *bases is malloc'd (may be NULL
   when *n == 0). Returns 0 or -errno. */
int wal_list_bases(const char *shard_dir, uint64_t **bases, size_t *n);

/* fsync a directory by path through io. */
int wal_fsync_dir(const struct wal_io *io, const char *dir);

/* pread/pwrite everything, looping on short transfers. Return 0, -errno, or for pread
   the number of bytes read if EOF came first (>= 0). */
ssize_t wal_pread_full(const struct wal_io *io, int fd, void *buf, size_t n, off_t off);

/* Walks the records of an unpacked block, checking the rules readers apply (docs/wal-format.md
   "Exact block validity rule", after rule 8). next: 0 and *rec, or -EBADMSG with *why. */
struct wal_blockwalk {
	const uint8_t *raw;
	size_t raw_len;
	size_t pos;
	uint32_t left;
	uint64_t next_offset;
	int64_t prev_ingest;
	int64_t max_ingest;
};
void wal_blockwalk_init(struct wal_blockwalk *bw, const struct wal_block_hdr *h, const uint8_t *raw);
int wal_blockwalk_next(struct wal_blockwalk *bw, struct wal_record *rec, const char **why);

/*
 * Scans a segment file's blocks from byte start_pos (0, or a block start known from the index),
 * checking each block with rules 1-8 of docs/wal-format.md (offsets continue from
 * start_offset). Stops at the first invalid or incomplete block. Fills *sc: valid_bytes (end of
 * the last valid block), next_offset, first/last ingest times (INT64_MIN if no block), counts,
 * bad_why (static string; NULL if the file ended exactly at a block boundary), and, with
 * WAL_SCAN_SEARCH_LATER and a bad block, later_valid_at: the position of a block after it that
 * passes rules 1-7, or UINT64_MAX. With WAL_SCAN_DECODE every block that passes rules 1-8 is
 * also unpacked and its records walked as a reader would; a block that fails that is not a torn
 * write (its checksum matched) but corruption: bad_why says so and later_valid_at = its own
 * position, so that recovery refuses it rather than cut acknowledged data. index_cb (may be
 * NULL) gets (offset, position) of every valid block. Returns 0 or -errno (I/O).
 */
#define WAL_SCAN_SEARCH_LATER 1u
#define WAL_SCAN_DECODE       2u
struct wal_scan {
	uint64_t valid_bytes;
	uint64_t next_offset;
	int64_t first_ingest_time_us;
	int64_t last_max_ingest_time_us;
	uint64_t file_bytes;
	const char *bad_why;
	uint64_t later_valid_at;
	uint64_t blocks;
	uint64_t records;
	uint64_t raw_bytes;
};
int wal_scan_segment(const struct wal_io *io, int fd, uint64_t start_pos, uint64_t start_offset,
		     unsigned flags, struct wal_scan *sc,
		     void (*index_cb)(void *, uint64_t, uint64_t), void *cb_ctx);

/* Last entry of a segment's .idx lying before file_bytes, else (0, base). A hint only:
   the caller validates it against the segment. */
void wal_idx_last_entry(const char *shard_dir, uint64_t base, uint64_t file_bytes, uint64_t *pos,
			uint64_t *offset);

/* Watermark page layout (docs/wal-format.md "Durable watermark"). */
#define WAL_WM_OFF_MAGIC   0
#define WAL_WM_OFF_VERSION 4
#define WAL_WM_OFF_DURABLE 8  /* u64, atomic */
#define WAL_WM_OFF_SEQ     16 /* u32 futex word, incremented after every publish */

#endif /* TALLY_WAL_INTERNAL_H */
