/*
 * rate_ckpt.c — the engine's state checkpoint: everything needed to resume rating exactly
 * where it stopped (open and closed aggregates, pending adjustments, credit balances, the
 * late and unbilled reports, shard ingest times) together with the caller's WAL positions,
 * in one file written atomically. Format: docs/rating.md "State checkpoint".
 *
 * Why one file: the positions and the aggregates must move together; resuming from positions
 * newer than the aggregates would skip events, older ones would count them twice.
 * Loading checks the trailing XXH3-64 over the whole file before any byte is used, then every
 * count against its named maximum. Single-threaded, like the engine.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "rate_internal.h"
#include "tally/rate.h"

#define CKPT_MAGIC   "TLYRATE1"
#define CKPT_VERSION 1u
#define CKPT_BYTES_MAX (1ull << 34) /* 16 GiB: refuse anything larger */

struct wbuf {
	uint8_t *p;
	size_t len, cap;
	int err;
};

static void put(struct wbuf *w, const void *src, size_t n)
{
	if (w->err)
		return;
	if (w->len + n > w->cap) {
		size_t ncap = w->cap ? w->cap : 65536;
		while (ncap < w->len + n)
			ncap *= 2;
		uint8_t *np = realloc(w->p, ncap);
		if (!np) {
			w->err = -ENOMEM;
			return;
		}
		w->p = np;
		w->cap = ncap;
	}
	memcpy(w->p + w->len, src, n);
	w->len += n;
}

static void put_u64(struct wbuf *w, uint64_t v)
{
	uint8_t b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put(w, b, 8);
}

