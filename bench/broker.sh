#!/usr/bin/env bash
# broker.sh BIN_DIR [RUNS] — tallyd's throughput and ack latency, as issue 5 states them.
#
# For each I/O backend (uring, epoll) and each disk profile (as measured; 2 ms injected per
# fdatasync through the WAL's I/O seam), on a fresh data directory:
#   1. closed loop: tally-bench --max, 10% duplicates, 150-byte events, --fsync always;
#      every receipt checked (--expect) and the WAL checked against them (--verify-wal);
#   2. open loop at half the closed-loop rate: p50/p99/p99.9 ack latency from the intended
#      send time (no coordinated omission).
# Prints one line per run and the median of RUNS runs (default 3) per configuration. Each run
# line ends with the CPU steal over the run (/proc/stat): the share of this VM's CPU time the
# hypervisor gave to other guests; figures from runs with high steal measure the neighbours.
# It then gives the median of the open loop's per-second p99s over its quiet seconds (steal
# under 2 %, from tally-bench's progress lines) and how many there were: the same broker with
# the neighbours' share taken out, or "none" when every second was stolen from.
# Client and broker share this machine's cores, as the issue asks.
# Env: EVENTS, CONNS, INFLIGHT, BATCH, THREADS, SHARDS, TALLYD_FLAGS (extra tallyd flags, e.g.
# "--wal-prefill-kb 0" to compare against plain appends), IOS (default "uring epoll"),
# DELAYS (default "0 2000"), HALF_RATE (the open loop's rate instead of half the closed loop's,
# e.g. 500000: half of issue 5's 1,000,000 events/s).
set -euo pipefail
bin=${1:?usage: bench/broker.sh BIN_DIR [RUNS]}
runs=${2:-3}
events=${EVENTS:-3000000}
conns=${CONNS:-16}
inflight=${INFLIGHT:-8}
batch=${BATCH:-500}
threads=${THREADS:-2}
shards=${SHARDS:-8}
tmp=$(mktemp -d /tmp/tally-broker-bench.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

jget() { # jget a.b < json: one field of tally-bench --json output
  python3 -c 'import json,sys
d=json.loads([l for l in sys.stdin.read().splitlines() if l.startswith("{")][0])
for k in sys.argv[1].split("."): d=d[int(k)] if isinstance(d,list) else d[k]
print(d)' "$1"
}
cpu_ticks() { awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; } # steal, all
steal_pct() { # steal_pct "S0 T0" "S1 T1": the hypervisor's share of this VM's CPU time between
  echo "$1 $2" | awk '{d = $4 - $2; printf "%.1f", (d > 0 ? 100 * ($3 - $1) / d : 0)}'
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }

start_tallyd() { # io delay
  rm -rf "$tmp/data" "$tmp/port"
  "$bin/tallyd" --listen 127.0.0.1:0 --port-file "$tmp/port" --data "$tmp/data" \
    --threads "$threads" --shards "$shards" --io "$1" --sync-delay-us "$2" \
    --expected-keys 4194304 --log-level warn ${TALLYD_FLAGS:-} 2>"$tmp/tallyd.log" &
  pid=$!
  for _ in $(seq 1 300); do [ -s "$tmp/port" ] && break; sleep 0.1; done
  [ -s "$tmp/port" ] || { echo "tallyd did not start"; cat "$tmp/tallyd.log"; exit 1; }
  port=$(cat "$tmp/port")
}
stop_tallyd() { kill -TERM "$pid"; wait "$pid" || true; pid=""; }

# quiet_p99 FILE: median per-second p99 (µs) of the seconds with steal < 2 %, and their count.
quiet_p99() {
  sed -nE 's/.*last 1 s: p99 ([0-9.]+) (µs|ms|s) max .* steal ([0-9]+)%.*/\1 \2 \3/p' "$1" |
    awk '$3 < 2 { v = $1; if ($2 == "ms") v *= 1000; else if ($2 == "s") v *= 1000000; print int(v) }' |
    sort -n | awk '{ a[NR] = $1 } END { if (NR) printf "%d us (%d s)", a[int((NR + 1) / 2)], NR; else printf "none" }'
}

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "workload: $events events/run, $conns connections x $inflight batches of $batch in flight," \
     "10% duplicates, 150-byte bodies, $shards shards, $threads threads, --fsync always"
for delay in ${DELAYS:-0 2000}; do
  for io in ${IOS:-uring epoll}; do
    rates=(); p50s=(); p99s=(); p999s=()
    for r in $(seq 1 "$runs"); do
      start_tallyd "$io" "$delay"
      st0=$(cpu_ticks)
      out=$("$bin/tally-bench" --connect "127.0.0.1:$port" --connections "$conns" \
              --inflight "$inflight" --batch "$batch" --events "$events" --dup-rate 0.1 \
              --seed "$r$delay" --expect --verify-wal "$tmp/data" --quiet --json 2>&1) || {
        echo "tally-bench failed (closed loop, $io, delay $delay)"; echo "$out"; exit 1; }
      rate=$(echo "$out" | jget phases.0.events_per_s)
      half=${HALF_RATE:-$(awk -v r="$rate" 'BEGIN {printf "%d", r / 2}')}
      lat=$("$bin/tally-bench" --connect "127.0.0.1:$port" --connections "$conns" \
              --batch "$batch" --rate "$half" --duration 5 --warmup 1 --dup-rate 0.1 \
              --seed "9$r$delay" --progress --json 2>"$tmp/progress")
      quiet=$(quiet_p99 "$tmp/progress")
      p50=$(echo "$lat" | jget phases.0.latency_us.p50)
      p99=$(echo "$lat" | jget phases.0.latency_us.p99)
      p999=$(echo "$lat" | jget phases.0.latency_us.p999)
      steal=$(steal_pct "$st0" "$(cpu_ticks)")
      stop_tallyd
      printf '  run %d  io %-5s sync+%4d us  closed loop %9.0f ev/s (verified)   open loop at %d ev/s: p50 %s us p99 %s us p99.9 %s us   steal %s%%   quiet seconds: p99 %s\n' \
        "$r" "$io" "$delay" "$rate" "$half" "$p50" "$p99" "$p999" "$steal" "$quiet"
      rates+=("$rate"); p50s+=("$p50"); p99s+=("$p99"); p999s+=("$p999")
    done
    printf 'MEDIAN io %-5s sync+%4d us: %s ev/s; at half rate p50 %s us, p99 %s us, p99.9 %s us\n' \
      "$io" "$delay" "$(printf '%s\n' "${rates[@]}" | median)" "$(printf '%s\n' "${p50s[@]}" | median)" \
      "$(printf '%s\n' "${p99s[@]}" | median)" "$(printf '%s\n' "${p999s[@]}" | median)"
  done
done
