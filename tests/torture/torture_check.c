/*
 * tests/torture/torture_check.c — the checker: compares the producers' ledgers with the WAL.
 *
 * Reads every DIR/ledger-*.txt (torture_lib.h), then every EVENT record of DATA's WAL (all
 * shards, wal_reader), and checks:
 *   lost              an ACCEPTED or DUPLICATE key that is not in the WAL
 *   duplicated        a ledger key present more than once in the WAL
 *   never_sent        a WAL key of a ledger's producer that the producer never sent
 *   pos_mismatch      an ACCEPTED/DUPLICATE receipt whose (shard, offset) is not where the
 *                     key is in the WAL
 *   content_mismatch  a WAL event whose body is not byte-for-byte what the producer sent
 *   wrong_tenant      a ledger key stored under another tenant than --tenant
 *   conflict/rejected receipts the producer should never get (it always resends identically)
 *   ledger_dup        two receipts for one key in a ledger
 * With --rated OUT (the output directory of tally-rate over the same WAL, meters "events"
 * = count and "tokens" = sum of the tokens property, any period): per customer, the rated
 * event count, token sum and provenance fingerprint digest (docs/rating.md) must equal those
 * of the ledger keys in the WAL: `rate_mismatch` counts customers where they differ (and
 * rated customers no ledger names). Rated = every invoice file's lines and adjustments
 * (a late event is counted once, in the adjustment of the period it was billed in; the closed
 * invoice of its own period is never rewritten) plus the open periods of OUT/usage.json.
 * Several ledgers (producer runs with different tags) may name the same customer: their
 * events add up. --all-closed: usage.json must hold no usage at all, so the invoice files
 * alone account for every event (run after every period with events has closed).
 * Any of these non-zero is a failure (exit 1). Keys of other tags are counted as `foreign`
 * (a failure only with --no-foreign). Unacknowledged keys (sent, no receipt) may be in the WAL
 * at most once.
 */
#include <dirent.h>
#include <jansson.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally/protocol.h"
#include "tally/rate.h"
#include "tally/wal.h"
#include "torture_lib.h"

#define LEDGERS_MAX 16384

struct entry {
	uint64_t offset;     /* from the receipt */
	uint64_t wal_offset; /* where the WAL has it */
	uint16_t shard, wal_shard;
	uint8_t status; /* 0 = no receipt */
	uint8_t wal_count;
};

struct ledger {
	char tag[TORTURE_TAG_BYTES_MAX + 1];
	char cprefix[32];
	unsigned producer;
	int64_t base_us;
	uint64_t next_seq; /* from the end line; else one past the highest receipt */
	bool ended;
	struct entry *e;
	uint64_t cap;
	struct expect *cust[TORTURE_CUSTOMERS_PER_PRODUCER]; /* per customer slot */
};

/* Per customer, from the WAL: what rating must find. Shared by the ledgers naming it. */
struct expect {
	char customer[TALLY_CUSTOMER_BYTES_MAX + 1];
	uint64_t events, digest;
	int64_t tokens;
};
#define EXPECT_MAX 65536
static struct expect *expects;
static size_t nexpects;

struct rated {
	char customer[TALLY_CUSTOMER_BYTES_MAX + 1];
	uint64_t events, digest;
	int64_t tokens;
	bool matched;
};
#define RATED_MAX 65536
static struct rated *rated;
static size_t nrated;

static struct ledger ledgers[LEDGERS_MAX];
static unsigned nledgers;

static struct {
	uint64_t sent, acked, accepted, duplicate, conflict, rejected, unacked, unacked_present;
	uint64_t in_wal, lost, duplicated, never_sent, pos_mismatch, content_mismatch;
	uint64_t wrong_tenant, ledger_dup, foreign, unended, bad_lines;
	uint64_t rated_customers, rated_events, rate_mismatch, rated_adjustments;
	uint64_t invoices, invoiced_events, open_events, open_tokens, open_adjustments;
} st;

