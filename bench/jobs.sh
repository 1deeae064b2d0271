#!/usr/bin/env bash
# Benchmarks an upgrade job over N simulated online devices (default
# 10000), everything on 127.0.0.1: the real otad binary over its own
# throwaway PostgreSQL (fsync and synchronous_commit on), devices simulated
# by cmd/otasim (real MQTT, real HTTP downloads with MD5 check).
#
#   notify:  N devices online that do not act on orders; a job with pacing
#            off; the time from job creation until the last device is
#            notified (the executions' notified_at), and as seen by polling
#            the API: none queued, N update_firmware published
#            (otad_job_notifications_total).
#   upgrade: the same N devices reconnect and carry out the upgrade, all
#            at once (download, MD5 check, progress, done, report_version);
#            a second job; the time until the last device is notified and
#            until the last one is done (the executions' finished_at).
#   For each phase, otad's CPU time (user+system, from /proc) and its RSS.
#
# Usage: bench/jobs.sh   (N=10000 FW_SIZE=16384; N at most 20000)
#        PROFILE_DIR=/tmp/prof OTAD_PPROF_ADDR=127.0.0.1:6060 bench/jobs.sh
#        also saves otad's CPU, heap and goroutine profiles of each phase
# Needs PostgreSQL server binaries (apt-get install postgresql); it starts
# and stops its own instance in a temp dir. About three minutes for 10,000
# devices on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
FW_SIZE=${FW_SIZE:-16384}
if [ "$N" -gt 20000 ] || [ "$N" -lt 1 ] || [ "$FW_SIZE" -gt 1048576 ]; then
	echo "bench: 1<=N<=20000, FW_SIZE<=1048576" >&2
	exit 2
fi

BENCH_NAME=jobbench
# shellcheck source=bench/lib.sh
. bench/lib.sh
PID_=BENCH00001
PAGE_LIMIT=1000
start_fleet "$PID_" 2.0.0 3.0.0

# job VERSION OPTIONS_JSON: creates a job over every device, prints its ID.
job() {
	api POST "/v1/products/$PID_/jobs" -H 'Content-Type: application/json' \
		-d "{\"firmware_version\": \"$1\", \"targets\": {\"all\": true}, $2}" | field 'd["id"]'
}
# watch JOB NOTIFIED_BASE: polls the API every 50 ms until the job
# completes (at most 5 minutes); prints the seconds since T0 at which no
# execution was queued, at which N update_firmware had been published since
# NOTIFIED_BASE, and at which the job completed.
watch() {
	python3 - "$API" "$TOKEN" "/v1/products/$PID_/jobs/$1" "$2" "$N" "$T0" "$PAGE_LIMIT" <<'PY'
import datetime, json, sys, time, urllib.request
api, token, path, base, n, t0 = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
limit = int(sys.argv[7])
def get(p, auth=True):
    req = urllib.request.Request(api + p, headers={"Authorization": "Bearer " + token} if auth else {})
    return urllib.request.urlopen(req, timeout=30).read().decode()
def notified():
    return sum(float(l.split()[-1]) for l in get("/metrics").splitlines() if l.startswith("otad_job_notifications_total"))
claimed = published = None
slowest = 0.0
end = time.time() + 300
while time.time() < end:
    t1 = time.time()
    j = json.loads(get(path))
    t = time.time() - t0
    if claimed is None and j["counts"]["queued"] == 0:
        claimed = t
    if published is None and notified() - base >= n:
        published = time.time() - t0
    slowest = max(slowest, time.time() - t1)
    if j.get("completed_at"):
        break
    time.sleep(0.05)
else:
    sys.exit("job did not complete within 5 minutes")
# Exact figures from the executions' own timestamps: the last notification
# and the last device finished, from the job's creation.
def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
created = ts(j["created_at"])
last_notified = last_finished = 0.0
cursor = ""
while True:
    page = json.loads(get(path + "/devices?limit=%d%s" % (limit, "&cursor=" + cursor if cursor else "")))
    for x in page["items"]:
        if x.get("notified_at"):
            last_notified = max(last_notified, ts(x["notified_at"]) - created)
        if x.get("finished_at"):
            last_finished = max(last_finished, ts(x["finished_at"]) - created)
    cursor = page.get("next_cursor") or ""
    if not cursor:
        break
print("%.2f %.2f %.2f %.2f %.2f %.2f" % (claimed or -1, published or -1, t, last_notified, last_finished, slowest))
PY
}

