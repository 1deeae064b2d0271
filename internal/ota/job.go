package ota

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"time"
)

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
	Targets         JobTargets `json:"targets"`
	// TimeoutSeconds bounds one attempt, from notification to done.
	TimeoutSeconds int `json:"timeout_seconds"`
	// MaxRetries is how many more attempts a failed or timed-out device gets.
	MaxRetries int `json:"max_retries"`
	// RetryBackoffSeconds is the wait before the first retry; it doubles
	// with every further one.
	RetryBackoffSeconds int        `json:"retry_backoff_seconds"`
	MaxConcurrent       int        `json:"max_concurrent"` // 0: no limit
	MaxPerMinute        int        `json:"max_per_minute"` // 0: no limit
	StartAt             *time.Time `json:"start_at"`       // nil: at once
	// RollbackWindowSeconds is how long after done another version reported
	// by the device counts as a rollback; 0 turns detection off.
	RollbackWindowSeconds int        `json:"rollback_window_seconds"`
	CreatedAt             time.Time  `json:"created_at"`
	CompletedAt           *time.Time `json:"completed_at"`
	JobRollout
	// Rev counts the job's writes: JobChange compares and sets it.
	Rev int `json:"-"`
}

// JobTargets names the devices of a job: a list of names, every device of
// the product, or the devices now on given versions. Exactly one is set.
type JobTargets struct {
	Devices  []string `json:"devices,omitempty"`
	All      bool     `json:"all,omitempty"`
	Versions []string `json:"versions,omitempty"`
}

// Job option defaults and limits.
const (
	DefaultJobTimeout      = 30 * 60
	DefaultJobRetries      = 2
	DefaultJobRetryBackoff = 30
	DefaultRollbackWindow  = 3600
	MaxJobDevices          = 100000
)

// ValidateJob checks a new job's options and targets, filling defaults
// for the zero values of timeout and backoff.
func ValidateJob(j *Job) error {
	if err := ValidateVersion(j.FirmwareVersion); err != nil {
		return Errorf(EINVALID, "firmware_version: %s", ErrorMessage(err))
	}
	n := 0
	if len(j.Targets.Devices) > 0 {
		n++
	}
	if j.Targets.All {
		n++
	}
	if len(j.Targets.Versions) > 0 {
		n++
	}
	if n != 1 {
		return Errorf(EINVALID, "targets must name exactly one of devices, all or versions")
	}
	if len(j.Targets.Devices) > MaxJobDevices {
		return Errorf(EINVALID, "a job targets at most %d devices", MaxJobDevices)
	}
	seen := make(map[string]bool, len(j.Targets.Devices))
	for _, d := range j.Targets.Devices {
		if err := ValidateDeviceName(d); err != nil {
			return Errorf(EINVALID, "targets.devices: %q: %s", d, ErrorMessage(err))
		}
		if seen[d] {
			return Errorf(EINVALID, "targets.devices: %q is listed twice", d)
		}
		seen[d] = true
	}
	if len(j.Targets.Versions) > 100 {
		return Errorf(EINVALID, "targets.versions: at most 100 versions")
	}
	for _, v := range j.Targets.Versions {
		if err := ValidateVersion(v); err != nil {
			return Errorf(EINVALID, "targets.versions: %s", ErrorMessage(err))
		}
	}
	if j.TimeoutSeconds == 0 {
		j.TimeoutSeconds = DefaultJobTimeout
	}
	if j.TimeoutSeconds < 1 || j.TimeoutSeconds > 7*24*3600 {
		return Errorf(EINVALID, "timeout_seconds must be from 1 to 604800")
	}
	if j.MaxRetries < 0 || j.MaxRetries > 100 {
		return Errorf(EINVALID, "max_retries must be from 0 to 100")
	}
	if j.RetryBackoffSeconds == 0 {
		j.RetryBackoffSeconds = DefaultJobRetryBackoff
	}
	if j.RetryBackoffSeconds < 1 || j.RetryBackoffSeconds > 24*3600 {
		return Errorf(EINVALID, "retry_backoff_seconds must be from 1 to 86400")
	}
	if j.RollbackWindowSeconds < 0 || j.RollbackWindowSeconds > 30*24*3600 {
		return Errorf(EINVALID, "rollback_window_seconds must be from 0 to 2592000")
	}
	if j.MaxConcurrent < 0 || j.MaxPerMinute < 0 {
		return Errorf(EINVALID, "max_concurrent and max_per_minute must not be negative (0 means no limit)")
	}
	if j.MaxConcurrent > math.MaxInt32 || j.MaxPerMinute > math.MaxInt32 {
		return Errorf(EINVALID, "max_concurrent and max_per_minute must be at most %d", math.MaxInt32)
	}
	return validateRollout(j)
}

