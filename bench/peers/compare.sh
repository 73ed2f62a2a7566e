#!/usr/bin/env bash
# bench/peers/compare.sh — tally against NATS JetStream, Redis Streams and PostgreSQL on the same
# generated events, all measured in the same run (docs/benchmarks.md, "Peers").
#
# usage: bench/peers/compare.sh [BIN_DIR] [--events N] [--runs R] [--systems "a b"] [--out FILE]
#   BIN_DIR   where tallyd, tally-bench and peer-{nats,redis,pg} are (default build-release/bin)
#   --events  events per system per run (default 300000)
#   --runs    runs of the whole comparison; the table gives per-cell medians (default 3)
#   --systems subset of: tally tally-interval nats redis-always redis-everysec pg (default: all)
#   --out     also write the markdown report to FILE
#
# Each system is started from the distribution's packages on 127.0.0.1 (free ports) in a fresh
# directory under one temp dir, driven by its driver with the same seed, event count, body size
# (150 bytes), dup-rate (10 %), connections (4) and batch (100, one batch in flight per
# connection), then stopped; the temp dir is removed at the end (KEEP=1 keeps it).
# A system whose server binary or driver is missing is skipped with a message.
#
# Measured per system: events/s and p99 ack latency (the driver's, one sample per batch), bytes
# on disk per stored event (allocated size of its data dir after a clean stop, minus the size
# before the load, divided by the unique events), fsync+fdatasync calls and CPU time of the
# server's process tree while the load ran (perf stat: syscall tracepoints and task-clock, when
# perf works here), and
# whether the stored count equals the unique count (tally: tally-bench --verify-wal; with
# --fsync interval: durable records after a clean stop, from `tally wal stats`).
# Exit status: 0 all ok, 1 a run failed or a stored count was wrong, 2 usage, 77 nothing to run.
set -u

BIN=build-release/bin
EVENTS=300000
RUNS=3
SYSTEMS="tally tally-interval nats redis-always redis-everysec pg"
OUT=""
CONNS=4
BATCH=100
DUP=0.1
PAYLOAD=150
SEED=42

while [ $# -gt 0 ]; do
	case "$1" in
	--events) EVENTS=$2; shift 2 ;;
	--runs) RUNS=$2; shift 2 ;;
	--systems) SYSTEMS=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--help|-h) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
	-*) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
	*) BIN=$1; shift ;;
	esac
done
BIN=$(cd "$BIN" 2>/dev/null && pwd) || { echo "compare.sh: no such bin dir" >&2; exit 2; }

log() { echo "compare: $*" >&2; }
now_ms() { date +%s%3N; }

