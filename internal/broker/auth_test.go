package broker

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otad/otad/internal/ota"
)

func TestAuth(t *testing.T) {
	e := newEnv(t, "sqlite")
	ok := e.device("ok")
	disabled := e.device("disabled")
	if err := e.store.DeviceSetDisabled(context.Background(), disabled.ProductID, disabled.Name, true); err != nil {
		t.Fatal(err)
	}
	ghost := &device{Device: &ota.Device{ProductID: e.product.ID, Name: "ghost", Secret: ota.NewDeviceSecret()}, clientID: e.product.ID + "ghost"}
	other := e.device("other")
	hour := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	nowMS := strconv.FormatInt(time.Now().UnixMilli(), 10) // the Python SDK's "expiry"
	pastMS := strconv.FormatInt(time.Now().Add(-time.Minute).UnixMilli(), 10)

	type login struct{ clientID, user, pass string }
	signed := func(d *device, expiry, alg string) login {
		u, p := d.credsWith(t, expiry, alg)
		return login{d.clientID, u, p}
	}
	withClientID := func(l login, id string) login { l.clientID = id; return l }
	withPass := func(l login, p string) login { l.pass = p; return l }
	good := signed(ok, hour, ota.SignHMACSHA256)

	tests := []struct {
		name   string
		login  login
		will   string // will topic, "" for none
		reason string // refusal reason counted, "" = accepted
	}{
		{"hmacsha256", good, "", ""},
		{"hmacsha1", signed(ok, hour, ota.SignHMACSHA1), "", ""},
		{"expiry: the current time in milliseconds, read as seconds", signed(ok, nowMS, ota.SignHMACSHA256), "", ""},
		{"expiry: a past time in milliseconds, read as seconds", signed(ok, pastMS, ota.SignHMACSHA256), "", ""},
		{"expiry never (2^63-1)", signed(ok, "9223372036854775807", ota.SignHMACSHA1), "", ""},
		{"will on own report topic", good, ok.reportTopic(), ""},

		{"bad signature", withPass(good, corrupt(good.pass)), "", ota.AuthBadSignature},
		{"other device's secret", login{ok.clientID, good.user, signed(other, hour, ota.SignHMACSHA256).pass}, "", ota.AuthBadSignature},
		{"unknown algorithm", withPass(good, good.pass[:64]+";hmacmd5"), "", ota.AuthBadPassword},
		{"no password", withPass(good, ""), "", ota.AuthBadPassword},
		{"expired (seconds)", signed(ok, strconv.FormatInt(time.Now().Add(-time.Second).Unix(), 10), ota.SignHMACSHA256), "", ota.AuthExpired},
		{"client id does not match username", withClientID(good, other.clientID), "", ota.AuthClientIDMismatch},
		{"empty client id", withClientID(good, ""), "", ota.AuthClientIDMismatch},
		{"plain username", login{ok.clientID, "admin", "admin"}, "", ota.AuthBadUsername},
		{"unknown device", signed(ghost, hour, ota.SignHMACSHA256), "", ota.AuthUnknownDevice},
		{"disabled device", signed(disabled, hour, ota.SignHMACSHA256), "", ota.AuthDisabled},
		{"will on another device's report topic", good, other.reportTopic(), "will_topic"},
		{"will on own update topic", good, ok.updateTopic(), "will_topic"},
		{"will on arbitrary topic", good, "devices/all", "will_topic"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Run("mqtt3.1.1", func(t *testing.T) {
				before := counter(e.broker.metrics.refused.WithLabelValues(tt.reason))
				c, code, err := e.connect3(4, tt.login.clientID, tt.login.user, tt.login.pass, func(o *paho.ClientOptions) {
					if tt.will != "" {
						o.SetWill(tt.will, `{"type":"report_version","report":{"version":"0.0.1"}}`, 1, false)
					}
				})
				if tt.reason == "" {
					if err != nil {
						t.Fatalf("refused: code %d: %v", code, err)
					}
					c.Disconnect(0)
					return
				}
				if err == nil || code != 5 { // 5: not authorized
					t.Fatalf("got code %d, err %v; want refusal with 5 (not authorized)", code, err)
				}
				if got := counter(e.broker.metrics.refused.WithLabelValues(tt.reason)); got != before+1 {
					t.Fatalf("refused{reason=%s} = %v, want %v", tt.reason, got, before+1)
				}
			})
			t.Run("mqtt5", func(t *testing.T) {
				c, ca, err := e.connect5(tt.login.clientID, tt.login.user, tt.login.pass, func(cp *paho5.Connect) {
					if tt.will != "" {
						cp.WillMessage = &paho5.WillMessage{Topic: tt.will, QoS: 1, Payload: []byte(`{}`)}
					}
				})
				if tt.reason == "" {
					if err != nil {
						t.Fatalf("refused: %+v: %v", ca, err)
					}
					c.Disconnect(&paho5.Disconnect{})
					return
				}
				want := byte(0x87)
				if tt.login.pass == "" {
					want = 0x82 // paho sends an empty password, which mochi refuses as a protocol error
				}
				if err == nil || ca == nil || ca.ReasonCode != want {
					t.Fatalf("got connack %+v, err %v; want %#x", ca, err, want)
				}
			})
		})
	}
}

