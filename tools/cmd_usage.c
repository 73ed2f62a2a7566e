/*
 * tools/cmd_usage.c — `tally usage`: a customer's usage and amount so far in its open billing
 * periods, from OUT/usage.json (written every second by tally-rate with the same code that
 * builds invoices, so these numbers are what the invoice will say if nothing else arrives).
 */
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cmds.h"

static void usage_help(FILE *f)
{
	fprintf(f, "usage: tally usage [--customer ID] [--out DIR] [--json]\n"
		   "\n"
		   "Shows usage so far in the open billing periods, from DIR/usage.json\n"
		   "(default DIR: out). Without --customer, one line per customer and period.\n");
}

static const char *s_of(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "";
}

int tally_cmd_usage(int argc, char **argv)
{
	const char *customer = NULL, *out = "out";
	bool as_json = false;
	static const struct option opts[] = {{"customer", required_argument, NULL, 'c'},
					     {"out", required_argument, NULL, 'o'},
					     {"json", no_argument, NULL, 'j'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'c': customer = optarg; break;
		case 'o': out = optarg; break;
		case 'j': as_json = true; break;
		case 'h': usage_help(stdout); return 0;
		default: usage_help(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage_help(stderr);
		return 2;
	}
	char path[4096];
	snprintf(path, sizeof path, "%s/usage.json", out);
	json_error_t jerr;
	json_t *doc = json_load_file(path, 0, &jerr);
	if (!doc) {
		fprintf(stderr, "tally usage: %s: %s (is tally-rate running with --out %s?)\n", path,
			jerr.text, out);
		return 1;
	}
	printf("as of watermark %s\n", json_is_null(json_object_get(doc, "watermark"))
					       ? "(not yet known)"
					       : s_of(doc, "watermark"));
	size_t i, found = 0;
	json_t *p;
	json_array_foreach(json_object_get(doc, "open_periods"), i, p)
	{
		if (customer && strcmp(s_of(p, "customer"), customer) != 0)
			continue;
		found++;
		if (as_json) {
			char *s = json_dumps(p, JSON_SORT_KEYS | JSON_INDENT(2));
			if (s)
				printf("%s\n", s);
			free(s);
			continue;
		}
		printf("%-24s %s .. %s  total so far %s %s\n", s_of(p, "customer"),
		       s_of(p, "period_start"), s_of(p, "period_end"), s_of(p, "total"),
		       s_of(p, "currency"));
		if (!customer)
			continue;
		size_t k;
		json_t *l;
		json_array_foreach(json_object_get(p, "lines"), k, l)
		printf("    %-20s quantity %-16s amount %s\n", s_of(l, "meter"), s_of(l, "quantity"),
		       s_of(l, "amount"));
		json_array_foreach(json_object_get(p, "adjustments"), k, l)
		printf("    late %-15s for %s  amount %s\n", s_of(l, "meter"),
		       s_of(l, "late_period_start"), s_of(l, "amount"));
	}
	if (customer && !found)
		printf("%s: no open period with usage\n", customer);
	json_decref(doc);
	return 0;
}
