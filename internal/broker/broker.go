// Package broker embeds the MQTT broker devices connect to (mochi-mqtt v2).
// It authenticates devices by their signed credentials, confines each to
// its own two topics, turns the reports they publish into durable store
// writes, tracks their presence, and delivers otad's messages to them as
// an ota.Notifier.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/otad/otad/internal/loglimit"
	"github.com/otad/otad/internal/ota"
)

// Options configure a Broker. Zero values take the defaults documented on
// each field.
type Options struct {
	// Addr is the plain MQTT listen address (OTAD_MQTT_ADDR), e.g. ":1883";
	// "127.0.0.1:0" picks a free port (see Broker.Addr). Empty disables the
	// plain listener.
	Addr string
	// TLSAddr is the MQTT-over-TLS listen address (OTAD_MQTT_TLS_ADDR), e.g.
	// ":8883". It needs TLSConfig. Empty disables TLS. When TLSConfig has
	// ClientCAs and ClientAuth VerifyClientCertIfGiven (or stricter), a
	// device may authenticate with a certificate from those CAs whose
	// CommonName is its client ID, instead of the signed password.
	TLSAddr   string
	TLSConfig *tls.Config

	// ConnectTimeout drops a connection that has not sent a complete
	// CONNECT (TLS handshake included) in time. Default 5s.
	ConnectTimeout time.Duration
	// MaxPacketSize caps every inbound MQTT packet; a bigger one closes the
	// connection. Default 4096 bytes.
	MaxPacketSize uint32
	// MaxWritesPending is the per-client outbound queue length. The queue is
	// allocated per connection, so it sets the cost of an idle device (8
	// bytes a slot). Default 64, as many as a device may leave
	// unacknowledged (Publish refuses more).
	MaxWritesPending int32
	// MaxClients caps concurrent device connections. Default: no limit.
	MaxClients int64

	// ReportBatch is the most reports written in one transaction. Default 500.
	ReportBatch int
	// ReportWriters is how many report transactions may be in flight at
	// once. One writer makes the biggest batches; on 2 cores it stored about
	// 10% more reports per second than two (bench/mqtt.sh). Default 1.
	ReportWriters int
	// ReportTimeout bounds how long a device's report may wait to be
	// written; past it the report is not acknowledged. Default 15s.
	ReportTimeout time.Duration

	// Reports applies the reports devices publish, in batches, before they
	// are acknowledged (the engine). Required by Start; see also
	// Broker.SetReports.
	Reports ReportApplier

	// Node names this otad replica in the devices' presence
	// (DevicePresenceParams.Node); the engine must claim work for the same
	// name. Default: the host name.
	Node string

	// Secrets opens the devices' stored secrets (see ota.SecretBox); nil
	// means they are stored as they are.
	Secrets *ota.SecretBox

	// Registerer receives the broker's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Now returns the current time; default ota.Now. Tests move it.
	Now func() time.Time
}

func (o *Options) setDefaults() {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = 4096
	}
	if o.MaxWritesPending <= 0 {
		o.MaxWritesPending = 64
	}
	if o.MaxClients <= 0 {
		o.MaxClients = 1<<63 - 1
	}
	if o.ReportBatch <= 0 {
		o.ReportBatch = 500
	}
	if o.ReportWriters <= 0 {
		o.ReportWriters = 1
	}
	if o.ReportTimeout <= 0 {
		o.ReportTimeout = 15 * time.Second
	}
	if o.Now == nil {
		o.Now = ota.Now
	}
	if o.Node == "" {
		o.Node, _ = os.Hostname()
	}
}

// Broker is the embedded MQTT broker. Create it with New, then Start it;
// Close stops it.
type Broker struct {
	opts    Options
	log     *slog.Logger
	store   ota.Store
	server  *mqtt.Server
	metrics *metrics

	rec      *recorder
	presence *presence
	repliers *repliers

	listeners []*listener

	// sessions maps a client ID to the one connection that holds it: the
	// newest to reach OnSessionEstablish, until it ends. Older ones have
	// been closed. A Disconnect closes the holder; a taken-over connection
	// does not mark its device offline.
	mu       sync.Mutex
	sessions map[string]*mqtt.Client
	// revoked remembers Disconnect calls by client ID (with the sequence
	// number they were made at) to refuse a connection whose authentication
	// raced a device being disabled or deleted.
	seq     atomic.Uint64
	revoked map[string]revocation

	ctx     context.Context
	cancel  context.CancelFunc
	started atomic.Bool
	closed  atomic.Bool
}