func TestAuthMQTT31(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("legacy")
	user, pass := d.creds(t)
	c, code, err := e.connect3(3, d.clientID, user, pass) // MQIsdp
	if err != nil {
		t.Fatalf("MQTT 3.1 refused: %d %v", code, err)
	}
	c.mustSubscribe(t, d.updateTopic(), 1)
	c.publish1(t, d.reportTopic(), `{"type":"report_version","report":{"version":"3.1.0"}}`)
	if got := e.get(d).Version; got != "3.1.0" {
		t.Fatalf("version = %q", got)
	}
	if m := c.next(t); string(m.Payload()) != `{"type":"report_version_rsp","version":"3.1.0","result_code":0,"result_msg":"success"}` {
		t.Fatalf("rsp = %s", m.Payload())
	}
	if _, code, err := e.connect3(3, d.clientID, user, pass[:10]+";hmacsha256"); err == nil || code != 5 {
		t.Fatalf("MQTT 3.1 bad password: code %d err %v", code, err)
	}
}

// A second connection with the same client ID takes the session over only
// with valid credentials.
func TestTakeover(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("dev")
	first := e.mustConnect3(d)
	user, pass := d.creds(t)

	if _, code, err := e.connect3(4, d.clientID, user, corrupt(pass)); err == nil || code != 5 {
		t.Fatalf("takeover with a bad signature: code %d err %v", code, err)
	}
	if _, code, err := e.connect3(4, d.clientID, "x", "y"); err == nil || code != 5 {
		t.Fatalf("takeover with garbage: code %d err %v", code, err)
	}
	// The first connection is untouched and works.
	first.publish1(t, d.reportTopic(), `{"type":"report_version","report":{"version":"1.0.0"}}`)
	first.next(t)
	select {
	case err := <-first.lost:
		t.Fatalf("first connection lost: %v", err)
	default:
	}

	second, code, err := e.connect3(4, d.clientID, user, pass)
	if err != nil {
		t.Fatalf("valid takeover refused: %d %v", code, err)
	}
	first.waitLost(t)
	second.mustSubscribe(t, d.updateTopic(), 1)
	second.publish1(t, d.reportTopic(), `{"type":"report_version","report":{"version":"1.0.1"}}`)
	if m := second.next(t); string(m.Payload()) != `{"type":"report_version_rsp","version":"1.0.1","result_code":0,"result_msg":"success"}` {
		t.Fatalf("rsp = %s", m.Payload())
	}
	// The old connection's end does not mark the device offline.
	eventually(t, "presence events written", func() bool {
		n := 0
		for _, ev := range e.events(d) {
			if ev.Type == ota.EventConnected {
				n++
			}
		}
		return n == 2
	})
	if !e.get(d).Online {
		t.Fatal("device offline after a takeover")
	}
	for _, ev := range e.events(d) {
		if ev.Type == ota.EventDisconnected {
			t.Fatalf("disconnect recorded for a taken-over session: %+v", ev)
		}
	}
}

func TestConnectTimeout(t *testing.T) {
	e := newEnv(t, "sqlite", func(o *Options) { o.ConnectTimeout = 300 * time.Millisecond })
	for _, send := range []string{"", "\x10"} { // nothing; a CONNECT that never completes
		conn, err := net.Dial("tcp", e.broker.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if send != "" {
			conn.Write([]byte(send))
		}
		conn.SetReadDeadline(time.Now().Add(deadline))
		start := time.Now()
		n, err := conn.Read(make([]byte, 1))
		if n != 0 || err == nil || isTimeout(err) {
			t.Fatalf("read = %d, %v; want the broker to close the connection", n, err)
		}
		if time.Since(start) > deadline/2 {
			t.Fatalf("closed only after %v", time.Since(start))
		}
		conn.Close()
	}
	eventually(t, "timeouts counted", func() bool { return counter(e.broker.metrics.connectTimeouts) == 2 })
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestPresence(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		e := newEnv(t, engine)
		d := e.device("p")
		c := e.mustConnect3(d)
		eventually(t, "device online", func() bool { return e.get(d).Online })
		c.Disconnect(100)
		eventually(t, "device offline", func() bool { return !e.get(d).Online })
		var types []string
		for _, ev := range e.events(d) {
			types = append(types, ev.Type)
		}
		if len(types) != 2 || types[0] != ota.EventConnected || types[1] != ota.EventDisconnected {
			t.Fatalf("history = %v", types)
		}
		if e.get(d).LastSeenAt == nil {
			t.Fatal("last seen not set")
		}
	})
}

