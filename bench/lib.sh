# Shared by the bench scripts: a temp work dir cleaned on exit (kept, with
# the processes' output and logs, when KEEP_WORK=1), the
# processes a script starts (PIDS, stopped on exit), and a throwaway
# PostgreSQL with durable settings (fsync and synchronous_commit on).
# Source it after `set -euo pipefail`; it sets WORK, PG_BIN, PG_PORT, PG_URL.

WORK=$(mktemp -d "/tmp/otad-${BENCH_NAME:-bench}.XXXXXX")
PG_BIN=""
PIDS=()
log() { printf 'bench: %s\n' "$*" >&2; }

cleanup() {
	set +e
	trap - ERR
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	if [ -n "$PG_BIN" ] && [ -f "$WORK/pg/postmaster.pid" ]; then
		as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1
	fi
	if [ "${KEEP_WORK:-}" = 1 ]; then
		log "work dir kept: $WORK"
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# wait_line FILE PATTERN [TENTHS]: waits (default 10 minutes) for a line in FILE.
wait_line() {
	for _ in $(seq 1 "${3:-6000}"); do
		grep -q "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	log "timed out waiting for '$2' in $1"; cat "$1" >&2; return 1
}

# raise_nofile N: raises the open files limit to hold N connections.
raise_nofile() {
	ulimit -n "$(ulimit -Hn)"
	if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$1" ]; then
		log "open files limit $(ulimit -n) is too low for $1 connections"; exit 1
	fi
}

# start_postgres: initdb into $WORK/pg and start it on a free loopback port
# (PG_OPTS: more server options, such as "-c shared_buffers=1GB").
start_postgres() {
	PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
	[ -n "$PG_BIN" ] || { log "PostgreSQL server binaries not found (apt-get install postgresql)"; exit 1; }
	mkdir -p "$WORK/pg"
	if [ "$(id -u)" = 0 ]; then chown postgres "$WORK" "$WORK/pg"; fi
	PG_PORT=$(free_port)
	as_postgres "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust >/dev/null
	as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -w -l "$WORK/pg/log" \
		-o "-h 127.0.0.1 -p $PG_PORT -k $WORK/pg -c max_connections=100 ${PG_OPTS:-}" start >/dev/null
	PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
	log "postgres on 127.0.0.1:$PG_PORT (fsync on${PG_OPTS:+; $PG_OPTS})"
}

now() { date +%s.%N; }
# cpu_s PID: user+system CPU seconds of a process so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
# status_kib PID KEY: a /proc/PID/status figure, such as VmRSS, in KiB.
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
api() { # api METHOD PATH [curl args...]: the console API with the token
	local m=$1 p=$2; shift 2
	curl -fsS -X "$m" -H "Authorization: Bearer $TOKEN" "$@" "$API$p"
}
# field EXPR: evaluates a Python expression over the JSON on stdin (d).
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }
metric() { # metric NAME: sums a Prometheus metric's samples
	curl -fsS -H "Authorization: Bearer $TOKEN" "$API/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%d\n", s}'
}

# settled: waits (at most 2 minutes) until otad has written every connect
# and report it received: a device counts for a job only once its presence
# and version report are stored.
settled() {
	for _ in $(seq 1 1200); do
		if [ "$(metric otad_mqtt_presence_pending)" = 0 ] && [ "$(metric otad_mqtt_reports_pending)" = 0 ]; then
			return 0
		fi
		sleep 0.1
	done
	log "otad still writing presence or reports after 2 minutes"; exit 1
}

# start_otad: runs $WORK/otad over the throwaway PostgreSQL on free
# loopback ports and waits until it is ready; sets OTAD (its PID), API,
# TOKEN and MQTT_PORT.
start_otad() {
	local http_port
	http_port=$(free_port)
	MQTT_PORT=$(free_port)
	API="http://127.0.0.1:$http_port"
	TOKEN=bench-token-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
	OTAD_DATABASE_URL="$PG_URL" OTAD_HTTP_ADDR="127.0.0.1:$http_port" OTAD_MQTT_ADDR="127.0.0.1:$MQTT_PORT" \
		OTAD_DATA_DIR="$WORK/data" OTAD_API_TOKEN="$TOKEN" OTAD_LOG_LEVEL=warn \
		"$WORK/otad" 2>"$WORK/otad.err" &
	OTAD=$!
	PIDS+=("$OTAD")
	for _ in $(seq 1 300); do curl -fsS "$API/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
	curl -fsS "$API/readyz" >/dev/null || { cat "$WORK/otad.err" >&2; exit 1; }
}

# start_fleet PRODUCT VERSION...: builds otad and otasim, starts PostgreSQL
# and otad, provisions $N devices of PRODUCT through the API (credentials
# in $WORK/devices.csv) and uploads $FW_SIZE random bytes as each VERSION.
start_fleet() {
	local pid=$1 v
	shift
	raise_nofile $((N + 2000))
	log "building otad and otasim"
	go build -o "$WORK/otad" ./cmd/otad
	go build -o "$WORK/otasim" ./cmd/otasim
	start_postgres
	start_otad
	log "provisioning $N devices through the API"
	"$WORK/otasim" provision -api "$API" -token "$TOKEN" -product "$pid" -n "$N" -out "$WORK/devices.csv" >&2
	head -c "$FW_SIZE" /dev/urandom >"$WORK/fw.bin"
	for v in "$@"; do
		api POST "/v1/products/$pid/firmware?version=$v" -H 'Content-Type: application/octet-stream' --data-binary "@$WORK/fw.bin" >/dev/null
	done
}
