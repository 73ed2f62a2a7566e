/*
 * wal_format.c — the WAL's on-disk format: block header codec and validity rules, payload
 * unpacking (LZ4_decompress_safe only, sizes checked against the header caps), record
 * decoding, segment scanning, paths, and the thread-local error message.
 *
 * The byte layout and the exact validity rule are in docs/wal-format.md; this file is the one
 * place that implements them, used by the writer's recovery, the reader and `tally wal verify`.
 * Nothing here trusts a byte read from disk: every length is checked against a named cap and
 * the checksum is verified before the payload is decompressed.
 *
 * Thread safety: all functions are reentrant; the error message is thread-local.
 */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lz4.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no allocation */
#include <xxhash.h>

#include "wal_internal.h"

_Static_assert(WAL_BLOCK_STORED_BYTES_MAX >= LZ4_COMPRESSBOUND(WAL_BLOCK_RAW_BYTES_MAX),
	       "stored cap must cover LZ4's bound");
_Static_assert(WAL_BLOCK_BYTES_MIN >= WAL_RECORD_BYTES_MAX, "a block must hold any record");

static _Thread_local char wal_errbuf[768];

const char *wal_last_error(void)
{
	return wal_errbuf;
}

void wal_set_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(wal_errbuf, sizeof wal_errbuf, fmt, ap);
	va_end(ap);
}

void wal_block_hdr_encode(const struct wal_block_hdr *h, uint8_t out[WAL_BLOCK_HEADER_BYTES])
{
	wal_put_u32(out + 0, h->magic);
	out[4] = h->version;
	out[5] = h->codec;
	wal_put_u16(out + 6, h->flags);
	wal_put_u32(out + 8, h->record_count);
	wal_put_u32(out + 12, h->raw_bytes);
	wal_put_u32(out + 16, h->stored_bytes);
	wal_put_u32(out + 20, h->reserved);
	wal_put_u64(out + 24, h->first_offset);
	wal_put_u64(out + 32, (uint64_t)h->first_ingest_time_us);
	wal_put_u64(out + 40, (uint64_t)h->max_ingest_time_us);
	wal_put_u64(out + 48, (uint64_t)h->min_event_time_us);
	wal_put_u64(out + 56, (uint64_t)h->max_event_time_us);
	wal_put_u64(out + 64, h->checksum);
}

void wal_block_hdr_decode(const uint8_t in[WAL_BLOCK_HEADER_BYTES], struct wal_block_hdr *h)
{
	h->magic = wal_get_u32(in + 0);
	h->version = in[4];
	h->codec = in[5];
	h->flags = wal_get_u16(in + 6);
	h->record_count = wal_get_u32(in + 8);
	h->raw_bytes = wal_get_u32(in + 12);
	h->stored_bytes = wal_get_u32(in + 16);
	h->reserved = wal_get_u32(in + 20);
	h->first_offset = wal_get_u64(in + 24);
	h->first_ingest_time_us = (int64_t)wal_get_u64(in + 32);
	h->max_ingest_time_us = (int64_t)wal_get_u64(in + 40);
	h->min_event_time_us = (int64_t)wal_get_u64(in + 48);
	h->max_event_time_us = (int64_t)wal_get_u64(in + 56);
	h->checksum = wal_get_u64(in + 64);
}

