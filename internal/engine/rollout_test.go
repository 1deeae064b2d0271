package engine_test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/otad/otad/internal/engine"
	"github.com/otad/otad/internal/ota"
)

// Rollout tests drive the engine by hand on a test clock: every pass is
// one tick of Run, and the clock moves only when a test says so.

// job reads a job as stored.
func (f *fixture) job(id string) *ota.Job {
	f.t.Helper()
	j, err := f.store.JobGet(f.t.Context(), id)
	must(f.t, err)
	return j
}

// execs returns a job's executions by device name.
func (f *fixture) execs(id string) map[string]*ota.JobExecution {
	f.t.Helper()
	out := map[string]*ota.JobExecution{}
	after := ""
	for {
		xs, err := f.store.JobExecutionList(f.t.Context(), ota.JobExecutionListParams{JobID: id, After: after, Limit: ota.MaxPageLimit})
		must(f.t, err)
		for _, x := range xs {
			out[x.DeviceName] = x
		}
		if len(xs) < ota.MaxPageLimit {
			return out
		}
		after = xs[len(xs)-1].DeviceName
	}
}

// inState lists a job's devices in state.
func (f *fixture) inState(id, state string) []*ota.JobExecution {
	f.t.Helper()
	var out []*ota.JobExecution
	for _, x := range f.execs(id) {
		if x.State == state {
			out = append(out, x)
		}
	}
	return out
}

// upgrade has every notified device of a job finish as a healthy device
// does: done, then back online on the new version. It returns how many.
func (f *fixture) upgrade(id string) int {
	xs := f.inState(id, ota.ExecNotified)
	for _, x := range xs {
		f.progress(x.DeviceName, ota.ProgressDone, 0, 0)
		f.version(x.DeviceName, "2.0.0")
	}
	return len(xs)
}

// fail has every notified device of a job report a failed burn.
func (f *fixture) fail(id string) int {
	xs := f.inState(id, ota.ExecNotified)
	for _, x := range xs {
		f.progress(x.DeviceName, ota.ProgressFail, 0, -2)
	}
	return len(xs)
}

// later moves the clock past the engine's periodic checks and runs a pass.
func (f *fixture) later(d time.Duration) {
	f.clock.Add(d)
	f.pass()
}

// wantStatus checks a job's status and that its reason mentions reason.
func (f *fixture) wantStatus(id, status, reason string) *ota.Job {
	f.t.Helper()
	j := f.job(id)
	if j.Status != status || !strings.Contains(j.StatusReason, reason) {
		f.t.Fatalf("job is %s (%q), want %s with a reason mentioning %q", j.Status, j.StatusReason, status, reason)
	}
	return j
}

// notifiedBeyond fails when a device of a phase after phase was ever
// notified.
func (f *fixture) notifiedBeyond(id string, phase int) {
	f.t.Helper()
	for _, x := range f.execs(id) {
		if x.Phase > phase && (x.Attempts > 0 || f.out.count(x.DeviceName) > 0) {
			f.t.Fatalf("%s of phase %d was notified while phase %d runs", x.DeviceName, x.Phase+1, phase+1)
		}
	}
}

func TestRolloutCanaryStopsABadImage(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 40)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, JobRollout: ota.JobRollout{
			Phases: []ota.JobPhase{{Count: 2, SoakSeconds: 60}, {Percent: 50}, {}}}})
		if j.PhaseSeed == 0 {
			t.Fatal("no seed recorded")
		}
		sizes := map[int]int{}
		for _, x := range f.execs(j.ID) {
			sizes[x.Phase]++
		}
		if sizes[0] != 2 || sizes[1] != 20 || sizes[2] != 18 {
			t.Fatalf("phase sizes %v, want 2, 20, 18", sizes)
		}
		f.pass()
		if n := f.fail(j.ID); n != 2 {
			t.Fatalf("%d canaries notified, want 2", n)
		}
		f.pass()
		for range 20 {
			f.later(10 * time.Second)
		}
		got := f.wantStatus(j.ID, ota.JobPaused, "phase 1: 0 of 2 devices done")
		if got.Phase != 0 || got.PhaseState(0) != ota.PhasePausedSt || got.PhaseState(1) != ota.PhasePending {
			t.Fatalf("phase %d, states %s %s", got.Phase, got.PhaseState(0), got.PhaseState(1))
		}
		f.notifiedBeyond(j.ID, 0)
		if f.out.total() != 2 {
			t.Fatalf("%d notifications, want the 2 canaries'", f.out.total())
		}

		// The same seed over the same devices draws the same phases.
		again := &ota.Job{Targets: ota.JobTargets{All: true}, JobRollout: ota.JobRollout{PhaseSeed: j.PhaseSeed,
			Phases: []ota.JobPhase{{Count: 2, SoakSeconds: 60}, {Percent: 50}, {}}}}
		must(t, f.eng.CancelJob(t.Context(), j.ID))
		f.create(again)
		first, second := f.execs(j.ID), f.execs(again.ID)
		for d, x := range first {
			if second[d].Phase != x.Phase {
				t.Fatalf("%s: phase %d with the same seed, was %d", d, second[d].Phase, x.Phase)
			}
		}
	})
}

