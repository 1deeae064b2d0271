package ota

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A job's rollout: the options that decide which of its devices may be
// notified when, and the state the engine keeps of them. The engine asks
// RolloutCheck after changes, JobControl for an operator's action, and
// ClaimLimit before each claim; nothing else decides a phase, a pause or
// a rate.

// JobPaused is the status of a job that dispatches nothing until resumed;
// devices already upgrading finish. StatusReason says why.
const JobPaused = "paused"

// JobRollout is the rollout part of a job.
type JobRollout struct {
	// Phases split the job's devices into stages, each started only once
	// the previous one ended and passed its gate. None: one stage.
	Phases []JobPhase `json:"phases,omitempty"`
	// PhaseSeed chose the phases' members; the same seed and devices give
	// the same phases.
	PhaseSeed int64 `json:"phase_seed,omitempty"`
	// SpreadVersions spreads each phase evenly over the devices' versions
	// at creation, instead of drawing from all of them at random.
	SpreadVersions bool `json:"spread_versions,omitempty"`
	// Abort criteria of the whole job.
	Abort []AbortCriterion `json:"abort,omitempty"`
	// Rate grows the notification rate exponentially.
	Rate *JobRate `json:"rate,omitempty"`
	// Windows, when set, are the only times devices are notified.
	Windows []MaintenanceWindow `json:"maintenance_windows,omitempty"`
	// EndAt stops the job: from then on nothing is dispatched, its queued
	// devices are canceled and it ends.
	EndAt *time.Time `json:"end_at,omitempty"`
	// Continuous jobs keep adding devices that come to match their targets
	// until they are ended (canceled, or by EndAt).
	Continuous bool `json:"continuous,omitempty"`

	// Phase is the index of the current phase (0 without phases).
	Phase int `json:"current_phase"`
	// StatusReason says why the job was paused, canceled or ended.
	StatusReason string `json:"status_reason,omitempty"`
	// AbortSince: abort criteria count executions that ended since then
	// (the last resume or retry); nil counts them all.
	AbortSince *time.Time `json:"abort_since,omitempty"`
}

// JobPhase is one stage of a rollout: its options, and its progress.
type JobPhase struct {
	// Percent or Count is the phase's share of the job's devices that are
	// not yet on the version (exactly one, except for the last phase,
	// which takes every device left and may name neither).
	Percent float64 `json:"percent,omitempty"`
	Count   int     `json:"count,omitempty"`
	// SoakSeconds is how long the phase's devices must stay healthy after
	// its last one ended, before the next phase starts.
	SoakSeconds int `json:"soak_seconds,omitempty"`
	// SuccessThreshold is the share (percent) of the phase's devices that
	// must be done and healthy at the end of the soak; 0 means 100.
	SuccessThreshold float64          `json:"success_threshold,omitempty"`
	Abort            []AbortCriterion `json:"abort,omitempty"`

	// Progress, kept by the engine.
	StartedAt *time.Time `json:"started_at,omitempty"`
	SoakFrom  *time.Time `json:"soak_from,omitempty"` // its last device ended
	EndedAt   *time.Time `json:"ended_at,omitempty"`
	// Result is how it ended: "passed", or "advanced" by hand.
	Result string `json:"result,omitempty"`
}

// HealthGrace is how long after a phase's soak its done devices may take
// to come back online on the target version (a reboot into the new image)
// before the gate counts them unhealthy; the next phase starts as soon as
// enough are back.
const HealthGrace = 5 * time.Minute

// Phase results and states.
const (
	PhasePassed   = "passed"
	PhaseAdvanced = "advanced"
	PhasePending  = "pending"
	PhaseRunning  = "running"
	PhaseSoaking  = "soaking"
	PhasePausedSt = "paused"
)

// AbortCriterion stops a job, or a phase, whose failures pass a share.
type AbortCriterion struct {
	// FailureType is what counts as a failure: failed, timed_out,
	// rolled_back, or all of them ("any").
	FailureType string `json:"failure_type"`
	// ThresholdPercent of the ended devices failing trips the criterion…
	ThresholdPercent float64 `json:"threshold_percent"`
	// …once at least MinEnded devices have ended (default 1).
	MinEnded int `json:"min_ended,omitempty"`
	// Action is pause (default) or cancel.
	Action string `json:"action,omitempty"`
}

