# Shared by the bench scripts: a temp work dir cleaned on exit, the
# processes a script starts (PIDS, stopped on exit), and a throwaway
# PostgreSQL with durable settings (fsync and synchronous_commit on).
# Source it after `set -euo pipefail`; it sets WORK, PG_BIN, PG_PORT, PG_URL.

WORK=$(mktemp -d "/tmp/otad-${BENCH_NAME:-bench}.XXXXXX")
PG_BIN=""
PIDS=()
log() { printf 'bench: %s\n' "$*" >&2; }

cleanup() {
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	if [ -n "$PG_BIN" ] && [ -f "$WORK/pg/postmaster.pid" ]; then
		as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1
	fi
	rm -rf "$WORK"
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

# start_postgres: initdb into $WORK/pg and start it on a free loopback port.
start_postgres() {
	PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
	[ -n "$PG_BIN" ] || { log "PostgreSQL server binaries not found (apt-get install postgresql)"; exit 1; }
	mkdir -p "$WORK/pg"
	if [ "$(id -u)" = 0 ]; then chown postgres "$WORK" "$WORK/pg"; fi
	PG_PORT=$(free_port)
	as_postgres "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust >/dev/null
	as_postgres "$PG_BIN/pg_ctl" -D "$WORK/pg" -w -l "$WORK/pg/log" \
		-o "-h 127.0.0.1 -p $PG_PORT -k $WORK/pg -c max_connections=100" start >/dev/null
	PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
	log "postgres on 127.0.0.1:$PG_PORT (fsync on)"
}