static struct expect *expect_get(const char *customer)
{
	for (size_t i = 0; i < nexpects; i++)
		if (!strcmp(expects[i].customer, customer))
			return &expects[i];
	if (nexpects == EXPECT_MAX)
		return NULL;
	struct expect *x = &expects[nexpects++];
	memset(x, 0, sizeof *x);
	snprintf(x->customer, sizeof x->customer, "%s", customer);
	return x;
}

static struct rated *rated_get(const char *customer)
{
	for (size_t i = 0; i < nrated; i++)
		if (!strcmp(rated[i].customer, customer))
			return &rated[i];
	if (nrated == RATED_MAX)
		return NULL;
	struct rated *r = &rated[nrated++];
	memset(r, 0, sizeof *r);
	snprintf(r->customer, sizeof r->customer, "%s", customer);
	return r;
}

/* An integer decimal string ("123"; sums of the integer tokens property have no fraction). */
static bool int_str(json_t *j, int64_t *out)
{
	const char *q = json_string_value(j);
	char *end;
	if (!q || !*q)
		return false;
	errno = 0;
	*out = strtoll(q, &end, 10);
	return errno == 0 && *end == '\0';
}

/* Adds one line or adjustment (adj) of meter "events" or "tokens" to r; the others are not
 * the suite's. A line counts its quantity, an adjustment the late units (after - before). */
static int rated_add_line(struct rated *r, json_t *line, bool adj, bool open)
{
	const char *meter = json_string_value(json_object_get(line, "meter"));
	json_t *prov = json_object_get(line, "provenance");
	if (!meter)
		return -EBADMSG;
	if (!strcmp(meter, "events")) {
		const char *dg = json_string_value(json_object_get(prov, "fingerprint_digest"));
		json_t *n = json_object_get(prov, "events");
		if (!dg || !json_is_integer(n) || json_integer_value(n) < 0)
			return -EBADMSG;
		uint64_t events = (uint64_t)json_integer_value(n);
		r->events += events;
		r->digest += strtoull(dg, NULL, 16);
		if (open)
			st.open_events += events;
		else
			st.invoiced_events += events;
	} else if (!strcmp(meter, "tokens")) {
		int64_t q, before = 0;
		if (!int_str(json_object_get(line, adj ? "quantity_after" : "quantity"), &q) ||
		    (adj && !int_str(json_object_get(line, "quantity_before"), &before)))
			return -EBADMSG;
		r->tokens += q - before;
		if (open)
			st.open_tokens += (uint64_t)(q - before);
	}
	return 0;
}

/* Adds the lines and adjustments of one invoice-shaped object (usage.json period: open, or
 * invoice file). */
static int rated_add_invoice(json_t *inv, bool open)
{
	const char *cust = json_string_value(json_object_get(inv, "customer"));
	json_t *lines = json_object_get(inv, "lines");
	json_t *adjs = json_object_get(inv, "adjustments");
	if (!cust || !json_is_array(lines) || !json_is_array(adjs))
		return -EBADMSG;
	struct rated *r = rated_get(cust);
	if (!r)
		return -E2BIG;
	st.rated_adjustments += json_array_size(adjs);
	if (open)
		st.open_adjustments += json_array_size(adjs);
	else
		st.invoices++;
	size_t i;
	json_t *line;
	int rc = 0;
	json_array_foreach(lines, i, line) if (rc == 0) rc = rated_add_line(r, line, false, open);
	json_array_foreach(adjs, i, line) if (rc == 0) rc = rated_add_line(r, line, true, open);
	return rc;
}

static int rated_load_file(const char *path, bool usage)
{
	json_error_t err;
	json_t *root = json_load_file(path, 0, &err);
	if (!root) {
		fprintf(stderr, "torture_check: %s: %s (line %d)\n", path, err.text, err.line);
		return -EBADMSG;
	}
	int rc = 0;
	if (usage) {
		json_t *periods = json_object_get(root, "open_periods"), *p;
		size_t i;
		if (!json_is_array(periods))
			rc = -EBADMSG;
		else
			json_array_foreach(periods, i, p) if (rc == 0) rc = rated_add_invoice(p, true);
	} else {
		rc = rated_add_invoice(root, false);
	}
	json_decref(root);
	if (rc < 0)
		fprintf(stderr, "torture_check: %s: unexpected shape\n", path);
	return rc;
}

