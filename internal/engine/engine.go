// Package engine drives upgrade jobs: it starts scheduled jobs, claims and
// notifies devices as rollout pacing allows, applies each batch of device
// reports with the transitions they cause in one transaction, times out
// and retries attempts, and ends jobs. Every decision is ota.Step's; the
// engine performs its effects. Everything it knows is in the store, so a
// restarted otad, or another replica, carries on where it stopped. It works
// only through the ota interfaces.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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
	// Bus carries wake-ups and disconnects between replicas; default a
	// LocalBus (one replica).
	Bus ota.Bus
	// Node names this otad replica; only devices connected to it are
	// notified by it.
	Node string
	// Interval is how often the engine looks for work it was not woken
	// for: due retries, timeouts, scheduled starts. Default 1s.
	Interval time.Duration
	// Batch is the most devices claimed per job and store round trip.
	// Default 500.
	Batch int
	// CancelBatch is the most queued devices a job's cancellation cancels
	// in one transaction; the engine's passes cancel the rest, a batch at a
	// time, before the job closes. Default 10,000.
	CancelBatch int
	// URLSlack is added to a job's timeout for the download URL's expiry,
	// so that a URL outlives the attempt it was made for. Default 10m.
	URLSlack time.Duration
	// Retention is how long events and device history are kept; older
	// ones are pruned in small batches. Default 30 days.
	Retention time.Duration
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
	passSeconds prometheus.Histogram
	passErrors  prometheus.Counter
	dispatchMu  sync.Mutex // one dispatch pass at a time per replica
	heartbeat   time.Time  // last NodeHeartbeat, touched only by pass
	endCheck    time.Time  // last time every active job was checked for its end
	pruned      time.Time  // last retention pass

	mu       sync.Mutex
	jobs     map[string]*ota.Job      // see job
	firmware map[string]*ota.Firmware // see firmwareOf
	ended    map[string]bool          // jobs that may have ended since the last pass
	// continuous: where each continuous job's looks for new targets are
	// (addMatching).
	continuous map[string]continuousCursor
}

// Node liveness: a replica refreshes its row every heartbeatEvery; one
// unseen for NodeStaleAfter is taken for dead and its devices for offline.
const (
	heartbeatEvery = 15 * time.Second
	NodeStaleAfter = time.Minute
	// endCheckEvery bounds how long a job whose end no event of this
	// replica saw (another replica's) waits to be completed.
	endCheckEvery = 5 * time.Second
)

