/*
 * tools/cmds.h — the `tally` subcommands. Each is implemented in tools/cmd_<name>.c by the
 * module that owns it; weak so that the dispatcher links when a module is not built.
 * argv[0] is the subcommand's name. Returns the process exit code.
 */
#ifndef TALLY_TOOLS_CMDS_H
#define TALLY_TOOLS_CMDS_H

#include <stddef.h>
#include <stdint.h>

int tally_cmd_send(int argc, char **argv) __attribute__((weak));
int tally_cmd_wal(int argc, char **argv) __attribute__((weak));
int tally_cmd_usage(int argc, char **argv) __attribute__((weak));
int tally_cmd_explain(int argc, char **argv) __attribute__((weak));
int tally_cmd_invoice(int argc, char **argv) __attribute__((weak));
int tally_cmd_ping(int argc, char **argv) __attribute__((weak));

/* tools/cli_common.c: "HOST:PORT" or "[V6]:PORT" -> host (NUL-terminated, < cap) and port.
   Returns 0 or -1. */
int tally_cli_parse_connect(const char *arg, char *host, size_t cap, uint16_t *port);

#endif
