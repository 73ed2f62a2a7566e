#!/bin/sh
# tests/test_version.sh VERSION — every binary answers --version with its name and the
# project's VERSION (CMakeLists.txt), exits 0, and names the libraries it was built against.
# Env: TALLY_BIN (dir with the binaries; default build/bin).
set -u
BIN=${TALLY_BIN:-build/bin}
WANT=${1:?usage: test_version.sh VERSION}
fail=0
for b in tallyd tally tally-rate tally-bench; do
	if [ ! -x "$BIN/$b" ]; then
		echo "SKIP $b: not built"
		continue
	fi
	out=$("$BIN/$b" --version 2>&1)
	rc=$?
	first=$(echo "$out" | head -1)
	if [ $rc -ne 0 ] || [ "$first" != "$b $WANT" ]; then
		echo "FAIL $b --version: exit $rc, first line '$first', want '$b $WANT'"
		fail=1
		continue
	fi
	if ! echo "$out" | grep -q "built with liburing [0-9]"; then
		echo "FAIL $b --version: no library versions in: $out"
		fail=1
		continue
	fi
	echo "ok   $b: $(echo "$out" | tr '\n' ' ')"
done
exit $fail