// RetryDelay is how long a device waits before its next attempt, after
// attempts tries: the backoff doubles each time, capped at a day.
func (j *Job) RetryDelay(attempts int) time.Duration {
	d := time.Duration(j.RetryBackoffSeconds) * time.Second
	for i := 1; i < attempts && d < 24*time.Hour; i++ {
		d *= 2
	}
	return min(d, 24*time.Hour)
}

// CanRetry reports whether an execution that has made attempts tries may
// make another.
func (j *Job) CanRetry(attempts int) bool { return attempts <= j.MaxRetries }

// Execution states: one device's progress within one job (see Step).
const (
	ExecQueued      = "queued"
	ExecNotified    = "notified"
	ExecDownloading = "downloading"
	ExecBurning     = "burning"
	ExecDone        = "done"
	ExecFailed      = "failed"
	ExecTimedOut    = "timed_out"
	ExecCanceled    = "canceled"
	ExecRolledBack  = "rolled_back"
)

// ExecStates lists every execution state in the order of the state machine.
var ExecStates = []string{ExecQueued, ExecNotified, ExecDownloading, ExecBurning, ExecDone, ExecFailed, ExecTimedOut, ExecCanceled, ExecRolledBack}

// ExecEnded reports whether an execution in state s has ended: the job
// waits for it no longer. An ended execution may still change (a late done,
// a rollback), but never becomes active again.
func ExecEnded(s string) bool {
	switch s {
	case ExecDone, ExecFailed, ExecTimedOut, ExecCanceled, ExecRolledBack:
		return true
	}
	return false
}

// ExecInFlight reports whether an execution in state s holds one of its
// job's max_concurrent slots: notified and not yet ended.
func ExecInFlight(s string) bool {
	return s == ExecNotified || s == ExecDownloading || s == ExecBurning
}

// ExecActiveStates lists the states of executions that have not ended.
var ExecActiveStates = []string{ExecQueued, ExecNotified, ExecDownloading, ExecBurning}

// ExecInFlightStates lists the states ExecInFlight accepts.
var ExecInFlightStates = []string{ExecNotified, ExecDownloading, ExecBurning}

