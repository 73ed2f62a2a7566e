#!/usr/bin/env bash
# tail.sh BIN_DIR [RATE] [SECONDS] — tallyd's ack latency second by second, next to what each
# vCPU was doing, to tell a slow disk from a busy or stolen CPU (docs/benchmarks.md, session 6).
#
# Starts tallyd on a fresh data directory (epoll, 2 threads, 8 shards, --fsync always), runs
# tally-bench open loop at RATE events/s (default 600000) as SECONDS steps (default 12;
# `--steps RATE,RATE,...`; each step is 1 s of warm-up, then the measured second, so the run
# takes 2 x SECONDS), and prints one line per step: p50 and p99 ack latency of its measured
# second's batches, then each CPU's busy and steal share over the same second (/proc/stat).
# A second with a high p99 while the CPUs are idle and nothing is stolen is the disk's.
# Then tallyd's own account of the run, logged at its stop (warm-up included): each stage of a
# batch, each sync group's window wait / sync / wake-up, each loop's turns (docs/architecture.md).
# Env: IO (epoll), TALLYD_FLAGS (extra tallyd flags), CONNS (16), BATCH (500).
set -euo pipefail
bin=${1:?usage: bench/tail.sh BIN_DIR [RATE] [SECONDS]}
rate=${2:-600000}
secs=${3:-12}
tmp=$(mktemp -d /tmp/tally-tail.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

"$bin/tallyd" --listen 127.0.0.1:0 --port-file "$tmp/port" --data "$tmp/data" --threads 2 \
  --shards 8 --io "${IO:-epoll}" --expected-keys 4194304 --log-level info ${TALLYD_FLAGS:-} \
  2>"$tmp/tallyd.log" &
pid=$!
for _ in $(seq 1 300); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || { echo "tallyd did not start"; cat "$tmp/tallyd.log"; exit 1; }

steps=$(printf "$rate%.0s," $(seq 1 "$secs")); steps=${steps%,}
"$bin/tally-bench" --connect "127.0.0.1:$(cat "$tmp/port")" --connections "${CONNS:-16}" \
  --batch "${BATCH:-500}" --steps "$steps" --duration 1 --warmup 1 --dup-rate 0.1 --seed 5 \
  --quiet >"$tmp/bench" 2>&1 &
bench=$!
# Each step is a 1 s warm-up (load, not measured) then the measured second; sample /proc/stat
# over each measured second.
ncpu=$(grep -c '^cpu[0-9]' /proc/stat)
for _ in $(seq 1 "$secs"); do
  sleep 1
  a=$(grep '^cpu[0-9]' /proc/stat); sleep 1; b=$(grep '^cpu[0-9]' /proc/stat)
  printf '%s\n%s\n' "$a" "$b" | awk -v n="$ncpu" '
    { busy = $2 + $3 + $4 + $7 + $8; all = busy + $5 + $6 + $9
      if (NR <= n) { b0[$1] = busy; s0[$1] = $9; a0[$1] = all; order[NR] = $1 }
      else { b1[$1] = busy; s1[$1] = $9; a1[$1] = all } }
    END { for (i = 1; i <= n; i++) { c = order[i]; d = a1[c] - a0[c]; if (d < 1) d = 1
            printf "%s busy %3d%% steal %2d%%  ", c, 100 * (b1[c] - b0[c]) / d, 100 * (s1[c] - s0[c]) / d }
          print "" }'
done >"$tmp/cpu"
wait "$bench" || { echo "tally-bench failed"; cat "$tmp/bench"; exit 1; }
echo "tallyd: io ${IO:-epoll}, rate $rate ev/s, $secs steps (1 s warm-up + 1 s measured each), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "step     p50        p99        | per CPU over its measured second"
grep -E '^ +[0-9]+ +[0-9]+ ' "$tmp/bench" | head -n "$secs" |
  awk '{printf "%6d   %-10s %-10s |\n", NR, $3 " " $4, $7 " " $8}' | paste -d' ' - "$tmp/cpu"
kill -TERM "$pid"; wait "$pid" || true; pid=""
echo "tallyd at stop (us, p50/p99/max):"
grep -E 'batch latency|sync group|loop turns' "$tmp/tallyd.log" | sed 's/^[^ ]* INFO  /  /'
