package ota

import (
	"context"
	"sync"
)

// Signal is a message between otad replicas sharing one database. It is a
// hint to look at the database again, never the data itself: a replica that
// misses one still converges on its next pass. Its JSON form is what
// replicas of different versions exchange, so fields are only ever added.
type Signal struct {
	Kind       string `json:"kind"`
	ProductID  string `json:"product_id,omitempty"`
	DeviceName string `json:"device_name,omitempty"`
	JobID      string `json:"job_id,omitempty"`
}

// Signal kinds. A listener ignores kinds it does not know, so a newer
// replica may send new ones during a rolling upgrade.
const (
	SignalWake       = "wake"       // there may be job work: a new job, a report, a freed slot
	SignalDisconnect = "disconnect" // close the device's MQTT session wherever it is held
)

// Bus delivers signals to every replica, the sender included: PostgreSQL
// LISTEN/NOTIFY between replicas, LocalBus in a single process.
type Bus interface {
	// Send delivers s to every replica listening now, at most once each;
	// best effort. A signal without a kind is EINVALID; one too big for the
	// transport is ETOOLARGE.
	Send(ctx context.Context, s Signal) error
	// Listen calls handle for each signal received until ctx ends, then
	// returns nil. After the bus lost its connection (signals may have been
	// missed) and got it back, it calls handle with Signal{Kind: SignalWake}
	// so that the listener re-checks its work.
	//
	// handle runs on the goroutine that called Listen, one signal at a time
	// and never after Listen returned; it must be quick. Listen may be
	// called more than once (each gets every signal).
	Listen(ctx context.Context, handle func(Signal)) error
}

// LocalBus is the Bus of a single process (SQLite): Send queues the signal
// for every current listener, and each Listen hands its queue to handle in
// order. It never loses its connection, so it never sends the synthetic
// wake. The zero value is ready to use.
type LocalBus struct {
	mu        sync.Mutex
	listeners map[*localListener]struct{}
}

// localListener is one Listen call's queue.
type localListener struct {
	pending []Signal      // guarded by LocalBus.mu
	ready   chan struct{} // holds a token while pending may be non-empty
}

var _ Bus = (*LocalBus)(nil)

// NewLocalBus returns an empty LocalBus.
func NewLocalBus() *LocalBus { return &LocalBus{} }

// Send queues s for every listener and returns without waiting for them. A
// canceled ctx sends nothing and returns its error.
func (b *LocalBus) Send(ctx context.Context, s Signal) error {
	if s.Kind == "" {
		return Errorf(EINVALID, "signal has no kind")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for l := range b.listeners {
		l.pending = append(l.pending, s)
		select {
		case l.ready <- struct{}{}:
		default: // already signaled
		}
	}
	return nil
}

// Listen calls handle for each signal sent while it runs, until ctx ends;
// signals still queued then are dropped.
func (b *LocalBus) Listen(ctx context.Context, handle func(Signal)) error {
	l := &localListener{ready: make(chan struct{}, 1)}
	b.mu.Lock()
	if b.listeners == nil {
		b.listeners = make(map[*localListener]struct{})
	}
	b.listeners[l] = struct{}{}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.listeners, l)
		b.mu.Unlock()
	}()

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.ready:
		}
		b.mu.Lock()
		batch := l.pending
		l.pending = nil
		b.mu.Unlock()
		for _, s := range batch {
			if ctx.Err() != nil {
				return nil
			}
			handle(s)
		}
	}
}
