package ota

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

var machineNow = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func machineJob() *Job {
	return &Job{ID: "j", ProductID: "P", FirmwareVersion: "2.0", Status: JobRunning, TimeoutSeconds: 60,
		MaxRetries: 1, RetryBackoffSeconds: 10, RollbackWindowSeconds: 3600}
}

// machineExec is an execution in state st as the engine would have left
// it: one attempt made (one retry left) for the in-flight and failed
// states, notified a minute ago, done half an hour ago.
func machineExec(st string) *JobExecution {
	x := &JobExecution{JobID: "j", ProductID: "P", DeviceName: "d", State: st, FromVersion: "1.0", Rev: 3}
	notified := machineNow.Add(-time.Minute)
	deadline := machineNow.Add(-time.Second) // past: the deadline event applies
	finished := machineNow.Add(-30 * time.Minute)
	switch st {
	case ExecNotified, ExecDownloading, ExecBurning:
		x.Attempts, x.NotifiedAt, x.DeadlineAt = 1, &notified, &deadline
		if st == ExecDownloading {
			x.Percent = 40
		}
	case ExecDone, ExecRolledBack, ExecFailed, ExecTimedOut, ExecCanceled:
		x.Attempts, x.NotifiedAt, x.FinishedAt = 1, &notified, &finished
	}
	return x
}

func machineReport(typ, version, state string) ExecEvent {
	r := &Report{ProductID: "P", DeviceName: "d", Type: typ, Version: version, State: state, At: machineNow}
	if state == ProgressDownloading {
		p := 70
		r.Percent = &p
	}
	if state == ProgressFail {
		c := ResultFileNotFound
		r.ResultCode, r.ResultMsg = &c, "time_out"
	}
	return ExecEvent{Kind: EventReport, Report: r}
}

