package broker

import (
	"context"
	"errors"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Devices sign in with one client ID from many places at once (a device
// retrying, a cloned identity): one connection survives, and disabling the
// device ends it.
func TestSessionOnePerClientID(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("twin")
	user, pass := d.creds(t)

	const n = 20
	twins := make([]*twin, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range twins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			twins[i] = e.dialTwin(i%2 == 0, d.clientID, user, pass)
		}()
	}
	close(start)
	wg.Wait()

	// Every CONNECT has been answered, so every connection has passed
	// OnSessionEstablish: the holder is the last of them.
	b := e.broker
	b.mu.Lock()
	holder, nsessions := b.sessions[d.clientID], len(b.sessions)
	b.mu.Unlock()
	if holder == nil || nsessions != 1 {
		t.Fatalf("sessions: %d, holder %v", nsessions, holder)
	}
	var survivor *twin
	end := time.After(deadline)
	for i, tw := range twins {
		if tw.local == holder.Net.Remote {
			survivor = tw
			continue
		}
		if tw.err != nil {
			continue // closed before its CONNACK
		}
		select {
		case <-tw.closed():
		case <-end:
			t.Fatalf("connection %d (mqtt5 %v) still open after a newer one took its session over", i, tw.c5 != nil)
		}
		if tw.c5 != nil {
			select {
			case dis := <-tw.c5.disconnected:
				if dis.ReasonCode != 0x8e {
					t.Fatalf("connection %d: DISCONNECT %#x, want 0x8e (session taken over)", i, dis.ReasonCode)
				}
			case <-end:
				t.Fatalf("connection %d: no DISCONNECT", i)
			}
		}
	}
	if survivor == nil || survivor.err != nil {
		t.Fatalf("the session holder %s is not a connected client (%v)", holder.Net.Remote, survivor)
	}
	live := 0
	for _, cl := range b.server.Clients.GetAll() {
		if !cl.Net.Inline && !cl.Closed() {
			live++
		}
	}
	if cl, ok := b.server.Clients.Get(d.clientID); !ok || cl != holder || cl.Closed() || live != 1 {
		t.Fatalf("mochi's clients: %d live, %v for the client ID; want the holder alone", live, cl)
	}

	// The survivor works: it gets its updates and its reports are stored.
	survivor.report(t, e, d, "1.0.0")
	select {
	case <-survivor.closed():
		t.Fatal("survivor closed")
	default:
	}

	// Disabled, the device loses its connection, and what it still sends
	// is not stored.
	if err := e.store.DeviceSetDisabled(context.Background(), d.ProductID, d.Name, true); err != nil {
		t.Fatal(err)
	}
	b.Disconnect(d.ProductID, d.Name)
	acked := survivor.publish(d, `{"type":"report_version","report":{"version":"6.6.6"}}`)
	select {
	case <-survivor.closed():
	case <-time.After(deadline):
		t.Fatal("survivor still connected after Disconnect")
	}
	select {
	case <-holder.Net.Conn.(*deviceConn).done: // its last hook has returned
	case <-time.After(deadline):
		t.Fatal("the broker is not done with the survivor's connection")
	}
	if err := acked(t); err == nil {
		t.Fatal("report after Disconnect acknowledged")
	}
	for _, ev := range e.reportEvents(d) {
		if ev.Version == "6.6.6" {
			t.Fatalf("report after Disconnect stored: %+v", ev)
		}
	}
	if _, ok := b.server.Clients.Get(d.clientID); ok {
		t.Fatal("mochi still has a client for the disabled device")
	}
	b.mu.Lock()
	nsessions = len(b.sessions)
	b.mu.Unlock()
	if nsessions != 0 {
		t.Fatalf("%d sessions after Disconnect", nsessions)
	}
}

// twin is one of several connections signing in with one client ID, over
// MQTT 3.1.1 (c3) or 5 (c5).
type twin struct {
	local string // the client's address: the broker's Client.Net.Remote
	err   error  // CONNECT failed: the broker closed the connection
	c3    *v3
	c5    *v5
	lost3 chan struct{} // closed when the MQTT 3 connection is lost
}

// dialTwin connects without failing the test, so that it can run on any
// goroutine.
func (e *env) dialTwin(mqtt5 bool, clientID, user, pass string) *twin {
	tw := &twin{lost3: make(chan struct{})}
	if mqtt5 {
		conn, err := net.DialTimeout("tcp", e.broker.Addr(), deadline)
		if err != nil {
			tw.err = err
			return tw
		}
		tw.local = conn.LocalAddr().String()
		c := &v5{conn: conn, msgs: make(chan *paho5.Publish, 100), disconnected: make(chan *paho5.Disconnect, 1)}
		c.Client = paho5.NewClient(paho5.ClientConfig{
			Conn: conn,
			OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(pr paho5.PublishReceived) (bool, error) {
				c.msgs <- pr.Packet
				return true, nil
			}},
			OnServerDisconnect: func(d *paho5.Disconnect) { c.disconnected <- d },
		})
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		if _, tw.err = c.Connect(ctx, &paho5.Connect{
			ClientID: clientID, CleanStart: true, KeepAlive: 240,
			Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true,
		}); tw.err != nil {
			conn.Close()
			return tw
		}
		e.t.Cleanup(func() { c.Disconnect(&paho5.Disconnect{}) })
		tw.c5 = c
		return tw
	}
	c := &v3{msgs: make(chan paho.Message, 100), lost: make(chan error, 1)}
	o := paho.NewClientOptions().
		AddBroker("tcp://" + e.broker.Addr()).
		SetClientID(clientID).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetKeepAlive(240 * time.Second).
		SetConnectTimeout(deadline).
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			conn, err := net.DialTimeout("tcp", u.Host, deadline)
			if err == nil {
				tw.local = conn.LocalAddr().String()
			}
			return conn, err
		}).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.msgs <- m }).
		SetConnectionLostHandler(func(paho.Client, error) { close(tw.lost3) })
	c.Client = paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(deadline) {
		tw.err = errors.New("CONNECT timed out")
		return tw
	}
	if tw.err = tok.Error(); tw.err != nil {
		return tw
	}
	e.t.Cleanup(func() { c.Disconnect(0) })
	tw.c3 = c
	return tw
}