func TestRolloutWalksThroughPhases(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 100)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, JobRollout: ota.JobRollout{
			Phases: []ota.JobPhase{{Percent: 1, SoakSeconds: 300}, {Percent: 10, SoakSeconds: 300}, {}}}})
		for phase, want := range []int{1, 10, 89} {
			f.pass()
			if n := f.upgrade(j.ID); n != want {
				t.Fatalf("phase %d: %d notified, want %d", phase+1, n, want)
			}
			f.notifiedBeyond(j.ID, phase)
			if phase < 2 {
				f.later(time.Second)
				if got := f.job(j.ID); got.Phase != phase || got.PhaseState(phase) != ota.PhaseSoaking {
					t.Fatalf("after phase %d ended: phase %d, %s", phase+1, got.Phase+1, got.PhaseState(phase))
				}
				f.later(290 * time.Second) // the soak has not passed yet
				if got := f.job(j.ID); got.Phase != phase {
					t.Fatalf("phase %d started before the soak ended", got.Phase+1)
				}
				f.notifiedBeyond(j.ID, phase)
				f.later(10 * time.Second)
				if got := f.job(j.ID); got.Phase != phase+1 || got.Phases[phase].Result != ota.PhasePassed {
					t.Fatalf("after the soak: phase %d, phase %d %q", got.Phase+1, phase+1, got.Phases[phase].Result)
				}
			}
		}
		f.pass()
		got := f.wantStatus(j.ID, ota.JobCompleted, "")
		if len(f.inState(j.ID, ota.ExecDone)) != 100 || got.PhaseState(2) == ota.PhaseRunning {
			t.Fatalf("completed job: phase state %s", got.PhaseState(2))
		}
	})
}

func TestRolloutUnhealthyInSoakPauses(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 10)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, JobRollout: ota.JobRollout{
			Phases: []ota.JobPhase{{Count: 3, SoakSeconds: 600, SuccessThreshold: 60}, {}}}})
		f.pass()
		xs := f.inState(j.ID, ota.ExecNotified)
		f.upgrade(j.ID)
		f.later(time.Minute)
		// A canary comes back on the old version inside the soak: a
		// rollback (the job has no rollback window of its own).
		f.version(xs[0].DeviceName, "1.0.0")
		f.wantState(j.ID, xs[0].DeviceName, ota.ExecRolledBack)
		f.later(5 * time.Second)
		f.wantStatus(j.ID, ota.JobPaused, "phase 1: 1 devices rolled back")
		f.notifiedBeyond(j.ID, 0)

		// Resumed, the gate is looked at anew: 2 of 3 done meets the 60%
		// threshold, but the devices must also be healthy.
		_, err := f.eng.ControlJob(t.Context(), j.ID, ota.JobActionResume)
		must(t, err)
		// Another canary stays offline: unhealthy at the end of the soak.
		f.online(xs[1].DeviceName, false)
		f.later(5 * time.Second)
		f.later(601 * time.Second)
		f.wantStatus(j.ID, ota.JobRunning, "") // waiting for it to come back
		f.later(ota.HealthGrace)
		f.wantStatus(j.ID, ota.JobPaused, "1 of 3 devices done and healthy (online on the target version)")
		f.notifiedBeyond(j.ID, 0)

		// advance skips the gate.
		got, err := f.eng.ControlJob(t.Context(), j.ID, ota.JobActionAdvance)
		must(t, err)
		if got.Phase != 1 || got.Status != ota.JobRunning || got.Phases[0].Result != ota.PhaseAdvanced {
			t.Fatalf("advanced job %+v", got)
		}
		f.pass()
		if n := len(f.inState(j.ID, ota.ExecNotified)); n != 7 {
			t.Fatalf("%d notified in the last phase, want 7", n)
		}
		if _, err := f.eng.ControlJob(t.Context(), j.ID, ota.JobActionAdvance); ota.ErrorCode(err) != ota.ECONFLICT {
			t.Fatalf("advance past the last phase: %v", err)
		}
	})
}

