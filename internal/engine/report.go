package engine

import (
	"context"

	"github.com/otad/otad/internal/ota"
)

// errRefused answers a report of a device that was disabled or deleted
// while connected.
var errRefused = ota.Errorf(ota.EFORBIDDEN, "device is disabled or deleted")

// maxApplyTries bounds how often a batch that lost a race with another
// writer of one of its executions is read and applied again.
const maxApplyTries = 4

// reportEffect is what the engine does once a batch is committed.
type reportEffect struct {
	job  *ota.Job
	from ota.JobExecution
	step ota.ExecStep
}

// ApplyReports applies a batch of device reports: in one transaction each
// report updates its device and its history and moves the device's current
// execution as ota.Step decides. Only once that is durable does the engine
// act on it: notifications are sent, freed slots dispatched. It returns an
// error for the batch when nothing was written, else one per report that
// was refused (nil for the others): a disabled or deleted device's reports
// are EFORBIDDEN and its session is closed. Call it from the broker's
// batched writer, never on a device's connection.
func (e *Engine) ApplyReports(ctx context.Context, reports []ota.Report) ([]error, error) {
	refused := make([]error, len(reports))
	var effects []reportEffect
	var kick []ota.DeviceKey
	var err error
	for try := 1; ; try++ {
		err = e.cfg.Store.DeviceReportsApply(ctx, reports, func(ctx context.Context, b *ota.ReportBatch) error {
			clear(refused)
			effects, kick = effects[:0], kick[:0]
			for i, r := range b.Reports {
				k := ota.DeviceKey{ProductID: r.ProductID, Name: r.DeviceName}
				d := b.Devices[k]
				if d == nil || d.Disabled {
					refused[i] = errRefused
					kick = append(kick, k)
					continue
				}
				ota.ApplyReport(d, r, e.cfg.Node)
				b.Record[i] = true
				x := b.Execs[k]
				if x == nil {
					continue // never in a job
				}
				j, err := e.job(ctx, x.JobID)
				if err != nil {
					return err
				}
				s := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventReport, Report: &r}, r.At)
				if s.Changed || s.Notify || s.Dispatch {
					effects = append(effects, reportEffect{job: j, from: *x, step: s})
				}
				if s.Changed {
					*x = s.Exec // Step keeps Rev: the store compares it
				}
			}
			return nil
		})
		if !ota.IsCode(err, ota.ECONFLICT) || try == maxApplyTries {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	for _, k := range kick {
		e.cfg.Notifier.Disconnect(k.ProductID, k.Name)
	}
	wake := false
	for i := range effects {
		ef := &effects[i]
		if ef.step.Changed {
			e.stepped(ctx, ef.job, &ef.from, &ef.step)
		}
		if ef.step.Notify {
			fw, err := e.firmwareOf(ctx, ef.job)
			if err == nil {
				err = e.notify(ctx, ef.job, fw, &ef.step.Exec)
			}
			if err != nil {
				e.log.Warn("update_firmware not sent again; the device times out or reports again", "job_id", ef.job.ID,
					"device", ef.step.Exec.DeviceName, "err", err)
			}
		}
		wake = wake || ef.step.Dispatch
	}
	if wake {
		e.Wake()
	}
	return refused, nil
}
