#!/bin/bash
# tests/torture/run.sh — the torture suite's long runs against a real tallyd (docs/reliability.md).
#
#   run.sh kill9      kill -9 loop: retrying producers at full rate, tallyd SIGKILLed at random
#                     moments (0.1-5 s, seeded) and restarted, TORTURE_CYCLES times; then every
#                     ledger is checked against the WAL (0 lost, 0 duplicated, positions match).
#   run.sh faults     EIO on fdatasync, ENOSPC/EIO/short writes, via the LD_PRELOAD shim
#   run.sh lostwrites crash with unsynced writes dropped/torn/reordered at every I/O op
#   run.sh abuse      the abuse test program (connection flood, slowloris, 4 GiB frame, ...)
#   run.sh selftest   a disk that loses synced writes: the checker must report lost events
#   run.sh rate       tally-rate (and tallyd) under kill -9: rated totals equal the ledger's
#   run.sh all        all of them
#
# Env: TALLY_BIN (dir with tallyd, torture_producer, torture_check, libtorture_iofault.so;
#      default build/bin), TORTURE_CYCLES (default 10), TORTURE_SEED (default 1),
#      TORTURE_EPOCH (cycles per data directory; each epoch is checked then removed; default 10:
#      restart time grows with the data a shard must re-read),
#      TORTURE_TALLYD_FLAGS (extra tallyd flags, e.g. "--io epoll"),
#      TORTURE_RATE (events/s per producer, 0 = unlimited; default 0), TORTURE_PRODUCERS (4),
#      TORTURE_MAX_MS (longest run between kills, default 5000), TORTURE_KEEP=1 keeps the data,
#      TORTURE_LW_THREADS (lostwrites: tallyd --threads, default 1).
# Exit 0 = every property held; 1 = a violation (the data directory is kept and named).
set -u
BIN=${TALLY_BIN:-build/bin}
CYCLES=${TORTURE_CYCLES:-10}
SEED=${TORTURE_SEED:-1}
EPOCH=${TORTURE_EPOCH:-10}
RATE=${TORTURE_RATE:-0}
PRODUCERS=${TORTURE_PRODUCERS:-4}
MAX_MS=${TORTURE_MAX_MS:-5000}
KEEP=${TORTURE_KEEP:-0}
for b in tallyd torture_producer torture_check; do
	if [ ! -x "$BIN/$b" ]; then
		echo "SKIP: $BIN/$b is not built"
		exit 77
	fi
