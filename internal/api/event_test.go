package api_test

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/otad/otad/internal/api"
	"github.com/otad/otad/internal/firmware/firmwaretest"
)

// A stream with nothing to say sends keep-alive comments, so proxies and
// clients see a live connection.
func TestEventStreamKeepAlive(t *testing.T) {
	s := newFWServerWith(t, firmwaretest.Local(t), 0, func(c *api.Config) {
		c.EventPoll, c.EventKeepAlive = 10*time.Millisecond, 50*time.Millisecond
	}, nil)
	req, err := http.NewRequestWithContext(t.Context(), "GET", s.url+"/v1/events/stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+fwToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	got := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), ": keep-alive") {
				got <- sc.Text()
				return
			}
		}
	}()
	select {
	case <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("no keep-alive within 30s")
	}
}
