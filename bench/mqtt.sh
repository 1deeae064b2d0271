#!/usr/bin/env bash
# Benchmarks otad's MQTT broker against a plain mosquitto, with the same
# generator (cmd/otasim) in the same run, everything on 127.0.0.1:
#
#   idle:        N devices (default 10000) connected, authenticated and
#                subscribed; connections held and RSS per idle device.
#   throughput:  ROUNDS rounds (default 3), alternating brokers, of TP_DEVICES devices each sending TP_REPORTS QoS 1 reports
#                one after the other (PUBACK awaited); for otad each report
#                is durable in PostgreSQL (fsync on) before its PUBACK,
#                mosquitto stores nothing (the raw ceiling), and neither
#                does mochi run bare (bench/brokerd -bare: otad's broker
#                library and its configuration, an allow-all hook): the
#                floor under otad. Each process's CPU time is counted per
#                report.
#
# Usage: bench/mqtt.sh   (N=10000 TP_DEVICES=500 TP_REPORTS=40 HOLD=15 ROUNDS=3;
#                        BROKERD_FLAGS="-writers 2 -batch 500" tunes otad;
#                        PROFILE_DIR=dir saves otad's goroutine and heap
#                        profiles with the devices idle and a CPU profile of
#                        PROFILE_SECONDS (default 5) from the first
#                        throughput round)
# Needs PostgreSQL server binaries and mosquitto (apt-get install postgresql
# mosquitto); it starts and stops its own instances in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
TP_DEVICES=${TP_DEVICES:-500}
TP_REPORTS=${TP_REPORTS:-40}
HOLD=${HOLD:-15}
ROUNDS=${ROUNDS:-3}
if [ "$N" -gt 20000 ] || [ "$TP_DEVICES" -gt "$N" ] || [ "$TP_REPORTS" -gt 1000 ] || [ "$HOLD" -gt 300 ] || [ "$HOLD" -lt 10 ]; then
	echo "bench: N<=20000, TP_DEVICES<=N, TP_REPORTS<=1000, 10<=HOLD<=300" >&2
	exit 2
fi

BENCH_NAME=bench
# shellcheck source=bench/lib.sh
. bench/lib.sh
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }
json() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]])' "$1" "$2"; }
metric() { # metric PORT NAME: sums a Prometheus metric's samples
	python3 - "$1" "$2" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
print(sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith(sys.argv[2] + " ") or l.startswith(sys.argv[2] + "{")))
EOF
}

raise_nofile $((N + 1000))

log "building otasim and brokerd"
go build -o "$WORK/otasim" ./cmd/otasim
go build -o "$WORK/brokerd" ./bench/brokerd

command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { log "mosquitto not found (apt-get install mosquitto)"; exit 1; }
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
start_postgres