// New builds an engine.
func New(cfg Config) (*Engine, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.CancelBatch <= 0 {
		cfg.CancelBatch = 10000
	}
	if cfg.URLSlack <= 0 {
		cfg.URLSlack = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = ota.Now
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 30 * 24 * time.Hour
	}
	if cfg.Bus == nil {
		cfg.Bus = ota.NewLocalBus()
	}
	e := &Engine{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "engine"),
		wake:     make(chan struct{}, 1),
		jobs:     make(map[string]*ota.Job),
		firmware: make(map[string]*ota.Firmware),
		ended:    make(map[string]bool),

		continuous: make(map[string]continuousCursor),
		notified: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otad_job_notifications_total",
			Help: "update_firmware messages sent to devices.",
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_job_execution_transitions_total",
			Help: "Device executions entering each state.",
		}, []string{"state"}),
		passSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "otad_engine_pass_seconds",
			Help:    "Duration of the engine's passes over due work (claims, timeouts, job ends).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
		passErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otad_engine_pass_errors_total",
			Help: "Engine passes that failed (the next one tries again).",
		}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{e.notified, e.transitions, e.passSeconds, e.passErrors, newStatsCollector(cfg.Store)} {
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

// wakeAll wakes the engine of every replica.
func (e *Engine) wakeAll(ctx context.Context, jobID string) {
	if err := e.cfg.Bus.Send(ctx, ota.Signal{Kind: ota.SignalWake, JobID: jobID}); err != nil {
		e.log.Warn("wake-up not sent to other replicas; they find the work at their next tick", "err", err)
		e.Wake()
	}
}

// Run drives jobs until ctx ends, and answers the signals of the bus.
// Errors of one pass are logged and the next pass tries again: a database
// outage delays jobs, it ends nothing.
func (e *Engine) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := e.cfg.Bus.Listen(ctx, e.onSignal); err != nil && ctx.Err() == nil {
			e.log.Error("replica bus stopped", "err", err)
		}
	}()
	defer wg.Wait()
	// Each tick comes at a jittered interval (±20%), so that paced jobs'
	// notifications, a few per tick, do not go out on a fixed beat.
	t := time.NewTimer(e.cfg.Interval)
	defer t.Stop()
	for {
		t.Reset(time.Duration(float64(e.cfg.Interval) * (0.8 + 0.4*rand.Float64())))
		start := time.Now()
		err := e.pass(ctx)
		e.passSeconds.Observe(time.Since(start).Seconds())
		if err != nil && ctx.Err() == nil {
			e.passErrors.Inc()
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

func (e *Engine) onSignal(s ota.Signal) {
	switch s.Kind {
	case ota.SignalWake:
		if s.JobID != "" {
			e.markEnded(s.JobID)
		}
		e.Wake()
	case ota.SignalDisconnect:
		if ota.ValidateProductID(s.ProductID) == nil && ota.ValidateDeviceName(s.DeviceName) == nil {
			e.cfg.Notifier.Disconnect(s.ProductID, s.DeviceName)
		}
	}
}

// RunOnce does every kind of due work once, as each tick of Run does.
func (e *Engine) RunOnce(ctx context.Context) error { return e.pass(ctx) }

// pass does every kind of due work once.
func (e *Engine) pass(ctx context.Context) error {
	now := e.cfg.Now()
	if now.Sub(e.heartbeat) >= heartbeatEvery || now.Before(e.heartbeat) {
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
	if now.Sub(e.pruned) >= pruneEvery || now.Before(e.pruned) {
		if err := e.prune(ctx, now); err != nil {
			return err
		}
		e.pruned = now
	}
	jobs, err := e.cfg.Store.JobListActive(ctx)
	if err != nil {
		return fmt.Errorf("list active jobs: %w", err)
	}
	e.recache(jobs...)
	e.forgetCursors(jobs)
	checkAll := now.Sub(e.endCheck) >= endCheckEvery || now.Before(e.endCheck)
	if checkAll {
		e.endCheck = now
	}
	var errs []error
	for _, j := range jobs {
		if j.Status == ota.JobScheduled {
			if j.StartAt != nil && j.StartAt.After(now) {
				continue
			}
			err := e.cfg.Store.JobSetStatus(ctx, ota.JobStatusParams{ID: j.ID, From: ota.JobScheduled, To: ota.JobRunning})
			if err != nil && !ota.IsCode(err, ota.ECONFLICT) {
				errs = append(errs, err)
				continue
			}
			if err == nil {
				e.log.Info("job started", "job_id", j.ID, "product_id", j.ProductID)
			}
			j.Status = ota.JobRunning
		}
		if j.Status == ota.JobRunning {
			if err := e.dispatch(ctx, j); err != nil {
				errs = append(errs, err)
			}
		}
		if j.Continuous && checkAll && (j.Status == ota.JobRunning || j.Status == ota.JobPaused) {
			if err := e.addMatching(ctx, j); err != nil {
				errs = append(errs, err)
			}
		}
		if checkAll || e.takeEnded(j.ID) {
			j, err := e.rollout(ctx, j)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if err := e.end(ctx, j); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// prune deletes events and device history older than the retention, in
// batches small enough not to hold up the reports' writes.
func (e *Engine) prune(ctx context.Context, now time.Time) error {
	total := 0
	for range maxPruneBatches {
		n, err := e.cfg.Store.EventsPrune(ctx, now.Add(-e.cfg.Retention), pruneBatch)
		if err != nil {
			return fmt.Errorf("prune events: %w", err)
		}
		total += n
		if n < pruneBatch {
			break
		}
	}
	if total > 0 {
		e.log.Info("pruned events and device history", "rows", total, "older_than", now.Add(-e.cfg.Retention))
	}
	return nil
}

// Retention pruning: every pruneEvery at most maxPruneBatches batches of
// pruneBatch rows per table; what is left waits for the next round.
const (
	pruneEvery      = time.Minute
	pruneBatch      = 1000
	maxPruneBatches = 20
)

// end completes a running job, or closes a canceled one, once none of its
// executions is active.
func (e *Engine) end(ctx context.Context, j *ota.Job) error {
	counts, err := e.cfg.Store.JobCounts(ctx, j.ID)
	if err != nil {
		return err
	}
	if j.Status == ota.JobCanceled && j.CompletedAt == nil && counts[ota.ExecQueued] > 0 {
		more, err := e.cancelQueued(ctx, j)
		if err != nil || more {
			return err
		}
		if counts, err = e.cfg.Store.JobCounts(ctx, j.ID); err != nil {
			return err
		}
	}
	status, ok := ota.JobEnd(j, counts)
	if !ok {
		return nil
	}
	at := e.cfg.Now()
	err = e.cfg.Store.JobSetStatus(ctx, ota.JobStatusParams{ID: j.ID, From: j.Status, To: status, CompletedAt: &at})
	if ota.IsCode(err, ota.ECONFLICT) {
		return nil // another replica ended it, or it was canceled meanwhile
	}
	if err != nil {
		return err
	}
	e.log.Info("job finished", "job_id", j.ID, "status", status, "counts", counts)
	return nil
}

// stepAll is a JobChange's Apply: each execution takes an event of kind,
// with the job as it becomes.
func stepAll(kind string, now time.Time) func(*ota.Job, *ota.JobExecution) (*ota.JobExecution, bool) {
	return func(j *ota.Job, x *ota.JobExecution) (*ota.JobExecution, bool) {
		s := ota.Step(j, x, ota.ExecEvent{Kind: kind}, now)
		return &s.Exec, s.Changed
	}
}

// cancelQueued cancels a batch of what a canceled job still has queued,
// CancelBatch devices in one transaction, and says whether more may be
// left: the next pass, which it wakes, goes on. A job of a million devices
// is canceled without one transaction holding them all, and without one
// pass holding up the heartbeat, timeouts and other jobs meanwhile.
func (e *Engine) cancelQueued(ctx context.Context, j *ota.Job) (bool, error) {
	now := e.cfg.Now()
	changed, err := e.cfg.Store.JobChange(ctx, ota.JobChangeParams{ID: j.ID, At: now, States: []string{ota.ExecQueued}, Limit: e.cfg.CancelBatch,
		Job: func(cur *ota.Job) (*ota.Job, error) {
			if cur.Status != ota.JobCanceled || cur.CompletedAt != nil {
				return nil, ota.Errorf(ota.ECONFLICT, "job %s is no longer being canceled", j.ID)
			}
			return cur, nil
		},
		Apply: stepAll(ota.EventCancel, now)})
	if ota.IsCode(err, ota.ECONFLICT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("job %s cancel queued: %w", j.ID, err)
	}
	for _, x := range changed {
		e.transitions.WithLabelValues(x.State).Inc()
	}
	if len(changed) < e.cfg.CancelBatch {
		return false, nil
	}
	e.markEnded(j.ID)
	e.Wake()
	return true, nil
}

func (e *Engine) markEnded(jobID string) {
	e.mu.Lock()
	e.ended[jobID] = true
	e.mu.Unlock()
}

func (e *Engine) takeEnded(jobID string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	ok := e.ended[jobID]
	delete(e.ended, jobID)
	return ok
}

// dispatch claims and notifies as many of a job's due devices online on
// this replica as its pacing allows.
func (e *Engine) dispatch(ctx context.Context, j *ota.Job) error {
	e.dispatchMu.Lock()
	defer e.dispatchMu.Unlock()
	fw, err := e.firmwareOf(ctx, j)
	if err != nil {
		return fmt.Errorf("job %s firmware: %w", j.ID, err)
	}
	// Each claimed batch is published while the next one is claimed: the
	// claims wait on the database, the publishing on the broker.
	batches := make(chan []*ota.JobExecution, 1)
	published := make(chan struct{})
	go func() {
		defer close(published)
		for claimed := range batches {
			for _, x := range claimed {
				e.transitions.WithLabelValues(ota.ExecNotified).Inc()
				if err := e.notify(ctx, j, fw, x); err != nil {
					e.publishFailed(ctx, j, x, err)
				}
			}
		}
	}()
	defer func() {
		close(batches)
		<-published
	}()
	after := "" // the pass goes through the devices once, in name order
	for {
		now := e.cfg.Now()
		deadline := now.Add(time.Duration(j.TimeoutSeconds) * time.Second)
		limit := 0
		claimed, err := e.cfg.Store.JobExecutionClaim(ctx, ota.JobExecutionClaimParams{
			JobID: j.ID, Node: e.cfg.Node, MaxPhase: j.Phase, After: after, Unpaced: !j.Paced(), At: now, Since: now.Add(-time.Minute),
			Limit: func(p ota.JobPace) int { limit = ota.ClaimLimit(j, p, e.cfg.Batch, now); return limit },
			Claim: func(x *ota.JobExecution) (*ota.JobExecution, bool) {
				s := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventClaim, Deadline: deadline}, now)
				return &s.Exec, s.Changed
			},
		})
		if err != nil {
			return fmt.Errorf("job %s claim: %w", j.ID, err)
		}
		if len(claimed) > 0 {
			batches <- claimed
		}
		if len(claimed) < limit || limit == 0 {
			return nil
		}
		after = claimed[len(claimed)-1].DeviceName
	}
}

// publishFailed puts a claimed execution whose notification could not be
// sent back to queued, its attempt not counted.
func (e *Engine) publishFailed(ctx context.Context, j *ota.Job, x *ota.JobExecution, cause error) {
	s := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventPublishFailed}, e.cfg.Now())
	if !s.Changed {
		return
	}
	err := e.cfg.Store.JobExecutionUpdate(ctx, &s.Exec)
	switch {
	case err == nil:
		e.transitions.WithLabelValues(s.Exec.State).Inc()
		e.log.Info("update_firmware not delivered; the device is queued again", "job_id", j.ID, "product_id", j.ProductID,
			"device", x.DeviceName, "err", cause)
		if j.MaxConcurrent > 0 {
			e.wakeAll(ctx, j.ID)
		}
	case ota.IsCode(err, ota.ECONFLICT):
		// The device reported meanwhile: it got the message after all.
	default:
		e.log.Error("claimed execution not released; it times out instead", "job_id", j.ID, "device", x.DeviceName, "err", err)
	}
}

// notify sends update_firmware for x's current attempt with a fresh URL
// that outlives the attempt.
func (e *Engine) notify(ctx context.Context, j *ota.Job, fw *ota.Firmware, x *ota.JobExecution) error {
	expires := e.cfg.Now().Add(e.cfg.URLSlack)
	if x.DeadlineAt != nil {
		expires = x.DeadlineAt.Add(e.cfg.URLSlack)
	}
	msg := ota.UpdateFirmware{
		Type:     ota.TypeUpdateFirmware,
		Version:  fw.Version,
		URL:      e.cfg.URLs.URL(fw, expires),
		MD5:      fw.MD5,
		FileSize: fw.Size,
		SHA256:   fw.SHA256,
		JobID:    j.ID,
	}
	if err := e.cfg.Notifier.Publish(ctx, j.ProductID, x.DeviceName, msg); err != nil {
		return err
	}
	e.notified.Inc()
	return nil
}

// expire ends or retries attempts that ran past their deadline.
func (e *Engine) expire(ctx context.Context, now time.Time) error {
	for {
		expired, err := e.cfg.Store.JobExecutionsExpired(ctx, now, e.cfg.Batch)
		if err != nil {
			return fmt.Errorf("expired executions: %w", err)
		}
		for _, x := range expired {
			j, err := e.job(ctx, x.JobID)
			if err != nil {
				return err
			}
			s := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventDeadline}, now)
			if !s.Changed {
				continue
			}
			err = e.cfg.Store.JobExecutionUpdate(ctx, &s.Exec)
			if ota.IsCode(err, ota.ECONFLICT) {
				continue // a report or another replica got there first
			}
			if err != nil {
				return err
			}
			e.stepped(ctx, j, x, &s)
		}
		if len(expired) < e.cfg.Batch {
			return nil
		}
	}
}

