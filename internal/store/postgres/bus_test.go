package postgres_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/postgres"
	"github.com/otad/otad/internal/store/testdb"
)

// busWait bounds every wait for the database or a signal.
const busWait = 30 * time.Second

// TestBusReplicas runs two replicas on one database, one of them with two
// listeners: every listener gets every signal, from either sender, once,
// with every field intact.
func TestBusReplicas(t *testing.T) {
	url := testdb.PostgresURL(t)
	a := openStore(t, url).Bus(testLogger(t, nil))
	b := openStore(t, url).Bus(testLogger(t, nil))
	inboxes := map[string]<-chan ota.Signal{
		"replica a, listener 1": listen(t, a),
		"replica a, listener 2": listen(t, a),
		"replica b":             listen(t, b),
	}
	waitListening(t, connect(t, url), len(inboxes))

	full := ota.Signal{Kind: ota.SignalDisconnect, ProductID: "p-1", DeviceName: "dev \"ß\" 1", JobID: "j-1"}
	fromB := ota.Signal{Kind: ota.SignalWake, JobID: "j-2"}
	// NOTIFY delivers in commit order, so once the last signal is in, an
	// inbox holding anything else got a duplicate or a stray.
	last := ota.Signal{Kind: ota.SignalWake}
	send(t, a, full)
	send(t, b, fromB)
	send(t, a, last)
	for name, in := range inboxes {
		for i, want := range []ota.Signal{full, fromB, last} {
			if got := next(t, in); got != want {
				t.Fatalf("%s: signal %d = %+v, want %+v", name, i, got, want)
			}
		}
		select {
		case s := <-in:
			t.Fatalf("%s: extra signal %+v", name, s)
		default:
		}
	}
}

// TestBusReconnect kills the listen connection: Listen dials again, hands
// over the synthetic wake, and gets the signals sent after.
func TestBusReconnect(t *testing.T) {
	url := testdb.PostgresURL(t)
	var logs lockedBuffer
	bus := openStore(t, url).Bus(testLogger(t, &logs))
	in := listen(t, bus)
	admin := connect(t, url)
	old := waitListening(t, admin, 1)[0]

	var killed bool
	if err := admin.QueryRow(t.Context(), `SELECT pg_terminate_backend($1)`, old).Scan(&killed); err != nil || !killed {
		t.Fatalf("terminate listener backend %d: %v, %v", old, killed, err)
	}
	if got := next(t, in); got != (ota.Signal{Kind: ota.SignalWake}) {
		t.Fatalf("first signal after the connection died = %+v, want the synthetic wake", got)
	}
	if pid := waitListening(t, admin, 1)[0]; pid == old {
		t.Fatalf("listener still on backend %d", pid)
	}
	after := ota.Signal{Kind: ota.SignalDisconnect, ProductID: "p-1", DeviceName: "d-1"}
	send(t, bus, after)
	if got := next(t, in); got != after {
		t.Fatalf("signal after reconnect = %+v, want %+v", got, after)
	}
	if !strings.Contains(logs.String(), "signal listener connection failed") {
		t.Errorf("lost connection not logged; log:\n%s", logs.String())
	}
}

// TestBusForeignPayloads notifies the channel with what no otad sends:
// payloads that are not signals are skipped and logged once, and a kind
// from a newer replica comes through.
func TestBusForeignPayloads(t *testing.T) {
	url := testdb.PostgresURL(t)
	var logs lockedBuffer
	bus := openStore(t, url).Bus(testLogger(t, &logs))
	in := listen(t, bus)
	admin := connect(t, url)
	waitListening(t, admin, 1)

	for _, payload := range []string{`not json`, `{"product_id":"p-1"}`, `{"kind":"future","extra":1}`} {
		if _, err := admin.Exec(t.Context(), `SELECT pg_notify('otad', $1)`, payload); err != nil {
			t.Fatal(err)
		}
	}
	want := ota.Signal{Kind: ota.SignalWake}
	send(t, bus, want)
	if got := next(t, in); got != (ota.Signal{Kind: "future"}) {
		t.Fatalf("first signal = %+v, want the unknown kind", got)
	}
	if got := next(t, in); got != want {
		t.Fatalf("second signal = %+v, want %+v", got, want)
	}
	if n := strings.Count(logs.String(), "malformed signals ignored"); n != 1 {
		t.Errorf("malformed payloads logged %d times, want once; log:\n%s", n, logs.String())
	}
}

