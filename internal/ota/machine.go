package ota

import (
	"fmt"
	"time"
)

// The upgrade state machine: one device's execution within one job moves
// only through ExecStep. The engine feeds it events and performs the
// effects it asks for; the stores keep the result with compare-and-set on
// JobExecution.Rev. Nothing else decides a transition.
//
//	queued ──claim──▶ notified ──▶ downloading ──▶ burning ──▶ done ──▶ rolled_back
//	  ▲ │                │              │             │          ▲
//	  │ └──cancel──▶ canceled           │             │          │ the device's truth:
//	  │                  └──────────────┴─────────────┴──▶ failed | timed_out
//	  └── retry (backoff) or publish failure (no attempt used) ◀──┘
//
// A done report, or a report_version equal to the target, makes an
// execution done from any state but canceled and rolled_back: a device that
// finished after its attempt timed out or failed has still finished. Another
// version reported after done, within the job's rollback window, is a
// rollback.

// Execution event kinds.
const (
	EventClaim         = "claim"          // the engine picked a due, queued execution of an online device
	EventPublishFailed = "publish_failed" // the claimed execution's update_firmware was not delivered
	EventDeadline      = "deadline"       // the attempt's deadline passed
	EventCancel        = "cancel"         // the job was canceled
	EventDeviceDeleted = "device_deleted" // the execution's device was deleted
	EventReport        = "report"         // the device reported (Report is set)
	EventRetry         = "retry"          // an operator gave the job's failed devices new attempts
)

// ExecEvent is what happened to an execution.
type ExecEvent struct {
	Kind   string
	Report *Report // EventReport
	// Deadline is when a claimed attempt times out (EventClaim).
	Deadline time.Time
}

// ExecStep is what an event does to an execution.
type ExecStep struct {
	// Exec is the execution after the event: a copy of the one given, with
	// Rev unchanged (the store increments it when it writes).
	Exec JobExecution
	// Changed reports that Exec differs from the execution given and must
	// be stored.
	Changed bool
	// Notify asks the engine to send update_firmware for the current
	// attempt (a claim, or a device in that attempt that asks again).
	Notify bool
	// Dispatch says the execution is due and its device online: the engine
	// should look for work now rather than at its next tick.
	Dispatch bool
	// Freed says the execution left the in-flight states, so a paced job has
	// a slot free and the job may have ended.
	Freed bool
	// Note says, for the log, why the event did what it did.
	Note string
}

// publishRetryDelay is how long a claimed execution whose message could not
// be delivered waits before it is claimed again, so that a device recorded
// online but not really connected is not claimed in a loop.
const publishRetryDelay = 5 * time.Second

// Step applies event ev, which happened at now, to execution x of job j. It
// is a pure function: it neither reads nor writes anything but its result.
func Step(j *Job, x *JobExecution, ev ExecEvent, now time.Time) ExecStep {
	s := ExecStep{Exec: *x}
	n := &s.Exec
	switch ev.Kind {
	case EventClaim:
		if x.State != ExecQueued || j.Status != JobRunning || !x.Due(now) {
			return s
		}
		n.State, n.Attempts, n.Percent = ExecNotified, x.Attempts+1, 0
		n.NotifiedAt, n.DeadlineAt, n.NextAttemptAt, n.FinishedAt = timep(now), timep(ev.Deadline), nil, nil
		s.Notify = true
	case EventPublishFailed:
		if x.State != ExecNotified {
			return s
		}
		// The attempt never reached the device: it does not count.
		n.State, n.Attempts = ExecQueued, max(x.Attempts-1, 0)
		n.NotifiedAt, n.DeadlineAt, n.NextAttemptAt = nil, nil, timep(now.Add(publishRetryDelay))
		s.Note = "update_firmware not delivered; queued again"
	case EventDeadline:
		if !ExecInFlight(x.State) || x.DeadlineAt == nil || x.DeadlineAt.After(now) {
			return s
		}
		endAttempt(j, n, ExecTimedOut, 0, fmt.Sprintf("no result within %ds of notification", j.TimeoutSeconds), now)
	case EventCancel:
		if x.State != ExecQueued {
			return s // devices already upgrading are still tracked
		}
		n.State, n.NextAttemptAt, n.FinishedAt = ExecCanceled, nil, timep(now)
		if j.StatusReason != "" {
			n.ResultMsg = j.StatusReason // by hand, end_at, an abort criterion
		}
	case EventRetry:
		if x.State != ExecFailed && x.State != ExecTimedOut {
			return s
		}
		n.State, n.Attempts, n.NextAttemptAt, n.DeadlineAt, n.FinishedAt = ExecQueued, 0, nil, nil, nil
		s.Note = "retried by hand"
	case EventDeviceDeleted:
		if ExecEnded(x.State) {
			return s
		}
		n.State, n.DeadlineAt, n.NextAttemptAt, n.FinishedAt = ExecCanceled, nil, nil, timep(now)
		n.ResultMsg = "device deleted"
	case EventReport:
		if ev.Report == nil {
			return s
		}
		onReport(j, x, n, &s, *ev.Report, now)
	default:
		return s
	}
	n.ResultName = ResultName(n.ResultCode)
	if *n != *x {
		s.Changed = true
		n.UpdatedAt = now
		s.Freed = ExecInFlight(x.State) && !ExecInFlight(n.State) || ExecEnded(x.State) != ExecEnded(n.State)
	}
	return s
}

