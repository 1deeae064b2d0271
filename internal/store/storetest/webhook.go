package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
)

func newWebhook(types ...string) *ota.Webhook {
	return &ota.Webhook{ID: ota.NewWebhookID(), URL: "https://example.com/hook", EventTypes: types, Enabled: true, Secret: ota.NewWebhookSecret()}
}

func attempt(seq int64, typ string, status int, at time.Time) ota.WebhookDelivery {
	d := ota.WebhookDelivery{Seq: seq, EventType: typ, StatusCode: status, LatencyMS: 12, UpdatedAt: at}
	if status == 0 {
		d.Error = "connection refused"
	}
	return d
}

// testWebhook: a webhook's settings, its cursor at the log's end when
// created, failures counted until a success moves the cursor, every
// change compare-and-set and in the event log.
func testWebhook(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	must(t, s.DeviceCreate(ctx(t), &ota.Device{ProductID: p.ID, Name: "d0", Secret: ota.NewDeviceSecret()}))
	w := newWebhook("device.*", "webhook.*")
	w.ProductID, w.Description = p.ID, "ci"
	must(t, s.WebhookCreate(ctx(t), w))
	if w.Cursor == 0 || w.CreatedAt.IsZero() {
		t.Fatalf("created webhook %+v: cursor must be the log's end (device.created is in it)", w)
	}
	got, err := s.WebhookGet(ctx(t), w.ID)
	must(t, err)
	if fmt.Sprint(got) != fmt.Sprint(w) {
		t.Fatalf("get\n got %+v\nwant %+v", got, w)
	}
	// Its own creation is the first event after its cursor.
	evs, err := s.EventList(ctx(t), w.Filter(10))
	must(t, err)
	if len(evs) != 0 {
		t.Fatalf("events after the cursor passing the product filter: %+v", evs)
	}
	evs, err = s.EventList(ctx(t), ota.EventListParams{After: w.Cursor})
	must(t, err)
	if len(evs) != 1 || evs[0].Type != ota.LogWebhookCreated || string(evs[0].Data) == "" {
		t.Fatalf("events after the cursor: %+v", evs)
	}
	created := evs[0].Seq

	w2 := newWebhook()
	w2.Enabled = false
	must(t, s.WebhookCreate(ctx(t), w2))
	wantCode(t, s.WebhookCreate(ctx(t), w2), ota.ECONFLICT)
	page, err := s.WebhookList(ctx(t), ota.WebhookListParams{Limit: 1})
	must(t, err)
	page2, err := s.WebhookList(ctx(t), ota.WebhookListParams{After: page[0].ID})
	must(t, err)
	if len(page) != 1 || page[0].ID != w.ID || len(page2) != 1 || page2[0].ID != w2.ID || len(page2[0].EventTypes) != 0 {
		t.Fatalf("pages %+v %+v", page, page2)
	}

	// Due: enabled and behind the log.
	due, err := s.WebhookListDue(ctx(t), 10)
	must(t, err)
	if fmt.Sprint(due) != fmt.Sprint([]string{w.ID}) {
		t.Fatalf("due %v, want only %s", due, w.ID)
	}

	// Updates compare-and-set on Rev.
	stale := *w
	w.Description = "nightly"
	must(t, s.WebhookUpdate(ctx(t), ota.WebhookUpdateParams{Webhook: w, Event: ota.LogWebhookUpdated}))
	if w.Rev != 1 {
		t.Fatalf("rev after an update = %d", w.Rev)
	}
	wantCode(t, s.WebhookUpdate(ctx(t), ota.WebhookUpdateParams{Webhook: &stale, Event: ota.LogWebhookUpdated}), ota.ECONFLICT)
	missing := newWebhook()
	wantCode(t, s.WebhookUpdate(ctx(t), ota.WebhookUpdateParams{Webhook: missing, Event: ota.LogWebhookUpdated}), ota.ENOTFOUND)

	// Failures count from the first; a success moves the cursor and
	// forgets them. The delivery's row counts every attempt.
	t0 := ota.Now()
	from := w.Cursor
	got, err = s.WebhookAttempt(ctx(t), ota.WebhookAttemptParams{WebhookID: w.ID, From: from, Attempt: attempt(created, ota.LogWebhookCreated, 503, t0)})
	must(t, err)
	if got.Cursor != from || got.Failures != 1 || got.FailingSince == nil || !got.FailingSince.Equal(t0) {
		t.Fatalf("after a failure: %+v", got)
	}
	got, err = s.WebhookAttempt(ctx(t), ota.WebhookAttemptParams{WebhookID: w.ID, From: from, Attempt: attempt(created, ota.LogWebhookCreated, 0, t0.Add(time.Second))})
	must(t, err)
	if got.Failures != 2 || !got.FailingSince.Equal(t0) {
		t.Fatalf("after a second failure: %+v", got)
	}
	// An update while failing keeps the failures, unless told to reset.
	must(t, s.WebhookUpdate(ctx(t), ota.WebhookUpdateParams{Webhook: got, Event: ota.LogWebhookUpdated}))
	if got, err = s.WebhookGet(ctx(t), w.ID); err != nil || got.Failures != 2 {
		t.Fatalf("failures after an update: %+v %v", got, err)
	}
	got, err = s.WebhookAttempt(ctx(t), ota.WebhookAttemptParams{WebhookID: w.ID, From: from, Attempt: attempt(created, ota.LogWebhookCreated, 204, t0.Add(2*time.Second))})
	must(t, err)
	if got.Cursor != created || got.Failures != 0 || got.FailingSince != nil {
		t.Fatalf("after a success: %+v", got)
	}
	_, err = s.WebhookAttempt(ctx(t), ota.WebhookAttemptParams{WebhookID: w.ID, From: from, Attempt: attempt(created, ota.LogWebhookCreated, 200, t0)})
	wantCode(t, err, ota.ECONFLICT)
	ds, err := s.WebhookDeliveryList(ctx(t), ota.WebhookDeliveryListParams{WebhookID: w.ID})
	must(t, err)
	if len(ds) != 1 || ds[0].Seq != created || ds[0].Attempts != 3 || ds[0].StatusCode != 204 || ds[0].Error != "" ||
		ds[0].DeliveredAt == nil || !ds[0].CreatedAt.Equal(t0) || ds[0].EventType != ota.LogWebhookCreated || ds[0].LatencyMS != 12 {
		t.Fatalf("deliveries %+v", ds)
	}

	// Past events the filters drop, the cursor moves on its own.
	last, err := s.EventLastSeq(ctx(t))
	must(t, err)
	wantCode(t, s.WebhookAdvance(ctx(t), w.ID, from, last), ota.ECONFLICT)
	wantCode(t, s.WebhookAdvance(ctx(t), missing.ID, 0, last), ota.ENOTFOUND)
	must(t, s.WebhookAdvance(ctx(t), w.ID, created, last))
	if due, err = s.WebhookListDue(ctx(t), 10); err != nil || len(due) != 0 {
		t.Fatalf("due after catching up: %v %v", due, err)
	}

	// Newest first, paged by sequence number.
	for _, seq := range []int64{last + 1, last + 2} {
		_, err := s.WebhookAttempt(ctx(t), ota.WebhookAttemptParams{WebhookID: w.ID, From: seq - 1, Attempt: attempt(seq, "device.created", 200, t0)})
		must(t, err)
	}
	ds, err = s.WebhookDeliveryList(ctx(t), ota.WebhookDeliveryListParams{WebhookID: w.ID, Limit: 2})
	must(t, err)
	older, err := s.WebhookDeliveryList(ctx(t), ota.WebhookDeliveryListParams{WebhookID: w.ID, Before: ds[1].Seq})
	must(t, err)
	if len(ds) != 2 || ds[0].Seq != last+2 || ds[1].Seq != last+1 || len(older) != 1 || older[0].Seq != created {
		t.Fatalf("delivery pages %+v %+v", ds, older)
	}

	// Delete takes the deliveries along.
	must(t, s.WebhookDelete(ctx(t), w.ID))
	wantCode(t, s.WebhookDelete(ctx(t), w.ID), ota.ENOTFOUND)
	_, err = s.WebhookGet(ctx(t), w.ID)
	wantCode(t, err, ota.ENOTFOUND)
	_, err = s.WebhookAttempt(ctx(t), ota.WebhookAttemptParams{WebhookID: w.ID, From: last + 2, Attempt: attempt(last+3, "x", 200, t0)})
	wantCode(t, err, ota.ENOTFOUND)
	if ds, err = s.WebhookDeliveryList(ctx(t), ota.WebhookDeliveryListParams{WebhookID: w.ID}); err != nil || len(ds) != 0 {
		t.Fatalf("deliveries of a deleted webhook: %+v %v", ds, err)
	}
	evs, err = s.EventList(ctx(t), ota.EventListParams{Types: []string{"webhook.*"}})
	must(t, err)
	var types []string
	for _, e := range evs {
		types = append(types, e.Type)
	}
	if fmt.Sprint(types) != "[webhook.created webhook.created webhook.updated webhook.updated webhook.deleted]" {
		t.Fatalf("webhook events %v", types)
	}
}

