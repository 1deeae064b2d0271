package broker

import (
	"context"
	"strings"
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/otad/otad/internal/ota"
)

// Every filter but the device's own exact update topic is refused.
func TestACLSubscribe(t *testing.T) {
	e := newEnv(t, "sqlite")
	d, other := e.device("me"), e.device("other")
	filters := []string{
		other.updateTopic(),
		other.reportTopic(),
		d.reportTopic(),
		"#",
		"+",
		"$ota/#",
		"$ota/+/" + d.ProductID + "/" + d.Name,
		"$ota/update/" + d.ProductID + "/+",
		"$ota/update/+/" + d.Name,
		"$ota/update/" + d.ProductID + "/#",
		"$SYS/#",
		"$share/g/" + d.updateTopic(),
		d.updateTopic() + "/#",
	}
	c3 := e.mustConnect3(d)
	for _, f := range filters {
		if code := c3.subscribe(t, f, 1); code != 0x80 {
			t.Errorf("MQTT 3.1.1 subscribe %q: SUBACK %#x, want 0x80", f, code)
		}
	}
	c3.Disconnect(0)
	c5 := e.mustConnect5(d)
	denied := len(filters)
	for _, f := range filters {
		if strings.ContainsAny(f, "+#") || strings.HasPrefix(f, "$share/") {
			continue // the broker tells MQTT 5 clients it has no wildcard or shared subscriptions; paho then refuses to send them
		}
		denied++
		if r := c5.subscribe(t, f, 1); len(r) != 1 || r[0] < 0x80 {
			t.Errorf("MQTT 5 subscribe %q: SUBACK %#x, want a refusal", f, r)
		}
	}
	if n := counter(e.broker.metrics.aclDenied.WithLabelValues("subscribe")); n != float64(denied) {
		t.Fatalf("subscribe denials counted: %v", n)
	}
}

// A device publishes only to its own report topic: elsewhere a QoS 0
// message is dropped, a QoS 1 message closes an MQTT 3.1.1 connection and
// gets PUBACK 0x87 under MQTT 5. Nothing reaches other devices or the store.
func TestACLPublish(t *testing.T) {
	e := newEnv(t, "sqlite")
	attacker, victim := e.device("attacker"), e.device("victim")
	victimConn := e.mustConnect3(victim)
	forged := `{"type":"update_firmware","version":"6.6.6","url":"http://evil.example/x","md5sum":"00000000000000000000000000000000","file_size":1}`
	report := `{"type":"report_version","report":{"version":"6.6.6"}}`
	topics := []string{victim.updateTopic(), victim.reportTopic(), attacker.updateTopic(), "$ota/report/" + attacker.ProductID, "devices/x", "$SYS/x"}

	// MQTT 5: each refused with 0x87, connection kept.
	c5 := e.mustConnect5(attacker)
	for _, topic := range topics {
		if rc := c5.publish(t, topic, 1, []byte(forged)); rc != 0x87 {
			t.Errorf("MQTT 5 publish to %q: PUBACK %#x, want 0x87", topic, rc)
		}
		c5.publish(t, topic, 0, []byte(report))
	}
	// A QoS 0 message has no answer: wait until the last one is refused,
	// or the DISCONNECT could overtake it.
	var denials float64
	eventually(t, "MQTT 5 publish denials counted", func() bool {
		denials = counter(e.broker.metrics.aclDenied.WithLabelValues("publish"))
		return denials >= float64(2*len(topics))
	})
	if denials != float64(2*len(topics)) {
		t.Fatalf("MQTT 5 publish denials counted: %v, want %d", denials, 2*len(topics))
	}
	c5.Disconnect(&paho5.Disconnect{})

	// MQTT 3.1.1: QoS 0 dropped; QoS 1 closes the connection.
	for _, topic := range topics {
		c := e.mustConnect3(attacker)
		c.Publish(topic, 0, false, forged).WaitTimeout(deadline)
		c.Publish(topic, 0, true, report).WaitTimeout(deadline)
		c.Publish(topic, 1, false, report)
		c.waitLost(t)
	}

	// The victim got nothing; nothing was stored for anyone.
	victimConn.publish1(t, victim.reportTopic(), `{"type":"report_version","report":{"version":"1.0.0"}}`)
	if m := victimConn.next(t); string(m.Payload()) != `{"type":"report_version_rsp","version":"1.0.0","result_code":0,"result_msg":"success"}` {
		t.Fatalf("victim received %s on %s", m.Payload(), m.Topic())
	}
	select {
	case m := <-victimConn.msgs:
		t.Fatalf("victim received %s on %s", m.Payload(), m.Topic())
	default:
	}
	if evs := e.reportEvents(attacker); len(evs) != 0 {
		t.Fatalf("attacker reports stored: %+v", evs)
	}
	if evs := e.reportEvents(victim); len(evs) != 1 || evs[0].Version != "1.0.0" {
		t.Fatalf("victim reports: %+v", evs)
	}
	if n := counter(e.broker.metrics.aclDenied.WithLabelValues("publish")); n != float64(5*len(topics)) {
		t.Fatalf("publish denials counted: %v, want %d", n, 5*len(topics))
	}
}

