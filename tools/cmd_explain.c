/*
 * tools/cmd_explain.c — `tally explain` (the events behind an invoice line, re-read from the
 * WAL and checked against the line's provenance) and `tally invoice` (an invoice as text).
 * See docs/rating.md "Provenance digest" and "tally explain".
 *
 * explain re-applies the rating rules to the records in the line's WAL offset ranges: same
 * customer, the meter's event name, filters and value, event time inside the period, and
 * on time (ingest <= end + grace) for a usage line, or late for the adjustment's source
 * period and adjusted in this invoice's period for an adjustment line. It then compares the
 * event count and the fingerprint digest (sum of XXH3-64 of each fingerprint) with the
 * invoice's. Exit status: 0 match, 1 mismatch or error, 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally/rate.h"
#include "tally/wal.h"
#include "tools/cmds.h"

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap || cap >= (64u << 20))
			break;
		char *nb = realloc(buf, cap * 2);
		if (!nb) {
			free(buf);
			buf = NULL;
			break;
		}
		buf = nb;
		cap *= 2;
	}
	fclose(f);
	*len = n;
	return buf;
}

int tally_cmd_invoice(int argc, char **argv)
{
	if (argc != 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		FILE *f = argc == 2 ? stdout : stderr;
		fprintf(f, "usage: tally invoice INVOICE.json\n"
			   "Prints an invoice written by tally-rate as readable text.\n");
		return argc == 2 ? 0 : 2;
	}
	size_t len;
	char *buf = slurp(argv[1], &len), err[256];
	if (!buf) {
		fprintf(stderr, "tally invoice: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	int rc = rate_invoice_render_text(buf, len, stdout, err, sizeof err);
	free(buf);
	if (rc != 0) {
		fprintf(stderr, "tally invoice: %s: %s\n", argv[1], err);
		return 1;
	}
	return 0;
}

static void explain_usage(FILE *f)
{
	fprintf(f,
		"usage: tally explain INVOICE.json (--line N | --adjustment N) --data DIR --config FILE\n"
		"                     [--list]\n"
		"\n"
		"Re-reads from the WAL the events behind line N (1-based, in file order) or adjustment\n"
		"N of an invoice, applying the meter's rules, and checks their count and fingerprint\n"
		"digest against the invoice. --list prints every event. Exit 0 if they match.\n");
}

static int64_t parse_time(json_t *o, const char *k)
{
	int64_t t = 0;
	const char *s = json_string_value(json_object_get(o, k));
	if (!s || rate_time_parse(s, &t) != 0) {
		/* Invoices carry whole seconds (period bounds); anything else is malformed. */
		return INT64_MIN;
	}
	return t;
}