const char *wal_block_hdr_check(const struct wal_block_hdr *h)
{
	if (h->magic != WAL_BLOCK_MAGIC)
		return "bad magic";
	if (h->version != WAL_FORMAT_VERSION)
		return "unknown format version";
	if (h->codec != WAL_CODEC_NONE && h->codec != WAL_CODEC_LZ4)
		return "unknown codec";
	if (h->flags != 0 || h->reserved != 0)
		return "reserved bits set";
	if (h->record_count == 0 || h->record_count > WAL_BLOCK_RECORDS_MAX)
		return "record count out of range";
	if (h->raw_bytes == 0 || h->raw_bytes > WAL_BLOCK_RAW_BYTES_MAX)
		return "raw size out of range";
	/* The smallest record (a TICK) takes 2 bytes. */
	if ((uint64_t)h->record_count * 2 > h->raw_bytes)
		return "record count exceeds raw size";
	if (h->codec == WAL_CODEC_NONE && h->stored_bytes != h->raw_bytes)
		return "stored size differs from raw size for an uncompressed block";
	if (h->stored_bytes == 0 ||
	    (uint64_t)h->stored_bytes > (uint64_t)LZ4_COMPRESSBOUND(h->raw_bytes))
		return "stored size out of range";
	if (h->first_offset > UINT64_MAX - h->record_count)
		return "offset range overflows";
	if (h->first_ingest_time_us < 0 || h->max_ingest_time_us < h->first_ingest_time_us)
		return "ingest times out of order";
	if (!(h->min_event_time_us <= h->max_event_time_us ||
	      (h->min_event_time_us == INT64_MAX && h->max_event_time_us == INT64_MIN)))
		return "event time range inverted";
	return NULL;
}

uint64_t wal_block_checksum(const uint8_t hdr[WAL_BLOCK_HEADER_BYTES], const uint8_t *payload,
			    size_t stored_bytes)
{
	XXH3_state_t st;
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, hdr, 64);
	XXH3_64bits_update(&st, payload, stored_bytes);
	return XXH3_64bits_digest(&st);
}

int wal_block_unpack(const struct wal_block_hdr *h, const uint8_t *payload, uint8_t *raw,
		     size_t raw_cap, const char **why)
{
	if (h->raw_bytes > raw_cap || h->raw_bytes > WAL_BLOCK_RAW_BYTES_MAX) {
		*why = "raw size exceeds the buffer cap";
		return -EBADMSG;
	}
	if (h->codec == WAL_CODEC_NONE) {
		memcpy(raw, payload, h->raw_bytes);
		return 0;
	}
	int n = LZ4_decompress_safe((const char *)payload, (char *)raw, (int)h->stored_bytes,
				    (int)h->raw_bytes);
	if (n < 0 || (uint32_t)n != h->raw_bytes) {
		*why = "LZ4 payload does not decompress to the raw size";
		return -EBADMSG;
	}
	return 0;
}

int wal_record_decode(const uint8_t *raw, size_t raw_len, size_t *pos, int64_t prev_ingest,
		      struct wal_record *rec, const char **why)
{
	size_t p = *pos;
	if (p >= raw_len)
		goto truncated;
	uint8_t kind = raw[p++];
	uint64_t delta;
	size_t n = wal_get_varint(raw + p, raw_len - p, &delta);
	if (n == 0)
		goto truncated;
	p += n;
	if (delta > (uint64_t)(INT64_MAX - prev_ingest)) {
		*why = "ingest time delta overflows";
		return -EBADMSG;
	}
	rec->kind = kind;
	rec->ingest_time_us = prev_ingest + (int64_t)delta;
	rec->tenant.ptr = NULL;
	rec->tenant.len = 0;
	if (kind == WAL_RECORD_TICK) {
		memset(&rec->ev, 0, sizeof rec->ev);
		*pos = p;
		return 0;
	}
	if (kind != WAL_RECORD_EVENT) {
		*why = "unknown record kind";
		return -EBADMSG;
	}
	if (p >= raw_len)
		goto truncated;
	uint8_t tlen = raw[p++];
	if (tlen > TALLY_TENANT_BYTES_MAX) {
		*why = "tenant length over 64";
		return -EBADMSG;
	}
	if (raw_len - p < tlen)
		goto truncated;
	rec->tenant.ptr = raw + p;
	rec->tenant.len = tlen;
	p += tlen;
	uint64_t blen;
	n = wal_get_varint(raw + p, raw_len - p, &blen);
	if (n == 0)
		goto truncated;
	p += n;
	if (blen < TALLY_EVENT_FIXED_BYTES || blen > TALLY_EVENT_BYTES_MAX) {
		*why = "event body length out of range";
		return -EBADMSG;
	}
	if (raw_len - p < blen)
		goto truncated;
	enum tally_reject rj = event_decode(raw + p, (size_t)blen, &rec->ev);
	if (rj != TALLY_REJECT_NONE) {
		*why = "stored event body does not decode";
		return -EBADMSG;
	}
	p += (size_t)blen;
	*pos = p;
	return 0;
truncated:
	*why = "record runs past the end of the block";
	return -EBADMSG;
}