ROOT=$(mktemp -d /tmp/tally-compare.XXXXXX)
chmod 755 "$ROOT" # the PostgreSQL server runs as another user and must reach its data dir
RESULTS=$ROOT/results.tsv
: >"$RESULTS"
SERVER_PID=""    # what we wait for (perf, or the server itself)
SERVER_REAL=""   # the server process we signal
cleanup() {
	if [ -n "$SERVER_REAL" ]; then kill -TERM "$SERVER_REAL" 2>/dev/null; fi
	if [ -n "$SERVER_PID" ]; then wait "$SERVER_PID" 2>/dev/null; fi
	if [ "${KEEP:-0}" = 1 ]; then log "kept $ROOT"; else rm -rf "$ROOT"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ tools and ports

PGBIN=""
for d in "$(pg_config --bindir 2>/dev/null)" /usr/lib/postgresql/*/bin; do
	if [ -n "$d" ] && [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then PGBIN=$d; break; fi
done

have() {
	case "$1" in
	tally) [ -x "$BIN/tallyd" ] && [ -x "$BIN/tally-bench" ] ;;
	tally-interval) [ -x "$BIN/tallyd" ] && [ -x "$BIN/tally-bench" ] && [ -x "$BIN/tally" ] ;;
	nats) command -v nats-server >/dev/null && [ -x "$BIN/peer-nats" ] ;;
	redis-*) command -v redis-server >/dev/null && [ -x "$BIN/peer-redis" ] ;;
	pg) [ -n "$PGBIN" ] && [ -x "$BIN/peer-pg" ] ;;
	*) return 1 ;;
	esac
}

PERF_EVENTS="task-clock,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync"
PERF_OK=0
if command -v perf >/dev/null && perf stat -e "$PERF_EVENTS" -x, -o /dev/null -- true 2>/dev/null; then
	PERF_OK=1
else
	log "perf cannot count syscalls here: fsync calls and server CPU will not be measured"
fi

NEXT_PORT=$((20000 + $$ % 20000))
free_port() {
	local p=$NEXT_PORT
	while ss -ltnH "sport = :$p" 2>/dev/null | grep -q .; do p=$((p + 1)); done
	NEXT_PORT=$((p + 1))
	echo "$p"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_ready SECONDS CMD...: until CMD succeeds
wait_ready() {
	local n=$(($1 * 10)); shift
	while [ $n -gt 0 ]; do
		if "$@"; then return 0; fi
		sleep 0.1; n=$((n - 1))
	done
	return 1
}

# start_server DIR CMD...: runs CMD (under perf stat counting CPU time and sync syscalls of the
# whole process tree, every 100 ms, when possible).
start_server() {
	local dir=$1; shift
	SERVER_T0=$(now_ms)
	if [ $PERF_OK = 1 ]; then
		perf stat -e "$PERF_EVENTS" -I 100 -x, -o "$dir/perf.csv" -- "$@" >"$dir/server.log" 2>&1 &
	else
		"$@" >"$dir/server.log" 2>&1 &
	fi
	SERVER_PID=$!
	SERVER_REAL=$SERVER_PID
}

# The server process under perf (its direct child), for the signals.
server_child() {
	if [ $PERF_OK = 1 ]; then
		local c n=50
		while [ $n -gt 0 ]; do
			c=$(pgrep -P "$SERVER_PID" | head -1)
			if [ -n "$c" ]; then SERVER_REAL=$c; return 0; fi
			sleep 0.1; n=$((n - 1))
		done
	fi
}

stop_server() {
	if [ -n "$SERVER_REAL" ]; then kill -TERM "$SERVER_REAL" 2>/dev/null; fi
	wait "$SERVER_PID" 2>/dev/null
	SERVER_PID=""; SERVER_REAL=""
}

# perf_sum DIR T1 T2 EVENT_REGEX: sum of the counts of the matching events in the 100 ms
# intervals that overlap wall-clock ms [T1, T2] (task-clock is in ms of CPU)
perf_sum() {
	[ -s "$1/perf.csv" ] || { echo "-"; return; }
	awk -F, -v a="$(( $2 - SERVER_T0 ))" -v b="$(( $3 - SERVER_T0 ))" -v ev="$4" '
		/^#/ || NF < 4 { next }
		$4 ~ ev { t = $1 * 1000; if (t > a && t - 100 < b && $2 ~ /^[0-9.]+$/) s += $2 }
		END { printf "%d\n", s + 0.5 }' "$1/perf.csv"
}

du_bytes() { du -s -B1 "$1" 2>/dev/null | awk '{print $1}'; }

# jnum JSON KEY: first numeric value of "KEY" in JSON (flat keys only)
jnum() { printf '%s' "$1" | grep -o "\"$2\":[0-9]*" | head -1 | cut -d: -f2; }
# jlat JSON KEY: KEY inside the first "latency_us" object
jlat() { printf '%s' "$1" | sed -n 's/.*"latency_us":{\([^}]*\)}.*/\1/p' | head -1 |
	grep -o "\"$2\":[0-9]*" | cut -d: -f2; }

BASE_US=$(date +%s%6N) # one time base for every run: identical event bodies everywhere
COMMON=(--events "$EVENTS" --connections "$CONNS" --batch "$BATCH" --dup-rate "$DUP"
	--payload-bytes "$PAYLOAD" --seed "$SEED" --base-time-us "$BASE_US")

# record RUN SYSTEM JSON DIR T1 T2 DU0 DU1 CHECK
record() {
	local json=$3 eps p99 uniq syncs batches
	eps=$(jnum "$json" events_per_s); p99=$(jlat "$json" p99)
	uniq=$(jnum "$json" unique); [ -n "$uniq" ] || uniq=$(jnum "$json" ACCEPTED)
	batches=$(jlat "$json" batches)
	syncs=$(perf_sum "$4" "$5" "$6" "sys_enter_f")
	local cpu
	cpu=$(perf_sum "$4" "$5" "$6" "^task-clock$")
	local bpe="-"
	if [ -n "$uniq" ] && [ "$uniq" -gt 0 ]; then bpe=$(( ($8 - $7) / uniq )); fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${eps:--}" "${p99:--}" \
		"$bpe" "$syncs" "$(( $6 - $5 ))" "${batches:-0}" "$9" "$cpu" "${uniq:-0}" >>"$RESULTS"
	log "run $1 $2: ${eps:-?} events/s, p99 ${p99:-?} us, $bpe B/event, $syncs sync calls, server CPU $cpu ms, check $9"
}

# ------------------------------------------------------------------ one system

