package broker

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
)

// mosq runs a mosquitto client program (a path from mosquitto()) against
// the broker and returns its output and exit error. It is safe to call
// from any goroutine.
func (e *env) mosq(prog string, d *device, user, pass string, args ...string) (string, error) {
	host, port, _ := net.SplitHostPort(e.broker.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	full := append([]string{"-h", host, "-p", port, "-i", d.clientID, "-u", user, "-P", pass}, args...)
	cmd := exec.CommandContext(ctx, prog, full...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), fmt.Errorf("%s timed out", prog)
	}
	return out.String(), err
}

// The device flow with Debian's mosquitto clients: mosquitto_rr subscribes
// to the update topic, publishes report_version and waits for the answer.
func TestMosquittoReportVersion(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		rr := mosquitto(t, "mosquitto_rr")
		e := newEnv(t, engine)
		d := e.device("mosq")
		user, pass := d.creds(t)
		for _, v := range []struct{ proto, version string }{{"mqttv311", "1.2.3"}, {"mqttv5", "1.2.4"}, {"mqttv31", "1.2.5"}} {
			out, err := e.mosq(rr, d, user, pass, "-V", v.proto, "-q", "1", "-W", "10",
				"-t", d.reportTopic(), "-e", d.updateTopic(),
				"-m", `{"type": "report_version", "report": {"version": "`+v.version+`"}}`)
			if err != nil {
				t.Fatalf("%s: %v: %s", v.proto, err, out)
			}
			if want := `{"type":"report_version_rsp","version":"` + v.version + `","result_code":0,"result_msg":"success"}`; strings.TrimSpace(out) != want {
				t.Fatalf("%s: got %q, want %q", v.proto, out, want)
			}
			if got := e.get(d).Version; got != v.version {
				t.Fatalf("%s: stored version %q", v.proto, got)
			}
		}
	})
}

func TestMosquittoRefusals(t *testing.T) {
	pub, sub := mosquitto(t, "mosquitto_pub"), mosquitto(t, "mosquitto_sub")
	e := newEnv(t, "sqlite")
	d, other := e.device("mosq"), e.device("other")
	user, pass := d.creds(t)
	report := `{"type":"report_version","report":{"version":"1.0"}}`

	// Bad signature and expired credentials: "not authorised".
	forged := "0" + pass[1:]
	if pass[0] == '0' {
		forged = "1" + pass[1:]
	}
	for _, p := range []string{forged, ""} {
		u := user
		if p == "" {
			u, p = d.credsWith(t, "1700000000", ota.SignHMACSHA1)
		}
		out, err := e.mosq(pub, d, u, p, "-V", "mqttv311", "-q", "1", "-t", d.reportTopic(), "-m", report)
		if err == nil || !strings.Contains(out, "not authorised") {
			t.Fatalf("mosquitto_pub with bad credentials: %v: %s", err, out)
		}
		out, err = e.mosq(pub, d, u, p, "-V", "mqttv5", "-q", "1", "-t", d.reportTopic(), "-m", report)
		if err == nil || !strings.Contains(out, "Not authorized") {
			t.Fatalf("mosquitto_pub v5 with bad credentials: %v: %s", err, out)
		}
	}
	// Subscriptions outside the device's update topic are denied.
	for _, f := range []string{"#", "$ota/#", other.updateTopic(), "$ota/update/+/" + other.Name} {
		out, err := e.mosq(sub, d, user, pass, "-V", "mqttv311", "-q", "1", "-t", f, "-W", "5", "-C", "1")
		if !strings.Contains(out, "denied") {
			t.Fatalf("mosquitto_sub %s: %v: %s", f, err, out)
		}
	}
	// Publishing to another device's topics: v5 reports "not authorized"; nothing stored.
	out, err := e.mosq(pub, d, user, pass, "-V", "mqttv5", "-q", "1", "-t", other.reportTopic(), "-m", report)
	if !strings.Contains(out, "Publish 1 failed: Not authorized") {
		t.Fatalf("mosquitto_pub to another device's topic: %v: %s", err, out)
	}
	if evs := e.reportEvents(other); len(evs) != 0 {
		t.Fatalf("other device's history: %+v", evs)
	}
	// A Will on another device's report topic is refused at CONNECT.
	out, err = e.mosq(pub, d, user, pass, "-V", "mqttv311", "-q", "1", "-t", d.reportTopic(), "-m", report,
		"--will-topic", other.reportTopic(), "--will-payload", report)
	if err == nil || !strings.Contains(out, "not authorised") {
		t.Fatalf("will on another topic: %v: %s", err, out)
	}
}

// otad's update_firmware reaches a device exactly as the C SDK needs it.
func TestNotifierPublish(t *testing.T) {
	e := newEnv(t, "sqlite")
	d := e.device("fw")
	msg := ota.UpdateFirmware{Version: "1.0.1", URL: "http://fw.example.com/AbC123?x=1&y=2", MD5: "CC03E747A6AFBBCBF8BE7668ACFEBEE5", FileSize: 31242, JobID: "j1"}
	want := `{"type":"update_firmware","version":"1.0.1","url":"http://fw.example.com/AbC123?x=1&y=2","md5sum":"cc03e747a6afbbcbf8be7668acfebee5","file_size":31242,"job_id":"j1"}`
	ctx := context.Background()

	if err := e.broker.Publish(ctx, d.ProductID, d.Name, msg); !ota.IsCode(err, ota.EUNAVAILABLE) {
		t.Fatalf("publish to an offline device: %v", err)
	}
	big := msg
	big.URL = "http://fw.example.com/" + strings.Repeat("a", 2000)
	if err := e.broker.Publish(ctx, d.ProductID, d.Name, big); !ota.IsCode(err, ota.ETOOLARGE) {
		t.Fatalf("publish too large: %v", err)
	}
	if err := e.broker.Publish(ctx, d.ProductID, d.Name, map[string]any{"type": "update_firmware"}); !ota.IsCode(err, ota.EINVALID) {
		t.Fatalf("publish unknown message: %v", err)
	}

	c := e.mustConnect3(d)
	if err := e.broker.Publish(ctx, d.ProductID, d.Name, &msg); err != nil {
		t.Fatal(err)
	}
	m := c.next(t)
	if m.Topic() != d.updateTopic() || string(m.Payload()) != want || m.Qos() != 1 || m.Retained() {
		t.Fatalf("got %s qos %d retained %v on %s", m.Payload(), m.Qos(), m.Retained(), m.Topic())
	}
	c.Disconnect(0)
	eventually(t, "first session gone", func() bool {
		_, ok := e.broker.server.Clients.Get(d.clientID)
		return !ok
	})

	// And with mosquitto_sub, byte for byte.
	sub := mosquitto(t, "mosquitto_sub")
	user, pass := d.creds(t)
	done := make(chan string, 1)
	go func() {
		out, _ := e.mosq(sub, d, user, pass, "-V", "mqttv311", "-q", "1", "-t", d.updateTopic(), "-C", "1", "-W", "10", "-N")
		done <- out
	}()
	eventually(t, "mosquitto_sub subscribed", func() bool {
		return e.broker.Publish(ctx, d.ProductID, d.Name, msg) == nil
	})
	select {
	case out := <-done:
		if out != want {
			t.Fatalf("mosquitto_sub got %q", out)
		}
	case <-time.After(deadline):
		t.Fatal("mosquitto_sub got nothing")
	}
}
