/*
 * cmd_send.c — `tally send`: reads usage events as JSON lines, sends them to a tallyd in
 * pipelined batches through the client library (tally/client.h) and summarises the receipts.
 * Usage and the accepted JSON are in usage() below and in docs/client.md.
 *
 * How a line becomes an event (no floating point anywhere):
 *   - fields: event_id | idempotency_key, customer_id, event_name (strings), timestamp
 *     (RFC 3339, parsed exactly by parse_rfc3339()) | timestamp_us (integer), and metadata |
 *     properties (an object). Any other field makes the line invalid: a typo must not drop
 *     data silently.
 *   - property values: JSON integer -> INT; string of the form -?D+.D+ -> DECIMAL, exact, with
 *     as many digits after the point as written (<= 18); other strings -> STRING. A JSON real
 *     (0.25, 1e3) is also taken exactly from its text: before jansson sees a line,
 *     mark_reals() rewrites each real token T outside strings into the string "\u0000T"
 *     (parsed with JSON_ALLOW_NUL), so the original digits survive; jansson never produces a
 *     double. A real -> DECIMAL; strings holding a NUL are otherwise refused.
 *   - the body is encoded here (encode_body(), no validation) and validated by
 *     event_decode(), the broker's own check: an invalid event is reported "rejected" with
 *     the broker's reason and never sent. The broker may still reject (e.g. time limits).
 *
 * Lines go into batches of --batch events (capped by the server's batch_events_max and by its
 * frame size); up to SEND_INFLIGHT_MAX batches are in flight. Each batch keeps its encoded
 * bodies and line numbers until its ACK: receipts are reported by line, and after a lost
 * connection or a retryable ERROR the unanswered batches are sent again, unchanged and in
 * their original order, on a new connection (recover()). That is safe because events are
 * deduplicated by key: what was already stored comes back DUPLICATE.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tally/client.h"
#include "tally/event.h"
#include "tally/protocol.h"
#include "tools/cmds.h"

#define SEND_BATCH_DEFAULT     500u
#define SEND_LINE_BYTES_MAX    (1u << 20) /* a longer line is invalid */
#define SEND_PROBLEMS_KEPT_MAX 10000u      /* per-line reports kept for the summary */
#define SEND_MSG_BYTES_MAX     320u
#define SEND_INFLIGHT_MAX      16u        /* batches kept for resending, at most */
#define SEND_RETRIES_DEFAULT   3u
#define SEND_BACKOFF_MS_FIRST  200
#define SEND_IDLE_FLUSH_MS     100       /* input quiet this long: send the partial batch */

enum send_kind { SEND_INVALID = 1, SEND_REJECTED, SEND_CONFLICT, SEND_UNACKED };

static const char *kind_name(int k)
{
	switch (k) {
	case SEND_INVALID: return "invalid";
	case SEND_REJECTED: return "rejected";
	case SEND_CONFLICT: return "conflict";
	default: return "unacked";
	}
}

struct send_problem {
	uint64_t line;
	uint8_t kind;   /* enum send_kind */
	uint8_t reason; /* enum tally_reject for SEND_REJECTED */
	uint16_t shard; /* SEND_CONFLICT: the first event's position, if known */
	uint64_t offset;
	char *msg;      /* SEND_INVALID, SEND_UNACKED */
};

/* A batch's events, kept until its ACK so that it can be sent again after a failure. */
struct send_batch {
	bool used;           /* slot holds a batch */
	bool pending;        /* must be (re)sent: not in flight on the current connection */
	bool sent_once;      /* counted in `sent` */
	uint64_t seq;        /* creation order, to resend in input order */
	uint64_t request_id; /* in flight on the current connection; 0 = not */
	uint32_t count;
	uint64_t *lines;     /* batch_cap line numbers */
	uint8_t *bodies;     /* count x (u16 len | body), as in the BATCH frame */
	size_t bodies_len;
	size_t bodies_cap;
};

struct send_state {
	struct tally_client *c;
	const struct tally_client_options *opts;
	bool quiet;
	bool json;
	int io_timeout_ms;
	uint32_t batch_cap;
	struct send_batch cur; /* being built */
	struct send_batch *slots; /* sent or to be sent again */
	uint32_t slot_count;
	uint64_t seq;
	/* Recovery from retryable failures. */
	bool need_recover;
	bool reconnect;
	unsigned retries_max;
	unsigned retries_left;
	int backoff_ms;
	uint64_t reconnects;
	char why[TALLY_CLIENT_ERROR_BYTES_MAX];
	/* Counters. */
	uint64_t nlines, sent, accepted, duplicate, conflict, rejected, invalid, unacked;
	struct send_problem *problems;
	size_t nproblems, problems_cap;
	uint64_t problems_dropped;
	char fatal[TALLY_CLIENT_ERROR_BYTES_MAX + 64]; /* set when the run cannot go on */
};

/* ---------------------------------------------------------------------------------------- */
/* Reports                                                                                   */

__attribute__((format(printf, 5, 6))) static void add_problem(struct send_state *st, uint64_t line,
							       int kind, uint8_t reason,
							       const char *fmt, ...)
{
	if (st->nproblems == SEND_PROBLEMS_KEPT_MAX) {
		st->problems_dropped++;
		return;
	}
	if (st->nproblems == st->problems_cap) {
		size_t cap = st->problems_cap ? st->problems_cap * 2 : 64;
		struct send_problem *p = realloc(st->problems, cap * sizeof(*p));
		if (!p) {
			st->problems_dropped++;
			return;
		}
		st->problems = p;
		st->problems_cap = cap;
	}
	struct send_problem *p = &st->problems[st->nproblems++];
	memset(p, 0, sizeof(*p));
	p->line = line;
	p->kind = (uint8_t)kind;
	p->reason = reason;
	p->offset = PROTO_OFFSET_UNKNOWN;
	if (fmt) {
		char buf[SEND_MSG_BYTES_MAX];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(buf, sizeof(buf), fmt, ap);
		va_end(ap);
		p->msg = strdup(buf);
	}
}

static int problem_cmp(const void *a, const void *b)
{
	const struct send_problem *x = a, *y = b;
	return x->line < y->line ? -1 : x->line > y->line;
}

static void problem_text(const struct send_problem *p, char *buf, size_t cap)
{
	switch (p->kind) {
	case SEND_REJECTED:
		snprintf(buf, cap, "%s (%s)", event_reject_str((enum tally_reject)p->reason),
			 event_reject_code((enum tally_reject)p->reason));
		break;
	case SEND_CONFLICT:
		if (p->offset != PROTO_OFFSET_UNKNOWN)
			snprintf(buf, cap,
				 "same event_id already stored with different content; the first "
				 "stands (shard %u, offset %llu)",
				 p->shard, (unsigned long long)p->offset);
		else
			snprintf(buf, cap, "same event_id already stored with different content; "
					   "the first stands");
		break;
	default:
		snprintf(buf, cap, "%s", p->msg ? p->msg : "(out of memory)");
		break;
	}
}

