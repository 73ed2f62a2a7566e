#!/usr/bin/awk -f
# perf/stackcollapse.awk — folds `perf script -F comm,tid,period,ip,sym,dso` output into one line
# per distinct stack: "comm;outermost;...;innermost COUNT" (COUNT = number of samples), the input
# format of perf/flamegraph.awk and of the usual flame graph tools.
#
# A sample is a header line "COMM TID PERIOD" (COMM may contain spaces) followed by one line per
# frame, innermost first: "ADDR SYMBOL (DSO)"; a blank line ends it. Frames perf could not name
# ("[unknown]") are shown as "[dso]"; kernel frames get the suffix "_[k]". Offsets ("+0x1f") are dropped; inlined frames stay (perf
# prints them as separate frames at the same address), so a flame graph shows inlined callers.
# Works with mawk and gawk.

function flush(   s, i) {
	if (comm == "")
		return
	s = comm
	for (i = n; i >= 1; i--)
		s = s ";" f[i]
	count[s]++
	comm = ""
	n = 0
}

/^[^ \t]/ {
	flush()
	# header: comm may contain spaces; the last two fields are tid and period
	comm = $1
	for (i = 2; i <= NF - 2; i++)
		comm = comm "_" $i
	next
}

/^[ \t]*$/ { flush(); next }

{
	# frame: ADDR SYMBOL... (DSO)
	line = $0
	sub(/^[ \t]*[0-9a-fA-F]+[ \t]+/, "", line)
	dso = ""
	if (match(line, /\([^()]*\)$/)) {
		dso = substr(line, RSTART + 1, RLENGTH - 2)
		line = substr(line, 1, RSTART - 1)
	}
	sub(/[ \t]+$/, "", line)
	sub(/\+0x[0-9a-fA-F]+$/, "", line)
	if (line == "" || line == "[unknown]") {
		d = dso
		sub(/.*\//, "", d)
		line = "[" (d == "" ? "unknown" : d) "]"
	}
	if (dso ~ /^\[kernel/)
		line = line "_[k]" # kernel frame, as the usual flame graph tools mark them
	gsub(/;/, ":", line)
	f[++n] = line
}

END {
	flush()
	for (s in count)
		print s, count[s]
}
