#!/usr/bin/env bash
# floor.sh BIN_DIR [ROUNDS] [RATE] — tallyd's ack latency next to the disk's latency floor,
# measured in turns, so both see the same host at (nearly) the same moment.
#
# Each round, for each I/O backend:
#   1. the floor: bench_flush --mode oneflush --batch-every-us, the group commits tallyd's
#      default makes at RATE (8 files, a window every 2,500 us, RATE x 78 bytes per second of
#      compressed WAL shared among them) and nothing else: no CPU work, no threads to cross, no
#      network. Its "floor ack" percentiles are the ack latency of batches of 500 arriving at
#      RATE if those windows were all a broker did (docs/benchmarks.md, "the latency floor");
#   2. tallyd on a fresh data directory (2 threads, 8 shards, --fsync always) and tally-bench
#      open loop at RATE for SECONDS, 16 connections x 500-event batches, 10% duplicates.
# Prints one line per run with the CPU steal over it, then the medians per backend.
# Env: IOS (default "uring epoll"), RUN_SECONDS (8), PAUSE (seconds between runs, 3).
set -euo pipefail
bin=${1:?usage: bench/floor.sh BIN_DIR [ROUNDS] [RATE]}
rounds=${2:-5}
rate=${3:-500000}
secs=${RUN_SECONDS:-8}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tally-floor.XXXXXX")
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

cpu_ticks() { awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
steal_pct() { echo "$1 $2" | awk '{d = $4 - $2; printf "%.1f", (d > 0 ? 100 * ($3 - $1) / d : 0)}'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
ms() { awk -v u="$1" 'BEGIN {printf "%.1f", u / 1000}'; }

# 78 bytes per event on disk (LZ4 2.08x of the bench's events: tally wal stats), 500 events per
# batch: the bytes one window of 2,500 us carries, spread over 8 files.
bytes=$(awk -v r="$rate" 'BEGIN {b = int(r * 78 * 0.0025 / 8); print (b < 512 ? 512 : b)}')
every=$(awk -v r="$rate" 'BEGIN {printf "%d", 500 * 1000000 / r}')

floor_run() {
  "$bin/bench_flush" --dir "$tmp" --files 8 --bytes "$bytes" --gap-us 2500 --file-mb 16 \
    --seconds "$secs" --runs 1 --mode oneflush --batch-every-us "$every" |
    sed -nE 's/.*floor ack us: p50 +([0-9]+) +p99 +([0-9]+) +p99.9 +([0-9]+).*/\1 \2 \3/p'
}

tallyd_run() { # io
  rm -rf "$tmp/data" "$tmp/port"
  "$bin/tallyd" --listen 127.0.0.1:0 --port-file "$tmp/port" --data "$tmp/data" --threads 2 \
    --shards 8 --io "$1" --expected-keys 4194304 --log-level warn 2>"$tmp/tallyd.log" &
  pid=$!
  for _ in $(seq 1 300); do [ -s "$tmp/port" ] && break; sleep 0.1; done
  [ -s "$tmp/port" ] || { echo "tallyd did not start" >&2; cat "$tmp/tallyd.log" >&2; exit 1; }
  "$bin/tally-bench" --connect "127.0.0.1:$(cat "$tmp/port")" --connections 16 --batch 500 \
    --rate "$rate" --duration "$secs" --warmup 1 --dup-rate 0.1 --seed 7 --quiet --json |
    python3 -c 'import json,sys
d=json.loads([l for l in sys.stdin.read().splitlines() if l.startswith("{")][0])["phases"][0]["latency_us"]
print(d["p50"], d["p99"], d["p999"])'
  kill -TERM "$pid"; wait "$pid" || true; pid=""
}

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "rate $rate ev/s in batches of 500 (one every $every us); floor: 8 files x $bytes bytes" \
     "every 2500 us; $secs s per run"
declare -A f99 t99 f50 t50
for r in $(seq 1 "$rounds"); do
  for io in ${IOS:-uring epoll}; do
    s0=$(cpu_ticks); read -r fp50 fp99 fp999 < <(floor_run); fs=$(steal_pct "$s0" "$(cpu_ticks)")
    sleep "${PAUSE:-3}"
    s0=$(cpu_ticks); read -r tp50 tp99 tp999 < <(tallyd_run "$io"); ts=$(steal_pct "$s0" "$(cpu_ticks)")
    sleep "${PAUSE:-3}"
    printf '  round %d  io %-5s floor p50/p99/p99.9 %5s %5s %5s ms (steal %4s%%)   tallyd %5s %5s %5s ms (steal %4s%%)\n' \
      "$r" "$io" "$(ms "$fp50")" "$(ms "$fp99")" "$(ms "$fp999")" "$fs" \
      "$(ms "$tp50")" "$(ms "$tp99")" "$(ms "$tp999")" "$ts"
    f50[$io]+="$fp50 "; f99[$io]+="$fp99 "; t50[$io]+="$tp50 "; t99[$io]+="$tp99 "
  done
done
for io in ${IOS:-uring epoll}; do
  printf 'MEDIAN io %-5s floor p50 %s p99 %s ms; tallyd p50 %s p99 %s ms\n' "$io" \
    "$(ms "$(tr ' ' '\n' <<<"${f50[$io]}" | grep . | median)")" \
    "$(ms "$(tr ' ' '\n' <<<"${f99[$io]}" | grep . | median)")" \
    "$(ms "$(tr ' ' '\n' <<<"${t50[$io]}" | grep . | median)")" \
    "$(ms "$(tr ' ' '\n' <<<"${t99[$io]}" | grep . | median)")"
done