// Abort actions.
const (
	AbortPause  = "pause"
	AbortCancel = "cancel"
)

// JobRate raises a job's notification rate exponentially: it starts at
// BasePerMinute and is multiplied by IncrementFactor every time
// IncrementEvery more devices were notified (or, with IncrementOn
// "succeeded", upgraded), up to the job's max_per_minute if set.
type JobRate struct {
	BasePerMinute   int     `json:"base_per_minute"`
	IncrementFactor float64 `json:"increment_factor"`
	IncrementEvery  int     `json:"increment_every"`
	IncrementOn     string  `json:"increment_on,omitempty"` // notified (default) or succeeded
}

// MaintenanceWindow is a recurring time when devices may be notified: on
// the given days, from Start (HH:MM) for DurationMinutes, in TimeZone.
type MaintenanceWindow struct {
	Days            []string `json:"days,omitempty"` // mon…sun; empty: every day (answered as no field, not null)
	Start           string   `json:"start"`          // HH:MM
	DurationMinutes int      `json:"duration_minutes"`
	TimeZone        string   `json:"time_zone"` // IANA name; empty: UTC
}

var weekdays = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// Rollout limits.
const (
	MaxPhases        = 20
	MaxWindows       = 20
	MaxAbortCriteria = 8
)

// validateRollout checks a new job's rollout options and clears the
// progress fields a client may not set.
func validateRollout(j *Job) error {
	r := &j.JobRollout
	r.Phase, r.StatusReason, r.AbortSince = 0, "", nil
	if len(r.Phases) > MaxPhases {
		return Errorf(EINVALID, "phases: at most %d", MaxPhases)
	}
	for i := range r.Phases {
		p := &r.Phases[i]
		p.StartedAt, p.SoakFrom, p.EndedAt, p.Result = nil, nil, nil, ""
		last := i == len(r.Phases)-1
		switch {
		case p.Percent != 0 && p.Count != 0:
			return Errorf(EINVALID, "phases[%d]: give percent or count, not both", i)
		case p.Percent == 0 && p.Count == 0 && !last:
			return Errorf(EINVALID, "phases[%d]: percent or count is required (only the last phase may take the rest)", i)
		case p.Percent < 0 || p.Percent > 100 || math.IsNaN(p.Percent):
			return Errorf(EINVALID, "phases[%d].percent must be above 0 and at most 100", i)
		case p.Count < 0 || p.Count > MaxJobDevices:
			return Errorf(EINVALID, "phases[%d].count must be from 1 to %d", i, MaxJobDevices)
		case p.SoakSeconds < 0 || p.SoakSeconds > 30*24*3600:
			return Errorf(EINVALID, "phases[%d].soak_seconds must be from 0 to 2592000", i)
		case p.SuccessThreshold < 0 || p.SuccessThreshold > 100 || math.IsNaN(p.SuccessThreshold):
			return Errorf(EINVALID, "phases[%d].success_threshold must be from 0 to 100 (percent)", i)
		}
		if p.SuccessThreshold == 0 {
			p.SuccessThreshold = 100
		}
		if err := validateAbort(p.Abort, fmt.Sprintf("phases[%d].abort", i)); err != nil {
			return err
		}
	}
	if len(r.Phases) > 0 && r.PhaseSeed == 0 {
		r.PhaseSeed = rand.Int64N(math.MaxInt64-1) + 1
	}
	if r.SpreadVersions && len(r.Phases) == 0 {
		return Errorf(EINVALID, "spread_versions needs phases")
	}
	if err := validateAbort(r.Abort, "abort"); err != nil {
		return err
	}
	if q := r.Rate; q != nil {
		switch {
		case q.BasePerMinute < 1 || q.BasePerMinute > math.MaxInt32:
			return Errorf(EINVALID, "rate.base_per_minute must be from 1 to %d", math.MaxInt32)
		case !(q.IncrementFactor >= 1.1 && q.IncrementFactor <= 5):
			return Errorf(EINVALID, "rate.increment_factor must be from 1.1 to 5")
		case q.IncrementEvery < 1 || q.IncrementEvery > MaxJobDevices:
			return Errorf(EINVALID, "rate.increment_every must be from 1 to %d", MaxJobDevices)
		case q.IncrementOn != "" && q.IncrementOn != "notified" && q.IncrementOn != "succeeded":
			return Errorf(EINVALID, "rate.increment_on must be notified or succeeded")
		}
		if q.IncrementOn == "" {
			q.IncrementOn = "notified"
		}
	}
	if len(r.Windows) > MaxWindows {
		return Errorf(EINVALID, "maintenance_windows: at most %d", MaxWindows)
	}
	for i := range r.Windows {
		if err := r.Windows[i].validate(); err != nil {
			return Errorf(EINVALID, "maintenance_windows[%d]: %s", i, ErrorMessage(err))
		}
	}
	if r.EndAt != nil {
		at := r.EndAt.UTC().Truncate(time.Microsecond)
		r.EndAt = &at
	}
	if r.Continuous && len(j.Targets.Devices) > 0 {
		return Errorf(EINVALID, "a continuous job targets all devices or versions, not a list of names")
	}
	return nil
}