func TestRolloutAbortCriteria(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		// Cancel once 30% of at least 5 ended devices failed.
		f := newFixture(t, name, 20)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxConcurrent: 5, JobRollout: ota.JobRollout{
			Abort: []ota.AbortCriterion{{FailureType: ota.ExecFailed, ThresholdPercent: 30, MinEnded: 5, Action: ota.AbortCancel}}}})
		f.pass()
		xs := f.inState(j.ID, ota.ExecNotified)
		if len(xs) != 5 {
			t.Fatalf("%d notified, want 5", len(xs))
		}
		// done, failed, failed, done: 50% failed but only 4 ended.
		for i, ok := range []bool{true, false, false, true} {
			if ok {
				f.progress(xs[i].DeviceName, ota.ProgressDone, 0, 0)
			} else {
				f.progress(xs[i].DeviceName, ota.ProgressFail, 0, -2)
			}
			f.later(5 * time.Second)
			f.wantStatus(j.ID, ota.JobRunning, "")
		}
		// The fifth ends: 2 of 5 failed, 40% ≥ 30%: canceled.
		f.progress(xs[4].DeviceName, ota.ProgressDone, 0, 0)
		f.pass()
		f.wantStatus(j.ID, ota.JobCanceled, "abort criterion: 2 of 5 ended devices failed (threshold 30%)")
		// Every device not yet notified is canceled; the five that ended
		// and those still upgrading keep their state.
		canceled, upgrading := len(f.inState(j.ID, ota.ExecCanceled)), len(f.inState(j.ID, ota.ExecNotified))
		if len(f.inState(j.ID, ota.ExecQueued)) != 0 || canceled == 0 || canceled+upgrading != 15 {
			t.Fatalf("after the abort: %d canceled, %d upgrading, %d queued", canceled, upgrading, len(f.inState(j.ID, ota.ExecQueued)))
		}

		// A phase's own criterion pauses it: any failure kind, 50% of 2.
		g := newFixture(t, name, 10)
		k := g.create(&ota.Job{Targets: ota.JobTargets{All: true}, JobRollout: ota.JobRollout{
			Phases: []ota.JobPhase{{Count: 4, Abort: []ota.AbortCriterion{{FailureType: "any", ThresholdPercent: 50, MinEnded: 2}}}, {}}}})
		g.pass()
		ys := g.inState(k.ID, ota.ExecNotified)
		g.progress(ys[0].DeviceName, ota.ProgressFail, 0, -2)
		g.pass()
		g.wantStatus(k.ID, ota.JobRunning, "")
		g.progress(ys[1].DeviceName, ota.ProgressDone, 0, 0)
		g.pass()
		g.wantStatus(k.ID, ota.JobPaused, "phase 1 abort criterion: 1 of 2 ended devices failed, timed_out or rolled_back")
		// Paused, the phase's remaining devices still finish.
		g.progress(ys[2].DeviceName, ota.ProgressDone, 0, 0)
		g.wantState(k.ID, ys[2].DeviceName, ota.ExecDone)
		g.notifiedBeyond(k.ID, 0)
	})
}

