/*
 * tally — the command-line tool. Dispatches `tally <command> ...` to the subcommand functions
 * that the modules' build fragments link in (cmake/modules/90-cli.cmake). A subcommand whose
 * module is not built is reported as such instead of failing to link.
 */
#include <stdio.h>
#include <string.h>

#include "tally/version.h"
#include "tools/cmds.h"

struct tally_cmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
};

static void usage(FILE *f, const struct tally_cmd *cmds, size_t n)
{
	fprintf(f, "usage: tally <command> [options]\n\ncommands:\n");
	for (size_t i = 0; i < n; i++)
		fprintf(f, "  %-9s %s%s\n", cmds[i].name, cmds[i].summary,
			cmds[i].fn ? "" : " (not built)");
	fprintf(f, "\n`tally <command> --help` describes each command; `tally --version` prints the "
		   "version.\n");
}

int main(int argc, char **argv)
{
	const struct tally_cmd cmds[] = {
		{"send", tally_cmd_send, "send JSON-lines events to a tallyd and summarise the receipts"},
		{"wal", tally_cmd_wal, "inspect the write-ahead log: dump, verify, stats"},
		{"usage", tally_cmd_usage, "show a customer's usage in the open billing periods"},
		{"explain", tally_cmd_explain, "list and check the events behind an invoice line"},
		{"invoice", tally_cmd_invoice, "render an invoice JSON as readable text"},
		{"ping", tally_cmd_ping, "check that a tallyd answers: HELLO, then PING round trips"},
	};
	size_t n = sizeof(cmds) / sizeof(cmds[0]);

	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		usage(argc < 2 ? stderr : stdout, cmds, n);
		return argc < 2 ? 2 : 0;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
		TALLY_PRINT_VERSION("tally");
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(argv[1], cmds[i].name))
			continue;
		if (!cmds[i].fn) {
			fprintf(stderr, "tally: command '%s' is not built in this binary\n", argv[1]);
			return 2;
		}
		return cmds[i].fn(argc - 1, argv + 1);
	}
	fprintf(stderr, "tally: unknown command '%s'\n\n", argv[1]);
	usage(stderr, cmds, n);
	return 2;
}
