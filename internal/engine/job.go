package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/otad/otad/internal/ota"
)

// CreateJob validates and stores a new job and wakes every replica's
// dispatcher. The job's ID, status and creation time are set here.
func (e *Engine) CreateJob(ctx context.Context, j *ota.Job) error {
	if err := ota.ValidateJob(j); err != nil {
		return err
	}
	if _, err := e.cfg.Store.ProductGet(ctx, j.ProductID); err != nil {
		return err
	}
	j.ID = ota.NewJobID()
	j.CreatedAt = e.cfg.Now()
	j.Status = ota.JobRunning
	if j.StartAt != nil {
		at := j.StartAt.UTC().Truncate(time.Microsecond)
		j.StartAt = &at
		if at.After(j.CreatedAt) {
			j.Status = ota.JobScheduled
		}
	}
	params := ota.JobCreateParams{Job: j, Initial: func(v string) ota.JobExecution {
		return ota.NewExecution(j, v, j.CreatedAt)
	}}
	if len(j.Phases) > 1 {
		params.Phases = func(cs []ota.PhaseCandidate) []int { return ota.AssignPhases(j, cs) }
	}
	if len(j.Phases) > 0 {
		j.Phases[0].StartedAt = &j.CreatedAt
	}
	err := e.cfg.Store.JobCreate(ctx, params)
	if err != nil {
		return err
	}
	e.log.Info("job created", "job_id", j.ID, "product_id", j.ProductID, "version", j.FirmwareVersion, "status", j.Status)
	e.markEnded(j.ID) // every target may already be on the version
	e.wakeAll(ctx, j.ID)
	return nil
}

// CancelJob cancels a job: queued devices are canceled and nothing more is
// dispatched; devices already upgrading are still tracked. A job that has
// ended is ECONFLICT.
func (e *Engine) CancelJob(ctx context.Context, id string) error {
	_, err := e.ControlJob(ctx, id, ota.JobActionCancel)
	return err
}

// ControlJob applies an operator's action to a job (ota.JobControl: pause,
// resume, retry, advance, cancel) and the executions it moves, and returns
// the job as stored. ECONFLICT when the job's status does not allow it.
func (e *Engine) ControlJob(ctx context.Context, id, action string) (*ota.Job, error) {
	now := e.cfg.Now()
	var job *ota.Job
	states, kind := ota.JobActionExecutions(action)
	limit := 0
	if action == ota.JobActionCancel {
		limit = e.cfg.CancelBatch // the passes cancel the rest (end)
	}
	changed, err := e.cfg.Store.JobChange(ctx, ota.JobChangeParams{ID: id, At: now, States: states,
		Exclusive: action == ota.JobActionRetry, Limit: limit,
		Job: func(j *ota.Job) (*ota.Job, error) {
			to, err := ota.JobControl(j, action, now)
			job = to
			return to, err
		},
		Apply: stepAll(kind, now)})
	if err != nil {
		return nil, err
	}
	for _, x := range changed {
		e.transitions.WithLabelValues(x.State).Inc()
	}
	e.recache(job)
	e.log.Info("job "+action, "job_id", id, "status", job.Status, "phase", job.Phase, "executions_changed", len(changed))
	e.markEnded(id)
	e.wakeAll(ctx, id)
	return job, nil
}

// rollout applies ota.RolloutCheck to a running or paused job: it ends,
// pauses, cancels or moves it to its next phase as its counts say, and
// returns the job as it now is.
func (e *Engine) rollout(ctx context.Context, j *ota.Job) (*ota.Job, error) {
	if j.Status != ota.JobRunning && j.Status != ota.JobPaused || len(j.Phases) == 0 && len(j.Abort) == 0 && j.EndAt == nil {
		return j, nil
	}
	// The current phase's health matters once its soak has started (at
	// once, when it has none).
	var health bool
	if j.Phase < len(j.Phases) {
		ph := j.Phases[j.Phase]
		health = ph.SoakFrom != nil || ph.SoakSeconds == 0
	}
	counts, err := e.cfg.Store.JobPhaseCounts(ctx, ota.JobPhaseCountsParams{JobID: j.ID, Since: j.AbortSince, Unhealthy: health, Phase: j.Phase})
	if err != nil {
		return nil, fmt.Errorf("job %s phase counts: %w", j.ID, err)
	}
	now := e.cfg.Now()
	to, act := ota.RolloutCheck(j, counts, now)
	if act == ota.RolloutNone {
		return j, nil
	}
	var states []string
	if act == ota.RolloutCancel {
		states = []string{ota.ExecQueued} // a batch; the passes cancel the rest (end)
	}
	changed, err := e.cfg.Store.JobChange(ctx, ota.JobChangeParams{ID: j.ID, At: now, States: states, Limit: e.cfg.CancelBatch,
		Job: func(cur *ota.Job) (*ota.Job, error) {
			if cur.Rev != j.Rev {
				return nil, ota.Errorf(ota.ECONFLICT, "job %s changed meanwhile", j.ID)
			}
			return to, nil
		},
		Apply: stepAll(ota.EventCancel, now)})
	if ota.IsCode(err, ota.ECONFLICT) {
		return j, nil // an operator or another replica changed it: the next pass looks again
	}
	if err != nil {
		return nil, fmt.Errorf("job %s rollout: %w", j.ID, err)
	}
	to.Rev = j.Rev + 1
	e.recache(to)
	switch {
	case to.Status != j.Status:
		e.log.Info("job "+to.Status, "job_id", j.ID, "reason", to.StatusReason, "executions_canceled", len(changed))
	case to.Phase != j.Phase:
		e.log.Info("job phase started", "job_id", j.ID, "phase", to.Phase+1, "of", len(to.Phases))
	}
	if to.Phase != j.Phase || to.Status != j.Status {
		e.markEnded(j.ID)
		e.wakeAll(ctx, j.ID)
	}
	return to, nil
}

