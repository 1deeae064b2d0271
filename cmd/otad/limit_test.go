package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
)

// clientFrom is an HTTP client whose connections come from ip, an address
// of the loopback range, as another client machine's would.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// untilRefused sends requests until one is answered 429, at most 20 (with
// 1 request a second and bursts of 5, the 6th is refused unless the
// requests take seconds each), and returns the refusal.
func untilRefused(t *testing.T, what string, send func(i int) response) response {
	t.Helper()
	for i := range 20 {
		if r := send(i); r.StatusCode == http.StatusTooManyRequests {
			if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 {
				t.Fatalf("%s: 429 with Retry-After %q", what, r.Header.Get("Retry-After"))
			}
			t.Logf("%s: refused after %d requests, Retry-After %s", what, i, r.Header.Get("Retry-After"))
			return r
		} else if r.StatusCode >= 300 && r.StatusCode != 403 {
			t.Fatalf("%s: %d %s", what, r.StatusCode, r.body)
		}
	}
	t.Fatalf("%s: 20 requests and none refused", what)
	return response{}
}

// The console API limits requests per client address and per token,
// answering 429 with Retry-After; downloads with a valid URL are never
// limited, refused download URLs are, per address.
func TestRateLimit(t *testing.T) {
	metricsAddr := freeAddr(t)
	a := startApp(t, "sqlite", map[string]string{"OTAD_RATE_LIMIT": "1", "OTAD_RATE_BURST": "5",
		"OTAD_DOWNLOAD_ADDR": "127.0.0.1:0", "OTAD_METRICS_ADDR": metricsAddr})
	pid := "RATELIM001"
	a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "r"}).wantStatus(t, 201)
	f := postImage(t, a.HTTPURL(), pid, "1.0", strings.NewReader("image"), 5)
	download := downloadURL(t, a.app, f, time.Now().Add(time.Hour))
	token := download[strings.LastIndexByte(download, '/')+1:]
	other := "other-token-0123456789"
	if err := a.store.TokenCreate(context.Background(), &ota.APIToken{ID: "other", Name: "other", Scope: ota.ScopeRead, Origin: ota.TokenOriginAPI, Hash: ota.HashAPIToken(other), CreatedAt: ota.Now()}); err != nil {
		t.Fatal(err)
	}

	// Per address, before any token is looked at.
	from2 := clientFrom("127.0.0.2")
	r := untilRefused(t, "one address", func(int) response {
		return a.doWith(from2, "GET", "/healthz", nil, "Authorization", "")
	})
	r.wantProblem(t, 429, "too_many_requests")
	a.doWith(clientFrom("127.0.0.3"), "GET", "/healthz", nil).wantStatus(t, 200)

	// Per token, whatever address it comes from.
	untilRefused(t, "one token", func(i int) response {
		return a.doWith(clientFrom(fmt.Sprintf("127.0.1.%d", i+1)), "GET", "/v1/products", nil)
	}).wantProblem(t, 429, "too_many_requests")
	a.doWith(clientFrom("127.0.2.1"), "GET", "/v1/products", nil, "Authorization", "Bearer "+other).wantStatus(t, 200)

	// An address over its limit still downloads with a valid URL, on both
	// listeners, as every device behind one NAT address does.
	for _, base := range []string{a.HTTPURL(), "http://" + dialable(a.downloadLn.Addr().String())} {
		for range 10 {
			resp, err := from2.Get(base + "/" + token)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("download from a limited address on %s: %d", base, resp.StatusCode)
			}
		}
	}
	// Refused URLs are limited per address.
	from4 := clientFrom("127.0.0.4")
	untilRefused(t, "forged download URLs", func(int) response {
		resp, err := from4.Get("http://" + dialable(a.downloadLn.Addr().String()) + "/" + token[:30] + "x" + token[31:])
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return response{Response: resp}
	})

	// Refused requests take nothing: the address gets through again.
	waitFor(t, "the address's limit to refill", func() bool {
		return a.doWith(from2, "GET", "/healthz", nil, "Authorization", "").StatusCode == 200
	})
	for _, by := range []string{"address", "token"} {
		if n := metric(t, "http://"+metricsAddr, `otad_http_rate_limited_total{by="`+by+`"}`); n < 1 {
			t.Errorf("no refusal counted by %s", by)
		}
	}
	if n := metric(t, "http://"+metricsAddr, "otad_http_rate_limit_keys"); n < 4 {
		t.Errorf("%v keys tracked", n)
	}
}
