/*
 * dedup_cold.c — the cold tier: one generation per sealed WAL segment = a sorted run of
 * 32-byte records on disk (<dir>/shard-NN/<20-digit base>.keys, format in docs/dedup.md
 * "The .keys run"), mmap'd read-only, plus in RAM a cache-line-blocked bloom filter and a sparse
 * index (one u32 per ~128 records). A lookup tests the bloom (one cache line) and searches the
 * run only on a hit: binary search inside the sparse-index bucket, ~2 pages.
 *
 * Invariants of a loaded generation: the run's checksum matched, its records are strictly
 * increasing by (lo, hi), every offset lies in [base, next), and every record is in the bloom.
 * A run that fails any check is never used (-EBADMSG), so a bad run can cause a missed
 * duplicate only until the caller rebuilds it, never a false one.
 *
 * Floating point is used only to size blooms (dedup_bloom_blocks_for), never on a lookup.
 * Thread: the owning thread of the shard.
 */
#define _GNU_SOURCE /* sync_file_range */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "dedup_internal.h"

/* ---- bloom ------------------------------------------------------------------------------ */

/* Expected FP rate with mean block load lambda: block loads are Poisson(lambda); with j keys in
 * a block a word has a given bit set with probability 1 - (63/64)^j, and a miss needs all 8. */
static double bloom_fp_rate(double lambda)
{
	double pmf = exp(-lambda), sum = 0.0, q = 1.0;
	uint64_t jmax = (uint64_t)(lambda * 3.0) + 64;
	for (uint64_t j = 0; j <= jmax; j++) {
		double f = 1.0 - q, f2 = f * f, f4 = f2 * f2;
		sum += pmf * f4 * f4;
		pmf *= lambda / (double)(j + 1);
		q *= 63.0 / 64.0;
	}
	return sum;
}

uint64_t dedup_bloom_blocks_for(uint64_t n, uint32_t fp_per_million)
{
	if (fp_per_million == 0)
		fp_per_million = DEDUP_BLOOM_FP_PER_MILLION_DEFAULT;
	if (fp_per_million > 500000)
		fp_per_million = 500000;
	double target = (double)fp_per_million / 1e6;
	/* Largest mean load whose FP rate is within target; lambda < 700 keeps exp() finite. */
	double lo = 0.0, hi = 600.0;
	for (int it = 0; it < 60; it++) {
		double mid = (lo + hi) / 2;
		if (bloom_fp_rate(mid) <= target)
			lo = mid;
		else
			hi = mid;
	}
	if (lo < 1e-3)
		lo = 1e-3;
	double blocks = ceil((double)n / lo);
	return blocks < 1.0 ? 1 : (uint64_t)blocks;
}

uint64_t dedup_bloom_expected_fp_ppb(uint64_t n, uint64_t nblocks)
{
	return (uint64_t)(bloom_fp_rate((double)n / (double)nblocks) * 1e9);
}

int dedup_bloom_init(struct dedup_bloom *b, uint64_t nblocks)
{
	void *p = NULL;
	b->words = NULL;
	b->nblocks = 0;
	if (nblocks == 0 || nblocks > (UINT64_MAX >> 7))
		return -EINVAL;
	if (posix_memalign(&p, 64, nblocks * 64) != 0)
		return -ENOMEM;
	memset(p, 0, nblocks * 64);
	b->words = p;
	b->nblocks = nblocks;
	return 0;
}

void dedup_bloom_free(struct dedup_bloom *b)
{
	free(b->words);
	b->words = NULL;
	b->nblocks = 0;
}

static inline uint64_t *bloom_block(const struct dedup_bloom *b, uint64_t lo)
{
	return b->words + (uint64_t)(((unsigned __int128)lo * b->nblocks) >> 64) * 8;
}

void dedup_bloom_add(struct dedup_bloom *b, uint64_t lo, uint64_t hi)
{
	uint64_t *w = bloom_block(b, lo);
	for (int k = 0; k < 8; k++)
		w[k] |= 1ULL << ((hi >> (6 * k)) & 63);
}

