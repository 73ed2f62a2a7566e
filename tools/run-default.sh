#!/bin/sh
# run-default.sh BIN_DIR — `make run`: tallyd on the embedded default (./var, 127.0.0.1:7878)
# in the foreground; tally-rate beside it when it is built. One Ctrl-C stops everything.
set -eu
bin=$1
data=${TALLY_DATA:-./var}
listen=${TALLY_LISTEN:-127.0.0.1:7878}
mkdir -p "$data"
cat <<MSG
tally: starting tallyd on $listen with data in $data (Ctrl-C stops it cleanly).

Send events from another terminal, e.g.:
  echo '{"event_id":"evt_1","customer_id":"cus_1","event_name":"api.call","timestamp":"$(date -u +%Y-%m-%dT%H:%M:%SZ)"}' \\
    | $bin/tally send --connect $listen
Inspect the write-ahead log:
  $bin/tally wal stats --data $data
  $bin/tally wal dump --data $data

MSG
pids=""
cleanup() {
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $pids; do wait "$p" 2>/dev/null || true; done
}
trap cleanup INT TERM
"$bin/tallyd" --listen "$listen" --data "$data" &
pids="$!"
if [ -x "$bin/tally-rate" ] && [ -f "${TALLY_RATE_CONFIG:-config/rating.json}" ]; then
  "$bin/tally-rate" --config "${TALLY_RATE_CONFIG:-config/rating.json}" --data "$data" \
    --out "${TALLY_OUT:-./out}" &
  pids="$pids $!"
fi
wait
