package webhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/postgres"
	"github.com/otad/otad/internal/store/sqlite"
	"github.com/otad/otad/internal/store/testdb"
	"github.com/otad/otad/internal/webhook"
)

// receiver is a real HTTP endpoint that checks every delivery's signature
// the Standard Webhooks way and answers with status (200 unless set).
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	secret string

	mu     sync.Mutex
	status int
	got    []ota.Event
	ids    []string
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t, status: 200}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.status != 200 {
			w.WriteHeader(r.status)
			return
		}
		key, err := ota.WebhookKey(r.secret)
		if err != nil {
			t.Errorf("receiver secret: %v", err)
		}
		id, ts := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp")
		var unix int64
		fmt.Sscan(ts, &unix)
		if want := ota.WebhookSignature(key, id, time.Unix(unix, 0), body); req.Header.Get("webhook-signature") != want || time.Since(time.Unix(unix, 0)) > time.Minute {
			t.Errorf("delivery %s: signature %q at %s, want %q", id, req.Header.Get("webhook-signature"), ts, want)
		}
		var e ota.Event
		if err := json.Unmarshal(body, &e); err != nil {
			t.Errorf("delivery body %s: %v", body, err)
		}
		r.got = append(r.got, e)
		r.ids = append(r.ids, id)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) setStatus(code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = code
}

func (r *receiver) events() []ota.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ota.Event(nil), r.got...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// start runs delivery over s until the test ends.
func start(t *testing.T, s ota.Store, policy ota.WebhookPolicy) {
	cfg := webhook.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Store: s, Policy: policy,
		Timeout: 2 * time.Second, Poll: 50 * time.Millisecond, Node: "test"}
	var svc *webhook.Service
	var err error
	switch st := s.(type) {
	case *sqlite.Store:
		svc, err = webhook.New(st.QueueDriver(), cfg)
	case *postgres.Store:
		svc, err = webhook.New(st.QueueDriver(), cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, 5*time.Second) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("webhook service: %v", err)
		}
	})
}

var fast = ota.WebhookPolicy{Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, DisableAfter: time.Hour}

// Events reach a receiver in order with valid signatures, filtered; a
// receiver that answers 503 for a while then recovers gets everything, in
// order, its failures in the delivery log.
func TestDeliver(t *testing.T) {
	for _, engine := range testdb.Engines {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			s := testdb.Open(t, engine)
			ctx := t.Context()
			p := &ota.Product{ID: ota.NewProductID(), Name: "hooks"}
			if err := s.ProductCreate(ctx, p); err != nil {
				t.Fatal(err)
			}
			r := newReceiver(t)
			w := &ota.Webhook{ID: ota.NewWebhookID(), URL: r.srv.URL + "/hook", EventTypes: []string{"device.*"}, ProductID: p.ID,
				Enabled: true, Secret: ota.NewWebhookSecret()}
			r.secret = w.Secret
			if err := s.WebhookCreate(ctx, w); err != nil {
				t.Fatal(err)
			}
			other := &ota.Product{ID: ota.NewProductID(), Name: "other"}
			if err := s.ProductCreate(ctx, other); err != nil {
				t.Fatal(err)
			}
			start(t, s, fast)
			create := func(pid string, from, n int) {
				for i := from; i < from+n; i++ {
					if err := s.DeviceCreate(ctx, &ota.Device{ProductID: pid, Name: fmt.Sprintf("d%03d", i), Secret: ota.NewDeviceSecret()}); err != nil {
						t.Fatal(err)
					}
				}
			}
			create(p.ID, 0, 20)
			create(other.ID, 0, 5) // filtered out
			waitFor(t, "20 deliveries", func() bool { return len(r.events()) >= 20 })

			r.setStatus(503)
			create(p.ID, 20, 10)
			waitFor(t, "failures in the delivery log", func() bool {
				got, err := s.WebhookGet(ctx, w.ID)
				return err == nil && got.Failures >= 3
			})
			r.setStatus(200)
			waitFor(t, "30 deliveries", func() bool { return len(r.events()) >= 30 })
			waitFor(t, "the cursor to reach the end", func() bool {
				got, _ := s.WebhookGet(ctx, w.ID)
				last, _ := s.EventLastSeq(ctx)
				return got.Cursor == last && got.Failures == 0 && got.FailingSince == nil
			})
			evs := r.events()
			if len(evs) != 30 {
				t.Fatalf("%d deliveries, want 30", len(evs))
			}
			for i, e := range evs {
				if e.Type != ota.LogDeviceCreated || e.ProductID != p.ID || e.DeviceName != fmt.Sprintf("d%03d", i) ||
					i > 0 && e.Seq <= evs[i-1].Seq || r.ids[i] != ota.WebhookMessageID(e.Seq) {
					t.Fatalf("delivery %d: %+v (id %s)", i, e, r.ids[i])
				}
			}
			ds, err := s.WebhookDeliveryList(ctx, ota.WebhookDeliveryListParams{WebhookID: w.ID, Limit: ota.MaxPageLimit})
			if err != nil {
				t.Fatal(err)
			}
			retried := ds[9] // d020, the first sent while the receiver failed
			if len(ds) != 30 || retried.Seq != evs[20].Seq || retried.Attempts < 4 || retried.StatusCode != 200 || retried.DeliveredAt == nil {
				t.Fatalf("%d deliveries; the retried one %+v", len(ds), retried)
			}
		})
	}
}

// A receiver that fails for longer than DisableAfter gets its webhook
// disabled, with the reason and a webhook.disabled event.
func TestDisable(t *testing.T) {
	for _, engine := range testdb.Engines {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			s := testdb.Open(t, engine)
			ctx := t.Context()
			r := newReceiver(t)
			r.setStatus(500)
			w := &ota.Webhook{ID: ota.NewWebhookID(), URL: r.srv.URL, Enabled: true, Secret: ota.NewWebhookSecret()}
			if err := s.WebhookCreate(ctx, w); err != nil {
				t.Fatal(err)
			}
			start(t, s, ota.WebhookPolicy{Backoff: 50 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, DisableAfter: time.Second})
			var got *ota.Webhook
			waitFor(t, "the webhook to be disabled", func() bool {
				var err error
				got, err = s.WebhookGet(ctx, w.ID)
				return err == nil && !got.Enabled
			})
			if got.DisabledReason == "" || got.FailingSince == nil || got.Failures < 2 || got.Cursor != w.Cursor {
				t.Fatalf("disabled webhook %+v", got)
			}
			evs, err := s.EventList(ctx, ota.EventListParams{Types: []string{ota.LogWebhookDisabled}})
			if err != nil || len(evs) != 1 {
				t.Fatalf("webhook.disabled events %+v %v", evs, err)
			}
		})
	}
}
