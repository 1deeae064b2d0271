package main

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A client that sends headers and part of a body, then nothing, is cut
// off within the body read timeout, with or without a token.
func TestStalledBodyCutOff(t *testing.T) {
	a := startApp(t, "sqlite", map[string]string{"OTAD_BODY_READ_TIMEOUT": "1s"})
	for _, auth := range []string{"", "Authorization: Bearer " + testToken + "\r\n"} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(a.HTTPURL(), "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		start := time.Now()
		_, err = io.WriteString(conn, "POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+auth+
			"Content-Length: 1000\r\n\r\n{\"id\": \"STALL00001\"")
		if err != nil {
			t.Fatal(err)
		}
		// The server answers (401, or 400 for the truncated body) and
		// closes; the client never sends the rest. Read until EOF.
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(conn)
		took := time.Since(start)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("token %v: the connection was still open after 30s (%q)", auth != "", b)
		}
		t.Logf("token %v: cut off after %s: %.40q", auth != "", took.Round(10*time.Millisecond), b)
		if took > 15*time.Second {
			t.Errorf("cut off after %s with a 1s body read timeout", took)
		}
	}
	a.do("GET", "/v1/products/STALL00001", nil).wantProblem(t, 404, "not_found")
}

// stallUpload opens a connection to addr and sends the headers of a
// firmware upload announcing 10 MiB and the first sent bytes of its body,
// then nothing more: the upload waits for the rest.
func stallUpload(t testing.TB, addr, pid, version string, sent int) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_, err = io.WriteString(conn, "POST /v1/products/"+pid+"/firmware?version="+version+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+testToken+
		"\r\nContent-Type: application/octet-stream\r\nContent-Length: 10485760\r\n\r\n"+strings.Repeat("x", sent))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// metric reads one sample of otad's metrics at base (the console API,
// with the token), such as otad_http_uploads_in_progress.
func metric(t testing.TB, base, sample string) float64 {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("metrics: %d %v", resp.StatusCode, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %q", sample, line)
			}
			return f
		}
	}
	t.Fatalf("no metric %s", sample)
	return 0
}

// Uploads past OTAD_MAX_UPLOADS are answered 429 with Retry-After while
// the others go on; a slot is free again once an upload ends. The test
// waits on the server's own count of uploads in progress.
func TestUploadCap(t *testing.T) {
	a := startApp(t, "sqlite", map[string]string{"OTAD_MAX_UPLOADS": "2"})
	pid := "UPCAP00001"
	a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "cap"}).wantStatus(t, 201)
	addr := strings.TrimPrefix(a.HTTPURL(), "http://")
	held := []net.Conn{stallUpload(t, addr, pid, "1.0", 1000), stallUpload(t, addr, pid, "1.1", 1000)}
	waitFor(t, "two uploads in progress", func() bool { return metric(t, a.HTTPURL(), "otad_http_uploads_in_progress") == 2 })

	refused := a.do("POST", "/v1/products/"+pid+"/firmware?version=2.0", []byte("image"), "Content-Type", "application/octet-stream")
	p := refused.wantProblem(t, 429, "too_many_requests")
	if ra, err := strconv.Atoi(refused.Header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("429 with Retry-After %q", refused.Header.Get("Retry-After"))
	}
	t.Logf("refused: %v", p["detail"])

	held[0].Close() // the held upload fails and frees its slot
	waitFor(t, "one upload in progress", func() bool { return metric(t, a.HTTPURL(), "otad_http_uploads_in_progress") == 1 })
	a.do("POST", "/v1/products/"+pid+"/firmware?version=2.0", []byte("image"), "Content-Type", "application/octet-stream").wantStatus(t, 201)
	held[1].Close()
	waitFor(t, "no upload in progress", func() bool { return metric(t, a.HTTPURL(), "otad_http_uploads_in_progress") == 0 })
	for _, v := range []string{"1.0", "1.1"} {
		a.do("GET", "/v1/products/"+pid+"/firmware/"+v, nil).wantProblem(t, 404, "not_found")
	}
}
