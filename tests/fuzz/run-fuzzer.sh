#!/bin/sh
# run-fuzzer.sh FUZZER SEED_CORPUS SECONDS
# Fuzzes for SECONDS starting from the seed corpus. New inputs go to a scratch directory, so
# the committed corpus only changes when someone copies findings into it on purpose.
set -eu
fuzzer=$1; seeds=$2; secs=${FUZZ_SECONDS:-$3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
exec_status=0
"$fuzzer" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$scratch/" \
  "$scratch" "$seeds" || exec_status=$?
if [ "$exec_status" -ne 0 ]; then
  echo "fuzzer failed; crashing inputs:" >&2
  for f in "$scratch"/crash-* "$scratch"/leak-* "$scratch"/timeout-* "$scratch"/oom-*; do
    [ -e "$f" ] && { echo "$f" >&2; od -A d -t x1 "$f" | head -20 >&2; }
  done
fi
exit "$exec_status"
