#!/usr/bin/env bash
# perf/profile-tallyd.sh — CPU profile of tallyd under a tally-bench load, as a flame graph.
#
# usage: perf/profile-tallyd.sh [BIN_DIR] [--seconds N] [--out DIR] [--freq HZ]
#                               [--callgraph dwarf|fp] [--tallyd-args "..."] [-- BENCH ARGS...]
#   BIN_DIR      Release build with tallyd and tally-bench (default build-release/bin)
#   --seconds    how long perf records (default 10); the load runs 2 s longer on each side
#   --out        where the results go (default BIN_DIR/../profile, inside the build dir)
#   --freq       samples per second per CPU (default 499)
#   --callgraph  dwarf (default: works with the stock -O2 -g build, shows inlined frames) or
#                fp (`perf record -g`: frame pointers; needs -fno-omit-frame-pointer builds)
#   --tallyd-args extra tallyd options, e.g. "--fsync interval=10" or "--sync-delay-us 2000"
#   after --      tally-bench options replacing the default load
#                 (--max --connections 4 --inflight 8 --batch 100 --dup-rate 0.1)
#
# Writes to OUT: perf.data, tallyd.folded (one line per distinct stack with its sample count),
# tallyd.svg (the flame graph: open it in a browser, hover for names and percentages),
# top.txt (functions by self and total share of samples) and bench.txt (the load's figures).
# Needs perf (Debian: linux-perf) allowed to sample (root, or perf_event_paranoid <= 1).
# docs/benchmarks.md "Profiling tallyd" explains how to read the result.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)

BIN=build-release/bin
SECONDS_REC=10
OUT=""
FREQ=499
CALLGRAPH=dwarf
TALLYD_ARGS=""
BENCH_ARGS=(--max --connections 4 --inflight 8 --batch 100 --dup-rate 0.1)
while [ $# -gt 0 ]; do
	case "$1" in
	--seconds) SECONDS_REC=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--freq) FREQ=$2; shift 2 ;;
	--callgraph) CALLGRAPH=$2; shift 2 ;;
	--tallyd-args) TALLYD_ARGS=$2; shift 2 ;;
	--help|-h) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
	--) shift; BENCH_ARGS=("$@"); break ;;
	-*) echo "profile-tallyd: unknown option $1" >&2; exit 2 ;;
	*) BIN=$1; shift ;;
	esac
done
case $CALLGRAPH in
dwarf) CG=(--call-graph dwarf,16384) ;;
fp) CG=(-g) ;;
*) echo "profile-tallyd: --callgraph dwarf|fp" >&2; exit 2 ;;
esac
for t in tallyd tally-bench; do
	[ -x "$BIN/$t" ] || { echo "profile-tallyd: $BIN/$t not found (make release)" >&2; exit 2; }
done
command -v perf >/dev/null || { echo "profile-tallyd: perf not found (apt-get install linux-perf)" >&2; exit 2; }
if ! perf record -q -o /dev/null -- true 2>/dev/null; then
	echo "profile-tallyd: perf cannot record here (run as root or lower kernel.perf_event_paranoid)" >&2
	exit 2
fi
[ -n "$OUT" ] || OUT=$BIN/../profile
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

DATA=$(mktemp -d /tmp/tally-profile.XXXXXX)
TALLYD_PID=""
BENCH_PID=""
cleanup() {
	if [ -n "$BENCH_PID" ]; then kill -TERM "$BENCH_PID" 2>/dev/null; wait "$BENCH_PID" 2>/dev/null; fi
	if [ -n "$TALLYD_PID" ]; then kill -TERM "$TALLYD_PID" 2>/dev/null; wait "$TALLYD_PID" 2>/dev/null; fi
	rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck disable=SC2086 # TALLYD_ARGS is a list of options on purpose
"$BIN/tallyd" --data "$DATA/data" --listen 127.0.0.1:0 --port-file "$DATA/port" \
	--log-level warn $TALLYD_ARGS >"$OUT/tallyd.log" 2>&1 &
TALLYD_PID=$!
for _ in $(seq 100); do [ -s "$DATA/port" ] && break; sleep 0.1; done
[ -s "$DATA/port" ] || { echo "profile-tallyd: tallyd did not start (see $OUT/tallyd.log)" >&2; exit 1; }
PORT=$(cat "$DATA/port")

"$BIN/tally-bench" --connect "127.0.0.1:$PORT" --duration $((SECONDS_REC + 4)) --quiet \
	"${BENCH_ARGS[@]}" >"$OUT/bench.txt" 2>&1 &
BENCH_PID=$!
sleep 2 # past connection set-up and the first segment's creation

echo "profile-tallyd: recording tallyd (pid $TALLYD_PID) for $SECONDS_REC s at $FREQ Hz ($CALLGRAPH)" >&2
perf record -q -F "$FREQ" "${CG[@]}" -p "$TALLYD_PID" -o "$OUT/perf.data" -- sleep "$SECONDS_REC" \
	2>"$OUT/perf-record.log"
wait "$BENCH_PID"
BENCH_RC=$?
BENCH_PID=""
kill -TERM "$TALLYD_PID"
wait "$TALLYD_PID"
TALLYD_PID=""
[ $BENCH_RC = 0 ] || echo "profile-tallyd: tally-bench exited $BENCH_RC (see $OUT/bench.txt)" >&2

perf script -i "$OUT/perf.data" -F comm,tid,period,ip,sym,dso 2>/dev/null |
	awk -f "$HERE/stackcollapse.awk" | LC_ALL=C sort >"$OUT/tallyd.folded"
[ -s "$OUT/tallyd.folded" ] || { echo "profile-tallyd: no samples recorded" >&2; exit 1; }
LOAD=$(grep -m1 throughput "$OUT/bench.txt" | sed 's/^ *//')
awk -v title="tallyd, $SECONDS_REC s under tally-bench ${BENCH_ARGS[*]} ($LOAD)" \
	-f "$HERE/flamegraph.awk" "$OUT/tallyd.folded" >"$OUT/tallyd.svg"
awk -v top=30 -f "$HERE/topfuncs.awk" "$OUT/tallyd.folded" >"$OUT/top.txt"

echo "load:         $LOAD"
echo "flame graph:  $OUT/tallyd.svg"
echo "folded:       $OUT/tallyd.folded"
echo "top:          $OUT/top.txt"
echo
head -22 "$OUT/top.txt"
