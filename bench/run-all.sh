#!/bin/sh
# run-all.sh BIN_DIR — `make bench`: runs every bench_* binary once (Release build).
set -eu
bin=$1
for b in "$bin"/bench_*; do
  [ -x "$b" ] || continue
  echo "== $(basename "$b")"
  "$b"
done