# run_tally RUN DIR NAME [TALLYD OPTIONS...]
run_tally() {
	local r=$1 dir=$2 name=$3
	shift 3
	mkdir -p "$dir/data"
	start_server "$dir" "$BIN/tallyd" --data "$dir/data" --listen 127.0.0.1:0 \
		--port-file "$dir/port" --log-level warn "$@"
	server_child
	wait_ready 20 test -s "$dir/port" || { log "tallyd did not start"; stop_server; return 1; }
	local port du0 t1 t2 json check=ok
	port=$(cat "$dir/port"); du0=$(du_bytes "$dir/data")
	# With --fsync always every ACKed event is durable at once: --verify-wal checks the WAL
	# right after the run. With an interval the last second of ACKed events is not durable yet
	# (that is the point of the mode), so the stored count is checked after a clean stop.
	local verify=(--verify-wal "$dir/data")
	[ "$name" = tally ] || verify=(--expect)
	t1=$(now_ms)
	json=$("$BIN/tally-bench" --connect "127.0.0.1:$port" "${COMMON[@]}" --inflight 1 \
		--quiet --json "${verify[@]}" 2>"$dir/bench.err") || check=FAILED
	t2=$(now_ms)
	[ "$name" != tally ] || grep -q "verify-wal: ok" "$dir/bench.err" || check=FAILED
	stop_server
	if [ "$name" != tally ]; then
		local stored acc
		acc=$(jnum "$json" ACCEPTED)
		stored=$("$BIN/tally" wal stats --data "$dir/data" 2>/dev/null |
			sed -n 's/.*durable \([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}')
		[ -n "$acc" ] && [ "$stored" = "$acc" ] || check=FAILED
		log "run $r $name: $stored events durable in the WAL after the stop, $acc ACCEPTED"
	fi
	record "$r" "$name" "$json" "$dir" "$t1" "$t2" "$du0" "$(du_bytes "$dir/data")" "$check"
}

run_nats() {
	local r=$1 dir=$2 port
	port=$(free_port)
	mkdir -p "$dir/js"
	printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s" }\n' "$port" "$dir/js" >"$dir/nats.conf"
	start_server "$dir" nats-server -c "$dir/nats.conf"
	server_child
	wait_ready 20 port_open "$port" || { log "nats-server did not start"; stop_server; return 1; }
	local du0 t1 t2 json check=ok
	du0=$(du_bytes "$dir/js")
	t1=$(now_ms)
	json=$("$BIN/peer-nats" --target "nats://127.0.0.1:$port" "${COMMON[@]}" --json \
		2>"$dir/bench.err") || check=FAILED
	t2=$(now_ms)
	stop_server
	record "$r" nats "$json" "$dir" "$t1" "$t2" "$du0" "$(du_bytes "$dir/js")" "$check"
}

run_redis() {
	local r=$1 dir=$2 fsync=$3 port
	port=$(free_port)
	mkdir -p "$dir/data"
	start_server "$dir" redis-server --bind 127.0.0.1 --port "$port" --dir "$dir/data" \
		--appendonly yes --appendfsync "$fsync" --save '' --daemonize no \
		--protected-mode no
	server_child
	wait_ready 20 port_open "$port" || { log "redis-server did not start"; stop_server; return 1; }
	local du0 t1 t2 json check=ok
	du0=$(du_bytes "$dir/data")
	t1=$(now_ms)
	json=$("$BIN/peer-redis" --target "127.0.0.1:$port" "${COMMON[@]}" --json \
		2>"$dir/bench.err") || check=FAILED
	t2=$(now_ms)
	stop_server
	record "$r" "redis-$fsync" "$json" "$dir" "$t1" "$t2" "$du0" "$(du_bytes "$dir/data")" "$check"
}

PG_RUNAS=()
pg_prepare_user() {
	[ "$(id -u)" = 0 ] || return 0
	local u=postgres
	if ! id "$u" >/dev/null 2>&1; then
		u=tallypeer
		id "$u" >/dev/null 2>&1 ||
			useradd --system --no-create-home --shell /usr/sbin/nologin "$u" || return 1
	fi
	PG_RUNAS=(runuser -u "$u" --)
	PG_OSUSER=$u
}

