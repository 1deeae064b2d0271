// Package engine drives upgrade jobs: it starts scheduled jobs, notifies
// devices as rollout pacing allows, moves each device's execution through
// the state machine on its reports, times out and retries attempts, and
// completes jobs. Everything it knows is in the store, so a restarted otad,
// or another replica, carries on where it stopped. It works only through
// the ota interfaces.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otad/otad/internal/ota"
)

// URLSigner hands out signed, expiring download URLs for firmware.
type URLSigner interface {
	URL(f *ota.Firmware, expires time.Time) string
}

// Config is what the engine needs.
type Config struct {
	Logger   *slog.Logger
	Store    ota.Store
	Notifier ota.Notifier
	URLs     URLSigner
	// Node names this otad replica; only devices connected to it are
	// notified by it.
	Node string
	// Interval is how often the engine looks for work it was not woken
	// for: due retries, timeouts, scheduled starts. Default 1s.
	Interval time.Duration
	// Batch is the most devices notified per job and store round trip.
	// Default 500.
	Batch int
	// URLSlack is added to a job's timeout for the download URL's expiry,
	// so that a URL outlives the attempt it was made for. Default 10m.
	URLSlack time.Duration
	// Registerer receives the engine's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Now returns the current time; default ota.Now.
	Now func() time.Time
}

// Engine runs upgrade jobs. Create it with New and call Run.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	wake chan struct{}

	notified    prometheus.Counter
	transitions *prometheus.CounterVec
	dispatchMu  sync.Mutex // one dispatch pass at a time per replica
	heartbeat   time.Time  // last NodeHeartbeat, touched only by pass

	jobsMu sync.Mutex
	jobs   map[string]*ota.Job // see job
}

// Node liveness: a replica refreshes its row every heartbeatEvery; one
// unseen for NodeStaleAfter is taken for dead and its devices for offline.
const (
	heartbeatEvery = 15 * time.Second
	NodeStaleAfter = time.Minute
)

// New builds an engine.
func New(cfg Config) (*Engine, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.URLSlack <= 0 {
		cfg.URLSlack = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = ota.Now
	}
	e := &Engine{
		cfg:  cfg,
		log:  cfg.Logger.With("component", "engine"),
		wake: make(chan struct{}, 1),
		jobs: make(map[string]*ota.Job),
		notified: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otad_job_notifications_total",
			Help: "update_firmware messages sent to devices.",
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_job_execution_transitions_total",
			Help: "Device executions entering each state.",
		}, []string{"state"}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{e.notified, e.transitions} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return e, nil
}

// Wake makes Run look for work now rather than at its next tick.
func (e *Engine) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run drives jobs until ctx ends. Errors of one pass are logged and the
// next pass tries again: a database outage delays jobs, it ends nothing.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.Interval)
	defer t.Stop()
	for {
		if err := e.pass(ctx); err != nil && ctx.Err() == nil {
			e.log.Error("job pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-e.wake:
		}
	}
}

// RunOnce does every kind of due work once, as each tick of Run does.
func (e *Engine) RunOnce(ctx context.Context) error { return e.pass(ctx) }

// pass does every kind of due work once.
func (e *Engine) pass(ctx context.Context) error {
	now := e.cfg.Now()
	if now.Sub(e.heartbeat) >= heartbeatEvery {
		n, err := e.cfg.Store.NodeHeartbeat(ctx, e.cfg.Node, now, now.Add(-NodeStaleAfter))
		if err != nil {
			return err
		}
		e.heartbeat = now
		if n > 0 {
			e.log.Info("devices of a stopped otad marked offline", "devices", n)
		}
	}
	if err := e.expire(ctx, now); err != nil {
		return err
	}
	jobs, err := e.cfg.Store.JobListActive(ctx)
	if err != nil {
		return fmt.Errorf("list active jobs: %w", err)
	}
	var errs []error
	for _, j := range jobs {
		if j.Status == ota.JobScheduled {
			if j.StartAt != nil && j.StartAt.After(now) {
				continue
			}
			if err := e.cfg.Store.JobStart(ctx, j.ID); err != nil && !ota.IsCode(err, ota.ECONFLICT) {
				errs = append(errs, err)
				continue
			}
			e.log.Info("job started", "job_id", j.ID, "product_id", j.ProductID)
			j.Status = ota.JobRunning
		}
		if j.Status == ota.JobRunning {
			if err := e.dispatch(ctx, j, ""); err != nil {
				errs = append(errs, err)
			}
		}
		done, err := e.cfg.Store.JobFinish(ctx, j.ID, e.cfg.Now())
		if err != nil {
			errs = append(errs, err)
		} else if done {
			e.log.Info("job finished", "job_id", j.ID, "status", j.Status)
		}
	}
	return errors.Join(errs...)
}