// closed is closed when the broker has ended the connection.
func (tw *twin) closed() <-chan struct{} {
	if tw.c5 != nil {
		return tw.c5.Done()
	}
	return tw.lost3
}

// report subscribes to the device's updates, reports a version and checks
// that it is stored and answered.
func (tw *twin) report(t testing.TB, e *env, d *device, version string) {
	t.Helper()
	payload := `{"type":"report_version","report":{"version":"` + version + `"}}`
	rsp := `{"type":"report_version_rsp","version":"` + version + `","result_code":0,"result_msg":"success"}`
	var got string
	if tw.c5 != nil {
		if r := tw.c5.subscribe(t, d.updateTopic(), 1); r[0] != 1 {
			t.Fatalf("subscribe: %#x", r)
		}
		if code := tw.c5.publish(t, d.reportTopic(), 1, []byte(payload)); code != 0 {
			t.Fatalf("PUBACK %#x", code)
		}
		got = string(tw.c5.next(t).Payload)
	} else {
		tw.c3.mustSubscribe(t, d.updateTopic(), 1)
		tw.c3.publish1(t, d.reportTopic(), payload)
		got = string(tw.c3.next(t).Payload())
	}
	if got != rsp {
		t.Fatalf("rsp = %s", got)
	}
	evs := e.reportEvents(d)
	if len(evs) == 0 || evs[len(evs)-1].Version != version {
		t.Fatalf("report %s not stored: %v", version, evs)
	}
}

// publish sends a report at QoS 1 without waiting; the function it returns
// waits for the answer and returns nil if the broker acknowledged it.
func (tw *twin) publish(d *device, payload string) func(testing.TB) error {
	if tw.c5 != nil {
		res := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			pr, err := tw.c5.Publish(ctx, &paho5.Publish{Topic: d.reportTopic(), QoS: 1, Payload: []byte(payload)})
			if err == nil && pr.ReasonCode >= 0x80 {
				err = errors.New("PUBACK error")
			}
			res <- err
		}()
		return func(t testing.TB) error {
			t.Helper()
			select {
			case err := <-res:
				return err
			case <-time.After(deadline):
				t.Fatal("publish did not end")
				return nil
			}
		}
	}
	tok := tw.c3.Publish(d.reportTopic(), 1, false, payload)
	return func(t testing.TB) error {
		t.Helper()
		if !tok.WaitTimeout(deadline) {
			t.Fatal("publish did not end")
		}
		return tok.Error()
	}
}

// Closing the broker disconnects its clients: an MQTT 5 device is told
// "server shutting down" (0x8B), an MQTT 3.1.1 one sees its connection
// close.
func TestCloseDisconnectsClients(t *testing.T) {
	e := newEnv(t, "sqlite")
	c5 := e.mustConnect5(e.device("five"))
	c3 := e.mustConnect3(e.device("three"))
	closed := make(chan error, 1)
	go func() { closed <- e.broker.Close() }()
	select {
	case d := <-c5.disconnected:
		if d.ReasonCode != packets.ErrServerShuttingDown.Code {
			t.Fatalf("MQTT 5 DISCONNECT reason %#x, want %#x", d.ReasonCode, packets.ErrServerShuttingDown.Code)
		}
	case <-time.After(deadline):
		t.Fatal("MQTT 5 client got no DISCONNECT")
	}
	c3.waitLost(t)
	select {
	case <-closed:
	case <-time.After(deadline):
		t.Fatal("Close did not return")
	}
}
