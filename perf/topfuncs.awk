#!/usr/bin/awk -f
# perf/topfuncs.awk — the top functions of a folded-stack file (perf/stackcollapse.awk output):
# "self" = samples where the function is the innermost frame (where the CPU was), "total" =
# samples where it is anywhere on the stack (counted once per stack even when recursive).
# The first frame of each stack (the thread name) is skipped. -v top=N (default 25).
# Works with mawk and gawk.
{
	c = $NF
	stack = $0
	sub(/[ \t]+[0-9]+$/, "", stack)
	n = split(stack, fr, ";")
	total += c
	if (n >= 2)
		self[fr[n]] += c
	delete seen
	for (i = 2; i <= n; i++)
		if (!(fr[i] in seen)) {
			seen[fr[i]] = 1
			incl[fr[i]] += c
		}
}
END {
	if (top == "") top = 25
	if (total == 0) exit 1
	printf "%d samples\n\n%7s %7s  %s\n", total, "self%", "total%", "function (by self time)"
	# selection sort of the top entries: the lists are small (a few thousand names)
	for (k = 1; k <= top; k++) {
		best = ""; bv = -1
		for (f in self)
			if (!(f in done) && self[f] > bv) { bv = self[f]; best = f }
		if (best == "" || bv <= 0) break
		done[best] = 1
		printf "%6.2f%% %6.2f%%  %s\n", 100 * self[best] / total, 100 * incl[best] / total, best
	}
}