run_pg() {
	local r=$1 dir=$2 port
	port=$(free_port)
	mkdir -p "$dir"
	if [ ${#PG_RUNAS[@]} -gt 0 ]; then chown "$PG_OSUSER" "$dir"; chmod 755 "$dir"; fi
	"${PG_RUNAS[@]}" "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
		>"$dir/initdb.log" 2>&1 || { log "initdb failed: see $dir/initdb.log"; return 1; }
	start_server "$dir" "${PG_RUNAS[@]}" "$PGBIN/postgres" -D "$dir/data" \
		-c listen_addresses=127.0.0.1 -p "$port" -c unix_socket_directories="$dir" \
		-c fsync=on -c synchronous_commit=on -c full_page_writes=on
	wait_ready 30 "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" ||
		{ log "postgres did not start"; stop_server; return 1; }
	SERVER_REAL=$(head -1 "$dir/data/postmaster.pid") # the postmaster: its SIGTERM is a clean stop
	local du0 t1 t2 json check=ok
	du0=$(du_bytes "$dir/data")
	t1=$(now_ms)
	json=$("$BIN/peer-pg" --target "host=127.0.0.1 port=$port dbname=postgres user=postgres" \
		"${COMMON[@]}" --json 2>"$dir/bench.err") || check=FAILED
	t2=$(now_ms)
	stop_server
	record "$r" pg "$json" "$dir" "$t1" "$t2" "$du0" "$(du_bytes "$dir/data")" "$check"
}

# ------------------------------------------------------------------ the machine

machine() {
	local dev fs rot drv lat
	dev=$(df -P "$ROOT" | awk 'NR == 2 {print $1}')
	fs=$(df -PT "$ROOT" | awk 'NR == 2 {print $2}')
	local b=${dev##*/}; b=${b%%[0-9]*}
	rot=$(cat "/sys/block/$b/queue/rotational" 2>/dev/null || echo "?")
	drv=$(basename "$(readlink -f "/sys/block/$b/device/driver" 2>/dev/null)" 2>/dev/null)
	# O_DSYNC 4 KiB overwrites of a preallocated file: one write + fdatasync each.
	dd if=/dev/zero of="$ROOT/syncprobe" bs=4096 count=256 2>/dev/null
	local t0 t1
	t0=$(date +%s%6N)
	dd if=/dev/zero of="$ROOT/syncprobe" bs=4096 count=500 oflag=dsync conv=notrunc 2>/dev/null
	t1=$(date +%s%6N)
	lat=$(( (t1 - t0) / 500 ))
	rm -f "$ROOT/syncprobe"
	echo "- CPU: $(nproc) online CPU(s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
	echo "- memory: $(free -h | awk '/^Mem:/ {print $2 " total, " $7 " available"}')"
	echo "- kernel: $(uname -sr); load average when the comparison started: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- disk: $fs on $dev (driver ${drv:-?}, rotational=$rot as the kernel reports it)"
	echo "- 4 KiB write + fdatasync (dd oflag=dsync, 500 writes): $lat µs each"
	echo "- versions: $(nats-server --version 2>/dev/null | head -1 || echo 'nats-server -'), $(redis-server --version 2>/dev/null | awk '{print $1, $3}' | sed 's/v=//'), PostgreSQL $("$PGBIN/postgres" --version 2>/dev/null | awk '{print $3}')"
}

# ------------------------------------------------------------------ main

pg_prepare_user || log "cannot create a user for postgres: pg skipped"
ACTIVE=""
for s in $SYSTEMS; do
	if have "$s"; then ACTIVE="$ACTIVE $s"; else log "$s: server or driver not found: skipped"; fi
done
[ -n "$ACTIVE" ] || { log "nothing to run"; exit 77; }

MACHINE=$(machine)
for r in $(seq 1 "$RUNS"); do
	for s in $ACTIVE; do
		d=$ROOT/run$r/$s
		mkdir -p "$d"
		case $s in
		tally) run_tally "$r" "$d" tally ;;
		tally-interval) run_tally "$r" "$d" tally-interval --fsync interval=1000 ;;
		nats) run_nats "$r" "$d" ;;
		redis-always) run_redis "$r" "$d" always ;;
		redis-everysec) run_redis "$r" "$d" everysec ;;
		pg) run_pg "$r" "$d" ;;
		esac || {
			log "run $r $s failed"
			printf '%s\t%s\t-\t-\t-\t-\t0\t0\tFAILED\t-\t0\n' "$r" "$s" >>"$RESULTS"
		}
		[ "${KEEP:-0}" = 1 ] || rm -rf "$d"
	done
done

# ------------------------------------------------------------------ report

