/*
 * wal_ckpt.c — consumer checkpoints (DATA/consumers/NAME.ckpt) and segment retention.
 *
 * A checkpoint is replaced atomically: written to NAME.ckpt.tmp.<pid>, fsync'ed, renamed
 * over NAME.ckpt, then the directory is fsync'ed. A crash (kill -9, power loss) at any point
 * leaves either the old or the new file, never a torn one; a stray tmp file is ignored (and
 * overwritten by the next save of that process id). The file carries an XXH3-64 checksum, so
 * damage is reported (-EBADMSG), never read as a position. Format: docs/wal-format.md.
 *
 * Retention deletes only a prefix of a shard's sealed segments (offsets stay contiguous from
 * the earliest remaining one), only segments whose last ingest time is older than the cut,
 * and never one that a consumer checkpoint has not passed (unless forced). Any checkpoint it
 * cannot read blocks deletion (unless forced): better to keep data than to guess.
 *
 * Threads: reentrant; safe to run from another process while the writer appends (only sealed
 * segments are ever deleted; readers that have one open keep reading it).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "wal_internal.h"

#define CKPT_MAGIC        0x504B4354u /* "TCKP" */
#define CKPT_VERSION      1
#define CKPT_HEADER_BYTES 16
#define CKPT_BYTES(n)     (CKPT_HEADER_BYTES + 8u * (n) + 8u)

