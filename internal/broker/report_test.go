package broker

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
)

// A QoS 1 report is in the store the moment its PUBACK arrives, on both
// engines, and report_version is answered as the C SDK needs.
func TestReportsStored(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		e := newEnv(t, engine)
		d := e.device("dev-1")
		c := e.mustConnect3(d)

		c.publish1(t, d.reportTopic(), `{"type": "report_version", "report": {"version": "1.0.0"}}`)
		got := e.get(d)
		if got.Version != "1.0.0" || !got.Online || got.LastSeenAt == nil {
			t.Fatalf("after PUBACK: version %q online %v last seen %v", got.Version, got.Online, got.LastSeenAt)
		}
		m := c.next(t)
		if m.Topic() != d.updateTopic() || string(m.Payload()) != `{"type":"report_version_rsp","version":"1.0.0","result_code":0,"result_msg":"success"}` {
			t.Fatalf("rsp on %s: %s", m.Topic(), m.Payload())
		}
		if r := e.nextReport(); r.Type != ota.EventReportVersion || r.Version != "1.0.0" || r.DeviceName != d.Name {
			t.Fatalf("OnReport got %+v", r)
		}

		// Downloading at QoS 0, as the SDKs do, then burning and done at QoS 1.
		tok := c.Publish(d.reportTopic(), 0, false, `{"type": "report_progress", "report": {"progress": {"state": "downloading", "percent": "49", "result_code": "0", "result_msg": ""}, "version": "1.0.1"}}`)
		tok.WaitTimeout(deadline)
		if r := e.nextReport(); r.State != ota.ProgressDownloading || *r.Percent != 49 {
			t.Fatalf("OnReport got %+v", r)
		}
		c.publish1(t, d.reportTopic(), `{"type":"report_progress","report":{"progress":"{\"state\":\"burning\",\"result_code\":\"0\",\"result_msg\":\"\"}","version":"1.0.1"}}`)
		if got := e.get(d).Upgrade; got == nil || got.State != ota.ProgressBurning || got.Version != "1.0.1" {
			t.Fatalf("upgrade after burning: %+v", got)
		}
		c.publish1(t, d.reportTopic(), `{"type": "report_progress", "report": {"progress": {"state": "fail", "result_code": -4, "result_msg": "time_out"}, "version": "1.0.1"}}`)
		up := e.get(d).Upgrade
		if up == nil || up.State != ota.ExecFailed || up.ResultCode != -4 || up.ResultMsg != "time_out" {
			t.Fatalf("upgrade after fail: %+v", up)
		}
		evs := e.reportEvents(d)
		if len(evs) != 4 {
			t.Fatalf("history has %d reports, want 4", len(evs))
		}
		if evs[1].State != "downloading" || evs[1].Percent == nil || *evs[1].Percent != 49 || evs[3].ResultCode == nil || *evs[3].ResultCode != -4 {
			t.Fatalf("history: %+v %+v", evs[1], evs[3])
		}
		if n := counter(e.broker.metrics.reports.WithLabelValues(ota.EventReportProgress)); n != 3 {
			t.Fatalf("stored progress counter = %v", n)
		}
	})
}

// MQTT 5: report stored before PUBACK; the answer arrives on the update topic.
func TestReportsStoredMQTT5(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("five")
	c := e.mustConnect5(d)
	if rc := c.publish(t, d.reportTopic(), 1, []byte(`{"type":"report_version","report":{"version":"5.0.0"}}`)); rc != 0 {
		t.Fatalf("PUBACK reason %#x", rc)
	}
	if v := e.get(d).Version; v != "5.0.0" {
		t.Fatalf("version after PUBACK = %q", v)
	}
	if m := c.next(t); string(m.Payload) != `{"type":"report_version_rsp","version":"5.0.0","result_code":0,"result_msg":"success"}` {
		t.Fatalf("rsp = %s", m.Payload)
	}
}

// Many devices reporting at once share transactions, and every
// acknowledged report is stored.
func TestReportsBatched(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		e := newEnv(t, engine)
		const devices, each = 20, 10
		errs := make(chan error, devices)
		var ds []*device
		for i := range devices {
			ds = append(ds, e.device("batch-"+string(rune('a'+i))))
		}
		for _, d := range ds {
			c := e.mustConnect3(d)
			go func() {
				for i := range each {
					tok := c.Publish(d.reportTopic(), 1, false, `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":`+strconv.Itoa(i*10)+`},"version":"2.0.0"}}`)
					if !tok.WaitTimeout(deadline) || tok.Error() != nil {
						errs <- errors.New("publish failed")
						return
					}
				}
				errs <- nil
			}()
		}
		for range devices {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		for _, d := range ds {
			if n := len(e.reportEvents(d)); n != each {
				t.Fatalf("%s: %d reports stored, want %d", d.Name, n, each)
			}
			if up := e.get(d).Upgrade; up == nil || up.Percent != (each-1)*10 {
				t.Fatalf("%s: upgrade %+v", d.Name, up)
			}
		}
	})
}

