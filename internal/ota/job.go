package ota

import "time"

// Job statuses.
const (
	JobScheduled = "scheduled"
	JobRunning   = "running"
	JobCompleted = "completed"
	JobCanceled  = "canceled"
)

// Job is an upgrade of a set of devices of one product to one firmware version.
type Job struct {
	ID              string     `json:"id"`
	ProductID       string     `json:"product_id"`
	FirmwareVersion string     `json:"firmware_version"`
	Status          string     `json:"status"`
	TimeoutSeconds  int        `json:"timeout_seconds"`
	MaxRetries      int        `json:"max_retries"`
	MaxConcurrent   int        `json:"max_concurrent"` // 0: no limit
	MaxPerMinute    int        `json:"max_per_minute"` // 0: no limit
	StartAt         *time.Time `json:"start_at"`       // nil: at once
	CreatedAt       time.Time  `json:"created_at"`
	CompletedAt     *time.Time `json:"completed_at"`
}

// Execution states: one device's progress within one job.
const (
	ExecQueued      = "queued"
	ExecNotified    = "notified"
	ExecDownloading = "downloading"
	ExecBurning     = "burning"
	ExecDone        = "done"
	ExecFailed      = "failed"
	ExecTimedOut    = "timed_out"
	ExecCanceled    = "canceled"
)

// ExecStates lists every execution state in the order of the state machine.
var ExecStates = []string{ExecQueued, ExecNotified, ExecDownloading, ExecBurning, ExecDone, ExecFailed, ExecTimedOut, ExecCanceled}

// ExecTerminal reports whether an execution in state s has ended.
func ExecTerminal(s string) bool {
	return s == ExecDone || s == ExecFailed || s == ExecTimedOut || s == ExecCanceled
}

// execOrder ranks the forward states, so that late and out-of-order reports
// never move an execution backwards.
var execOrder = map[string]int{ExecQueued: 0, ExecNotified: 1, ExecDownloading: 2, ExecBurning: 3, ExecDone: 4}

// ExecCanTransition reports whether an execution may move from one state to
// another. Forward moves may skip states (a device may go from downloading
// straight to done); any active state may end as failed, timed_out or
// canceled; a failed or timed-out execution may be queued again by a retry;
// done and canceled are final.
func ExecCanTransition(from, to string) bool {
	switch from {
	case ExecDone, ExecCanceled:
		return false
	case ExecFailed, ExecTimedOut:
		return to == ExecQueued || to == ExecNotified
	}
	switch to {
	case ExecFailed, ExecTimedOut, ExecCanceled:
		return true
	}
	f, ok1 := execOrder[from]
	t, ok2 := execOrder[to]
	return ok1 && ok2 && t > f
}

// JobExecution is one device's progress within one job.
type JobExecution struct {
	JobID      string     `json:"job_id"`
	ProductID  string     `json:"product_id"`
	DeviceName string     `json:"device_name"`
	State      string     `json:"state"`
	Percent    int        `json:"percent"`
	Attempts   int        `json:"attempts"`
	ResultCode int        `json:"result_code"`
	ResultMsg  string     `json:"result_msg"`
	NotifiedAt *time.Time `json:"notified_at"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
}