int tally_cmd_explain(int argc, char **argv)
{
	const char *data = NULL, *config = NULL;
	long line = 0, adj = 0;
	bool list = false;
	static const struct option opts[] = {{"line", required_argument, NULL, 'l'},
					     {"adjustment", required_argument, NULL, 'a'},
					     {"data", required_argument, NULL, 'd'},
					     {"config", required_argument, NULL, 'c'},
					     {"list", no_argument, NULL, 'L'},
					     {"help", no_argument, NULL, 'h'},
					     {NULL, 0, NULL, 0}};
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'l': line = strtol(optarg, NULL, 10); break;
		case 'a': adj = strtol(optarg, NULL, 10); break;
		case 'd': data = optarg; break;
		case 'c': config = optarg; break;
		case 'L': list = true; break;
		case 'h': explain_usage(stdout); return 0;
		default: explain_usage(stderr); return 2;
		}
	}
	if (optind != argc - 1 || !data || !config || (line > 0) == (adj > 0) || line < 0 ||
	    adj < 0) {
		explain_usage(stderr);
		return 2;
	}
	int status = 1;
	char err[512];
	struct rate_config *cfg = NULL;
	json_error_t jerr;
	json_t *inv = json_load_file(argv[optind], 0, &jerr);
	if (!inv || strcmp(json_string_value(json_object_get(inv, "format")) ?: "", "tally-invoice-1")) {
		fprintf(stderr, "tally explain: %s: not a tally invoice\n", argv[optind]);
		goto out;
	}
	if (rate_config_load(config, &cfg, err, sizeof err) != 0) {
		fprintf(stderr, "tally explain: %s: %s\n", config, err);
		goto out;
	}
	json_t *l = json_array_get(json_object_get(inv, line ? "lines" : "adjustments"),
				   (size_t)((line ? line : adj) - 1));
	if (!l) {
		fprintf(stderr, "tally explain: no %s %ld in this invoice\n",
			line ? "line" : "adjustment", line ? line : adj);
		goto out;
	}
	const char *customer = json_string_value(json_object_get(inv, "customer"));
	const char *meter_id = json_string_value(json_object_get(l, "meter"));
	int meter = meter_id ? rate_config_meter(cfg, meter_id) : -1;
	if (!customer || meter < 0) {
		fprintf(stderr, "tally explain: meter %s is not in %s\n", meter_id ? meter_id : "?",
			config);
		goto out;
	}
	const struct rate_customer_cfg *cc = rate_config_customer(cfg, customer);
	unsigned anchor = cc ? cc->anchor_day : 1;
	int64_t inv_start = parse_time(inv, "period_start"), inv_end = parse_time(inv, "period_end");
	int64_t src_start = line ? inv_start : parse_time(l, "late_period_start");
	int64_t src_s, src_end;
	if (inv_start == INT64_MIN || inv_end == INT64_MIN || src_start == INT64_MIN) {
		fprintf(stderr, "tally explain: malformed period bounds in the invoice\n");
		goto out;
	}
	rate_period_bounds(cfg, anchor, src_start, &src_s, &src_end);
	json_t *pv = json_object_get(l, "provenance");
	uint64_t want_count = (uint64_t)json_integer_value(json_object_get(pv, "events"));
	const char *want_digest = json_string_value(json_object_get(pv, "fingerprint_digest"));
	uint64_t count = 0, digest = 0;
	size_t i;
	json_t *r;
	json_array_foreach(json_object_get(pv, "wal"), i, r)
	{
		uint16_t shard = (uint16_t)json_integer_value(json_object_get(r, "shard"));
		uint64_t first = (uint64_t)json_integer_value(json_object_get(r, "first_offset"));
		uint64_t last = (uint64_t)json_integer_value(json_object_get(r, "last_offset"));
		struct wal_reader *rd;
		int rc = wal_reader_open(data, shard, &rd);
		if (rc == 0)
			rc = wal_reader_seek(rd, shard, first);
		if (rc != 0) {
			fprintf(stderr, "tally explain: shard %u offset %" PRIu64 ": %s %s\n", shard,
				first, strerror(-rc), wal_last_error());
			goto out;
		}
		struct wal_record rec;
		for (;;) {
			rc = wal_reader_next(rd, &rec);
			if (rc != 1 || rec.offset > last)
				break;
			if (rec.kind != WAL_RECORD_EVENT || rec.ev.customer.len != strlen(customer) ||
			    memcmp(rec.ev.customer.ptr, customer, rec.ev.customer.len) != 0 ||
			    !rate_meter_matches(cfg, (uint32_t)meter, &rec.ev) ||
			    rec.ev.event_time_us < src_s || rec.ev.event_time_us >= src_end)
				continue;
			bool late = rec.ingest_time_us > src_end + cfg->grace_us;
			if (line ? late
				 : (!late || rate_late_target_start(cfg, anchor, rec.ev.event_time_us,
								    rec.ingest_time_us) != inv_start))
				continue;
			struct tally_fp fp = event_fingerprint(rec.tenant, rec.ev.key);
			count++;
			digest += rate_fp_hash(fp);
			if (list) {
				char et[RATE_TIME_STR_MAX], it[RATE_TIME_STR_MAX];
				rate_time_format(rec.ev.event_time_us, et);
				rate_time_format(rec.ingest_time_us, it);
				printf("shard %u offset %" PRIu64 "  event %s  ingest %s  key %.*s\n",
				       shard, rec.offset, et, it, (int)rec.ev.key.len,
				       (const char *)rec.ev.key.ptr);
			}
		}
		wal_reader_close(rd);
		if (rc < 0) {
			fprintf(stderr, "tally explain: WAL read: %s %s\n", strerror(-rc),
				wal_last_error());
			goto out;
		}
		if (rc == 0 && rec.offset < last) {
			fprintf(stderr, "tally explain: shard %u ends before offset %" PRIu64 "\n",
				shard, last);
			goto out;
		}
	}
	char hex[20];
	snprintf(hex, sizeof hex, "%016" PRIx64, digest);
	bool ok = count == want_count && want_digest && strcmp(hex, want_digest) == 0;
	printf("%s %ld (%s): %" PRIu64 " events (invoice: %" PRIu64 "), digest %s (invoice: %s): "
	       "%s\n",
	       line ? "line" : "adjustment", line ? line : adj, meter_id, count, want_count, hex,
	       want_digest ? want_digest : "?", ok ? "OK" : "MISMATCH");
	status = ok ? 0 : 1;
out:
	json_decref(inv);
	rate_config_free(cfg);
	return status;
}