// Disconnect (device disabled or deleted) closes the device's connection;
// MQTT 5 devices are told why.
func TestNotifierDisconnect(t *testing.T) {
	e := newEnv(t, "sqlite")
	d3, d5 := e.device("three"), e.device("five")
	c3, c5 := e.mustConnect3(d3), e.mustConnect5(d5)
	e.broker.Disconnect(d3.ProductID, d3.Name)
	e.broker.Disconnect(d5.ProductID, d5.Name)
	c3.waitLost(t)
	select {
	case dis := <-c5.disconnected:
		if dis.ReasonCode != 0x87 {
			t.Fatalf("disconnect reason %#x", dis.ReasonCode)
		}
	case <-time.After(deadline):
		t.Fatal("no DISCONNECT for the MQTT 5 device")
	}
	// Disabled in the store, it cannot come back.
	if err := e.store.DeviceSetDisabled(context.Background(), d3.ProductID, d3.Name, true); err != nil {
		t.Fatal(err)
	}
	user, pass := d3.creds(t)
	if _, code, err := e.connect3(4, d3.clientID, user, pass); err == nil || code != 5 {
		t.Fatalf("disabled device reconnected: %d %v", code, err)
	}
	// Disconnecting a device without a connection is harmless.
	e.broker.Disconnect(d3.ProductID, "nobody")
}

// gatedStore holds DeviceGet until the test lets it go, to interleave a
// Disconnect with a connection's authentication.
type gatedStore struct {
	ota.Store
	entered chan struct{}
	release chan struct{}
}

func (g *gatedStore) DeviceGet(ctx context.Context, pid, name string) (*ota.Device, error) {
	g.entered <- struct{}{}
	<-g.release
	return g.Store.DeviceGet(ctx, pid, name)
}

// A device disabled while its connection is being authenticated (the
// lookup saw it enabled) is refused.
func TestDisconnectDuringAuthentication(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("racer")
	g := &gatedStore{Store: e.store, entered: make(chan struct{}), release: make(chan struct{})}
	e.broker.store = g

	user, pass := d.creds(t)
	type result struct {
		c    *v3
		code byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, code, err := e.connect3(4, d.clientID, user, pass)
		done <- result{c, code, err}
	}()
	select {
	case <-g.entered:
	case <-time.After(deadline):
		t.Fatal("authentication did not reach the store")
	}
	e.broker.Disconnect(d.ProductID, d.Name) // the API disabled the device
	close(g.release)
	r := <-done
	if r.err == nil {
		r.c.waitLost(t)
	} else if r.code != 5 && r.code != 0 {
		t.Fatalf("connect: code %d, %v", r.code, r.err)
	}
	eventually(t, "revocation counted", func() bool {
		return counter(e.broker.metrics.refused.WithLabelValues("revoked")) == 1
	})
	// A later connection, after the revocation, is not affected by it.
	e.broker.store = g.Store
	c := e.mustConnect3(d)
	c.publish1(t, d.reportTopic(), `{"type":"report_version","report":{"version":"1.0"}}`)
}

// The Python device SDK signs in with MQTT 3.1, keepalive 60, and the
// current time in milliseconds as the expiry: it must be accepted, as the
// cloud accepts it. A refusal for an expired login names its device in the
// log.
func TestPythonSDKSignIn(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		e := newEnv(t, engine)
		d := e.device("py-1")
		user, pass := d.credsWith(t, strconv.FormatInt(time.Now().UnixMilli(), 10), ota.SignHMACSHA256)
		keepalive60 := func(o *paho.ClientOptions) { o.SetKeepAlive(60 * time.Second) }
		c, code, err := e.connect3(3, d.clientID, user, pass, keepalive60)
		if err != nil {
			t.Fatalf("MQTT 3.1 sign-in with a millisecond expiry refused: code %d: %v", code, err)
		}
		c.Disconnect(0)

		user, pass = d.credsWith(t, strconv.FormatInt(time.Now().Add(-time.Minute).Unix(), 10), ota.SignHMACSHA256)
		if _, _, err := e.connect3(3, d.clientID, user, pass, keepalive60); err == nil {
			t.Fatal("an expired sign-in was accepted")
		}
		want := "reason=expired product_id=" + d.ProductID + " device=py-1"
		if !strings.Contains(e.logs.String(), want) {
			t.Fatalf("no refusal log line with %q in:\n%s", want, e.logs.String())
		}
	})
}

// An MQTT 5 CONNECT naming an authentication method (enhanced
// authentication, which otad does not implement) is refused with 0x8C,
// even with a valid signed password.
func TestMQTT5AuthMethodRefused(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("auth5")
	user, pass := d.creds(t)
	_, ca, err := e.connect5(d.clientID, user, pass, func(c *paho5.Connect) {
		c.Properties = &paho5.ConnectProperties{AuthMethod: "SCRAM-SHA-1", AuthData: []byte("x")}
	})
	if err == nil || ca == nil || ca.ReasonCode != 0x8C {
		t.Fatalf("CONNECT with an authentication method: connack %+v, err %v; want 0x8C", ca, err)
	}
	if !strings.Contains(e.logs.String(), "reason=auth_method product_id="+d.ProductID+" device=auth5") {
		t.Fatalf("refusal not logged with its device:\n%s", e.logs.String())
	}
}