bool dedup_bloom_test(const struct dedup_bloom *b, uint64_t lo, uint64_t hi)
{
	const uint64_t *w = bloom_block(b, lo);
	uint64_t miss = 0;
	for (int k = 0; k < 8; k++) {
		uint64_t bit = 1ULL << ((hi >> (6 * k)) & 63);
		miss |= bit & ~w[k];
	}
	return miss == 0;
}

void dedup_bloom_prefetch(const struct dedup_bloom *b, uint64_t lo)
{
	__builtin_prefetch(bloom_block(b, lo), 0, 3);
}

/* ---- sorting ---------------------------------------------------------------------------- */

static int rec_cmp(const void *a, const void *b)
{
	const struct dedup_rec *x = a, *y = b;
	if (x->lo != y->lo)
		return x->lo < y->lo ? -1 : 1;
	if (x->hi != y->hi)
		return x->hi < y->hi ? -1 : 1;
	return 0;
}

static inline bool rec_less(uint64_t alo, uint64_t ahi, const struct dedup_rec *b)
{
	return alo < b->lo || (alo == b->lo && ahi < b->hi);
}

/* One counting pass on the top 16 bits of lo (uniform), then small qsorts per bucket. */
void dedup_sort_recs(struct dedup_rec *recs, struct dedup_rec *tmp, size_t n)
{
	enum { BUCKETS = 1 << 16 };
	if (n < 4096) {
		qsort(recs, n, sizeof(*recs), rec_cmp);
		return;
	}
	uint32_t *start = calloc(BUCKETS + 1, sizeof(uint32_t));
	if (!start) { /* fall back: slower, no extra memory */
		qsort(recs, n, sizeof(*recs), rec_cmp);
		return;
	}
	size_t *pos = NULL;
	for (size_t i = 0; i < n; i++)
		start[(recs[i].lo >> 48) + 1]++;
	for (size_t k = 0; k < BUCKETS; k++)
		start[k + 1] += start[k];
	pos = malloc(BUCKETS * sizeof(size_t));
	if (!pos) {
		free(start);
		qsort(recs, n, sizeof(*recs), rec_cmp);
		return;
	}
	for (size_t k = 0; k < BUCKETS; k++)
		pos[k] = start[k];
	for (size_t i = 0; i < n; i++)
		tmp[pos[recs[i].lo >> 48]++] = recs[i];
	for (size_t k = 0; k < BUCKETS; k++) {
		size_t len = start[k + 1] - start[k];
		struct dedup_rec *b = tmp + start[k];
		if (len > 24) {
			qsort(b, len, sizeof(*b), rec_cmp);
			continue;
		}
		for (size_t i = 1; i < len; i++) { /* buckets hold n / 65536 on average */
			struct dedup_rec x = b[i];
			size_t j = i;
			for (; j > 0 && rec_cmp(&b[j - 1], &x) > 0; j--)
				b[j] = b[j - 1];
			b[j] = x;
		}
	}
	memcpy(recs, tmp, n * sizeof(*recs));
	free(pos);
	free(start);
}

/* ---- paths ------------------------------------------------------------------------------ */

int dedup_shard_dir(char *buf, size_t cap, const char *dir, uint16_t shard)
{
	int len = snprintf(buf, cap, "%s/shard-%02u", dir, (unsigned)shard);
	return (len < 0 || (size_t)len >= cap) ? -ENAMETOOLONG : 0;
}

int dedup_run_path(char *buf, size_t cap, const char *dir, uint16_t shard, uint64_t base)
{
	int len = snprintf(buf, cap, "%s/shard-%02u/%020" PRIu64 ".keys", dir, (unsigned)shard,
			   base);
	return (len < 0 || (size_t)len >= cap) ? -ENAMETOOLONG : 0;
}

/* ---- run file --------------------------------------------------------------------------- */

static void put_u16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2); /* little-endian host, checked in dedup_internal.h */
}
static void put_u32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}
static void put_u64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}
static uint16_t get_u16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return v;
}
static uint32_t get_u32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}
static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

