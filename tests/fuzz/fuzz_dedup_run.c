/*
 * fuzz_dedup_run.c — libFuzzer entry point for the .keys run loader (dedup_gen_load): any bytes
 * on disk must give 0 (a valid run, then searchable) or -EBADMSG, never a crash, a read out of
 * bounds or a leak. Input: byte 0 holds flags, the rest is the file. Flag bit 0: recompute the
 * checksum (header bytes 56..63) before loading, so mutations reach the order and bounds checks
 * behind it instead of all dying at the checksum. Flag bits 1..2: the shard the loader expects.
 * The base offset expected is the one in the header when bit 3 is set, else 0.
 * The file lives in a memfd, opened by path through /proc/self/fd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "dedup_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > (1u << 20))
		return 0;
	uint8_t flags = data[0];
	size_t len = size - 1;
	uint8_t *file = malloc(len ? len : 1);
	if (!file)
		return 0;
	memcpy(file, data + 1, len);
	uint64_t base = 0;
	if (len >= DEDUP_RUN_HEADER_BYTES) {
		if (flags & 8)
			memcpy(&base, file + 16, 8);
		if (flags & 1) {
			XXH3_state_t *st = XXH3_createState();
			XXH3_64bits_reset(st);
			XXH3_64bits_update(st, file, 56);
			XXH3_64bits_update(st, file + DEDUP_RUN_HEADER_BYTES,
					   len - DEDUP_RUN_HEADER_BYTES);
			uint64_t sum = XXH3_64bits_digest(st);
			XXH3_freeState(st);
			memcpy(file + 56, &sum, 8);
		}
	}
	int fd = memfd_create("run", MFD_CLOEXEC);
	if (fd < 0 || (len && write(fd, file, len) != (ssize_t)len))
		abort();
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	struct dedup_gen g;
	int rc = dedup_gen_load(&g, path, (uint16_t)((flags >> 1) & 3), base, 10000);
	if (rc == 0) {
		/* Every record is found; its neighbours in fp space are not confused with it. */
		for (uint64_t i = 0; i < g.count; i++) {
			const struct dedup_rec *r = dedup_gen_search(&g, g.recs[i].lo, g.recs[i].hi);
			if (r != &g.recs[i] || !dedup_bloom_test(&g.bloom, g.recs[i].lo, g.recs[i].hi))
				abort();
			r = dedup_gen_search(&g, g.recs[i].lo, g.recs[i].hi + 1);
			if (r && (r->lo != g.recs[i].lo || r->hi != g.recs[i].hi + 1))
				abort();
		}
		dedup_gen_free(&g);
	} else if (rc != -EBADMSG) {
		abort();
	}
	close(fd);
	free(file);
	return 0;
}
