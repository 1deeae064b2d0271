package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/store/testdb"
)

// hookReceiver is a real HTTP endpoint for webhooks. It verifies each
// request's signature as the README tells receivers to, and answers as
// its mode says: 200, 503, or closing the connection unanswered.
type hookReceiver struct {
	t   *testing.T
	srv *httptest.Server

	mu     sync.Mutex
	secret string
	mode   string // "ok", "503", "drop"
	bodies []json.RawMessage
	seqs   []int64
	failed int // requests refused
}

// newHookReceiver starts a receiver that takes delay to answer each
// request.
func newHookReceiver(t *testing.T, delay time.Duration) *hookReceiver {
	r := &hookReceiver{t: t, mode: "ok"}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		time.Sleep(delay)
		r.mu.Lock()
		defer r.mu.Unlock()
		switch r.mode {
		case "503":
			r.failed++
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		case "drop":
			r.failed++
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		if !verifyWebhook(r.secret, req.Header, body) {
			t.Errorf("delivery %s: signature %q does not verify", req.Header.Get("webhook-id"), req.Header.Get("webhook-signature"))
		}
		var e eventJSON
		if err := json.Unmarshal(body, &e); err != nil {
			t.Errorf("delivery body %s: %v", body, err)
		}
		if want := "evt_" + strconv.FormatInt(e.Seq, 10); req.Header.Get("webhook-id") != want {
			t.Errorf("webhook-id %q for event %d, want %q", req.Header.Get("webhook-id"), e.Seq, want)
		}
		r.bodies = append(r.bodies, body)
		r.seqs = append(r.seqs, e.Seq)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// verifyWebhook is the README's example, as a receiver would write it.
func verifyWebhook(secret string, h http.Header, body []byte) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	ts, _ := strconv.ParseInt(h.Get("webhook-timestamp"), 10, 64)
	if err != nil || math.Abs(float64(time.Now().Unix()-ts)) > 300 { // refuse replays
		return false
	}
	mac := hmac.New(sha256.New, key)
	fmt.Fprintf(mac, "%s.%d.", h.Get("webhook-id"), ts)
	mac.Write(body)
	want := "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	for _, sig := range strings.Fields(h.Get("webhook-signature")) {
		if hmac.Equal([]byte(sig), []byte(want)) {
			return true
		}
	}
	return false
}

func (r *hookReceiver) set(mode string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mode = mode
}

func (r *hookReceiver) setSecret(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.secret = s
}

// received returns the sequence numbers and bodies delivered so far.
func (r *hookReceiver) received() ([]int64, []json.RawMessage) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int64(nil), r.seqs...), append([]json.RawMessage(nil), r.bodies...)
}

type webhookJSON struct {
	ID             string     `json:"id"`
	URL            string     `json:"url"`
	EventTypes     []string   `json:"event_types"`
	ProductID      string     `json:"product_id"`
	Enabled        bool       `json:"enabled"`
	DisabledReason string     `json:"disabled_reason"`
	Cursor         int64      `json:"cursor"`
	FailingSince   *time.Time `json:"failing_since"`
	Failures       int        `json:"failures"`
	Secret         string     `json:"secret"`
}

type deliveryJSON struct {
	Seq         int64      `json:"seq"`
	EventType   string     `json:"event_type"`
	Attempts    int        `json:"attempts"`
	StatusCode  int        `json:"status_code"`
	Error       string     `json:"error"`
	DeliveredAt *time.Time `json:"delivered_at"`
}

// fastWebhooks are settings that retry within tens of milliseconds.
var fastWebhooks = map[string]string{"OTAD_WEBHOOK_BACKOFF": "50ms", "OTAD_WEBHOOK_BACKOFF_MAX": "300ms", "OTAD_WEBHOOK_TIMEOUT": "2s"}

