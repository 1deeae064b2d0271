#!/usr/bin/env bash
# Benchmarks a job over one million devices (issue 15 item 5), everything
# on 127.0.0.1: the real otad binary over its own throwaway PostgreSQL
# (fsync and synchronous_commit on). One product of TOTAL devices: ONLINE
# of them provisioned through the console API and connected by cmd/otasim,
# the rest synthetic rows inserted with SQL (offline, never connect).
#
#   baseline: the online devices each send report_version at QoS 1 every
#             REPORT_EVERY, no job; their PUBACK round trips.
#   jobs:     RUNS times: POST …/jobs over all devices, timed from request
#             to response; then, while the job runs, GET the job (its
#             counts), GET …/jobs/{id}/devices (first page, and a page from
#             a cursor 90% deep), with and without ?state=queued, SAMPLES
#             times each (p50, max); then cancel it and wait until it has
#             closed (the online devices ignore their orders; each attempt
#             times out after 15 s, no retry). The same periodic reports
#             go on throughout: their PUBACK round trips while each job is
#             being created and while it runs, against the baseline.
#
# Usage: bench/million.sh   (TOTAL=1000000 ONLINE=200 RUNS=3 SAMPLES=20
#                            REPORT_EVERY=1s; TOTAL at most 2000000)
#        PG_OPTS="-c shared_buffers=1GB" bench/million.sh
#        passes settings to the throwaway PostgreSQL
# Needs PostgreSQL server binaries (apt-get install postgresql); it starts
# and stops its own instance in a temp dir (about 2 GB of disk). About ten
# minutes on two cores, most of it the three cancellations.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

TOTAL=${TOTAL:-1000000}
ONLINE=${ONLINE:-200}
RUNS=${RUNS:-3}
SAMPLES=${SAMPLES:-20}
REPORT_EVERY=${REPORT_EVERY:-1s}
if [ "$TOTAL" -gt 2000000 ] || [ "$ONLINE" -lt 1 ] || [ "$ONLINE" -gt 5000 ] || [ "$ONLINE" -ge "$TOTAL" ] ||
	[ "$RUNS" -lt 1 ] || [ "$RUNS" -gt 10 ] || [ "$SAMPLES" -lt 1 ] || [ "$SAMPLES" -gt 1000 ]; then
	echo "bench: 1<=ONLINE<=5000, ONLINE<TOTAL<=2000000, 1<=RUNS<=10, 1<=SAMPLES<=1000" >&2
	exit 2
fi

BENCH_NAME=millionbench
# shellcheck source=bench/lib.sh
. bench/lib.sh
PID_=BENCH00001
N=$ONLINE
FW_SIZE=16384
start_fleet "$PID_" 2.0.0
# A failing step shows what otad logged.
trap 'log "failed; the end of otad'"'"'s log:"; tail -n 20 "$WORK/otad.err" >&2' ERR
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$PG_URL")

log "inserting $((TOTAL - ONLINE)) synthetic offline devices with SQL"
"${PSQL[@]}" -c "INSERT INTO devices (product_id, name, secret, version, created_at)
	SELECT '$PID_', 'syn' || lpad(i::text, 7, '0'), 'synthetic', '1.0.0', now() FROM generate_series(1, $((TOTAL - ONLINE))) AS i"
"${PSQL[@]}" -c "VACUUM ANALYZE devices"
COUNT=$("${PSQL[@]}" -At -c "SELECT count(*) FROM devices WHERE product_id = '$PID_'")
log "$COUNT devices in $PID_"

log "$ONLINE devices connect and report their version every $REPORT_EVERY"
# They hold on long enough for every run (a cancellation can take minutes)
# and are stopped at the end; a run that finds them gone fails.
HOLD=$((5 + 10 * RUNS))
"$WORK/otasim" -broker "127.0.0.1:$MQTT_PORT" -devices "$WORK/devices.csv" -hold "${HOLD}m" -timeout "$((HOLD + 1))m" \
	-report-every "$REPORT_EVERY" -latency-log "$WORK/latency.txt" >"$WORK/sim.json" &
SIM=$!
PIDS+=("$SIM")
wait_line "$WORK/sim.json" '"phase":"holding"'
grep '"phase":"connected"' "$WORK/sim.json" >&2
settled
WINDOWS=() # "name start end" in Unix seconds
ms_now() { date +%s%3N; }
B0=$(ms_now)
sleep 20
WINDOWS+=("baseline $B0 $(ms_now)")

