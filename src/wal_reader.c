/*
 * wal_reader.c — reading the WAL, from any process, while a writer appends: the tailing
 * reader (one shard or all, seek by offset through the sparse index, follow mode), the
 * segment listing and per-segment iterator (dedup rebuild), and segment verification
 * (`tally wal verify|stats`). Format: docs/wal-format.md.
 *
 * Invariants: a reader never loads a block unless every record in it is below the shard's
 * durable watermark, read with acquire from the writer's shared page (shard-NN/durable), so
 * it never serves an undurable record, and a durable block is never rewritten, so what it
 * read stays true. Every block's checksum is verified before its payload is decompressed
 * (LZ4_decompress_safe, output size must equal the header's raw size, capped); every record
 * is bounds-checked and its event body decoded with event_decode().
 *
 * Threads: a reader (or segment iterator) belongs to one thread at a time. Buffers grow to
 * the largest block seen (capped by WAL_BLOCK_RAW_BYTES_MAX / WAL_BLOCK_STORED_BYTES_MAX).
 * Record views point into the reader's buffers and are valid until its next call.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "wal_internal.h"

/* ---------- block loading, shared by the reader, the iterator and verify ---------- */

struct blockbuf {
	uint8_t *payload;
	size_t payload_cap;
	uint8_t *raw;
	size_t raw_cap;
};

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
	if (need <= *cap)
		return 0;
	uint8_t *p = realloc(*buf, need);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = need;
	return 0;
}

static void blockbuf_free(struct blockbuf *b)
{
	free(b->payload);
	free(b->raw);
}

/*
 * Loads the block at pos: header rules, checksum over header and payload, then unpack.
 * Returns 1 loaded, 0 clean end of file at pos, -EBADMSG (*why), or -errno.
 */
static int block_load(int fd, uint64_t pos, struct wal_block_hdr *h, struct blockbuf *b,
		      bool header_only, const char **why)
{
	uint8_t hb[WAL_BLOCK_HEADER_BYTES];
	ssize_t r = wal_pread_full(wal_io_libc(), fd, hb, sizeof hb, (off_t)pos);
	if (r < 0)
		return (int)r;
	if (r == 0)
		return 0;
	if ((size_t)r < sizeof hb) {
		*why = "incomplete block header";
		return -EBADMSG;
	}
	wal_block_hdr_decode(hb, h);
	if ((*why = wal_block_hdr_check(h)) != NULL)
		return -EBADMSG;
	if (header_only)
		return 1;
	int rc = grow(&b->payload, &b->payload_cap, h->stored_bytes);
	if (rc == 0)
		rc = grow(&b->raw, &b->raw_cap, h->raw_bytes);
	if (rc < 0)
		return rc;
	r = wal_pread_full(wal_io_libc(), fd, b->payload, h->stored_bytes,
			   (off_t)(pos + WAL_BLOCK_HEADER_BYTES));
	if (r < 0)
		return (int)r;
	if ((size_t)r < h->stored_bytes) {
		*why = "incomplete block payload";
		return -EBADMSG;
	}
	if (wal_block_checksum(hb, b->payload, h->stored_bytes) != h->checksum) {
		*why = "checksum mismatch";
		return -EBADMSG;
	}
	rc = wal_block_unpack(h, b->payload, b->raw, b->raw_cap, why);
	return rc < 0 ? rc : 1;
}

/* ---------- index ---------- */