func withEnv(base map[string]string, more map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range []map[string]string{base, more} {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// logEvents reads the whole event log after after, filtered by query, as
// /v1/events shows each event.
func logEvents(t *testing.T, get func(path string, out any), query string, after int64) ([]int64, []json.RawMessage) {
	t.Helper()
	var seqs []int64
	var bodies []json.RawMessage
	for {
		var page struct {
			Items   []json.RawMessage `json:"items"`
			LastSeq int64             `json:"last_seq"`
		}
		get(fmt.Sprintf("/v1/events?limit=1000&after=%d&%s", after, query), &page)
		for _, raw := range page.Items {
			var e eventJSON
			json.Unmarshal(raw, &e)
			seqs, bodies = append(seqs, e.Seq), append(bodies, raw)
		}
		if len(page.Items) == 0 {
			return seqs, bodies
		}
		after = page.LastSeq
	}
}

// The webhook API: validation, changes in the event log, the secret shown
// on create and rotate only, auto-disabling after the configured time
// with the reason, and enabling again delivering what happened meanwhile.
func TestWebhooksAPI(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, withEnv(fastWebhooks, map[string]string{"OTAD_WEBHOOK_DISABLE_AFTER": "2s"}))
		pid := "HOOKS00001"
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "hooks"}).wantStatus(t, 201)
		rcv := newHookReceiver(t, 0)
		for _, bad := range []map[string]any{
			{}, {"url": "ftp://example.com/x"}, {"url": "https://user:pw@example.com/x"}, {"url": "https:///x"},
			{"url": "https://example.com/x#frag"}, {"url": "example.com/x"}, {"url": "http://example.com:99999/"},
			{"url": rcv.srv.URL, "event_types": []string{"Job.*"}}, {"url": rcv.srv.URL, "event_types": []string{"*"}},
			{"url": rcv.srv.URL, "product_id": "NOSUCH0001"}, {"url": rcv.srv.URL, "product_id": "lower"},
			{"url": rcv.srv.URL, "job_id": "00000000000000000000"}, {"url": rcv.srv.URL, "description": "a\x01b"},
			{"url": rcv.srv.URL, "secret": "whsec_mine"},
		} {
			a.do("POST", "/v1/webhooks", bad).wantProblem(t, 400, "invalid")
		}
		a.do("POST", "/v1/webhooks", `{"url": 5}`).wantProblem(t, 400, "invalid")
		a.do("GET", "/v1/webhooks/nope", nil).wantProblem(t, 400, "invalid")
		a.do("GET", "/v1/webhooks/wh_00000000000000000000", nil).wantProblem(t, 404, "not_found")

		var w webhookJSON
		r := a.do("POST", "/v1/webhooks", map[string]any{"url": rcv.srv.URL + "/hook", "event_types": []string{"device.*"}, "product_id": pid})
		r.wantStatus(t, 201)
		r.decode(t, &w)
		if !strings.HasPrefix(w.Secret, "whsec_") || !w.Enabled || w.Cursor == 0 || r.Header.Get("Location") != "/v1/webhooks/"+w.ID {
			t.Fatalf("created %+v, Location %q", w, r.Header.Get("Location"))
		}
		rcv.setSecret(w.Secret)
		var got map[string]any
		a.do("GET", "/v1/webhooks/"+w.ID, nil).decode(t, &got)
		if _, ok := got["secret"]; ok {
			t.Fatalf("GET shows the secret: %v", got)
		}

		// Rotate: a new secret signs from then on.
		var rotated webhookJSON
		a.do("POST", "/v1/webhooks/"+w.ID+"/rotate-secret", nil).decode(t, &rotated)
		if rotated.Secret == w.Secret || !strings.HasPrefix(rotated.Secret, "whsec_") {
			t.Fatalf("rotated secret %q (was %q)", rotated.Secret, w.Secret)
		}
		rcv.setSecret(rotated.Secret)
		a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": "d1"}).wantStatus(t, 201)
		waitFor(t, "device.created delivered", func() bool { seqs, _ := rcv.received(); return len(seqs) == 1 })

		// Failing for longer than OTAD_WEBHOOK_DISABLE_AFTER: disabled, why
		// shown, an event in the log.
		rcv.set("503")
		a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": "d2"}).wantStatus(t, 201)
		waitFor(t, "the webhook disabled", func() bool {
			a.do("GET", "/v1/webhooks/"+w.ID, nil).decode(t, &w)
			return !w.Enabled
		})
		if !strings.Contains(w.DisabledReason, "HTTP 503") || w.FailingSince == nil || w.Failures < 2 {
			t.Fatalf("disabled webhook %+v", w)
		}
		var ds struct{ Items []deliveryJSON }
		a.do("GET", "/v1/webhooks/"+w.ID+"/deliveries", nil).decode(t, &ds)
		if len(ds.Items) != 2 || ds.Items[0].StatusCode != 503 || ds.Items[0].Attempts < 2 || ds.Items[0].DeliveredAt != nil ||
			ds.Items[1].StatusCode != 200 || ds.Items[1].Attempts != 1 || ds.Items[1].EventType != "device.created" {
			t.Fatalf("deliveries %+v", ds.Items)
		}
		a.do("GET", "/v1/webhooks/"+w.ID+"/deliveries?cursor=x", nil).wantProblem(t, 400, "invalid")

		// Enabled again: what happened meanwhile arrives, in order.
		a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": "d3"}).wantStatus(t, 201)
		rcv.set("ok")
		a.do("PATCH", "/v1/webhooks/"+w.ID, map[string]any{"enabled": true}).decode(t, &w)
		if !w.Enabled || w.DisabledReason != "" || w.Failures != 0 || w.FailingSince != nil {
			t.Fatalf("enabled again: %+v", w)
		}
		waitFor(t, "d2 and d3 delivered", func() bool { seqs, _ := rcv.received(); return len(seqs) == 3 })
		_, bodies := rcv.received()
		for i, name := range []string{"d1", "d2", "d3"} {
			var e eventJSON
			json.Unmarshal(bodies[i], &e)
			if e.Type != "device.created" || e.DeviceName != name {
				t.Fatalf("delivery %d: %s", i, bodies[i])
			}
		}

		// Patch, list, delete; each change is in the log.
		a.do("PATCH", "/v1/webhooks/"+w.ID, map[string]any{"url": "gopher://x"}).wantProblem(t, 400, "invalid")
		a.do("PATCH", "/v1/webhooks/"+w.ID, map[string]any{"event_types": []string{}, "product_id": "", "description": "all"}).decode(t, &w)
		if len(w.EventTypes) != 0 || w.ProductID != "" {
			t.Fatalf("patched %+v", w)
		}
		var other webhookJSON
		a.do("POST", "/v1/webhooks", map[string]any{"url": rcv.srv.URL, "enabled": false}).decode(t, &other)
		var list struct {
			Items      []webhookJSON
			NextCursor string `json:"next_cursor"`
		}
		a.do("GET", "/v1/webhooks?limit=1", nil).decode(t, &list)
		if len(list.Items) != 1 || list.Items[0].ID != w.ID || list.NextCursor == "" {
			t.Fatalf("first page %+v", list)
		}
		a.do("GET", "/v1/webhooks?cursor="+list.NextCursor, nil).decode(t, &list)
		if len(list.Items) != 1 || list.Items[0].ID != other.ID || list.Items[0].Enabled {
			t.Fatalf("second page %+v", list)
		}
		a.do("DELETE", "/v1/webhooks/"+other.ID, nil).wantStatus(t, 204)
		a.do("DELETE", "/v1/webhooks/"+other.ID, nil).wantProblem(t, 404, "not_found")
		var page struct{ Items []eventJSON }
		a.do("GET", "/v1/events?type=webhook.*", nil).decode(t, &page)
		var types []string
		for _, e := range page.Items {
			types = append(types, e.Type)
		}
		if fmt.Sprint(types) != "[webhook.created webhook.updated webhook.disabled webhook.updated webhook.updated webhook.created webhook.deleted]" {
			t.Fatalf("webhook events %v", types)
		}
		if strings.Contains(fmt.Sprint(page.Items), "whsec_") {
			t.Fatal("an event shows a secret")
		}
	})
}