# samples NAME PATH: GETs PATH SAMPLES times, prints "NAME p50 max" (ms).
samples() {
	python3 - "$API" "$TOKEN" "$2" "$SAMPLES" "$1" <<'PY'
import sys, time, urllib.request
api, token, path, n, name = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
ts = []
for _ in range(n):
    req = urllib.request.Request(api + path, headers={"Authorization": "Bearer " + token})
    t0 = time.perf_counter()
    body = urllib.request.urlopen(req, timeout=30).read()
    ts.append((time.perf_counter() - t0) * 1000)
    if not body:
        sys.exit("empty answer from " + path)
ts.sort()
print("%s %.1f %.1f" % (name, ts[(len(ts) - 1) // 2], ts[-1]))
PY
}
cursor() { printf '%s' "$1" | base64 | tr '+/' '-_' | tr -d '=\n'; }
DEEP=$(cursor "syn$(printf '%07d' $((TOTAL * 9 / 10)))")

CREATES=()
CANCELS=()
CLOSES=()
GETS=()
for r in $(seq 1 "$RUNS"); do
	kill -0 "$SIM" 2>/dev/null || { log "otasim exited before job $r:"; tail -n 3 "$WORK/sim.json" >&2; exit 1; }
	log "job $r: creating over all $COUNT devices"
	C0=$(ms_now)
	BODY=$(curl -fsS -o - -w '\n%{time_total}' -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
		-d '{"firmware_version": "2.0.0", "targets": {"all": true}, "timeout_seconds": 15, "max_retries": 0}' \
		"$API/v1/products/$PID_/jobs")
	C1=$(ms_now)
	JOB=$(head -n 1 <<<"$BODY" | field 'd["id"]')
	SECS=$(tail -n 1 <<<"$BODY")
	CREATES+=("$SECS")
	WINDOWS+=("creating$r $C0 $C1")
	log "job $r ($JOB) created in ${SECS}s"
	P=/v1/products/$PID_/jobs/$JOB
	GETS+=("$(samples "job$r" "$P")")
	GETS+=("$(samples "first$r" "$P/devices?limit=100")")
	GETS+=("$(samples "deep$r" "$P/devices?limit=100&cursor=$DEEP")")
	GETS+=("$(samples "state_first$r" "$P/devices?limit=100&state=queued")")
	GETS+=("$(samples "state_deep$r" "$P/devices?limit=100&state=queued&cursor=$DEEP")")
	log "GET p50/max (ms): ${GETS[*]: -5}"
	sleep 5
	R1=$(ms_now)
	WINDOWS+=("running$r $C1 $R1")
	COUNTS=$(api GET "$P" | field 'd["counts"]')
	log "job $r counts before cancel: $COUNTS"
	T0=$(now)
	CODE=$(curl -sS -o "$WORK/cancel.json" -w '%{http_code}' -X POST -H "Authorization: Bearer $TOKEN" "$API$P/cancel")
	[ "$CODE" = 200 ] || { log "cancel answered $CODE: $(cat "$WORK/cancel.json")"; false; }
	CANCELS+=("$(echo "$(now) - $T0" | bc)")
	log "job $r canceled in ${CANCELS[-1]} s; waiting for it to close"
	# The engine cancels what the request did not, a batch a transaction.
	for _ in $(seq 1 3000); do
		[ "$(api GET "$P" | field 'd.get("completed_at") or ""')" != "" ] && break
		sleep 0.1
	done
	[ "$(api GET "$P" | field 'd.get("completed_at") or ""')" != "" ] || { log "job $r did not close within 5 minutes"; exit 1; }
	CLOSES+=("$(echo "$(now) - $T0" | bc)")
	WINDOWS+=("canceling$r $R1 $(ms_now)")
done

kill -0 "$SIM" 2>/dev/null || { log "otasim exited before the end:"; tail -n 3 "$WORK/sim.json" >&2; exit 1; }
kill -INT "$SIM"; wait "$SIM" || true
grep '"phase":"periodic_reports"' "$WORK/sim.json" >&2
HWM=$(status_kib "$OTAD" VmHWM)

echo
echo "One million devices benchmark: $COUNT devices ($ONLINE online), $(nproc) cores, $(date -u +%FT%TZ), load $(uptime | sed 's/.*load average: //')"
echo "job creation (POST …/jobs, request to response), s: ${CREATES[*]}"
echo "job cancel (POST …/cancel, request to response), s: ${CANCELS[*]}"
echo "job cancel until the job closed, s: ${CLOSES[*]}"
echo "GET, ms (p50 max of $SAMPLES):"
printf '  %s\n' "${GETS[@]}"
echo "PUBACK of the online devices' QoS 1 report_version, ms:"
python3 - "$WORK/latency.txt" "${WINDOWS[@]}" <<'PY'
import sys
lines = [l.split() for l in open(sys.argv[1])]
samples = [(int(t), int(us) / 1000) for t, us in lines]
groups = {}
for w in sys.argv[2:]:
    name, a, b = w.split()
    key = name.rstrip("0123456789")
    groups.setdefault(key, []).extend(ms for t, ms in samples if int(a) <= t < int(b))
for key, xs in groups.items():
    xs.sort()
    if not xs:
        print("  %-10s no reports" % key)
        continue
    p = lambda q: xs[min(len(xs) - 1, int(q * (len(xs) - 1)))]
    print("  %-10s n=%-6d p50 %7.1f  p99 %7.1f  max %7.1f" % (key, len(xs), p(0.5), p(0.99), xs[-1]))
PY
echo "otad peak RSS: $((HWM / 1024)) MiB"