func TestRolloutPauseResumeRetry(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 6)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxConcurrent: 2})
		f.pass()
		first := f.inState(j.ID, ota.ExecNotified)
		if _, err := f.eng.ControlJob(t.Context(), j.ID, ota.JobActionResume); ota.ErrorCode(err) != ota.ECONFLICT {
			t.Fatalf("resume of a running job: %v", err)
		}
		got, err := f.eng.ControlJob(t.Context(), j.ID, ota.JobActionPause)
		must(t, err)
		if got.Status != ota.JobPaused || got.StatusReason != "paused by hand" {
			t.Fatalf("paused job %+v", got)
		}
		// Devices already upgrading finish; nothing more is dispatched.
		f.progress(first[0].DeviceName, ota.ProgressDone, 0, 0)
		f.progress(first[1].DeviceName, ota.ProgressFail, 0, -2)
		for range 3 {
			f.later(10 * time.Second)
		}
		f.wantStatus(j.ID, ota.JobPaused, "by hand")
		if f.out.total() != 2 {
			t.Fatalf("%d notifications while paused", f.out.total())
		}
		// A queued device that reconnects is not dispatched either.
		queued := f.inState(j.ID, ota.ExecQueued)
		f.version(queued[0].DeviceName, "1.0.0")
		if f.out.total() != 2 {
			t.Fatal("a paused job notified a reconnecting device")
		}
		_, err = f.eng.ControlJob(t.Context(), j.ID, ota.JobActionResume)
		must(t, err)
		f.pass()
		if n := len(f.inState(j.ID, ota.ExecNotified)); n != 2 {
			t.Fatalf("%d notified after resume, want 2", n)
		}
		for f.upgrade(j.ID) > 0 {
			f.pass()
		}
		f.pass()
		f.wantStatus(j.ID, ota.JobCompleted, "")

		// retry gives the failed device a new attempt, and the job runs
		// again until it ends.
		_, err = f.eng.ControlJob(t.Context(), j.ID, ota.JobActionRetry)
		must(t, err)
		if x := f.wantState(j.ID, first[1].DeviceName, ota.ExecQueued); x.Attempts != 0 {
			t.Fatalf("retried execution %+v", x)
		}
		f.wantStatus(j.ID, ota.JobRunning, "")
		f.pass()
		f.wantState(j.ID, first[1].DeviceName, ota.ExecNotified)
		f.upgrade(j.ID)
		f.pass()
		f.wantStatus(j.ID, ota.JobCompleted, "")
		if n := len(f.inState(j.ID, ota.ExecDone)); n != 6 {
			t.Fatalf("%d done, want 6", n)
		}
	})
}

func TestRolloutExponentialRate(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 60)
		// 2/min, doubled after every 4 notified, never above 16/min.
		f.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxPerMinute: 16, JobRollout: ota.JobRollout{
			Rate: &ota.JobRate{BasePerMinute: 2, IncrementFactor: 2, IncrementEvery: 4}}})
		start := f.clock.Now()
		var at []time.Duration
		for range 300 {
			before := f.out.total()
			f.pass()
			for range f.out.total() - before {
				at = append(at, f.clock.Now().Sub(start))
			}
			f.clock.Add(2 * time.Second)
		}
		// The rate allowed at the i-th notification, from those before it.
		rate := func(i int) int { return min(16, 2<<(i/4)) }
		for i := range at {
			// No more than the rate's notifications within a minute...
			if r := rate(i); i >= r && at[i]-at[i-r] < time.Minute {
				t.Fatalf("notification %d at %v: %d within a minute at %d/min (%v)", i, at[i], r+1, r, at[:i+1])
			}
			// ...and never two in the same second once the rate is below 60/min.
			if i > 0 && at[i] == at[i-1] {
				t.Fatalf("notifications %d and %d in one burst at %v", i-1, i, at[i])
			}
		}
		// 4 at 2/min, 4 at 4/min, 4 at 8/min then 16/min: about 3+1+0.5
		// minutes for the first 12, then 16 a minute.
		if len(at) < 40 || len(at) > 60 {
			t.Fatalf("%d notified in 10 minutes: %v", len(at), at)
		}
		if !(at[4] >= 90*time.Second && at[12] < 6*time.Minute) {
			t.Fatalf("the rate does not grow as configured: %v", at)
		}
	})
}