// Every event of a 100-device job, simulated by otasim over MQTT, reaches
// a webhook in order, each signed, each body the event as /v1/events
// shows it, once; the receiver answering 503, then dropping connections,
// for a while in the middle changes nothing but the timing.
func TestWebhookJobDelivery(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, fastWebhooks)
		pid := "HOOKJOB001"
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "hooks"}).wantStatus(t, 201)
		rcv := newHookReceiver(t, 0)
		var w webhookJSON
		a.do("POST", "/v1/webhooks", map[string]any{"url": rcv.srv.URL, "product_id": pid}).decode(t, &w)
		rcv.setSecret(w.Secret)
		var names []string
		for i := range 100 {
			names = append(names, fmt.Sprintf("dev-%03d", i))
		}
		file := a.provisionDevices(t, pid, nil, names...)
		a.uploadFirmware(t, pid, "2.0.0", 4<<10)
		sim := startSim(t, a.MQTTAddr(), file)
		j := a.createJob(t, pid, map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"all": true}, "timeout_seconds": 60})

		// The receiver goes down for a while as the job runs.
		waitFor(t, "some deliveries", func() bool { seqs, _ := rcv.received(); return len(seqs) >= 50 })
		rcv.set("503")
		waitFor(t, "refused deliveries", func() bool { rcv.mu.Lock(); defer rcv.mu.Unlock(); return rcv.failed >= 5 })
		rcv.set("drop")
		waitFor(t, "dropped deliveries", func() bool { rcv.mu.Lock(); defer rcv.mu.Unlock(); return rcv.failed >= 10 })
		rcv.set("ok")
		waitFor(t, "the job to complete", func() bool { return a.job(t, pid, j.ID).CompletedAt != nil })
		sim.stop(t)
		waitFor(t, "every device offline", func() bool {
			var page struct{ Items []any }
			a.do("GET", "/v1/products/"+pid+"/devices?online=true", nil).decode(t, &page)
			return len(page.Items) == 0
		})

		// Every device is offline: the log of the product is complete.
		get := a.get
		wantSeqs, wantBodies := logEvents(t, get, "product_id="+pid, w.Cursor)
		waitProgress(t, "every event delivered", func() (bool, int) {
			seqs, _ := rcv.received()
			return len(seqs) > 0 && seqs[len(seqs)-1] >= wantSeqs[len(wantSeqs)-1], len(seqs)
		})
		seqs, bodies := rcv.received()
		// At least once: an event may come again right after itself (a
		// run cut short between the answer and recording it), never out
		// of order, never missing.
		types := map[string]int{}
		repeats, k := 0, 0
		for i := range seqs {
			if i > 0 && seqs[i] == seqs[i-1] && bytes.Equal(bodies[i], bodies[i-1]) {
				repeats++
				continue
			}
			if k >= len(wantSeqs) || seqs[i] != wantSeqs[k] || !bytes.Equal(bodies[i], wantBodies[k]) {
				t.Fatalf("delivery %d: %s\nwant event %d of the log", i, bodies[i], k)
			}
			k++
			var e eventJSON
			json.Unmarshal(bodies[i], &e)
			types[e.Type]++
		}
		if k != len(wantSeqs) {
			t.Fatalf("%d events of %d delivered, %d repeats", k, len(wantSeqs), repeats)
		}
		if types["device.created"] != 100 || types["execution.done"] != 100 || types["job.completed"] != 1 || types["device.online"] != 100 || types["device.offline"] != 100 {
			t.Fatalf("event types delivered: %v", types)
		}
		var ds struct{ Items []deliveryJSON }
		a.do("GET", "/v1/webhooks/"+w.ID+"/deliveries?limit=1000", nil).decode(t, &ds)
		retried := 0
		for _, d := range ds.Items {
			if d.DeliveredAt == nil || d.StatusCode != 200 {
				t.Fatalf("delivery %+v", d)
			}
			if d.Attempts > 1 {
				retried++
			}
		}
		if len(ds.Items) != len(wantSeqs) || retried < 1 || retried > 1+repeats {
			t.Fatalf("%d delivery records, %d retried; want %d, and the one the outage held", len(ds.Items), retried, len(wantSeqs))
		}
		t.Logf("%d events delivered in order, %d repeats", len(wantSeqs), repeats)
	})
}

