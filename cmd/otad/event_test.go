package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

type eventJSON struct {
	Seq        int64           `json:"seq"`
	Type       string          `json:"type"`
	ProductID  string          `json:"product_id"`
	JobID      string          `json:"job_id"`
	DeviceName string          `json:"device_name"`
	Data       json.RawMessage `json:"data"`
}

// sseStream is an open /v1/events/stream.
type sseStream struct {
	cancel context.CancelFunc
	events chan sseMessage
}

type sseMessage struct {
	id    string
	event string
	data  string
	err   error
}

func (a *testApp) stream(t *testing.T, query string, headers ...string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, "GET", a.HTTPURL()+"/v1/events/stream?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &sseStream{cancel: cancel, events: make(chan sseMessage, 1000)}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var m sseMessage
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if m.id != "" || m.event != "" {
					s.events <- m
				}
				m = sseMessage{}
			case strings.HasPrefix(line, "id: "):
				m.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				m.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				m.data = line[6:]
			}
		}
		s.events <- sseMessage{err: fmt.Errorf("stream ended: %v", sc.Err())}
	}()
	t.Cleanup(cancel)
	return s
}

// next returns the next event of the stream, waiting for it.
func (s *sseStream) next(t *testing.T) eventJSON {
	t.Helper()
	select {
	case m := <-s.events:
		if m.err != nil {
			t.Fatal(m.err)
		}
		var e eventJSON
		if err := json.Unmarshal([]byte(m.data), &e); err != nil {
			t.Fatalf("event data %q: %v", m.data, err)
		}
		if strconv.FormatInt(e.Seq, 10) != m.id || e.Type != m.event {
			t.Fatalf("message id %s event %s carries %+v", m.id, m.event, e)
		}
		return e
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
	panic("unreachable")
}

// The event log through the API: a list that follows with ?after, and a
// stream that resumes after a dropped connection from Last-Event-ID with
// nothing lost and nothing twice.
func TestEventLogAPI(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		pid := "EVENT00001"
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "events"}).wantStatus(t, 201)
		s := a.stream(t, "product_id="+pid+"&after=0")
		a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": "d1", "version": "1.0.0"}).wantStatus(t, 201)
		a.uploadFirmware(t, pid, "2.0.0", 1024)
		var j jobJSON
		a.do("POST", "/v1/products/"+pid+"/jobs", map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"all": true}}).decode(t, &j)
		var got []string
		var last eventJSON
		for _, want := range []string{"device.created", "firmware.uploaded", "job.created"} {
			last = s.next(t)
			got = append(got, last.Type)
			if last.Type != want || last.ProductID != pid {
				t.Fatalf("events %v, want %s next (%+v)", got, want, last)
			}
		}
		if last.JobID != j.ID {
			t.Fatalf("job.created names job %q, want %q", last.JobID, j.ID)
		}
		s.cancel() // the connection drops

		// While no one listens, more happens.
		a.do("POST", "/v1/products/"+pid+"/jobs/"+j.ID+"/cancel", nil).wantStatus(t, 200)
		a.do("PATCH", "/v1/products/"+pid+"/devices/d1", map[string]bool{"disabled": true}).wantStatus(t, 200)
		s2 := a.stream(t, "product_id="+pid, "Last-Event-ID", strconv.FormatInt(last.Seq, 10))
		var resumed []string
		for len(resumed) < 4 {
			e := s2.next(t)
			if e.Seq <= last.Seq {
				t.Fatalf("event %d again after resuming from %d", e.Seq, last.Seq)
			}
			resumed = append(resumed, e.Type)
		}
		// The cancel and its execution commit together; the engine closes
		// the job whenever it gets to it, before or after the disable.
		if r := fmt.Sprint(resumed); r != "[job.canceled execution.canceled job.closed device.disabled]" &&
			r != "[job.canceled execution.canceled device.disabled job.closed]" {
			t.Fatalf("after resuming: %v", resumed)
		}

		// The list: the same events, filterable, followed with after.
		var page struct {
			Items   []eventJSON `json:"items"`
			LastSeq int64       `json:"last_seq"`
		}
		a.do("GET", "/v1/events?product_id="+pid+"&type=execution.*,job.*", nil).decode(t, &page)
		var types []string
		for _, e := range page.Items {
			types = append(types, e.Type)
		}
		if fmt.Sprint(types) != "[job.created job.canceled execution.canceled job.closed]" || page.LastSeq != page.Items[len(page.Items)-1].Seq {
			t.Fatalf("filtered list: %v, last_seq %d", types, page.LastSeq)
		}
		a.do("GET", "/v1/events?product_id="+pid+"&type=device.*&after="+strconv.FormatInt(last.Seq, 10), nil).decode(t, &page)
		if len(page.Items) != 1 || page.Items[0].Type != "device.disabled" || page.Items[0].DeviceName != "d1" {
			t.Fatalf("devices' events after %d: %+v", last.Seq, page.Items)
		}
		for _, bad := range []string{"type=Execution", "type=a*", "after=-1", "after=x", "job_id=nope", "product_id=lower"} {
			a.do("GET", "/v1/events?"+bad, nil).wantProblem(t, 400, "invalid")
		}
		a.do("GET", "/v1/events/stream", nil, "Last-Event-ID", "abc").wantProblem(t, 400, "invalid")

		// A graceful shutdown ends open streams instead of waiting for
		// their clients.
		open := a.stream(t, "")
		stopped := make(chan error, 1)
		go func() { stopped <- a.stop() }()
		select {
		case err := <-stopped:
			if err != nil {
				t.Fatalf("shutdown with an open stream: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("shutdown waited for an open event stream")
		}
		select {
		case m := <-open.events:
			if m.err == nil {
				t.Fatalf("the stream sent %+v during shutdown, want its end", m)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the stream stayed open after shutdown")
		}
	})
}