/* Best start (pos, offset) for target from seg's .idx; validated against the segment itself. */
static void idx_lookup(int seg_fd, const char *idx_path, uint64_t base, uint64_t target,
		       uint64_t *pos, uint64_t *offset)
{
	*pos = 0;
	*offset = base;
	int fd = open(idx_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size < WAL_INDEX_ENTRY_BYTES ||
	    st.st_size > (off_t)(64u << 20))
		goto out_close;
	size_t n = (size_t)st.st_size / WAL_INDEX_ENTRY_BYTES;
	uint8_t *buf = malloc(n * WAL_INDEX_ENTRY_BYTES);
	if (!buf)
		goto out_close;
	if (pread(fd, buf, n * WAL_INDEX_ENTRY_BYTES, 0) != (ssize_t)(n * WAL_INDEX_ENTRY_BYTES))
		goto out_free;
	/* Binary search for the last entry with offset <= target (entries are increasing;
	   a damaged index is caught by the validation below and ignored). */
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (wal_get_u64(buf + mid * WAL_INDEX_ENTRY_BYTES) <= target)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		goto out_free;
	uint64_t o = wal_get_u64(buf + (lo - 1) * WAL_INDEX_ENTRY_BYTES);
	uint64_t p = wal_get_u64(buf + (lo - 1) * WAL_INDEX_ENTRY_BYTES + 8);
	struct wal_block_hdr h;
	const char *why;
	if (o >= base && block_load(seg_fd, p, &h, NULL, true, &why) == 1 && h.first_offset == o) {
		*pos = p;
		*offset = o;
	}
out_free:
	free(buf);
out_close:
	close(fd);
}

/* ---------- the tailing reader ---------- */

struct wal_cursor {
	uint16_t shard;
	const uint8_t *wm; /* read-only map of shard-NN/durable, NULL until it exists */
	int fd;            /* current segment, -1 if none */
	uint64_t seg_base;
	uint64_t pos;     /* byte position of the next block to load */
	uint64_t blk_pos; /* byte position of the loaded block (for messages) */
	uint64_t next;    /* next offset to yield */
	bool positioned;  /* fd/pos correspond to `next` */
	bool has_peek;
	struct wal_record peek;
	struct wal_blockwalk bw; /* bw.left > 0: records of the loaded block remain */
	struct blockbuf buf;
	char dir[WAL_PATH_BYTES_MAX];
	char seg_path[WAL_PATH_BYTES_MAX];
};

struct wal_reader {
	uint16_t n;
	struct wal_cursor *c;
	char data_dir[WAL_PATH_BYTES_MAX];
};

static void cursor_map_wm(struct wal_cursor *c)
{
	char path[WAL_PATH_BYTES_MAX];
	if (snprintf(path, sizeof path, "%s/durable", c->dir) >= (int)sizeof path)
		return;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	struct stat st;
	if (fstat(fd, &st) == 0 && st.st_size >= WAL_WATERMARK_BYTES) {
		void *p = mmap(NULL, WAL_WATERMARK_BYTES, PROT_READ, MAP_SHARED, fd, 0);
		if (p != MAP_FAILED) {
			if (wal_get_u32(p) == WAL_WATERMARK_MAGIC)
				c->wm = p;
			else
				munmap(p, WAL_WATERMARK_BYTES);
		}
	}
	close(fd);
}

static uint64_t cursor_durable(struct wal_cursor *c)
{
	if (!c->wm)
		cursor_map_wm(c);
	if (!c->wm)
		return 0;
	/* Acquire pairs with the writer's release store after fdatasync: the blocks below this
	   watermark are complete in the page cache before we read them. */
	return __atomic_load_n((const uint64_t *)(c->wm + WAL_WM_OFF_DURABLE), __ATOMIC_ACQUIRE);
}

