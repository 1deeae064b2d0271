package broker

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// listener is a mochi listener over a net.Listener the broker opened
// itself (so a ":0" address reports its real port). It closes what mochi
// leaves open: a connection must complete its CONNECT (TLS handshake
// included) within the connect timeout, and connections still waiting for
// one are closed with the listener.
type listener struct {
	id      string
	nl      net.Listener
	tls     *tls.Config
	timeout time.Duration
	log     *slog.Logger
	metrics *metrics
	// ended is called with each connection once mochi is done with it:
	// every hook of the connection has returned.
	ended func(*deviceConn)
	// server is the mochi server the listener is added to, whose clients
	// Close disconnects (see closeClients).
	server *mqtt.Server

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

var _ listeners.Listener = (*listener)(nil)

func newListener(id string, server *mqtt.Server, nl net.Listener, tlsConfig *tls.Config, timeout time.Duration, log *slog.Logger, m *metrics, ended func(*deviceConn)) *listener {
	return &listener{id: id, server: server, nl: nl, tls: tlsConfig, timeout: timeout, log: log, metrics: m, ended: ended, conns: make(map[net.Conn]struct{})}
}

func (l *listener) ID() string              { return l.id }
func (l *listener) Address() string         { return l.nl.Addr().String() }
func (l *listener) Protocol() string        { return "tcp" }
func (l *listener) Init(*slog.Logger) error { return nil }

// Serve accepts connections until the listener closes.
func (l *listener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.nl.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Out of file descriptors and the like: back off briefly
			// rather than spin.
			l.log.Warn("mqtt accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !l.track(conn) {
			conn.Close()
			return
		}
		// mochi sets no deadline until CONNECT has been read, and then
		// replaces this one with the keepalive deadline.
		_ = conn.SetDeadline(time.Now().Add(l.timeout))
		c := &deviceConn{Conn: conn, raw: conn, done: make(chan struct{})}
		if l.tls != nil {
			c.Conn = tls.Server(conn, l.tls)
		}
		go func() {
			defer l.untrack(c.raw)
			err := establish(l.id, c)
			l.ended(c)
			close(c.done)
			if err == nil {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) && !c.connectRead.Load() {
				l.metrics.connectTimeouts.Inc()
				l.log.Info("connection dropped: no CONNECT in time", "remote", c.raw.RemoteAddr().String(), "timeout", l.timeout)
				return
			}
			l.log.Debug("mqtt connection ended", "remote", c.raw.RemoteAddr().String(), "err", err)
		}()
	}
}

// deviceConn is the net.Conn mochi sees for a device; hooks reach the
// device's session through it (mochi's Client.Net.Conn).
type deviceConn struct {
	net.Conn
	raw         net.Conn
	connectRead atomic.Bool             // a CONNECT packet arrived
	sess        atomic.Pointer[session] // set once the device is authenticated

	// client is the mochi client of the connection once it has reached
	// OnSessionEstablish. Only the connection's own goroutine touches it.
	client *mqtt.Client
	// online is set when the device's presence is online because of this
	// connection, or of one it took the session over from.
	online atomic.Bool
	// done is closed, after listener.ended, when mochi is done with the
	// connection: its attachClient has returned, so no hook of it runs any
	// more and it has made its last change to mochi's Clients.
	done chan struct{}
}

func sessionOf(c net.Conn) *session {
	if dc, ok := c.(*deviceConn); ok {
		return dc.sess.Load()
	}
	return nil
}

func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = struct{}{}
	l.wg.Add(1)
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	l.wg.Done()
}

// Close stops accepting, disconnects the clients (closeClients, in place
// of the function mochi passes), and closes the connections that never
// became clients.
func (l *listener) Close(listeners.CloseFn) {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	l.mu.Unlock()
	if already {
		return
	}
	_ = l.nl.Close()
	l.closeClients()
	l.mu.Lock()
	for c := range l.conns {
		// Established clients were closed by closeClients; this reaches
		// connections still before or inside CONNECT.
		_ = c.SetDeadline(time.Now())
	}
	l.mu.Unlock()
}

// closeClients disconnects the listener's clients ("server shutting
// down" to MQTT 5 ones), as mochi's own closeListenerClients would. That
// one cannot be used: it takes the read lock of mochi's client map twice
// (Clients.GetByListener calls Len), so a client leaving meanwhile, whose
// Delete waits for the write lock between the two, deadlocks the server's
// Close and every connection with it (seen in CI, broker tests hung for 14
// minutes). GetAll takes the lock once.
func (l *listener) closeClients() {
	for _, cl := range l.server.Clients.GetAll() {
		if cl.Net.Listener == l.id && !cl.Closed() {
			_ = l.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// wait blocks until every connection's goroutine has returned.
func (l *listener) wait() { l.wg.Wait() }