type revocation struct {
	seq uint64
	at  time.Time
}

var _ ota.Notifier = (*Broker)(nil)

// New builds a broker over store. It opens no sockets until Start.
func New(log *slog.Logger, store ota.Store, opts Options) (*Broker, error) {
	opts.setDefaults()
	if opts.Addr == "" && opts.TLSAddr == "" {
		return nil, errors.New("broker: no listen address")
	}
	if opts.TLSAddr != "" && opts.TLSConfig == nil {
		return nil, errors.New("broker: TLS address without a certificate")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "mqtt")
	b := &Broker{
		opts:     opts,
		log:      log,
		store:    store,
		sessions: make(map[string]*mqtt.Client),
		revoked:  make(map[string]revocation),
	}
	m, err := newMetrics(opts.Registerer, b)
	if err != nil {
		return nil, err
	}
	b.metrics = m

	b.server = newServer(opts, log)
	if err := b.server.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	return b, nil
}

// newServer is mochi as otad runs it: its capabilities, buffers and log.
func newServer(opts Options, log *slog.Logger) *mqtt.Server {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClients = opts.MaxClients
	caps.MaximumPacketSize = opts.MaxPacketSize
	caps.MaximumClientWritesPending = opts.MaxWritesPending
	// Sessions end with their connection: devices use clean sessions, and
	// a persistent one would keep a disconnected device's state forever.
	caps.MaximumSessionExpiryInterval = 0
	caps.ReceiveMaximum = 32
	caps.MaximumInflight = 64
	caps.TopicAliasMaximum = 0
	caps.SharedSubAvailable = 0
	caps.WildcardSubAvailable = 0
	caps.SubIDAvailable = 0
	// Acks must not echo the properties of the packet they answer.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	return mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		ClientNetWriteBufferSize: 2048,
		// Every connection keeps its read buffer while idle; devices send
		// reports of a few hundred bytes, and a bigger packet (up to
		// MaxPacketSize) is read through it.
		ClientNetReadBufferSize: 512,
		InlineClient:            true,
		SysTopicResendInterval:  3600,
		Logger:                  slog.New(newMochiLog(slog.LevelWarn, log.With("lib", "mochi").Handler())),
	})
}

// SetReports sets Options.Reports before Start: the engine that applies
// reports is built with the broker as its notifier.
func (b *Broker) SetReports(r ReportApplier) { b.opts.Reports = r }

// Start opens the listeners and starts the report writers and the presence
// workers. They run until Close; ctx only bounds the start itself.
func (b *Broker) Start(ctx context.Context) error {
	if b.opts.Reports == nil {
		return errors.New("broker: no report applier")
	}
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("broker: already started")
	}
	b.ctx, b.cancel = context.WithCancel(context.WithoutCancel(ctx))
	b.rec = newRecorder(b.opts.Reports, b.log, b.metrics, b.opts.ReportBatch, b.opts.ReportWriters)
	b.rec.start()
	b.presence = newPresence(b.store, b.log, b.metrics)
	b.presence.start()
	b.startRepliers()

	for _, a := range []struct {
		id, addr string
		tls      *tls.Config
	}{{"tcp", b.opts.Addr, nil}, {"tls", b.opts.TLSAddr, b.opts.TLSConfig}} {
		if a.addr == "" {
			continue
		}
		var lc net.ListenConfig
		nl, err := lc.Listen(ctx, "tcp", a.addr)
		if err != nil {
			b.Close()
			return fmt.Errorf("broker: listen %s: %w", a.addr, err)
		}
		l := newListener(a.id, b.server, nl, a.tls, b.opts.ConnectTimeout, b.log, b.metrics, b.connectionEnded)
		if err := b.server.AddListener(l); err != nil {
			nl.Close()
			b.Close()
			return fmt.Errorf("broker: add listener: %w", err)
		}
		b.listeners = append(b.listeners, l)
	}
	if err := b.server.Serve(); err != nil {
		b.Close()
		return fmt.Errorf("broker: serve: %w", err)
	}
	for _, l := range b.listeners {
		b.log.Info("mqtt listening", "addr", l.Address(), "tls", l.tls != nil)
	}
	return nil
}

