// Package webhook delivers the event log to webhook endpoints: at least
// once, in sequence order per endpoint, signed the Standard Webhooks way.
//
// Order and durability come from each webhook's cursor in the store (the
// last event given to it): a delivery run reads the events after the
// cursor, posts them one at a time and moves the cursor after each 2xx,
// compare-and-set. Who runs and when comes from River, a job queue in the
// same database: one job per webhook ("deliver what is after the
// cursor"), unique per webhook while it waits, runs or backs off, so that
// among replicas one delivers. A failure snoozes the job with exponential
// backoff and jitter; a crashed replica's job is rescued by River and
// runs again from the cursor. Every replica looks for webhooks behind the
// log every Poll and enqueues their job; River drops the duplicates.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"

	"github.com/otad/otad/internal/ota"
)

// Config is what delivery needs.
type Config struct {
	Logger *slog.Logger
	Store  ota.Store
	Policy ota.WebhookPolicy
	// Timeout bounds one request, connecting included.
	Timeout time.Duration
	// Poll is how often this replica looks for webhooks behind the log
	// (and how often River looks for due jobs where it cannot be told).
	Poll time.Duration
	// Node names this replica to River.
	Node string
	// Client sends the requests; nil builds one that follows no
	// redirects.
	Client *http.Client
}

// queueName is River's queue for the deliveries.
const queueName = "otad_webhooks"

// pageSize is how many events a run reads at a time.
const pageSize = 100

// maxWorkers is how many webhooks one replica delivers to at once.
const maxWorkers = 16

// uniqueStates are the job states in which a webhook's job exists for
// River's uniqueness: a new one is not inserted while one waits, runs or
// backs off. Completed is left out, so that a webhook that caught up gets
// a new job when the log grows again.
var uniqueStates = []rivertype.JobState{
	rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRetryable,
	rivertype.JobStateRunning, rivertype.JobStateScheduled,
}

// deliverArgs is a River job: deliver a webhook's events after its cursor.
type deliverArgs struct {
	WebhookID string `json:"webhook_id"`
}

func (deliverArgs) Kind() string { return "otad_webhook_deliver" }

func (deliverArgs) InsertOpts() river.InsertOpts {
	// Failed deliveries snooze, which costs no attempt; attempts go only
	// to errors of otad's own (the database away), retried with backoff.
	return river.InsertOpts{Queue: queueName, MaxAttempts: 1000,
		UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: uniqueStates}}
}

// queue is the River client as the service uses it, whatever its
// driver's transaction type.
type queue interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	StopAndCancel(ctx context.Context) error
	InsertMany(ctx context.Context, params []river.InsertManyParams) ([]*rivertype.JobInsertResult, error)
}

// Service delivers webhooks. Run it; it stops with its context.
type Service struct {
	log     *slog.Logger
	store   ota.Store
	policy  ota.WebhookPolicy
	timeout time.Duration
	poll    time.Duration
	// budget is how long one run delivers before it hands over to a
	// fresh one (River bounds a job's time).
	budget time.Duration
	http   *http.Client
	queue  queue
	// stopping is closed when Run's context ends: runs hand over at the
	// next event instead of spending their budget.
	stopping chan struct{}
}

// New builds the service on River's driver for the store's database. The
// River schema must be migrated (the stores' Migrate does it).
func New[TTx any](driver riverdriver.Driver[TTx], cfg Config) (*Service, error) {
	if cfg.Timeout <= 0 || cfg.Poll <= 0 || cfg.Policy.Backoff <= 0 || cfg.Policy.MaxBackoff < cfg.Policy.Backoff {
		return nil, fmt.Errorf("webhook: timeout, poll and backoff must be positive")
	}
	s := &Service{log: cfg.Logger.With("component", "webhook"), store: cfg.Store, policy: cfg.Policy,
		timeout: cfg.Timeout, poll: cfg.Poll, budget: 2 * cfg.Timeout, http: cfg.Client, stopping: make(chan struct{})}
	if s.http == nil {
		s.http = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &worker{s: s}); err != nil {
		return nil, err
	}
	// A run takes its budget and one request more; past JobTimeout River
	// cancels it, and a job still marked running after
	// RescueStuckJobsAfter (its replica died) runs again.
	jobTimeout := s.budget + 2*cfg.Timeout
	client, err := river.NewClient(driver, &river.Config{
		ID:                          cfg.Node,
		Logger:                      slog.New(warnOnly{s.log.With("queue", "river").Handler()}),
		Queues:                      map[string]river.QueueConfig{queueName: {MaxWorkers: maxWorkers}},
		Workers:                     workers,
		JobTimeout:                  jobTimeout,
		RescueStuckJobsAfter:        jobTimeout + cfg.Timeout,
		RetryPolicy:                 retryPolicy{cfg.Policy},
		FetchPollInterval:           cfg.Poll,
		FetchCooldown:               min(cfg.Poll, 100*time.Millisecond),
		CompletedJobRetentionPeriod: time.Hour,
	})
	if err != nil {
		return nil, fmt.Errorf("webhook queue: %w", err)
	}
	s.queue = client
	return s, nil
}

