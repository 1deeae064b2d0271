package firmware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otad/otad/internal/ota"
)

// Object is a stored image as a listing sees it.
type Object struct {
	Key      string
	Modified time.Time
}

// listBatch is how many objects a listing hands over at once.
const listBatch = 1000

// Sweepable is a blob backend whose leftovers can be found: Local and S3.
type Sweepable interface {
	ota.Blobs
	// List calls fn with every stored image, some at a time, until fn
	// fails.
	List(ctx context.Context, fn func([]Object) error) error
	// RemoveIncomplete removes what unfinished uploads left before
	// before (temporary files, multipart uploads) and says how many.
	RemoveIncomplete(ctx context.Context, before time.Time) (int, error)
}

var (
	_ Sweepable = (*Local)(nil)
	_ Sweepable = (*S3)(nil)
)

// SweeperConfig configures a Sweeper.
type SweeperConfig struct {
	Store ota.Store
	Blobs Sweepable
	// Grace is how old a leftover must be before it is removed: an image
	// without a firmware row (a row is written right after its image), an
	// unfinished upload. It must be longer than any upload takes.
	Grace    time.Duration
	Logger   *slog.Logger
	Registry prometheus.Registerer
	// Now defaults to time.Now.
	Now func() time.Time
}

// Sweeper removes what failed uploads, crashes and storage outages leave
// behind: images that no firmware row names, unfinished multipart uploads
// and temporary files. Several replicas may sweep the same storage: every
// removal is idempotent.
type Sweeper struct {
	store ota.Store
	blobs Sweepable
	grace time.Duration
	log   *slog.Logger
	now   func() time.Time
	swept *prometheus.CounterVec
	fails prometheus.Counter
}

// SweepResult counts what one sweep removed.
type SweepResult struct {
	Orphans    int // images without a firmware row
	Incomplete int // unfinished uploads
}

// NewSweeper builds a sweeper and registers its metrics.
func NewSweeper(cfg SweeperConfig) (*Sweeper, error) {
	if cfg.Store == nil || cfg.Blobs == nil || cfg.Grace <= 0 {
		return nil, errors.New("sweeper needs a store, blobs and a grace period")
	}
	s := &Sweeper{store: cfg.Store, blobs: cfg.Blobs, grace: cfg.Grace, log: cfg.Logger, now: cfg.Now,
		swept: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_firmware_swept_total",
			Help: "Leftovers the sweeper removed: orphan (an image without a firmware row) or incomplete (an unfinished upload).",
		}, []string{"kind"}),
		fails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otad_firmware_sweep_errors_total",
			Help: "Sweeps that failed part way; the next one tries again.",
		}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "firmware")
	if s.now == nil {
		s.now = time.Now
	}
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{s.swept, s.fails} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// Run sweeps now and then every interval until ctx is done, logging what
// each sweep removed or why it failed.
func (s *Sweeper) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		res, err := s.Sweep(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.fails.Inc()
			s.log.Warn("firmware sweep failed; the next one tries again", "err", err)
		case res.Orphans+res.Incomplete > 0:
			s.log.Info("firmware leftovers removed", "orphans", res.Orphans, "incomplete_uploads", res.Incomplete)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep removes the leftovers older than the grace period once. The
// firmware rows are asked about after each page of images is listed, so
// an image whose row exists is never taken for an orphan.
func (s *Sweeper) Sweep(ctx context.Context) (SweepResult, error) {
	var res SweepResult
	before := s.now().Add(-s.grace)
	n, err := s.blobs.RemoveIncomplete(ctx, before)
	res.Incomplete = n
	s.swept.WithLabelValues("incomplete").Add(float64(n))
	if err != nil {
		return res, err
	}
	err = s.blobs.List(ctx, func(objs []Object) error {
		var old []string
		for _, o := range objs {
			if o.Modified.Before(before) {
				old = append(old, o.Key)
			}
		}
		if len(old) == 0 {
			return nil
		}
		known, err := s.store.FirmwareBlobKeys(ctx, old)
		if err != nil {
			return err
		}
		referenced := make(map[string]bool, len(known))
		for _, k := range known {
			referenced[k] = true
		}
		for _, k := range old {
			if referenced[k] {
				continue
			}
			if err := s.blobs.Delete(ctx, k); err != nil {
				return fmt.Errorf("remove orphan image %q: %w", k, err)
			}
			res.Orphans++
			s.swept.WithLabelValues("orphan").Inc()
		}
		return nil
	})
	return res, err
}
