package api_test

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/otad/otad/internal/api"
	"github.com/otad/otad/internal/firmware/firmwaretest"
)

// The console's files are fixed routes beside the download tokens on the
// same listener: / and /ui/{file} are the console's, HEAD included, and
// every other single segment is still a download token.
func TestConsoleRoutes(t *testing.T) {
	files := fstest.MapFS{
		"index.html":   {Data: []byte("<!doctype html><title>otad</title>")},
		"main.js":      {Data: []byte("export {};")},
		"console.css":  {Data: []byte("body{}")},
		"sub/skip.js":  {Data: []byte("not served: the console is flat")},
		".hidden.js":   {Data: []byte("not served")},
		"favicon.svg":  {Data: []byte("<svg/>")},
		"notes.README": {Data: []byte("served as application/octet-stream")},
	}
	s := newFWServerWith(t, firmwaretest.Local(t), 0, func(c *api.Config) {
		c.Console = files
		c.Download = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "download "+r.URL.Path) })
	}, nil)
	get := func(method, path string, header ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, s.url+path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	for _, c := range []struct {
		method, path string
		status       int
		ctype, body  string
	}{
		{"GET", "/", 200, "text/html; charset=utf-8", "<!doctype html><title>otad</title>"},
		{"HEAD", "/", 200, "text/html; charset=utf-8", ""},
		{"GET", "/ui/main.js", 200, "text/javascript; charset=utf-8", "export {};"},
		{"HEAD", "/ui/main.js", 200, "text/javascript; charset=utf-8", ""},
		{"GET", "/ui/console.css", 200, "text/css; charset=utf-8", "body{}"},
		{"GET", "/ui/favicon.svg", 200, "image/svg+xml", "<svg/>"},
		{"GET", "/ui/notes.README", 200, "application/octet-stream", "served as application/octet-stream"},
		{"GET", "/ui/index.html", 200, "text/html; charset=utf-8", "<!doctype html><title>otad</title>"},
		{"GET", "/ui/nothing.js", 404, "application/problem+json", `"code":"not_found"`},
		{"GET", "/ui/.hidden.js", 404, "application/problem+json", `"code":"not_found"`},
		{"GET", "/ui/sub/skip.js", 404, "application/problem+json", `"code":"not_found"`},
		{"GET", "/ui/sub", 404, "application/problem+json", `"code":"not_found"`},
		{"POST", "/", 405, "application/problem+json", `"code":"method_not_allowed"`},
		{"GET", "/ui", 200, "text/plain; charset=utf-8", "download /ui"},
		{"GET", "/AbCdEf0123", 200, "text/plain; charset=utf-8", "download /AbCdEf0123"},
	} {
		resp, body := get(c.method, c.path)
		if resp.StatusCode != c.status || resp.Header.Get("Content-Type") != c.ctype || !strings.Contains(body, c.body) || c.body == "" && body != "" {
			t.Errorf("%s %s: %d %q %q; want %d %q %q", c.method, c.path, resp.StatusCode, resp.Header.Get("Content-Type"), body, c.status, c.ctype, c.body)
		}
		// What the console's handler answers carries its headers; the
		// router's own refusals (a deeper path, another method) do not.
		if c.method != "POST" && (c.path == "/" || strings.HasPrefix(c.path, "/ui/") && strings.Count(c.path, "/") == 2) {
			h := resp.Header
			if !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") || h.Get("X-Content-Type-Options") != "nosniff" ||
				h.Get("Referrer-Policy") != "no-referrer" || h.Get("X-Frame-Options") != "DENY" {
				t.Errorf("%s %s: security headers %v", c.method, c.path, h)
			}
		}
	}
	// An unchanged file is answered 304 from its ETag.
	resp, _ := get("GET", "/ui/main.js")
	etag := resp.Header.Get("ETag")
	if etag == "" || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("ETag %q, Cache-Control %q", etag, resp.Header.Get("Cache-Control"))
	}
	if resp, body := get("GET", "/ui/main.js", "If-None-Match", etag); resp.StatusCode != 304 || body != "" {
		t.Fatalf("revalidation: %d %q", resp.StatusCode, body)
	}

	// Console files without a page are refused when the server is built.
	reg := prometheus.NewRegistry()
	_, err := api.New(api.Config{Logger: slog.New(slog.DiscardHandler), Registry: reg, Gatherer: reg, Console: fstest.MapFS{"main.js": {Data: []byte("x")}}})
	if err == nil || !strings.Contains(err.Error(), "index.html") {
		t.Fatalf("console without index.html: %v", err)
	}
}
