package main

// Staged rollouts end to end: the real daemon, devices simulated by otasim.

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

type phaseJSON struct {
	Index     int            `json:"index"`
	State     string         `json:"state"`
	Size      int            `json:"size"`
	Counts    map[string]int `json:"counts"`
	StartedAt *time.Time     `json:"started_at"`
	EndedAt   *time.Time     `json:"ended_at"`
	Result    string         `json:"result"`
}

type rolloutJSON struct {
	jobJSON
	CurrentPhase int         `json:"current_phase"`
	StatusReason string      `json:"status_reason"`
	PhaseSeed    int64       `json:"phase_seed"`
	Phases       []phaseJSON `json:"phases"`
}

func (a *testApp) rollout(t *testing.T, pid, id string) rolloutJSON {
	t.Helper()
	var j rolloutJSON
	r := a.do("GET", "/v1/products/"+pid+"/jobs/"+id, nil)
	r.wantStatus(t, 200)
	r.decode(t, &j)
	return j
}

// A bad image stops at the canaries; a good one walks through its phases,
// each device notified only once its phase started; pause, resume, retry
// and advance through the API.
func TestRolloutEndToEnd(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		bad, good := "E2EROL0BAD", "E2EROLGOOD"
		var badNames, goodNames []string
		badB, goodB := map[string]string{}, map[string]string{}
		for i := range 20 {
			n := fmt.Sprintf("b%02d", i)
			badNames, badB[n] = append(badNames, n), "fail:-5"
			n = fmt.Sprintf("g%02d", i)
			goodNames, goodB[n] = append(goodNames, n), "ok"
		}
		for _, pid := range []string{bad, good} {
			a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "rollout"}).wantStatus(t, 201)
			a.uploadFirmware(t, pid, "2.0.0", 16<<10)
		}
		badSim := startSim(t, a.MQTTAddr(), a.provisionDevices(t, bad, badB, badNames...))
		goodSim := startSim(t, a.MQTTAddr(), a.provisionDevices(t, good, goodB, goodNames...))
		phases := []map[string]any{{"count": 2, "soak_seconds": 1}, {"percent": 25, "soak_seconds": 1}, {}}

		// Rollout options are checked, each refusal naming the field.
		for field, opts := range map[string]map[string]any{
			"phases[0]":                     {"phases": []map[string]any{{"count": 2, "percent": 5}, {}}},
			"phases[0].percent":             {"phases": []map[string]any{{"percent": 101}, {}}},
			"started_at":                    {"phases": []map[string]any{{"count": 1, "started_at": "2026-01-01T00:00:00Z"}, {}}},
			"rate.increment_factor":         {"rate": map[string]any{"base_per_minute": 1, "increment_factor": 6, "increment_every": 1}},
			"abort[0].failure_type":         {"abort": []map[string]any{{"failure_type": "slow", "threshold_percent": 5}}},
			"maintenance_windows[0]: time":  {"maintenance_windows": []map[string]any{{"start": "01:00", "duration_minutes": 60, "time_zone": "Mars/Olympus"}}},
			"maintenance_windows[0]: start": {"maintenance_windows": []map[string]any{{"start": "25:00", "duration_minutes": 60}}},
			"continuous":                    {"continuous": true, "targets": map[string]any{"devices": []string{"g00"}}},
		} {
			body := map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"all": true}}
			for k, v := range opts {
				body[k] = v
			}
			r := a.do("POST", "/v1/products/"+good+"/jobs", body)
			r.wantStatus(t, 400)
			if !strings.Contains(string(r.body), field) {
				t.Errorf("refusal of %v does not name %s: %s", opts, field, r.body)
			}
		}

		// The bad image: both canaries fail, the job pauses, no one else
		// hears of it.
		j := a.createJob(t, bad, map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"all": true},
			"max_retries": 0, "phases": phases})
		waitFor(t, "the bad image's job to pause", func() bool { return a.rollout(t, bad, j.ID).Status == "paused" })
		rj := a.rollout(t, bad, j.ID)
		if rj.CurrentPhase != 0 || !strings.Contains(rj.StatusReason, "0 of 2 devices done") || len(rj.Phases) != 3 ||
			rj.Phases[0].State != "paused" || rj.Phases[0].Counts["failed"] != 2 || rj.Phases[1].Size != 5 || rj.Phases[2].Size != 13 ||
			rj.Phases[1].State != "pending" || rj.PhaseSeed == 0 {
			t.Fatalf("paused job %+v", rj)
		}
		for name, x := range a.jobExecutions(t, bad, j.ID) {
			if x.Phase > 0 && (x.Attempts != 0 || x.State != "queued") {
				t.Fatalf("%s of phase %d: %+v", name, x.Phase+1, x)
			}
		}
		a.do("POST", "/v1/products/"+bad+"/jobs/"+j.ID+"/resume", nil).wantStatus(t, 200)
		a.do("POST", "/v1/products/"+bad+"/jobs/"+j.ID+"/pause", nil).wantStatus(t, 200)
		a.do("POST", "/v1/products/"+bad+"/jobs/"+j.ID+"/pause", nil).wantStatus(t, 409)
		r := a.do("POST", "/v1/products/"+bad+"/jobs/"+j.ID+"/retry", nil)
		r.wantStatus(t, 200)
		waitFor(t, "the retried canaries to fail again", func() bool {
			xs := a.jobExecutions(t, bad, j.ID)
			n := 0
			for _, x := range xs {
				if x.Phase == 0 && x.State == "failed" && x.Attempts == 1 && x.NotifiedAt != nil {
					n++
				}
			}
			return n == 2 && a.rollout(t, bad, j.ID).Status == "paused"
		})
		a.do("POST", "/v1/products/"+bad+"/jobs/"+j.ID+"/cancel", nil).wantStatus(t, 200)
		waitFor(t, "the canceled job to close", func() bool { return a.rollout(t, bad, j.ID).CompletedAt != nil })
		if rj := a.rollout(t, bad, j.ID); rj.Counts["canceled"] != 18 || rj.Counts["failed"] != 2 {
			t.Fatalf("canceled job %+v", rj)
		}
		badDevs, _ := badSim.stop(t)
		updated := 0
		for _, d := range badDevs {
			if d.Updates > 0 {
				updated++
			}
		}
		if updated != 2 {
			t.Fatalf("%d devices of the bad image's job received update_firmware, want the 2 canaries", updated)
		}

		// The good image walks 10% → 25% → the rest.
		phases[0] = map[string]any{"percent": 10, "soak_seconds": 1}
		j = a.createJob(t, good, map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"all": true}, "phases": phases})
		waitFor(t, "the good image's job to complete", func() bool { return a.rollout(t, good, j.ID).CompletedAt != nil })
		rj = a.rollout(t, good, j.ID)
		if rj.Status != "completed" || rj.Counts["done"] != 20 || rj.CurrentPhase != 2 {
			t.Fatalf("completed job %+v", rj)
		}
		for i, want := range []int{2, 5, 13} {
			ph := rj.Phases[i]
			if ph.Size != want || ph.Counts["done"] != want || ph.StartedAt == nil || i < 2 && (ph.Result != "passed" || ph.EndedAt == nil) {
				t.Fatalf("phase %d: %+v", i+1, ph)
			}
		}
		for name, x := range a.jobExecutions(t, good, j.ID) {
			if x.NotifiedAt == nil || x.NotifiedAt.Before(*rj.Phases[x.Phase].StartedAt) {
				t.Fatalf("%s of phase %d notified at %v, before its phase started at %v", name, x.Phase+1, x.NotifiedAt, rj.Phases[x.Phase].StartedAt)
			}
			if x.Phase > 0 && x.NotifiedAt.Before(rj.Phases[x.Phase-1].EndedAt.Add(-time.Millisecond)) {
				t.Fatalf("%s of phase %d notified before phase %d ended", name, x.Phase+1, x.Phase)
			}
		}
		goodSim.stop(t)
	})
}