/* ---------- record walk of one unpacked block (readers, verify, recovery) ---------- */

void wal_blockwalk_init(struct wal_blockwalk *bw, const struct wal_block_hdr *h, const uint8_t *raw)
{
	bw->raw = raw;
	bw->raw_len = h->raw_bytes;
	bw->pos = 0;
	bw->left = h->record_count;
	bw->next_offset = h->first_offset;
	bw->prev_ingest = h->first_ingest_time_us;
	bw->max_ingest = h->max_ingest_time_us;
}

int wal_blockwalk_next(struct wal_blockwalk *bw, struct wal_record *rec, const char **why)
{
	int rc = wal_record_decode(bw->raw, bw->raw_len, &bw->pos, bw->prev_ingest, rec, why);
	if (rc < 0)
		return rc;
	if (rec->ingest_time_us > bw->max_ingest) {
		*why = "record ingest time above the block's maximum";
		return -EBADMSG;
	}
	rec->offset = bw->next_offset++;
	bw->prev_ingest = rec->ingest_time_us;
	bw->left--;
	if (bw->left == 0 && (bw->pos != bw->raw_len || rec->ingest_time_us != bw->max_ingest)) {
		*why = "block payload does not end with its last record";
		return -EBADMSG;
	}
	return 0;
}


int wal_path_shard_dir(char *buf, size_t cap, const char *data_dir, uint16_t shard)
{
	int n = snprintf(buf, cap, "%s/wal/shard-%02u", data_dir, (unsigned)shard);
	return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

int wal_path_segment(char *buf, size_t cap, const char *shard_dir, uint64_t base, const char *ext)
{
	int n = snprintf(buf, cap, "%s/%020" PRIu64 ".%s", shard_dir, base, ext);
	return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

bool wal_parse_segment_name(const char *name, uint64_t *base)
{
	if (strlen(name) != WAL_SEGMENT_NAME_LEN || strcmp(name + 20, ".log") != 0)
		return false;
	uint64_t v = 0;
	for (int i = 0; i < 20; i++) {
		if (name[i] < '0' || name[i] > '9')
			return false;
		uint64_t d = (uint64_t)(name[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*base = v;
	return true;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int wal_list_bases(const char *shard_dir, uint64_t **bases, size_t *n)
{
	*bases = NULL;
	*n = 0;
	DIR *d = opendir(shard_dir);
	if (!d)
		return -errno;
	size_t cap = 0, cnt = 0;
	uint64_t *v = NULL;
	int rc = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		uint64_t b;
		if (!wal_parse_segment_name(de->d_name, &b))
			continue;
		if (cnt == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			uint64_t *nv = realloc(v, ncap * sizeof *nv);
			if (!nv) {
				rc = -ENOMEM;
				goto out_closedir;
			}
			v = nv;
			cap = ncap;
		}
		v[cnt++] = b;
	}
	if (cnt > 1)
		qsort(v, cnt, sizeof *v, cmp_u64);
	*bases = v;
	*n = cnt;
	v = NULL;
out_closedir:
	closedir(d);
	free(v);
	return rc;
}

int wal_fsync_dir(const struct wal_io *io, const char *dir)
{
	int fd = io->open(io->ctx, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
	if (fd < 0)
		return fd;
	int rc = io->fsync(io->ctx, fd);
	io->close(io->ctx, fd);
	return rc;
}

ssize_t wal_pread_full(const struct wal_io *io, int fd, void *buf, size_t n, off_t off)
{
	size_t done = 0;
	while (done < n) {
		ssize_t r =
		    io->pread(io->ctx, fd, (uint8_t *)buf + done, n - done, off + (off_t)done);
		if (r == -EINTR)
			continue;
		if (r < 0)
			return r;
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

/* Reads and fully checks the block at pos (header rules + bounds + checksum). Returns 1 valid,
   0 invalid (why set), <0 I/O error. `payload` must hold WAL_BLOCK_STORED_BYTES_MAX. */
static int check_block_at(const struct wal_io *io, int fd, uint64_t pos, uint64_t file_bytes,
			  struct wal_block_hdr *h, uint8_t *payload, const char **why)
{
	uint8_t hb[WAL_BLOCK_HEADER_BYTES];
	if (file_bytes - pos < WAL_BLOCK_HEADER_BYTES) {
		*why = "incomplete block header";
		return 0;
	}
	ssize_t r = wal_pread_full(io, fd, hb, sizeof hb, (off_t)pos);
	if (r < 0)
		return (int)r;
	if ((size_t)r < sizeof hb) {
		*why = "incomplete block header";
		return 0;
	}
	wal_block_hdr_decode(hb, h);
	if ((*why = wal_block_hdr_check(h)) != NULL)
		return 0;
	if (file_bytes - pos - WAL_BLOCK_HEADER_BYTES < h->stored_bytes) {
		*why = "incomplete block payload";
		return 0;
	}
	r = wal_pread_full(io, fd, payload, h->stored_bytes, (off_t)(pos + WAL_BLOCK_HEADER_BYTES));
	if (r < 0)
		return (int)r;
	if ((size_t)r < h->stored_bytes) {
		*why = "incomplete block payload";
		return 0;
	}
	if (wal_block_checksum(hb, payload, h->stored_bytes) != h->checksum) {
		*why = "checksum mismatch";
		return 0;
	}
	return 1;
}

/* Unpacks a block that passed rules 1-8 and walks its records as a reader would. */
static bool block_decodes(const struct wal_block_hdr *h, const uint8_t *payload, uint8_t *raw,
			  const char **why)
{
	if (wal_block_unpack(h, payload, raw, WAL_BLOCK_RAW_BYTES_MAX, why) < 0)
		return false;
	struct wal_blockwalk bw;
	struct wal_record rec;
	wal_blockwalk_init(&bw, h, raw);
	while (bw.left > 0)
		if (wal_blockwalk_next(&bw, &rec, why) < 0)
			return false;
	return true;
}

int wal_scan_segment(const struct wal_io *io, int fd, uint64_t start_pos, uint64_t start_offset,
		     unsigned flags, struct wal_scan *sc,
		     void (*index_cb)(void *, uint64_t, uint64_t), void *cb_ctx)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	memset(sc, 0, sizeof *sc);
	sc->file_bytes = (uint64_t)st.st_size;
	sc->next_offset = start_offset;
	sc->first_ingest_time_us = INT64_MIN;
	sc->last_max_ingest_time_us = INT64_MIN;
	sc->later_valid_at = UINT64_MAX;
	uint8_t *payload = malloc(WAL_BLOCK_STORED_BYTES_MAX);
	uint8_t *raw = (flags & WAL_SCAN_DECODE) ? malloc(WAL_BLOCK_RAW_BYTES_MAX) : NULL;
	if (!payload || ((flags & WAL_SCAN_DECODE) && !raw)) {
		free(payload);
		free(raw);
		return -ENOMEM;
	}
	int rc = 0;
	uint64_t pos = start_pos;
	struct wal_block_hdr h;
	while (pos < sc->file_bytes) {
		const char *why = NULL;
		int v = check_block_at(io, fd, pos, sc->file_bytes, &h, payload, &why);
		if (v < 0) {
			rc = v;
			goto out_free;
		}
		if (v == 1 && h.first_offset != sc->next_offset) {
			v = 0;
			why = "first offset does not continue the previous block";
		}
		if (v == 1 && sc->last_max_ingest_time_us != INT64_MIN &&
		    h.first_ingest_time_us < sc->last_max_ingest_time_us) {
			v = 0;
			why = "ingest time goes back across blocks";
		}
		if (v == 0) {
			sc->bad_why = why;
			break;
		}
		if (raw && !block_decodes(&h, payload, raw, &why)) {
			sc->bad_why = why;
			sc->later_valid_at = pos; /* checksummed: corruption, never a torn tail */
			break;
		}
		if (index_cb)
			index_cb(cb_ctx, h.first_offset, pos);
		if (sc->first_ingest_time_us == INT64_MIN)
			sc->first_ingest_time_us = h.first_ingest_time_us;
		sc->last_max_ingest_time_us = h.max_ingest_time_us;
		sc->next_offset += h.record_count;
		sc->blocks++;
		sc->records += h.record_count;
		sc->raw_bytes += h.raw_bytes;
		pos += WAL_BLOCK_HEADER_BYTES + h.stored_bytes;
	}
	sc->valid_bytes = pos;
	if (sc->bad_why && (flags & WAL_SCAN_SEARCH_LATER) && sc->later_valid_at == UINT64_MAX) {
		/* Is there any complete, checksummed block after the bad one? Look for the magic at
		   every byte position after it (only ever done on the failure path). */
		enum { WIN = 1 << 20 };
		uint8_t *win = malloc(WIN);
		if (!win) {
			rc = -ENOMEM;
			goto out_free;
		}
		uint8_t magic[4];
		wal_put_u32(magic, WAL_BLOCK_MAGIC);
		uint64_t at = pos + 1;
		while (at + WAL_BLOCK_HEADER_BYTES <= sc->file_bytes &&
		       sc->later_valid_at == UINT64_MAX) {
			ssize_t r = wal_pread_full(io, fd, win, WIN, (off_t)at);
			if (r < 0) {
				rc = (int)r;
				break;
			}
			if (r < 4)
				break;
			for (ssize_t i = 0; i + 4 <= r; i++) {
				/* memmem: a prefilled tail is megabytes of zeros */
				const uint8_t *m = memmem(win + i, (size_t)(r - i), magic, 4);
				if (!m)
					break;
				i = m - win;
				const char *why;
				int v = check_block_at(io, fd, at + (uint64_t)i, sc->file_bytes, &h,
						       payload, &why);
				if (v < 0) {
					rc = v;
					break;
				}
				if (v == 1) {
					sc->later_valid_at = at + (uint64_t)i;
					break;
				}
			}
			if (rc < 0 || (size_t)r < WIN)
				break;
			at += (uint64_t)r - 3; /* overlap so a magic across windows is found */
		}
		free(win);
	}
out_free:
	free(payload);
	free(raw);
	return rc;
}

/* Reads a segment's .idx and returns the last entry that lies before file_bytes (or 0,0). */
void wal_idx_last_entry(const char *shard_dir, uint64_t base, uint64_t file_bytes, uint64_t *pos,
			uint64_t *offset)
{
	*pos = 0;
	*offset = base;
	char path[WAL_PATH_BYTES_MAX];
	if (wal_path_segment(path, sizeof path, shard_dir, base, "idx") < 0)
		return;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	struct stat st;
	if (fstat(fd, &st) == 0 && st.st_size >= WAL_INDEX_ENTRY_BYTES) {
		uint8_t e[WAL_INDEX_ENTRY_BYTES];
		off_t last = (st.st_size / WAL_INDEX_ENTRY_BYTES - 1) * WAL_INDEX_ENTRY_BYTES;
		if (pread(fd, e, sizeof e, last) == (ssize_t)sizeof e) {
			uint64_t o = wal_get_u64(e), p = wal_get_u64(e + 8);
			if (o >= base && p < file_bytes) {
				*pos = p;
				*offset = o;
			}
		}
	}
	close(fd);
}