static void cursor_close_seg(struct wal_cursor *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static int cursor_open_seg(struct wal_cursor *c, uint64_t base)
{
	cursor_close_seg(c);
	int rc = wal_path_segment(c->seg_path, sizeof c->seg_path, c->dir, base, "log");
	if (rc < 0)
		return rc;
	c->fd = open(c->seg_path, O_RDONLY | O_CLOEXEC);
	if (c->fd < 0)
		return -errno;
	c->seg_base = base;
	return 0;
}

static int corrupt(struct wal_cursor *c, uint64_t pos, const char *why)
{
	wal_set_error("%s: corrupt block at byte %" PRIu64 " (%s)", c->seg_path, pos, why);
	return -EBADMSG;
}

/* Opens the segment holding c->next and finds the block containing it. */
static int cursor_position(struct wal_cursor *c)
{
	uint64_t *bases;
	size_t n;
	int rc = wal_list_bases(c->dir, &bases, &n);
	if (rc < 0) {
		wal_set_error("%s: cannot list segments: %s", c->dir, strerror(-rc));
		return rc;
	}
	size_t k = n;
	while (k > 0 && bases[k - 1] > c->next)
		k--;
	if (k == 0) {
		wal_set_error("%s: offset %" PRIu64 " is not in the WAL (deleted by retention?)",
			      c->dir, c->next);
		free(bases);
		return -ERANGE;
	}
	uint64_t base = bases[k - 1];
	free(bases);
	if ((rc = cursor_open_seg(c, base)) < 0) {
		wal_set_error("%s: cannot open: %s", c->seg_path, strerror(-rc));
		return rc;
	}
	char idx_path[WAL_PATH_BYTES_MAX];
	uint64_t pos = 0, off = base;
	if (wal_path_segment(idx_path, sizeof idx_path, c->dir, base, "idx") == 0)
		idx_lookup(c->fd, idx_path, base, c->next, &pos, &off);
	/* Skip whole blocks by their headers (all of them are durable: c->next is). */
	for (;;) {
		struct wal_block_hdr h;
		const char *why = NULL;
		rc = block_load(c->fd, pos, &h, NULL, true, &why);
		if (rc == 0)
			return corrupt(c, pos, "segment ends before a durable offset");
		if (rc < 0)
			return rc == -EBADMSG ? corrupt(c, pos, why) : rc;
		if (h.first_offset != off)
			return corrupt(c, pos, "first offset does not continue the previous block");
		if (c->next < off + h.record_count)
			break;
		off += h.record_count;
		pos += WAL_BLOCK_HEADER_BYTES + h.stored_bytes;
	}
	c->pos = pos;
	c->bw.left = 0;
	c->bw.next_offset = off; /* records before c->next in this block are skipped on load */
	c->positioned = true;
	return 0;
}

/* Loads the next block if it is entirely durable. 1 loaded, 0 nothing durable, <0 error. */
static int cursor_load(struct wal_cursor *c)
{
	uint64_t durable = cursor_durable(c);
	if (c->next >= durable)
		return 0;
	int rc;
	if (!c->positioned && (rc = cursor_position(c)) < 0)
		return rc;
	struct wal_block_hdr h;
	const char *why = NULL;
	rc = block_load(c->fd, c->pos, &h, &c->buf, false, &why);
	if (rc == 0) {
		/* End of this segment at a block boundary while c->next is durable: the writer
		   rolled; the next segment is based exactly at c->next. */
		if ((rc = cursor_open_seg(c, c->next)) < 0) {
			wal_set_error("%s: missing segment for durable offset %" PRIu64 ": %s",
				      c->dir, c->next, strerror(-rc));
			return rc == -ENOENT ? -EBADMSG : rc;
		}
		c->pos = 0;
		rc = block_load(c->fd, c->pos, &h, &c->buf, false, &why);
		if (rc == 0)
			return corrupt(c, 0, "empty segment below the durable watermark");
	}
	if (rc < 0)
		return rc == -EBADMSG ? corrupt(c, c->pos, why) : rc;
	if (h.first_offset > c->next || h.first_offset + h.record_count <= c->next)
		return corrupt(c, c->pos, "block does not hold the expected offset");
	if (h.first_offset + h.record_count > durable)
		return 0; /* not entirely durable yet (cannot happen with a whole-block watermark)
			   */
	wal_blockwalk_init(&c->bw, &h, c->buf.raw);
	uint64_t at = c->pos;
	c->blk_pos = at;
	c->pos += WAL_BLOCK_HEADER_BYTES + h.stored_bytes;
	while (c->bw.next_offset < c->next) {
		struct wal_record skip;
		if (wal_blockwalk_next(&c->bw, &skip, &why) < 0)
			return corrupt(c, at, why);
	}
	return 1;
}

/* Makes c->peek hold the next record. 1 yes, 0 nothing durable, <0 error. */
static int cursor_fill(struct wal_cursor *c)
{
	if (c->has_peek)
		return 1;
	if (c->bw.left == 0 || !c->positioned) {
		int rc = cursor_load(c);
		if (rc <= 0)
			return rc;
	}
	const char *why = NULL;
	if (wal_blockwalk_next(&c->bw, &c->peek, &why) < 0)
		return corrupt(c, c->blk_pos, why);
	c->peek.shard = c->shard;
	c->has_peek = true;
	return 1;
}

int wal_reader_open(const char *data_dir, int shard, struct wal_reader **out)
{
	*out = NULL;
	wal_set_error("%s", "");
	uint16_t count;
	int rc = wal_stored_shard_count(data_dir, &count);
	if (rc < 0)
		return rc;
	if (shard < -1 || shard >= (int)count) {
		wal_set_error("shard %d out of range (the WAL has %u)", shard, count);
		return -EINVAL;
	}
	struct wal_reader *r = calloc(1, sizeof *r);
	if (!r)
		return -ENOMEM;
	snprintf(r->data_dir, sizeof r->data_dir, "%s", data_dir);
	r->n = shard < 0 ? count : 1;
	r->c = calloc(r->n, sizeof *r->c);
	if (!r->c) {
		free(r);
		return -ENOMEM;
	}
	for (uint16_t i = 0; i < r->n; i++) {
		struct wal_cursor *c = &r->c[i];
		c->shard = shard < 0 ? i : (uint16_t)shard;
		c->fd = -1;
		rc = wal_path_shard_dir(c->dir, sizeof c->dir, data_dir, c->shard);
		if (rc < 0) {
			wal_reader_close(r);
			return rc;
		}
		cursor_map_wm(c);
	}
	rc = wal_reader_seek_earliest(r);
	if (rc < 0) {
		wal_reader_close(r);
		return rc;
	}
	*out = r;
	return 0;
}

static struct wal_cursor *cursor_of(struct wal_reader *r, uint16_t shard)
{
	for (uint16_t i = 0; i < r->n; i++)
		if (r->c[i].shard == shard)
			return &r->c[i];
	return NULL;
}

int wal_reader_seek(struct wal_reader *r, uint16_t shard, uint64_t offset)
{
	struct wal_cursor *c = cursor_of(r, shard);
	if (!c)
		return -EINVAL;
	uint64_t *bases;
	size_t n;
	int rc = wal_list_bases(c->dir, &bases, &n);
	if (rc < 0)
		return rc;
	bool deleted = n > 0 && offset < bases[0];
	free(bases);
	if (deleted) {
		wal_set_error("%s: offset %" PRIu64 " was deleted by retention", c->dir, offset);
		return -ERANGE;
	}
	cursor_close_seg(c);
	c->next = offset;
	c->positioned = false;
	c->has_peek = false;
	c->bw.left = 0;
	return 0;
}

int wal_reader_seek_earliest(struct wal_reader *r)
{
	for (uint16_t i = 0; i < r->n; i++) {
		uint64_t *bases;
		size_t n;
		int rc = wal_list_bases(r->c[i].dir, &bases, &n);
		if (rc < 0) {
			wal_set_error("%s: cannot list segments: %s", r->c[i].dir, strerror(-rc));
			return rc;
		}
		uint64_t first = n ? bases[0] : 0;
		free(bases);
		if ((rc = wal_reader_seek(r, r->c[i].shard, first)) < 0)
			return rc;
	}
	return 0;
}

int wal_reader_seek_latest(struct wal_reader *r)
{
	for (uint16_t i = 0; i < r->n; i++) {
		int rc = wal_reader_seek(r, r->c[i].shard, cursor_durable(&r->c[i]));
		if (rc < 0)
			return rc;
	}
	return 0;
}

int wal_reader_next(struct wal_reader *r, struct wal_record *rec)
{
	if (r->n == 1 && !r->c[0].has_peek) {
		/* One shard: decode straight into the caller's record (no peek, no copy). */
		struct wal_cursor *c = &r->c[0];
		if (c->bw.left == 0 || !c->positioned) {
			int rc = cursor_load(c);
			if (rc <= 0)
				return rc;
		}
		const char *why = NULL;
		if (wal_blockwalk_next(&c->bw, rec, &why) < 0)
			return corrupt(c, c->blk_pos, why);
		rec->shard = c->shard;
		c->next = rec->offset + 1;
		return 1;
	}
	struct wal_cursor *best = NULL;
	for (uint16_t i = 0; i < r->n; i++) {
		struct wal_cursor *c = &r->c[i];
		int rc = cursor_fill(c);
		if (rc < 0)
			return rc;
		if (rc == 0)
			continue;
		if (!best || c->peek.ingest_time_us < best->peek.ingest_time_us)
			best = c;
	}
	if (!best)
		return 0;
	*rec = best->peek;
	best->has_peek = false;
	best->next = rec->offset + 1;
	return 1;
}

uint64_t wal_reader_position(const struct wal_reader *r, uint16_t shard)
{
	const struct wal_cursor *c = cursor_of((struct wal_reader *)r, shard);
	if (!c)
		return 0;
	return c->has_peek ? c->peek.offset : c->next;
}

uint16_t wal_reader_shard_count(const struct wal_reader *r)
{
	return r->n;
}

uint64_t wal_reader_durable_next(const struct wal_reader *r, uint16_t shard)
{
	struct wal_cursor *c = cursor_of((struct wal_reader *)r, shard);
	return c ? cursor_durable(c) : 0;
}

static bool reader_has_work(struct wal_reader *r)
{
	for (uint16_t i = 0; i < r->n; i++) {
		struct wal_cursor *c = &r->c[i];
		if (c->has_peek || (c->positioned && c->bw.left > 0) || c->next < cursor_durable(c))
			return true;
	}
	return false;
}

/* Snapshot of every cursor's futex word (seq); false if some shard has no watermark page yet. */
static bool snapshot_seqs(struct wal_reader *r, struct futex_waitv *wv)
{
	for (uint16_t i = 0; i < r->n; i++) {
		const uint8_t *wm = r->c[i].wm;
		if (!wm)
			return false;
		const uint32_t *word = (const uint32_t *)(wm + WAL_WM_OFF_SEQ);
		wv[i] = (struct futex_waitv){
		    .val = __atomic_load_n(word, __ATOMIC_ACQUIRE),
		    .uaddr = (uint64_t)(uintptr_t)word,
		    .flags = FUTEX_32, /* shared: the words live in other processes' pages too */
		};
	}
	return true;
}

int wal_reader_wait(struct wal_reader *r, int timeout_ms)
{
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	struct futex_waitv wv[FUTEX_WAITV_MAX];
	static _Atomic int no_waitv; /* set once if the kernel lacks futex_waitv (< 5.16) */
	for (;;) {
		/* Load the futex words before re-checking, so a publish in between wakes us. */
		bool have = r->n <= FUTEX_WAITV_MAX && snapshot_seqs(r, wv);
		if (reader_has_work(r))
			return 0;
		clock_gettime(CLOCK_MONOTONIC, &now);
		int64_t spent_ms =
		    (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
		if (timeout_ms >= 0 && spent_ms >= timeout_ms)
			return 0;
		int64_t slice_ms = 100;
		if (!have || atomic_load_explicit(&no_waitv, memory_order_relaxed))
			slice_ms = 1; /* no page to wait on yet: a cheap 1 ms poll */
		if (timeout_ms >= 0 && timeout_ms - spent_ms < slice_ms)
			slice_ms = timeout_ms - spent_ms;
		if (slice_ms == 1 || !have) {
			struct timespec ts = {0, slice_ms * 1000000};
			nanosleep(&ts, NULL);
			continue;
		}
		/* Woken by any shard's publish (FUTEX_WAKE on its seq word) or the slice end. */
		struct timespec abs = now;
		abs.tv_nsec += (long)(slice_ms % 1000) * 1000000;
		abs.tv_sec += slice_ms / 1000 + abs.tv_nsec / 1000000000;
		abs.tv_nsec %= 1000000000;
		long rc = syscall(SYS_futex_waitv, wv, (unsigned)r->n, 0, &abs, CLOCK_MONOTONIC);
		if (rc < 0 && errno == ENOSYS)
			atomic_store_explicit(&no_waitv, 1, memory_order_relaxed);
	}
}

void wal_reader_close(struct wal_reader *r)
{
	if (!r)
		return;
	for (uint16_t i = 0; i < r->n; i++) {
		struct wal_cursor *c = &r->c[i];
		cursor_close_seg(c);
		if (c->wm)
			munmap((void *)c->wm, WAL_WATERMARK_BYTES);
		blockbuf_free(&c->buf);
	}
	free(r->c);
	free(r);
}

/* ---------- segments ---------- */

int wal_segments_list(const char *data_dir, uint16_t shard, struct wal_segment_info *out,
		      size_t cap, size_t *count_out)
{
	char dir[WAL_PATH_BYTES_MAX];
	int rc = wal_path_shard_dir(dir, sizeof dir, data_dir, shard);
	if (rc < 0)
		return rc;
	uint64_t *bases;
	size_t n;
	if ((rc = wal_list_bases(dir, &bases, &n)) < 0)
		return rc;
	for (size_t i = 0; i < n && i < cap; i++) {
		struct wal_segment_info *si = &out[i];
		si->base_offset = bases[i];
		si->sealed = i + 1 < n;
		if ((rc = wal_path_segment(si->path, sizeof si->path, dir, bases[i], "log")) < 0)
			break;
		struct stat st;
		si->file_bytes = stat(si->path, &st) == 0 ? (uint64_t)st.st_size : 0;
	}
	*count_out = n;
	free(bases);
	return rc;
}

struct wal_segment_iter {
	int fd;
	uint64_t pos;
	uint64_t blk_pos;
	uint64_t next;
	uint64_t limit_next;
	int64_t prev_max_ingest;
	bool allow_torn_tail;
	bool done;
	struct wal_blockwalk bw;
	struct blockbuf buf;
	char path[WAL_PATH_BYTES_MAX];
};

int wal_segment_iter_open(const char *path, uint64_t base_offset, uint64_t limit_next,
			  bool allow_torn_tail, struct wal_segment_iter **out)
{
	*out = NULL;
	struct wal_segment_iter *it = calloc(1, sizeof *it);
	if (!it)
		return -ENOMEM;
	snprintf(it->path, sizeof it->path, "%s", path);
	it->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (it->fd < 0) {
		int rc = -errno;
		wal_set_error("%s: cannot open: %s", path, strerror(-rc));
		free(it);
		return rc;
	}
	it->next = base_offset;
	it->limit_next = limit_next;
	it->allow_torn_tail = allow_torn_tail;
	*out = it;
	return 0;
}

int wal_segment_iter_next(struct wal_segment_iter *it, struct wal_record *rec)
{
	const char *why = NULL;
	if (it->done || it->next >= it->limit_next)
		return 0;
	if (it->bw.left == 0) {
		struct wal_block_hdr h;
		it->blk_pos = it->pos;
		int rc = block_load(it->fd, it->pos, &h, &it->buf, false, &why);
		if (rc == 0 || (rc == -EBADMSG && it->allow_torn_tail)) {
			it->done = true;
			return 0;
		}
		if (rc == -EBADMSG)
			goto out_corrupt;
		if (rc < 0)
			return rc;
		if (h.first_offset != it->next) {
			why = "first offset does not continue the previous block";
			goto out_corrupt;
		}
		if (it->pos > 0 && h.first_ingest_time_us < it->prev_max_ingest) {
			why = "ingest time goes back across blocks";
			goto out_corrupt;
		}
		it->prev_max_ingest = h.max_ingest_time_us;
		wal_blockwalk_init(&it->bw, &h, it->buf.raw);
		it->pos += WAL_BLOCK_HEADER_BYTES + h.stored_bytes;
	}
	if (wal_blockwalk_next(&it->bw, rec, &why) < 0)
		goto out_corrupt;
	rec->shard = 0;
	it->next = rec->offset + 1;
	return 1;
out_corrupt:
	wal_set_error("%s: corrupt block at byte %" PRIu64 " (%s)", it->path, it->blk_pos, why);
	return -EBADMSG;
}

void wal_segment_iter_close(struct wal_segment_iter *it)
{
	if (!it)
		return;
	close(it->fd);
	blockbuf_free(&it->buf);
	free(it);
}

int wal_segment_verify(const char *path, uint64_t base_offset, bool decode_records,
		       struct wal_segment_stats *st)
{
	memset(st, 0, sizeof *st);
	st->base_offset = base_offset;
	st->next_offset = base_offset;
	st->torn_tail_at = UINT64_MAX;
	st->max_ingest_time_us = INT64_MIN;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int rc = -errno;
		wal_set_error("%s: cannot open: %s", path, strerror(-rc));
		return rc;
	}
	struct blockbuf buf = {0};
	uint64_t pos = 0;
	int rc = 0;
	for (;;) {
		struct wal_block_hdr h;
		const char *why = NULL;
		rc = block_load(fd, pos, &h, &buf, false, &why);
		if (rc == 0)
			break;
		if (rc == -EBADMSG) {
			st->torn_tail_at = pos;
			wal_set_error("%s: corrupt block at byte %" PRIu64 " (%s)", path, pos, why);
			rc = -EBADMSG;
			break;
		}
		if (rc < 0)
			break;
		if (h.first_offset != st->next_offset) {
			st->torn_tail_at = pos;
			wal_set_error("%s: block at byte %" PRIu64 " starts at offset %" PRIu64
				      ", expected %" PRIu64,
				      path, pos, h.first_offset, st->next_offset);
			rc = -EBADMSG;
			break;
		}
		if (st->max_ingest_time_us != INT64_MIN &&
		    h.first_ingest_time_us < st->max_ingest_time_us) {
			st->torn_tail_at = pos;
			wal_set_error("%s: block at byte %" PRIu64 ": ingest time goes back", path,
				      pos);
			rc = -EBADMSG;
			break;
		}
		if (decode_records) {
			struct wal_blockwalk bw;
			wal_blockwalk_init(&bw, &h, buf.raw);
			while (bw.left > 0) {
				struct wal_record rec;
				if (wal_blockwalk_next(&bw, &rec, &why) < 0) {
					st->torn_tail_at = pos;
					wal_set_error("%s: block at byte %" PRIu64
						      ", record %" PRIu64 ": %s",
						      path, pos, bw.next_offset, why);
					rc = -EBADMSG;
					goto out;
				}
				if (rec.kind == WAL_RECORD_EVENT)
					st->events++;
				else
					st->ticks++;
			}
		}
		st->blocks++;
		st->records += h.record_count;
		st->raw_bytes += h.raw_bytes;
		st->next_offset += h.record_count;
		st->max_ingest_time_us = h.max_ingest_time_us;
		pos += WAL_BLOCK_HEADER_BYTES + h.stored_bytes;
		st->file_bytes = pos;
	}
out:
	blockbuf_free(&buf);
	close(fd);
	return rc;
}