// dispatch notifies as many of a job's due, online devices as its pacing
// allows; with device set, only that device.
func (e *Engine) dispatch(ctx context.Context, j *ota.Job, device string) error {
	e.dispatchMu.Lock()
	defer e.dispatchMu.Unlock()
	fw, err := e.cfg.Store.FirmwareGet(ctx, j.ProductID, j.FirmwareVersion)
	if err != nil {
		return fmt.Errorf("job %s firmware: %w", j.ID, err)
	}
	for {
		now := e.cfg.Now()
		limit := e.cfg.Batch
		if j.MaxConcurrent > 0 || j.MaxPerMinute > 0 {
			pace, err := e.cfg.Store.JobPace(ctx, j.ID, now.Add(-time.Minute))
			if err != nil {
				return err
			}
			if j.MaxConcurrent > 0 {
				limit = min(limit, j.MaxConcurrent-pace.InFlight)
			}
			if j.MaxPerMinute > 0 {
				limit = min(limit, j.MaxPerMinute-pace.NotifiedSince)
			}
		}
		if limit <= 0 {
			return nil
		}
		deadline := now.Add(time.Duration(j.TimeoutSeconds) * time.Second)
		claimed, err := e.cfg.Store.JobExecutionClaim(ctx, ota.JobExecutionClaimParams{
			JobID: j.ID, Node: e.cfg.Node, DeviceName: device, Limit: limit, At: now, Deadline: deadline,
		})
		if err != nil {
			return fmt.Errorf("job %s claim: %w", j.ID, err)
		}
		for _, x := range claimed {
			e.transitions.WithLabelValues(ota.ExecNotified).Inc()
			e.notify(ctx, j, fw, x.DeviceName, deadline)
		}
		if len(claimed) < limit || device != "" {
			return nil
		}
	}
}

// notify sends update_firmware with a fresh URL. A device that is not
// connected gets it again when it next reports its version.
func (e *Engine) notify(ctx context.Context, j *ota.Job, fw *ota.Firmware, device string, deadline time.Time) {
	msg := ota.UpdateFirmware{
		Type:     ota.TypeUpdateFirmware,
		Version:  fw.Version,
		URL:      e.cfg.URLs.URL(fw, deadline.Add(e.cfg.URLSlack)),
		MD5:      fw.MD5,
		FileSize: fw.Size,
		SHA256:   fw.SHA256,
		JobID:    j.ID,
	}
	if err := e.cfg.Notifier.Publish(ctx, j.ProductID, device, msg); err != nil {
		e.log.Warn("update_firmware not delivered; it is sent again when the device reports its version",
			"job_id", j.ID, "product_id", j.ProductID, "device", device, "err", err)
		return
	}
	e.notified.Inc()
}

// expire ends or retries attempts that ran past their deadline.
func (e *Engine) expire(ctx context.Context, now time.Time) error {
	for {
		expired, err := e.cfg.Store.JobExecutionsExpired(ctx, now, e.cfg.Batch)
		if err != nil {
			return fmt.Errorf("expired executions: %w", err)
		}
		jobs := map[string]*ota.Job{}
		for _, x := range expired {
			j, ok := jobs[x.JobID]
			if !ok {
				if j, err = e.cfg.Store.JobGet(ctx, x.JobID); err != nil {
					return err
				}
				jobs[x.JobID] = j
			}
			msg := fmt.Sprintf("no result within %ds of notification", j.TimeoutSeconds)
			if err := e.fail(ctx, j, x, ota.ExecTimedOut, nil, msg); err != nil && !ota.IsCode(err, ota.ECONFLICT) {
				return err
			}
		}
		if len(expired) < e.cfg.Batch {
			return nil
		}
	}
}

// fail ends an attempt: the execution is queued again after the job's
// backoff while retries remain, else it ends in state end (failed or
// timed_out).
func (e *Engine) fail(ctx context.Context, j *ota.Job, x *ota.JobExecution, end string, code *int, msg string) error {
	p := ota.JobExecutionTransitionParams{JobID: x.JobID, DeviceName: x.DeviceName, From: x.State, To: end,
		ResultCode: code, ResultMsg: &msg, At: e.cfg.Now()}
	if j.CanRetry(x.Attempts) {
		next := p.At.Add(j.RetryDelay(x.Attempts))
		p.To, p.NextAttemptAt = ota.ExecQueued, &next
	}
	if err := e.cfg.Store.JobExecutionTransition(ctx, p); err != nil {
		return err
	}
	e.transitions.WithLabelValues(p.To).Inc()
	e.log.Info("attempt failed", "job_id", j.ID, "device", x.DeviceName, "attempt", x.Attempts, "state", p.To, "result_msg", msg)
	return nil
}
