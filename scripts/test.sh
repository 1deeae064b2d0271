#!/usr/bin/env bash
# Runs otad's whole test suite against real services on loopback:
#   - a throwaway PostgreSQL (Debian's packages, installed when absent),
#   - a versitygw S3 server (built once with `go install`, cached),
#   - mosquitto clients (Debian's mosquitto-clients, installed when absent),
#   - headless Chromium for the web console's tests (Debian's chromium, with
#     the DejaVu fonts its screenshots are drawn in; installed when absent).
# It stops everything it started, whatever happens. Extra arguments go to
# `go test` (default: -race -timeout 30m ./...).
#
# With CI=true every service is required: a service that cannot be started
# fails the run instead of letting its tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSITYGW_VERSION=v1.8.0
CACHE_DIR=${OTAD_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/otad-test}
WORK=$(mktemp -d /tmp/otad-test.XXXXXX)
PG_BIN=""
PG_DATA="$WORK/pg"
GW_PID=""

log() { printf 'test.sh: %s\n' "$*" >&2; }

cleanup() {
	set +e
	if [ -n "$GW_PID" ]; then kill "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null; fi
	if [ -n "$PG_BIN" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
		run_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

# free_port prints a TCP port that nothing listens on right now.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null ||
		echo $((20000 + RANDOM % 20000))
}

APT_UPDATED=""
apt_install() {
	command -v apt-get >/dev/null || return 1
	if [ -z "$APT_UPDATED" ]; then
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
		APT_UPDATED=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

run_as_postgres() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

start_postgres() {
	PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
	if [ -z "$PG_BIN" ]; then
		log "installing postgresql"
		apt_install postgresql || return 1
		PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
		# Debian's package may start its own cluster; this script did not
		# ask for it, so it stops it again.
		if command -v pg_lsclusters >/dev/null; then
			pg_lsclusters --no-header 2>/dev/null | while read -r ver name _ status _; do
				[ "$status" = online ] && pg_ctlcluster "$ver" "$name" stop 2>/dev/null
			done
		fi
	fi
	mkdir -p "$PG_DATA"
	if [ "$(id -u)" = 0 ]; then chown postgres "$WORK" "$PG_DATA"; fi
	local port; port=$(free_port)
	run_as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust --no-sync >/dev/null || return 1
	run_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -l "$PG_DATA/log" \
		-o "-h 127.0.0.1 -p $port -k $PG_DATA -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
		start >/dev/null || { cat "$PG_DATA/log" >&2; return 1; }
	export OTAD_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
	log "postgres on 127.0.0.1:$port"
}

start_versitygw() {
	local bin="$CACHE_DIR/versitygw-$VERSITYGW_VERSION"
	if [ ! -x "$bin" ]; then
		log "building versitygw $VERSITYGW_VERSION (once; cached in $CACHE_DIR)"
		mkdir -p "$CACHE_DIR"
		GOBIN="$WORK/gobin" go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" || return 1
		mv "$WORK/gobin/versitygw" "$bin"
	fi
	local port; port=$(free_port)
	mkdir -p "$WORK/s3"
	ROOT_ACCESS_KEY=otadtest ROOT_SECRET_KEY=otadtestsecret \
		"$bin" --port "127.0.0.1:$port" posix "$WORK/s3" >"$WORK/versitygw.log" 2>&1 &
	GW_PID=$!
	for _ in $(seq 1 100); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			export OTAD_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
			export OTAD_TEST_S3_ACCESS_KEY=otadtest OTAD_TEST_S3_SECRET_KEY=otadtestsecret OTAD_TEST_S3_REGION=us-east-1
			log "versitygw on 127.0.0.1:$port"
			return 0
		fi
		kill -0 "$GW_PID" 2>/dev/null || break
		sleep 0.1
	done
	cat "$WORK/versitygw.log" >&2
	return 1
}

ensure_mosquitto_clients() {
	command -v mosquitto_pub >/dev/null && return 0
	log "installing mosquitto-clients"
	apt_install mosquitto-clients
}

ensure_chromium() {
	if command -v chromium >/dev/null && [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then return 0; fi
	log "installing chromium"
	apt_install chromium fonts-dejavu-core && command -v chromium >/dev/null
}

required() {
	if [ "${CI:-}" = true ]; then
		log "FATAL: $1 could not be started, and CI=true requires it"
		exit 1
	fi
	log "warning: $1 unavailable; its tests will skip"
}

start_postgres || required postgres
start_versitygw || required versitygw
ensure_mosquitto_clients || required mosquitto-clients
ensure_chromium || required chromium
if [ "${CI:-}" = true ]; then export OTAD_TEST_REQUIRE_SERVICES=1; fi

# The default 10-minute limit per package is too short for cmd/otad on a
# loaded 2-core machine; a hung test still ends the run.
if [ $# -eq 0 ]; then set -- -race -timeout 30m ./...; fi
go test "$@"
