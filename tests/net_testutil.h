/*
 * net_testutil.h — raw-socket helpers shared by tests that talk to a real tallyd without the
 * client library (malformed input, abuse). Header-only; test code only.
 */
#ifndef TALLY_NET_TESTUTIL_H
#define TALLY_NET_TESTUTIL_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "tally/protocol.h"

/* Reads one frame from fd: returns its type (and the ERROR code in *err_code if not NULL), or
   -1 on EOF, timeout (SO_RCVTIMEO) or bytes that are not a frame. Frames up to 4 KiB. */
static inline int net_test_read_frame(int fd, uint16_t *err_code)
{
	uint8_t buf[4096];
	size_t len = 0;
	for (;;) {
		struct proto_frame f;
		size_t need;
		long n = proto_frame_parse(buf, len, sizeof buf, 16, &f, &need);
		if (n > 0) {
			if (f.type == PROTO_ERROR && err_code)
				*err_code = f.u.error.code;
			return f.type;
		}
		if (n < 0 || len == sizeof buf)
			return -1;
		ssize_t k = recv(fd, buf + len, sizeof buf - len, 0);
		if (k <= 0)
			return -1;
		len += (size_t)k;
	}
}

#endif