// Garbage is dropped with a counter, nothing is written, and an MQTT 3.1.1
// connection stays up (its QoS 1 PUBACK arrives).
func TestMalformedReports(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("bad")
	c := e.mustConnect3(d)
	bad := []struct{ name, payload, reason string }{
		{"not json", `hello`, dropMalformed},
		{"binary", "\x00\x01\xff\xfe\x80garbage", dropMalformed},
		{"truncated", `{"type":"report_version","report":{"vers`, dropMalformed},
		{"unknown type", `{"type":"report_bogus","report":{"version":"1.0"}}`, dropMalformed},
		{"bad state", `{"type":"report_progress","report":{"progress":{"state":"exploding"},"version":"1.0"}}`, dropMalformed},
		{"percent 101", `{"type":"report_progress","report":{"progress":{"state":"downloading","percent":"101"},"version":"1.0"}}`, dropMalformed},
		{"oversized", `{"type":"report_version","report":{"version":"1.0"},"x":"` + strings.Repeat("x", ota.MaxReportSize) + `"}`, dropTooLarge},
	}
	for _, qos := range []byte{0, 1} {
		for _, b := range bad {
			before := counter(e.broker.metrics.dropped.WithLabelValues(b.reason))
			tok := c.Publish(d.reportTopic(), qos, false, b.payload)
			if !tok.WaitTimeout(deadline) || tok.Error() != nil {
				t.Fatalf("qos %d %s: %v", qos, b.name, tok.Error())
			}
			eventually(t, "drop counted", func() bool {
				return counter(e.broker.metrics.dropped.WithLabelValues(b.reason)) == before+1
			})
		}
	}
	// Still connected: a valid report goes through, and is the only one stored.
	c.publish1(t, d.reportTopic(), `{"type":"report_version","report":{"version":"9.9.9"}}`)
	if evs := e.reportEvents(d); len(evs) != 1 || evs[0].Version != "9.9.9" {
		t.Fatalf("history: %+v", evs)
	}
	select {
	case err := <-c.lost:
		t.Fatalf("connection lost: %v", err)
	default:
	}
}

// MQTT 5 gets a negative PUBACK (0x99, payload format invalid) for a bad
// report, and keeps its connection.
func TestMalformedReportsMQTT5(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("bad5")
	c := e.mustConnect5(d)
	for _, p := range []string{`nope`, "\xff\x00", `{"type":"x","report":{}}`} {
		if rc := c.publish(t, d.reportTopic(), 1, []byte(p)); rc != 0x99 {
			t.Fatalf("%q: PUBACK reason %#x, want 0x99", p, rc)
		}
	}
	if rc := c.publish(t, d.reportTopic(), 1, []byte(`{"type":"report_version","report":{"version":"1"}}`)); rc != 0 {
		t.Fatalf("valid report after garbage: %#x", rc)
	}
	if evs := e.reportEvents(d); len(evs) != 1 {
		t.Fatalf("history: %+v", evs)
	}
}

// A packet over the 4 KiB cap closes the connection; nothing is stored.
func TestOversizedPacket(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("huge")
	c := e.mustConnect3(d)
	c.Publish(d.reportTopic(), 1, false, strings.Repeat("x", 8192))
	c.waitLost(t)
	if evs := e.reportEvents(d); len(evs) != 0 {
		t.Fatalf("history: %+v", evs)
	}
	eventually(t, "too_large counted", func() bool { return counter(e.broker.metrics.dropped.WithLabelValues(dropTooLarge)) == 1 })
}

// When the store fails, a QoS 1 report is not acknowledged: MQTT 3.1.1
// devices are disconnected (and will resend), MQTT 5 ones get PUBACK 0x80.
func TestReportStoreFailure(t *testing.T) {
	e := newEnv(t, "sqlite", func(o *Options) { o.ReportTimeout = 2 * time.Second })
	d3, d5 := e.device("three"), e.device("five")
	c3, c5 := e.mustConnect3(d3), e.mustConnect5(d5)
	if err := e.store.Close(); err != nil { // the database goes away
		t.Fatal(err)
	}
	tok := c3.Publish(d3.reportTopic(), 1, false, `{"type":"report_version","report":{"version":"1.0"}}`)
	c3.waitLost(t)
	if tok.WaitTimeout(deadline) && tok.Error() == nil {
		t.Fatal("PUBACK for a report that was not stored")
	}
	if rc := c5.publish(t, d5.reportTopic(), 1, []byte(`{"type":"report_version","report":{"version":"1.0"}}`)); rc != 0x80 {
		t.Fatalf("MQTT 5 PUBACK reason %#x, want 0x80", rc)
	}
	if n := counter(e.broker.metrics.dropped.WithLabelValues(dropStoreError)); n != 2 {
		t.Fatalf("store_error drops = %v", n)
	}
}