/* OUT/usage.json (open periods) + OUT/invoices/<customer>/<period>.json (closed ones). */
static int rated_load(const char *out)
{
	rated = calloc(RATED_MAX, sizeof *rated);
	if (!rated)
		return -ENOMEM;
	char path[TORTURE_PATH_BYTES_MAX * 2];
	snprintf(path, sizeof path, "%s/usage.json", out);
	int rc = rated_load_file(path, true);
	if (rc < 0)
		return rc;
	snprintf(path, sizeof path, "%s/invoices", out);
	DIR *d = opendir(path);
	if (!d)
		return 0;
	struct dirent *cd;
	while (rc == 0 && (cd = readdir(d))) {
		if (cd->d_name[0] == '.')
			continue;
		char cdir[TORTURE_PATH_BYTES_MAX * 2];
		snprintf(cdir, sizeof cdir, "%s/invoices/%s", out, cd->d_name);
		DIR *d2 = opendir(cdir);
		if (!d2)
			continue;
		struct dirent *f;
		while (rc == 0 && (f = readdir(d2))) {
			size_t n = strlen(f->d_name);
			if (n < 6 || strcmp(f->d_name + n - 5, ".json"))
				continue;
			char fp[TORTURE_PATH_BYTES_MAX * 3];
			snprintf(fp, sizeof fp, "%s/%s", cdir, f->d_name);
			rc = rated_load_file(fp, false);
		}
		closedir(d2);
	}
	closedir(d);
	return rc;
}

static int grow(struct ledger *l, uint64_t n)
{
	if (n <= l->cap)
		return 0;
	uint64_t cap = l->cap ? l->cap : 4096;
	while (cap < n)
		cap *= 2;
	struct entry *e = realloc(l->e, cap * sizeof *e);
	if (!e)
		return -ENOMEM;
	memset(e + l->cap, 0, (cap - l->cap) * sizeof *e);
	l->e = e;
	l->cap = cap;
	return 0;
}

static int load_ledger(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "torture_check: %s: %s\n", path, strerror(errno));
		return -errno;
	}
	if (nledgers == LEDGERS_MAX) {
		fclose(f);
		return -E2BIG;
	}
	struct ledger *l = &ledgers[nledgers];
	char line[512];
	bool header = false;
	uint64_t max_seq_plus1 = 0;
	while (fgets(line, sizeof line, f)) {
		if (!header) {
			if (sscanf(line, "# ledger v1 tag=%32s producer=%u base_us=%" SCNd64
					 " cprefix=%31s",
				   l->tag, &l->producer, &l->base_us, l->cprefix) != 4) {
				fprintf(stderr, "torture_check: %s: bad header\n", path);
				fclose(f);
				return -EBADMSG;
			}
			header = true;
			continue;
		}
		uint64_t next;
		unsigned un;
		if (sscanf(line, "# end next_seq=%" SCNu64 " unacked=%u", &next, &un) == 2) {
			l->next_seq = next;
			l->ended = true;
			continue;
		}
		uint64_t seq;
		unsigned status, reason, shard;
		long long off;
		if (sscanf(line, "%" SCNu64 " %u %u %u %lld", &seq, &status, &reason, &shard, &off) !=
		    5) {
			st.bad_lines++; /* a torn last line if the producer itself died */
			continue;
		}
		if (grow(l, seq + 1) < 0) {
			fclose(f);
			return -ENOMEM;
		}
		struct entry *e = &l->e[seq];
		if (e->status) {
			st.ledger_dup++;
			continue;
		}
		e->status = (uint8_t)status;
		e->shard = (uint16_t)shard;
		e->offset = off < 0 ? PROTO_OFFSET_UNKNOWN : (uint64_t)off;
		if (seq + 1 > max_seq_plus1)
			max_seq_plus1 = seq + 1;
	}
	fclose(f);
	if (!header)
		return -EBADMSG;
	if (!l->ended) {
		st.unended++;
		l->next_seq = max_seq_plus1;
	}
	if (grow(l, l->next_seq + 1) < 0)
		return -ENOMEM;
	for (unsigned c = 0; c < TORTURE_CUSTOMERS_PER_PRODUCER; c++) {
		char name[TALLY_CUSTOMER_BYTES_MAX + 1];
		snprintf(name, sizeof name, "%s_%u_%u", l->cprefix, l->producer, c);
		if (!(l->cust[c] = expect_get(name)))
			return -E2BIG;
	}
	nledgers++;
	return 0;
}

