#!/bin/sh
# tests/test_bench_smoke.sh — a tiny tally-bench run against a real tallyd: 20k events with
# 10 % exact resends, 2 % conflicts and 5 % late events over 2 connections, every receipt
# checked against the plan (--expect), then the WAL read back and checked against the
# receipts (--verify-wal). Exit 77 (skip) when tallyd or tally-bench is not built.
# Env: TALLY_BIN (dir with tallyd and tally-bench; default build/bin).
set -u
BIN=${TALLY_BIN:-build/bin}
if [ ! -x "$BIN/tallyd" ]; then
	echo "SKIP: $BIN/tallyd is not built"
	exit 77
fi
if [ ! -x "$BIN/tally-bench" ]; then
	echo "SKIP: $BIN/tally-bench is not built"
	exit 77
fi
DIR=$(mktemp -d /tmp/test_bench_smoke.XXXXXX)
PID=
cleanup() {
	if [ -n "$PID" ]; then
		kill "$PID" 2>/dev/null
		wait "$PID" 2>/dev/null
	fi
	rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

"$BIN/tallyd" --listen 127.0.0.1:0 --data "$DIR/data" --port-file "$DIR/port" \
	--threads 1 --shards 2 --expected-keys 65536 >"$DIR/tallyd.log" 2>&1 &
PID=$!
i=0
while [ ! -s "$DIR/port" ]; do
	i=$((i + 1))
	if [ $i -gt 100 ] || ! kill -0 "$PID" 2>/dev/null; then
		echo "FAIL: tallyd did not start"
		cat "$DIR/tallyd.log"
		exit 1
	fi
	sleep 0.1
done
PORT=$(cat "$DIR/port")

"$BIN/tally-bench" --connect "127.0.0.1:$PORT" --connections 2 --events 20000 --batch 100 \
	--dup-rate 0.1 --conflict-rate 0.02 --late-rate 0.05 --skew 600 --seed 11 \
	--quiet --expect --verify-wal "$DIR/data" >"$DIR/out" 2>&1
RC=$?
cat "$DIR/out"
if [ $RC -ne 0 ]; then
	echo "FAIL: tally-bench exited $RC"
	tail -20 "$DIR/tallyd.log"
	exit 1
fi
# The figures must be what the plan says, not just "it ran".
grep -q "20000 sent, 20000 acked" "$DIR/out" || { echo "FAIL: not every event acked"; exit 1; }
grep -q " 0 mismatches" "$DIR/out" || { echo "FAIL: receipt mismatches"; exit 1; }
grep -q "verify-wal: ok" "$DIR/out" || { echo "FAIL: WAL check"; exit 1; }
grep -q "REJECTED 0" "$DIR/out" || { echo "FAIL: rejected events"; exit 1; }

# Open loop with --progress: each second's line carries that second's ack latency (p99 and
# max). Its figures must be consistent with the run's own: a line's p99 is at most its max,
# and no second's max exceeds the whole run's max (no warm-up, so every ACK is measured).
"$BIN/tally-bench" --connect "127.0.0.1:$PORT" --connections 2 --rate 20000 --duration 3 \
	--warmup 0 --batch 100 --seed 12 --progress >"$DIR/out2" 2>"$DIR/err2"
RC=$?
cat "$DIR/err2" "$DIR/out2"
[ $RC -eq 0 ] || { echo "FAIL: open-loop tally-bench exited $RC"; exit 1; }
to_us() { awk -v v="$1" -v u="$2" 'BEGIN { if (u == "ms") v *= 1000; else if (u == "s") v *= 1000000; printf "%d", v }'; }
LINES=$(grep -c "last 1 s: p99 " "$DIR/err2")
[ "$LINES" -ge 2 ] || { echo "FAIL: $LINES progress lines with a last-second p99"; exit 1; }
RUNMAX=$(sed -nE 's/.*ack latency .* max ([0-9.]+) (µs|ms|s)$/\1 \2/p' "$DIR/out2")
[ -n "$RUNMAX" ] || { echo "FAIL: no ack latency line"; exit 1; }
RUNMAX_US=$(to_us $RUNMAX)
sed -nE 's/.*last 1 s: p99 ([0-9.]+) (µs|ms|s) max ([0-9.]+) (µs|ms|s).*/\1 \2 \3 \4/p' "$DIR/err2" >"$DIR/secs"
while read -r P PU M MU; do
	P_US=$(to_us "$P" "$PU")
	M_US=$(to_us "$M" "$MU")
	[ "$P_US" -le "$M_US" ] || { echo "FAIL: a second's p99 $P $PU above its max $M $MU"; exit 1; }
	[ "$M_US" -le "$RUNMAX_US" ] || { echo "FAIL: a second's max $M $MU above the run's max $RUNMAX"; exit 1; }
done <"$DIR/secs"
echo "test_bench_smoke: ok"