// JobExecution is one device's progress within one job.
type JobExecution struct {
	JobID       string `json:"job_id"`
	ProductID   string `json:"product_id"`
	DeviceName  string `json:"device_name"`
	State       string `json:"state"`
	FromVersion string `json:"from_version"` // the device's version when the job was created
	Phase       int    `json:"phase"`        // the rollout phase it belongs to
	Percent     int    `json:"percent"`
	Attempts    int    `json:"attempts"`
	// ResultCode and ResultMsg are the last failure the device reported
	// (PROTOCOL.md: -1 download timed out, -2 not found, -3 signature
	// expired, -4 MD5 mismatch, -5 update failed), or otad's own reason.
	ResultCode    int        `json:"result_code"`
	ResultName    string     `json:"result_name"` // ResultName(ResultCode), filled by the stores
	ResultMsg     string     `json:"result_msg"`
	NotifiedAt    *time.Time `json:"notified_at"`
	DeadlineAt    *time.Time `json:"deadline_at"` // the current attempt times out then
	NextAttemptAt *time.Time `json:"next_attempt_at"`
	FinishedAt    *time.Time `json:"finished_at"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	// Rev counts the execution's writes: every update compares and sets it.
	Rev int `json:"-"`
}

// JobListParams selects a page of a product's jobs, oldest first.
type JobListParams struct {
	ProductID string
	After     string
	Limit     int
}

// JobExecutionListParams selects a page of a job's executions by device name.
type JobExecutionListParams struct {
	JobID string
	State string // only executions in this state, when set
	After string
	Limit int
}

// JobCreateParams stores a new job.
type JobCreateParams struct {
	Job *Job
	// Initial returns the first state of the execution of a device on
	// deviceVersion (NewExecution); the store fills in the device's name.
	Initial func(deviceVersion string) JobExecution
	// Phases, when set, returns the phase of each execution, given them
	// sorted by device name (AssignPhases).
	Phases func(cs []PhaseCandidate) []int
}

// JobStatusParams moves a job from one status to another, compare-and-set.
type JobStatusParams struct {
	ID          string
	From, To    string
	CompletedAt *time.Time // set with the move, when not nil
}

// JobChangeParams changes a job and some of its executions in one
// transaction that holds the job's row.
type JobChangeParams struct {
	ID string
	At time.Time
	// Job returns what the job, as stored, becomes, or an error that
	// leaves everything as it was (ECONFLICT when it changed meanwhile).
	Job func(j *Job) (*Job, error)
	// States selects the executions given to Apply; none when empty.
	States []string
	// Exclusive skips executions whose device is in another active job.
	Exclusive bool
	// Limit, when positive, selects at most this many executions, the
	// first by device name: a job's million queued devices are canceled a
	// batch a transaction, not all in one.
	Limit int
	// Apply returns what an execution becomes and whether it changed.
	Apply func(j *Job, x *JobExecution) (*JobExecution, bool)
}

// JobAddParams adds to a continuous job the devices that now match its
// targets and are in no active job.
type JobAddParams struct {
	Job *Job
	At  time.Time
	// Initial returns the first state of a device on deviceVersion.
	Initial func(deviceVersion string) JobExecution
	// Devices, when not nil, are the only devices looked at (those that
	// changed since the previous look, ContinuousCandidates); nil looks at
	// all of the job's targets.
	Devices []string
}

// ContinuousCandidates are the types of the events after which a device
// may have become a continuous job's target: created, enabled, on a new
// version, or out of another job.
func ContinuousCandidates() []string {
	types := []string{LogDeviceCreated, LogDeviceEnabled, LogDeviceVersion}
	for _, st := range ExecStates {
		if ExecEnded(st) {
			types = append(types, LogExecutionPrefix+st)
		}
	}
	return types
}

// JobExecutionClaimParams claims executions of one job for notification,
// in a transaction that serialises the claims of that job across replicas,
// so that pacing counted inside it holds for all of them.
type JobExecutionClaimParams struct {
	JobID string
	// Node: only executions of devices online on this replica are claimed.
	Node string
	// MaxPhase: only executions of phases up to this one are claimed.
	MaxPhase int
	// After: only executions of devices named after this one are claimed,
	// in name order; a pass of claims goes on from where its previous
	// claim ended ("" starts at the first device).
	After string
	At    time.Time
	// Since starts the window (exclusive) whose notifications
	// JobPace.NotifiedSince counts: a minute ago, so that a rate of N a
	// minute allows N in any minute.
	Since time.Time
	// Limit says how many due, queued executions to claim at most, given
	// the job's pace as counted in the transaction.
	Limit func(JobPace) int
	// Unpaced: the job has no pacing (Job.Paced), so its pace is not
	// counted and Limit is given a zero JobPace.
	Unpaced bool
	// Claim returns a candidate as it is to be stored, and false to skip
	// it (Step with EventClaim).
	Claim func(x *JobExecution) (*JobExecution, bool)
}

// JobPace is what a job's rollout pacing needs to know.
type JobPace struct {
	InFlight      int // notified, downloading or burning
	NotifiedSince int // notified after JobExecutionClaimParams.Since
	// Notified counts executions ever notified, Succeeded those done after
	// a notification (an exponential rate grows with them).
	Notified, Succeeded int
	LastNotifiedAt      *time.Time // the latest notification, if any
}

// DeviceKey names a device.
type DeviceKey struct{ ProductID, Name string }

// ReportBatch is what a batch of device reports reads and changes in one
// transaction (Store.DeviceReportsApply).
type ReportBatch struct {
	Reports []Report
	// Devices holds the reporting devices that exist, and Execs each one's
	// current execution (JobExecutionCurrent), as stored when the
	// transaction read them. The applier changes them in place; the store
	// writes back every device and each execution that changed.
	Devices map[DeviceKey]*Device
	Execs   map[DeviceKey]*JobExecution
	// Record is set by the applier: Record[i] appends Reports[i] to its
	// device's history. Reports not recorded are dropped.
	Record []bool
}

// NewJobID returns a job ID that sorts by creation time: 12 hex digits of
// Unix milliseconds, then 8 random ones.
func NewJobID() string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%012x%s", time.Now().UnixMilli(), hex.EncodeToString(b[:]))
}

// ValidateJobID checks the shape of a job ID before it reaches a query.
func ValidateJobID(id string) error {
	if len(id) != 20 {
		return Errorf(EINVALID, "job id must be 20 hex digits")
	}
	if _, err := hex.DecodeString(id); err != nil {
		return Errorf(EINVALID, "job id must be 20 hex digits")
	}
	return nil
}

// JobTargetsMissing is the error of a job naming devices that do not exist.
func JobTargetsMissing(names []string) error {
	return &Error{Code: EINVALID, Message: fmt.Sprintf("%d targeted devices do not exist", len(names)),
		Detail: map[string]any{"devices": names}}
}

// JobTargetsBusy is the error of a job over devices in another active job;
// names may be empty when the conflict was only seen at insertion.
func JobTargetsBusy(names []string) error {
	msg := "targeted devices are in another active job"
	if len(names) > 0 {
		msg = fmt.Sprintf("%d targeted devices are in another active job", len(names))
	}
	return &Error{Code: ECONFLICT, Message: msg, Detail: map[string]any{"devices": names}}
}

// ErrJobTargetsNone is the error of a job whose targets match no device.
var ErrJobTargetsNone = &Error{Code: EINVALID, Message: "no device matches the job's targets"}