// Addr returns the bound plain MQTT address, or "" without one.
func (b *Broker) Addr() string { return b.addr("tcp") }

// TLSAddr returns the bound MQTT-over-TLS address, or "" without one.
func (b *Broker) TLSAddr() string { return b.addr("tls") }

func (b *Broker) addr(id string) string {
	for _, l := range b.listeners {
		if l.ID() == id {
			return l.Address()
		}
	}
	return ""
}

// Close disconnects every device, waits for reports in flight to be written
// (each bounded by ReportTimeout), records the devices as offline within a
// few seconds, and stops. It is safe to call more than once.
func (b *Broker) Close() error {
	if !b.started.Load() || !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	// mochi closes each listener, then every client on it, and waits for
	// their goroutines; hooks still running finish their store writes.
	err := b.server.Close()
	for _, l := range b.listeners {
		l.wait()
	}
	b.cancel()
	b.repliers.wg.Wait()
	b.rec.stop()
	b.presence.stop(5 * time.Second)
	return err
}

// Publish sends msg (an ota.UpdateFirmware or ota.ReportVersionRsp) to a
// device's update topic at QoS 1. It fails with EINVALID or ETOOLARGE when
// the message cannot be encoded for devices, and with EUNAVAILABLE when the
// device is not connected and subscribed to its update topic. A nil error
// means the message was queued on the device's connection; a device that
// has left 64 messages unacknowledged gets no more (EUNAVAILABLE).
func (b *Broker) Publish(ctx context.Context, productID, deviceName string, msg any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	topic := ota.UpdateTopic(productID, deviceName)
	payload, err := ota.EncodeDownlink(topic, msg)
	if err != nil {
		return err
	}
	cl, ok := b.server.Clients.Get(ota.ClientID(productID, deviceName))
	if !ok || cl.Closed() {
		return ota.Errorf(ota.EUNAVAILABLE, "device is not connected")
	}
	if _, ok := cl.State.Subscriptions.Get(topic); !ok {
		return ota.Errorf(ota.EUNAVAILABLE, "device is not subscribed to its update topic")
	}
	// mochi would drop the message without a word past this many
	// unacknowledged QoS 1 messages.
	if n := cl.State.Inflight.Len(); n >= int(b.server.Options.Capabilities.MaximumInflight) {
		b.metrics.downlinksDropped.Inc()
		return ota.Errorf(ota.EUNAVAILABLE, "device has not acknowledged its last %d messages", n)
	}
	if err := b.server.Publish(topic, payload, false, 1); err != nil {
		return fmt.Errorf("publish to device: %w", err)
	}
	b.metrics.downlinks.WithLabelValues(downlinkType(msg)).Inc()
	return nil
}

func downlinkType(msg any) string {
	switch msg.(type) {
	case ota.UpdateFirmware, *ota.UpdateFirmware:
		return ota.TypeUpdateFirmware
	case ota.ReportVersionRsp, *ota.ReportVersionRsp:
		return ota.TypeReportVersionRsp
	}
	return "other"
}

// Disconnect closes the device's connection, if it has one, and refuses a
// connection whose authentication is under way: call it after disabling or
// deleting the device. MQTT 5 devices are told "not authorized"; earlier
// versions, which have no server DISCONNECT, see the connection close.
func (b *Broker) Disconnect(productID, deviceName string) {
	id := ota.ClientID(productID, deviceName)
	b.mu.Lock()
	now := time.Now()
	b.revoked[id] = revocation{seq: b.seq.Add(1), at: now}
	if len(b.revoked) > 1024 {
		for k, r := range b.revoked {
			if now.Sub(r.at) > time.Minute {
				delete(b.revoked, k)
			}
		}
	}
	// The holder is the only connection of id that can still be open,
	// CONNACK sent or not: older ones were closed when it took over, and
	// later ones see the revocation in OnConnect or OnSessionEstablish.
	cl := b.sessions[id]
	b.mu.Unlock()
	if cl != nil && !cl.Closed() {
		b.kick(cl, packets.ErrNotAuthorized)
		b.log.Info("device disconnected", "product_id", productID, "device", deviceName, "reason", "revoked")
	}
}