done
WORK=$(mktemp -d /tmp/torture.XXXXXX)
TPID=
PPID_=
cleanup() {
	[ -n "$PPID_" ] && kill -TERM "$PPID_" 2>/dev/null && wait "$PPID_" 2>/dev/null
	[ -n "$TPID" ] && kill -KILL "$TPID" 2>/dev/null && wait "$TPID" 2>/dev/null
	if [ "$KEEP" = 1 ] || [ -f "$WORK/FAILED" ]; then
		echo "data kept in $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

RNG=$SEED
rand() { # rand N: R = 0..N-1 (LCG, reproducible from TORTURE_SEED; no subshell, so RNG advances)
	RNG=$(((RNG * 1103515245 + 12345) % 2147483648))
	R=$(((RNG / 65536) % $1))
}

# start_tallyd DIR [extra flags...]: starts tallyd on DIR/data, sets TPID; returns 1 if it died.
start_tallyd() {
	local dir=$1
	shift
	rm -f "$dir/port"
	"$BIN/tallyd" --listen 127.0.0.1:0 --data "$dir/data" --port-file "$dir/port" \
		--threads 2 --expected-keys 65536 ${TORTURE_TALLYD_FLAGS:-} "$@" >>"$dir/tallyd.log" 2>&1 &
	TPID=$!
	for _ in $(seq 1 1000); do
		[ -s "$dir/port" ] && return 0
		kill -0 "$TPID" 2>/dev/null || { wait "$TPID" 2>/dev/null; echo "tallyd died at start (exit $?)"; TPID=; return 1; }
		sleep 0.02
	done
	echo "tallyd did not listen within 20 s"
	return 1
}

TOT_ACKED=0 TOT_LOST=0 TOT_DUP=0 TOT_KILLS=0
# add_check LINE: accumulates a torture_check summary line.
add_check() {
	local a l d
	a=$(sed -n 's/.* acked=\([0-9]*\).*/\1/p' <<<"$1")
	l=$(sed -n 's/.* lost=\([0-9]*\).*/\1/p' <<<"$1")
	d=$(sed -n 's/.* duplicated=\([0-9]*\).*/\1/p' <<<"$1")
	TOT_ACKED=$((TOT_ACKED + ${a:-0}))
	TOT_LOST=$((TOT_LOST + ${l:-0}))
	TOT_DUP=$((TOT_DUP + ${d:-0}))
}

fail() {
	echo "FAIL: $*"
	touch "$WORK/FAILED"
	exit 1
}

# wait_either: waits until tallyd ($TPID) or the producer ($PPID_) exits; prints which.
wait_either() {
	while :; do
		if ! kill -0 "$TPID" 2>/dev/null; then echo tallyd; return; fi
		if ! kill -0 "$PPID_" 2>/dev/null; then echo producer; return; fi
		sleep 0.02
	done
}

# finish_check DIR LABEL: drains the producer, stops tallyd, checks; accumulates totals.
finish_check() {
	local dir=$1 label=$2
	touch "$dir/stop"
	if [ "$(wait_either)" = tallyd ]; then
		wait "$TPID" 2>/dev/null
		fail "$label: tallyd died (status $?) while the producer drained ($dir/tallyd.log)"
	fi
	wait "$PPID_"
	local prc=$?
	PPID_=
	[ "$prc" = 0 ] || fail "$label: producer exit $prc ($dir/producer.err)"
	kill -TERM "$TPID"
	wait "$TPID"
	local trc=$?
	TPID=
	if [ "$trc" = 137 ] && grep -qs "^fault at op" "$dir/faults"; then
		# The simulated power loss hit an I/O op of the shutdown itself (the WAL cuts its
		# prefill at close): recover without the shim, then stop cleanly.
		start_tallyd "$dir" || fail "$label: restart after a crash during shutdown"
		kill -TERM "$TPID"
		wait "$TPID"
		trc=$?
		TPID=
	fi
	[ "$trc" = 0 ] || fail "$label: tallyd exit $trc on SIGTERM"
	local out
	out=$("$BIN/torture_check" --data "$dir/data" --ledger "$dir/ledger" --no-foreign 2>"$dir/check.err")
	local crc=$?
	add_check "$out"
	[ "$crc" = 0 ] || { echo "$out"; head -20 "$dir/check.err"; fail "$label: check ($dir)"; }
	LAST_CHECK=$out
}

SHIM=
find_shim() {
	SHIM=$(cd "$BIN" && pwd)/libtorture_iofault.so
	[ -f "$SHIM" ] || { echo "SKIP: $SHIM is not built"; exit 77; }
}

# Lost unsynced writes: a power loss at op N of a workload (group commits and segment rolls on
# one shard, then on two), for every N from 1 to the workload's op count (TORTURE_LW_OPS, or
# measured with a trace run), step TORTURE_LW_STEP (default 1), TORTURE_LW_PREFILL_KB (see below). After each crash tallyd restarts
# without the shim, the producer drains, and the ledger is checked. TORTURE_LW_RECOVERY_AT=R
# adds a second power loss at op R of the restart (a crash during recovery), then a clean one.
run_lostwrites() {
	TOT_ACKED=0 TOT_LOST=0 TOT_DUP=0
	find_shim
	local shards=${TORTURE_LW_SHARDS:-1} events=${TORTURE_LW_EVENTS:-3000}
	local step=${TORTURE_LW_STEP:-1} first=${TORTURE_LW_FIRST:-1}
	# TORTURE_LW_THREADS=2 with 2 shards: each event loop owns one shard, so the two sync
	# groups' commits share device flushes across threads (docs/wal-format.md "Shared flush")
	local flags=(--shards "$shards" --threads "${TORTURE_LW_THREADS:-1}" --segment-bytes 65536)
	# TORTURE_LW_PREFILL_KB: a prefill well below the segment size, so the appender zero-fills
	# ahead several times per segment and the prefill thread's syncs are among the crash points
	[ -n "${TORTURE_LW_PREFILL_KB:-}" ] && flags+=(--wal-prefill-kb "$TORTURE_LW_PREFILL_KB")
	local pflags=(--producers 1 --batch 50 --window 1 --events "$events" --quiet --drain-timeout-s 60)
	local ops=${TORTURE_LW_OPS:-}
	if [ -z "$ops" ]; then
		local dir=$WORK/lw-trace
		mkdir -p "$dir"
		LD_PRELOAD=$SHIM TORTURE_FAULT_DIR=$dir/data/wal TORTURE_FAULT_MODE=trace \
			TORTURE_FAULT_LOG=$dir/ops start_tallyd "$dir" "${flags[@]}" || fail "trace start"
		"$BIN/torture_producer" --port-file "$dir/port" --ledger "$dir/ledger" "${pflags[@]}" \
			>/dev/null 2>&1 || fail "trace producer"
		kill -TERM "$TPID"; wait "$TPID"; TPID=
		ops=$(wc -l <"$dir/ops")
		cp "$dir/ops" "$WORK/lw-trace.ops"
		echo "lostwrites: workload = $events events, $shards shard(s): $ops I/O ops ($(grep -c pwrite "$dir/ops") pwrite, $(grep -c fdatasync "$dir/ops") fdatasync, $(grep -c 'create' "$dir/ops") create, rolls: $(grep -c 'create .*[1-9][0-9]*\.log' "$dir/ops"))"
		[ "$KEEP" = 1 ] || rm -rf "$dir"
	fi
	local crashed=0 points=0 n at_risk=0 pre
	local list
	if [ -n "${TORTURE_LW_POINTS:-}" ]; then
		list=$TORTURE_LW_POINTS
	elif [ "${TORTURE_LW_SHORT:-0}" = 1 ]; then
		# the short sweep (make test): the first group commits and every op around the first roll
		local roll
		roll=$(grep -n 'create .*[1-9][0-9]*\.log' "$WORK/lw-trace.ops" | head -1 | cut -d: -f1)
		list="$(seq -s' ' 13 20) $(seq -s' ' $((roll - 3)) $((roll + 5)))"
	else
		list=$(seq "$first" "$step" "$ops")
	fi
	for n in $list; do
		pre=0
		local dir=$WORK/lw-$n
		mkdir -p "$dir"
		LD_PRELOAD=$SHIM TORTURE_FAULT_DIR=$dir/data/wal TORTURE_FAULT_MODE=crash \
			TORTURE_FAULT_AT=$n TORTURE_FAULT_SEED=$((SEED * 100003 + n)) \
			TORTURE_FAULT_LOG=$dir/faults start_tallyd "$dir" "${flags[@]}"
		if [ -z "$TPID" ]; then
			# crashed while creating the data directory, before listening
			crashed=$((crashed + 1))
			start_tallyd "$dir" "${flags[@]}" || fail "lostwrites op $n: restart ($dir/tallyd.log)"
		fi
		"$BIN/torture_producer" --port-file "$dir/port" --ledger "$dir/ledger" "${pflags[@]}" \
			>"$dir/producer.out" 2>"$dir/producer.err" &
		PPID_=$!
		if [ "$(wait_either)" = tallyd ]; then
			wait "$TPID" 2>/dev/null
			local st=$?
			TPID=
			[ "$st" = 137 ] || fail "lostwrites op $n: tallyd exit $st, expected the simulated crash"
			crashed=$((crashed + 1))
			pre=$(cat "$dir"/ledger/*.txt | grep -vc '^#')
			at_risk=$((at_risk + pre))
			if [ -n "${TORTURE_LW_RECOVERY_AT:-}" ]; then
				# a second power loss at op R of the restart: during recovery itself
				LD_PRELOAD=$SHIM TORTURE_FAULT_DIR=$dir/data/wal TORTURE_FAULT_MODE=crash \
					TORTURE_FAULT_AT=$TORTURE_LW_RECOVERY_AT TORTURE_FAULT_SEED=$((SEED * 7919 + n)) \
					TORTURE_FAULT_LOG=$dir/faults start_tallyd "$dir" "${flags[@]}"
				if [ -n "$TPID" ]; then
					if [ "$(wait_either)" = tallyd ]; then
						wait "$TPID" 2>/dev/null
						TPID=
					else
						fail "lostwrites op $n: producer ended during the recovery crash run"
					fi
				fi
			fi
			start_tallyd "$dir" "${flags[@]}" || fail "lostwrites op $n: restart after crash ($dir/tallyd.log)"
		fi
		finish_check "$dir" "lostwrites op $n"
		points=$((points + 1))
		printf 'op %d: %s | acked before the crash %s | %s\n' "$n" "$(grep -m1 'fault at' "$dir/faults" 2>/dev/null | cut -d' ' -f6-)" "${pre:-0}" "$(sed 's/.* acked=\([0-9]*\).* lost=\([0-9]*\) duplicated=\([0-9]*\).*/acked=\1 lost=\2 duplicated=\3/' <<<"$LAST_CHECK")"
		[ "$KEEP" = 1 ] || rm -rf "$dir"
	done
	echo "lostwrites RESULT: points=$points crashed=$crashed acked_before_crash=$at_risk acked=$TOT_ACKED lost=$TOT_LOST duplicated=$TOT_DUP"
}

# I/O faults on the whole broker (TORTURE_FAULT_RUNS runs of each, fault op chosen by the seed).
run_faults() {
	TOT_ACKED=0 TOT_LOST=0 TOT_DUP=0
	find_shim
	local runs=${TORTURE_FAULT_RUNS:-3} r
	local flags=(--shards 4 --threads 2)
	local pflags=(--producers 3 --batch 64 --window 4 --quiet --drain-timeout-s 60)
	for ((r = 0; r < runs; r++)); do
		# 1. EIO on fdatasync, the unsynced pages dropped: tallyd must exit non-zero by itself.
		# (syncs 1..~12 create the data directory: a failure there is a refused start)
		rand 60
		local at=$((15 + R)) dir=$WORK/fsync-$r
		mkdir -p "$dir"
		LD_PRELOAD=$SHIM TORTURE_FAULT_DIR=$dir/data/wal TORTURE_FAULT_OP=fdatasync \
			TORTURE_FAULT_AT=$at TORTURE_FAULT_DROP=1 TORTURE_FAULT_LOG=$dir/faults \
			start_tallyd "$dir" "${flags[@]}" || fail "fsync-eio #$r start (sync #$at failed during creation?)"
		"$BIN/torture_producer" --port-file "$dir/port" --ledger "$dir/ledger" "${pflags[@]}" \
			--stop-file "$dir/stop" >"$dir/producer.out" 2>"$dir/producer.err" &
		PPID_=$!
		local t0=$SECONDS
		while kill -0 "$TPID" 2>/dev/null && [ $((SECONDS - t0)) -lt 30 ]; do sleep 0.05; done
		kill -0 "$TPID" 2>/dev/null && fail "fsync-eio #$r: tallyd still running 30 s after fdatasync #$at failed"
		wait "$TPID"
		local st=$?
		TPID=
		{ [ "$st" != 0 ] && [ "$st" -lt 128 ]; } || fail "fsync-eio #$r: tallyd exit status $st (want non-zero exit)"
		start_tallyd "$dir" "${flags[@]}" || fail "fsync-eio #$r: restart ($dir/tallyd.log)"
		sleep 0.5
		finish_check "$dir" "fsync-eio #$r"
		echo "fsync EIO at fdatasync #$at: tallyd exit $st; $LAST_CHECK"
		[ "$KEEP" = 1 ] || rm -rf "$dir"
		# 2. ENOSPC, EIO, then short writes on 30 pwrites in a row: retryable errors (none for
		#    short writes, which the WAL completes), tallyd stays up.
		local e
		for e in ENOSPC EIO SHORT; do
			rand 60
			at=$((5 + R))
			dir=$WORK/write-$e-$r
			mkdir -p "$dir"
			LD_PRELOAD=$SHIM TORTURE_FAULT_DIR=$dir/data/wal TORTURE_FAULT_OP=pwrite \
				TORTURE_FAULT_AT=$at TORTURE_FAULT_COUNT=30 TORTURE_FAULT_ERRNO=$e \
				TORTURE_FAULT_LOG=$dir/faults start_tallyd "$dir" "${flags[@]}" || fail "write-$e start"
			"$BIN/torture_producer" --port-file "$dir/port" --ledger "$dir/ledger" "${pflags[@]}" \
				--duration-s 3 >"$dir/producer.out" 2>"$dir/producer.err" &
			PPID_=$!
			wait "$PPID_"
			local prc=$?
			PPID_=
			kill -0 "$TPID" 2>/dev/null || fail "write-$e #$r: tallyd died ($dir/tallyd.log)"
			[ "$prc" = 0 ] || fail "write-$e #$r: producer exit $prc"
			local errs
			errs=$(sed -n 's/.*server_errors=\([0-9]*\).*/\1/p' "$dir/producer.out")
			[ "$e" = SHORT ] || [ "${errs:-0}" -gt 0 ] || fail "write-$e #$r: no retryable error reached the clients ($(grep -c fault "$dir/faults" 2>/dev/null) faults injected)"
			# the producer has drained: restart it (new tag) to see writing resumes
			"$BIN/torture_producer" --port-file "$dir/port" --ledger "$dir/ledger" --tag r \
				--producers 1 --events 1000 --quiet >"$dir/producer2.out" 2>&1 ||
				fail "write-$e #$r: writing did not resume"
			PPID_=$(sh -c 'echo $$') # nothing left to drain
			touch "$dir/stop"
			kill -TERM "$TPID"; wait "$TPID"; local trc=$?; TPID=; PPID_=
			[ "$trc" = 0 ] || fail "write-$e #$r: tallyd exit $trc on SIGTERM"
			local out
			out=$("$BIN/torture_check" --data "$dir/data" --ledger "$dir/ledger" --no-foreign 2>"$dir/check.err")
			local crc=$?
			add_check "$out"
			[ "$crc" = 0 ] || { echo "$out"; head "$dir/check.err"; fail "write-$e #$r: check"; }
			echo "write $e x30 from pwrite #$at: server errors seen by clients=$errs; $out"
			[ "$KEEP" = 1 ] || rm -rf "$dir"
		done
	done
	echo "faults RESULT: runs=$runs acked=$TOT_ACKED lost=$TOT_LOST duplicated=$TOT_DUP"
}

# Self-test: a disk that loses even synced writes must make the checker report lost events.
run_selftest() {
	find_shim
	local dir=$WORK/selftest n=${TORTURE_SELFTEST_OP:-100}
	mkdir -p "$dir"
	LD_PRELOAD=$SHIM TORTURE_FAULT_DIR=$dir/data/wal TORTURE_FAULT_MODE=crash TORTURE_FAULT_EVIL=1 \
		TORTURE_FAULT_AT=$n TORTURE_FAULT_SEED=$SEED TORTURE_FAULT_LOG=$dir/faults \
		start_tallyd "$dir" --shards 1 --threads 1 --segment-bytes 65536 || fail "selftest start"
	"$BIN/torture_producer" --port-file "$dir/port" --ledger "$dir/ledger" --producers 1 \
		--batch 50 --window 1 --events 3000 --quiet >/dev/null 2>&1 &
	PPID_=$!
	[ "$(wait_either)" = tallyd ] || fail "selftest: no crash at op $n"
	wait "$TPID" 2>/dev/null
	TPID=
	start_tallyd "$dir" --shards 1 --threads 1 --segment-bytes 65536 || fail "selftest restart"
	wait "$PPID_"
	PPID_=
	kill -TERM "$TPID"; wait "$TPID"; TPID=
	local out
	out=$("$BIN/torture_check" --data "$dir/data" --ledger "$dir/ledger" --quiet)
	local rc=$?
	echo "selftest (synced writes lost at op $n): $out"
	if [ "$rc" = 1 ] && ! grep -q ' lost=0 ' <<<"$out"; then
		echo "selftest RESULT: the checker caught the loss (expected)"
	else
		fail "selftest: a disk losing synced writes went unnoticed"
	fi
}

# tally-rate under kill -9 with periods closing during the run (docs/reliability.md).
# Periods of TORTURE_RATE_PERIOD seconds (default 2) with TORTURE_RATE_GRACE s of grace
# (default 1), so invoices are written all the time. Producers (TORTURE_RATE, default 2000
# events/s each) feed tallyd; as an event's time is base + seq µs, a new producer generation
# (tag g<n>, base = now) starts every TORTURE_RATE_GEN_MS (default 1500) while the previous
# one drains, so event times follow the clock: a few % of the events arrive after their
# period's grace (late, billed as adjustments), more around tallyd kills. tally-rate tails the
# WAL and is SIGKILLed TORTURE_CYCLES times: odd cycles at a random moment (0.1 s to MAX_MS),
# even cycles at a period close (within ms of a new invoice file or its .tmp appearing, plus
# 0..TORTURE_RATE_JITTER_MS, default 80); tallyd is SIGKILLed too every 4th cycle. $dir/kills
# says of each kill its kind and whether it landed at a close (an invoice .tmp left, a period
# half written, or an invoice written within TORTURE_RATE_NEAR_MS, default 20, before it).
# Every invoice file is hashed after each kill: a file tally-rate rewrites after a restart
# must keep its bytes. At the end producers drain, tallyd idles until every period with
# events is due, tally-rate catches up (--once) and must equal a from-scratch re-rating byte
# for byte (usage.json, late_arrivals.json, unbilled.json, every invoice), and the invoice
# files alone must hold per customer the ledger's event count, token sum and fingerprint
# digest (torture_check --rated --all-closed).
RATE_GENS=()  # producer generations told to stop (draining)
RATE_GEN=0    # the current generation; its pid is PPID_
RATE_GEN_NEXT_US=0
RATE_RPID=    # tally-rate
RATE_SLEEPFD= # a pipe nobody writes: `read -t` on it sleeps without a fork
rate_cleanup() {
	local p
	[ -n "$RATE_RPID" ] && kill -KILL "$RATE_RPID" 2>/dev/null
	[ -n "$PPID_" ] && kill -KILL "$PPID_" 2>/dev/null
	for p in "${RATE_GENS[@]}"; do kill -KILL "$p" 2>/dev/null; done
	PPID_=
	return 0
}

# rate_gen DIR: starts the next producer generation if the current one is TORTURE_RATE_GEN_MS
# old (or there is none); the previous one is told to stop and drains.
rate_gen() {
	local dir=$1 now=${EPOCHREALTIME/./}
	[ -n "$PPID_" ] && [ "$now" -lt "$RATE_GEN_NEXT_US" ] && return 0
	if [ -n "$PPID_" ]; then
		touch "$dir/gen/stop-$RATE_GEN"
		RATE_GENS+=("$PPID_")
	fi
	RATE_GEN=$((RATE_GEN + 1))
	"$BIN/torture_producer" --port-file "$dir/port" --ledger "$dir/ledger" --tag "g$RATE_GEN" \
		--producers "$PRODUCERS" --batch 64 --window 4 --rate "$RATE_EVS" \
		--stop-file "$dir/gen/stop-$RATE_GEN" --base-us "$now" --quiet \
		>"$dir/gen/$RATE_GEN.out" 2>"$dir/gen/$RATE_GEN.err" &
	PPID_=$!
	RATE_GEN_NEXT_US=$((now + RATE_GEN_MS * 1000))
}

# rate_msleep MS DIR: sleeps (no fork), starting producer generations when due.
rate_msleep() {
	local end=$((${EPOCHREALTIME/./} + $1 * 1000)) left
	while :; do
		rate_gen "$2"
		left=$(((end - ${EPOCHREALTIME/./}) / 1000))
		[ "$left" -gt 0 ] || return 0
		[ "$left" -gt 100 ] && left=100
		read -r -t "$(printf '0.%03d' "$left")" -u "$RATE_SLEEPFD"
	done
}

# rate_pname S: sets PN to the invoice file name stem of the period starting at S (Unix s).
rate_pname() { printf -v PN '%(%Y%m%dT%H%M%SZ)T' "$1"; }

# rate_scan OUT: moves RATE_LASTP to the start of the latest period (up to now) with an
# invoice file or .tmp of any customer; returns 0 if it moved, else 1. Sets SEEN to one such
# file. Periods with no invoice (before the first one) are skipped.
rate_scan() {
	local p=$((RATE_LASTP + RATE_PERIOD)) hits rc=1
	while [ "$p" -le "$EPOCHSECONDS" ]; do
		rate_pname "$p"
		hits=("$1"/invoices/*/"$PN".json.tmp "$1"/invoices/*/"$PN".json)
		if [ ${#hits[@]} -gt 0 ]; then
			RATE_LASTP=$p
			SEEN=${hits[0]#"$1"/invoices/}
			rc=0
		fi
		p=$((p + RATE_PERIOD))
	done
	return $rc
}

# rate_wait_close DIR TIMEOUT_S: waits (2 ms polls) until an invoice of a period after
# RATE_LASTP (file or .tmp, any customer) appears in DIR/out; sets SEEN (the file) and SEEN_US.
# Returns 1 on timeout, 2 if tally-rate exited.
rate_wait_close() {
	local out=$1/out deadline=$((SECONDS + $2))
	rate_scan "$out"
	while :; do
		if rate_scan "$out"; then
			SEEN_US=${EPOCHREALTIME/./}
			return 0
		fi
		kill -0 "$RATE_RPID" 2>/dev/null || return 2
		[ "$SECONDS" -lt "$deadline" ] || return 1
		rate_gen "$1"
		read -r -t 0.002 -u "$RATE_SLEEPFD"
	done
}

# rate_landed OUT KILL_US: after a kill, sets LANDED (a description), MID_WRITE (an invoice
# .tmp left), HALF_CLOSED (the latest period has invoices of some customers only) and
# AT_CLOSE (either, or an invoice written within RATE_NEAR_MS before the kill), each 0/1.
rate_landed() {
	local out=$1 kus=$2 tmps newest age_ms written ncust
	tmps=$(find "$out/invoices" -name '*.tmp' 2>/dev/null | wc -l)
	newest=$(find "$out/invoices" -name '*.json' -newermt "@$((kus / 1000000 - 3))" \
		-printf '%T@\n' 2>/dev/null | sort -n | tail -1)
	age_ms=none
	if [ -n "$newest" ]; then
		newest=${newest%????}     # %T@ has 10 fractional digits: keep µs
		age_ms=$(((kus - ${newest/./}) / 1000))
	fi
	rate_scan "$out"
	rate_pname "$RATE_LASTP"
	written=("$out"/invoices/*/"$PN".json)
	ncust=("$out"/invoices/*/)
	AT_CLOSE=0 MID_WRITE=0 HALF_CLOSED=0
	[ "$tmps" -gt 0 ] && MID_WRITE=1
	[ ${#written[@]} -gt 0 ] && [ ${#written[@]} -lt ${#ncust[@]} ] && HALF_CLOSED=1
	if [ "$MID_WRITE" = 1 ] || [ "$HALF_CLOSED" = 1 ] ||
		{ [ "$age_ms" != none ] && [ "$age_ms" -le "$RATE_NEAR_MS" ]; }; then
		AT_CLOSE=1
	fi
	LANDED="newest_invoice_age_ms=$age_ms tmp_left=$tmps period=$PN written=${#written[@]}/${#ncust[@]} at_close=$AT_CLOSE"
}

# rate_hash OUT LOG [all]: appends "path version sha1" of each invoice file written since the
# mark (or all); the mark then moves to 1 s ago (file times are coarse; rehashing is harmless).
rate_hash() {
	local out=$1 log=$2 newer=()
	[ "${3:-}" = all ] || newer=(-newer "$out/../hmark")
	[ -d "$out/invoices" ] || return 0
	find "$out/invoices" -type f -name '*.json' "${newer[@]}" -printf '%p %i:%C@\n' |
		LC_ALL=C sort >"$log.v"
	cut -d' ' -f1 "$log.v" | xargs -r sha1sum | awk '{ print $2, $1 }' | LC_ALL=C sort >"$log.h"
	LC_ALL=C join "$log.v" "$log.h" >>"$log"
	rm -f "$log.v" "$log.h"
	touch -d "@$((EPOCHSECONDS - 1))" "$out/../hmark"
}

run_rate() {
	TOT_ACKED=0 TOT_LOST=0 TOT_DUP=0
	[ -x "$BIN/tally-rate" ] || { echo "SKIP: $BIN/tally-rate is not built"; exit 77; }
	local dir=$WORK/rate c
	local period=${TORTURE_RATE_PERIOD:-2} grace=${TORTURE_RATE_GRACE:-1}
	local jitter=${TORTURE_RATE_JITTER_MS:-80}
	RATE_NEAR_MS=${TORTURE_RATE_NEAR_MS:-20}
	RATE_GEN_MS=${TORTURE_RATE_GEN_MS:-1500}
	RATE_PERIOD=$period
	export TZ=UTC
	exec {RATE_SLEEPFD}<> <(:)
	trap 'rate_cleanup; cleanup' EXIT
	mkdir -p "$dir/gen"
	cat >"$dir/rate.json" <<JSON
{"currency": "USD", "period": {"seconds": $period}, "grace_seconds": $grace,
 "meters": [{"id": "events", "event_name": "ai.tokens", "aggregation": "count"},
            {"id": "tokens", "event_name": "ai.tokens", "aggregation": "sum", "property": "tokens"}],
 "plans": [{"id": "p", "base_fee": "1.00", "prices": [
   {"meter": "events", "model": "graduated", "tiers": [{"up_to": 100, "unit_price": "0.001"},
                                                      {"up_to": null, "unit_price": "0.0005"}]},
   {"meter": "tokens", "model": "per_unit", "unit_price": "0.000001"}]}],
 "customers": [{"id": "cus_0_0", "credits": [{"amount": "100.00", "expires": null, "priority": 1}]},
               {"id": "cus_1_1", "credits": [{"amount": "20.00", "expires": null, "priority": 1},
                                             {"amount": "500.00", "expires": null, "priority": 2}]}],
 "default_plan": "p"}
JSON
	RATE_EVS=${TORTURE_RATE:-0}
	[ "$RATE_EVS" = 0 ] && RATE_EVS=2000
	local t0=$SECONDS
	echo "rate: cycles=$CYCLES seed=$SEED producers=$PRODUCERS rate=$RATE_EVS/s each period=${period}s grace=${grace}s generation=${RATE_GEN_MS}ms max_ms=$MAX_MS"
	RATE_LASTP=$(((EPOCHSECONDS / period - 1) * period))
	start_tallyd "$dir" || fail "rate: tallyd start"
	touch -d "@$((EPOCHSECONDS - 1))" "$dir/hmark"
	local rkills=0 tkills=0 random=0 aimed=0 timeouts=0 near_random=0 near_aimed=0
	local mid_write=0 half_closed=0
	for c in $(seq 1 "$CYCLES"); do
		rate_gen "$dir"
		"$BIN/tally-rate" --config "$dir/rate.json" --data "$dir/data" --out "$dir/out" \
			--checkpoint-ms 20 >>"$dir/rate.log" 2>&1 &
		RATE_RPID=$!
		local start_us=${EPOCHREALTIME/./} kind what=
		if [ $((c % 2)) = 1 ]; then
			kind=random
			rand $((MAX_MS - 99))
			rate_msleep $((100 + R)) "$dir"
			kill -0 "$RATE_RPID" 2>/dev/null ||
				{ wait "$RATE_RPID"; fail "rate: tally-rate exited by itself (status $?, $dir/rate.log)"; }
		else
			kind=close
			shopt -s nullglob
			rate_wait_close "$dir" $((period + grace + 15))
			local wrc=$?
			shopt -u nullglob
			[ "$wrc" = 2 ] && { wait "$RATE_RPID"; fail "rate: tally-rate exited by itself (status $?, $dir/rate.log)"; }
			if [ "$wrc" = 1 ]; then
				kind=close-timeout
				timeouts=$((timeouts + 1))
			else
				rand $((jitter + 1))
				[ "$R" -gt 0 ] && rate_msleep "$R" "$dir"
				what=" saw=$SEEN after_ms=$(((SEEN_US - start_us) / 1000)) jitter_ms=$R"
			fi
		fi
		local kill_us=${EPOCHREALTIME/./}
		kill -KILL "$RATE_RPID"
		wait "$RATE_RPID" 2>/dev/null
		RATE_RPID=
		[ "$kind" = close ] && what="$what kill_after_seen_us=$((kill_us - SEEN_US))"
		rkills=$((rkills + 1))
		shopt -s nullglob
		rate_landed "$dir/out" "$kill_us"
		shopt -u nullglob
		mid_write=$((mid_write + MID_WRITE))
		half_closed=$((half_closed + HALF_CLOSED))
		case $kind in
		random) random=$((random + 1)) near_random=$((near_random + AT_CLOSE)) ;;
		close) aimed=$((aimed + 1)) near_aimed=$((near_aimed + AT_CLOSE)) ;;
		esac
		echo "cycle $c: kill -9 tally-rate kind=$kind after_ms=$(((kill_us - start_us) / 1000))$what | $LANDED" >>"$dir/kills"
		rate_hash "$dir/out" "$dir/hashes"
		if [ $((c % 4)) = 0 ]; then
			kill -KILL "$TPID"
			wait "$TPID" 2>/dev/null
			TPID=
			tkills=$((tkills + 1))
			echo "cycle $c: kill -9 tallyd" >>"$dir/kills"
			start_tallyd "$dir" || fail "rate: tallyd restart"
		fi
	done
	touch "$dir/gen/stop-$RATE_GEN"
	RATE_GENS+=("$PPID_")
	PPID_=
	local p
	for p in "${RATE_GENS[@]}"; do
		wait "$p" || fail "rate: a producer generation did not drain (exit $?, $dir/gen/*.err)"
	done
	RATE_GENS=()
	# idle until every period with events is due: tallyd writes a tick per idle second
	sleep $((period + grace + 3))
	kill -TERM "$TPID"
	wait "$TPID"
	TPID=
	"$BIN/tally-rate" --config "$dir/rate.json" --data "$dir/data" --out "$dir/out" --once \
		>>"$dir/rate.log" 2>&1 || fail "rate: catch-up run failed ($dir/rate.log)"
	rate_hash "$dir/out" "$dir/hashes" all
	"$BIN/tally-rate" --config "$dir/rate.json" --data "$dir/data" --out "$dir/ref" --once \
		--from-scratch --no-fsync >>"$dir/rate.log" 2>&1 || fail "rate: from-scratch run failed"
	local f
	for f in usage.json late_arrivals.json unbilled.json; do
		cmp -s "$dir/out/$f" "$dir/ref/$f" || fail "rate: $f differs from a from-scratch re-rating ($dir)"
	done
	[ -d "$dir/ref/invoices" ] || fail "rate: no invoice was written ($dir)"
	diff -r "$dir/out/invoices" "$dir/ref/invoices" >"$dir/invoices.diff" ||
		fail "rate: invoices differ from a from-scratch re-rating ($dir/invoices.diff)"
	# every version of an invoice file seen during the run has the final bytes
	local changed nfiles versions
	changed=$(awk '{ print $1, $3 }' "$dir/hashes" | LC_ALL=C sort -u | awk '{ print $1 }' | uniq -d)
	[ -z "$changed" ] || fail "rate: invoices rewritten with other bytes: $(head -3 <<<"$changed")"
	nfiles=$(awk '{ print $1 }' "$dir/hashes" | LC_ALL=C sort -u | wc -l)
	versions=$(awk '{ print $1, $2 }' "$dir/hashes" | LC_ALL=C sort -u | wc -l)
	local out
	out=$("$BIN/torture_check" --data "$dir/data" --ledger "$dir/ledger" --no-foreign \
		--rated "$dir/out" --all-closed 2>"$dir/check.err")
	local crc=$?
	add_check "$out"
	echo "rate: $rkills kill -9 of tally-rate ($random random, $aimed at a close, $timeouts waits for a close timed out), $tkills of tallyd, $RATE_GEN producer generations; $(grep -o '[0-9]* events (.*' "$dir/rate.log" | tail -1)"
	echo "rate: $out"
	[ "$crc" = 0 ] || { head -20 "$dir/check.err"; fail "rate: check ($dir)"; }
	echo "rate RESULT: rate_kills=$rkills at_close=$((near_random + near_aimed)) (aimed $near_aimed/$aimed, random $near_random/$random; $half_closed with a period half written, $mid_write during an invoice write) tallyd_kills=$tkills invoices=$nfiles rewritten_identical=$((versions - nfiles)) acked=$TOT_ACKED lost=$TOT_LOST duplicated=$TOT_DUP rated=identical seconds=$((SECONDS - t0))"
}

run_kill9() {
	TOT_ACKED=0 TOT_LOST=0 TOT_DUP=0
	local done_cycles=0 epoch=0
	echo "kill9: cycles=$CYCLES seed=$SEED epoch=$EPOCH rate=$RATE producers=$PRODUCERS bin=$BIN"
	while [ "$done_cycles" -lt "$CYCLES" ]; do
		local dir=$WORK/kill9-$epoch n=$EPOCH
		[ $((CYCLES - done_cycles)) -lt "$n" ] && n=$((CYCLES - done_cycles))
		mkdir -p "$dir"
		start_tallyd "$dir" || fail "tallyd start ($dir)"
		"$BIN/torture_producer" --port-file "$dir/port" --ledger "$dir/ledger" \
			--tag "k$epoch" --producers "$PRODUCERS" --batch 64 --window 4 \
			--rate "$RATE" --stop-file "$dir/stop" --quiet >"$dir/producer.out" \
			2>"$dir/producer.err" &
		PPID_=$!
		for c in $(seq 1 "$n"); do
			rand $((MAX_MS - 99))
			local ms=$((100 + R))
			echo "cycle $((done_cycles + c)): kill -9 after $ms ms" >>"$dir/kills"
			sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
			kill -KILL "$TPID"
			wait "$TPID" 2>/dev/null
			TPID=
			TOT_KILLS=$((TOT_KILLS + 1))
			start_tallyd "$dir" || fail "restart after kill -9 #$((done_cycles + c)) ($dir/tallyd.log)"
		done
		touch "$dir/stop"
		wait "$PPID_"
		local prc=$?
		PPID_=
		cat "$dir/producer.out"
		[ "$prc" = 0 ] || fail "producer exit $prc ($dir/producer.err)"
		kill -TERM "$TPID"
		wait "$TPID"
		local trc=$?
		TPID=
		[ "$trc" = 0 ] || fail "tallyd exit $trc on SIGTERM"
		local out
		out=$("$BIN/torture_check" --data "$dir/data" --ledger "$dir/ledger" --no-foreign 2>"$dir/check.err")
		local crc=$?
		local ready
		ready=$(grep -o 'ready in [0-9]* ms' "$dir/tallyd.log" | awk '$3 > m { m = $3 } END { print m + 0 }')
		echo "epoch $epoch ($n kills, slowest restart ${ready} ms): $out"
		add_check "$out"
		[ "$crc" = 0 ] || { head -20 "$dir/check.err"; fail "check ($dir)"; }
		[ "$KEEP" = 1 ] || rm -rf "$dir"
		done_cycles=$((done_cycles + n))
		epoch=$((epoch + 1))
	done
	echo "kill9 RESULT: kills=$TOT_KILLS acked=$TOT_ACKED lost=$TOT_LOST duplicated=$TOT_DUP"
}

case "${1:-kill9}" in
kill9) run_kill9 ;;
lostwrites) run_lostwrites ;;
faults) run_faults ;;
selftest) run_selftest ;;
rate) run_rate ;;
abuse) "$BIN/torture_abuse" ;;
all)
	run_selftest && run_kill9 && run_lostwrites && run_faults && { [ ! -x "$BIN/tally-rate" ] || run_rate; } && { [ ! -x "$BIN/torture_abuse" ] || "$BIN/torture_abuse"; }
	;;
*)
	echo "usage: run.sh kill9|lostwrites|faults|abuse|selftest|rate|all"
	exit 1
	;;
esac
