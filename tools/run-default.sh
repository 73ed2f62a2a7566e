#!/bin/sh
# run-default.sh BIN_DIR — `make run`: tallyd on the embedded default (./var, 127.0.0.1:7878)
# in the foreground, and tally-rate beside it (config/rating.json -> ./out) when it is built.
# One Ctrl-C stops both cleanly.
set -eu
bin=$1
data=${TALLY_DATA:-./var}
listen=${TALLY_LISTEN:-127.0.0.1:7878}
mkdir -p "$data"
cat <<MSG
tally: starting tallyd on $listen with data in $data (Ctrl-C stops it cleanly).

Check that it answers, from another terminal:
  $bin/tally ping --connect $listen
Send events, e.g.:
  echo '{"event_id":"evt_1","customer_id":"cus_1","event_name":"api.call","timestamp":"$(date -u +%Y-%m-%dT%H:%M:%SZ)"}' \\
    | $bin/tally send --connect $listen
See the live usage and amount so far (tally-rate, config/rating.json):
  $bin/tally usage --customer cus_1 --out ./out
Inspect the write-ahead log:
  $bin/tally wal stats --data $data
  $bin/tally wal dump --data $data

MSG
pids=""
cleanup() {
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $pids; do wait "$p" 2>/dev/null || true; done
}
# HUP too: tallyd takes SIGHUP as "reload the API keys", so a closed terminal must stop it here.
trap cleanup INT TERM HUP
"$bin/tallyd" --listen "$listen" --data "$data" &
pids="$!"
config=${TALLY_RATE_CONFIG:-config/rating.json}
out=${TALLY_OUT:-./out}
if [ -x "$bin/tally-rate" ] && [ -f "$config" ]; then
  # tally-rate tails the WAL that tallyd creates: wait for it (tallyd may be recovering).
  i=0
  while [ ! -f "$data/wal/meta" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
  echo "tally: starting tally-rate ($config) -> $out (invoices in $out/invoices, live usage in $out/usage.json)"
  "$bin/tally-rate" --config "$config" --data "$data" --out "$out" &
  pids="$pids $!"
fi
wait
