#!/usr/bin/env bash
# long.sh BIN_DIR [RATE] [SECONDS] — a sustained open-loop run, to see what bench/broker.sh's 5 s
# windows never reach: segment rolls, dedup seals and the eviction after them, a growing page
# cache (docs/benchmarks.md, session 9).
#
# Starts tallyd on a fresh data directory (2 threads, 8 shards, --fsync always,
# --expected-keys 4194304), runs tally-bench open loop at RATE events/s (default 500000) for
# SECONDS (default 60; 16 connections x 500-event batches, 10 % duplicates), and prints every
# 5 s: tallyd's CPU over those 5 s (% of one core), the machine's steal, the page cache's growth,
# the dedup seals logged so far and the worst per-second p99 of the client's ack latency. Then
# the client's ack latency over the whole run, the median per-second p99 of quiet seconds (CPU
# steal < 2 %) and of busier ones, and tallyd's own account at its stop.
# Env: IO (epoll or uring; default epoll), TALLYD_FLAGS (extra tallyd flags, e.g.
# "--wal-cache-mb 0"), CONNS (16), BATCH (500).
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ] || [ $# -lt 1 ]; then
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
	[ $# -ge 1 ] && exit 0 || exit 2
fi
BIN=$1
RATE=${2:-500000}
SECONDS_RUN=${3:-60}
for b in tallyd tally-bench; do
	[ -x "$BIN/$b" ] || { echo "long.sh: $BIN/$b not found (build first: make release)" >&2; exit 2; }
done

T=$(mktemp -d "${TMPDIR:-/tmp}/tally-long.XXXXXX")
TPID=
cleanup() {
	[ -n "$TPID" ] && kill -TERM "$TPID" 2>/dev/null && wait "$TPID" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

# shellcheck disable=SC2086
"$BIN/tallyd" --listen 127.0.0.1:0 --port-file "$T/port" --data "$T/data" --threads 2 --shards 8 \
	--io "${IO:-epoll}" --expected-keys 4194304 --log-level info ${TALLYD_FLAGS:-} 2>"$T/log" &
TPID=$!
for _ in $(seq 300); do [ -s "$T/port" ] && break; sleep 0.1; done
[ -s "$T/port" ] || { echo "long.sh: tallyd did not start:" >&2; cat "$T/log" >&2; exit 1; }

echo "tallyd: io ${IO:-epoll}, rate $RATE ev/s for $SECONDS_RUN s, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN/tally-bench" --connect "127.0.0.1:$(cat "$T/port")" --connections "${CONNS:-16}" \
	--batch "${BATCH:-500}" --rate "$RATE" --duration "$SECONDS_RUN" --warmup 1 --dup-rate 0.1 \
	--seed 7 --progress >"$T/bench" 2>&1 &
BPID=$!

hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$TPID/stat"; }
stat_cpu() { awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
cached() { awk '/^Cached:/{print $2}' /proc/meminfo; }
c0=$(cpu); s0=$(stat_cpu); m0=$(cached); t=0
# The p99 of a second in µs, from tally-bench's progress lines ("last 1 s: p99 4.2 ms max ...").
sec_p99() { sed -nE 's/.*last 1 s: p99 ([0-9.]+) (µs|ms|s) max.*/\1 \2/p' "$1" |
	awk '{v = $1; if ($2 == "ms") v *= 1000; else if ($2 == "s") v *= 1000000; printf "%d\n", v}'; }
printf '%6s  %14s  %6s  %16s  %5s  %s\n' "time" "tallyd CPU" "steal" "cache since start" "seals" \
	"worst 1 s p99"
seen=0
while kill -0 "$BPID" 2>/dev/null; do
	sleep 5
	t=$((t + 5))
	kill -0 "$TPID" 2>/dev/null || { echo "long.sh: tallyd died:" >&2; tail -5 "$T/log" >&2; exit 1; }
	c1=$(cpu); s1=$(stat_cpu); m1=$(cached)
	n=$(sec_p99 "$T/bench" | wc -l)
	worst=$(sec_p99 "$T/bench" | tail -n +$((seen + 1)) | sort -n | tail -1)
	seen=$n
	printf '%5ds  %12s %%  %5s%%  %+16d MiB  %5s  %s\n' "$t" \
		"$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN {printf "%.0f", 100 * (b - a) / hz / 5}')" \
		"$(echo "$s0 $s1" | awk '{printf "%.1f", ($4 > $2) ? 100 * ($3 - $1) / ($4 - $2) : 0}')" \
		$(((m1 - m0) / 1024)) "$(grep -c 'sealed a dedup' "$T/log" || true)" \
		"$(awk -v u="${worst:-0}" 'BEGIN {printf "%.1f ms", u / 1000}')"
	c0=$c1; s0=$s1
done
wait "$BPID" || { echo "long.sh: tally-bench failed:" >&2; tail -5 "$T/bench" >&2; exit 1; }
grep -E "ack latency|throughput" "$T/bench" || true
# Each second's p99 against that second's CPU steal (the host taking the vCPUs away): the
# median of the per-second p99s for quiet and for busy seconds.
sed -nE 's/.*last 1 s: p99 ([0-9.]+) (µs|ms|s) max .* steal ([0-9]+)%.*/\1 \2 \3/p' "$T/bench" |
	awk '{v = $1; if ($2 == "ms") v *= 1000; else if ($2 == "s") v *= 1000000;
	      b = ($3 < 2) ? 0 : ($3 < 10) ? 1 : 2; n[b]++; x[b, n[b]] = v}
	     function med(b,   i, j, t) { for (i = 1; i <= n[b]; i++) for (j = i + 1; j <= n[b]; j++)
	         if (x[b, j] < x[b, i]) { t = x[b, i]; x[b, i] = x[b, j]; x[b, j] = t }
	         return x[b, int((n[b] + 1) / 2)] / 1000 }
	     END { split("steal < 2 %,steal 2-9 %,steal >= 10 %", name, ",");
	           printf "  per-second p99, median over seconds:";
	           for (b = 0; b < 3; b++) if (n[b]) printf "  %s: %.1f ms (%d s)", name[b + 1], med(b), n[b];
	           printf "\n" }'
kill -TERM "$TPID"
wait "$TPID" || true
TPID=
echo "tallyd at stop:"
grep -E "batch latency|sync group|worker [0-9]|shared flush" "$T/log" | sed 's/.*INFO  /  /'
