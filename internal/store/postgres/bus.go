package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"

	"github.com/otad/otad/internal/ota"
)

const (
	// busChannel is the NOTIFY channel every replica of one database shares.
	busChannel = "otad"
	// busApplicationName names the listen connections in pg_stat_activity.
	busApplicationName = "otad-bus"
	// maxSignalPayload is the largest payload NOTIFY accepts (it refuses 8000 bytes).
	maxSignalPayload = 7999

	// A lost listen connection is dialed again after a delay that doubles
	// from busRetryMin to busRetryMax, with jitter, and starts over once a
	// connection stayed up for busRetryReset.
	busRetryMin   = 250 * time.Millisecond
	busRetryMax   = 30 * time.Second
	busRetryReset = time.Minute

	// busLogEvery spaces the warnings about malformed payloads.
	busLogEvery = time.Minute
)

// Bus is an ota.Bus over PostgreSQL LISTEN/NOTIFY on the channel "otad".
// Send notifies through the store's pool; each Listen call holds its own
// connection, made with the pool's settings, so a lost connection and its
// reconnect concern that listener alone. A notification reaches the
// listeners connected when its transaction commits; PostgreSQL keeps none
// for later.
type Bus struct {
	pool *pgxpool.Pool
	conn *pgx.ConnConfig
	log  *slog.Logger

	mu         sync.Mutex
	ignored    int       // malformed payloads not yet logged
	ignoredLog time.Time // when they were last logged
}

var _ ota.Bus = (*Bus)(nil)

// Bus returns the bus of the replicas sharing this store's database. It
// stays usable until the store is closed.
func (s *Store) Bus(log *slog.Logger) *Bus {
	conn := s.pool.Config().ConnConfig // a copy
	conn.RuntimeParams["application_name"] = busApplicationName
	return &Bus{pool: s.pool, conn: conn, log: log.With("component", "bus")}
}

// Send notifies every listening replica. A signal without a kind is
// EINVALID; one whose JSON exceeds what NOTIFY carries is ETOOLARGE. Other
// errors are the database failing.
func (b *Bus) Send(ctx context.Context, s ota.Signal) error {
	if s.Kind == "" {
		return ota.Errorf(ota.EINVALID, "signal has no kind")
	}
	payload, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode %s signal: %w", s.Kind, err)
	}
	if len(payload) > maxSignalPayload {
		return ota.Errorf(ota.ETOOLARGE, "%s signal is %d bytes, more than the %d a notification carries", s.Kind, len(payload), maxSignalPayload)
	}
	if _, err := b.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, busChannel, string(payload)); err != nil {
		return fmt.Errorf("send %s signal: %w", s.Kind, err)
	}
	return nil
}

// Listen holds a connection of its own that listens on the channel, and
// calls handle for each signal until ctx ends; then it returns nil. A lost
// connection is logged and dialed again with backoff; once it listens
// again, handle gets Signal{Kind: ota.SignalWake}, since signals sent in
// between are gone. Malformed payloads are skipped and logged, at most
// once a minute.
func (b *Bus) Listen(ctx context.Context, handle func(ota.Signal)) error {
	h := &busListener{bus: b, handle: handle, retry: busRetryMin}
	l := &pgxlisten.Listener{
		Connect:  h.connect,
		LogError: h.logError,
		// connect waits, with backoff, instead of pgxlisten's fixed delay.
		ReconnectDelay: -1,
	}
	l.Handle(busChannel, h)
	err := l.Listen(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("listen for signals: %w", err)
}

// busListener is the state of one Listen call. pgxlisten calls all of its
// methods on Listen's goroutine.
type busListener struct {
	bus    *Bus
	handle func(ota.Signal)

	dials     int           // connections attempted
	retry     time.Duration // wait before the next attempt
	listening time.Time     // when the current connection began listening; zero when it has not
}

var _ pgxlisten.BacklogHandler = (*busListener)(nil)

func (h *busListener) connect(ctx context.Context) (*pgx.Conn, error) {
	if h.dials > 0 {
		if !h.listening.IsZero() && time.Since(h.listening) >= busRetryReset {
			h.retry = busRetryMin
		}
		wait := h.retry/2 + rand.N(h.retry/2+1)
		h.retry = min(2*h.retry, busRetryMax)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	h.dials++
	h.listening = time.Time{}
	return pgx.ConnectConfig(ctx, h.bus.conn)
}

// HandleBacklog runs each time a connection starts listening. Signals sent
// before it are lost; on any connection but the first attempt's, a
// synthetic wake makes the listener re-check its work.
func (h *busListener) HandleBacklog(ctx context.Context, channel string, conn *pgx.Conn) error {
	h.listening = time.Now()
	if h.dials > 1 {
		h.bus.log.Info("listening for signals again", "pid", conn.PgConn().PID())
		h.handle(ota.Signal{Kind: ota.SignalWake})
	}
	return nil
}

func (h *busListener) HandleNotification(ctx context.Context, n *pgconn.Notification, conn *pgx.Conn) error {
	var s ota.Signal
	if err := json.Unmarshal([]byte(n.Payload), &s); err != nil || s.Kind == "" {
		h.bus.ignore(n)
		return nil
	}
	h.handle(s)
	return nil
}

func (h *busListener) logError(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return // Listen is ending; the connection closing is no news
	}
	h.bus.log.Warn("signal listener connection failed; it is dialed again", "err", err)
}

// ignore counts a malformed payload, and logs the count when the last such
// log is busLogEvery old.
func (b *Bus) ignore(n *pgconn.Notification) {
	b.mu.Lock()
	b.ignored++
	if time.Since(b.ignoredLog) < busLogEvery {
		b.mu.Unlock()
		return
	}
	count := b.ignored
	b.ignored, b.ignoredLog = 0, time.Now()
	b.mu.Unlock()
	sample := n.Payload
	if len(sample) > 64 {
		sample = sample[:64]
	}
	b.log.Warn("malformed signals ignored", "count", count, "sender_pid", n.PID, "payload", sample)
}
