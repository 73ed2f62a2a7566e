/*
 * fuzz_fixups.h — checksum fix-ups shared by the fuzz targets. libFuzzer cannot compute XXH3,
 * so without these almost every mutation would stop at a checksum check and the parsers behind
 * it would go unexplored. Each walks the input by its own length fields and rewrites the
 * checksum of every complete unit in place.
 */
#ifndef TALLY_FUZZ_FIXUPS_H
#define TALLY_FUZZ_FIXUPS_H

#include <stddef.h>
#include <stdint.h>
#include <xxhash.h>

#include "tally/protocol.h"

/* Protocol frames (docs/protocol.md section 3): the low 32 bits of XXH3-64 over [8, end). */
static inline void fuzz_fix_frame_checksums(uint8_t *d, size_t size)
{
	size_t pos = 0;
	while (size - pos >= PROTO_HEADER_BYTES) {
		const uint8_t *l = d + pos + 12;
		size_t total = PROTO_HEADER_BYTES + ((size_t)l[0] | (size_t)l[1] << 8 |
						     (size_t)l[2] << 16 | (size_t)l[3] << 24);
		if (total > size - pos)
			return;
		uint32_t c = (uint32_t)XXH3_64bits(d + pos + 8, total - 8);
		for (int i = 0; i < 4; i++)
			d[pos + 4 + i] = (uint8_t)(c >> (8 * i));
		pos += total;
	}
}

#ifdef TALLY_WAL_INTERNAL_H
/* WAL blocks (docs/wal-format.md): the header's checksum field over header + payload. */
static inline void fuzz_fix_block_checksums(uint8_t *buf, size_t size)
{
	size_t pos = 0;
	while (size - pos >= WAL_BLOCK_HEADER_BYTES) {
		uint32_t stored = wal_get_u32(buf + pos + 16);
		if (stored > size - pos - WAL_BLOCK_HEADER_BYTES)
			break;
		uint64_t c =
		    wal_block_checksum(buf + pos, buf + pos + WAL_BLOCK_HEADER_BYTES, stored);
		wal_put_u64(buf + pos + 64, c);
		pos += WAL_BLOCK_HEADER_BYTES + stored;
	}
}
#endif

#endif
