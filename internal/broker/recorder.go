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

	queue chan *reportReq
	quit  chan struct{}
	wg    sync.WaitGroup
}

type reportReq struct {
	r    ota.Report
	done chan error // buffered: the writer never blocks on a gone waiter
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

// record queues r and waits until it is durable, ctx ends, or the writer
// reports an error.
func (rc *recorder) record(ctx context.Context, r ota.Report) error {
	req := &reportReq{r: r, done: make(chan error, 1)}
	rc.metrics.reportsPending.Inc()
	defer rc.metrics.reportsPending.Dec()
	select {
	case rc.queue <- req:
	case <-rc.quit:
		return errRecorderClosed
	case <-ctx.Done():
		return ota.Errorf(ota.EUNAVAILABLE, "report queue full: %v", ctx.Err())
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		// The write may still commit; the device, unacknowledged, will
		// send the report again, and a duplicate history entry is the
		// worst outcome.
		return ota.Errorf(ota.EUNAVAILABLE, "report not written in time: %v", ctx.Err())
	}
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

// write commits one batch and answers its waiters. When the batch fails as
// a whole, each report is retried alone so one bad report cannot fail its
// neighbours.
func (rc *recorder) write(batch []*reportReq) {
	reports := make([]ota.Report, len(batch))
	for i, req := range batch {
		reports[i] = req.r
	}
	start := time.Now()
	refused, err := rc.commit(reports)
	rc.metrics.batchSize.Observe(float64(len(batch)))
	rc.metrics.commitSeconds.Observe(time.Since(start).Seconds())
	if err == nil || len(batch) == 1 {
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
		refused, err := rc.commit(reports[i : i+1])
		if err == nil {
			err = refused[0]
		}
		req.done <- err
	}
}

func (rc *recorder) commit(reports []ota.Report) ([]error, error) {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	refused, err := rc.apply.ApplyReports(ctx, reports)
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		return nil, ota.Errorf(ota.EUNAVAILABLE, "database did not answer in %s", writeTimeout)
	}
	return refused, err
}
