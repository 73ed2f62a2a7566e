/*
 * rate_invoice.c — atomic file writes for rating outputs and the plain-text rendering of an
 * invoice document (docs/rating.md "Invoices"). The rendering reads the JSON written by the
 * engine, so the text shows exactly what the invoice file says.
 *
 * Atomic write: path.tmp is written, fsync'd, renamed over path, and the directory fsync'd,
 * so a reader (or a crash) sees the old file or the new one, never a torn one. Any thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tally/rate.h"

static int mkdir_p(char *path)
{
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		int rc = mkdir(path, 0755);
		int e = errno;
		*p = '/';
		if (rc != 0 && e != EEXIST)
			return -e;
	}
	if (mkdir(path, 0755) != 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int rate_write_atomic(const char *path, const void *buf, size_t len, bool sync)
{
	char dir[4096], tmp[4200];
	int rc = 0;
	if (strlen(path) >= sizeof dir)
		return -ENAMETOOLONG;
	strcpy(dir, path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		if ((rc = mkdir_p(dir)) != 0)
			return rc;
	} else {
		strcpy(dir, slash ? "/" : ".");
	}
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	const char *p = buf;
	size_t left = len;
	while (left > 0) {
		ssize_t n = write(fd, p, left);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto out_close;
		}
		p += n;
		left -= (size_t)n;
	}
	if (sync && fsync(fd) != 0) {
		rc = -errno;
		goto out_close;
	}
	if (close(fd) != 0) {
		rc = -errno;
		unlink(tmp);
		return rc;
	}
	if (rename(tmp, path) != 0) {
		rc = -errno;
		unlink(tmp);
		return rc;
	}
	if (sync) {
		int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			return -errno;
		if (fsync(dfd) != 0)
			rc = -errno;
		close(dfd);
	}
	return rc;
out_close:
	close(fd);
	unlink(tmp);
	return rc;
}

static const char *str_of(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	return s ? s : "";
}

int rate_invoice_render_text(const char *json, size_t len, FILE *out, char *err, size_t err_cap)
{
	json_error_t jerr;
	json_t *inv = json_loadb(json, len, 0, &jerr);
	if (!inv || strcmp(str_of(inv, "format"), "tally-invoice-1") != 0) {
		snprintf(err, err_cap, "not a tally invoice (%s)", inv ? "format field" : jerr.text);
		json_decref(inv);
		return -EINVAL;
	}
	const char *cur = str_of(inv, "currency");
	fprintf(out, "Invoice  %s  plan %s\n", str_of(inv, "customer"), str_of(inv, "plan"));
	fprintf(out, "Period   %s .. %s (UTC)\n\n", str_of(inv, "period_start"),
		str_of(inv, "period_end"));
	fprintf(out, "  %-24s %20s %14s %16s\n", "line", "quantity", "free", "amount");
	fprintf(out, "  %-24s %20s %14s %12s %s\n", "base fee", "", "", str_of(inv, "base_fee"), cur);
	size_t i;
	json_t *l;
	json_array_foreach(json_object_get(inv, "lines"), i, l)
	{
		fprintf(out, "  %-24s %20s %14s %12s %s\n", str_of(l, "meter"), str_of(l, "quantity"),
			str_of(l, "free_units"), str_of(l, "amount"), cur);
		size_t k;
		json_t *t;
		json_array_foreach(json_object_get(l, "tiers"), k, t)
		{
			json_t *to = json_object_get(t, "to");
			if (json_object_get(t, "from"))
				fprintf(out, "      tier %s..%s: %s x %s = %s\n", str_of(t, "from"),
					json_is_null(to) ? "" : json_string_value(to),
					str_of(t, "quantity"), str_of(t, "unit_price"),
					str_of(t, "amount_exact"));
			else
				fprintf(out, "      %s x %s = %s\n", str_of(t, "quantity"),
					str_of(t, "unit_price"), str_of(t, "amount_exact"));
		}
		if (json_object_get(l, "error"))
			fprintf(out, "      ERROR: %s\n", str_of(l, "error"));
		json_t *pv = json_object_get(l, "provenance");
		fprintf(out, "      %lld events, digest %s\n",
			(long long)json_integer_value(json_object_get(pv, "events")),
			str_of(pv, "fingerprint_digest"));
	}
	json_array_foreach(json_object_get(inv, "adjustments"), i, l)
	{
		fprintf(out, "  %-24s %20s %14s %12s %s\n", "late adjustment", "", "",
			str_of(l, "amount"), cur);
		fprintf(out, "      %s for period %s: quantity %s -> %s%s%s\n", str_of(l, "meter"),
			str_of(l, "late_period_start"), str_of(l, "quantity_before"),
			str_of(l, "quantity_after"), json_object_get(l, "error") ? "  ERROR: " : "",
			str_of(l, "error"));
	}
	json_array_foreach(json_object_get(inv, "credits_applied"), i, l)
	fprintf(out, "  %-24s %20s %14s %11s- %s  (credit %lld, %s left)\n", "credit", "", "",
		str_of(l, "applied"), cur, (long long)json_integer_value(json_object_get(l, "credit")),
		str_of(l, "remaining"));
	fprintf(out, "\n  %-60s %12s %s\n", "TOTAL", str_of(inv, "total"), cur);
	if (json_is_true(json_object_get(inv, "errors")))
		fprintf(out, "  (this invoice has lines with errors; see above)\n");
	json_decref(inv);
	return 0;
}
