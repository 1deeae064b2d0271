package main

import (
	"io"
	"net/http"
	"testing"
)

// HEAD is answered like GET wherever GET is, without a body; a method a
// path does not take is 405 with Allow; OPTIONS says what a path takes.
func TestHTTPMethods(t *testing.T) {
	a := startApp(t, "sqlite", nil)
	a.do("POST", "/v1/products", map[string]string{"id": "METHOD0001", "name": "m"}).wantStatus(t, 201)
	call := func(method, path string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, a.HTTPURL()+path, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	get, body := call("GET", "/v1/products/METHOD0001")
	head, headBody := call("HEAD", "/v1/products/METHOD0001")
	if get.StatusCode != 200 || head.StatusCode != 200 || len(headBody) != 0 || head.Header.Get("Content-Type") != get.Header.Get("Content-Type") || len(body) == 0 {
		t.Fatalf("GET %d (%d bytes), HEAD %d (%d bytes, %s)", get.StatusCode, len(body), head.StatusCode, len(headBody), head.Header.Get("Content-Type"))
	}
	if r, _ := call("HEAD", "/healthz"); r.StatusCode != 200 {
		t.Errorf("HEAD /healthz: %d", r.StatusCode)
	}
	for _, c := range []struct{ method, path, allow string }{
		{"PUT", "/v1/products", "GET, HEAD, POST, OPTIONS"},
		{"DELETE", "/v1/products/METHOD0001", "GET, HEAD, OPTIONS"},
		{"POST", "/v1/products/METHOD0001/devices/d1", "GET, HEAD, PATCH, DELETE, OPTIONS"},
	} {
		r, b := call(c.method, c.path)
		if r.StatusCode != 405 || r.Header.Get("Allow") != c.allow || r.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s %s: %d Allow %q, want 405 Allow %q (%s)", c.method, c.path, r.StatusCode, r.Header.Get("Allow"), c.allow, b)
		}
		o, ob := call("OPTIONS", c.path)
		if o.StatusCode != 204 || o.Header.Get("Allow") != c.allow || len(ob) != 0 {
			t.Errorf("OPTIONS %s: %d Allow %q, want 204 Allow %q", c.path, o.StatusCode, o.Header.Get("Allow"), c.allow)
		}
	}
	if r, b := call("HEAD", "/v1/events/stream"); r.StatusCode != 200 || len(b) != 0 || r.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("HEAD of the event stream: %d, %d bytes", r.StatusCode, len(b))
	}
}
