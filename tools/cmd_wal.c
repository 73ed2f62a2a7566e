/*
 * cmd_wal.c — `tally wal dump|verify|stats|retain`: inspect the write-ahead log from outside
 * the broker (safe while it runs: everything here is read-only except `retain`, which deletes
 * only sealed segments). Format: docs/wal-format.md.
 *
 *   dump    records as JSON lines, from an offset, optionally following new durable records
 *   verify  every block's checksum, caps, offset continuity, record decoding; exit 1 and the
 *           file and byte offset on any corruption (a torn tail of the newest segment is
 *           reported but is not corruption: recovery truncates it)
 *   stats   per shard: records, raw vs on-disk bytes, bytes per event, compression ratio
 *   retain  delete sealed segments older than N days that every consumer has passed
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tally/event.h"
#include "tally/wal.h"
#include "tools/cmds.h"
#include "wal_internal.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: tally wal <dump|verify|stats|retain> --data DIR [options]\n"
	    "\n"
	    "  dump    [--shard N] [--from OFFSET] [--limit N] [--follow]\n"
	    "          records as JSON lines (one shard, or all merged by ingest time);\n"
	    "          only durable records are shown; --follow waits for new ones (Ctrl-C ends)\n"
	    "  verify  [--shard N]   check every block of every segment; exit 1 naming the file\n"
	    "          and byte offset on corruption\n"
	    "  stats   [--shard N]   records, raw vs on-disk bytes, bytes/event, compression "
	    "ratio\n"
	    "  retain  --days N [--force]   delete sealed segments older than N days (default\n"
	    "          400) unless a consumer checkpoint has not passed them (--force: anyway)\n"
	    "\n"
	    "Exit codes: 0 ok, 1 corruption or error, 2 usage.\n");
}

/* JSON string: valid UTF-8 passes through (escaped as JSON requires); other bytes \u00XX. */
static void json_str(FILE *f, struct tally_view v)
{
	bool utf8 = event_utf8_valid(v.ptr, v.len);
	fputc('"', f);
	for (uint32_t i = 0; i < v.len; i++) {
		uint8_t c = v.ptr[i];
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void json_decimal(FILE *f, int64_t m, uint8_t scale)
{
	/* Exact text, no floating point: mantissa digits with a point `scale` from the right. */
	char digits[32];
	uint64_t u = m < 0 ? (uint64_t)0 - (uint64_t)m : (uint64_t)m;
	int n = snprintf(digits, sizeof digits, "%" PRIu64, u);
	if (m < 0)
		fputc('-', f);
	if (scale == 0) {
		fputs(digits, f);
		return;
	}
	if (n <= scale) {
		fputs("0.", f);
		for (int k = 0; k < scale - n; k++)
			fputc('0', f);
		fputs(digits, f);
		return;
	}
	fprintf(f, "%.*s.%s", n - scale, digits, digits + n - scale);
}

static void print_record(FILE *f, const struct wal_record *r)
{
	fprintf(f, "{\"shard\":%u,\"offset\":%" PRIu64 ",\"ingest_time_us\":%" PRId64, r->shard,
		r->offset, r->ingest_time_us);
	if (r->kind == WAL_RECORD_TICK) {
		fputs(",\"kind\":\"tick\"}\n", f);
		return;
	}
	fputs(",\"kind\":\"event\",\"tenant\":", f);
	json_str(f, r->tenant);
	fputs(",\"key\":", f);
	json_str(f, r->ev.key);
	fputs(",\"customer\":", f);
	json_str(f, r->ev.customer);
	fputs(",\"name\":", f);
	json_str(f, r->ev.name);
	fprintf(f, ",\"event_time_us\":%" PRId64 ",\"props\":{", r->ev.event_time_us);
	struct tally_prop_iter it;
	struct tally_prop p;
	event_prop_iter_init(&r->ev, &it);
	bool first = true;
	while (event_prop_next(&it, &p)) {
		if (!first)
			fputc(',', f);
		first = false;
		json_str(f, p.key);
		fputc(':', f);
		if (p.kind == TALLY_VALUE_INT)
			fprintf(f, "%" PRId64, p.i64);
		else if (p.kind == TALLY_VALUE_DECIMAL)
			json_decimal(f, p.i64, p.scale);
		else
			json_str(f, p.str);
	}
	fputs("}}\n", f);
}

struct args {
	const char *data;
	int shard;
	uint64_t from;
	bool from_set;
	uint64_t limit;
	bool follow;
	bool force;
	uint64_t days;
};

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-')
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct args *a)
{
	*a = (struct args){.shard = -1, .limit = UINT64_MAX, .days = WAL_RETENTION_DAYS_DEFAULT};
	for (int i = 2; i < argc; i++) {
		uint64_t v;
		const char *o = argv[i];
		bool has = i + 1 < argc;
		if (!strcmp(o, "--data") && has) {
			a->data = argv[++i];
		} else if (!strcmp(o, "--shard") && has) {
			if (parse_u64(argv[++i], &v) < 0 || v >= WAL_SHARDS_MAX)
				return -EINVAL;
			a->shard = (int)v;
		} else if (!strcmp(o, "--from") && has) {
			if (parse_u64(argv[++i], &a->from) < 0)
				return -EINVAL;
			a->from_set = true;
		} else if (!strcmp(o, "--limit") && has) {
			if (parse_u64(argv[++i], &a->limit) < 0)
				return -EINVAL;
		} else if (!strcmp(o, "--days") && has) {
			if (parse_u64(argv[++i], &a->days) < 0 || a->days > 100000)
				return -EINVAL;
		} else if (!strcmp(o, "--follow")) {
			a->follow = true;
		} else if (!strcmp(o, "--force")) {
			a->force = true;
		} else {
			fprintf(stderr, "tally wal: unknown or incomplete option '%s'\n", o);
			return -EINVAL;
		}
	}
	if (!a->data) {
		fprintf(stderr, "tally wal: --data DIR is required\n");
		return -EINVAL;
	}
	return 0;
}

static int cmd_dump(const struct args *a)
{
	struct wal_reader *r;
	int rc = wal_reader_open(a->data, a->shard, &r);
	if (rc < 0) {
		fprintf(stderr, "tally wal dump: %s (%s)\n", wal_last_error(), strerror(-rc));
		return 1;
	}
	if (a->from_set) {
		for (uint16_t i = 0; i < wal_reader_shard_count(r) && rc == 0; i++)
			rc = wal_reader_seek(r, a->shard < 0 ? i : (uint16_t)a->shard, a->from);
		if (rc < 0) {
			fprintf(stderr, "tally wal dump: %s\n", wal_last_error());
			wal_reader_close(r);
			return 1;
		}
	}
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	uint64_t n = 0;
	int ret = 0;
	while (n < a->limit && !stop_flag) {
		struct wal_record rec;
		rc = wal_reader_next(r, &rec);
		if (rc < 0) {
			fflush(stdout);
			fprintf(stderr, "tally wal dump: %s\n", wal_last_error());
			ret = 1;
			break;
		}
		if (rc == 0) {
			if (!a->follow)
				break;
			fflush(stdout);
			wal_reader_wait(r, 500);
			continue;
		}
		print_record(stdout, &rec);
		n++;
	}
	wal_reader_close(r);
	return ret;
}

/* Verifies (and accumulates stats over) every segment of one shard. 0 ok, 1 corrupt. */

/* True if bytes [from, to) of fd are all zero (the WAL's prefill, docs/wal-format.md). */
static bool tail_is_zeros(int fd, uint64_t from, uint64_t to)
{
	uint8_t buf[1 << 16];
	while (from < to) {
		size_t n = to - from < sizeof buf ? (size_t)(to - from) : sizeof buf;
		ssize_t r = pread(fd, buf, n, (off_t)from);
		if (r <= 0)
			return false;
		for (ssize_t i = 0; i < r; i++)
			if (buf[i])
				return false;
		from += (uint64_t)r;
	}
	return true;
}

static int check_shard(const char *data, uint16_t shard, bool print_ok,
		       struct wal_segment_stats *tot, uint64_t *segs_out, uint64_t *disk_out)
{
	size_t n = 0;
	int rc = wal_segments_list(data, shard, NULL, 0, &n);
	if (rc < 0) {
		fprintf(stderr, "shard %u: cannot list segments: %s\n", shard, strerror(-rc));
		return 1;
	}
	struct wal_segment_info *segs = calloc(n ? n : 1, sizeof *segs);
	if (!segs)
		return 1;
	rc = wal_segments_list(data, shard, segs, n, &n);
	int bad = rc < 0;
	memset(tot, 0, sizeof *tot);
	*segs_out = n;
	*disk_out = 0;
	for (size_t k = 0; k < n && !bad; k++) {
		struct wal_segment_stats st;
		rc = wal_segment_verify(segs[k].path, segs[k].base_offset, true, &st);
		*disk_out += segs[k].file_bytes;
		if (rc == -EBADMSG && !segs[k].sealed) {
			/* The newest segment may end in a torn (or still being written) block: that
			   is corruption only if a valid block follows it. */
			int fd = open(segs[k].path, O_RDONLY | O_CLOEXEC);
			struct wal_scan sc;
			if (fd >= 0 &&
			    wal_scan_segment(wal_io_libc(), fd, 0, segs[k].base_offset,
					     WAL_SCAN_SEARCH_LATER | WAL_SCAN_DECODE, &sc, NULL,
					     NULL) == 0 &&
			    sc.valid_bytes == st.torn_tail_at && sc.later_valid_at == UINT64_MAX) {
				if (tail_is_zeros(fd, sc.valid_bytes, sc.file_bytes))
					printf("%s: %" PRIu64 " bytes of prefill zeros after byte %" PRIu64
					       " (a running or killed writer; recovery cuts them)\n",
					       segs[k].path, sc.file_bytes - sc.valid_bytes,
					       sc.valid_bytes);
				else
					printf("%s: torn tail at byte %" PRIu64 " (%" PRIu64
					       " bytes; recovery truncates it, or a write in "
					       "progress)\n",
					       segs[k].path, st.torn_tail_at,
					       sc.file_bytes - sc.valid_bytes);
				rc = 0;
			}
			if (fd >= 0)
				close(fd);
		}
		if (rc < 0) {
			fprintf(stderr, "CORRUPT: %s\n", wal_last_error());
			bad = 1;
			break;
		}
		if (k + 1 < n && st.next_offset != segs[k + 1].base_offset) {
			fprintf(stderr,
				"CORRUPT: %s ends at offset %" PRIu64
				" but the next segment starts at %" PRIu64 "\n",
				segs[k].path, st.next_offset, segs[k + 1].base_offset);
			bad = 1;
			break;
		}
		if (print_ok)
			printf("%s: ok, offsets %" PRIu64 "..%" PRIu64 ", %" PRIu64
			       " blocks, %" PRIu64 " records\n",
			       segs[k].path, st.base_offset, st.next_offset, st.blocks, st.records);
		if (k == 0)
			tot->base_offset = st.base_offset;
		tot->next_offset = st.next_offset;
		tot->blocks += st.blocks;
		tot->records += st.records;
		tot->events += st.events;
		tot->ticks += st.ticks;
		tot->raw_bytes += st.raw_bytes;
		tot->file_bytes += st.file_bytes;
	}
	free(segs);
	return bad;
}

static int cmd_verify_stats(const struct args *a, bool stats)
{
	uint16_t count;
	int rc = wal_stored_shard_count(a->data, &count);
	if (rc < 0) {
		fprintf(stderr, "tally wal: %s\n", wal_last_error());
		return 1;
	}
	int bad = 0;
	struct wal_reader *r = NULL;
	if (wal_reader_open(a->data, -1, &r) < 0)
		r = NULL;
	for (uint16_t sh = 0; sh < count; sh++) {
		if (a->shard >= 0 && sh != a->shard)
			continue;
		struct wal_segment_stats t;
		uint64_t segs, disk;
		int b = check_shard(a->data, sh, !stats, &t, &segs, &disk);
		bad |= b;
		uint64_t durable = r ? wal_reader_durable_next(r, sh) : 0;
		if (!b && durable > t.next_offset) {
			fprintf(stderr,
				"CORRUPT: shard %u: durable watermark %" PRIu64
				" is past the last valid record %" PRIu64 "\n",
				sh, durable, t.next_offset);
			bad = 1;
		}
		if (stats && !b)
			printf("shard %02u: segments %" PRIu64 ", offsets %" PRIu64 "..%" PRIu64
			       ", records %" PRIu64 " (events %" PRIu64 ", ticks %" PRIu64
			       "), durable %" PRIu64 ", raw %" PRIu64 " B, on disk %" PRIu64
			       " B, %.1f B/event, compression %.2fx\n",
			       sh, segs, t.base_offset, t.next_offset, t.records, t.events, t.ticks,
			       durable, t.raw_bytes, disk,
			       t.events ? (double)disk / (double)t.events : 0.0,
			       disk ? (double)t.raw_bytes / (double)disk : 0.0);
		else if (!stats && !b)
			printf("shard %02u: ok (%" PRIu64 " records)\n", sh, t.records);
	}
	wal_reader_close(r);
	if (!stats)
		printf(bad ? "verify: CORRUPTION FOUND\n" : "verify: ok\n");
	return bad ? 1 : 0;
}

static int cmd_retain(const struct args *a)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t now_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
	uint32_t deleted = 0;
	int rc =
	    wal_retention_run(a->data, a->days * 86400ull * 1000000ull, now_us, a->force, &deleted);
	printf("retain: %u segment(s) deleted\n", deleted);
	if (rc < 0) {
		fprintf(stderr, "tally wal retain: %s (%s)\n", wal_last_error(), strerror(-rc));
		return 1;
	}
	return 0;
}

int tally_cmd_wal(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (int i = 2; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		}
	struct args a;
	if (parse_args(argc, argv, &a) < 0) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "dump"))
		return cmd_dump(&a);
	if (!strcmp(argv[1], "verify"))
		return cmd_verify_stats(&a, false);
	if (!strcmp(argv[1], "stats"))
		return cmd_verify_stats(&a, true);
	if (!strcmp(argv[1], "retain"))
		return cmd_retain(&a);
	fprintf(stderr, "tally wal: unknown subcommand '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
