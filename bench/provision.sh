#!/usr/bin/env bash
# Benchmarks bulk provisioning on PostgreSQL, everything on 127.0.0.1: the
# real otad binary over its own throwaway PostgreSQL (fsync on).
#
#   batch:    N devices (default 100000) in one POST …/device-batches, the
#             secrets streamed back as CSV: wall time of the request, and
#             the devices and device.created events then stored.
#   baseline: SINGLE devices (default 2000) created one request at a time
#             by CONCURRENCY clients (default 8), as a provisioning script
#             without the batch endpoint does; its rate, and the time N
#             devices would take at it.
#
# Usage: bench/provision.sh   (N=100000 SINGLE=2000 CONCURRENCY=8)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
SINGLE=${SINGLE:-2000}
CONCURRENCY=${CONCURRENCY:-8}
if [ "$N" -gt 100000 ] || [ "$N" -lt 1 ]; then
	echo "bench: 1<=N<=100000" >&2
	exit 2
fi

BENCH_NAME=provisionbench
# shellcheck source=bench/lib.sh
. bench/lib.sh
log "building otad"
go build -o "$WORK/otad" ./cmd/otad
start_postgres
start_otad

api POST /v1/products -d '{"id":"BULK000001","name":"batch"}' >/dev/null
api POST /v1/products -d '{"id":"BULK000002","name":"single"}' >/dev/null
python3 -c '
import json, sys
n = int(sys.argv[1])
json.dump({"devices": [{"name": "dev-%06d" % i, "version": "1.0.0"} for i in range(n)]}, sys.stdout)
' "$N" >"$WORK/batch.json"

log "batch: $N devices in one request"
T0=$(now)
api POST /v1/products/BULK000001/device-batches -H 'Accept: text/csv' --data-binary "@$WORK/batch.json" >"$WORK/secrets.csv"
T1=$(now)
BATCH_S=$(echo "$T1 - $T0" | bc)
LINES=$(($(wc -l <"$WORK/secrets.csv") - 1))
EVENTS=$(as_postgres "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atc \
	"SELECT count(*) FROM events WHERE type = 'device.created' AND product_id = 'BULK000001'")
ROWS=$(as_postgres "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atc \
	"SELECT count(*) FROM devices WHERE product_id = 'BULK000001'")

log "baseline: $SINGLE devices one request at a time, $CONCURRENCY at once"
SINGLE_S=$(python3 - "$API" "$TOKEN" "$SINGLE" "$CONCURRENCY" <<'PY'
import concurrent.futures, json, sys, time, urllib.request
api, token, n, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def create(i):
    req = urllib.request.Request(api + "/v1/products/BULK000002/devices", method="POST",
        data=json.dumps({"name": "dev-%06d" % i, "version": "1.0.0"}).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
t0 = time.time()
with concurrent.futures.ThreadPoolExecutor(conc) as pool:
    list(pool.map(create, range(n)))
print("%.3f" % (time.time() - t0))
PY
)

cat <<EOF

Provisioning benchmark, PostgreSQL (fsync on), $(nproc) cores, $(date -u +%FT%TZ)
batch:    $N devices in one request: $(printf '%.2f' "$BATCH_S") s ($(echo "$N / $BATCH_S" | bc) devices/s); $LINES secrets streamed back, $ROWS devices and $EVENTS device.created events stored
baseline: $SINGLE single creations, $CONCURRENCY at once: $SINGLE_S s ($(echo "$SINGLE / $SINGLE_S" | bc) devices/s); $N would take $(echo "$N * $SINGLE_S / $SINGLE" | bc) s
batch / single-request rate: $(echo "scale=1; ($N / $BATCH_S) / ($SINGLE / $SINGLE_S)" | bc)x
otad peak RSS $(($(status_kib "$OTAD" VmHWM) / 1024)) MiB
EOF