func TestRolloutMaintenanceWindowsAndEndAt(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 30)
		// A window of 10 minutes every day at the next whole hour, in a
		// zone with an offset, and an end 26 hours from now.
		loc, err := time.LoadLocation("Asia/Kolkata")
		must(t, err)
		now := f.clock.Now()
		open := now.In(loc).Truncate(time.Hour).Add(time.Hour)
		if open.Sub(now) < 2*time.Minute {
			open = open.Add(time.Hour)
		}
		end := now.Add(26 * time.Hour)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxPerMinute: 1, JobRollout: ota.JobRollout{
			Windows: []ota.MaintenanceWindow{{Start: open.Format("15:04"), DurationMinutes: 10, TimeZone: "Asia/Kolkata"}},
			EndAt:   &end}})
		var at []time.Time
		for f.clock.Now().Before(end.Add(time.Minute)) {
			before := f.out.total()
			f.pass()
			for range f.out.total() - before {
				at = append(at, f.clock.Now())
			}
			// Passes every 20 s near and in the windows, every 5 minutes
			// elsewhere (any pass outside a window would notify if the
			// window were not honoured).
			if since := (f.clock.Now().Sub(open)%(24*time.Hour) + 24*time.Hour) % (24 * time.Hour); since < 15*time.Minute || since > 23*time.Hour+50*time.Minute {
				f.clock.Add(20 * time.Second)
			} else {
				f.clock.Add(5 * time.Minute)
			}
		}
		if len(at) < 18 || len(at) > 22 {
			t.Fatalf("%d notified in two 10-minute windows at 1/min, want about 20: %v", len(at), at)
		}
		for _, a := range at {
			since := a.Sub(open)
			if since < 0 {
				t.Fatalf("notified at %v, before the window opened at %v", a, open)
			}
			if since%(24*time.Hour) >= 10*time.Minute {
				t.Fatalf("notified at %v, outside the windows from %v", a, open)
			}
		}
		f.later(5 * time.Second) // past end_at
		got := f.wantStatus(j.ID, ota.JobCanceled, "end_at reached")
		if len(f.inState(j.ID, ota.ExecQueued)) != 0 || got.CompletedAt == nil {
			t.Fatalf("job after end_at: %+v with queued devices left", got)
		}
	})
}

func TestRolloutContinuousJob(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 2)
		j := f.create(&ota.Job{Targets: ota.JobTargets{Versions: []string{"1.0.0"}}, JobRollout: ota.JobRollout{Continuous: true}})
		f.pass()
		f.upgrade(j.ID)
		for range 3 {
			f.later(5 * time.Second)
		}
		f.wantStatus(j.ID, ota.JobRunning, "") // continuous: not completed
		// A device registered later, on a matching version, joins.
		f.addDevice("late", true)
		f.later(5 * time.Second)
		f.pass()
		f.wantState(j.ID, "late", ota.ExecNotified)
		// A device on another version joins once it reports a matching one.
		f.addDevice("other", false)
		must(t, f.store.DevicePresence(t.Context(), ota.DevicePresenceParams{ProductID: f.pid, DeviceName: "other", Online: true, Node: "n1", At: f.clock.Now()}))
		f.version("other", "0.9.0")
		f.later(5 * time.Second)
		if _, err := f.store.JobExecutionGet(t.Context(), j.ID, "other"); ota.ErrorCode(err) != ota.ENOTFOUND {
			t.Fatalf("a device on 0.9.0 joined a job for 1.0.0: %v", err)
		}
		f.version("other", "1.0.0")
		f.later(5 * time.Second)
		f.pass()
		f.wantState(j.ID, "other", ota.ExecNotified)
		f.upgrade(j.ID)
		// A device that is done does not join again, and canceling ends it.
		f.later(5 * time.Second)
		if n := len(f.execs(j.ID)); n != 4 {
			t.Fatalf("%d executions, want 4", n)
		}
		must(t, f.eng.CancelJob(t.Context(), j.ID))
		f.pass()
		got := f.wantStatus(j.ID, ota.JobCanceled, "by hand")
		if got.CompletedAt == nil {
			t.Fatal("canceled continuous job not closed")
		}
		f.addDevice("after", true)
		f.later(5 * time.Second)
		if _, err := f.store.JobExecutionGet(t.Context(), j.ID, "after"); ota.ErrorCode(err) != ota.ENOTFOUND {
			t.Fatal("a canceled continuous job added a device")
		}
	})
}

