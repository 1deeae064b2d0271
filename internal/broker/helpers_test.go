package broker

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	otadengine "github.com/otad/otad/internal/engine"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/storetest"
	"github.com/otad/otad/internal/store/testdb"
)

// deadline is how long tests wait for anything that should happen at once.
const deadline = 30 * time.Second

type env struct {
	t       testing.TB
	store   ota.Store
	broker  *Broker
	reports chan ota.Report
	product *ota.Product
	logs    *logBuffer // everything the broker logged
}

// logBuffer keeps log output for tests to search.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newEnv starts a broker on 127.0.0.1:0 over a fresh store of the given
// engine ("sqlite" or "postgres").
func newEnv(t testing.TB, engine string, mod ...func(*Options)) *env {
	t.Helper()
	store := testdb.Open(t, engine)
	e := &env{t: t, store: store, reports: make(chan ota.Report, 1000)}
	opts := Options{
		Addr:       "127.0.0.1:0",
		Registerer: prometheus.NewRegistry(),
	}
	for _, f := range mod {
		f(&opts)
	}
	e.logs = &logBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, e.logs), &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := New(log, store, opts)
	if err != nil {
		t.Fatal(err)
	}
	// The real engine applies the reports, as in otad; the test sees each
	// report it applied.
	eng, err := otadengine.New(otadengine.Config{Logger: log, Store: store, Notifier: b, URLs: noURLs{}, Node: b.opts.Node})
	if err != nil {
		t.Fatal(err)
	}
	b.SetReports(reportTap{eng, e.reports})
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	e.broker = b
	e.product = storetest.MustProduct(t, store)
	return e
}

// reportTap hands the reports the engine applied to the test.
type reportTap struct {
	eng *otadengine.Engine
	ch  chan ota.Report
}

func (rt reportTap) ApplyReports(ctx context.Context, reports []ota.Report) ([]error, error) {
	refused, err := rt.eng.ApplyReports(ctx, reports)
	if err == nil {
		for i, r := range reports {
			if refused[i] == nil {
				select {
				case rt.ch <- r:
				default:
				}
			}
		}
	}
	return refused, err
}

type noURLs struct{}

func (noURLs) URL(*ota.Firmware, time.Time) string { return "http://fw.test/x" }

// testWriter sends log lines to t.Log, dropping them once the test is over.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { recover() }() // logging after the test ended panics
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

type device struct {
	*ota.Device
	clientID string
}

func (e *env) device(name string) *device {
	e.t.Helper()
	d := storetest.MustDevice(e.t, e.store, e.product.ID, name)
	return &device{Device: d, clientID: ota.ClientID(d.ProductID, d.Name)}
}

// creds returns a username and password valid for an hour.
func (d *device) creds(t testing.TB) (user, pass string) {
	return d.credsWith(t, strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10), ota.SignHMACSHA256)
}

func (d *device) credsWith(t testing.TB, expiry, alg string) (user, pass string) {
	t.Helper()
	user = d.clientID + ";21010406;a1b2c;" + expiry
	pass, err := ota.SignDeviceUsername(d.Secret, user, alg)
	if err != nil {
		t.Fatal(err)
	}
	return user, pass
}

func (d *device) reportTopic() string { return ota.ReportTopic(d.ProductID, d.Name) }
func (d *device) updateTopic() string { return ota.UpdateTopic(d.ProductID, d.Name) }

// v3 is a paho MQTT 3.1 / 3.1.1 client.
type v3 struct {
	paho.Client
	msgs chan paho.Message
	lost chan error
}

// connect3 connects with MQTT 3.1 (version 3) or 3.1.1 (version 4) and
// returns the client and the CONNACK return code.
func (e *env) connect3(version uint, clientID, user, pass string, mod ...func(*paho.ClientOptions)) (*v3, byte, error) {
	c := &v3{msgs: make(chan paho.Message, 100), lost: make(chan error, 1)}
	o := paho.NewClientOptions().
		AddBroker("tcp://" + e.broker.Addr()).
		SetClientID(clientID).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(version).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(240 * time.Second).
		SetConnectTimeout(deadline).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.msgs <- m }).
		SetConnectionLostHandler(func(_ paho.Client, err error) { c.lost <- err })
	for _, f := range mod {
		f(o)
	}
	c.Client = paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(deadline) {
		e.t.Fatal("CONNECT timed out")
	}
	ct := tok.(*paho.ConnectToken)
	if tok.Error() != nil {
		return nil, ct.ReturnCode(), tok.Error()
	}
	e.t.Cleanup(func() { c.Disconnect(0) })
	return c, ct.ReturnCode(), nil
}

// mustConnect3 connects a device with MQTT 3.1.1 and subscribes to its
// update topic, like the device SDKs do.
func (e *env) mustConnect3(d *device) *v3 {
	e.t.Helper()
	user, pass := d.creds(e.t)
	c, code, err := e.connect3(4, d.clientID, user, pass)
	if err != nil {
		e.t.Fatalf("connect %s: code %d: %v", d.Name, code, err)
	}
	c.mustSubscribe(e.t, d.updateTopic(), 1)
	return c
}

func (c *v3) mustSubscribe(t testing.TB, topic string, qos byte) {
	t.Helper()
	if code := c.subscribe(t, topic, qos); code != qos {
		t.Fatalf("subscribe %s: SUBACK %#x", topic, code)
	}
}