func validateAbort(cs []AbortCriterion, field string) error {
	if len(cs) > MaxAbortCriteria {
		return Errorf(EINVALID, "%s: at most %d criteria", field, MaxAbortCriteria)
	}
	for i := range cs {
		c := &cs[i]
		switch {
		case !slices.Contains([]string{ExecFailed, ExecTimedOut, ExecRolledBack, "any"}, c.FailureType):
			return Errorf(EINVALID, "%s[%d].failure_type must be failed, timed_out, rolled_back or any", field, i)
		case !(c.ThresholdPercent > 0 && c.ThresholdPercent <= 100):
			return Errorf(EINVALID, "%s[%d].threshold_percent must be above 0 and at most 100", field, i)
		case c.MinEnded < 0 || c.MinEnded > MaxJobDevices:
			return Errorf(EINVALID, "%s[%d].min_ended must be from 1 to %d", field, i, MaxJobDevices)
		case c.Action != "" && c.Action != AbortPause && c.Action != AbortCancel:
			return Errorf(EINVALID, "%s[%d].action must be pause or cancel", field, i)
		}
		if c.MinEnded == 0 {
			c.MinEnded = 1
		}
		if c.Action == "" {
			c.Action = AbortPause
		}
	}
	return nil
}

func (w *MaintenanceWindow) validate() error {
	if _, err := w.location(); err != nil {
		return Errorf(EINVALID, "time_zone %q is not a known IANA time zone", truncate(w.TimeZone, 64))
	}
	if _, err := w.startMinute(); err != nil {
		return err
	}
	if w.DurationMinutes < 1 || w.DurationMinutes > 7*24*60 {
		return Errorf(EINVALID, "duration_minutes must be from 1 to 10080")
	}
	seen := map[string]bool{}
	for _, d := range w.Days {
		if !slices.Contains(weekdays, d) || seen[d] {
			return Errorf(EINVALID, "days: each of mon, tue, wed, thu, fri, sat, sun at most once")
		}
		seen[d] = true
	}
	return nil
}

func (w *MaintenanceWindow) location() (*time.Location, error) {
	if w.TimeZone == "" {
		return time.UTC, nil
	}
	if len(w.TimeZone) > 64 {
		return nil, fmt.Errorf("time zone too long")
	}
	return time.LoadLocation(w.TimeZone)
}

func (w *MaintenanceWindow) startMinute() (int, error) {
	h, m, ok := strings.Cut(w.Start, ":")
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if !ok || len(h) != 2 || len(m) != 2 || err1 != nil || err2 != nil || hh > 23 || mm > 59 || hh < 0 || mm < 0 {
		return 0, Errorf(EINVALID, "start must be HH:MM (00:00 to 23:59)")
	}
	return hh*60 + mm, nil
}