// testWebhookAttemptConcurrent: workers that race to deliver the same
// event (two replicas, or a rescued job beside a live one) move the
// cursor once; the others learn that they lost.
func testWebhookAttemptConcurrent(t *testing.T, s ota.Store) {
	w := newWebhook()
	must(t, s.WebhookCreate(ctx(t), w))
	const workers = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, lost := 0, 0
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.WebhookAttempt(ctx(t), ota.WebhookAttemptParams{WebhookID: w.ID, From: w.Cursor, Attempt: attempt(w.Cursor+1, "x", 200, ota.Now())})
			mu.Lock()
			defer mu.Unlock()
			switch ota.ErrorCode(err) {
			case "":
				won++
			case ota.ECONFLICT:
				lost++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if won != 1 || lost != workers-1 {
		t.Fatalf("%d won and %d lost, want 1 and %d", won, lost, workers-1)
	}
	// Old delivery records go with the retention.
	n, err := s.EventsPrune(ctx(t), ota.Now().Add(time.Hour), 1000)
	must(t, err)
	ds, err := s.WebhookDeliveryList(ctx(t), ota.WebhookDeliveryListParams{WebhookID: w.ID})
	must(t, err)
	if n < 2 || len(ds) != 0 {
		t.Fatalf("pruned %d; deliveries left %+v", n, ds)
	}
}
