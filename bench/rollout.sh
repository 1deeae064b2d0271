#!/usr/bin/env bash
# Benchmarks a staged rollout over N simulated online devices (default
# 10000), everything on 127.0.0.1: the real otad binary over its own
# throwaway PostgreSQL, devices simulated by cmd/otasim (real MQTT, real
# HTTP downloads), which carry out every upgrade.
#
#   unpaced: a job in three phases (1%, 10%, the rest; no soak), pacing
#            off: when each phase started, and the time from the last
#            phase's start until its last device was notified.
#   paced:   the same over the next version at RATE notifications a minute
#            (default 3000): the notifications of the last phase per second
#            in each whole minute after it started: the most and fewest in
#            one second against the even share (RATE/60), and the count in
#            each minute against RATE.
# Figures come from the job's phases (started_at) and the executions'
# notified_at, read through the API.
#
# Usage: bench/rollout.sh   (N=10000 RATE=3000 FW_SIZE=4096; N at most 20000)
# Needs PostgreSQL server binaries; about four minutes for 10,000 devices.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
RATE=${RATE:-3000}
FW_SIZE=${FW_SIZE:-4096}
if [ "$N" -gt 20000 ] || [ "$N" -lt 100 ] || [ "$RATE" -lt 60 ]; then
	echo "bench: 100<=N<=20000, RATE>=60" >&2
	exit 2
fi

BENCH_NAME=rolloutbench
# shellcheck source=bench/lib.sh
. bench/lib.sh
PID_=ROLLOUT001
start_fleet "$PID_" 2.0.0 3.0.0

log "$N devices connect; they carry out every upgrade"
"$WORK/otasim" -broker "127.0.0.1:$MQTT_PORT" -devices "$WORK/devices.csv" -hold 20m -timeout 20m -upgrade >"$WORK/sim.json" &
SIM=$!
PIDS+=("$SIM")
wait_line "$WORK/sim.json" '"phase":"holding"'
grep '"phase":"connected"' "$WORK/sim.json" >&2

# rollout VERSION OPTIONS_JSON: runs a three-phase job over every device to
# its end (at most 15 minutes) and prints its figures.
rollout() {
	local id
	id=$(api POST "/v1/products/$PID_/jobs" -H 'Content-Type: application/json' \
		-d "{\"firmware_version\": \"$1\", \"targets\": {\"all\": true}, \"timeout_seconds\": 600, \"max_retries\": 0,
		\"phases\": [{\"percent\": 1}, {\"percent\": 10}, {}] $2}" | field 'd["id"]')
	python3 - "$API" "$TOKEN" "/v1/products/$PID_/jobs/$id" "$RATE" <<'PY'
import collections, datetime, json, sys, time, urllib.request
api, token, path, rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def get(p):
    req = urllib.request.Request(api + p, headers={"Authorization": "Bearer " + token})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())
end = time.time() + 900
while time.time() < end:
    j = get(path)
    if j.get("completed_at"):
        break
    time.sleep(0.2)
else:
    sys.exit("job did not complete within 15 minutes")
def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
created = ts(j["created_at"])
starts = [ts(p["started_at"]) - created for p in j["phases"]]
notified = collections.defaultdict(list)
cursor = ""
while True:
    page = get(path + "/devices?limit=1000" + ("&cursor=" + cursor if cursor else ""))
    for x in page["items"]:
        if x.get("notified_at"):
            notified[x["phase"]].append(ts(x["notified_at"]) - created)
    cursor = page.get("next_cursor") or ""
    if not cursor:
        break
last = sorted(notified[2])
print("status %s, counts %s" % (j["status"], {k: v for k, v in j["counts"].items() if v}))
print("phase sizes %s; phases started at %s s after creation" % ([p["size"] for p in j["phases"]], ", ".join("%.2f" % s for s in starts)))
print("last phase: %d devices, all notified %.2f s after it started (first %.3f s)" % (len(last), last[-1] - starts[2], last[0] - starts[2]))
minutes = int((last[-1] - starts[2]) // 60)
for m in range(minutes):
    lo = starts[2] + 60 * m
    per_s = collections.Counter(int(t - lo) for t in last if lo <= t < lo + 60)
    counts = [per_s.get(s, 0) for s in range(60)]
    print("  minute %d: %d notified (limit %d); per second most %d, fewest %d, even share %.1f" %
          (m + 1, sum(counts), rate, max(counts), min(counts), rate / 60))
PY
}

log "unpaced three-phase job"
UNPACED=$(rollout 2.0.0 '')
log "paced three-phase job at $RATE a minute"
PACED=$(rollout 3.0.0 ", \"max_per_minute\": $RATE")
kill -INT "$SIM"; wait "$SIM" || true

cat <<EOF

Rollout benchmark, $N devices online, $(nproc) cores, $(date -u +%FT%TZ)
Three phases (1%, 10%, the rest), no soak, pacing off:
$UNPACED
The same at max_per_minute $RATE:
$PACED
otad peak RSS $(($(status_kib "$OTAD" VmHWM) / 1024)) MiB
EOF