/*
 * Writes everything, in pieces of DEDUP_WRITEBACK_BYTES, starting the writeback of each piece
 * as it goes and waiting for the one before: the file never has more than two pieces dirty.
 * Why: these files (runs of up to GBs, blooms) are written without fdatasync, and when the
 * kernel writes a 60 MB run back all at once, the WAL's fdatasync (its few KiB and the device
 * flush) queues behind it on the device: one WAL sync took 113-127 ms that way (and every
 * acknowledgement of the shard waited with it; measured on ext4 on a virtio disk). Written back
 * 1 MiB at a time, the WAL's writes interleave. RocksDB's bytes_per_sync.
 * sync_file_range() is only pacing here, no durability claim; its errors are ignored.
 */
static _Thread_local uint64_t write_rate; /* bytes/s, 0 = no cap */

void dedup_set_thread_write_rate(uint64_t bytes_per_s)
{
	write_rate = bytes_per_s;
}

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* With a rate cap: sleeps until `done` bytes since t0 are within it. */
static void rate_wait(int64_t t0, uint64_t done)
{
	if (!write_rate)
		return;
	/* 128-bit: done * 10^9 overflows 64 bits past 18 GB (a run may be larger) */
	int64_t due = t0 + (int64_t)((unsigned __int128)done * 1000000000u / write_rate);
	int64_t now = mono_ns();
	if (due > now) {
		struct timespec ts = {(time_t)((due - now) / 1000000000), (long)((due - now) % 1000000000)};
		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
	}
}

int dedup_write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	off_t at = lseek(fd, 0, SEEK_CUR); /* < 0 (a pipe): no pacing */
	int64_t t0 = len >= DEDUP_WRITEBACK_BYTES && write_rate ? mono_ns() : 0;
	uint64_t done = 0;
	while (len > 0) {
		size_t chunk = len > DEDUP_WRITEBACK_BYTES ? DEDUP_WRITEBACK_BYTES : len;
		ssize_t w = write(fd, p, chunk);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w == 0)
			return -EIO;
		if (at >= 0) {
			(void)sync_file_range(fd, at, w, SYNC_FILE_RANGE_WRITE);
			if (at > 0) {
				off_t from = at > (off_t)DEDUP_WRITEBACK_BYTES
						 ? at - (off_t)DEDUP_WRITEBACK_BYTES : 0;
				(void)sync_file_range(fd, from, at - from,
						      SYNC_FILE_RANGE_WAIT_BEFORE |
							  SYNC_FILE_RANGE_WRITE |
							  SYNC_FILE_RANGE_WAIT_AFTER);
			}
			at += w;
		}
		p += w;
		len -= (size_t)w;
		done += (uint64_t)w;
		if (t0)
			rate_wait(t0, done);
	}
	return 0;
}

int dedup_fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int rc = fsync(fd) == 0 ? 0 : -errno;
	close(fd);
	return rc;
}

static uint64_t run_checksum(const uint8_t *header, const struct dedup_rec *recs, size_t n)
{
	XXH3_state_t st;
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, header, 56);
	XXH3_64bits_update(&st, recs, n * sizeof(*recs));
	return XXH3_64bits_digest(&st);
}

void dedup_run_header(uint8_t h[DEDUP_RUN_HEADER_BYTES], uint16_t shard, uint16_t level,
		      uint64_t base, uint64_t next, int64_t max_event_time_us, uint64_t count)
{
	memset(h, 0, DEDUP_RUN_HEADER_BYTES);
	memcpy(h, DEDUP_RUN_MAGIC, 8);
	put_u32(h + 8, DEDUP_RUN_VERSION);
	put_u16(h + 12, shard);
	put_u16(h + 14, level);
	put_u64(h + 16, base);
	put_u64(h + 24, next);
	put_u64(h + 32, (uint64_t)max_event_time_us);
	put_u64(h + 40, count);
	put_u32(h + 48, (uint32_t)sizeof(struct dedup_rec));
}