// otad SIGKILLed in the middle of delivering, then started again on the
// same database: every event arrives, in order; an event comes again only
// right after itself, as at-least-once allows (the one in flight at the
// kill).
func TestWebhookSurvivesKill(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		env := withEnv(fastWebhooks, map[string]string{
			"OTAD_HTTP_ADDR": freeAddr(t), "OTAD_MQTT_ADDR": freeAddr(t), "OTAD_DATA_DIR": t.TempDir(), "OTAD_API_TOKEN": testToken,
			"OTAD_WEBHOOK_TIMEOUT": "1s",
		})
		if engine == "postgres" {
			env["OTAD_DATABASE_URL"] = testdb.PostgresURL(t)
		}
		p := startProcess(t, env)
		c := &consoleClient{t: t, base: p.httpURL}
		pid := "HOOKKIL001"
		c.call("POST", "/v1/products", strings.NewReader(`{"id": "`+pid+`", "name": "hooks"}`), 201, nil)
		// A slow receiver, so that the kill comes mid-delivery.
		rcv := newHookReceiver(t, 20*time.Millisecond)
		var w webhookJSON
		c.call("POST", "/v1/webhooks", strings.NewReader(`{"url": "`+rcv.srv.URL+`", "product_id": "`+pid+`"}`), 201, &w)
		rcv.setSecret(w.Secret)
		const devices = 150
		for i := range devices {
			c.call("POST", "/v1/products/"+pid+"/devices", strings.NewReader(fmt.Sprintf(`{"name": "k%03d"}`, i)), 201, nil)
		}
		waitFor(t, "deliveries under way", func() bool { seqs, _ := rcv.received(); return len(seqs) >= 20 })
		p.cmd.Process.Kill()
		<-p.exited
		before, _ := rcv.received()
		if len(before) >= devices {
			t.Fatal("everything was delivered before the kill")
		}
		restarted := time.Now()
		p = startProcess(t, env)
		c.base = p.httpURL
		get := c.get
		wantSeqs, _ := logEvents(t, get, "product_id="+pid, w.Cursor)
		if len(wantSeqs) != devices {
			t.Fatalf("%d events in the log, want %d", len(wantSeqs), devices)
		}
		waitProgress(t, "every event delivered after the restart", func() (bool, int) {
			seqs, _ := rcv.received()
			return len(seqs) > 0 && seqs[len(seqs)-1] == wantSeqs[len(wantSeqs)-1], len(seqs)
		})
		seqs, _ := rcv.received()
		var distinct []int64
		repeats := 0
		for _, s := range seqs {
			if n := len(distinct); n > 0 && s <= distinct[n-1] {
				if s != distinct[n-1] {
					t.Fatalf("event %d after %d: out of order (%v)", s, distinct[n-1], seqs)
				}
				repeats++
				continue
			}
			distinct = append(distinct, s)
		}
		if fmt.Sprint(distinct) != fmt.Sprint(wantSeqs) {
			t.Fatalf("delivered %d events (%d repeats), want %d", len(distinct), repeats, len(wantSeqs))
		}
		t.Logf("%d delivered before the kill, %d repeats after it, %s from the restart to the last", len(before), repeats, time.Since(restarted).Round(time.Second))
	})
}

