package broker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/otad/otad/internal/ota"
)

// ReportApplier applies a batch of device reports, with the transitions
// they cause, in one transaction (the engine implements it). It returns an
// error for the batch when nothing was written, else one per refused report.
type ReportApplier interface {
	ApplyReports(ctx context.Context, reports []ota.Report) ([]error, error)
}

// recorder writes reports with group commit: each device's goroutine hands
// its report over and waits, while a few writers each take everything
// queued (up to a batch) and apply it in one transaction through the
// engine. Under load many devices share one commit; alone, a report is
// written at once.
type recorder struct {
	apply    ReportApplier
	log      *slog.Logger
	metrics  *metrics
	maxBatch int
	writers  int
	maxWrite time.Duration // bounds one transaction (writeTimeout)

	queue chan *reportReq
	quit  chan struct{}
	wg    sync.WaitGroup
}

type reportReq struct {
	r        ota.Report
	deadline time.Time  // answered unwritten after this, written or not by then
	done     chan error // buffered: the writer never blocks on a gone waiter
}

// errRecorderClosed answers reports that arrive while the broker closes.
var errRecorderClosed = ota.Errorf(ota.EUNAVAILABLE, "broker is closing")

// writeTimeout bounds one batch transaction.
const writeTimeout = 10 * time.Second

func newRecorder(apply ReportApplier, log *slog.Logger, m *metrics, maxBatch, writers int) *recorder {
	return &recorder{
		apply:    apply,
		log:      log,
		metrics:  m,
		maxBatch: maxBatch,
		writers:  writers,
		maxWrite: writeTimeout,
		queue:    make(chan *reportReq, maxBatch*writers),
		quit:     make(chan struct{}),
	}
}

func (rc *recorder) start() {
	for range rc.writers {
		rc.wg.Add(1)
		go rc.run()
	}
}

// stop ends the writers once everything queued is written. Callers must
// have stopped calling record.
func (rc *recorder) stop() {
	close(rc.quit)
	rc.wg.Wait()
}

// record queues r and waits until it is durable or the writer reports an
// error. A report not written by deadline is refused: the writers skip it
// when it is still queued then, and bound a transaction by its reports'
// deadlines. Nothing here takes a timer or a context while the queue has
// room, which is every report but under overload: this runs once per
// stored report, on the device's connection.
func (rc *recorder) record(r ota.Report, deadline time.Time) error {
	req := &reportReq{r: r, deadline: deadline, done: make(chan error, 1)}
	rc.metrics.reportsPending.Inc()
	defer rc.metrics.reportsPending.Dec()
	select {
	case rc.queue <- req:
	case <-rc.quit:
		return errRecorderClosed
	default:
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case rc.queue <- req:
		case <-rc.quit:
			return errRecorderClosed
		case <-t.C:
			return ota.Errorf(ota.EUNAVAILABLE, "report queue full")
		}
	}
	return <-req.done
}

func (rc *recorder) run() {
	defer rc.wg.Done()
	batch := make([]*reportReq, 0, rc.maxBatch)
	for {
		var first *reportReq
		select {
		case first = <-rc.queue:
		case <-rc.quit:
			// Drain what was queued before quit; record refuses new work.
			for {
				select {
				case req := <-rc.queue:
					rc.write(append(batch[:0], req))
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
	fill:
		for len(batch) < rc.maxBatch {
			select {
			case req := <-rc.queue:
				batch = append(batch, req)
			default:
				break fill
			}
		}
		rc.write(batch)
	}
}

// write commits one batch and answers its waiters. Reports past their
// deadline are answered at once, unwritten. When the batch is refused as a
// whole, each report is retried alone so one bad report cannot fail its
// neighbours.
func (rc *recorder) write(batch []*reportReq) {
	batch = live(batch)
	if len(batch) == 0 {
		return
	}
	reports := make([]ota.Report, len(batch))
	for i, req := range batch {
		reports[i] = req.r
	}
	start := time.Now()
	refused, err := rc.commit(reports, earliest(batch))
	rc.metrics.batchSize.Observe(float64(len(batch)))
	rc.metrics.commitSeconds.Observe(time.Since(start).Seconds())
	// A batch that ran out of time or found the database gone fails as a
	// whole; one by one would only take longer.
	if err == nil || len(batch) == 1 || ota.IsCode(err, ota.EUNAVAILABLE) {
		for i, req := range batch {
			if err == nil {
				req.done <- refused[i]
			} else {
				req.done <- err
			}
		}
		return
	}
	rc.log.Warn("report batch failed, writing one by one", "reports", len(batch), "err", err)
	for i, req := range batch {
		if expired(req, time.Now()) {
			continue
		}
		refused, err := rc.commit(reports[i:i+1], req.deadline)
		if err == nil {
			err = refused[0]
		}
		req.done <- err
	}
}

// live answers the requests past their deadline and returns the others,
// in place.
func live(batch []*reportReq) []*reportReq {
	now := time.Now()
	live := batch[:0]
	for _, req := range batch {
		if !expired(req, now) {
			live = append(live, req)
		}
	}
	return live
}

// expired answers req, unwritten, when its deadline has passed.
func expired(req *reportReq, now time.Time) bool {
	if now.After(req.deadline) {
		req.done <- ota.Errorf(ota.EUNAVAILABLE, "report not written in time")
		return true
	}
	return false
}

// earliest is the first deadline of a batch: its transaction may take
// until then (at most writeTimeout). The queue is in arrival order, so a
// report waits at most for the batch ahead of it, which ends by an earlier
// deadline, and then for its own: it is answered by its deadline.
func earliest(batch []*reportReq) time.Time {
	t := batch[0].deadline
	for _, req := range batch[1:] {
		if req.deadline.Before(t) {
			t = req.deadline
		}
	}
	return t
}

func (rc *recorder) commit(reports []ota.Report, deadline time.Time) ([]error, error) {
	if max := time.Now().Add(rc.maxWrite); deadline.After(max) {
		deadline = max
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	refused, err := rc.apply.ApplyReports(ctx, reports)
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		return nil, ota.Errorf(ota.EUNAVAILABLE, "database did not answer in time")
	}
	return refused, err
}