int dedup_run_write(const char *dir, uint16_t shard, uint64_t base, uint64_t next,
		    int64_t max_event_time_us, const struct dedup_rec *recs, size_t n, bool sync)
{
	char sdir[4096], path[4096], tmp[4200];
	int rc = dedup_shard_dir(sdir, sizeof(sdir), dir, shard);
	if (rc == 0)
		rc = dedup_run_path(path, sizeof(path), dir, shard, base);
	if (rc != 0)
		return rc;
	if (n > DEDUP_RUN_KEYS_MAX)
		return -EINVAL;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);

	uint8_t h[DEDUP_RUN_HEADER_BYTES];
	dedup_run_header(h, shard, 0, base, next, max_event_time_us, n);
	put_u64(h + 56, run_checksum(h, recs, n));

	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	rc = dedup_write_all(fd, h, sizeof(h));
	if (rc == 0)
		rc = dedup_write_all(fd, recs, n * sizeof(*recs));
	/* fdatasync failing is fatal for this run: report it, never claim the run is durable. */
	if (rc == 0 && sync && fdatasync(fd) != 0)
		rc = -errno;
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	if (rc != 0)
		goto out_unlink_tmp;
	if (rename(tmp, path) != 0) {
		rc = -errno;
		goto out_unlink_tmp;
	}
	return sync ? dedup_fsync_dir(sdir) : 0;

out_unlink_tmp:
	unlink(tmp);
	return rc;
}

static uint32_t index_bits_for(uint64_t count)
{
	uint32_t bits = 0;
	while (bits < 24 && (count >> (bits + 8)) > 0) /* ~128..256 records per bucket */
		bits++;
	return bits;
}

static int build_index(struct dedup_gen *g, const struct dedup_rec *recs)
{
	uint32_t bits = index_bits_for(g->count);
	size_t entries = ((size_t)1 << bits) + 1;
	g->index = malloc(entries * sizeof(uint32_t));
	if (!g->index)
		return -ENOMEM;
	g->index_bits = bits;
	uint64_t i = 0;
	for (size_t t = 0; t + 1 < entries; t++) {
		while (i < g->count && bits > 0 && (recs[i].lo >> (64 - bits)) < t)
			i++;
		g->index[t] = (uint32_t)i;
	}
	g->index[entries - 1] = (uint32_t)g->count;
	return 0;
}

/* ---- .bloom files: a run's bloom and sparse index, saved so restart need not rebuild them -- */

/* "<x>.keys" -> "<x>.bloom"; false if path does not end in ".keys" or does not fit. */
static bool bloom_path_of(char *out, size_t cap, const char *run_path)
{
	size_t len = strlen(run_path);
	if (len < 5 || strcmp(run_path + len - 5, ".keys") != 0 || len + 1 + 1 > cap)
		return false;
	memcpy(out, run_path, len - 5);
	memcpy(out + len - 5, ".bloom", 7);
	return true;
}

static uint64_t bloom_file_checksum(const uint8_t *h, const struct dedup_gen *g)
{
	XXH3_state_t st;
	XXH3_64bits_reset(&st);
	XXH3_64bits_update(&st, h, 56);
	XXH3_64bits_update(&st, g->bloom.words, g->bloom.nblocks * 64);
	XXH3_64bits_update(&st, g->index, (((size_t)1 << g->index_bits) + 1) * sizeof(uint32_t));
	return XXH3_64bits_digest(&st);
}