static void put_u32(struct wbuf *w, uint32_t v)
{
	uint8_t b[4];
	for (int i = 0; i < 4; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	put(w, b, 4);
}

static void put_u8(struct wbuf *w, uint8_t v)
{
	put(w, &v, 1);
}

static void put_i128(struct wbuf *w, rate_i128 v)
{
	unsigned __int128 u = (unsigned __int128)v;
	put_u64(w, (uint64_t)u);
	put_u64(w, (uint64_t)(u >> 64));
}

struct rbuf {
	const uint8_t *p;
	size_t len, pos;
	bool bad;
};

static const uint8_t *take(struct rbuf *r, size_t n)
{
	if (r->bad || r->len - r->pos < n) {
		r->bad = true;
		return NULL;
	}
	const uint8_t *q = r->p + r->pos;
	r->pos += n;
	return q;
}

static uint64_t get_u64(struct rbuf *r)
{
	const uint8_t *b = take(r, 8);
	uint64_t v = 0;
	for (int i = 0; b && i < 8; i++)
		v |= (uint64_t)b[i] << (8 * i);
	return v;
}

static uint32_t get_u32(struct rbuf *r)
{
	const uint8_t *b = take(r, 4);
	uint32_t v = 0;
	for (int i = 0; b && i < 4; i++)
		v |= (uint32_t)b[i] << (8 * i);
	return v;
}

static uint8_t get_u8(struct rbuf *r)
{
	const uint8_t *b = take(r, 1);
	return b ? *b : 0;
}

static rate_i128 get_i128(struct rbuf *r)
{
	uint64_t lo = get_u64(r), hi = get_u64(r);
	return (rate_i128)(((unsigned __int128)hi << 64) | lo);
}

/* ---- save ---- */

static void put_aggs(struct wbuf *w, const struct rate_engine *e, char *slots)
{
	for (uint32_t m = 0; m < e->cfg->nmeters; m++) {
		const struct rate_agg *a = rate_agg_at(e, slots, m);
		put_i128(w, a->value);
		put_u64(w, (uint64_t)a->last_time_us);
		put_u64(w, a->last_offset);
		put_u32(w, a->last_shard);
		put_u32(w, a->flags);
		put_u64(w, a->count);
		put_u64(w, a->digest);
		uint32_t n = a->uset ? a->uset->count : 0;
		put_u32(w, n);
		if (a->uset)
			for (uint32_t i = 0; i < a->uset->cap; i++)
				if (a->uset->slots[i])
					put_u64(w, a->uset->slots[i]);
	}
	for (uint32_t m = 0; m < e->cfg->nmeters; m++)
		for (uint32_t s = 0; s < e->nshards; s++) {
			put_u64(w, rate_ranges_at(e, slots, m)[s].first);
			put_u64(w, rate_ranges_at(e, slots, m)[s].last);
		}
}

int rate_engine_save(struct rate_engine *e, const uint64_t *positions, uint32_t n,
		     const char *path)
{
	if (n != e->nshards)
		return -EINVAL;
	struct wbuf w = {0};
	put(&w, CKPT_MAGIC, 8);
	put_u32(&w, CKPT_VERSION);
	put_u32(&w, e->nshards);
	put_u32(&w, e->cfg->nmeters);
	for (uint32_t s = 0; s < e->nshards; s++) {
		put_u64(&w, positions[s]);
		put_u64(&w, (uint64_t)e->shard_latest[s]);
	}
	put_u64(&w, (uint64_t)e->watermark);
	const uint64_t *st = (const uint64_t *)&e->stats;
	for (size_t i = 0; i < sizeof e->stats / sizeof(uint64_t); i++)
		put_u64(&w, st[i]);
	put_u32(&w, e->ncusts);
	for (uint32_t k = 0; k < e->ncusts; k++) {
		const struct rate_cust *c = e->custs[k];
		put_u8(&w, (uint8_t)c->id_len);
		put(&w, c->id, c->id_len);
		put_u64(&w, (uint64_t)c->closed_through);
		put_u8(&w, c->started);
		uint32_t nc = c->cfg ? c->cfg->ncredits : 0;
		put_u32(&w, nc);
		for (uint32_t i = 0; i < nc; i++)
			put_i128(&w, c->credit_left[i]);
		put_u64(&w, c->unbilled_count);
		put_u64(&w, c->unbilled_digest);
		put_u64(&w, (uint64_t)c->unbilled_first_us);
		put_u64(&w, (uint64_t)c->unbilled_last_us);
		put_u8(&w, c->has_records);
		put_u64(&w, (uint64_t)c->lo);
		put_u32(&w, c->has_records ? c->nords : 0);
		for (uint32_t i = 0; c->has_records && i < c->nords; i++) {
			const struct rate_cperiod *cp = c->ords[i];
			put_u8(&w, cp != NULL);
			if (!cp)
				continue;
			put_u8(&w, cp->closed);
			put_u8(&w, cp->ontime);
			put_aggs(&w, e, cp->slots);
			put_u32(&w, cp->nadj);
			for (uint32_t a = 0; a < cp->nadj; a++) {
				put_u64(&w, (uint64_t)cp->adj[a].src_ord);
				put_aggs(&w, e, cp->adj[a].slots);
			}
		}
	}
	put_u64(&w, e->nlate);
	for (size_t i = 0; i < e->nlate; i++) {
		const struct rate_late *l = &e->late[i];
		put_u32(&w, l->cust);
		put_u32(&w, l->shard);
		put_u64(&w, l->offset);
		put_u64(&w, (uint64_t)l->event_time_us);
		put_u64(&w, (uint64_t)l->ingest_time_us);
		put_u64(&w, (uint64_t)l->src_ord);
		put_u64(&w, (uint64_t)l->target_ord);
		put_u64(&w, l->meters);
		put_u64(&w, l->fp.lo);
		put_u64(&w, l->fp.hi);
	}
	if (!w.err)
		put_u64(&w, XXH3_64bits(w.p, w.len));
	int rc = w.err ? w.err : rate_write_atomic(path, w.p, w.len, !e->opts.no_fsync);
	free(w.p);
	return rc;
}

/* ---- load ---- */

static int get_aggs(struct rbuf *r, struct rate_engine *e, char *slots)
{
	for (uint32_t m = 0; m < e->cfg->nmeters; m++) {
		struct rate_agg *a = rate_agg_at(e, slots, m);
		a->value = get_i128(r);
		a->last_time_us = (int64_t)get_u64(r);
		a->last_offset = get_u64(r);
		a->last_shard = get_u32(r);
		a->flags = get_u32(r);
		a->count = get_u64(r);
		a->digest = get_u64(r);
		uint32_t n = get_u32(r);
		if (r->bad || n > RATE_UNIQUE_MAX || (n && e->cfg->meters[m].agg != RATE_AGG_UNIQUE) ||
		    a->last_shard >= e->nshards)
			return -EBADMSG;
		for (uint32_t i = 0; i < n; i++) {
			uint64_t h = get_u64(r);
			if (r->bad || h == 0)
				return -EBADMSG;
			int rc = rate_uset_add(&a->uset, h);
			if (rc < 0)
				return rc == -ENOSPC ? -EBADMSG : rc;
		}
	}
	for (uint32_t m = 0; m < e->cfg->nmeters; m++)
		for (uint32_t s = 0; s < e->nshards; s++) {
			rate_ranges_at(e, slots, m)[s].first = get_u64(r);
			rate_ranges_at(e, slots, m)[s].last = get_u64(r);
		}
	return r->bad ? -EBADMSG : 0;
}

static int read_file(const char *path, uint8_t **out, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat sb;
	int rc = 0;
	if (fstat(fd, &sb) != 0) {
		rc = -errno;
		goto out_close;
	}
	if ((uint64_t)sb.st_size > CKPT_BYTES_MAX || sb.st_size < 8) {
		rc = -EBADMSG;
		goto out_close;
	}
	uint8_t *buf = malloc((size_t)sb.st_size);
	if (!buf) {
		rc = -ENOMEM;
		goto out_close;
	}
	size_t got = 0;
	while (got < (size_t)sb.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)sb.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n < 0 ? -errno : -EBADMSG;
			free(buf);
			goto out_close;
		}
		got += (size_t)n;
	}
	*out = buf;
	*len = got;