// Two replicas on one PostgreSQL, events made through both: each event
// reaches the webhook once, in order.
func TestWebhookReplicas(t *testing.T) {
	url := testdb.PostgresURL(t)
	var cs []*consoleClient
	for range 2 {
		env := withEnv(fastWebhooks, map[string]string{
			"OTAD_HTTP_ADDR": freeAddr(t), "OTAD_MQTT_ADDR": freeAddr(t), "OTAD_DATA_DIR": t.TempDir(),
			"OTAD_API_TOKEN": testToken, "OTAD_DATABASE_URL": url,
		})
		p := startProcess(t, env)
		cs = append(cs, &consoleClient{t: t, base: p.httpURL})
	}
	pid := "HOOKREP001"
	cs[0].call("POST", "/v1/products", strings.NewReader(`{"id": "`+pid+`", "name": "hooks"}`), 201, nil)
	rcv := newHookReceiver(t, 0)
	var w webhookJSON
	cs[1].call("POST", "/v1/webhooks", strings.NewReader(`{"url": "`+rcv.srv.URL+`", "product_id": "`+pid+`"}`), 201, &w)
	rcv.setSecret(w.Secret)
	const devices = 200
	var wg sync.WaitGroup
	for r, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range devices / len(cs) {
				c.call("POST", "/v1/products/"+pid+"/devices", strings.NewReader(fmt.Sprintf(`{"name": "r%d-%03d"}`, r, i)), 201, nil)
			}
		}()
	}
	wg.Wait()
	get := cs[0].get
	wantSeqs, _ := logEvents(t, get, "product_id="+pid, w.Cursor)
	waitProgress(t, "every event delivered", func() (bool, int) {
		seqs, _ := rcv.received()
		return len(seqs) >= devices, len(seqs)
	})
	// Whatever more arrives would be a second delivery.
	var caught webhookJSON
	waitFor(t, "the cursor at the end", func() bool {
		cs[1].call("GET", "/v1/webhooks/"+w.ID, nil, 200, &caught)
		return caught.Cursor >= wantSeqs[len(wantSeqs)-1]
	})
	seqs, _ := rcv.received()
	if fmt.Sprint(seqs) != fmt.Sprint(wantSeqs) {
		t.Fatalf("delivered %d events, want %d once each in order:\n%v\n%v", len(seqs), len(wantSeqs), seqs, wantSeqs)
	}
}