// onReport applies a device's report r to x, writing the result to n.
func onReport(j *Job, x, n *JobExecution, s *ExecStep, r Report, now time.Time) {
	target := j.FirmwareVersion
	switch {
	case r.Type == EventReportVersion && r.Version == target,
		r.Type == EventReportProgress && r.Version == target && r.State == ProgressDone:
		// The device runs, or says it installed, the target: its truth wins
		// over a timeout or a failure otad recorded.
		if x.State == ExecDone || x.State == ExecCanceled || x.State == ExecRolledBack {
			return
		}
		if x.State == ExecQueued && r.Type == EventReportProgress && x.Attempts == 0 {
			return // a done of an attempt this job never made
		}
		n.State, n.Percent, n.ResultCode, n.ResultMsg = ExecDone, 100, 0, ""
		n.DeadlineAt, n.NextAttemptAt, n.FinishedAt = nil, nil, timep(now)
		s.Note = "done"

	case r.Type == EventReportVersion:
		switch x.State {
		case ExecDone:
			if j.watchesRollback(x, now) {
				n.State = ExecRolledBack
				n.ResultCode, n.ResultMsg = 0, fmt.Sprintf("reports version %s after done", r.Version)
				n.FinishedAt = timep(now)
				s.Note = "rolled back"
			}
		case ExecQueued:
			s.Dispatch = j.Status == JobRunning && x.Due(now)
		case ExecNotified, ExecDownloading:
			// A report received before this attempt's notification went
			// out (a connect-time report racing a claim) says nothing of
			// whether the device got it; a later one means it missed the
			// message or restarted: send it again.
			s.Notify = x.NotifiedAt == nil || !r.At.Before(*x.NotifiedAt)
		case ExecBurning:
			// It burned the image and came back on another version.
			endAttempt(j, n, ExecFailed, ResultUpdateFailed, fmt.Sprintf("reports version %s after burning", r.Version), now)
		}

	case r.Version != target:
		// Progress of another version: history only.

	case r.State == ProgressDownloading:
		pct := 0
		if r.Percent != nil {
			pct = min(max(*r.Percent, 0), 100)
		}
		switch {
		case x.State == ExecNotified, x.State == ExecDownloading && pct > x.Percent:
			n.State, n.Percent = ExecDownloading, pct
		}
	case r.State == ProgressBurning:
		if x.State == ExecNotified || x.State == ExecDownloading {
			n.State, n.Percent = ExecBurning, 100
		}
	case r.State == ProgressFail:
		if !ExecInFlight(x.State) {
			return // a second fail of the same attempt, or a late one
		}
		code := ResultUpdateFailed
		if r.ResultCode != nil && *r.ResultCode != 0 {
			code = *r.ResultCode
		}
		msg := r.ResultMsg
		if msg == "" {
			msg = ResultName(code)
		}
		endAttempt(j, n, ExecFailed, code, msg, now)
	}
}

// endAttempt ends the current attempt of n: it is queued again after the
// job's backoff while retries remain, else it ends in state end (failed or
// timed_out).
func endAttempt(j *Job, n *JobExecution, end string, code int, msg string, now time.Time) {
	n.ResultCode, n.ResultMsg, n.DeadlineAt = code, msg, nil
	if j.CanRetry(n.Attempts) {
		n.State, n.NextAttemptAt, n.FinishedAt = ExecQueued, timep(now.Add(j.RetryDelay(n.Attempts))), nil
		return
	}
	n.State, n.NextAttemptAt, n.FinishedAt = end, nil, timep(now)
}

