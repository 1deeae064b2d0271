package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Event is one entry of otad's event log.
type Event struct {
	Seq        int64           `json:"seq"`
	Type       string          `json:"type"`
	ProductID  string          `json:"product_id,omitempty"`
	JobID      string          `json:"job_id,omitempty"`
	DeviceName string          `json:"device_name,omitempty"`
	Data       json.RawMessage `json:"data,omitempty"`
	CreatedAt  time.Time       `json:"created_at"`
	// Raw is the event as the server sent it.
	Raw json.RawMessage `json:"-"`
}

func decodeEvent(raw []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(raw, &e); err != nil {
		return e, fmt.Errorf("decoding an event: %w", err)
	}
	e.Raw = append(json.RawMessage(nil), raw...)
	return e, nil
}

// Events reads the event log after q's "after" (oldest first, filtered by
// q), calling fn with each, and stops after max events (0: up to the end
// of the log). It returns the sequence number to continue after.
func (c *Client) Events(ctx context.Context, q url.Values, max int, fn func(Event) error) (int64, error) {
	q = cloneValues(q)
	after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
	seen := 0
	for {
		size := pageSize(max, seen)
		q.Set("limit", strconv.Itoa(size))
		q.Set("after", strconv.FormatInt(after, 10))
		var page struct {
			Items   []json.RawMessage `json:"items"`
			LastSeq int64             `json:"last_seq"`
		}
		if err := c.Get(ctx, "/v1/events", q, &page); err != nil {
			return after, err
		}
		for _, raw := range page.Items {
			e, err := decodeEvent(raw)
			if err != nil {
				return after, err
			}
			if err := fn(e); err != nil {
				return after, err
			}
			seen++
		}
		after = page.LastSeq
		if len(page.Items) < size || (max > 0 && seen >= max) {
			return after, nil
		}
	}
}

// StreamOptions tell Stream's caller how the connection fares.
type StreamOptions struct {
	// Connected is called each time the stream is open (again): events
	// may have happened while it was not, so a caller that shows state
	// reads it anew.
	Connected func()
	// Dropped is called when the stream broke and is opened again after
	// wait.
	Dropped func(err error, wait time.Duration)
}

// Stream follows the event log's Server-Sent Events (GET
// /v1/events/stream, filtered by q, starting after q's "after" or at the
// end of the log), calling fn with each event until ctx ends or fn returns
// an error. A broken connection, or a server that is away or unavailable,
// is retried, resuming with Last-Event-ID after the last event seen; an
// answer that retrying cannot change (a bad filter, a bad token) ends it.
func (c *Client) Stream(ctx context.Context, q url.Values, opts StreamOptions, fn func(Event) error) error {
	var last int64 = -1
	retry := 2 * time.Second
	failures := 0
	for {
		got, err := c.streamOnce(ctx, q, last, opts, &retry, func(e Event) error {
			last = e.Seq
			return fn(e)
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var stop *fnError
		if errors.As(err, &stop) {
			return stop.err
		}
		var p *Problem
		if errors.As(err, &p) && p.Status != http.StatusServiceUnavailable && p.Status < 500 && p.Status != http.StatusTooManyRequests {
			return err
		}
		if got {
			failures = 0
		}
		failures++
		wait := min(retry<<(min(failures, 5)-1), 30*time.Second)
		if err == nil {
			err = errors.New("the server closed the stream")
		}
		if opts.Dropped != nil {
			opts.Dropped(err, wait)
		}
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// fnError is an error of Stream's fn, which ends the stream.
type fnError struct{ err error }

func (e *fnError) Error() string { return e.err.Error() }

// streamOnce reads one connection of the stream; got says whether it
// opened.
func (c *Client) streamOnce(ctx context.Context, q url.Values, last int64, opts StreamOptions, retry *time.Duration, fn func(Event) error) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h := http.Header{"Accept": {"text/event-stream"}}
	if last >= 0 {
		h.Set("Last-Event-ID", strconv.FormatInt(last, 10))
	}
	// Stream's own loop retries, with its backoff and its Dropped report.
	resp, err := c.send(ctx, Request{Method: http.MethodGet, Path: "/v1/events/stream", Query: q, Header: h}, -1)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if opts.Connected != nil {
		opts.Connected()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var data strings.Builder
	for sc.Scan() {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if line == "" {
			if data.Len() > 0 {
				e, err := decodeEvent([]byte(data.String()))
				if err != nil {
					return true, err
				}
				if err := fn(e); err != nil {
					return true, &fnError{err}
				}
				data.Reset()
			}
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue // a comment: keep-alive
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(value)
		case "retry":
			if ms, err := strconv.Atoi(value); err == nil && ms > 0 {
				*retry = time.Duration(ms) * time.Millisecond
			}
		}
		// id and event are in the data too.
	}
	return true, sc.Err()
}