// TestStepTable covers every (state, event) pair: the state each leads to
// and the effects asked for.
func TestStepTable(t *testing.T) {
	events := []struct {
		name string
		ev   ExecEvent
	}{
		{"claim", ExecEvent{Kind: EventClaim, Deadline: machineNow.Add(time.Minute)}},
		{"publish_failed", ExecEvent{Kind: EventPublishFailed}},
		{"deadline", ExecEvent{Kind: EventDeadline}},
		{"cancel", ExecEvent{Kind: EventCancel}},
		{"device_deleted", ExecEvent{Kind: EventDeviceDeleted}},
		{"version_target", machineReport(EventReportVersion, "2.0", "")},
		{"version_other", machineReport(EventReportVersion, "1.0", "")},
		{"downloading", machineReport(EventReportProgress, "2.0", ProgressDownloading)},
		{"burning", machineReport(EventReportProgress, "2.0", ProgressBurning)},
		{"done", machineReport(EventReportProgress, "2.0", ProgressDone)},
		{"fail", machineReport(EventReportProgress, "2.0", ProgressFail)},
		{"progress_other_version", machineReport(EventReportProgress, "3.0", ProgressDone)},
	}
	// want[state][event] is "next state" plus effects: +notify, +dispatch.
	// A state alone is unchanged; "queued*" is a retry or requeue.
	want := map[string]map[string]string{
		ExecQueued: {"claim": "notified+notify", "publish_failed": "queued", "deadline": "queued", "cancel": "canceled",
			"device_deleted": "canceled", "version_target": "done", "version_other": "queued+dispatch", "downloading": "queued",
			"burning": "queued", "done": "queued", "fail": "queued", "progress_other_version": "queued"},
		ExecNotified: {"claim": "notified", "publish_failed": "queued*", "deadline": "queued*", "cancel": "notified",
			"device_deleted": "canceled", "version_target": "done", "version_other": "notified+notify", "downloading": "downloading",
			"burning": "burning", "done": "done", "fail": "queued*", "progress_other_version": "notified"},
		ExecDownloading: {"claim": "downloading", "publish_failed": "downloading", "deadline": "queued*", "cancel": "downloading",
			"device_deleted": "canceled", "version_target": "done", "version_other": "downloading+notify", "downloading": "downloading",
			"burning": "burning", "done": "done", "fail": "queued*", "progress_other_version": "downloading"},
		ExecBurning: {"claim": "burning", "publish_failed": "burning", "deadline": "queued*", "cancel": "burning",
			"device_deleted": "canceled", "version_target": "done", "version_other": "queued*", "downloading": "burning",
			"burning": "burning", "done": "done", "fail": "queued*", "progress_other_version": "burning"},
		ExecDone: {"claim": "done", "publish_failed": "done", "deadline": "done", "cancel": "done",
			"device_deleted": "done", "version_target": "done", "version_other": "rolled_back", "downloading": "done",
			"burning": "done", "done": "done", "fail": "done", "progress_other_version": "done"},
		ExecFailed: {"claim": "failed", "publish_failed": "failed", "deadline": "failed", "cancel": "failed",
			"device_deleted": "failed", "version_target": "done", "version_other": "failed", "downloading": "failed",
			"burning": "failed", "done": "done", "fail": "failed", "progress_other_version": "failed"},
		ExecTimedOut: {"claim": "timed_out", "publish_failed": "timed_out", "deadline": "timed_out", "cancel": "timed_out",
			"device_deleted": "timed_out", "version_target": "done", "version_other": "timed_out", "downloading": "timed_out",
			"burning": "timed_out", "done": "done", "fail": "timed_out", "progress_other_version": "timed_out"},
		ExecCanceled: {"claim": "canceled", "publish_failed": "canceled", "deadline": "canceled", "cancel": "canceled",
			"device_deleted": "canceled", "version_target": "canceled", "version_other": "canceled", "downloading": "canceled",
			"burning": "canceled", "done": "canceled", "fail": "canceled", "progress_other_version": "canceled"},
		ExecRolledBack: {"claim": "rolled_back", "publish_failed": "rolled_back", "deadline": "rolled_back", "cancel": "rolled_back",
			"device_deleted": "rolled_back", "version_target": "rolled_back", "version_other": "rolled_back", "downloading": "rolled_back",
			"burning": "rolled_back", "done": "rolled_back", "fail": "rolled_back", "progress_other_version": "rolled_back"},
	}
	if len(want) != len(ExecStates) {
		t.Fatalf("table covers %d states, the machine has %d", len(want), len(ExecStates))
	}
	for _, st := range ExecStates {
		for _, e := range events {
			w, ok := want[st][e.name]
			if !ok {
				t.Fatalf("no expectation for (%s, %s)", st, e.name)
			}
			x := machineExec(st)
			before := *x
			got := Step(machineJob(), x, e.ev, machineNow)
			if *x != before {
				t.Fatalf("(%s, %s): Step changed its input", st, e.name)
			}
			desc := got.Exec.State
			if got.Exec.State == ExecQueued && st != ExecQueued {
				desc += "*"
			}
			if got.Notify {
				desc += "+notify"
			}
			if got.Dispatch {
				desc += "+dispatch"
			}
			if desc != w {
				t.Errorf("(%s, %s) = %s, want %s", st, e.name, desc, w)
			}
			if got.Changed != (got.Exec != before) {
				t.Errorf("(%s, %s): Changed = %v, but the execution did%s change", st, e.name, got.Changed, map[bool]string{true: " not"}[!got.Changed])
			}
			if got.Exec.Rev != x.Rev {
				t.Errorf("(%s, %s): Step must leave Rev to the store", st, e.name)
			}
			if ExecEnded(got.Exec.State) != (got.Exec.FinishedAt != nil) {
				t.Errorf("(%s, %s): state %s with finished_at %v", st, e.name, got.Exec.State, got.Exec.FinishedAt)
			}
			if got.Exec.State == ExecQueued && got.Exec.DeadlineAt != nil || ExecInFlight(got.Exec.State) && got.Exec.DeadlineAt == nil {
				t.Errorf("(%s, %s): state %s with deadline %v", st, e.name, got.Exec.State, got.Exec.DeadlineAt)
			}
			wantFreed := ExecInFlight(st) && !ExecInFlight(got.Exec.State) || ExecEnded(st) != ExecEnded(got.Exec.State)
			if got.Freed != wantFreed {
				t.Errorf("(%s, %s): Freed = %v", st, e.name, got.Freed)
			}
		}
	}
}