// Run delivers until ctx ends, then lets the runs in flight finish their
// request (within stopTimeout, then cancels them: they run again from the
// cursor).
func (s *Service) Run(ctx context.Context, stopTimeout time.Duration) error {
	if err := s.queue.Start(context.WithoutCancel(ctx)); err != nil {
		return fmt.Errorf("webhook queue: %w", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(s.poll)
		defer t.Stop()
		for {
			s.enqueueDue(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	<-ctx.Done()
	close(s.stopping)
	wg.Wait()
	stopCtx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	if err := s.queue.Stop(stopCtx); err != nil {
		cancelCtx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		return errors.Join(err, s.queue.StopAndCancel(cancelCtx))
	}
	return nil
}

// enqueueDue gives every webhook behind the log a job, unless it has one.
func (s *Service) enqueueDue(ctx context.Context) {
	ids, err := s.store.WebhookListDue(ctx, ota.MaxPageLimit)
	if err != nil || len(ids) == 0 {
		if err != nil && ctx.Err() == nil {
			s.log.Warn("looking for webhooks to deliver to failed", "err", err)
		}
		return
	}
	params := make([]river.InsertManyParams, len(ids))
	for i, id := range ids {
		params[i] = river.InsertManyParams{Args: deliverArgs{WebhookID: id}}
	}
	if _, err := s.queue.InsertMany(ctx, params); err != nil && ctx.Err() == nil {
		s.log.Warn("enqueueing webhook deliveries failed", "err", err)
	}
}

type worker struct {
	river.WorkerDefaults[deliverArgs]
	s *Service
}

func (w *worker) Work(ctx context.Context, job *river.Job[deliverArgs]) error {
	return w.s.deliver(ctx, job.Args.WebhookID)
}

// retryPolicy spaces the retries of runs that failed on otad's side as
// failed deliveries are.
type retryPolicy struct{ p ota.WebhookPolicy }

func (r retryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	return time.Now().Add(r.p.Retry(job.Attempt))
}

// deliver is one run for a webhook: the events after its cursor, in
// order, until it catches up, an attempt fails (the job snoozes for the
// backoff) or its budget is spent (a fresh run goes on).
func (s *Service) deliver(ctx context.Context, id string) error {
	start := time.Now()
	for time.Since(start) < s.budget {
		w, err := s.store.WebhookGet(ctx, id)
		if ota.IsCode(err, ota.ENOTFOUND) {
			return nil // deleted
		}
		if err != nil {
			return err
		}
		if !w.Enabled {
			return nil
		}
		key, err := ota.WebhookKey(w.Secret)
		if err != nil {
			return err
		}
		// Every event up to last is visible now (sequence numbers grow
		// in commit order): past the page, the cursor may go there.
		last, err := s.store.EventLastSeq(ctx)
		if err != nil {
			return err
		}
		evs, err := s.store.EventList(ctx, w.Filter(pageSize))
		if err != nil {
			return err
		}
		for _, e := range evs {
			select {
			case <-s.stopping:
				return river.JobSnooze(0)
			default:
			}
			a, err := s.post(ctx, w, key, e)
			if err != nil {
				return err // otad stops; the run goes on elsewhere or later
			}
			// What the receiver answered is recorded even when the run's
			// time is up meanwhile: else it would get the event again.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
			got, err := s.store.WebhookAttempt(rctx, ota.WebhookAttemptParams{WebhookID: w.ID, From: w.Cursor, Attempt: a})
			cancel()
			if ota.IsCode(err, ota.ENOTFOUND) || ota.IsCode(err, ota.ECONFLICT) {
				return nil // deleted, or another run moved the cursor
			}
			if err != nil {
				return err
			}
			if !a.OK() {
				return s.failed(ctx, got, a)
			}
			w.Cursor = got.Cursor
			if time.Since(start) >= s.budget {
				return river.JobSnooze(0)
			}
		}
		if len(evs) < pageSize {
			if last > w.Cursor {
				if err := s.store.WebhookAdvance(ctx, w.ID, w.Cursor, last); err != nil && !ota.IsCode(err, ota.ECONFLICT) && !ota.IsCode(err, ota.ENOTFOUND) {
					return err
				}
			}
			return nil
		}
	}
	return river.JobSnooze(0)
}

// failed decides what follows a failed attempt: a retry after the
// backoff, or, once the webhook has failed for DisableAfter, disabling it.
func (s *Service) failed(ctx context.Context, w *ota.Webhook, a ota.WebhookDelivery) error {
	why := a.Error
	if why == "" {
		why = "HTTP " + strconv.Itoa(a.StatusCode)
	}
	disable, reason := s.policy.ShouldDisable(w, a.UpdatedAt, why)
	if !disable {
		return river.JobSnooze(s.policy.Retry(w.Failures))
	}
	w.Enabled, w.DisabledReason = false, reason
	err := s.store.WebhookUpdate(ctx, ota.WebhookUpdateParams{Webhook: w, Event: ota.LogWebhookDisabled})
	switch {
	case err == nil:
		s.log.Warn("webhook disabled: it failed for too long", "webhook", w.ID, "failing_since", w.FailingSince, "failures", w.Failures)
	case ota.IsCode(err, ota.ECONFLICT):
		// Changed meanwhile (by a caller): look again after the backoff.
		return river.JobSnooze(s.policy.Retry(w.Failures))
	case !ota.IsCode(err, ota.ENOTFOUND):
		return err
	}
	return nil
}

// post sends one event to w and tells how it went. An error is returned
// only when ctx ended (otad stops): that attempt counts for nothing.
func (s *Service) post(ctx context.Context, w *ota.Webhook, key []byte, e *ota.Event) (ota.WebhookDelivery, error) {
	// The body is the event exactly as /v1/events shows it (no HTML
	// escaping).
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(e); err != nil {
		return ota.WebhookDelivery{}, err
	}
	body := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	a := ota.WebhookDelivery{Seq: e.Seq, EventType: e.Type}
	msgID := ota.WebhookMessageID(e.Seq)
	now := time.Now()
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return ota.WebhookDelivery{}, err // the URL was validated when stored
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "otad-webhook/1")
	req.Header.Set("webhook-id", msgID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("webhook-signature", ota.WebhookSignature(key, msgID, now, body))
	resp, err := s.http.Do(req)
	a.LatencyMS = time.Since(now).Milliseconds()
	a.UpdatedAt = ota.Now()
	if ctx.Err() != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return ota.WebhookDelivery{}, ctx.Err()
	}
	if err != nil {
		a.Error = requestError(err, s.timeout)
		return a, nil
	}
	// Read a little of the answer, so that the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	a.StatusCode = resp.StatusCode
	if !a.OK() {
		a.Error = "HTTP " + resp.Status
	}
	return a, nil
}

// requestError says why a request got no answer, without the URL (which
// may carry a token in its query).
func requestError(err error, timeout time.Duration) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return fmt.Sprintf("no answer within %s", timeout)
		}
		err = ue.Err
	}
	msg := err.Error()
	if len(msg) > 512 {
		msg = strings.ToValidUTF8(msg[:512], "")
	}
	return msg
}

// warnOnly passes River's warnings and errors on; its info lines (each
// maintenance run) would drown otad's own.
type warnOnly struct{ slog.Handler }

func (h warnOnly) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && h.Handler.Enabled(ctx, l)
}

func (h warnOnly) WithAttrs(attrs []slog.Attr) slog.Handler {
	return warnOnly{h.Handler.WithAttrs(attrs)}
}

func (h warnOnly) WithGroup(name string) slog.Handler { return warnOnly{h.Handler.WithGroup(name)} }
