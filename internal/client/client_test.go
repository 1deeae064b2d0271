package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestProblemError(t *testing.T) {
	for _, c := range []struct {
		p    Problem
		want string
	}{
		{Problem{Status: 409, Code: "conflict", Detail: "device already exists"}, "409 conflict: device already exists"},
		{Problem{Status: 502, Detail: "bad\ngateway"}, "502 bad gateway: bad gateway"},
		{Problem{Status: 409, Code: "conflict", Detail: "devices are in another active job",
			Extra: json.RawMessage(`{"devices":["a","b","c","d","e","f"]}`)},
			"409 conflict: devices are in another active job (6 devices: a, b, c, d, e, …)"},
	} {
		if got := c.p.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
}

func TestPath(t *testing.T) {
	if got := Path("/v1/products", "P", "firmware", "1.0/beta 2"); got != "/v1/products/P/firmware/1.0%2Fbeta%202" {
		t.Fatal(got)
	}
}

func TestRetry(t *testing.T) {
	type hit struct{ method, body string }
	serve := func(t *testing.T, answer func(n int, w http.ResponseWriter)) (*Client, *[]hit) {
		var mu sync.Mutex
		var hits []hit
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			hits = append(hits, hit{r.Method, string(b)})
			n := len(hits)
			mu.Unlock()
			answer(n, w)
		}))
		t.Cleanup(srv.Close)
		return &Client{BaseURL: srv.URL}, &hits
	}
	refuse := func(status int, after string) func(int, http.ResponseWriter) {
		return func(_ int, w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("Retry-After", after)
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"status":%d,"title":"refused","code":"too_many_requests"}`, status)
		}
	}
	t.Run("429 then answered, body sent again", func(t *testing.T) {
		c, hits := serve(t, func(n int, w http.ResponseWriter) {
			if n < 3 {
				refuse(http.StatusTooManyRequests, "0")(n, w)
				return
			}
			w.Write([]byte(`{"ok":true}`))
		})
		var out struct{ OK bool }
		if err := c.Do(context.Background(), Request{Method: http.MethodPost, Path: "/v1/x", JSON: map[string]int{"a": 1}}, &out); err != nil || !out.OK {
			t.Fatalf("Do: %v, %+v", err, out)
		}
		if len(*hits) != 3 || (*hits)[2].body != `{"a":1}` {
			t.Fatalf("hits %+v, want 3 with the body each time", *hits)
		}
	})
	t.Run("gives up after Retries", func(t *testing.T) {
		c, hits := serve(t, refuse(http.StatusTooManyRequests, "0"))
		c.Retries = 2
		var p *Problem
		if err := c.Get(context.Background(), "/v1/x", nil, nil); !errors.As(err, &p) || p.Status != http.StatusTooManyRequests {
			t.Fatalf("err %v, want the 429 problem", err)
		}
		if len(*hits) != 3 {
			t.Fatalf("%d requests, want 3", len(*hits))
		}
	})
	t.Run("not sent again", func(t *testing.T) {
		for name, tc := range map[string]struct {
			status  int
			r       Request
			retries int
		}{
			"503 to a POST":    {http.StatusServiceUnavailable, Request{Method: http.MethodPost, Path: "/v1/x", JSON: 1}, 0},
			"a body read once": {http.StatusTooManyRequests, Request{Method: http.MethodPut, Path: "/v1/x", Body: io.MultiReader(strings.NewReader("blob")), ContentLength: 4}, 0},
			"400":              {http.StatusBadRequest, Request{Method: http.MethodGet, Path: "/v1/x"}, 0},
			"retries off (-1)": {http.StatusTooManyRequests, Request{Method: http.MethodGet, Path: "/v1/x"}, -1},
		} {
			t.Run(name, func(t *testing.T) {
				c, hits := serve(t, refuse(tc.status, "0"))
				c.Retries = tc.retries
				var p *Problem
				if err := c.Do(context.Background(), tc.r, nil); !errors.As(err, &p) || p.Status != tc.status {
					t.Fatalf("err %v, want the %d problem", err, tc.status)
				}
				if len(*hits) != 1 {
					t.Fatalf("%d requests, want 1", len(*hits))
				}
			})
		}
	})
	t.Run("503 to a GET is sent again", func(t *testing.T) {
		c, hits := serve(t, func(n int, w http.ResponseWriter) {
			if n == 1 {
				refuse(http.StatusServiceUnavailable, "0")(n, w)
				return
			}
			w.Write([]byte(`{}`))
		})
		if err := c.Get(context.Background(), "/v1/x", nil, nil); err != nil || len(*hits) != 2 {
			t.Fatalf("err %v after %d requests, want nil after 2", err, len(*hits))
		}
	})
	t.Run("the wait ends with the context", func(t *testing.T) {
		refused := make(chan struct{})
		c, _ := serve(t, func(n int, w http.ResponseWriter) {
			refuse(http.StatusTooManyRequests, "30")(n, w)
			if n == 1 {
				close(refused)
			}
		})
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- c.Get(ctx, "/v1/x", nil, nil) }()
		<-refused
		cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err %v, want context.Canceled", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Get still waiting after its context ended")
		}
	})
}

// The event stream is retried by Stream's own loop, which reports each
// drop, not inside the request as other calls are: a watch that went
// quiet for minutes of hidden retries would look hung.
func TestStreamReportsRefusals(t *testing.T) {
	var mu sync.Mutex
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		n := requests
		mu.Unlock()
		if n == 1 {
			w.Header().Set("Content-Type", "application/problem+json")
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"status":429,"title":"refused","code":"too_many_requests"}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Write([]byte("retry: 10\ndata: {\"seq\":1,\"type\":\"job.created\",\"created_at\":\"2026-12-03T00:00:00Z\"}\n\n"))
	}))
	t.Cleanup(srv.Close)
	c := &Client{BaseURL: srv.URL}
	var drops []error
	errDone := errors.New("done")
	err := c.Stream(context.Background(), nil, StreamOptions{Dropped: func(err error, _ time.Duration) { drops = append(drops, err) }},
		func(e Event) error {
			if e.Seq != 1 {
				t.Errorf("event %+v, want seq 1", e)
			}
			return errDone
		})
	if !errors.Is(err, errDone) {
		t.Fatalf("Stream: %v, want the callback's error", err)
	}
	var p *Problem
	if len(drops) != 1 || !errors.As(drops[0], &p) || p.Status != http.StatusTooManyRequests {
		t.Fatalf("drops reported %v, want the one 429", drops)
	}
	mu.Lock()
	defer mu.Unlock()
	if requests != 2 {
		t.Fatalf("%d requests, want 2", requests)
	}
}
