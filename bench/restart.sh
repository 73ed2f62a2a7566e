#!/usr/bin/env bash
# restart.sh BIN_DIR [KEYS] — how long tallyd takes to accept again after kill -9 with KEYS
# (default 100,000,000) idempotency keys in its dedup window (issue 4's restart target: 15 s).
#
#   1. a fresh data directory is filled through tallyd with KEYS distinct events (tally-bench,
#      closed loop, --fsync always), so the keys sit where the broker puts them: .keys runs of
#      sealed segments, plus the unsealed segment of every shard;
#   2. tallyd is killed with SIGKILL mid-load (a second tally-bench still sending), restarted,
#      and timed from exec until its port file appears (the listener is up only after the WAL
#      and every dedup shard are recovered); its own "ready in" log line is printed too;
#   3. the first SAMPLE events (default 200,000) are resent with the same seed: every one must be
#      answered DUPLICATE (the keys survived), and a fresh seed must be ACCEPTED.
# Needs ~50 B of disk per key for the WAL plus 32 B per key of runs (~8 GB at 100M).
# Env: DATA (default a new directory under /tmp, removed at the end unless KEEP=1), REUSE=1
# (DATA already filled by an earlier KEEP=1 run: skip step 1), SHARDS, THREADS, SAMPLE, CONNS.
set -euo pipefail
bin=${1:?usage: bench/restart.sh BIN_DIR [KEYS]}
keys=${2:-100000000}
sample=${SAMPLE:-200000}
shards=${SHARDS:-8}
threads=${THREADS:-2}
conns=${CONNS:-4}
tmp=$(mktemp -d /tmp/tally-restart.XXXXXX)
data=${DATA:-$tmp/data}
pid=""
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$tmp" "$data"
}
trap cleanup EXIT

jget() {
  python3 -c 'import json,sys
d=json.loads([l for l in sys.stdin.read().splitlines() if l.startswith("{")][0])
for k in sys.argv[1].split("."): d=d[int(k)] if isinstance(d,list) else d[k]
print(d)' "$1"
}
start_tallyd() {
  rm -f "$tmp/port"
  local t0
  t0=$(date +%s%N)
  "$bin/tallyd" --listen 127.0.0.1:0 --port-file "$tmp/port" --data "$data" \
    --threads "$threads" --shards "$shards" --log-level info 2>>"$tmp/tallyd.log" &
  pid=$!
  while [ ! -s "$tmp/port" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "tallyd exited during start"; tail "$tmp/tallyd.log"; exit 1; }
    sleep 0.02
  done
  ready_ms=$((($(date +%s%N) - t0) / 1000000))
  port=$(cat "$tmp/port")
}
base_us=$(($(date +%s) * 1000000)) # one event-time base: a resend must be the same event
bench() { # extra args...
  "$bin/tally-bench" --connect "127.0.0.1:$port" --connections "$conns" --batch 1000 \
    --inflight 16 --base-time-us "$base_us" --quiet --json "$@"
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $keys keys, $shards shards"
start_tallyd
echo "filling: $keys events through tallyd (closed loop, fsync always) ..."
t0=$(date +%s)
chunk=10000000
done_keys=0
if [ "${REUSE:-0}" = 1 ]; then
  done_keys=$keys
  base_us=$(cat "$data/.restart-base-us")
  echo "  reusing $data (filled earlier)"
fi
echo "$base_us" >"$data/.restart-base-us"
while [ "$done_keys" -lt "$keys" ]; do
  n=$((keys - done_keys < chunk ? keys - done_keys : chunk))
  out=$(bench --events "$n" --seed "$((1000 + done_keys / chunk))" --key-prefix fill)
  acc=$(echo "$out" | jget phases.0.receipts.ACCEPTED)
  [ "$acc" = "$n" ] || { echo "fill: $acc of $n accepted"; echo "$out"; exit 1; }
  done_keys=$((done_keys + n))
  echo "  $done_keys keys ($(( $(date +%s) - t0 )) s, $(echo "$out" | jget phases.0.events_per_s) ev/s)"
done
du -sh "$data/wal" "$data/dedup" 2>/dev/null || du -sh "$data"
echo "kill -9 under load ..."
bench --events 100000000 --seed 777 --key-prefix late >/dev/null 2>&1 &
bpid=$!
sleep 3
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
pid=""
wait "$bpid" 2>/dev/null || true
start_tallyd
grep -o "ready in [0-9]* ms" "$tmp/tallyd.log" | tail -1 | sed 's/^/  tallyd log: /'
echo "RESTART with $keys keys: accepting after $ready_ms ms (exec to listening)"
out=$(bench --events "$sample" --seed 1000 --key-prefix fill)
dup=$(echo "$out" | jget phases.0.receipts.DUPLICATE)
echo "resend of the first $sample events: $dup DUPLICATE"
[ "$dup" = "$sample" ] || { echo "FAIL: expected $sample duplicates"; echo "$out"; exit 1; }
out=$(bench --events "$sample" --seed "$(date +%s)" --key-prefix fresh) # new keys on every run
acc=$(echo "$out" | jget phases.0.receipts.ACCEPTED)
echo "fresh events: $acc of $sample ACCEPTED"
[ "$acc" = "$sample" ] || { echo "FAIL: expected $sample accepted"; exit 1; }
kill -TERM "$pid"
wait "$pid" || true
pid=""
echo "OK"