func TestStepAttempts(t *testing.T) {
	j := machineJob()
	x := machineExec(ExecQueued)
	claim := Step(j, x, ExecEvent{Kind: EventClaim, Deadline: machineNow.Add(time.Minute)}, machineNow)
	if claim.Exec.Attempts != 1 || *claim.Exec.NotifiedAt != machineNow || *claim.Exec.DeadlineAt != machineNow.Add(time.Minute) {
		t.Fatalf("claim = %+v", claim.Exec)
	}
	// A publish failure gives the attempt back and waits a little.
	back := Step(j, &claim.Exec, ExecEvent{Kind: EventPublishFailed}, machineNow)
	if back.Exec.State != ExecQueued || back.Exec.Attempts != 0 || back.Exec.Due(machineNow) || !back.Exec.Due(machineNow.Add(publishRetryDelay)) {
		t.Fatalf("publish failure = %+v", back.Exec)
	}
	// Fail with a retry left: queued after the backoff, the code kept.
	failed := Step(j, &claim.Exec, machineReport(EventReportProgress, "2.0", ProgressFail), machineNow)
	if failed.Exec.State != ExecQueued || *failed.Exec.NextAttemptAt != machineNow.Add(10*time.Second) ||
		failed.Exec.ResultCode != ResultFileNotFound || failed.Exec.ResultName != "file_not_found" || failed.Exec.ResultMsg != "time_out" {
		t.Fatalf("first fail = %+v", failed.Exec)
	}
	if failed.Exec.Due(machineNow) {
		t.Fatal("a retry is due before its backoff")
	}
	// The last attempt ends failed; a timeout ends timed_out.
	last := machineExec(ExecDownloading)
	last.Attempts = 2
	if got := Step(j, last, machineReport(EventReportProgress, "2.0", ProgressFail), machineNow); got.Exec.State != ExecFailed {
		t.Fatalf("last fail = %s", got.Exec.State)
	}
	if got := Step(j, last, ExecEvent{Kind: EventDeadline}, machineNow); got.Exec.State != ExecTimedOut || !strings.Contains(got.Exec.ResultMsg, "60s") {
		t.Fatalf("last timeout = %+v", got.Exec)
	}
	// A deadline not yet reached changes nothing.
	future := machineNow.Add(time.Second)
	last.DeadlineAt = &future
	if got := Step(j, last, ExecEvent{Kind: EventDeadline}, machineNow); got.Changed {
		t.Fatalf("early deadline changed %+v", got.Exec)
	}
	// A fail without a code is update_failed.
	ev := machineReport(EventReportProgress, "2.0", ProgressFail)
	ev.Report.ResultCode, ev.Report.ResultMsg = nil, ""
	if got := Step(j, last, ev, machineNow); got.Exec.ResultCode != ResultUpdateFailed || got.Exec.ResultMsg != "update_failed" {
		t.Fatalf("fail without code = %+v", got.Exec)
	}
}

func TestStepClaimNeedsRunningDueJob(t *testing.T) {
	ev := ExecEvent{Kind: EventClaim, Deadline: machineNow.Add(time.Minute)}
	for _, status := range []string{JobScheduled, JobCanceled, JobCompleted} {
		j := machineJob()
		j.Status = status
		if got := Step(j, machineExec(ExecQueued), ev, machineNow); got.Changed || got.Notify {
			t.Errorf("claim in a %s job = %+v", status, got)
		}
	}
	x := machineExec(ExecQueued)
	later := machineNow.Add(time.Second)
	x.NextAttemptAt = &later
	if got := Step(machineJob(), x, ev, machineNow); got.Changed {
		t.Error("claimed before its retry was due")
	}
	if got := Step(machineJob(), x, machineReport(EventReportVersion, "1.0", ""), machineNow); got.Dispatch {
		t.Error("a report asked to dispatch a retry not yet due")
	}
}

func TestStepRollbackWindow(t *testing.T) {
	j := machineJob()
	x := machineExec(ExecDone) // done 30 minutes ago
	if got := Step(j, x, machineReport(EventReportVersion, "1.0", ""), machineNow); got.Exec.State != ExecRolledBack ||
		!strings.Contains(got.Exec.ResultMsg, "1.0") {
		t.Fatalf("inside the window = %+v", got.Exec)
	}
	j.RollbackWindowSeconds = 600
	if got := Step(j, x, machineReport(EventReportVersion, "1.0", ""), machineNow); got.Changed {
		t.Fatalf("outside the window = %+v", got.Exec)
	}
	j.RollbackWindowSeconds = 0
	if got := Step(j, x, machineReport(EventReportVersion, "1.0", ""), machineNow); got.Changed {
		t.Fatalf("detection off = %+v", got.Exec)
	}
}