// open reports whether the window is open at t: some occurrence, starting
// on one of its days at its local start time, covers t.
func (w *MaintenanceWindow) open(t time.Time) bool {
	loc, err := w.location()
	if err != nil {
		return false
	}
	start, err := w.startMinute()
	if err != nil {
		return false
	}
	local := t.In(loc)
	y, mo, d := local.Date()
	// An occurrence that covers t started at most the window's duration
	// before it: look back that many days, and today.
	for back := 0; back <= w.DurationMinutes/(24*60)+1; back++ {
		day := time.Date(y, mo, d-back, 0, 0, 0, 0, loc)
		if len(w.Days) > 0 && !slices.Contains(w.Days, weekdays[day.Weekday()]) {
			continue
		}
		from := time.Date(day.Year(), day.Month(), day.Day(), start/60, start%60, 0, 0, loc)
		if !t.Before(from) && t.Before(from.Add(time.Duration(w.DurationMinutes)*time.Minute)) {
			return true
		}
	}
	return false
}

// InWindow reports whether j may notify devices at now as far as its
// maintenance windows and end_at say.
func (j *Job) InWindow(now time.Time) bool {
	if j.EndAt != nil && !now.Before(*j.EndAt) {
		return false
	}
	if len(j.Windows) == 0 {
		return true
	}
	for i := range j.Windows {
		if j.Windows[i].open(now) {
			return true
		}
	}
	return false
}

// Paced says whether the job limits its notifications at all: in flight at
// once, a minute, or at a growing rate.
func (j *Job) Paced() bool { return j.MaxConcurrent > 0 || j.MaxPerMinute > 0 || j.Rate != nil }

// PerMinute is the job's notification rate limit given its pace: the
// exponential rate if it has one, never above max_per_minute; 0 is none.
func (j *Job) PerMinute(p JobPace) int {
	q := j.Rate
	if q == nil {
		return j.MaxPerMinute
	}
	n := p.Notified
	if q.IncrementOn == "succeeded" {
		n = p.Succeeded
	}
	rate := float64(q.BasePerMinute) * math.Pow(q.IncrementFactor, float64(n/q.IncrementEvery))
	limit := float64(math.MaxInt32)
	if j.MaxPerMinute > 0 {
		limit = float64(j.MaxPerMinute)
	}
	return int(min(rate, limit))
}

// PhaseCandidate is a device of a new job, as phases are assigned.
type PhaseCandidate struct {
	Name, Version, State string
}

// AssignPhases returns the phase of each candidate (sorted by name): those
// already done go to the last phase; the others are drawn at random with
// the job's seed, spread evenly over versions if asked, and cut into
// phases by their shares in order.
func AssignPhases(j *Job, cs []PhaseCandidate) []int {
	out := make([]int, len(cs))
	if len(j.Phases) <= 1 {
		return out
	}
	last := len(j.Phases) - 1
	var todo []int
	for i, c := range cs {
		if c.State == ExecQueued {
			todo = append(todo, i)
		} else {
			out[i] = last
		}
	}
	rng := rand.New(rand.NewPCG(uint64(j.PhaseSeed), 0x6f746164))
	rng.Shuffle(len(todo), func(a, b int) { todo[a], todo[b] = todo[b], todo[a] })
	if j.SpreadVersions {
		// Each device's place within its version's shuffled list, as a
		// share of that list: sorting by it interleaves the versions in
		// proportion.
		rank, size := make(map[int]int, len(todo)), map[string]int{}
		for _, i := range todo {
			rank[i] = size[cs[i].Version]
			size[cs[i].Version]++
		}
		key := func(i int) float64 { return (float64(rank[i]) + 0.5) / float64(size[cs[i].Version]) }
		slices.SortStableFunc(todo, func(a, b int) int { return cmp.Compare(key(a), key(b)) })
	}
	n, next := len(todo), 0
	for p := range j.Phases {
		size := n - next
		if p < last {
			if c := j.Phases[p].Count; c > 0 {
				size = min(size, c)
			} else {
				size = min(size, int(math.Ceil(j.Phases[p].Percent*float64(n)/100)))
			}
		}
		for _, i := range todo[next : next+size] {
			out[i] = p
		}
		next += size
	}
	return out
}