// Nothing a device publishes is retained or routed: a later subscriber,
// even on its own topics, receives nothing but what otad sends it.
func TestNoRetainedMessages(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("ret")
	c := e.mustConnect3(d)
	tok := c.Publish(d.reportTopic(), 1, true, `{"type":"report_version","report":{"version":"1.0.0"}}`)
	if !tok.WaitTimeout(deadline) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c.next(t) // report_version_rsp
	if n := e.retained(); n != 0 {
		t.Fatalf("%d retained messages", n)
	}
	// otad's own messages are not retained either: a device subscribing
	// after a publish gets nothing.
	c.Disconnect(0)
	c2 := e.mustConnect5(d)
	if err := e.broker.Publish(context.Background(), d.ProductID, d.Name, ota.NewReportVersionRsp("1.0.0")); err != nil {
		t.Fatal(err)
	}
	c2.next(t)
	c2.Disconnect(&paho5.Disconnect{})
	c3 := e.mustConnect3(d)
	// A retained message would arrive right after SUBACK, before this one.
	if err := e.broker.Publish(context.Background(), d.ProductID, d.Name, ota.NewReportVersionRsp("2.0.0")); err != nil {
		t.Fatal(err)
	}
	if m := c3.next(t); string(m.Payload()) != `{"type":"report_version_rsp","version":"2.0.0","result_code":0,"result_msg":"success"}` || m.Retained() {
		t.Fatalf("received %s (retained %v) on %s", m.Payload(), m.Retained(), m.Topic())
	}
	if n := e.retained(); n != 0 {
		t.Fatalf("%d retained messages", n)
	}
}

// A Will on the device's own report topic is accepted, never retained, and
// recorded like a report when the connection drops, before the device is
// recorded offline.
func TestWillRecorded(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("will")
	user, pass := d.creds(t)
	c, _, err := e.connect5(d.clientID, user, pass, func(cp *paho5.Connect) {
		cp.WillMessage = &paho5.WillMessage{Topic: d.reportTopic(), QoS: 1, Retain: true,
			Payload: []byte(`{"type":"report_progress","report":{"progress":{"state":"fail","result_code":"-5","result_msg":"lost"},"version":"2.0"}}`)}
		delay := uint32(3600) // a delayed Will is sent at once all the same
		cp.WillProperties = &paho5.WillProperties{WillDelayInterval: &delay}
	})
	if err != nil {
		t.Fatal(err)
	}
	// The network drops: no DISCONNECT.
	c.conn.Close()
	if r := e.nextReport(); r.State != ota.ProgressFail || r.ResultMsg != "lost" {
		t.Fatalf("will recorded as %+v", r)
	}
	if evs := e.reportEvents(d); len(evs) != 1 || evs[0].State != ota.ProgressFail {
		t.Fatalf("history %+v", evs)
	}
	eventually(t, "device offline", func() bool { return !e.get(d).Online })
	if n := e.retained(); n != 0 {
		t.Fatalf("%d retained messages", n)
	}
}

// retained counts retained messages outside mochi's own $SYS tree.
func (e *env) retained() int {
	n := 0
	for topic := range e.broker.server.Topics.Retained.GetAll() {
		if !strings.HasPrefix(topic, "$SYS") {
			n++
		}
	}
	return n
}