// addMatching adds to a continuous job the devices that came to match its
// targets. After a first look at all of them it looks only at the devices
// named in events since (ContinuousCandidates): created, enabled, on a new
// version or out of another job, so that a look costs what changed, not
// the size of the fleet. It looks at all of them again every
// continuousFullEvery, and when more changed than continuousMaxChanges.
func (e *Engine) addMatching(ctx context.Context, j *ota.Job) error {
	now := e.cfg.Now()
	e.mu.Lock()
	c, ok := e.continuous[j.ID]
	e.mu.Unlock()
	var devices []string // nil: every target
	var err error
	if ok && now.Sub(c.full) < continuousFullEvery && !now.Before(c.full) {
		if devices, c.seq, err = e.changedDevices(ctx, j.ProductID, c.seq); err != nil {
			return fmt.Errorf("job %s changed devices: %w", j.ID, err)
		}
	}
	if devices == nil {
		// The events from here on are the next look's: taken before
		// this one reads the devices, so a change made meanwhile is
		// looked at twice, never missed.
		if c.seq, err = e.cfg.Store.EventLastSeq(ctx); err != nil {
			return fmt.Errorf("job %s changed devices: %w", j.ID, err)
		}
		c.full = now
	}
	if devices == nil || len(devices) > 0 {
		n, err := e.cfg.Store.JobExecutionsAdd(ctx, ota.JobAddParams{Job: j, At: now, Devices: devices, Initial: func(v string) ota.JobExecution {
			return ota.NewExecution(j, v, now)
		}})
		if err != nil {
			return fmt.Errorf("job %s add devices: %w", j.ID, err)
		}
		if n > 0 {
			e.log.Info("devices added to continuous job", "job_id", j.ID, "devices", n)
			e.Wake()
		}
	}
	e.mu.Lock()
	e.continuous[j.ID] = c
	e.mu.Unlock()
	return nil
}

// A continuous job's look at every target device, and the most changed
// devices looked at one by one instead.
const (
	continuousFullEvery  = 10 * time.Minute
	continuousMaxChanges = 20 * ota.MaxPageLimit
)

// continuousCursor is where a continuous job's looks are: the last event
// seen and the last look at every target.
type continuousCursor struct {
	seq  int64
	full time.Time
}

// forgetCursors drops the cursors of jobs no longer active.
func (e *Engine) forgetCursors(active []*ota.Job) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.continuous) == 0 {
		return
	}
	ids := make(map[string]bool, len(active))
	for _, j := range active {
		ids[j.ID] = true
	}
	for id := range e.continuous {
		if !ids[id] {
			delete(e.continuous, id)
		}
	}
}

// changedDevices returns the devices of product productID named in the
// events after seq that may have made them a continuous job's target, and
// the last such event's seq; nil devices when there are more than
// continuousMaxChanges events to read.
func (e *Engine) changedDevices(ctx context.Context, productID string, after int64) ([]string, int64, error) {
	devices, seen := []string{}, map[string]bool{}
	for read := 0; ; {
		evs, err := e.cfg.Store.EventList(ctx, ota.EventListParams{After: after, ProductID: productID, Types: ota.ContinuousCandidates(), Limit: ota.MaxPageLimit})
		if err != nil {
			return nil, 0, err
		}
		for _, ev := range evs {
			if ev.DeviceName != "" && !seen[ev.DeviceName] {
				seen[ev.DeviceName] = true
				devices = append(devices, ev.DeviceName)
			}
			after = ev.Seq
		}
		if read += len(evs); len(evs) < ota.MaxPageLimit {
			return devices, after, nil
		}
		if read >= continuousMaxChanges {
			return nil, after, nil
		}
	}
}

// DeleteDevice deletes a device, ends its executions that have not ended
// (their jobs keep them), and closes its MQTT session on whichever replica
// holds it.
func (e *Engine) DeleteDevice(ctx context.Context, productID, name string) error {
	now := e.cfg.Now()
	var jobs []string
	err := e.cfg.Store.DeviceDelete(ctx, productID, name, func(x *ota.JobExecution) (*ota.JobExecution, bool) {
		s := ota.Step(&ota.Job{}, x, ota.ExecEvent{Kind: ota.EventDeviceDeleted}, now)
		if s.Changed {
			jobs = append(jobs, x.JobID)
		}
		return &s.Exec, s.Changed
	})
	if err != nil {
		return err
	}
	e.disconnect(ctx, productID, name)
	for _, id := range jobs {
		e.markEnded(id)
		e.wakeAll(ctx, id)
	}
	return nil
}

// SetDeviceDisabled enables or disables a device; a disabled device's MQTT
// session is closed on whichever replica holds it.
func (e *Engine) SetDeviceDisabled(ctx context.Context, productID, name string, disabled bool) error {
	if err := e.cfg.Store.DeviceSetDisabled(ctx, productID, name, disabled); err != nil {
		return err
	}
	if disabled {
		e.disconnect(ctx, productID, name)
	}
	return nil
}

// disconnect asks every replica, this one included (the bus delivers to
// its sender), to close the device's session; when the bus fails, this
// replica closes it at once.
func (e *Engine) disconnect(ctx context.Context, productID, name string) {
	err := e.cfg.Bus.Send(ctx, ota.Signal{Kind: ota.SignalDisconnect, ProductID: productID, DeviceName: name})
	if err != nil {
		// Other replicas refuse the device's next report anyway: the
		// report's transaction reads the device.
		e.log.Warn("disconnect not sent to other replicas", "product_id", productID, "device", name, "err", err)
		e.cfg.Notifier.Disconnect(productID, name)
	}
}