durability() {
	case $1 in
	tally) echo "fdatasync before ACK (\`--fsync always\`, group commit per shard)" ;;
	tally-interval) echo "ACK once written (page cache); fdatasync every second (\`--fsync interval=1000\`)" ;;
	nats) echo "ACK once in the page cache; fsync on the 2-min sync interval (2.9 has no per-write option)" ;;
	redis-always) echo "AOF fsync before the replies (\`appendfsync always\`)" ;;
	redis-everysec) echo "ACK from memory; AOF fsync once a second (\`appendfsync everysec\`)" ;;
	pg) echo "WAL flushed at COMMIT (\`synchronous_commit on\`)" ;;
	esac
}
label() {
	case $1 in
	tally) echo "tally" ;; tally-interval) echo "tally, interval" ;; nats) echo "NATS JetStream" ;; redis-always) echo "Redis Streams, always" ;;
	redis-everysec) echo "Redis Streams, everysec" ;; pg) echo "PostgreSQL" ;;
	esac
}
# median of the numeric values on stdin ("-" when none)
median() { grep -E '^[0-9.]+$' | sort -g | awk '{v[NR] = $1} END {
	if (NR == 0) { print "-"; exit }
	if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v s="$1" -v c="$2" '$2 == s {print $c}' "$RESULTS"; }
# per-run ratio tally/system for column c (same run), then the median
ratio() { awk -F'\t' -v s="$1" -v c="$2" -v inv="$3" '
	$2 == "tally" {t[$1] = $c} $2 == s {p[$1] = $c}
	END { for (r in p) if ((r in t) && p[r] > 0 && t[r] > 0) print (inv ? p[r] / t[r] : t[r] / p[r]) }' \
	"$RESULTS" | median; }
fmt_ms() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.1f ms", v / 1000 }'; }
fmt_x() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.2f×", v }'; }
fmt_int() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%d", v + 0.5 }'; }

report() {
	echo "Workload: $EVENTS events per system per run (seed $SEED, ${PAYLOAD}-byte event bodies, $(awk -v d="$DUP" 'BEGIN{printf "%g", d * 100}') % exact resends),"
	echo "$CONNS connections, batches of $BATCH, one batch in flight per connection (closed loop), the"
	echo "same events for every system. Medians of $RUNS runs (each cell separately; ratios are"
	echo "the median of the per-run ratios). Machine:"
	echo
	echo "$MACHINE"
	echo
	echo "| system | durability when the ACK arrives | events/s | p99 ack | bytes on disk / event | fsync calls during the load (per s; per ACKed batch) | server CPU per 1000 events | stored = unique | tally events/s ÷ this | this p99 ÷ tally p99 |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
	for s in $ACTIVE; do
		local eps p99 bpe sps spb cpk ok rx rl
		eps=$(col "$s" 3 | median); p99=$(col "$s" 4 | median); bpe=$(col "$s" 5 | median)
		# per second of load: calls x events/s / events (the driver's own load time)
		sps=$(awk -F'\t' -v s="$s" -v n="$EVENTS" '$2 == s && $6 != "-" && $3 > 0 {print $6 * $3 / n}' "$RESULTS" | median)
		spb=$(awk -F'\t' -v s="$s" '$2 == s && $6 != "-" && $8 > 0 {print $6 / $8}' "$RESULTS" | median)
		cpk=$(awk -F'\t' -v s="$s" -v n="$EVENTS" '$2 == s && $10 != "-" {print $10 * 1000 / n}' "$RESULTS" | median)
		ok=$(awk -F'\t' -v s="$s" '$2 == s {n++; if ($9 == "ok") k++} END {printf "%d/%d runs", k, n}' "$RESULTS")
		rx=$(ratio "$s" 3 0); rl=$(ratio "$s" 4 1)
		[ "$s" = tally ] && { rx=1; rl=1; }
		local syn="not measured"
		[ "$sps" != "-" ] && syn="$(fmt_int "$sps")/s; $(awk -v v="$spb" 'BEGIN{printf "%.2f", v}')"
		echo "| $(label "$s") | $(durability "$s") | $(fmt_int "$eps") | $(fmt_ms "$p99") | $(fmt_int "$bpe") | $syn | $(awk -v v="$cpk" 'BEGIN { if (v == "-") print "-"; else printf "%.1f ms", v }') | $ok | $(fmt_x "$rx") | $(fmt_x "$rl") |"
	done
	echo
	echo "Raw rows (run, system, events/s, p99 µs, bytes/event, sync calls, load ms, batches, check,"
	echo "server CPU ms, unique events):"
	echo
	echo '```'
	cat "$RESULTS"
	echo '```'
}

MACHINE="$MACHINE
- load average when it ended: $(cut -d' ' -f1-3 /proc/loadavg)"
REPORT=$(report)
echo "$REPORT"
if [ -n "$OUT" ]; then echo "$REPORT" >"$OUT"; fi
if grep -q FAILED "$RESULTS"; then exit 1; fi
exit 0
