package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/otad/otad/internal/ota"
)

// eventPage is a page of the event log. LastSeq is where to continue from
// (?after=): the last event's sequence number, or the one asked after when
// the page is empty.
type eventPage struct {
	Items   []*ota.Event `json:"items"`
	LastSeq int64        `json:"last_seq"`
}

// eventParams reads the event log filters: ?after, ?type (comma-separated,
// a trailing .* keeps a prefix), ?product_id, ?job_id, ?device, ?limit.
func eventParams(r *http.Request) (ota.EventListParams, error) {
	var p ota.EventListParams
	_, limit, err := pageParams(r)
	if err != nil {
		return p, err
	}
	q := r.URL.Query()
	p.Limit = limit
	if v := q.Get("after"); v != "" {
		if p.After, err = strconv.ParseInt(v, 10, 64); err != nil || p.After < 0 {
			return p, ota.Errorf(ota.EINVALID, "after must be a sequence number")
		}
	}
	if v := q.Get("type"); v != "" {
		p.Types = strings.Split(v, ",")
		if err := ota.ValidateEventTypes(p.Types); err != nil {
			return p, err
		}
	}
	if p.ProductID = q.Get("product_id"); p.ProductID != "" {
		if err := ota.ValidateProductID(p.ProductID); err != nil {
			return p, err
		}
	}
	if p.JobID = q.Get("job_id"); p.JobID != "" {
		if err := ota.ValidateJobID(p.JobID); err != nil {
			return p, err
		}
	}
	if p.DeviceName = q.Get("device"); p.DeviceName != "" {
		if err := ota.ValidateDeviceName(p.DeviceName); err != nil {
			return p, err
		}
	}
	return p, nil
}

func (s *Server) eventList(w http.ResponseWriter, r *http.Request) error {
	p, err := eventParams(r)
	if err != nil {
		return err
	}
	evs, err := s.store.EventList(r.Context(), p)
	if err != nil {
		return err
	}
	page := eventPage{Items: evs, LastSeq: p.After}
	if page.Items == nil {
		page.Items = []*ota.Event{}
	}
	if len(evs) > 0 {
		page.LastSeq = evs[len(evs)-1].Seq
	}
	return writeJSON(w, http.StatusOK, page)
}

// eventStream serves the event log as Server-Sent Events: each event's id
// is its sequence number and its event name its type. It starts after
// Last-Event-ID (a reconnecting EventSource sends it), else ?after, else at
// the end of the log, and sends a comment as keep-alive when there is
// nothing to say. The store is polled: this replica's changes and every
// other's reach the stream alike.
func (s *Server) eventStream(w http.ResponseWriter, r *http.Request) error {
	p, err := eventParams(r)
	if err != nil {
		return err
	}
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		if p.After, err = strconv.ParseInt(v, 10, 64); err != nil || p.After < 0 {
			return ota.Errorf(ota.EINVALID, "Last-Event-ID must be a sequence number this server sent")
		}
	} else if r.URL.Query().Get("after") == "" {
		if p.After, err = s.store.EventLastSeq(r.Context()); err != nil {
			return err
		}
	}
	p.Limit = ota.MaxPageLimit
	rc := http.NewResponseController(w)
	// A stream reads nothing: without a deadline, the server's watch for
	// the client going away must not time out.
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // proxies must not hold events back
	w.WriteHeader(http.StatusOK)
	if isHead(r) {
		return nil
	}
	// Tell the browser how soon to reconnect, and flush the headers.
	fmt.Fprintf(w, "retry: 2000\n\n")
	if err := rc.Flush(); err != nil {
		return nil
	}
	poll := time.NewTicker(s.eventPoll)
	defer poll.Stop()
	lastWrite := time.Now()
	for {
		evs, err := s.store.EventList(r.Context(), p)
		if err != nil {
			if r.Context().Err() == nil {
				s.log.Warn("event stream: reading the log failed; the client reconnects", "err", err)
			}
			return nil
		}
		for _, e := range evs {
			data, _ := json.Marshal(e)
			if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Type, data); err != nil {
				return nil
			}
			p.After = e.Seq
		}
		if len(evs) > 0 || time.Since(lastWrite) >= s.eventKeepAlive {
			if len(evs) == 0 {
				fmt.Fprint(w, ": keep-alive\n\n")
			}
			if err := rc.Flush(); err != nil {
				return nil
			}
			lastWrite = time.Now()
		}
		if len(evs) == p.Limit {
			continue // more are waiting
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-s.streamsDone:
			return nil // the server shuts down; the client reconnects elsewhere
		case <-poll.C:
		}
	}
}
