package engine

import (
	"context"
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
	err := e.cfg.Store.JobCreate(ctx, ota.JobCreateParams{Job: j, Initial: func(v string) ota.JobExecution {
		return ota.NewExecution(j, v, j.CreatedAt)
	}})
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
	now := e.cfg.Now()
	changed, err := e.cfg.Store.JobCancel(ctx, ota.JobCancelParams{ID: id, At: now,
		Cancel: func(x *ota.JobExecution) (*ota.JobExecution, bool) {
			s := ota.Step(&ota.Job{}, x, ota.ExecEvent{Kind: ota.EventCancel}, now)
			return &s.Exec, s.Changed
		}})
	if err != nil {
		return err
	}
	e.transitions.WithLabelValues(ota.ExecCanceled).Add(float64(len(changed)))
	e.log.Info("job canceled", "job_id", id, "executions_canceled", len(changed))
	e.markEnded(id)
	e.wakeAll(ctx, id)
	return nil
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