out_close:
	close(fd);
	return rc;
}

int rate_engine_load(struct rate_engine *e, uint64_t *positions, uint32_t n, const char *path)
{
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = read_file(path, &buf, &len);
	if (rc != 0)
		return rc;
	struct rbuf r = {.p = buf, .len = len - 8};
	struct rbuf tail = {.p = buf + len - 8, .len = 8};
	if (get_u64(&tail) != XXH3_64bits(buf, len - 8)) {
		rc = -EBADMSG;
		goto out;
	}
	const uint8_t *magic = take(&r, 8);
	if (!magic || memcmp(magic, CKPT_MAGIC, 8) != 0 || get_u32(&r) != CKPT_VERSION) {
		rc = -EBADMSG;
		goto out;
	}
	if (get_u32(&r) != e->nshards || n != e->nshards || get_u32(&r) != e->cfg->nmeters) {
		rc = -EINVAL; /* a different WAL or meter list: this state does not apply */
		goto out;
	}
	if (e->ncusts != e->cfg->ncustomers || e->stats.events != 0) {
		rc = -EINVAL; /* only into a fresh engine */
		goto out;
	}
	for (uint32_t s = 0; s < e->nshards; s++) {
		positions[s] = get_u64(&r);
		e->shard_latest[s] = (int64_t)get_u64(&r);
	}
	e->watermark = (int64_t)get_u64(&r);
	uint64_t *st = (uint64_t *)&e->stats;
	for (size_t i = 0; i < sizeof e->stats / sizeof(uint64_t); i++)
		st[i] = get_u64(&r);
	uint32_t ncusts = get_u32(&r);
	if (r.bad || ncusts > RATE_CUSTOMERS_MAX) {
		rc = -EBADMSG;
		goto out;
	}
	uint32_t *map = calloc(ncusts + 1, sizeof *map); /* saved index -> engine index */
	if (!map) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint32_t k = 0; k < ncusts && rc == 0; k++) {
		uint8_t idl = get_u8(&r);
		const uint8_t *id = take(&r, idl);
		if (r.bad || idl == 0 || idl > TALLY_CUSTOMER_BYTES_MAX) {
			rc = -EBADMSG;
			break;
		}
		struct rate_cust *c = NULL;
		for (uint32_t i = 0; i < e->ncusts && !c; i++)
			if (e->custs[i]->id_len == idl && memcmp(e->custs[i]->id, id, idl) == 0)
				c = e->custs[i];
		if (!c && (rc = rate_cust_add(e, id, idl, NULL, &c)) != 0)
			break;
		map[k] = c->index;
		c->closed_through = (int64_t)get_u64(&r);
		c->started = get_u8(&r) != 0;
		uint32_t nc = get_u32(&r);
		if (nc > RATE_CREDITS_MAX) {
			rc = -EBADMSG;
			break;
		}
		for (uint32_t i = 0; i < nc; i++) {
			rate_i128 left = get_i128(&r);
			/* Credits added to the config since keep their configured amount. */
			if (c->cfg && i < c->cfg->ncredits)
				c->credit_left[i] = left;
		}
		c->unbilled_count = get_u64(&r);
		c->unbilled_digest = get_u64(&r);
		c->unbilled_first_us = (int64_t)get_u64(&r);
		c->unbilled_last_us = (int64_t)get_u64(&r);
		bool has = get_u8(&r) != 0;
		int64_t lo = (int64_t)get_u64(&r);
		uint32_t nords = get_u32(&r);
		if (r.bad || nords > RATE_PERIODS_SPAN_MAX || (has && nords == 0) ||
		    lo < INT64_MIN / 8 || lo > INT64_MAX / 8) {
			rc = -EBADMSG;
			break;
		}
		int64_t ct = c->closed_through;
		for (uint32_t i = 0; i < nords && rc == 0; i++) {
			if (!get_u8(&r))
				continue;
			struct rate_cperiod *cp;
			if ((rc = rate_cperiod_get(e, c, lo + i, &cp)) != 0)
				break;
			cp->closed = get_u8(&r) != 0;
			cp->ontime = get_u8(&r) != 0;
			if ((rc = get_aggs(&r, e, cp->slots)) != 0)
				break;
			uint32_t nadj = get_u32(&r);
			if (r.bad || nadj > RATE_PERIODS_SPAN_MAX) {
				rc = -EBADMSG;
				break;
			}
			for (uint32_t a = 0; a < nadj && rc == 0; a++) {
				struct rate_adj *adj;
				int64_t src = (int64_t)get_u64(&r);
				if (r.bad || src >= lo + i || src < lo + i - RATE_PERIODS_SPAN_MAX) {
					rc = -EBADMSG;
					break;
				}
				if ((rc = rate_adj_get(e, cp, src, &adj)) == 0)
					rc = get_aggs(&r, e, adj->slots);
			}
		}
		/* rate_cperiod_get() derived closed_through from the watermark for the first
		 * record; the saved value is the truth. */
		c->closed_through = ct;
	}
	uint64_t nlate = get_u64(&r);
	if (rc == 0 && (r.bad || nlate > (len / 64))) /* each entry is 64 bytes on disk */
		rc = -EBADMSG;
	for (uint64_t i = 0; rc == 0 && i < nlate; i++) {
		struct rate_late l;
		uint32_t ci = get_u32(&r);
		l.shard = get_u32(&r);
		l.offset = get_u64(&r);
		l.event_time_us = (int64_t)get_u64(&r);
		l.ingest_time_us = (int64_t)get_u64(&r);
		l.src_ord = (int64_t)get_u64(&r);
		l.target_ord = (int64_t)get_u64(&r);
		l.meters = get_u64(&r);
		l.fp.lo = get_u64(&r);
		l.fp.hi = get_u64(&r);
		if (r.bad || ci >= ncusts || l.shard >= e->nshards) {
			rc = -EBADMSG;
			break;
		}
		l.cust = map[ci];
		if (e->nlate == e->late_cap) {
			size_t ncap = e->late_cap ? e->late_cap * 2 : 64;
			struct rate_late *nl = realloc(e->late, ncap * sizeof *nl);
			if (!nl) {
				rc = -ENOMEM;
				break;
			}
			e->late = nl;
			e->late_cap = ncap;
		}
		e->late[e->nlate++] = l;
	}
	free(map);
	if (rc == 0 && r.pos != r.len)
		rc = -EBADMSG; /* trailing bytes */
	if (rc == 0)
		rate_engine_recompute_next_close(e);
out:
	free(buf);
	return rc;
}