static struct ledger *find_ledger(const char *tag, unsigned producer)
{
	for (unsigned i = 0; i < nledgers; i++)
		if (ledgers[i].producer == producer && !strcmp(ledgers[i].tag, tag))
			return &ledgers[i];
	return NULL;
}

static bool tag_known(const char *tag)
{
	for (unsigned i = 0; i < nledgers; i++)
		if (!strcmp(ledgers[i].tag, tag))
			return true;
	return false;
}

int main(int argc, char **argv)
{
	const char *data = NULL, *ledger_dir = NULL, *tenant = "default", *rated_out = NULL;
	int no_foreign = 0, quiet = 0, all_closed = 0;
	static const struct option lo[] = {{"data", 1, 0, 'd'},      {"ledger", 1, 0, 'l'},
					   {"tenant", 1, 0, 't'},    {"no-foreign", 0, 0, 'F'},
					   {"quiet", 0, 0, 'q'},     {"help", 0, 0, 'h'},
					   {"rated", 1, 0, 'R'},     {"all-closed", 0, 0, 'C'},
					   {0, 0, 0, 0}};
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'd': data = optarg; break;
		case 'l': ledger_dir = optarg; break;
		case 't': tenant = optarg; break;
		case 'F': no_foreign = 1; break;
		case 'q': quiet = 1; break;
		case 'R': rated_out = optarg; break;
		case 'C': all_closed = 1; break;
		case 'h':
		default:
			printf("usage: torture_check --data DATA --ledger DIR [--tenant T] "
			       "[--no-foreign] [--quiet] [--rated OUT [--all-closed]]\n"
			       "Checks the WAL of DATA against the ledgers DIR/ledger-*.txt: every\n"
			       "acknowledged key exactly once at its receipt's position, nothing\n"
			       "unsent, nothing twice. --rated OUT: tally-rate's output over the\n"
			       "same WAL (invoices + usage.json) must count each of those events\n"
			       "once per customer; --all-closed: in the invoice files alone.\n"
			       "Exit 0 = all held, 1 = a violation.\n");
			return ch == 'h' ? 0 : 1;
		}
	}
	if (!data || !ledger_dir) {
		fprintf(stderr, "torture_check: --data and --ledger are required\n");
		return 1;
	}
	expects = calloc(EXPECT_MAX, sizeof *expects);
	if (!expects)
		return 1;
	DIR *d = opendir(ledger_dir);
	if (!d) {
		fprintf(stderr, "torture_check: %s: %s\n", ledger_dir, strerror(errno));
		return 1;
	}
	struct dirent *de;
	while ((de = readdir(d))) {
		size_t n = strlen(de->d_name);
		if (strncmp(de->d_name, "ledger-", 7) || n < 11 || strcmp(de->d_name + n - 4, ".txt"))
			continue;
		char path[TORTURE_PATH_BYTES_MAX];
		snprintf(path, sizeof path, "%s/%s", ledger_dir, de->d_name);
		if (load_ledger(path) < 0) {
			closedir(d);
			return 1;
		}
	}
	closedir(d);

	struct wal_reader *r;
	int rc = wal_reader_open(data, -1, &r);
	if (rc < 0) {
		fprintf(stderr, "torture_check: wal_reader_open %s: %s %s\n", data, strerror(-rc),
			wal_last_error());
		return 1;
	}
	size_t tenant_len = strlen(tenant);
	struct wal_record rec;
	uint8_t body[TALLY_EVENT_BYTES_MAX];
	while ((rc = wal_reader_next(r, &rec)) == 1) {
		if (rec.kind != WAL_RECORD_EVENT)
			continue;
		char tag[TORTURE_TAG_BYTES_MAX + 1];
		unsigned p;
		uint64_t seq;
		struct ledger *l = NULL;
		if (!torture_key_parse(rec.ev.key.ptr, rec.ev.key.len, tag, &p, &seq) ||
		    !(l = find_ledger(tag, p))) {
			if (l == NULL && torture_key_parse(rec.ev.key.ptr, rec.ev.key.len, tag, &p, &seq) &&
			    tag_known(tag))
				st.never_sent++; /* a producer id of a known run that has no ledger */
			else
				st.foreign++;
			continue;
		}
		st.in_wal++;
		if (seq >= l->next_seq && l->ended) {
			st.never_sent++;
			if (!quiet)
				fprintf(stderr, "never sent: %.*s\n", (int)rec.ev.key.len, rec.ev.key.ptr);
			continue;
		}
		if (grow(l, seq + 1) < 0)
			return 1;
		struct entry *e = &l->e[seq];
		if (e->wal_count < 255)
			e->wal_count++;
		if (e->wal_count == 2) {
			st.duplicated++;
			if (!quiet)
				fprintf(stderr, "duplicated: %.*s at %u/%" PRIu64 " and %u/%" PRIu64 "\n",
					(int)rec.ev.key.len, rec.ev.key.ptr, e->wal_shard,
					e->wal_offset, rec.shard, rec.offset);
		}
		if (e->wal_count == 1) {
			e->wal_shard = rec.shard;
			e->wal_offset = rec.offset;
			struct expect *x = l->cust[torture_customer_slot(p, seq)];
			x->events++;
			x->digest += rate_fp_hash(event_fingerprint(rec.tenant, rec.ev.key));
			struct tally_prop tok;
			if (event_prop_find(&rec.ev, "tokens", 6, &tok))
				x->tokens += tok.i64;
		}
		if (rec.tenant.len != tenant_len || memcmp(rec.tenant.ptr, tenant, tenant_len))
			st.wrong_tenant++;
		struct torture_event ev;
		torture_event_make(&ev, l->tag, l->cprefix, p, seq, l->base_us);
		long n = event_encode(&ev.in, body, sizeof body);
		if (n < 0 || rec.ev.body.len != (uint32_t)n || memcmp(rec.ev.body.ptr, body, (size_t)n))
			st.content_mismatch++;
	}
	wal_reader_close(r);
	if (rc < 0) {
		fprintf(stderr, "torture_check: wal_reader_next: %s %s\n", strerror(-rc),
			wal_last_error());
		return 1;
	}
	for (unsigned i = 0; i < nledgers; i++) {
		struct ledger *l = &ledgers[i];
		st.sent += l->next_seq;
		for (uint64_t s = 0; s < l->next_seq; s++) {
			struct entry *e = &l->e[s];
			switch (e->status) {
			case 0:
				st.unacked++;
				st.unacked_present += e->wal_count > 0;
				continue;
			case PROTO_ACCEPTED: st.accepted++; break;
			case PROTO_DUPLICATE: st.duplicate++; break;
			case PROTO_CONFLICT: st.conflict++; continue;
			default: st.rejected++; continue;
			}
			st.acked++;
			if (e->wal_count == 0) {
				st.lost++;
				if (!quiet)
					fprintf(stderr, "lost: %s-p%u-%" PRIu64 " (receipt %s %u/%" PRIu64
							")\n",
						l->tag, l->producer, s, proto_status_str(e->status),
						e->shard, e->offset);
			} else if (e->offset != PROTO_OFFSET_UNKNOWN &&
				   (e->shard != e->wal_shard || e->offset != e->wal_offset)) {
				st.pos_mismatch++;
				if (!quiet)
					fprintf(stderr, "position: %s-p%u-%" PRIu64 " receipt %s %u/%" PRIu64
							", WAL %u/%" PRIu64 "\n",
						l->tag, l->producer, s, proto_status_str(e->status),
						e->shard, e->offset, e->wal_shard, e->wal_offset);
			}
		}
		free(l->e);
	}
	if (rated_out) {
		if (rated_load(rated_out) < 0)
			return 1;
		for (size_t c = 0; c < nexpects; c++) {
			struct expect *x = &expects[c];
			struct rated *rt = NULL;
			for (size_t k = 0; k < nrated && !rt; k++)
				if (!strcmp(rated[k].customer, x->customer))
					rt = &rated[k];
			struct rated zero = {0};
			if (!rt)
				rt = &zero;
			rt->matched = true;
			st.rated_customers += rt != &zero;
			st.rated_events += rt->events;
			if (rt->events != x->events || rt->digest != x->digest ||
			    rt->tokens != x->tokens) {
				st.rate_mismatch++;
				if (!quiet)
					fprintf(stderr,
						"rated %s: events %" PRIu64 " digest %016" PRIx64
						" tokens %" PRId64 "; WAL has %" PRIu64 " / %016" PRIx64
						" / %" PRId64 "\n",
						x->customer, rt->events, rt->digest, rt->tokens,
						x->events, x->digest, x->tokens);
			}
		}
		for (size_t k = 0; k < nrated; k++)
			if (!rated[k].matched && (rated[k].events || rated[k].tokens)) {
				st.rate_mismatch++; /* rated usage of a customer no ledger names */
				if (!quiet)
					fprintf(stderr, "rated %s: %" PRIu64 " events, no ledger\n",
						rated[k].customer, rated[k].events);
			}
		if (all_closed && (st.open_events || st.open_tokens || st.open_adjustments)) {
			st.rate_mismatch++;
			if (!quiet)
				fprintf(stderr,
					"--all-closed: usage.json still holds %" PRIu64
					" events, %" PRIu64 " tokens, %" PRIu64 " adjustments\n",
					st.open_events, st.open_tokens, st.open_adjustments);
		}
		free(rated);
	}
	free(expects);
	bool fail = st.rate_mismatch || st.lost || st.duplicated || st.never_sent || st.pos_mismatch ||
		    st.content_mismatch || st.wrong_tenant || st.conflict || st.rejected ||
		    st.ledger_dup || (no_foreign && st.foreign) || nledgers == 0;
	char rated_line[320] = "";
	if (rated_out)
		snprintf(rated_line, sizeof rated_line,
			 " rated_customers=%" PRIu64 " rated_events=%" PRIu64 " rate_mismatch=%" PRIu64
			 " rated_adjustments=%" PRIu64 " invoices=%" PRIu64 " invoiced_events=%" PRIu64
			 " open_events=%" PRIu64,
			 st.rated_customers, st.rated_events, st.rate_mismatch, st.rated_adjustments,
			 st.invoices, st.invoiced_events, st.open_events);
	printf("torture_check: ledgers=%u sent=%" PRIu64 " acked=%" PRIu64 " accepted=%" PRIu64
	       " duplicate=%" PRIu64 " unacked=%" PRIu64 " (in wal %" PRIu64 ") in_wal=%" PRIu64
	       " lost=%" PRIu64 " duplicated=%" PRIu64 " never_sent=%" PRIu64
	       " pos_mismatch=%" PRIu64 " content_mismatch=%" PRIu64 " wrong_tenant=%" PRIu64
	       " conflict=%" PRIu64 " rejected=%" PRIu64 " ledger_dup=%" PRIu64 " foreign=%" PRIu64
	       " unended=%" PRIu64 "%s => %s\n",
	       nledgers, st.sent, st.acked, st.accepted, st.duplicate, st.unacked,
	       st.unacked_present, st.in_wal, st.lost, st.duplicated, st.never_sent,
	       st.pos_mismatch, st.content_mismatch, st.wrong_tenant, st.conflict, st.rejected,
	       st.ledger_dup, st.foreign, st.unended, rated_line, fail ? "FAIL" : "OK");
	return fail ? 1 : 0;
}