int dedup_bloom_save(const struct dedup_gen *g, const char *run_path, uint16_t shard,
		     uint32_t fp_per_million)
{
	char path[4200], tmp[4300];
	if (!bloom_path_of(path, sizeof(path), run_path))
		return -ENAMETOOLONG;
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	uint8_t h[DEDUP_BLOOM_HEADER_BYTES] = {0};
	memcpy(h, DEDUP_BLOOM_MAGIC, 8);
	put_u32(h + 8, DEDUP_BLOOM_VERSION);
	put_u16(h + 12, shard);
	put_u64(h + 16, g->base);
	put_u64(h + 24, get_u64((const uint8_t *)g->map + 56)); /* binds it to this run */
	put_u64(h + 32, g->count);
	put_u64(h + 40, g->bloom.nblocks);
	put_u32(h + 48, g->index_bits);
	put_u32(h + 52, fp_per_million);
	put_u64(h + 56, bloom_file_checksum(h, g));
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	int rc = dedup_write_all(fd, h, sizeof(h));
	if (rc == 0)
		rc = dedup_write_all(fd, g->bloom.words, g->bloom.nblocks * 64);
	if (rc == 0)
		rc = dedup_write_all(fd, g->index,
				     (((size_t)1 << g->index_bits) + 1) * sizeof(uint32_t));
	if (close(fd) != 0 && rc == 0)
		rc = -errno;
	/* Not synced: a lost or torn .bloom fails its checks and the bloom is rebuilt. */
	if (rc == 0 && rename(tmp, path) != 0)
		rc = -errno;
	if (rc != 0)
		unlink(tmp);
	return rc;
}

void dedup_bloom_unlink(const char *run_path)
{
	char path[4200];
	if (bloom_path_of(path, sizeof(path), run_path))
		unlink(path);
}

static int pread_all(int fd, void *buf, size_t len, off_t off)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t r = pread(fd, p, len, off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO;
		p += r;
		len -= (size_t)r;
		off += r;
	}
	return 0;
}

/* Loads g's bloom and index from the run's .bloom file if it is there, intact, made for this
 * very run (its checksum) and for the current FP target. False otherwise (then rebuild). */
static bool bloom_try_load(struct dedup_gen *g, const char *run_path, uint16_t shard,
			   uint64_t run_sum, uint32_t fp_per_million)
{
	char path[4200];
	if (!bloom_path_of(path, sizeof(path), run_path))
		return false;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	uint64_t nblocks = dedup_bloom_blocks_for(g->count, fp_per_million);
	uint32_t bits = index_bits_for(g->count);
	size_t index_bytes = (((size_t)1 << bits) + 1) * sizeof(uint32_t);
	uint8_t h[DEDUP_BLOOM_HEADER_BYTES];
	struct stat st;
	bool ok = fstat(fd, &st) == 0 &&
		  (uint64_t)st.st_size == DEDUP_BLOOM_HEADER_BYTES + nblocks * 64 + index_bytes &&
		  pread_all(fd, h, sizeof(h), 0) == 0 && memcmp(h, DEDUP_BLOOM_MAGIC, 8) == 0 &&
		  get_u32(h + 8) == DEDUP_BLOOM_VERSION && get_u16(h + 12) == shard &&
		  get_u64(h + 16) == g->base && get_u64(h + 24) == run_sum &&
		  get_u64(h + 32) == g->count && get_u64(h + 40) == nblocks &&
		  get_u32(h + 48) == bits && get_u32(h + 52) == fp_per_million;
	if (ok)
		ok = dedup_bloom_init(&g->bloom, nblocks) == 0;
	if (ok) {
		g->index = malloc(index_bytes);
		g->index_bits = bits;
		ok = g->index && pread_all(fd, g->bloom.words, nblocks * 64,
					   DEDUP_BLOOM_HEADER_BYTES) == 0 &&
		     pread_all(fd, g->index, index_bytes,
			       (off_t)(DEDUP_BLOOM_HEADER_BYTES + nblocks * 64)) == 0 &&
		     bloom_file_checksum(h, g) == get_u64(h + 56);
		/* The index must be monotone and end at count, or searches could leave the run. */
		for (size_t t = 0; ok && t + 1 < ((size_t)1 << bits) + 1; t++)
			ok = g->index[t] <= g->index[t + 1];
		ok = ok && g->index[0] == 0 && g->index[(size_t)1 << bits] == g->count;
	}
	if (!ok) {
		dedup_bloom_free(&g->bloom);
		free(g->index);
		g->index = NULL;
		g->index_bits = 0;
	}
	close(fd);
	return ok;
}

