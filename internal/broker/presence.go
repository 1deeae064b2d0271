package broker

import (
	"context"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/otad/otad/internal/ota"
)

// presence records connects and disconnects in the background, so that
// mochi's hooks never wait on the database. Events of one device always go
// to the same shard and are written in the order they happened.
type presence struct {
	store   ota.Store
	log     *slog.Logger
	metrics *metrics
	seed    maphash.Seed
	shards  []*presenceShard

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type presenceShard struct {
	mu     sync.Mutex
	queue  []ota.DevicePresenceParams
	wake   chan struct{} // capacity 1: "there may be work"
	closed bool
}

const presenceShards = 2

func newPresence(store ota.Store, log *slog.Logger, m *metrics) *presence {
	p := &presence{store: store, log: log, metrics: m, seed: maphash.MakeSeed()}
	for range presenceShards {
		p.shards = append(p.shards, &presenceShard{wake: make(chan struct{}, 1)})
	}
	return p
}

func (p *presence) start() {
	p.ctx, p.cancel = context.WithCancel(context.Background())
	for _, s := range p.shards {
		p.wg.Add(1)
		go p.run(s)
	}
}

// enqueue queues an event without blocking. The queue is unbounded but
// holds at most a few events per device connection.
func (p *presence) enqueue(e ota.DevicePresenceParams) {
	s := p.shards[maphash.String(p.seed, e.ProductID+"/"+e.DeviceName)%presenceShards]
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	p.metrics.presencePending.Inc()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// stop writes what is queued for at most grace, then gives up on the rest.
func (p *presence) stop(grace time.Duration) {
	for _, s := range p.shards {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	t := time.AfterFunc(grace, p.cancel)
	p.wg.Wait()
	t.Stop()
	p.cancel()
}

func (p *presence) run(s *presenceShard) {
	defer p.wg.Done()
	for {
		s.mu.Lock()
		queue := s.queue
		s.queue = nil
		closed := s.closed
		s.mu.Unlock()
		for rest := queue; len(rest) > 0; {
			if p.ctx.Err() != nil {
				p.metrics.presencePending.Sub(float64(len(rest)))
				p.log.Warn("presence updates abandoned at shutdown", "count", len(rest))
				break
			}
			n := min(len(rest), presenceBatch)
			p.write(rest[:n])
			p.metrics.presencePending.Sub(float64(n))
			rest = rest[n:]
		}
		if closed && len(queue) == 0 || p.ctx.Err() != nil {
			return
		}
		if len(queue) > 0 {
			continue
		}
		<-s.wake
	}
}

// presenceBatch is the most connects and disconnects written in one
// transaction: a fleet reconnecting at once (otad restarted) is recorded
// online in a few commits, not one per device.
const presenceBatch = 500

// write records a batch of changes; when the batch fails as a whole, each
// change is written alone so that one cannot fail its neighbours.
func (p *presence) write(es []ota.DevicePresenceParams) {
	ctx, cancel := context.WithTimeout(p.ctx, writeTimeout)
	defer cancel()
	errs, err := p.store.DevicePresenceBatch(ctx, es)
	if err != nil {
		if len(es) > 1 {
			p.log.Warn("presence batch failed, writing one by one", "changes", len(es), "err", err)
			for _, e := range es {
				p.write([]ota.DevicePresenceParams{e})
			}
			return
		}
		errs = []error{err}
	}
	for i, e := range es {
		switch err := errs[i]; {
		case err == nil:
		case ota.IsCode(err, ota.ENOTFOUND):
			// The device was deleted while connected.
			p.log.Debug("presence of deleted device ignored", "product_id", e.ProductID, "device", e.DeviceName)
		default:
			p.metrics.presenceErrors.Inc()
			p.log.Error("presence not recorded", "product_id", e.ProductID, "device", e.DeviceName, "online", e.Online, "err", err)
		}
	}
}
