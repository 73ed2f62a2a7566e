#!/bin/sh
# proto_doc_check.sh PROTO_HEXDUMP DOC
# Fails if any line printed by proto_hexdump is missing from docs/protocol.md, i.e. if the
# annotated hex dumps pasted in the spec no longer match what the real encoders produce.
set -eu
dump=$1; doc=$2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$dump" > "$out"
missing=0
while IFS= read -r line; do
  [ -z "$line" ] && continue
  if ! grep -qF -- "$line" "$doc"; then
    echo "not in $doc: $line" >&2
    missing=$((missing + 1))
  fi
done < "$out"
if [ "$missing" -ne 0 ]; then
  echo "proto_doc_check: $missing line(s) differ; regenerate section 12 of docs/protocol.md" >&2
  exit 1
fi
echo "proto_doc_check: all $(grep -c . "$out") dump lines present in $doc"
