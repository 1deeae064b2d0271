package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/otad/otad/internal/ota"
)

// CreateJob validates and stores a new job and wakes the dispatcher. The
// job's ID, status and creation time are set here.
func (e *Engine) CreateJob(ctx context.Context, j *ota.Job) error {
	if err := ota.ValidateJob(j); err != nil {
		return err
	}
	if _, err := e.cfg.Store.ProductGet(ctx, j.ProductID); err != nil {
		return err
	}
	if _, err := e.cfg.Store.FirmwareGet(ctx, j.ProductID, j.FirmwareVersion); err != nil {
		if ota.IsCode(err, ota.ENOTFOUND) {
			return ota.Errorf(ota.EINVALID, "firmware version %s has not been uploaded", j.FirmwareVersion)
		}
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
	if err := e.cfg.Store.JobCreate(ctx, j); err != nil {
		return err
	}
	e.log.Info("job created", "job_id", j.ID, "product_id", j.ProductID, "version", j.FirmwareVersion, "status", j.Status)
	e.Wake()
	return nil
}

// CancelJob cancels a job: queued devices are canceled and nothing more is
// dispatched; devices already upgrading are still tracked. A job that has
// ended is ECONFLICT.
func (e *Engine) CancelJob(ctx context.Context, id string) error {
	if err := e.cfg.Store.JobCancel(ctx, id, e.cfg.Now()); err != nil {
		return err
	}
	e.log.Info("job canceled", "job_id", id)
	e.Wake()
	return nil
}

// HandleReport moves a device's execution on a report that is already
// durable in the store. It never fails the device: errors are logged, and
// the store's compare-and-set makes a lost race harmless.
func (e *Engine) HandleReport(ctx context.Context, r ota.Report) {
	// It runs on the device's connection: bound it, so a slow database
	// delays this device's next packets by seconds at most.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.handleReport(ctx, r); err != nil && !ota.IsCode(err, ota.ECONFLICT) && ctx.Err() == nil {
		e.log.Error("report not applied to its job", "product_id", r.ProductID, "device", r.DeviceName, "type", r.Type, "err", err)
	}
}

func (e *Engine) handleReport(ctx context.Context, r ota.Report) error {
	x, err := e.cfg.Store.JobExecutionCurrent(ctx, r.ProductID, r.DeviceName)
	if ota.IsCode(err, ota.ENOTFOUND) {
		return nil // never in a job
	}
	if err != nil {
		return err
	}
	j, err := e.job(ctx, x.JobID)
	if err != nil {
		return err
	}
	switch r.Type {
	case ota.EventReportVersion:
		return e.onVersion(ctx, j, x, r)
	case ota.EventReportProgress:
		return e.onProgress(ctx, j, x, r)
	}
	return nil
}

func (e *Engine) onVersion(ctx context.Context, j *ota.Job, x *ota.JobExecution, r ota.Report) error {
	if x.State == ota.ExecDone {
		if r.Version == j.FirmwareVersion {
			return nil
		}
		// The device came back on another version after it was done.
		return e.transition(ctx, x, ota.ExecFailed, nil, intp(-5), fmt.Sprintf("rolled back: reports version %s after done", r.Version))
	}
	if ota.ExecTerminal(x.State) {
		return nil
	}
	if r.Version == j.FirmwareVersion {
		return e.transition(ctx, x, ota.ExecDone, intp(100), nil, "")
	}
	switch x.State {
	case ota.ExecQueued:
		if j.Status == ota.JobRunning {
			return e.dispatch(ctx, j, x.DeviceName)
		}
	case ota.ExecNotified, ota.ExecDownloading:
		if x.NotifiedAt != nil && r.At.Before(*x.NotifiedAt) {
			// The report was received before this notification went out
			// (a device's connect-time report racing a dispatch pass):
			// it says nothing of whether the device got it.
			return nil
		}
		// The device missed the message or restarted: send it again.
		fw, err := e.cfg.Store.FirmwareGet(ctx, j.ProductID, j.FirmwareVersion)
		if err != nil {
			return err
		}
		deadline := e.cfg.Now().Add(e.cfg.URLSlack)
		if x.DeadlineAt != nil {
			deadline = *x.DeadlineAt
		}
		e.notify(ctx, j, fw, x.DeviceName, deadline)
	case ota.ExecBurning:
		// It burned the image and came back on another version.
		return e.fail(ctx, j, x, ota.ExecFailed, intp(-5), fmt.Sprintf("reports version %s after burning", r.Version))
	}
	return nil
}

