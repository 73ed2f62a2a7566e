#!/usr/bin/awk -f
# perf/flamegraph.awk — renders folded stacks ("a;b;c COUNT" per line, SORTED, as written by
# perf/stackcollapse.awk | sort) into a self-contained SVG flame graph: x = share of samples,
# y = stack depth (the root at the bottom), one box per frame; hovering shows name, samples, %.
# Colours are a stable hash of the name (warm for user space, blue for kernel frames, which
# perf/stackcollapse.awk marks with "_[k]") and carry no meaning beyond telling neighbours apart.
#
# Variables (-v): title="...", width=1200 (pixels), minwidth=0.1 (pixels; narrower boxes are
# dropped). Works with mawk and gawk. Layout is the usual flame graph "flow": frames shared by
# consecutive sorted stacks are merged into one box.

function esc(s) {
	gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s); gsub(/"/, "\\&quot;", s)
	return s
}

function hash(s,   i, h) {
	h = 0
	for (i = 1; i <= length(s) && i <= 24; i++)
		h = (h * 31 + index(CHARS, substr(s, i, 1))) % 1000003
	return h
}

# closes the box of frame `name` at depth d that started at start[d] and ends at x
function close_box(d, name, xend) {
	nbox++
	bname[nbox] = name; bdepth[nbox] = d; bstart[nbox] = start[d]; bend[nbox] = xend
	if (d > maxdepth)
		maxdepth = d
}

BEGIN {
	CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:[]-"
	if (width == "") width = 1200
	if (minwidth == "") minwidth = 0.1
	if (title == "") title = "Flame graph"
	x = 0; nlast = 0; nbox = 0; maxdepth = 0
}

NF >= 2 {
	c = $NF
	stack = $0
	sub(/[ \t]+[0-9]+$/, "", stack)
	n = split(stack, fr, ";")
	# frame 0 is the root "all"
	same = 0
	while (same < n && same < nlast && fr[same + 1] == last[same + 1])
		same++
	for (d = nlast; d > same; d--)
		close_box(d, last[d], x)
	for (d = same + 1; d <= n; d++)
		start[d] = x
	for (d = 1; d <= n; d++)
		last[d] = fr[d]
	nlast = n
	x += c
}

END {
	for (d = nlast; d >= 1; d--)
		close_box(d, last[d], x)
	total = x
	if (total == 0) {
		print "flamegraph.awk: no samples" > "/dev/stderr"
		exit 1
	}
	start[0] = 0
	close_box(0, "all", total)
	fh = 16; pad = 30
	height = (maxdepth + 1) * fh + pad + 20
	scale = (width - 20) / total
	printf "<?xml version=\"1.0\" standalone=\"no\"?>\n"
	printf "<svg version=\"1.1\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" xmlns=\"http://www.w3.org/2000/svg\">\n", width, height, width, height
	printf "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#f8f8f4\"/>\n", width, height
	printf "<text x=\"%d\" y=\"20\" font-family=\"Verdana\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n", width / 2, esc(title)
	printf "<g font-family=\"Verdana\" font-size=\"11\">\n"
	for (i = 1; i <= nbox; i++) {
		w = (bend[i] - bstart[i]) * scale
		if (w < minwidth)
			continue
		bx = 10 + bstart[i] * scale
		by = height - 10 - (bdepth[i] + 1) * fh
		nm = bname[i]
		h = hash(nm)
		if (nm ~ /_\[k\]$/) {
			r = 80 + h % 60; g = 130 + h % 70; b = 200 + h % 55
		} else {
			r = 205 + h % 50; g = 80 + (h / 7) % 150; b = 30 + (h / 13) % 40
		}
		pct = 100 * (bend[i] - bstart[i]) / total
		printf "<g><title>%s (%d samples, %.2f%%)</title><rect x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\" rx=\"2\" fill=\"rgb(%d,%d,%d)\"/>", esc(nm), bend[i] - bstart[i], pct, bx, by, w, fh - 1, r, g, b
		chars = int((w - 6) / 7)
		if (chars >= 3) {
			label = nm
			if (length(label) > chars)
				label = substr(label, 1, chars - 2) ".."
			printf "<text x=\"%.1f\" y=\"%d\">%s</text>", bx + 3, by + fh - 4, esc(label)
		}
		printf "</g>\n"
	}
	printf "</g>\n</svg>\n"
}