static bool consumer_name_ok(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > WAL_CONSUMER_NAME_BYTES_MAX || name[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

static int ckpt_dir(char *buf, size_t cap, const char *data_dir)
{
	int n = snprintf(buf, cap, "%s/consumers", data_dir);
	return (n < 0 || (size_t)n >= cap) ? -ENAMETOOLONG : 0;
}

int wal_checkpoint_save(const char *data_dir, const char *consumer, const uint64_t *next_offsets,
			uint16_t n)
{
	if (!consumer_name_ok(consumer) || n == 0 || n > WAL_SHARDS_MAX) {
		wal_set_error("bad consumer name '%s' (1..64 of [A-Za-z0-9._-]) or shard count %u",
			      consumer, n);
		return -EINVAL;
	}
	const struct wal_io *io = wal_io_libc();
	char dir[WAL_PATH_BYTES_MAX], path[WAL_PATH_BYTES_MAX], tmp[WAL_PATH_BYTES_MAX];
	int rc = ckpt_dir(dir, sizeof dir, data_dir);
	if (rc < 0)
		return rc;
	if (mkdir(dir, 0755) == 0) {
		if ((rc = wal_fsync_dir(io, data_dir)) < 0)
			return rc;
	} else if (errno != EEXIST) {
		return -errno;
	}
	int a = snprintf(path, sizeof path, "%s/%s.ckpt", dir, consumer);
	int b = snprintf(tmp, sizeof tmp, "%s/%s.ckpt.tmp.%ld", dir, consumer, (long)getpid());
	if (a < 0 || b < 0 || (size_t)a >= sizeof path || (size_t)b >= sizeof tmp)
		return -ENAMETOOLONG;
	uint8_t buf[CKPT_BYTES(WAL_SHARDS_MAX)];
	size_t len = CKPT_BYTES(n);
	wal_put_u32(buf, CKPT_MAGIC);
	wal_put_u16(buf + 4, CKPT_VERSION);
	wal_put_u16(buf + 6, n);
	wal_put_u64(buf + 8, 0);
	for (uint16_t i = 0; i < n; i++)
		wal_put_u64(buf + CKPT_HEADER_BYTES + 8u * i, next_offsets[i]);
	wal_put_u64(buf + len - 8, XXH3_64bits(buf, len - 8));

	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	ssize_t w = pwrite(fd, buf, len, 0);
	if (w != (ssize_t)len)
		rc = w < 0 ? -errno : -EIO;
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	if (rc == 0 && rename(tmp, path) < 0)
		rc = -errno;
	if (rc == 0)
		rc = wal_fsync_dir(io, dir);
	if (rc < 0) {
		unlink(tmp);
		wal_set_error("%s: checkpoint save failed: %s", path, strerror(-rc));
	}
	return rc;
}

static int ckpt_read_path(const char *path, uint64_t *next_offsets, uint16_t cap, uint16_t *n_out)
{
	uint8_t buf[CKPT_BYTES(WAL_SHARDS_MAX) + 1];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t r = pread(fd, buf, sizeof buf, 0);
	int rc = r < 0 ? -errno : 0;
	close(fd);
	if (rc < 0)
		return rc;
	if (r < (ssize_t)CKPT_BYTES(1) || wal_get_u32(buf) != CKPT_MAGIC ||
	    wal_get_u16(buf + 4) != CKPT_VERSION)
		goto out_bad;
	uint16_t n = wal_get_u16(buf + 6);
	if (n == 0 || n > WAL_SHARDS_MAX || (size_t)r != CKPT_BYTES(n))
		goto out_bad;
	if (XXH3_64bits(buf, (size_t)r - 8) != wal_get_u64(buf + r - 8))
		goto out_bad;
	*n_out = n;
	if (n != cap)
		return -EINVAL;
	for (uint16_t i = 0; i < n; i++)
		next_offsets[i] = wal_get_u64(buf + CKPT_HEADER_BYTES + 8u * i);
	return 0;
out_bad:
	wal_set_error("%s: damaged checkpoint file", path);
	return -EBADMSG;
}

int wal_checkpoint_load(const char *data_dir, const char *consumer, uint64_t *next_offsets,
			uint16_t n)
{
	if (!consumer_name_ok(consumer))
		return -EINVAL;
	char dir[WAL_PATH_BYTES_MAX], path[WAL_PATH_BYTES_MAX];
	int rc = ckpt_dir(dir, sizeof dir, data_dir);
	if (rc < 0)
		return rc;
	int a = snprintf(path, sizeof path, "%s/%s.ckpt", dir, consumer);
	if (a < 0 || (size_t)a >= sizeof path)
		return -ENAMETOOLONG;
	uint16_t stored = 0;
	rc = ckpt_read_path(path, next_offsets, n, &stored);
	if (rc == -EINVAL)
		wal_set_error("%s: checkpoint holds %u shards, asked for %u", path, stored, n);
	return rc;
}

/* min over every consumer checkpoint of its position per shard; UINT64_MAX = no consumer.
   Returns -EBADMSG/-EINVAL if some checkpoint cannot be used. */
static int ckpt_min(const char *data_dir, uint16_t shards, uint64_t *min)
{
	for (uint16_t i = 0; i < shards; i++)
		min[i] = UINT64_MAX;
	char dir[WAL_PATH_BYTES_MAX];
	int rc = ckpt_dir(dir, sizeof dir, data_dir);
	if (rc < 0)
		return rc;
	DIR *d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	uint64_t *pos = malloc(sizeof(uint64_t) * shards);
	if (!pos) {
		closedir(d);
		return -ENOMEM;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		if (len < 6 || strcmp(de->d_name + len - 5, ".ckpt") != 0)
			continue;
		char path[WAL_PATH_BYTES_MAX];
		if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path)
			continue;
		uint16_t stored;
		int r = ckpt_read_path(path, pos, shards, &stored);
		if (r < 0) {
			if (r == -EINVAL)
				wal_set_error("%s: checkpoint holds %u shards, WAL has %u", path,
					      stored, shards);
			rc = r;
			continue;
		}
		for (uint16_t i = 0; i < shards; i++)
			if (pos[i] < min[i])
				min[i] = pos[i];
	}
	free(pos);
	closedir(d);
	return rc;
}

int wal_retention_run(const char *data_dir, uint64_t max_age_us, int64_t now_us, bool force,
		      uint32_t *deleted_out)
{
	uint32_t deleted = 0;
	uint16_t shards;
	int rc = wal_stored_shard_count(data_dir, &shards);
	if (rc < 0)
		return rc;
	uint64_t *min = malloc(sizeof(uint64_t) * shards);
	if (!min)
		return -ENOMEM;
	rc = ckpt_min(data_dir, shards, min);
	if (rc < 0 && !force)
		goto out_free;
	if (rc < 0)
		for (uint16_t i = 0; i < shards; i++)
			min[i] = UINT64_MAX;
	rc = 0;
	const struct wal_io *io = wal_io_libc();
	int64_t cut_us = now_us - (int64_t)max_age_us;
	for (uint16_t sh = 0; sh < shards && rc == 0; sh++) {
		char dir[WAL_PATH_BYTES_MAX];
		if ((rc = wal_path_shard_dir(dir, sizeof dir, data_dir, sh)) < 0)
			break;
		uint64_t *bases;
		size_t n;
		if ((rc = wal_list_bases(dir, &bases, &n)) < 0)
			break;
		uint32_t here = 0;
		for (size_t k = 0; k + 1 < n; k++) { /* never the newest segment */
			uint64_t end = bases[k + 1];
			if (!force && end > min[sh])
				break; /* a consumer still needs it */
			char path[WAL_PATH_BYTES_MAX];
			if ((rc = wal_path_segment(path, sizeof path, dir, bases[k], "log")) < 0)
				break;
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0) {
				rc = -errno;
				break;
			}
			struct stat st;
			uint64_t pos = 0, off = bases[k];
			if (fstat(fd, &st) == 0)
				wal_idx_last_entry(dir, bases[k], (uint64_t)st.st_size, &pos, &off);
			struct wal_scan sc;
			rc = wal_scan_segment(io, fd, pos, off, 0, &sc, NULL, NULL);
			close(fd);
			if (rc < 0)
				break;
			if (sc.bad_why || sc.next_offset != end) {
				wal_set_error("%s: not deleted: its tail does not verify (%s)",
					      path, sc.bad_why ? sc.bad_why : "offset gap");
				rc = -EBADMSG;
				break;
			}
			if (sc.last_max_ingest_time_us == INT64_MIN ||
			    sc.last_max_ingest_time_us >= cut_us)
				break; /* too young (and so is everything after it) */
			if (unlink(path) < 0) {
				rc = -errno;
				break;
			}
			if (wal_path_segment(path, sizeof path, dir, bases[k], "idx") == 0)
				unlink(path);
			here++;
		}
		free(bases);
		if (here > 0) {
			int r = wal_fsync_dir(io, dir);
			if (rc == 0)
				rc = r;
			deleted += here;
		}
	}
out_free:
	free(min);
	if (deleted_out)
		*deleted_out = deleted;
	return rc;
}