static void print_summary(struct send_state *st)
{
	if (st->nproblems)
		qsort(st->problems, st->nproblems, sizeof(*st->problems), problem_cmp);
	char text[SEND_MSG_BYTES_MAX + 128];
	if (st->json) {
		json_t *o = json_object();
		json_object_set_new(o, "lines", json_integer((json_int_t)st->nlines));
		json_object_set_new(o, "sent", json_integer((json_int_t)st->sent));
		json_object_set_new(o, "accepted", json_integer((json_int_t)st->accepted));
		json_object_set_new(o, "duplicate", json_integer((json_int_t)st->duplicate));
		json_object_set_new(o, "conflict", json_integer((json_int_t)st->conflict));
		json_object_set_new(o, "rejected", json_integer((json_int_t)st->rejected));
		json_object_set_new(o, "invalid", json_integer((json_int_t)st->invalid));
		json_object_set_new(o, "unacked", json_integer((json_int_t)st->unacked));
		if (st->fatal[0])
			json_object_set_new(o, "error", json_string(st->fatal));
		if (!st->quiet) {
			json_t *a = json_array();
			for (size_t i = 0; i < st->nproblems; i++) {
				const struct send_problem *p = &st->problems[i];
				json_t *e = json_object();
				json_object_set_new(e, "line", json_integer((json_int_t)p->line));
				json_object_set_new(e, "kind", json_string(kind_name(p->kind)));
				if (p->kind == SEND_REJECTED)
					json_object_set_new(
						e, "reason",
						json_string(event_reject_code((enum tally_reject)p->reason)));
				if (p->kind == SEND_CONFLICT && p->offset != PROTO_OFFSET_UNKNOWN) {
					json_object_set_new(e, "shard", json_integer(p->shard));
					json_object_set_new(e, "offset", json_integer((json_int_t)p->offset));
				}
				problem_text(p, text, sizeof(text));
				json_object_set_new(e, "message", json_string(text));
				json_array_append_new(a, e);
			}
			json_object_set_new(o, "problems", a);
			if (st->problems_dropped)
				json_object_set_new(o, "problems_not_listed",
						    json_integer((json_int_t)st->problems_dropped));
		}
		char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
		if (s)
			printf("%s\n", s);
		free(s);
		json_decref(o);
		return;
	}
	if (!st->quiet) {
		for (size_t i = 0; i < st->nproblems; i++) {
			problem_text(&st->problems[i], text, sizeof(text));
			printf("line %llu: %s: %s\n", (unsigned long long)st->problems[i].line,
			       kind_name(st->problems[i].kind), text);
		}
		if (st->problems_dropped)
			printf("... and %llu more problems not listed\n",
			       (unsigned long long)st->problems_dropped);
	}
	printf("sent %llu events from %llu lines: %llu accepted, %llu duplicate, %llu conflict, "
	       "%llu rejected, %llu invalid",
	       (unsigned long long)st->sent, (unsigned long long)st->nlines,
	       (unsigned long long)st->accepted, (unsigned long long)st->duplicate,
	       (unsigned long long)st->conflict, (unsigned long long)st->rejected,
	       (unsigned long long)st->invalid);
	if (st->unacked)
		printf(", %llu unacked", (unsigned long long)st->unacked);
	printf("\n");
}

/* ---------------------------------------------------------------------------------------- */
/* Exact parsing: RFC 3339 times and decimals                                                 */

/* Days from 1970-01-01 to y-m-d, proleptic Gregorian (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static bool digits(const char *s, int n, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	*out = v;
	return true;
}

/*
 * YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm), 'T' also 't' or ' ', 'Z' also 'z'.
 * The fraction may have any number of digits, but only zeros after the 6th (microseconds
 * are the unit: anything finer would be rounded, and we do not round). Returns 0 with
 * *us set, or -1 with err filled.
 */
static int parse_rfc3339(const char *s, size_t n, int64_t *us, char *err, size_t errcap)
{
	unsigned y, mo, d, h, mi, sec, oh = 0, om = 0;
	int64_t frac_us = 0;
	if (n < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
	    !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
	    !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' ||
	    !digits(s + 17, 2, &sec))
		goto bad_form;
	static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap) || h > 23 ||
	    mi > 59 || sec > 59) {
		snprintf(err, errcap, "timestamp \"%.*s\" is not a valid date and time%s", (int)n, s,
			 sec == 60 ? " (leap seconds are not supported)" : "");
		return -1;
	}
	size_t i = 19;
	if (i < n && s[i] == '.') {
		i++;
		size_t start = i;
		int64_t scale = 100000;
		while (i < n && s[i] >= '0' && s[i] <= '9') {
			if (i - start < 6) {
				frac_us += (s[i] - '0') * scale;
				scale /= 10;
			} else if (s[i] != '0') {
				snprintf(err, errcap,
					 "timestamp \"%.*s\" is finer than a microsecond (the unit of "
					 "event time; tally does not round)",
					 (int)n, s);
				return -1;
			}
			i++;
		}
		if (i == start)
			goto bad_form;
	}
	int sign = 0;
	if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
		i++;
	} else if (i + 6 == n && (s[i] == '+' || s[i] == '-') && digits(s + i + 1, 2, &oh) &&
		   s[i + 3] == ':' && digits(s + i + 4, 2, &om)) {
		sign = s[i] == '+' ? 1 : -1;
		if (oh > 23 || om > 59)
			goto bad_form;
		i += 6;
	} else {
		goto bad_form;
	}
	if (i != n)
		goto bad_form;
	int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
	secs -= sign * (int64_t)(oh * 3600 + om * 60); /* local time = UTC + offset */
	*us = secs * 1000000 + frac_us;
	return 0;
bad_form:
	snprintf(err, errcap,
		 "timestamp \"%.*s\" is not RFC 3339 (e.g. 2026-01-31T23:59:59.250Z or "
		 "2026-02-01T01:59:59+02:00)",
		 (int)(n > 64 ? 64 : n), s);
	return -1;
}

/*
 * Exact decimal from text: [-]D+[.D+][(e|E)[+-]D+] (the exponent only if allow_exp).
 * Returns 1 with (*mant, *scale), 0 if s does not have that shape (and `need_point`: no
 * point), or -1 if it has the shape but no int64 mantissa with scale <= 18 holds it (err).
 */