// subscribe returns the SUBACK return code.
func (c *v3) subscribe(t testing.TB, topic string, qos byte) byte {
	t.Helper()
	tok := c.Subscribe(topic, qos, nil)
	if !tok.WaitTimeout(deadline) {
		t.Fatalf("subscribe %s timed out", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	// paho keys the result by the filter without any $share/{group}/.
	for _, code := range tok.(*paho.SubscribeToken).Result() {
		return code
	}
	t.Fatalf("subscribe %s: no result", topic)
	return 0
}

// publish1 publishes at QoS 1 and waits for the PUBACK.
func (c *v3) publish1(t testing.TB, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(deadline) {
		t.Fatalf("publish %s: no PUBACK", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// next waits for the next message the client receives.
func (c *v3) next(t testing.TB) paho.Message {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(deadline):
		t.Fatal("no message received")
	}
	return nil
}

// waitLost waits for the broker to close the connection.
func (c *v3) waitLost(t testing.TB) {
	t.Helper()
	select {
	case <-c.lost:
	case <-time.After(deadline):
		t.Fatal("connection not closed by the broker")
	}
}

// v5 is a paho MQTT 5 client.
type v5 struct {
	*paho5.Client
	conn         net.Conn
	msgs         chan *paho5.Publish
	disconnected chan *paho5.Disconnect
}

func (e *env) connect5(clientID, user, pass string, mod ...func(*paho5.Connect)) (*v5, *paho5.Connack, error) {
	conn, err := net.DialTimeout("tcp", e.broker.Addr(), deadline)
	if err != nil {
		e.t.Fatal(err)
	}
	c := &v5{conn: conn, msgs: make(chan *paho5.Publish, 100), disconnected: make(chan *paho5.Disconnect, 1)}
	c.Client = paho5.NewClient(paho5.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(pr paho5.PublishReceived) (bool, error) {
			c.msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho5.Disconnect) { c.disconnected <- d },
	})
	cp := &paho5.Connect{
		ClientID: clientID, CleanStart: true, KeepAlive: 240,
		Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true,
	}
	for _, f := range mod {
		f(cp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		return nil, ca, err
	}
	e.t.Cleanup(func() { c.Disconnect(&paho5.Disconnect{}) })
	return c, ca, nil
}

func (e *env) mustConnect5(d *device) *v5 {
	e.t.Helper()
	user, pass := d.creds(e.t)
	c, ca, err := e.connect5(d.clientID, user, pass)
	if err != nil {
		e.t.Fatalf("connect %s: %+v: %v", d.Name, ca, err)
	}
	if reasons := c.subscribe(e.t, d.updateTopic(), 1); reasons[0] != 1 {
		e.t.Fatalf("subscribe own update topic: %#x", reasons)
	}
	return c
}

func (c *v5) subscribe(t testing.TB, filter string, qos byte) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if sa == nil || len(sa.Reasons) != 1 {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa.Reasons
}

// publish returns the PUBACK reason code (QoS 1) or 0 (QoS 0).
func (c *v5) publish(t testing.TB, topic string, qos byte, payload []byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	pr, err := c.Publish(ctx, &paho5.Publish{Topic: topic, QoS: qos, Payload: payload})
	if qos == 0 {
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		return 0
	}
	if pr == nil {
		t.Fatalf("publish %s: no PUBACK: %v", topic, err)
	}
	return pr.ReasonCode
}

func (c *v5) next(t testing.TB) *paho5.Publish {
	t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(deadline):
		t.Fatal("no message received")
	}
	return nil
}

// nextReport waits for the engine to apply a report.
func (e *env) nextReport() ota.Report {
	e.t.Helper()
	select {
	case r := <-e.reports:
		return r
	case <-time.After(deadline):
		e.t.Fatal("no report recorded")
	}
	return ota.Report{}
}

// events returns a device's history, oldest first.
func (e *env) events(d *device) []*ota.DeviceEvent {
	e.t.Helper()
	evs, err := e.store.DeviceEventList(context.Background(), ota.DeviceEventListParams{ProductID: d.ProductID, DeviceName: d.Name, Limit: 1000})
	if err != nil {
		e.t.Fatal(err)
	}
	for i, j := 0, len(evs)-1; i < j; i, j = i+1, j-1 {
		evs[i], evs[j] = evs[j], evs[i]
	}
	return evs
}

// reportEvents returns only the report entries of a device's history.
func (e *env) reportEvents(d *device) []*ota.DeviceEvent {
	var out []*ota.DeviceEvent
	for _, ev := range e.events(d) {
		if ev.Type == ota.EventReportVersion || ev.Type == ota.EventReportProgress {
			out = append(out, ev)
		}
	}
	return out
}

func (e *env) get(d *device) *ota.Device {
	e.t.Helper()
	got, err := e.store.DeviceGet(context.Background(), d.ProductID, d.Name)
	if err != nil {
		e.t.Fatal(err)
	}
	return got
}

// eventually waits, up to the test deadline, for cond to hold. It is for
// effects the broker applies in the background (presence).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// counter reads the value of a counter or gauge.
func counter(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		panic(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// forEachEngine runs f against every store engine; Postgres skips (or
// fails, when services are required) without OTAD_TEST_POSTGRES_URL.
func forEachEngine(t *testing.T, f func(t *testing.T, engine string)) {
	for _, engine := range testdb.Engines {
		t.Run(engine, func(t *testing.T) { f(t, engine) })
	}
}

// mosquitto returns the path of a mosquitto client program, skipping the
// test when it is missing (failing when services are required).
func mosquitto(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testdb.SkipOrFail(t, name+" not installed (apt-get install mosquitto-clients)")
	}
	return p
}

// corrupt returns a password whose signature differs from pass in its first
// hex digit.
func corrupt(pass string) string {
	if pass[0] == '0' {
		return "1" + pass[1:]
	}
	return "0" + pass[1:]
}