int dedup_gen_load(struct dedup_gen *g, const char *path, uint16_t shard, uint64_t base,
		   uint32_t fp_per_million)
{
	memset(g, 0, sizeof(*g));
	int rc = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		goto out_close;
	}
	if (st.st_size < (off_t)DEDUP_RUN_HEADER_BYTES) {
		rc = -EBADMSG;
		goto out_close;
	}
	size_t bytes = (size_t)st.st_size;
	void *map = mmap(NULL, bytes, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (map == MAP_FAILED) {
		rc = -errno;
		goto out_close;
	}
	g->map = map;
	g->map_bytes = bytes;
	const uint8_t *h = map;
	uint64_t count = get_u64(h + 40);
	if (memcmp(h, DEDUP_RUN_MAGIC, 8) != 0 || get_u32(h + 8) != DEDUP_RUN_VERSION ||
	    get_u16(h + 12) != shard || get_u64(h + 16) != base ||
	    get_u64(h + 24) <= base || get_u32(h + 48) != sizeof(struct dedup_rec) ||
	    count > DEDUP_RUN_KEYS_MAX ||
	    count != (bytes - DEDUP_RUN_HEADER_BYTES) / sizeof(struct dedup_rec) ||
	    (bytes - DEDUP_RUN_HEADER_BYTES) % sizeof(struct dedup_rec) != 0) {
		rc = -EBADMSG;
		goto out_unmap;
	}
	g->base = base;
	g->next = get_u64(h + 24);
	g->max_event_time_us = (int64_t)get_u64(h + 32);
	g->count = count;
	g->level = get_u16(h + 14);
	g->recs = (const struct dedup_rec *)(h + DEDUP_RUN_HEADER_BYTES);
	if (run_checksum(h, g->recs, count) != get_u64(h + 56)) {
		rc = -EBADMSG;
		goto out_unmap;
	}
	/* The run is always verified in full; only bloom and index may come from its .bloom. */
	bool saved = bloom_try_load(g, path, shard, get_u64(h + 56), fp_per_million);
	if (!saved) {
		rc = dedup_bloom_init(&g->bloom, dedup_bloom_blocks_for(count, fp_per_million));
		if (rc != 0)
			goto out_unmap;
	}
	/* One sequential pass: order and bounds checks, bloom adds prefetched 16 ahead. */
	for (uint64_t i = 0; i < count; i++) {
		const struct dedup_rec *r = &g->recs[i];
		if (!saved && i + 16 < count)
			dedup_bloom_prefetch(&g->bloom, g->recs[i + 16].lo);
		if ((i > 0 && !rec_less(r[-1].lo, r[-1].hi, r)) || r->offset < g->base ||
		    r->offset >= g->next) {
			rc = -EBADMSG;
			goto out_bloom;
		}
		if (!saved)
			dedup_bloom_add(&g->bloom, r->lo, r->hi);
	}
	if (!saved) {
		rc = build_index(g, g->recs);
		if (rc != 0)
			goto out_bloom;
	}
	g->bloom_loaded = saved;
	/* From now on the run is only searched at random: no readahead. */
	(void)madvise(map, bytes, MADV_RANDOM);
	close(fd);
	return 0;

out_bloom:
	dedup_bloom_free(&g->bloom);
	free(g->index);
out_unmap:
	munmap(map, bytes);
out_close:
	close(fd);
	memset(g, 0, sizeof(*g));
	return rc;
}

int dedup_gen_from_sorted(struct dedup_gen *g, const char *path, uint64_t base, uint64_t next,
			  int64_t max_event_time_us, uint16_t level, const struct dedup_rec *recs,
			  size_t n, uint32_t fp_per_million)
{
	memset(g, 0, sizeof(*g));
	size_t bytes = DEDUP_RUN_HEADER_BYTES + n * sizeof(struct dedup_rec);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	void *map = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
	int rc = map == MAP_FAILED ? -errno : 0;
	close(fd);
	if (rc != 0)
		return rc;
	(void)madvise(map, bytes, MADV_RANDOM);
	g->map = map;
	g->map_bytes = bytes;
	g->base = base;
	g->next = next;
	g->max_event_time_us = max_event_time_us;
	g->level = level;
	g->count = n;
	g->recs = (const struct dedup_rec *)((const uint8_t *)map + DEDUP_RUN_HEADER_BYTES);
	rc = dedup_bloom_init(&g->bloom, dedup_bloom_blocks_for(n, fp_per_million));
	if (rc == 0) {
		for (size_t i = 0; i < n; i++) {
			if (i + 16 < n)
				dedup_bloom_prefetch(&g->bloom, recs[i + 16].lo);
			dedup_bloom_add(&g->bloom, recs[i].lo, recs[i].hi);
		}
		rc = build_index(g, recs);
	}
	if (rc != 0)
		dedup_gen_free(g);
	return rc;
}