func TestStepLateAndRepeatedReports(t *testing.T) {
	j := machineJob()
	// A report_version received before the notification went out.
	x := machineExec(ExecNotified)
	ev := machineReport(EventReportVersion, "1.0", "")
	ev.Report.At = x.NotifiedAt.Add(-time.Second)
	if got := Step(j, x, ev, machineNow); got.Notify || got.Changed {
		t.Fatalf("early report = %+v", got)
	}
	// Percent only grows; a repeated one changes nothing.
	d := machineExec(ExecDownloading)
	ev = machineReport(EventReportProgress, "2.0", ProgressDownloading)
	low := 10
	ev.Report.Percent = &low
	if got := Step(j, d, ev, machineNow); got.Changed {
		t.Fatalf("lower percent = %+v", got.Exec)
	}
	// A done from a previous job's attempt does not end an execution this
	// job never notified; the device's version report does.
	q := machineExec(ExecQueued)
	if got := Step(j, q, machineReport(EventReportProgress, "2.0", ProgressDone), machineNow); got.Changed {
		t.Fatalf("done before any attempt = %+v", got.Exec)
	}
	q.Attempts = 1 // a retry is pending: the device finished after all
	if got := Step(j, q, machineReport(EventReportProgress, "2.0", ProgressDone), machineNow); got.Exec.State != ExecDone {
		t.Fatalf("done while a retry waits = %+v", got.Exec)
	}
}

func TestNewExecutionAndJobEnd(t *testing.T) {
	j := machineJob()
	if x := NewExecution(j, "2.0", machineNow); x.State != ExecDone || x.Percent != 100 || x.FinishedAt == nil {
		t.Fatalf("already on target = %+v", x)
	}
	if x := NewExecution(j, "1.0", machineNow); x.State != ExecQueued || x.FinishedAt != nil || x.FromVersion != "1.0" {
		t.Fatalf("new = %+v", x)
	}
	for _, c := range []struct {
		status string
		counts map[string]int
		want   string
	}{
		{JobRunning, map[string]int{ExecDone: 3, ExecFailed: 1, ExecRolledBack: 1}, JobCompleted},
		{JobRunning, map[string]int{ExecDone: 3, ExecQueued: 1}, ""},
		{JobRunning, map[string]int{ExecBurning: 1}, ""},
		{JobCanceled, map[string]int{ExecCanceled: 3}, JobCanceled},
		{JobCanceled, map[string]int{ExecCanceled: 3, ExecDownloading: 1}, ""},
		{JobScheduled, map[string]int{ExecDone: 1}, ""},
		{JobCompleted, map[string]int{ExecDone: 1}, ""},
	} {
		j.Status = c.status
		got, ok := JobEnd(j, c.counts)
		if got != c.want || ok != (c.want != "") {
			t.Errorf("JobEnd(%s, %v) = %q, %v", c.status, c.counts, got, ok)
		}
	}
}

func TestResultName(t *testing.T) {
	for code, want := range map[int]string{0: "", -1: "download_timeout", -2: "file_not_found", -3: "signature_expired",
		-4: "md5_mismatch", -5: "update_failed", -99: "update_failed", 7: "update_failed"} {
		if got := ResultName(code); got != want {
			t.Errorf("ResultName(%d) = %q, want %q", code, got, want)
		}
	}
}

func TestApplyReport(t *testing.T) {
	d := &Device{ProductID: "P", Name: "d", Version: "1.0"}
	pct := func(n int) *int { return &n }
	steps := []struct {
		r    Report
		want string
	}{
		{Report{Type: EventReportProgress, Version: "2.0", State: ProgressDownloading, Percent: pct(40)}, "1.0 2.0/downloading/40"},
		{Report{Type: EventReportProgress, Version: "2.0", State: ProgressBurning}, "1.0 2.0/burning/40"},
		{Report{Type: EventReportProgress, Version: "2.0", State: ProgressDone}, "1.0 2.0/done/100"},
		{Report{Type: EventReportVersion, Version: "2.0"}, "2.0 2.0/done/100"},
		{Report{Type: EventReportProgress, Version: "3.0", State: ProgressFail, ResultCode: pct(-4)}, "2.0 3.0/failed/0"},
	}
	for i, s := range steps {
		s.r.At = machineNow.Add(time.Duration(i) * time.Second)
		ApplyReport(d, s.r, "n1")
		got := fmt.Sprintf("%s %s/%s/%d", d.Version, d.Upgrade.Version, d.Upgrade.State, d.Upgrade.Percent)
		if got != s.want || !d.Online || d.Node != "n1" || !d.LastSeenAt.Equal(s.r.At) {
			t.Fatalf("step %d: %s online=%v node=%s, want %s", i, got, d.Online, d.Node, s.want)
		}
	}
	if d.Upgrade.ResultCode != -4 || d.Upgrade.ResultName != "md5_mismatch" {
		t.Fatalf("fail progress = %+v", d.Upgrade)
	}
}