// ApplyReport updates device d, as stored, with its report r received
// on node: its version and presence, and the upgrade progress it shows.
// A progress report without a percent keeps the percent of the same
// version's last report, except done, which is 100.
func ApplyReport(d *Device, r Report, node string) {
	d.Online, d.Node, d.LastSeenAt = true, node, timep(r.At)
	switch r.Type {
	case EventReportVersion:
		d.Version, d.Ready = r.Version, true
	case EventReportProgress:
		// One vocabulary with the job's execution states: a device's
		// "fail" shows as failed.
		state := r.State
		if state == ProgressFail {
			state = ExecFailed
		}
		u := UpgradeProgress{Version: r.Version, State: state, ResultMsg: r.ResultMsg, UpdatedAt: r.At}
		switch {
		case r.Percent != nil:
			u.Percent = *r.Percent
		case r.State == ProgressDone:
			u.Percent = 100
		case d.Upgrade != nil && d.Upgrade.Version == r.Version:
			u.Percent = d.Upgrade.Percent
		}
		if r.ResultCode != nil {
			u.ResultCode = *r.ResultCode
		}
		u.ResultName = ResultName(u.ResultCode)
		d.Upgrade = &u
	}
}

// Due reports whether a queued execution may be claimed at now.
func (x *JobExecution) Due(now time.Time) bool {
	return x.NextAttemptAt == nil || !x.NextAttemptAt.After(now)
}

// NewExecution is a device's execution as a new job starts it: done when
// the device already runs the job's version, else queued.
func NewExecution(j *Job, deviceVersion string, now time.Time) JobExecution {
	x := JobExecution{JobID: j.ID, ProductID: j.ProductID, State: ExecQueued, FromVersion: deviceVersion, CreatedAt: now, UpdatedAt: now}
	if deviceVersion == j.FirmwareVersion {
		x.State, x.Percent, x.FinishedAt = ExecDone, 100, timep(now)
	}
	return x
}

// JobEnd says what a job whose executions are counted as counts becomes:
// a running job completes, and a canceled one closes, once none of its
// executions is active. ok is false when the job goes on: a paused job
// waits to be resumed, a continuous one to be ended.
func JobEnd(j *Job, counts map[string]int) (status string, ok bool) {
	if j.Status != JobRunning && !(j.Status == JobCanceled && j.CompletedAt == nil) || j.Status == JobRunning && j.Continuous {
		return "", false
	}
	for _, st := range ExecStates {
		if !ExecEnded(st) && counts[st] > 0 {
			return "", false
		}
	}
	if j.Status == JobRunning {
		return JobCompleted, true
	}
	return JobCanceled, true
}

// Result codes devices report with a failure (PROTOCOL.md).
const (
	ResultDownloadTimeout  = -1
	ResultFileNotFound     = -2
	ResultSignatureExpired = -3
	ResultMD5Mismatch      = -4
	ResultUpdateFailed     = -5
)

// ResultName names a result code, so that a 404 never reads as a timeout
// whatever text the device sent (one SDK always sends "time_out"). Codes
// outside the protocol are "update_failed"; 0 is "".
func ResultName(code int) string {
	switch code {
	case 0:
		return ""
	case ResultDownloadTimeout:
		return "download_timeout"
	case ResultFileNotFound:
		return "file_not_found"
	case ResultSignatureExpired:
		return "signature_expired"
	case ResultMD5Mismatch:
		return "md5_mismatch"
	}
	return "update_failed"
}

func timep(t time.Time) *time.Time { return &t }

// ClaimLimit is how many executions of job j may be claimed at now, given
// its pace, at most batch: none outside its windows or while it is not
// running; else as max_concurrent and the rate per minute allow, spread
// evenly over the minute rather than claimed at once.
func ClaimLimit(j *Job, p JobPace, batch int, now time.Time) int {
	if j.Status != JobRunning || !j.InWindow(now) {
		return 0
	}
	n := batch
	if j.MaxConcurrent > 0 {
		n = min(n, j.MaxConcurrent-p.InFlight)
	}
	if rate := j.PerMinute(p); rate > 0 {
		n = min(n, rate-p.NotifiedSince, spread(rate, p.LastNotifiedAt, now))
	}
	return max(n, 0)
}

// spread is how many notifications a rate of perMinute allows at now, the
// last one sent at last: as many as the time since then earns, so that a
// minute's notifications go out a few at each of the engine's claims. A
// claim that comes late (a long pass, a jittered tick) catches up on up to
// five ticks of PaceTick; the first claim takes one tick's worth, or one
// notification when the rate is slower than that.
func spread(perMinute int, last *time.Time, now time.Time) int {
	every := time.Minute / time.Duration(perMinute)
	since := max(PaceTick, every)
	if last != nil {
		since = min(max(now.Sub(*last), 0), max(5*PaceTick, every))
	}
	return int(since / every)
}

// PaceTick is the span over which a paced job's notifications are spread:
// the engine's claims come about once a PaceTick.
const PaceTick = time.Second