# profile NAME SECONDS: with PROFILE_DIR set (and OTAD_PPROF_ADDR, which
# otad serves its runtime profiles on), saves in the background a CPU
# profile of the next SECONDS and, at its end, the heap and goroutines.
profile() {
	[ -n "${PROFILE_DIR:-}" ] || return 0
	mkdir -p "$PROFILE_DIR"
	(
		curl -fsS -o "$PROFILE_DIR/$1.cpu" "http://$OTAD_PPROF_ADDR/debug/pprof/profile?seconds=$2"
		curl -fsS -o "$PROFILE_DIR/$1.heap" "http://$OTAD_PPROF_ADDR/debug/pprof/heap"
		curl -fsS -o "$PROFILE_DIR/$1.goroutine" "http://$OTAD_PPROF_ADDR/debug/pprof/goroutine?debug=1"
	) &
}

log "notify: $N devices connect and stay idle (they ignore orders)"
"$WORK/otasim" -broker "127.0.0.1:$MQTT_PORT" -devices "$WORK/devices.csv" -hold 10m -timeout 10m >"$WORK/sim1.json" &
SIM=$!
PIDS+=("$SIM")
wait_line "$WORK/sim1.json" '"phase":"holding"'
grep '"phase":"connected"' "$WORK/sim1.json" >&2
settled
BASE=$(metric otad_job_notifications_total)
CPU0=$(cpu_s "$OTAD")
T0=$(now)
# The devices never answer: each attempt times out after 15s, no retry.
JOB1=$(job 2.0.0 '"timeout_seconds": 15, "max_retries": 0')
profile notify 3
read -r N_CLAIMED N_PUBLISHED N_END N_LASTN N_LASTF N_POLL < <(watch "$JOB1" "$BASE")
[ -n "$N_END" ] || exit 1
N_CPU=$(echo "$(cpu_s "$OTAD") - $CPU0" | bc)
N_RSS=$(status_kib "$OTAD" VmRSS)
log "notify: last notified_at ${N_LASTN}s; seen claimed ${N_CLAIMED}s, published ${N_PUBLISHED}s; job timed out and closed at ${N_END}s"
kill -INT "$SIM"; wait "$SIM" || true

log "upgrade: $N devices reconnect and carry out the upgrade at once"
"$WORK/otasim" -broker "127.0.0.1:$MQTT_PORT" -devices "$WORK/devices.csv" -hold 10m -timeout 10m -upgrade >"$WORK/sim2.json" &
SIM=$!
PIDS+=("$SIM")
wait_line "$WORK/sim2.json" '"phase":"holding"'
grep '"phase":"connected"' "$WORK/sim2.json" >&2
settled
BASE=$(metric otad_job_notifications_total)
CPU0=$(cpu_s "$OTAD")
T0=$(now)
JOB2=$(job 3.0.0 '"timeout_seconds": 600, "max_retries": 0')
profile upgrade 10
read -r U_CLAIMED U_PUBLISHED U_END U_LASTN U_LASTF U_POLL < <(watch "$JOB2" "$BASE")
[ -n "$U_END" ] || exit 1
U_CPU=$(echo "$(cpu_s "$OTAD") - $CPU0" | bc)
U_RSS=$(status_kib "$OTAD" VmRSS)
HWM=$(status_kib "$OTAD" VmHWM)
COUNTS=$(api GET "/v1/products/$PID_/jobs/$JOB2" | field 'd["counts"]')
kill -INT "$SIM"; wait "$SIM" || true
grep '"phase":"done"' "$WORK/sim2.json" >&2

cat <<EOF

Job benchmark, $N devices online, firmware $FW_SIZE bytes, $(nproc) cores, $(date -u +%FT%TZ)
seconds from job creation                       notify only     notify + upgrade
last device notified (executions' notified_at)  $(printf '%11s %20s' "$N_LASTN" "$U_LASTN")
last device done (executions' finished_at)      $(printf '%11s %20s' "-" "$U_LASTF")
seen by polling: none queued                    $(printf '%11s %20s' "$N_CLAIMED" "$U_CLAIMED")
seen by polling: N update_firmware published    $(printf '%11s %20s' "$N_PUBLISHED" "$U_PUBLISHED")
seen by polling: job completed                  $(printf '%11s %20s' "$N_END" "$U_END")
slowest poll of the job API                     $(printf '%11s %20s' "$N_POLL" "$U_POLL")
otad CPU time in the phase (s)                  $(printf '%11s %20s' "$N_CPU" "$U_CPU")
otad RSS at the end of the phase (MiB)          $(printf '%11s %20s' "$((N_RSS / 1024))" "$((U_RSS / 1024))")
otad peak RSS (MiB)                             $((HWM / 1024))
final counts of the upgrade job: $COUNTS
EOF
