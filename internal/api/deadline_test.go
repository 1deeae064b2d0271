package api

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestReadDeadlineLiftedAfterBody: a request that runs longer than the
// body read timeout, with a body read to its end or without one, is not
// canceled (net/http cancels a request whose connection read times out
// while the handler runs); a body that stalls still times out.
func TestReadDeadlineLiftedAfterBody(t *testing.T) {
	const bodyRead = 100 * time.Millisecond
	s := &Server{bodyRead: bodyRead}
	srv := httptest.NewServer(s.readDeadline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusRequestTimeout)
			return
		}
		// Outlast the body's deadline several times over.
		select {
		case <-time.After(5 * bodyRead):
			io.WriteString(w, "ok")
		case <-r.Context().Done():
			http.Error(w, "canceled", http.StatusInternalServerError)
		}
	})))
	defer srv.Close()
	for _, c := range []struct{ method, body string }{{"POST", `{"a": 1}`}, {"POST", ""}, {"GET", ""}} {
		req, err := http.NewRequest(c.method, srv.URL, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s with body %q: %v", c.method, c.body, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("%s with body %q: %d %s, want 200 ok", c.method, c.body, res.StatusCode, b)
		}
	}
	// A body that never arrives is cut off after bodyRead.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, err := http.NewRequest("POST", srv.URL, pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = 10
	go pw.Write([]byte("abc"))
	res, err := http.DefaultClient.Do(req)
	if err == nil {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusRequestTimeout {
			t.Errorf("stalled body: %d %s, want 408", res.StatusCode, b)
		}
	}
}
