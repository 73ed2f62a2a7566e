/*
 * fuzz_wal.c — libFuzzer entry point for the WAL's on-disk parsers (src/wal_format.c,
 * src/wal_reader.c): the input is taken as a segment file. Every complete block in it gets a
 * correct checksum first, so the fuzzer explores what lies behind the checksum gate (header
 * caps, LZ4_decompress_safe with the header's sizes, record decoding, event_decode), which a
 * random bit flip would otherwise never reach. Then the segment goes through recovery's scan
 * (with the search for later valid blocks), wal_segment_verify and the segment iterator.
 * Nothing may crash, leak, or read out of bounds; results must agree with each other.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "wal_internal.h"
#include "fuzz_fixups.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > (4u << 20))
		return 0;
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return 0;
	memcpy(buf, data, size);
	fuzz_fix_block_checksums(buf, size);

	int fd = memfd_create("fuzz_wal", MFD_CLOEXEC);
	if (fd < 0 || (size && write(fd, buf, size) != (ssize_t)size))
		abort();
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

	struct wal_scan sc;
	if (wal_scan_segment(wal_io_libc(), fd, 0, 0, WAL_SCAN_SEARCH_LATER, &sc, NULL, NULL) != 0)
		abort();
	if (sc.valid_bytes > size || (sc.bad_why == NULL) != (sc.valid_bytes == size))
		abort();

	struct wal_segment_stats st;
	int vr = wal_segment_verify(path, 0, true, &st);
	if (vr != 0 && vr != -EBADMSG)
		abort();
	/* verify decodes records too, so it can only stop earlier than the scan. */
	if (st.file_bytes > sc.valid_bytes)
		abort();

	struct wal_segment_iter *it;
	if (wal_segment_iter_open(path, 0, UINT64_MAX, false, &it) == 0) {
		struct wal_record rec;
		uint64_t n = 0;
		int r;
		while ((r = wal_segment_iter_next(it, &rec)) == 1) {
			if (rec.offset != n++)
				abort();
			if (rec.kind == WAL_RECORD_EVENT &&
			    (rec.tenant.len > TALLY_TENANT_BYTES_MAX ||
			     rec.ev.body.len > TALLY_EVENT_BYTES_MAX))
				abort();
		}
		if (r == 0 && vr != 0)
			abort(); /* the iterator accepted what verify refused */
		if (r == 0 && n != st.records)
			abort();
		wal_segment_iter_close(it);
	}
	close(fd);
	free(buf);
	return 0;
}
