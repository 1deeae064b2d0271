package main

import (
	"io"
	"net"
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
