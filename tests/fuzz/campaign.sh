#!/bin/bash
# campaign.sh BIN_DIR WORK_DIR CPU_SECONDS [TARGET...]
#
# A long fuzzing campaign measured in CPU time, not wall time: every target (default: all
# fuzz_* in BIN_DIR) runs at nice 19 from a copy of its committed seed corpus, and is stopped
# (SIGINT, so libFuzzer prints its final stats) once the process has used CPU_SECONDS of CPU.
# Other work on the machine takes precedence, and `kill -STOP`/`-CONT` of the fuzzers (e.g.
# around a benchmark) costs them nothing. Progress every 60 s; at the end one line per target:
#   fuzz_proto: cpu=3600s execs=... crashes=0 corpus=N
# Crashing inputs are kept in WORK_DIR/TARGET/artifacts/. Afterwards, fold the new coverage
# into the committed seeds with:
#   fuzz_x -merge=1 tests/fuzz/corpus/x WORK_DIR/fuzz_x/corpus
set -u
bin=${1:?usage: campaign.sh BIN_DIR WORK_DIR CPU_SECONDS [TARGET...]}
work=${2:?work dir}
budget=${3:?cpu seconds}
shift 3
src=$(cd "$(dirname "$0")" && pwd)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	for f in "$bin"/fuzz_*; do targets+=("$(basename "$f")"); done
fi
hz=$(getconf CLK_TCK)
declare -A pid
mkdir -p "$work"
for t in "${targets[@]}"; do
	seeds=$src/corpus/${t#fuzz_}
	[ -d "$seeds" ] || { echo "no seed corpus $seeds" >&2; exit 2; }
	mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
	cp -n "$seeds"/* "$work/$t/corpus/" 2>/dev/null
	nice -n 19 "$bin/$t" -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" \
		"$work/$t/corpus" >"$work/$t/log" 2>&1 &
	pid[$t]=$!
	echo "$t: pid ${pid[$t]}"
done

cpu_of() { # CPU seconds used by a live process, or empty
	local f
	f=$(cat "/proc/$1/stat" 2>/dev/null) || return
	f=${f##*) }
	set -- $f
	echo $(((${12} + ${13}) / hz))
}

left=${#targets[@]}
declare -A done_cpu
tick=0
while [ "$left" -gt 0 ]; do
	sleep 5
	tick=$((tick + 5))
	for t in "${targets[@]}"; do
		[ -n "${done_cpu[$t]:-}" ] && continue
		c=$(cpu_of "${pid[$t]}")
		if [ -z "$c" ]; then # exited by itself: a crash
			wait "${pid[$t]}"
			done_cpu[$t]="exited($?)"
			left=$((left - 1))
			continue
		fi
		if [ "$c" -ge "$budget" ]; then
			kill -INT "${pid[$t]}"
			wait "${pid[$t]}"
			done_cpu[$t]=$c
			left=$((left - 1))
		fi
	done
	if [ $((tick % 60)) = 0 ]; then
		line=""
		for t in "${targets[@]}"; do
			c=${done_cpu[$t]:-$(cpu_of "${pid[$t]}")}
			line="$line $t=${c}s"
		done
		echo "$(date +%H:%M:%S)$line"
	fi
done

status=0
for t in "${targets[@]}"; do
	execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$work/$t/log" | awk '{print $2}')
	crashes=$(find "$work/$t/artifacts" -type f ! -name "slow-unit-*" | wc -l) # slow units are reports, not failures
	corpus=$(find "$work/$t/corpus" -type f | wc -l)
	echo "$t: cpu=${done_cpu[$t]}s execs=${execs:-?} crashes=$crashes corpus=$corpus"
	[ "$crashes" = 0 ] || status=1
	case ${done_cpu[$t]} in exited*) status=1 ;; esac
done
exit $status