// JobPhaseCountsParams says what JobPhaseCounts counts beside each phase's
// executions per state.
type JobPhaseCountsParams struct {
	JobID string
	// Since: the executions that ended since are counted again in
	// EndedSince (all of them when nil).
	Since *time.Time
	// Unhealthy counts Unhealthy, for phase Phase only (the job's current
	// one, whose health RolloutCheck decides on). It reads that phase's done
	// executions and their devices, not counters.
	Unhealthy bool
	Phase     int
}

// PhaseCounts is what RolloutCheck needs to know of one phase.
type PhaseCounts struct {
	Phase int
	// Counts are the phase's executions per state; EndedSince those that
	// ended since the job's AbortSince.
	Counts     map[string]int
	EndedSince map[string]int
	// Unhealthy counts its done executions whose device is now offline or
	// on another version (JobPhaseCountsParams.Unhealthy).
	Unhealthy int
}

// RolloutAction is what a rollout decision asks of the engine beside
// storing the job.
type RolloutAction string

const (
	RolloutNone   RolloutAction = ""
	RolloutStore  RolloutAction = "store"  // store the job as changed
	RolloutCancel RolloutAction = "cancel" // store it canceled and cancel its queued devices
)

// RolloutCheck decides what a running or paused job becomes given its
// executions' counts by phase, at now: ended by end_at, paused or canceled
// by an abort criterion or a failed phase gate, or moved to its next phase.
// to is a copy of j; it is unchanged with RolloutNone.
func RolloutCheck(j *Job, phases []PhaseCounts, now time.Time) (to *Job, act RolloutAction) {
	c := j.clone()
	if j.Status != JobRunning && j.Status != JobPaused {
		return c, RolloutNone
	}
	if j.EndAt != nil && !now.Before(*j.EndAt) {
		c.Status, c.StatusReason = JobCanceled, "end_at reached"
		return c, RolloutCancel
	}
	if j.Status == JobPaused {
		return c, RolloutNone
	}
	byPhase := map[int]PhaseCounts{}
	all := PhaseCounts{Counts: map[string]int{}, EndedSince: map[string]int{}}
	for _, p := range phases {
		byPhase[p.Phase] = p
		for s, n := range p.Counts {
			all.Counts[s] += n
		}
		for s, n := range p.EndedSince {
			all.EndedSince[s] += n
		}
	}
	trip := func(cs []AbortCriterion, pc PhaseCounts, scope string) (RolloutAction, bool) {
		for _, a := range cs {
			if reason, ok := a.tripped(pc.EndedSince); ok {
				c.StatusReason = scope + reason
				if a.Action == AbortCancel {
					c.Status = JobCanceled
					return RolloutCancel, true
				}
				c.Status = JobPaused
				return RolloutStore, true
			}
		}
		return RolloutNone, false
	}
	if act, ok := trip(j.Abort, all, "abort criterion: "); ok {
		return c, act
	}
	if len(j.Phases) == 0 {
		return c, RolloutNone
	}
	cur := byPhase[j.Phase]
	ph := &c.Phases[j.Phase]
	if act, ok := trip(ph.Abort, cur, fmt.Sprintf("phase %d abort criterion: ", j.Phase+1)); ok {
		return c, act
	}
	if j.Phase == len(j.Phases)-1 {
		return c, RolloutNone // the last phase ends with the job
	}
	if n := cur.EndedSince[ExecRolledBack]; n > 0 {
		c.Status = JobPaused
		c.StatusReason = fmt.Sprintf("phase %d: %d devices rolled back", j.Phase+1, n)
		return c, RolloutStore
	}
	for _, s := range ExecActiveStates {
		if cur.Counts[s] > 0 {
			return c, RolloutNone
		}
	}
	if ph.SoakFrom == nil {
		// The phase's last device ended: the soak starts.
		ph.SoakFrom = timep(now)
		if ph.SoakSeconds > 0 {
			return c, RolloutStore
		}
	}
	if now.Before(ph.SoakFrom.Add(time.Duration(ph.SoakSeconds) * time.Second)) {
		return c, RolloutNone
	}
	size := 0
	for _, s := range ExecStates {
		if s != ExecCanceled {
			size += cur.Counts[s]
		}
	}
	below := func(n int) bool { return size > 0 && float64(n)*100 < ph.SuccessThreshold*float64(size) }
	if done := cur.Counts[ExecDone]; below(done) {
		c.Status = JobPaused
		c.StatusReason = fmt.Sprintf("phase %d: %d of %d devices done after the soak, below the %g%% threshold",
			j.Phase+1, done, size, ph.SuccessThreshold)
		return c, RolloutStore
	}
	if healthy := cur.Counts[ExecDone] - cur.Unhealthy; below(healthy) {
		// Done devices reboot into the new image: those not yet back online
		// on it are waited for, up to HealthGrace after the soak.
		if now.Before(ph.SoakFrom.Add(time.Duration(ph.SoakSeconds)*time.Second + HealthGrace)) {
			return c, RolloutNone
		}
		c.Status = JobPaused
		c.StatusReason = fmt.Sprintf("phase %d: %d of %d devices done and healthy (online on the target version) after the soak, below the %g%% threshold",
			j.Phase+1, healthy, size, ph.SuccessThreshold)
		return c, RolloutStore
	}
	c.startPhase(j.Phase+1, PhasePassed, now)
	return c, RolloutStore
}