// stepped logs and counts a stored transition and asks for the work it
// freed.
func (e *Engine) stepped(ctx context.Context, j *ota.Job, from *ota.JobExecution, s *ota.ExecStep) {
	x := &s.Exec
	if x.State != from.State {
		e.transitions.WithLabelValues(x.State).Inc()
	}
	switch {
	case x.State == ota.ExecQueued && from.State != ota.ExecQueued:
		e.log.Info("attempt failed; retried later", "job_id", j.ID, "device", x.DeviceName, "attempt", from.Attempts,
			"result_code", x.ResultCode, "result_name", x.ResultName, "result_msg", x.ResultMsg)
	case x.State == ota.ExecFailed || x.State == ota.ExecTimedOut || x.State == ota.ExecRolledBack:
		e.log.Info("device upgrade "+x.State, "job_id", j.ID, "device", x.DeviceName, "attempts", x.Attempts,
			"result_code", x.ResultCode, "result_name", x.ResultName, "result_msg", x.ResultMsg)
	}
	if s.Freed {
		e.markEnded(j.ID)
		if j.MaxConcurrent > 0 {
			e.wakeAll(ctx, j.ID) // a slot is free, perhaps for another replica's device
		} else {
			e.Wake()
		}
	}
}

// job returns a job for report handling from a small cache: every report
// needs its job, and all a decision uses of it but its status and phases
// never changes. Each pass refreshes the cached jobs (recache), and a
// stale status or phase is harmless meanwhile: a claim reads the job
// anew, a dispatch asked for a canceled or paused job claims nothing, and
// a phase that just ended still watching its devices for rollbacks only
// counts a device that did roll back.
func (e *Engine) job(ctx context.Context, id string) (*ota.Job, error) {
	e.mu.Lock()
	j, ok := e.jobs[id]
	e.mu.Unlock()
	if ok {
		return j, nil
	}
	j, err := e.cfg.Store.JobGet(ctx, id)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	if len(e.jobs) >= maxCached {
		clear(e.jobs)
	}
	e.jobs[id] = j
	e.mu.Unlock()
	return j, nil
}

// recache replaces the cached copies of jobs with these newer ones.
func (e *Engine) recache(jobs ...*ota.Job) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, j := range jobs {
		if _, ok := e.jobs[j.ID]; ok {
			e.jobs[j.ID] = j
		}
	}
}

// firmwareOf returns a job's firmware from a small cache by job: a
// firmware row never changes, and it cannot be deleted while its job runs
// (a version deleted and uploaded again is another row, for other jobs).
func (e *Engine) firmwareOf(ctx context.Context, j *ota.Job) (*ota.Firmware, error) {
	key := j.ID
	e.mu.Lock()
	fw, ok := e.firmware[key]
	e.mu.Unlock()
	if ok {
		return fw, nil
	}
	fw, err := e.cfg.Store.FirmwareGet(ctx, j.ProductID, j.FirmwareVersion)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	if len(e.firmware) >= maxCached {
		clear(e.firmware)
	}
	e.firmware[key] = fw
	e.mu.Unlock()
	return fw, nil
}

// maxCached bounds each cache; past it the cache starts afresh.
const maxCached = 256