void dedup_gen_free(struct dedup_gen *g)
{
	if (g->map)
		munmap(g->map, g->map_bytes);
	dedup_bloom_free(&g->bloom);
	free(g->index);
	memset(g, 0, sizeof(*g));
}

/* Interpolation inside the sparse-index bucket: lo is uniform, so the record sits near
 * l + (fraction of the bucket's key range below lo) * (r - l); off by ~sqrt(bucket)/2. */
static uint64_t interpolate(const struct dedup_gen *g, uint64_t lo, uint64_t *l, uint64_t *r)
{
	uint64_t t = g->index_bits ? lo >> (64 - g->index_bits) : 0;
	*l = g->index[t];
	*r = g->index[t + 1];
	uint64_t frac = g->index_bits ? lo << g->index_bits : lo;
	return *l + (uint64_t)(((unsigned __int128)frac * (*r - *l)) >> 64);
}

void dedup_gen_prefetch_index(const struct dedup_gen *g, uint64_t lo)
{
	__builtin_prefetch(&g->index[g->index_bits ? lo >> (64 - g->index_bits) : 0], 0, 1);
}

void dedup_gen_prefetch(const struct dedup_gen *g, uint64_t lo)
{
	uint64_t l, r, est = interpolate(g, lo, &l, &r);
	if (est < g->count)
		__builtin_prefetch(&g->recs[est], 0, 1);
}

static inline bool rec_lt_key(const struct dedup_rec *r, uint64_t lo, uint64_t hi)
{
	return r->lo < lo || (r->lo == lo && r->hi < hi);
}

const struct dedup_rec *dedup_gen_search(const struct dedup_gen *g, uint64_t lo, uint64_t hi)
{
	const struct dedup_rec *recs = g->recs;
	uint64_t l, r, est = interpolate(g, lo, &l, &r);
	if (l == r)
		return NULL;
	if (est >= r)
		est = r - 1;
	/* Gallop from the estimate to a bracket of the first record >= (lo, hi), then binary
	 * search it: a few records around est, usually one or two cache lines. */
	if (!rec_lt_key(&recs[est], lo, hi)) { /* answer in [l, est] */
		uint64_t hi_b = est, step = 1;
		while (hi_b - l >= step && !rec_lt_key(&recs[hi_b - step], lo, hi)) {
			hi_b -= step;
			step <<= 1;
		}
		l = hi_b - l >= step ? hi_b - step + 1 : l;
		r = hi_b;
	} else { /* answer in (est, r] */
		uint64_t lo_b = est, step = 1;
		while (r - lo_b > step && rec_lt_key(&recs[lo_b + step], lo, hi)) {
			lo_b += step;
			step <<= 1;
		}
		r = r - lo_b > step ? lo_b + step : r;
		l = lo_b + 1;
	}
	while (l < r) { /* first record not less than (lo, hi) */
		uint64_t m = l + (r - l) / 2;
		if (rec_lt_key(&recs[m], lo, hi))
			l = m + 1;
		else
			r = m;
	}
	if (l < g->count && recs[l].lo == lo && recs[l].hi == hi)
		return &recs[l];
	return NULL;
}

uint64_t dedup_gen_ram_bytes(const struct dedup_gen *g)
{
	return g->bloom.nblocks * 64 + (((uint64_t)1 << g->index_bits) + 1) * sizeof(uint32_t) +
	       sizeof(*g);
}