static int parse_decimal(const char *s, size_t n, bool allow_exp, bool need_point, int64_t *mant,
			 uint8_t *scale, char *err, size_t errcap)
{
	size_t i = 0;
	bool neg = false;
	if (i < n && s[i] == '-') {
		neg = true;
		i++;
	}
	unsigned __int128 m = 0;
	bool overflow = false;
	size_t int_digits = 0, frac_digits = 0;
	while (i < n && s[i] >= '0' && s[i] <= '9') {
		m = m * 10 + (unsigned)(s[i++] - '0');
		int_digits++;
		if (m > ((unsigned __int128)1 << 64))
			overflow = true, m = (unsigned __int128)1 << 64;
	}
	if (!int_digits)
		return 0;
	bool point = i < n && s[i] == '.';
	if (point) {
		i++;
		while (i < n && s[i] >= '0' && s[i] <= '9') {
			m = m * 10 + (unsigned)(s[i++] - '0');
			frac_digits++;
			if (m > ((unsigned __int128)1 << 64))
				overflow = true, m = (unsigned __int128)1 << 64;
		}
		if (!frac_digits)
			return 0;
	}
	long exp = 0;
	if (allow_exp && i < n && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		bool eneg = false;
		if (i < n && (s[i] == '+' || s[i] == '-'))
			eneg = s[i++] == '-';
		size_t ed = 0;
		while (i < n && s[i] >= '0' && s[i] <= '9') {
			if (exp < 100000)
				exp = exp * 10 + (s[i] - '0');
			i++;
			ed++;
		}
		if (!ed)
			return 0;
		if (eneg)
			exp = -exp;
	}
	if (i != n || (need_point && !point))
		return 0;
	long sc = (long)frac_digits - exp;
	/* Drop trailing zeros only when needed to fit the scale: 1.50 stays scale 2. */
	while (sc > TALLY_DECIMAL_SCALE_MAX && !overflow && m % 10 == 0 && m != 0) {
		m /= 10;
		sc--;
	}
	if (m == 0 && sc > TALLY_DECIMAL_SCALE_MAX)
		sc = TALLY_DECIMAL_SCALE_MAX;
	while (sc < 0 && !overflow) {
		m *= 10;
		sc++;
		if (m > ((unsigned __int128)1 << 64))
			overflow = true;
	}
	uint64_t limit = neg ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
	if (overflow || m > limit || sc < 0 || sc > TALLY_DECIMAL_SCALE_MAX) {
		snprintf(err, errcap,
			 "%.*s does not fit a decimal (at most 18 digits after the point and an "
			 "int64 mantissa)",
			 (int)(n > 48 ? 48 : n), s);
		return -1;
	}
	*mant = neg ? (int64_t)(0 - (uint64_t)m) : (int64_t)m;
	*scale = (uint8_t)sc;
	return 1;
}

/*
 * Copies line[0..n) to out, rewriting each JSON number token with a fraction or exponent
 * outside strings as the string "\u0000<token>" (see the file header). Tokens that are not
 * valid JSON numbers are copied as they are, for jansson to report. out needs 4n + 16 bytes.
 */
static size_t mark_reals(const char *line, size_t n, char *out)
{
	size_t o = 0;
	bool in_str = false;
	for (size_t i = 0; i < n;) {
		char ch = line[i];
		if (in_str) {
			out[o++] = ch;
			i++;
			if (ch == '\\' && i < n)
				out[o++] = line[i++];
			else if (ch == '"')
				in_str = false;
			continue;
		}
		if (ch == '"') {
			in_str = true;
			out[o++] = line[i++];
			continue;
		}
		if (ch != '-' && !(ch >= '0' && ch <= '9')) {
			out[o++] = line[i++];
			continue;
		}
		size_t j = i + (ch == '-');
		bool real = false;
		while (j < n && ((line[j] >= '0' && line[j] <= '9') || line[j] == '.' || line[j] == 'e' ||
				 line[j] == 'E' || line[j] == '+' || line[j] == '-')) {
			if (line[j] == '.' || line[j] == 'e' || line[j] == 'E')
				real = true;
			j++;
		}
		if (real) {
			memcpy(out + o, "\"\\u0000", 7);
			o += 7;
			memcpy(out + o, line + i, j - i);
			o += j - i;
			out[o++] = '"';
		} else {
			memcpy(out + o, line + i, j - i);
			o += j - i;
		}
		i = j;
	}
	out[o] = '\0';
	return o;
}

/* ---------------------------------------------------------------------------------------- */
/* One line -> one event                                                                     */

struct send_event {
	struct tally_event_in in;
	struct tally_prop props[TALLY_PROPS_MAX];
};

/* A string field: 0, or -1 with err (wrong type, NUL inside, a JSON real). */
static int get_string(json_t *v, const char *field, struct tally_view *out, char *err, size_t cap)
{
	if (!json_is_string(v)) {
		snprintf(err, cap, "field \"%s\" must be a string", field);
		return -1;
	}
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);
	if (n && s[0] == '\0') {
		snprintf(err, cap, "field \"%s\" must be a string, not the number %s", field, s + 1);
		return -1;
	}
	if (strlen(s) != n) {
		snprintf(err, cap, "field \"%s\" contains a NUL character", field);
		return -1;
	}
	out->ptr = (const uint8_t *)s;
	out->len = (uint32_t)n;
	return 0;
}

static int get_props(json_t *obj, const char *field, struct send_event *ev, char *err, size_t cap)
{
	if (!json_is_object(obj)) {
		snprintf(err, cap, "field \"%s\" must be an object", field);
		return -1;
	}
	if (json_object_size(obj) > TALLY_PROPS_MAX) {
		/* Reported by the broker's check as PROP_COUNT: leave a count it will see. */
		ev->in.prop_count = (uint32_t)json_object_size(obj);
		return 1;
	}
	const char *k;
	json_t *v;
	uint32_t i = 0;
	json_object_foreach(obj, k, v) {
		struct tally_prop *p = &ev->props[i++];
		memset(p, 0, sizeof(*p));
		p->key.ptr = (const uint8_t *)k;
		p->key.len = (uint32_t)strlen(k);
		if (json_is_integer(v)) {
			p->kind = TALLY_VALUE_INT;
			p->i64 = (int64_t)json_integer_value(v);
		} else if (json_is_string(v)) {
			const char *s = json_string_value(v);
			size_t n = json_string_length(v);
			char derr[160];
			if (n && s[0] == '\0') { /* a JSON real, marked by mark_reals() */
				int r = parse_decimal(s + 1, n - 1, true, false, &p->i64, &p->scale, derr,
						      sizeof(derr));
				if (r <= 0) {
					snprintf(err, cap, "%s \"%s\": %s", field, k,
						 r < 0 ? derr : "malformed number");
					return -1;
				}
				p->kind = TALLY_VALUE_DECIMAL;
				continue;
			}
			if (strlen(s) != n) {
				snprintf(err, cap, "%s \"%s\" contains a NUL character", field, k);
				return -1;
			}
			int r = parse_decimal(s, n, false, true, &p->i64, &p->scale, derr, sizeof(derr));
			if (r < 0) {
				snprintf(err, cap, "%s \"%s\": %s", field, k, derr);
				return -1;
			}
			if (r > 0) {
				p->kind = TALLY_VALUE_DECIMAL;
			} else {
				p->kind = TALLY_VALUE_STRING;
				p->str.ptr = (const uint8_t *)s;
				p->str.len = (uint32_t)n;
			}
		} else {
			snprintf(err, cap,
				 "%s \"%s\" must be an integer, a decimal or a string (not %s)", field, k,
				 json_is_boolean(v) ? "a boolean"
				 : json_is_null(v)  ? "null"
				 : json_is_array(v) ? "an array"
						    : "an object");
			return -1;
		}
	}
	ev->in.prop_count = i;
	ev->in.props = ev->props;
	return 0;
}