// watchesRollback reports whether a done execution that reports another
// version at now has rolled back: within the job's rollback window after
// it finished, or while its phase (not the last) has not ended, so that a
// phase's soak sees its devices come back on the old version.
func (j *Job) watchesRollback(x *JobExecution, now time.Time) bool {
	if x.FinishedAt == nil {
		return false
	}
	if j.RollbackWindowSeconds > 0 && now.Before(x.FinishedAt.Add(time.Duration(j.RollbackWindowSeconds)*time.Second)) {
		return true
	}
	return x.Phase < len(j.Phases)-1 && j.Phases[x.Phase].EndedAt == nil
}

// tripped reports whether the criterion trips on ended (executions ended
// per state) and why.
func (a *AbortCriterion) tripped(ended map[string]int) (string, bool) {
	total := ended[ExecDone] + ended[ExecFailed] + ended[ExecTimedOut] + ended[ExecRolledBack]
	failed := ended[a.FailureType]
	if a.FailureType == "any" {
		failed = ended[ExecFailed] + ended[ExecTimedOut] + ended[ExecRolledBack]
	}
	if total < max(a.MinEnded, 1) || float64(failed)*100 < a.ThresholdPercent*float64(total) {
		return "", false
	}
	kind := a.FailureType
	if kind == "any" {
		kind = "failed, timed_out or rolled_back"
	}
	return fmt.Sprintf("%d of %d ended devices %s (threshold %g%%)", failed, total, kind, a.ThresholdPercent), true
}

// startPhase ends the current phase with result and starts phase next.
func (j *Job) startPhase(next int, result string, now time.Time) {
	ph := &j.Phases[j.Phase]
	ph.EndedAt, ph.Result = timep(now), result
	j.Phase = next
	j.Phases[next].StartedAt = timep(now)
}

// Job control actions (POST …/jobs/{id}/{action}).
const (
	JobActionPause   = "pause"
	JobActionResume  = "resume"
	JobActionRetry   = "retry"
	JobActionAdvance = "advance"
	JobActionCancel  = "cancel"
)

