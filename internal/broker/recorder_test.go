package broker

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otad/otad/internal/ota"
)

// stuckApplier is a database that never answers: each batch waits for its
// deadline. started receives each batch's size as it begins.
type stuckApplier struct {
	calls   atomic.Int32
	started chan int
}

func (a *stuckApplier) ApplyReports(ctx context.Context, reports []ota.Report) ([]error, error) {
	a.calls.Add(1)
	a.started <- len(reports)
	<-ctx.Done()
	return nil, ctx.Err()
}

// Each report is answered by its own deadline when the database hangs:
// a transaction is bounded by its batch's earliest deadline, a report that
// waited past its deadline in the queue is refused unwritten, and a batch
// that ran out of time is not retried one report at a time.
func TestRecorderDeadlines(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry(), &Broker{})
	if err != nil {
		t.Fatal(err)
	}
	a := &stuckApplier{started: make(chan int, 16)}
	rc := newRecorder(a, slog.New(slog.NewTextHandler(io.Discard, nil)), m, 10, 1)
	rc.maxWrite = time.Second
	rc.start()
	defer rc.stop()

	type result struct {
		err error
		at  time.Time
	}
	record := func(name string, deadline time.Time) chan result {
		ch := make(chan result, 1)
		go func() {
			err := rc.record(ota.Report{ProductID: "P", DeviceName: name, Type: ota.EventReportVersion, Version: "1"}, deadline)
			ch <- result{err, time.Now()}
		}()
		return ch
	}
	start := time.Now()
	first := record("a", start.Add(300*time.Millisecond))
	if n := <-a.started; n != 1 {
		t.Fatalf("first batch of %d reports, want 1", n)
	}
	// Queued behind the stuck batch: one that will have expired when the
	// writer comes back, two that have not.
	expired := record("b", start.Add(100*time.Millisecond))
	second := record("c", start.Add(time.Hour))
	third := record("d", start.Add(time.Hour))
	eventually(t, "three reports queued", func() bool { return len(rc.queue) == 3 })

	r := <-first
	if !ota.IsCode(r.err, ota.EUNAVAILABLE) {
		t.Fatalf("first report: %v, want EUNAVAILABLE", r.err)
	}
	if late := r.at.Sub(start); late > 10*time.Second {
		t.Fatalf("first report answered after %s, its deadline was 300ms", late)
	}
	if r := <-expired; !ota.IsCode(r.err, ota.EUNAVAILABLE) {
		t.Fatalf("expired report: %v, want EUNAVAILABLE", r.err)
	}
	// The next batch holds only the two live reports, bounded by the
	// writer's own timeout (a second here); it fails as a whole.
	if n := <-a.started; n != 2 {
		t.Fatalf("second batch of %d reports, want 2", n)
	}
	for _, ch := range []chan result{second, third} {
		if r := <-ch; !ota.IsCode(r.err, ota.EUNAVAILABLE) {
			t.Fatalf("queued report: %v, want EUNAVAILABLE", r.err)
		}
	}
	if n := a.calls.Load(); n != 2 {
		t.Fatalf("%d transactions, want 2 (no retries one by one)", n)
	}
}