// TestBusSendLimits checks Send against what PostgreSQL accepts: the
// largest payload NOTIFY carries goes through, one byte more is refused
// before it reaches the database.
func TestBusSendLimits(t *testing.T) {
	url := testdb.PostgresURL(t)
	bus := openStore(t, url).Bus(testLogger(t, nil))
	in := listen(t, bus)
	waitListening(t, connect(t, url), 1)

	withName := func(n int) ota.Signal {
		return ota.Signal{Kind: ota.SignalDisconnect, ProductID: "p-1", DeviceName: strings.Repeat("d", n)}
	}
	b, _ := json.Marshal(withName(0))
	overhead := len(b) + len(`,"device_name":""`)
	largest := withName(7999 - overhead)
	if b, _ := json.Marshal(largest); len(b) != 7999 {
		t.Fatalf("largest signal is %d bytes, want 7999", len(b))
	}

	cases := []struct {
		name string
		s    ota.Signal
		code string
	}{
		{"no kind", ota.Signal{ProductID: "p-1"}, ota.EINVALID},
		{"one byte too many", withName(8000 - overhead), ota.ETOOLARGE},
		{"largest", largest, ""},
	}
	for _, c := range cases {
		if err := bus.Send(t.Context(), c.s); ota.ErrorCode(err) != c.code {
			t.Fatalf("%s: Send = %v, want code %q", c.name, err, c.code)
		}
	}
	// Only the accepted signal was sent.
	if got := next(t, in); got != largest {
		t.Fatalf("received %d-byte device name, want the largest signal", len(got.DeviceName))
	}
}

func openStore(t *testing.T, url string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// connect opens a plain connection, to look at and poke the server.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// listen runs bus.Listen until the test ends and returns what it receives.
func listen(t *testing.T, bus ota.Bus) <-chan ota.Signal {
	t.Helper()
	in := make(chan ota.Signal, 100)
	done := make(chan error, 1)
	go func() { done <- bus.Listen(t.Context(), func(s ota.Signal) { in <- s }) }()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Errorf("Listen = %v, want nil when its context ends", err)
		}
	})
	return in
}

func send(t *testing.T, bus ota.Bus, s ota.Signal) {
	t.Helper()
	if err := bus.Send(t.Context(), s); err != nil {
		t.Fatalf("send %+v: %v", s, err)
	}
}

func next(t *testing.T, in <-chan ota.Signal) ota.Signal {
	t.Helper()
	select {
	case s := <-in:
		return s
	case <-time.After(busWait):
		t.Fatalf("no signal within %s", busWait)
		return ota.Signal{}
	}
}

// waitListening waits until n bus connections of this database have run
// LISTEN (committed once the backend is idle again) and returns their PIDs.
func waitListening(t *testing.T, conn *pgx.Conn, n int) []int32 {
	t.Helper()
	deadline := time.Now().Add(busWait)
	for {
		rows, err := conn.Query(t.Context(), `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = 'otad-bus'
			AND state = 'idle' AND query ILIKE 'listen %' ORDER BY pid`)
		if err != nil {
			t.Fatal(err)
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == n {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bus connections listening after %s, want %d", len(pids), busWait, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testLogger logs to w, or to the test log when w is nil.
func testLogger(t *testing.T, w *lockedBuffer) *slog.Logger {
	if w == nil {
		return slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// lockedBuffer is a log destination that goroutines share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