// addRecorder counts a store's JobExecutionsAdd calls: looks at every
// target (Devices nil) and looks at changed devices only.
type addRecorder struct {
	ota.Store
	full    int
	changed [][]string
}

func (r *addRecorder) JobExecutionsAdd(ctx context.Context, p ota.JobAddParams) (int, error) {
	if p.Devices == nil {
		r.full++
	} else {
		r.changed = append(r.changed, p.Devices)
	}
	return r.Store.JobExecutionsAdd(ctx, p)
}

// TestContinuousJobLooksAtChanges: after its first look at every target, a
// continuous job looks only at the devices events name (a device created,
// a version reported), not at the whole fleet, and at all of them again
// every ten minutes.
func TestContinuousJobLooksAtChanges(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 3)
		rec := &addRecorder{Store: f.store}
		var err error
		f.eng, err = engine.New(engine.Config{Logger: slog.New(slog.DiscardHandler), Store: rec, Notifier: f.out, URLs: signer{},
			Node: "n1", Now: f.clock.Now, Batch: 7})
		must(t, err)
		j := f.create(&ota.Job{Targets: ota.JobTargets{Versions: []string{"1.0.0"}}, JobRollout: ota.JobRollout{Continuous: true}})
		f.pass()
		if rec.full != 1 || len(rec.changed) != 0 {
			t.Fatalf("first pass: %d full looks, changed %v; want one full look", rec.full, rec.changed)
		}
		f.later(5 * time.Second)
		if rec.full != 1 || len(rec.changed) != 0 {
			t.Fatalf("nothing changed: %d full looks, changed %v; want no look", rec.full, rec.changed)
		}
		f.addDevice("late", true)
		f.later(5 * time.Second)
		f.pass()
		f.wantState(j.ID, "late", ota.ExecNotified)
		if rec.full != 1 || len(rec.changed) != 1 || !slices.Equal(rec.changed[0], []string{"late"}) {
			t.Fatalf("after a device joined: %d full looks, changed %v; want a look at late alone", rec.full, rec.changed)
		}
		f.later(10 * time.Minute)
		if rec.full != 2 {
			t.Fatalf("ten minutes on: %d full looks, want 2", rec.full)
		}
	})
}

// TestCancelInBatches: a cancel cancels CancelBatch queued devices at once
// and the engine's next passes the rest, a batch a pass; each device takes
// the job's reason, and the job closes once none is left queued.
func TestCancelInBatches(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 5)
		var err error
		f.eng, err = engine.New(engine.Config{Logger: slog.New(slog.DiscardHandler), Store: f.store, Notifier: f.out, URLs: signer{},
			Node: "n1", Now: f.clock.Now, Batch: 7, CancelBatch: 2})
		must(t, err)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, StartAt: new(f.clock.Now().Add(time.Hour))})
		must(t, f.eng.CancelJob(t.Context(), j.ID))
		counts, err := f.store.JobCounts(t.Context(), j.ID)
		must(t, err)
		if counts[ota.ExecCanceled] != 2 || counts[ota.ExecQueued] != 3 {
			t.Fatalf("after the cancel: %v, want 2 canceled and 3 queued", counts)
		}
		if got := f.job(j.ID); got.Status != ota.JobCanceled || got.CompletedAt != nil {
			t.Fatalf("job %s completed %v, want canceled, not closed", got.Status, got.CompletedAt)
		}
		// A pass a batch: the heartbeat and other jobs go on between them.
		f.pass()
		if counts, err = f.store.JobCounts(t.Context(), j.ID); err != nil || counts[ota.ExecQueued] != 1 {
			t.Fatalf("after one pass: %v, %v; want 1 queued", counts, err)
		}
		f.pass()
		for name, x := range f.execs(j.ID) {
			if x.State != ota.ExecCanceled || x.ResultMsg != "canceled by hand" {
				t.Fatalf("%s: %s %q, want canceled by hand", name, x.State, x.ResultMsg)
			}
		}
		if got := f.wantStatus(j.ID, ota.JobCanceled, "by hand"); got.CompletedAt == nil {
			t.Fatal("canceled job not closed once nothing was queued")
		}
	})
}