// JobControl is what an operator's action makes of job j at now, or
// ECONFLICT when the job's status does not allow it. Retry also gives the
// job's failed and timed-out executions new attempts (Step EventRetry);
// cancel cancels its queued ones (EventCancel).
func JobControl(j *Job, action string, now time.Time) (*Job, error) {
	c := j.clone()
	switch action {
	case JobActionPause:
		if j.Status != JobRunning && j.Status != JobScheduled {
			return nil, Errorf(ECONFLICT, "only a running or scheduled job can be paused; it is %s", j.Status)
		}
		c.Status, c.StatusReason = JobPaused, "paused by hand"
	case JobActionResume:
		if j.Status != JobPaused {
			return nil, Errorf(ECONFLICT, "only a paused job can be resumed; it is %s", j.Status)
		}
		c.Status, c.StatusReason, c.AbortSince = JobRunning, "", timep(now)
		if c.Phase < len(c.Phases) {
			c.Phases[c.Phase].SoakFrom = nil // the gate is looked at anew
		}
	case JobActionRetry:
		if j.Status == JobCanceled || j.Status == JobScheduled {
			return nil, Errorf(ECONFLICT, "a %s job cannot be retried", j.Status)
		}
		// Retrying is running again: a completed job reopens, a paused one
		// resumes.
		c.Status, c.StatusReason, c.CompletedAt = JobRunning, "", nil
		c.AbortSince = timep(now)
		if c.Phase < len(c.Phases) {
			c.Phases[c.Phase].SoakFrom = nil
		}
	case JobActionAdvance:
		if j.Status != JobRunning && j.Status != JobPaused {
			return nil, Errorf(ECONFLICT, "only a running or paused job can be advanced; it is %s", j.Status)
		}
		if j.Phase >= len(j.Phases)-1 {
			return nil, Errorf(ECONFLICT, "the job is in its last phase")
		}
		c.startPhase(j.Phase+1, PhaseAdvanced, now)
		c.Status, c.StatusReason, c.AbortSince = JobRunning, "", timep(now)
	case JobActionCancel:
		if j.Status != JobRunning && j.Status != JobScheduled && j.Status != JobPaused {
			return nil, Errorf(ECONFLICT, "job is already %s", j.Status)
		}
		c.Status, c.StatusReason = JobCanceled, "canceled by hand"
	default:
		return nil, Errorf(EINVALID, "unknown job action %q", action)
	}
	return c, nil
}

// JobActionExecutions says which executions an action of JobControl
// moves: those in states, by an event of kind; none when states is nil.
func JobActionExecutions(action string) (states []string, kind string) {
	switch action {
	case JobActionRetry:
		return []string{ExecFailed, ExecTimedOut}, EventRetry
	case JobActionCancel:
		return []string{ExecQueued}, EventCancel
	}
	return nil, ""
}

// PhaseState is phase i's state in job j.
func (j *Job) PhaseState(i int) string {
	switch {
	case i < j.Phase:
		return j.Phases[i].Result
	case i > j.Phase:
		return PhasePending
	case j.Status == JobPaused:
		return PhasePausedSt
	case j.Status == JobCompleted || j.Status == JobCanceled:
		if j.Phases[i].Result != "" {
			return j.Phases[i].Result
		}
		return j.Status
	case j.Phases[i].SoakFrom != nil:
		return PhaseSoaking
	}
	return PhaseRunning
}

func (j *Job) clone() *Job {
	c := *j
	c.Phases = slices.Clone(j.Phases)
	return &c
}

// MarshalRollout is the rollout of j as the stores keep it.
func MarshalRollout(j *Job) string {
	b, _ := json.Marshal(&j.JobRollout)
	return string(b)
}

// UnmarshalRollout sets the rollout of j from what a store kept.
func UnmarshalRollout(j *Job, s string) error {
	if s == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(s), &j.JobRollout); err != nil {
		return fmt.Errorf("job %s rollout: %w", j.ID, err)
	}
	return nil
}

// AddPhaseCount adds a store's count of n executions of phase in state
// (endedSince of them ended since) to out, which holds phases in order.
func AddPhaseCount(out []PhaseCounts, phase int, state string, n, endedSince int) []PhaseCounts {
	if len(out) == 0 || out[len(out)-1].Phase != phase {
		out = append(out, PhaseCounts{Phase: phase, Counts: map[string]int{}, EndedSince: map[string]int{}})
	}
	p := &out[len(out)-1]
	p.Counts[state] += n
	p.EndedSince[state] += endedSince
	return out
}
