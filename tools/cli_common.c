/*
 * cli_common.c — small helpers the `tally` subcommands share (declared in tools/cmds.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cmds.h"

int tally_cli_parse_connect(const char *arg, char *host, size_t cap, uint16_t *port)
{
	const char *colon = strrchr(arg, ':');
	if (!colon)
		return -1;
	const char *h = arg;
	size_t hl = (size_t)(colon - arg);
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	}
	if (hl == 0 || hl >= cap)
		return -1;
	char *end;
	errno = 0;
	unsigned long p = strtoul(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || p == 0 || p > 65535)
		return -1;
	memcpy(host, h, hl);
	host[hl] = '\0';
	*port = (uint16_t)p;
	return 0;
}