/*
 * Fills ev from a parsed line (views into `root`). Returns 0, or -1 with err (invalid line).
 */
static int line_to_event(json_t *root, struct send_event *ev, char *err, size_t cap)
{
	static const char *const known[] = {"event_id",  "idempotency_key", "customer_id",
					    "event_name", "timestamp",       "timestamp_us",
					    "metadata",   "properties"};
	memset(&ev->in, 0, sizeof(ev->in));
	if (!json_is_object(root)) {
		snprintf(err, cap, "a line must be a JSON object");
		return -1;
	}
	const char *k;
	json_t *v;
	json_object_foreach(root, k, v) {
		bool ok = false;
		for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
			ok |= !strcmp(k, known[i]);
		if (!ok) {
			snprintf(err, cap, "unknown field \"%.64s\"", k);
			return -1;
		}
	}
	json_t *id = json_object_get(root, "event_id");
	json_t *ik = json_object_get(root, "idempotency_key");
	if (id && ik) {
		snprintf(err, cap, "give event_id or idempotency_key, not both");
		return -1;
	}
	if (!id && !ik) {
		snprintf(err, cap, "missing field \"event_id\" (or \"idempotency_key\")");
		return -1;
	}
	if (get_string(id ? id : ik, id ? "event_id" : "idempotency_key", &ev->in.key, err, cap) < 0)
		return -1;
	json_t *cu = json_object_get(root, "customer_id");
	if (!cu) {
		snprintf(err, cap, "missing field \"customer_id\"");
		return -1;
	}
	if (get_string(cu, "customer_id", &ev->in.customer, err, cap) < 0)
		return -1;
	json_t *nm = json_object_get(root, "event_name");
	if (!nm) {
		snprintf(err, cap, "missing field \"event_name\"");
		return -1;
	}
	if (get_string(nm, "event_name", &ev->in.name, err, cap) < 0)
		return -1;

	json_t *ts = json_object_get(root, "timestamp");
	json_t *tu = json_object_get(root, "timestamp_us");
	if (ts && tu) {
		snprintf(err, cap, "give timestamp or timestamp_us, not both");
		return -1;
	}
	if (ts) {
		struct tally_view t;
		if (get_string(ts, "timestamp", &t, err, cap) < 0)
			return -1;
		if (parse_rfc3339((const char *)t.ptr, t.len, &ev->in.event_time_us, err, cap) < 0)
			return -1;
	} else if (tu) {
		if (!json_is_integer(tu)) {
			snprintf(err, cap, "field \"timestamp_us\" must be an integer (microseconds "
					   "since the Unix epoch)");
			return -1;
		}
		ev->in.event_time_us = (int64_t)json_integer_value(tu);
	} else {
		snprintf(err, cap, "missing field \"timestamp\" (or \"timestamp_us\")");
		return -1;
	}

	json_t *md = json_object_get(root, "metadata");
	json_t *pr = json_object_get(root, "properties");
	if (md && pr) {
		snprintf(err, cap, "give metadata or properties, not both");
		return -1;
	}
	if (md || pr)
		return get_props(md ? md : pr, md ? "metadata" : "properties", ev, err, cap) < 0 ? -1
												  : 0;
	return 0;
}

/*
 * Encodes the event body as specified in tally/event.h, without validating it, then runs the
 * broker's own validation (event_decode) on it. Lengths that do not even fit their field
 * are reported with the reason the decoder gives for them. Returns the reason (NONE = valid,
 * *len set).
 */
static enum tally_reject encode_body(const struct tally_event_in *in, uint8_t *buf, size_t cap,
				     size_t *len)
{
	if (in->key.len == 0 || in->key.len > TALLY_KEY_BYTES_MAX)
		return TALLY_REJECT_KEY_LEN;
	if (in->customer.len == 0 || in->customer.len > TALLY_CUSTOMER_BYTES_MAX)
		return TALLY_REJECT_CUSTOMER_LEN;
	if (in->name.len == 0 || in->name.len > TALLY_NAME_BYTES_MAX)
		return TALLY_REJECT_NAME_LEN;
	if (in->prop_count > TALLY_PROPS_MAX)
		return TALLY_REJECT_PROP_COUNT;
	for (uint32_t i = 0; i < in->prop_count; i++) {
		if (in->props[i].key.len == 0 || in->props[i].key.len > TALLY_PROP_KEY_BYTES_MAX)
			return TALLY_REJECT_PROP_KEY_LEN;
		if (in->props[i].kind == TALLY_VALUE_STRING &&
		    in->props[i].str.len > TALLY_PROP_STRING_BYTES_MAX)
			return TALLY_REJECT_PROP_STRING_LEN;
	}
	/* The checks above bound the body by TALLY_EVENT_BYTES_MAX <= cap. */
	uint8_t *p = buf;
	uint64_t t = (uint64_t)in->event_time_us;
	for (int i = 0; i < 8; i++)
		*p++ = (uint8_t)(t >> (8 * i));
	*p++ = (uint8_t)in->key.len;
	*p++ = (uint8_t)in->customer.len;
	*p++ = (uint8_t)in->name.len;
	*p++ = (uint8_t)in->prop_count;
	memcpy(p, in->key.ptr, in->key.len);
	p += in->key.len;
	memcpy(p, in->customer.ptr, in->customer.len);
	p += in->customer.len;
	memcpy(p, in->name.ptr, in->name.len);
	p += in->name.len;
	for (uint32_t i = 0; i < in->prop_count; i++) {
		const struct tally_prop *pr = &in->props[i];
		*p++ = (uint8_t)pr->key.len;
		*p++ = pr->kind;
		memcpy(p, pr->key.ptr, pr->key.len);
		p += pr->key.len;
		if (pr->kind == TALLY_VALUE_STRING) {
			*p++ = (uint8_t)pr->str.len;
			*p++ = (uint8_t)(pr->str.len >> 8);
			if (pr->str.len)
				memcpy(p, pr->str.ptr, pr->str.len);
			p += pr->str.len;
		} else {
			if (pr->kind == TALLY_VALUE_DECIMAL)
				*p++ = pr->scale;
			uint64_t v = (uint64_t)pr->i64;
			for (int k = 0; k < 8; k++)
				*p++ = (uint8_t)(v >> (8 * k));
		}
	}
	*len = (size_t)(p - buf);
	(void)cap;
	struct tally_event ev;
	return event_decode(buf, *len, &ev);
}