// kickWriteTimeout bounds the DISCONNECT written to a connection being
// closed, which may have stopped reading.
const kickWriteTimeout = time.Second

// kick ends a client's connection, with a DISCONNECT for MQTT 5.
func (b *Broker) kick(cl *mqtt.Client, code packets.Code) {
	if cl.Properties.ProtocolVersion == 5 {
		if cl.Net.Conn != nil {
			_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(kickWriteTimeout))
		}
		_ = b.server.DisconnectClient(cl, code)
		return
	}
	cl.Stop(code)
}

// connectionEnded runs when mochi is done with a connection. If it still
// holds its client ID, the ID is free again and the device offline.
func (b *Broker) connectionEnded(dc *deviceConn) {
	cl, s := dc.client, dc.sess.Load()
	if cl == nil || s == nil {
		return // never reached OnSessionEstablish
	}
	// mochi leaves a client in Clients when its CONNACK could not be sent
	// (it was closed while connecting) and keeps MQTT 3 non-clean sessions;
	// otad keeps no session past its connection. Left there, the entry
	// would be deleted by client ID by mochi's expiry sweep later, maybe
	// with a newer connection's. No newer connection of the ID reaches
	// mochi's Clients before dc.done closes, or, if none took cl over,
	// before cl leaves b.sessions below (OnSessionEstablish).
	if mc, ok := b.server.Clients.Get(cl.ID); ok && mc == cl {
		b.server.UnsubscribeClient(cl)
		cl.ClearInflights()
		b.server.Clients.Delete(cl.ID)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sessions[cl.ID] != cl {
		return // taken over
	}
	delete(b.sessions, cl.ID)
	if dc.online.Load() {
		// Under b.mu, so that it is queued before the online event of the
		// next connection.
		b.log.Debug("device disconnected", "product_id", s.productID, "device", s.deviceName, "err", cl.StopCause())
		b.presence.enqueue(ota.DevicePresenceParams{ProductID: s.productID, DeviceName: s.deviceName, Online: false, Node: b.opts.Node, At: b.opts.Now()})
	}
}

// revokedSince reports whether Disconnect was called for id after sequence
// number seq.
func (b *Broker) revokedSince(id string, seq uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.revokedLocked(id, seq)
}

func (b *Broker) revokedLocked(id string, seq uint64) bool {
	r, ok := b.revoked[id]
	return ok && r.seq > seq
}

// mochiLog is the handler of mochi's own log records. It drops those below
// min (mochi logs every connection at info level, which at thousands of
// devices is noise), never lets a whole packet into a line (mochi logs
// the packet it failed on, payload and all: a refused MQTT 5 report was
// 10 KB of decimal bytes), names the error "err" as otad's own lines do,
// and lets at most mochiLogBurst records of a message through per second
// (loglimit).
type mochiLog struct {
	min slog.Level
	slog.Handler
}

const mochiLogBurst = 10

func newMochiLog(min slog.Level, h slog.Handler) mochiLog {
	return mochiLog{min: min, Handler: loglimit.New(h, mochiLogBurst)}
}

func (h mochiLog) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h mochiLog) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		if pk, ok := a.Value.Any().(packets.Packet); ok {
			a = slog.Group(a.Key, "type", packets.PacketNames[pk.FixedHeader.Type], "topic", clip(pk.TopicName), "payload_bytes", len(pk.Payload))
		}
		if a.Key == "error" {
			a.Key = "err"
		}
		out.AddAttrs(a)
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h mochiLog) WithAttrs(a []slog.Attr) slog.Handler {
	return mochiLog{h.min, h.Handler.WithAttrs(a)}
}

func (h mochiLog) WithGroup(n string) slog.Handler {
	return mochiLog{h.min, h.Handler.WithGroup(n)}
}