func (e *Engine) onProgress(ctx context.Context, j *ota.Job, x *ota.JobExecution, r ota.Report) error {
	if r.Version != j.FirmwareVersion || ota.ExecTerminal(x.State) || x.State == ota.ExecQueued {
		return nil // another version, or late: recorded in the history only
	}
	switch r.State {
	case ota.ProgressDownloading:
		pct := 0
		if r.Percent != nil {
			pct = min(max(*r.Percent, 0), 100)
		}
		if x.State == ota.ExecDownloading && pct <= x.Percent {
			return nil
		}
		if x.State != ota.ExecNotified && x.State != ota.ExecDownloading {
			return nil
		}
		return e.transition(ctx, x, ota.ExecDownloading, &pct, nil, "")
	case ota.ProgressBurning:
		if !ota.ExecCanTransition(x.State, ota.ExecBurning) {
			return nil
		}
		return e.transition(ctx, x, ota.ExecBurning, intp(100), nil, "")
	case ota.ProgressDone:
		return e.transition(ctx, x, ota.ExecDone, intp(100), intp(0), "")
	case ota.ProgressFail:
		code := r.ResultCode
		if code == nil || *code == 0 {
			code = intp(-5)
		}
		msg := r.ResultMsg
		if msg == "" {
			msg = failureText(*code)
		}
		return e.fail(ctx, j, x, ota.ExecFailed, code, msg)
	}
	return nil
}

func (e *Engine) transition(ctx context.Context, x *ota.JobExecution, to string, pct, code *int, msg string) error {
	p := ota.JobExecutionTransitionParams{JobID: x.JobID, DeviceName: x.DeviceName, From: x.State, To: to,
		Percent: pct, ResultCode: code, At: e.cfg.Now()}
	if msg != "" {
		p.ResultMsg = &msg
	}
	if err := e.cfg.Store.JobExecutionTransition(ctx, p); err != nil {
		return err
	}
	if to != x.State {
		e.transitions.WithLabelValues(to).Inc()
	}
	if ota.ExecTerminal(to) {
		e.Wake() // a slot is free, and the job may be complete
	}
	return nil
}

// failureText names the failure codes of the device protocol.
func failureText(code int) string {
	switch code {
	case -1:
		return "download timed out"
	case -2:
		return "file does not exist"
	case -3:
		return "signature expired"
	case -4:
		return "MD5 mismatch"
	}
	return "update failed"
}

func intp(n int) *int { return &n }

// job returns a job for report handling from a small cache: every report
// needs its job, and all a report uses of it but the status never changes.
// A stale status is harmless there: a queued device of a job canceled
// meanwhile is no longer queued, so dispatching it claims nothing, and a
// scheduled job that started is dispatched by the next pass.
func (e *Engine) job(ctx context.Context, id string) (*ota.Job, error) {
	e.jobsMu.Lock()
	j, ok := e.jobs[id]
	e.jobsMu.Unlock()
	if ok {
		return j, nil
	}
	j, err := e.cfg.Store.JobGet(ctx, id)
	if err != nil {
		return nil, err
	}
	e.jobsMu.Lock()
	if len(e.jobs) >= maxCachedJobs {
		clear(e.jobs)
	}
	e.jobs[id] = j
	e.jobsMu.Unlock()
	return j, nil
}

// maxCachedJobs bounds the job cache; past it the cache starts afresh.
const maxCachedJobs = 256