/* ---------------------------------------------------------------------------------------- */
/* Sending and receipts                                                                      */

static void set_fatal(struct send_state *st, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void set_fatal(struct send_state *st, const char *fmt, ...)
{
	if (st->fatal[0])
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(st->fatal, sizeof(st->fatal), fmt, ap);
	va_end(ap);
}

/*
 * The connection (or one batch) failed. Retryable failures schedule a recovery: recover()
 * takes the replies that had already arrived, makes every batch still unanswered pending (it
 * will be sent again, unchanged, which is safe: the broker answers DUPLICATE for what it
 * already stored), reconnects after a backoff and sends them. Anything else is fatal.
 */
static void fail_conn(struct send_state *st, bool retryable, bool reconnect)
{
	const char *why = tally_client_last_error(st->c);
	if (!retryable) {
		set_fatal(st, "%s", why);
		return;
	}
	if (!st->need_recover)
		snprintf(st->why, sizeof(st->why), "%s", why);
	st->need_recover = true;
	st->reconnect |= reconnect;
}

/* A client call failed with rc: decide whether retrying can help. */
static void on_client_error(struct send_state *st, int rc)
{
	uint16_t code = tally_client_last_server_error(st->c);
	bool retryable;
	if (rc == TALLY_CLIENT_E_SERVER || (rc == TALLY_CLIENT_E_BROKEN && code))
		retryable = proto_error_retryable(code);
	else
		retryable = rc != TALLY_CLIENT_E_PROTOCOL && rc != -ENOMEM && rc != -EINVAL;
	fail_conn(st, retryable, true);
}

static struct send_batch *find_slot(struct send_state *st, uint64_t request_id)
{
	for (uint32_t i = 0; i < st->slot_count; i++)
		if (st->slots[i].used && st->slots[i].request_id == request_id)
			return &st->slots[i];
	return NULL;
}

static void slot_free(struct send_batch *s)
{
	s->used = false;
	s->pending = false;
	s->request_id = 0;
	s->count = 0;
	s->bodies_len = 0;
}

/* Marks every event of a batch as without receipt, with the reason, and frees the slot. */
static void slot_unacked(struct send_state *st, struct send_batch *s, const char *why)
{
	for (uint32_t i = 0; i < s->count; i++)
		add_problem(st, s->lines[i], SEND_UNACKED, 0, "%s", why);
	st->unacked += s->count;
	slot_free(s);
}

/* Accounts for one reply. Returns 0, or -1 when it reports a failure (need_recover/fatal). */
static int account_reply(struct send_state *st, const struct tally_client_reply *rp)
{
	const struct tally_client_reply r = *rp;
	if (r.kind == TALLY_CLIENT_REPLY_ACK) {
		struct send_batch *s = find_slot(st, r.request_id);
		if (!s) /* the client matched it to a batch we sent: cannot happen */
			return 0;
		for (uint32_t i = 0; i < r.receipt_count && i < s->count; i++) {
			const struct proto_receipt *p = &r.receipts[i];
			switch (p->status) {
			case PROTO_ACCEPTED:
				st->accepted++;
				break;
			case PROTO_DUPLICATE:
				st->duplicate++;
				break;
			case PROTO_CONFLICT:
				st->conflict++;
				add_problem(st, s->lines[i], SEND_CONFLICT, 0, NULL);
				if (st->nproblems && st->problems[st->nproblems - 1].line == s->lines[i]) {
					st->problems[st->nproblems - 1].shard = p->shard;
					st->problems[st->nproblems - 1].offset = p->offset;
				}
				break;
			default:
				st->rejected++;
				add_problem(st, s->lines[i], SEND_REJECTED, p->reason, NULL);
				break;
			}
		}
		slot_free(s);
		/* Progress: the retry budget is for failures in a row. */
		st->retries_left = st->retries_max;
		st->backoff_ms = SEND_BACKOFF_MS_FIRST;
		return 0;
	}
	if (r.kind == TALLY_CLIENT_REPLY_ERROR) {
		bool retryable = proto_error_retryable(r.error_code);
		struct send_batch *s = r.request_id ? find_slot(st, r.request_id) : NULL;
		if (r.fatal) {
			fail_conn(st, retryable, true);
			return -1;
		}
		if (s && retryable) {
			/* The batch was not stored: send it again after a pause, same connection. */
			s->request_id = 0;
			s->pending = true;
			fail_conn(st, true, false);
			return -1;
		}
		if (s)
			slot_unacked(st, s, tally_client_last_error(st->c));
	}
	return 0;
}

/*
 * Waits up to timeout_ms for one reply and accounts for it. Returns 0, 1 if nothing came in
 * time (only when timeout_ms is not the I/O timeout), or -1 when the connection or a batch
 * failed (need_recover or fatal is then set).
 */
static int take_reply(struct send_state *st, int timeout_ms)
{
	struct tally_client_reply r;
	int rc = tally_client_recv(st->c, timeout_ms, &r);
	if (rc == -ETIMEDOUT && timeout_ms != st->io_timeout_ms)
		return 1;
	if (rc < 0) {
		on_client_error(st, rc);
		return -1;
	}
	return account_reply(st, &r);
}

/* After a failure: the replies that had arrived whole still count (the client hands them
 * out even when broken). */
static void drain_arrived(struct send_state *st)
{
	struct tally_client_reply r;
	while (st->c && tally_client_inflight(st->c) > 0 && tally_client_recv(st->c, 0, &r) == 0)
		(void)account_reply(st, &r);
}

/* Sends (or sends again) a batch kept in a slot. 0, or -1 (need_recover or fatal set). */
static int send_slot(struct send_state *st, struct send_batch *s)
{
	int rc;
	while ((rc = tally_client_batch_begin(st->c)) == TALLY_CLIENT_E_INFLIGHT)
		if (take_reply(st, st->io_timeout_ms) < 0)
			return -1;
	if (rc < 0) {
		on_client_error(st, rc);
		return -1;
	}
	const uint8_t *p = s->bodies, *end = s->bodies + s->bodies_len;
	while (p < end) {
		size_t len = (size_t)p[0] | (size_t)p[1] << 8;
		rc = tally_client_batch_add_raw(st->c, p + 2, len);
		if (rc < 0) {
			/* Only after a reconnect to a server with smaller limits. */
			set_fatal(st, "the server's limits shrank after reconnecting: %s",
				  tally_client_last_error(st->c));
			return -1;
		}
		p += 2 + len;
	}
	uint64_t id;
	rc = tally_client_batch_send(st->c, &id);
	if (rc < 0) {
		on_client_error(st, rc);
		return -1;
	}
	s->request_id = id;
	s->pending = false;
	if (!s->sent_once) {
		s->sent_once = true;
		st->sent += s->count;
	}
	return 0;
}

/*
 * Moves the batch being built into a free slot and sends it. Returns 0, or -1 (need_recover
 * or fatal set); the events are then safe in the slot (pending) or still in cur.
 */
static int flush_cur(struct send_state *st)
{
	if (st->cur.count == 0)
		return 0;
	struct send_batch *s = NULL;
	while (!s) {
		for (uint32_t i = 0; i < st->slot_count && !s; i++)
			if (!st->slots[i].used)
				s = &st->slots[i];
		if (s)
			break;
		if (tally_client_inflight(st->c) == 0) {
			set_fatal(st, "internal error: no batch slot free and none in flight");
			return -1;
		}
		if (take_reply(st, st->io_timeout_ms) < 0)
			return -1;
	}
	/* Swap buffers: the slot takes the batch, cur takes the slot's empty buffers. */
	struct send_batch tmp = *s;
	*s = st->cur;
	st->cur = tmp;
	slot_free(&st->cur);
	st->cur.sent_once = false;
	s->used = true;
	s->pending = true;
	s->sent_once = false;
	s->seq = ++st->seq;
	s->request_id = 0;
	if (send_slot(st, s) < 0)
		return -1;
	/* Take the replies that are already there, so that they do not pile up unread. */
	while (tally_client_inflight(st->c) > 0) {
		int r = take_reply(st, 0);
		if (r < 0)
			return -1;
		if (r > 0)
			break;
	}
	return 0;
}

/* Adds one encoded event (from line `line`) to the batch being built, sending as needed.
 * Returns 0; -1 if the event was not added (need_recover or fatal set: recover, call again);
 * 1 if it was added but sending the full batch failed (recover, do not add it again). */
static int add_event(struct send_state *st, uint64_t line, const uint8_t *body, size_t len)
{
	size_t frame_max = tally_client_limits(st->c)->frame_bytes_max;
	size_t overhead = PROTO_HEADER_BYTES + PROTO_BATCH_HEADER_BYTES;
	if (overhead + 2 + len > frame_max) {
		add_problem(st, line, SEND_INVALID, 0,
			    "event of %zu bytes does not fit in a frame of %zu bytes", len, frame_max);
		st->invalid++;
		return 0;
	}
	if (st->cur.count == st->batch_cap ||
	    overhead + st->cur.bodies_len + 2 + len > frame_max) {
		if (flush_cur(st) < 0)
			return -1;
	}
	struct send_batch *b = &st->cur;
	if (b->bodies_len + 2 + len > b->bodies_cap) {
		size_t cap = frame_max;
		uint8_t *nb = realloc(b->bodies, cap);
		if (!nb) {
			set_fatal(st, "out of memory");
			return -1;
		}
		b->bodies = nb;
		b->bodies_cap = cap;
	}
	b->bodies[b->bodies_len] = (uint8_t)len;
	b->bodies[b->bodies_len + 1] = (uint8_t)(len >> 8);
	memcpy(b->bodies + b->bodies_len + 2, body, len);
	b->bodies_len += 2 + len;
	b->lines[b->count++] = line;
	/* A full batch goes at once (with --batch 1, every line as soon as it is read). */
	if (b->count == st->batch_cap && flush_cur(st) < 0)
		return 1;
	return 0;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/*
 * Recovers from a retryable failure: waits (backoff doubling from 200 ms to 5 s), reconnects
 * if needed, and sends the pending batches again in their original order. Returns 0 when
 * the run can go on, -1 when it cannot (fatal set: retries exhausted or not retryable).
 */
static int recover(struct send_state *st)
{
	while (!st->fatal[0] && st->need_recover) {
		if (st->reconnect)
			drain_arrived(st); /* the replies that arrived before the failure count */
		if (st->fatal[0])
			break;
		if (st->retries_left == 0) {
			set_fatal(st, "%s (no retries left)", st->why);
			return -1;
		}
		st->retries_left--;
		fprintf(stderr, "tally send: %s; retrying in %d ms (%u retries left)\n", st->why,
			st->backoff_ms, st->retries_left);
		sleep_ms(st->backoff_ms);
		st->backoff_ms = st->backoff_ms * 2 > 5000 ? 5000 : st->backoff_ms * 2;
		st->need_recover = false;
		if (st->reconnect) {
			/* Whatever is still unanswered is sent again on the new connection. */
			for (uint32_t i = 0; i < st->slot_count; i++)
				if (st->slots[i].used && st->slots[i].request_id) {
					st->slots[i].request_id = 0;
					st->slots[i].pending = true;
				}
			tally_client_close(st->c);
			st->c = NULL;
			int rc = tally_client_connect(st->opts, &st->c);
			if (rc < 0) {
				on_client_error(st, rc);
				continue;
			}
			st->reconnect = false;
			st->reconnects++;
		}
		/* Oldest first, so that the broker sees the events in input order again. */
		for (;;) {
			struct send_batch *next = NULL;
			for (uint32_t i = 0; i < st->slot_count; i++)
				if (st->slots[i].used && st->slots[i].pending &&
				    (!next || st->slots[i].seq < next->seq))
					next = &st->slots[i];
			if (!next || send_slot(st, next) < 0)
				break;
		}
	}
	return st->fatal[0] ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: tally send [options] [FILE]\n"
		"\n"
		"Sends usage events, one JSON object per line, from FILE (or stdin when FILE is\n"
		"absent or \"-\") to a tallyd, and prints what happened to each: accepted,\n"
		"duplicate (already stored, same content), conflict (same event_id, different\n"
		"content: the first stands), rejected (with the reason), or invalid (the line\n"
		"could not be read; reported with its number, the other lines still go).\n"
		"\n"
		"A line:\n"
		"  {\"event_id\": \"req-81723\", \"customer_id\": \"cus_42\", \"event_name\": \"llm.tokens\",\n"
		"   \"timestamp\": \"2026-03-01T12:00:00.250+01:00\",\n"
		"   \"metadata\": {\"tokens\": 1234, \"gpu_s\": \"0.25\", \"model\": \"small\"}}\n"
		"  event_id (or idempotency_key), customer_id, event_name: strings\n"
		"  timestamp: RFC 3339, or timestamp_us: integer microseconds since the epoch\n"
		"  metadata (or properties): integers -> INT, \"0.25\"-like strings and JSON\n"
		"  numbers with a fraction -> exact DECIMAL (<= 18 digits after the point),\n"
		"  other strings -> STRING. Unknown fields make the line invalid.\n"
		"\n"
		"options:\n"
		"  --connect HOST:PORT  tallyd address (default 127.0.0.1:7878)\n"
		"  --api-key KEY        API key (default: $TALLY_API_KEY)\n"
		"  --batch N            events per batch (default 500; at most the server's limit)\n"
		"  --timeout MS         connect and I/O timeout in ms (default 30000)\n"
		"  --retries N          after a lost connection or a retryable server error,\n"
		"                       reconnect and resend what has no receipt; give up after N\n"
		"                       failures in a row (default 3; backoff 200 ms doubling to\n"
		"                       5 s; 0 = never retry)\n"
		"  --quiet              print only the summary line\n"
		"  --json               print the summary as one JSON object\n"
		"  --help               this text\n"
		"\n"
		"exit status: 0 all accepted or duplicate; 1 some conflict, rejected or invalid;\n"
		"2 usage or connection error, retries exhausted (events reported \"unacked\" may\n"
		"or may not be stored: sending the same lines again is safe, duplicates are\n"
		"recognised).\n");
}

/*
 * Reads lines from a descriptor with a timeout, so that a quiet stream (e.g. `tail -f x |
 * tally send`) does not hold a partial batch forever. The buffer holds one line of at most
 * SEND_LINE_BYTES_MAX bytes plus what was read past it; a longer line is skipped to its end.
 */
struct send_reader {
	int fd;
	char *buf;
	size_t cap;
	size_t start; /* unconsumed bytes are buf[start, end) */
	size_t end;
	bool eof;
	bool skipping; /* inside an over-long line */
	int err;       /* errno of a failed read */
};

enum { READ_LINE = 1, READ_LONG = 2, READ_IDLE = 3, READ_EOF = 0, READ_ERROR = -1 };

/*
 * Next line (without its newline, '\r' stripped) into *line and *len, valid until the next
 * call.
 * Returns READ_LINE; READ_LONG (a line over the limit was skipped); READ_IDLE if no complete
 * line came within timeout_ms; READ_EOF; READ_ERROR (err set).
 */
static int reader_next(struct send_reader *r, int timeout_ms, char **line, size_t *len)
{
	for (;;) {
		char *nl = r->end > r->start ? memchr(r->buf + r->start, '\n', r->end - r->start) : NULL;
		if (nl || (r->eof && r->end > r->start)) {
			size_t n = nl ? (size_t)(nl - (r->buf + r->start)) : r->end - r->start;
			char *p = r->buf + r->start;
			r->start += n + (nl ? 1 : 0);
			if (r->skipping) {
				r->skipping = false;
				continue; /* the tail of an over-long line */
			}
			if (n > SEND_LINE_BYTES_MAX)
				return READ_LONG;
			if (n && p[n - 1] == '\r')
				n--;
			*line = p;
			*len = n;
			return READ_LINE;
		}
		if (r->eof)
			return READ_EOF;
		/* Make room: move the partial line to the front. */
		if (r->start > 0) {
			memmove(r->buf, r->buf + r->start, r->end - r->start);
			r->end -= r->start;
			r->start = 0;
		}
		if (r->end - r->start > SEND_LINE_BYTES_MAX) {
			bool report = !r->skipping;
			r->skipping = true;
			r->start = r->end = 0;
			if (report)
				return READ_LONG;
		}
		struct pollfd pf = {.fd = r->fd, .events = POLLIN};
		int pr = poll(&pf, 1, timeout_ms);
		if (pr < 0 && errno != EINTR) {
			r->err = errno;
			return READ_ERROR;
		}
		if (pr == 0)
			return READ_IDLE;
		ssize_t got = read(r->fd, r->buf + r->end, r->cap - r->end);
		if (got < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			r->err = errno;
			return READ_ERROR;
		}
		if (got == 0)
			r->eof = true;
		r->end += (size_t)got;
	}
}

static void process_line(struct send_state *st, uint64_t lineno, char *line, size_t n,
			 char *marked, uint8_t *body)
{
	char err[SEND_MSG_BYTES_MAX];
	size_t ws = 0;
	while (ws < n && (line[ws] == ' ' || line[ws] == '\t'))
		ws++;
	if (ws == n)
		return; /* blank lines are skipped */
	size_t mn = mark_reals(line, n, marked);
	json_error_t je;
	json_t *root = json_loadb(marked, mn, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
	if (!root) {
		add_problem(st, lineno, SEND_INVALID, 0, "malformed JSON: %s", je.text);
		st->invalid++;
		return;
	}
	struct send_event ev;
	if (line_to_event(root, &ev, err, sizeof(err)) < 0) {
		add_problem(st, lineno, SEND_INVALID, 0, "%s", err);
		st->invalid++;
		json_decref(root);
		return;
	}
	size_t len = 0;
	enum tally_reject rj = encode_body(&ev.in, body, TALLY_EVENT_BYTES_MAX, &len);
	json_decref(root);
	if (rj != TALLY_REJECT_NONE) {
		add_problem(st, lineno, SEND_REJECTED, (uint8_t)rj, NULL);
		st->rejected++;
		return;
	}
	int rc;
	while ((rc = add_event(st, lineno, body, len)) < 0)
		if (recover(st) < 0)
			return;
	if (rc > 0)
		(void)recover(st);
}

int tally_cmd_send(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"connect", required_argument, NULL, 'c'}, {"api-key", required_argument, NULL, 'k'},
		{"batch", required_argument, NULL, 'b'},   {"timeout", required_argument, NULL, 't'},
		{"quiet", no_argument, NULL, 'q'},          {"json", no_argument, NULL, 'j'},
		{"retries", required_argument, NULL, 'r'},  {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	char host[256] = "127.0.0.1";
	uint16_t port = TALLY_CLIENT_PORT_DEFAULT;
	const char *api_key = getenv("TALLY_API_KEY");
	unsigned long batch = SEND_BATCH_DEFAULT;
	long timeout_ms = TALLY_CLIENT_IO_TIMEOUT_MS;
	struct send_state st = {0};
	unsigned long retries = SEND_RETRIES_DEFAULT;
	int opt;
	char *end;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "c:k:b:t:r:qjh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			if (tally_cli_parse_connect(optarg, host, sizeof(host), &port) < 0) {
				fprintf(stderr, "tally send: --connect wants HOST:PORT, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case 'k':
			api_key = optarg;
			break;
		case 'b':
			errno = 0;
			batch = strtoul(optarg, &end, 10);
			if (errno || *end || batch == 0 || batch > PROTO_BATCH_EVENTS_MAX) {
				fprintf(stderr, "tally send: --batch wants 1..%u, got \"%s\"\n",
					PROTO_BATCH_EVENTS_MAX, optarg);
				return 2;
			}
			break;
		case 't':
			errno = 0;
			timeout_ms = strtol(optarg, &end, 10);
			if (errno || *end || timeout_ms <= 0 || timeout_ms > 3600000) {
				fprintf(stderr, "tally send: --timeout wants 1..3600000 ms, got \"%s\"\n",
					optarg);
				return 2;
			}
			break;
		case 'r':
			errno = 0;
			retries = strtoul(optarg, &end, 10);
			if (errno || *end || retries > 100) {
				fprintf(stderr, "tally send: --retries wants 0..100, got \"%s\"\n", optarg);
				return 2;
			}
			break;
		case 'q':
			st.quiet = true;
			break;
		case 'j':
			st.json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (argc - optind > 1) {
		fprintf(stderr, "tally send: one FILE at most\n");
		usage(stderr);
		return 2;
	}
	struct send_reader rd = {.fd = 0};
	const char *path = argc - optind == 1 ? argv[optind] : "-";
	if (strcmp(path, "-")) {
		rd.fd = open(path, O_RDONLY | O_CLOEXEC);
		if (rd.fd < 0) {
			fprintf(stderr, "tally send: cannot open %s: %s\n", path, strerror(errno));
			return 2;
		}
	}

	struct tally_client_options o = {
		.host = host,
		.port = port,
		.api_key = api_key,
		.client_name = "tally-send",
		.connect_timeout_ms = (int)timeout_ms,
		.io_timeout_ms = (int)timeout_ms,
		.inflight_max = SEND_INFLIGHT_MAX,
	};
	st.opts = &o;
	st.retries_max = (unsigned)retries;
	st.retries_left = (unsigned)retries;
	st.backoff_ms = SEND_BACKOFF_MS_FIRST;
	int status = 2;
	char *marked = NULL;
	uint8_t *body = NULL;
	int rc = tally_client_connect(&o, &st.c);
	if (rc < 0) {
		fprintf(stderr, "tally send: %s\n", tally_client_last_error(st.c));
		goto out_close;
	}
	st.io_timeout_ms = (int)timeout_ms;
	const struct tally_client_limits *lim = tally_client_limits(st.c);
	st.batch_cap = batch < lim->batch_events_max ? (uint32_t)batch : lim->batch_events_max;
	st.slot_count = lim->inflight_max;
	st.cur.lines = calloc(st.batch_cap, sizeof(*st.cur.lines));
	st.slots = calloc(st.slot_count, sizeof(*st.slots));
	body = malloc(TALLY_EVENT_BYTES_MAX);
	if (!st.cur.lines || !st.slots || !body)
		goto out_nomem;
	for (uint32_t i = 0; i < st.slot_count; i++) {
		st.slots[i].lines = calloc(st.batch_cap, sizeof(*st.slots[i].lines));
		if (!st.slots[i].lines)
			goto out_nomem;
	}

	rd.cap = SEND_LINE_BYTES_MAX + 65536;
	rd.buf = malloc(rd.cap);
	marked = malloc(4 * (size_t)SEND_LINE_BYTES_MAX + 16);
	if (!rd.buf || !marked)
		goto out_nomem;
	while (!st.fatal[0]) {
		char *line;
		size_t len;
		int r = reader_next(&rd, SEND_IDLE_FLUSH_MS, &line, &len);
		if (r == READ_EOF)
			break;
		if (r == READ_ERROR) {
			set_fatal(&st, "reading %s: %s", path, strerror(rd.err));
			break;
		}
		if (r == READ_IDLE) {
			/* The input is quiet: send what is waiting, take what has arrived. */
			while (!st.fatal[0] && flush_cur(&st) < 0)
				if (recover(&st) < 0)
					break;
			continue;
		}
		st.nlines++;
		if (r == READ_LONG) {
			add_problem(&st, st.nlines, SEND_INVALID, 0, "line longer than %u bytes",
				    SEND_LINE_BYTES_MAX);
			st.invalid++;
			continue;
		}
		process_line(&st, st.nlines, line, len, marked, body);
	}
	/* The last partial batch, then every receipt (recovering as long as retries allow). */
	while (!st.fatal[0] && flush_cur(&st) < 0)
		if (recover(&st) < 0)
			break;
	while (!st.fatal[0] && tally_client_inflight(st.c) > 0)
		if (take_reply(&st, st.io_timeout_ms) < 0 && recover(&st) < 0)
			break;
	if (st.fatal[0])
		drain_arrived(&st);
	/* Whatever is still kept has no receipt: its fate is unknown (or it was never sent). */
	for (uint32_t i = 0; i < st.slot_count; i++)
		if (st.slots[i].used)
			slot_unacked(&st, &st.slots[i],
				     st.slots[i].sent_once ? "no receipt: the connection failed before the ACK"
							   : "not sent: the connection failed");
	for (uint32_t i = 0; i < st.cur.count; i++)
		add_problem(&st, st.cur.lines[i], SEND_UNACKED, 0, "not sent: the connection failed");
	st.unacked += st.cur.count;

	print_summary(&st);
	if (st.fatal[0]) {
		fprintf(stderr, "tally send: %s\n", st.fatal);
		if (!rd.eof)
			fprintf(stderr, "tally send: stopped after line %llu (later lines, if any, were "
					"not sent)\n",
				(unsigned long long)st.nlines);
		if (st.unacked)
			fprintf(stderr,
				"tally send: %llu events have no receipt; sending the same lines again "
				"is safe (duplicates are recognised)\n",
				(unsigned long long)st.unacked);
		status = 2;
	} else if (st.unacked) {
		status = 2;
	} else {
		status = st.conflict || st.rejected || st.invalid ? 1 : 0;
	}
	goto out_close;

out_nomem:
	fprintf(stderr, "tally send: out of memory\n");
	status = 2;
out_close:
	tally_client_close(st.c);
	if (rd.fd > 0)
		close(rd.fd);
	free(rd.buf);
	free(marked);
	free(body);
	if (st.slots)
		for (uint32_t i = 0; i < st.slot_count; i++) {
			free(st.slots[i].lines);
			free(st.slots[i].bodies);
		}
	free(st.slots);
	free(st.cur.lines);
	free(st.cur.bodies);
	for (size_t i = 0; i < st.nproblems; i++)
		free(st.problems[i].msg);
	free(st.problems);
	return status;
}