log "provisioning $N devices; starting otad's broker"
"$WORK/brokerd" -postgres "$PG_URL" -provision "$N" -devices-out "$WORK/devices.csv" ${BROKERD_FLAGS:-} >"$WORK/brokerd.out" 2>"$WORK/brokerd.err" &
PIDS+=($!)
BROKERD=$!
wait_line "$WORK/brokerd.out" '^PID='
OTAD_ADDR=$(sed -n 's/^ADDR=//p' "$WORK/brokerd.out")
OTAD_PORT=${OTAD_ADDR##*:}
METRICS_PORT=$(sed -n 's/^METRICS=.*://p' "$WORK/brokerd.out")

"$WORK/brokerd" -bare >"$WORK/bare.out" 2>"$WORK/bare.err" &
PIDS+=($!)
BARE=$!
wait_line "$WORK/bare.out" '^PID='
BARE_ADDR=$(sed -n 's/^ADDR=//p' "$WORK/bare.out")

MOSQ_PORT=$(free_port)
cat >"$WORK/mosquitto.conf" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
log_dest stderr
log_type error
EOF
"$MOSQUITTO" -c "$WORK/mosquitto.conf" 2>"$WORK/mosquitto.err" &
PIDS+=($!)
MOSQ=$!
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MOSQ_PORT") 2>/dev/null && break; sleep 0.1; done

# idle TARGET_NAME ADDR PORT PID EXTRA_FLAGS...: holds N devices, prints
# "connected held rss_before_kib rss_live_kib rss_after_kib". For otad,
# before and after are read after a forced GC (bench/brokerd on SIGUSR1),
# live without one; mosquitto has no GC, so its live and after figures are
# two readings of the same thing.
idle() {
	local name=$1 addr=$2 port=$3 pid=$4; shift 4
	local out="$WORK/idle-$name.json"
	if [ "$pid" = "$BROKERD" ]; then kill -USR1 "$BROKERD"; wait_line "$WORK/brokerd.out" '^MEM '; fi
	local before; before=$(rss_kib "$pid")
	"$WORK/otasim" -broker "$addr" -devices "$WORK/devices.csv" -n "$N" -hold "${HOLD}s" "$@" >"$out" &
	local sim=$!
	PIDS+=($sim)
	wait_line "$out" '"phase":"holding"'
	sleep 3 # let the broker settle before reading its memory
	local live; live=$(rss_kib "$pid")
	if [ "$pid" = "$BROKERD" ]; then
		kill -USR2 "$BROKERD"
		wait_line "$WORK/brokerd.out" '^MEMLIVE'
		if [ -n "${PROFILE_DIR:-}" ]; then
			curl -fsS "http://127.0.0.1:$METRICS_PORT/debug/pprof/goroutine" >"$PROFILE_DIR/idle-goroutine.pb.gz"
			curl -fsS "http://127.0.0.1:$METRICS_PORT/debug/pprof/heap" >"$PROFILE_DIR/idle-heap.pb.gz"
		fi
		kill -USR1 "$BROKERD"
		for _ in $(seq 1 100); do [ "$(grep -c '^MEM ' "$WORK/brokerd.out")" -ge 2 ] && break; sleep 0.1; done
		sleep 1
	fi
	local held after connected
	held=$(established "$port")
	after=$(rss_kib "$pid")
	wait "$sim"
	connected=$(json "$(grep '"phase":"connected"' "$out")" connected)
	echo "$connected $held $before $live $after"
}

# memfield LABEL N KEY: KEY of brokerd's Nth LABEL line (MEM or MEMLIVE).
memfield() { grep "^$1 " "$WORK/brokerd.out" | sed -n "$2p" | tr ' ' '\n' | sed -n "s/^$3=//p"; }

# pg_cpu: CPU seconds of PostgreSQL's postmaster and its processes so far
# (brokerd's pooled backends live through the run).
pg_cpu() {
	local pm p files=()
	pm=$(head -n 1 "$WORK/pg/postmaster.pid")
	for p in "$pm" $(pgrep -P "$pm"); do files+=("/proc/$p/stat"); done
	awk -v hz="$(getconf CLK_TCK)" '{t += $14 + $15} END {print t / hz}' "${files[@]}" 2>/dev/null
}

# throughput NAME ADDR PID FLAGS...: one round against the broker at ADDR
# (process PID); prints otasim's "reported" line and appends "reports
# broker_cpu_s pg_cpu_s otasim_cpu_s" to $WORK/cpu-NAME.
throughput() {
	local name=$1 addr=$2 pid=$3; shift 3
	local out="$WORK/tp-$name.json" b0 g0 b1 g1 sim
	b0=$(cpu_s "$pid"); g0=$(pg_cpu)
	sim=$( { TIMEFORMAT='%U %S'; time "$WORK/otasim" -broker "$addr" -devices "$WORK/devices.csv" -n "$TP_DEVICES" -reports "$TP_REPORTS" "$@" >"$out"; } 2>&1 )
	b1=$(cpu_s "$pid"); g1=$(pg_cpu)
	local line; line=$(grep '"phase":"reported"' "$out")
	echo "$(json "$line" reports) $(python3 -c "print($b1 - $b0, $g1 - $g0, sum(map(float, '$sim'.split())))")" >>"$WORK/cpu-$name"
	echo "$line"
}

log "otad: $N idle devices"
read -r O_CONN O_HELD O_RSS0 O_RSSL O_RSS1 < <(idle otad "$OTAD_ADDR" "$OTAD_PORT" "$BROKERD")
log "mosquitto: $N idle devices"
read -r M_CONN M_HELD M_RSS0 M_RSSL M_RSS1 < <(idle mosquitto "127.0.0.1:$MOSQ_PORT" "$MOSQ_PORT" "$MOSQ" -expect-rsp=false)
log "otad: waiting for presence writes to drain"
for _ in $(seq 1 1200); do
	[ "$(metric "$METRICS_PORT" otad_mqtt_presence_pending)" = "0.0" ] && break
	sleep 0.5
done

# Throughput rounds alternate between the two brokers, so that load from
# elsewhere on the machine weighs on both alike; medians are reported.
O_RATES=() M_RATES=() B_RATES=()
for round in $(seq 1 "$ROUNDS"); do
	log "round $round/$ROUNDS: otad, $TP_DEVICES devices x $TP_REPORTS QoS 1 reports, each stored in PostgreSQL before its PUBACK"
	if [ -n "${PROFILE_DIR:-}" ] && [ "$round" = 1 ]; then
		curl -fsS "http://127.0.0.1:$METRICS_PORT/debug/pprof/profile?seconds=${PROFILE_SECONDS:-5}" >"$PROFILE_DIR/throughput-cpu.pb.gz" &
	fi
	O_TP=$(throughput otad "$OTAD_ADDR" "$BROKERD")
	O_RATES+=("$(json "$O_TP" reports_per_second)")
	log "round $round/$ROUNDS: mochi bare, same load, nothing stored"
	B_TP=$(throughput bare "$BARE_ADDR" "$BARE" -expect-rsp=false)
	B_RATES+=("$(json "$B_TP" reports_per_second)")
	log "round $round/$ROUNDS: mosquitto, same load, nothing stored"
	M_TP=$(throughput mosquitto "127.0.0.1:$MOSQ_PORT" "$MOSQ" -expect-rsp=false)
	M_RATES+=("$(json "$M_TP" reports_per_second)")
done
O_BATCH_SUM=$(metric "$METRICS_PORT" otad_mqtt_report_batch_size_sum)
O_BATCH_N=$(metric "$METRICS_PORT" otad_mqtt_report_batch_size_count)
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
O_RATE=$(median "${O_RATES[@]}")
M_RATE=$(median "${M_RATES[@]}")
B_RATE=$(median "${B_RATES[@]}")
# cpu_us NAME FIELD: CPU µs per report over all rounds (2 broker, 3 PostgreSQL, 4 otasim).
cpu_us() { awk -v f="$2" '{n += $1; t += $f} END {printf "%.1f", n ? t / n * 1e6 : 0}' "$WORK/cpu-$1"; }
python3 - <<EOF
n = $N
# Per device connected (a device that failed to connect holds nothing).
def per(b, a, held=$O_HELD): return (a - b) / max(held, 1)
def mper(b, a): return per(b, a, $M_HELD)
print()
print("MQTT benchmark, %d devices, %s cores, $(date -u +%FT%TZ)" % (n, "$(nproc)"))
print("%-34s %14s %14s %14s" % ("", "otad", "mosquitto", "mochi bare"))
print("%-34s %14d %14d" % ("devices connected (authenticated)", $O_CONN, $M_CONN))
print("%-34s %14d %14d" % ("connections held (ss, established)", $O_HELD, $M_HELD))
print("%-34s %14d %14d" % ("RSS before, KiB", $O_RSS0, $M_RSS0))
print("%-34s %14d %14d" % ("RSS with devices idle, live, KiB", $O_RSSL, $M_RSSL))
print("%-34s %14d %14d" % ("RSS idle, after forced GC, KiB", $O_RSS1, $M_RSS1))
print("%-34s %14.1f %14.1f" % ("RSS per idle device, live, KiB", per($O_RSS0, $O_RSSL), mper($M_RSS0, $M_RSSL)))
print("%-34s %14.1f %14.1f" % ("RSS per idle device, after GC", per($O_RSS0, $O_RSS1), mper($M_RSS0, $M_RSS1)))
print("%-34s %14s %14s" % ("otad stacks / heap per device, KiB", "%.1f / %.1f" % (per($(memfield MEM 1 stack_inuse), $(memfield MEMLIVE 1 stack_inuse)) / 1024, per($(memfield MEM 1 heap_inuse), $(memfield MEMLIVE 1 heap_inuse)) / 1024), "live"))
print("%-34s %14s %14s" % ("", "%.1f / %.1f" % (per($(memfield MEM 1 stack_inuse), $(memfield MEM 2 stack_inuse)) / 1024, per($(memfield MEM 1 heap_inuse), $(memfield MEM 2 heap_inuse)) / 1024), "after GC"))
print("%-34s %14s" % ("otad goroutines with devices idle", "$(memfield MEMLIVE 1 goroutines)"))
print("%-34s %14.0f %14.0f %14.0f" % ("QoS 1 reports/s, median", $O_RATE, $M_RATE, $B_RATE))
print("%-34s %14s %14s %14s" % ("  rounds", "${O_RATES[*]}", "${M_RATES[*]}", "${B_RATES[*]}"))
print("%-34s %14s %14s %14s" % ("p50 / p99 PUBACK ms, last round", "$(json "$O_TP" p50_ms) / $(json "$O_TP" p99_ms)", "$(json "$M_TP" p50_ms) / $(json "$M_TP" p99_ms)", "$(json "$B_TP" p50_ms) / $(json "$B_TP" p99_ms)"))
print("%-34s %14s %14s %14s" % ("CPU µs a report: broker", "$(cpu_us otad 2)", "$(cpu_us mosquitto 2)", "$(cpu_us bare 2)"))
print("%-34s %14s %14s %14s" % ("  PostgreSQL", "$(cpu_us otad 3)", "-", "-"))
print("%-34s %14s %14s %14s" % ("  otasim", "$(cpu_us otad 4)", "$(cpu_us mosquitto 4)", "$(cpu_us bare 4)"))
print("%-34s %14.1f %14s" % ("reports per transaction (mean)", $O_BATCH_SUM / max($O_BATCH_N, 1), "-"))
print("%-34s %13.0f%%" % ("otad stored / mosquitto raw", 100.0 * $O_RATE / $M_RATE))
print("%-34s %13.0f%%" % ("mochi bare / mosquitto raw", 100.0 * $B_RATE / $M_RATE))
EOF
