package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cutOff reads conn until the server closes it and says how long that
// took; a connection still open after 30s fails the test.
func cutOff(t *testing.T, what string, conn net.Conn) (time.Duration, []byte) {
	t.Helper()
	start := time.Now()
	conn.SetReadDeadline(start.Add(30 * time.Second))
	b, err := io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: the connection was still open after 30s (%.60q)", what, b)
	}
	took := time.Since(start)
	t.Logf("%s: cut off after %s: %.40q", what, took.Round(10*time.Millisecond), b)
	return took, b
}

// dialSend opens a connection to addr and writes req.
func dialSend(t *testing.T, addr, req string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	return conn
}

// A client that sends headers and part of a body, then nothing, is cut
// off within the body read timeout, with or without a token, and so is a
// firmware upload that stops sending.
func TestStalledBodyCutOff(t *testing.T) {
	const timeout = time.Second
	a := startApp(t, "sqlite", map[string]string{"OTAD_BODY_READ_TIMEOUT": timeout.String()})
	addr := strings.TrimPrefix(a.HTTPURL(), "http://")
	for _, auth := range []string{"", "Authorization: Bearer " + testToken + "\r\n"} {
		// The server answers (401, or 400 for the truncated body) and
		// closes; the client never sends the rest.
		conn := dialSend(t, addr, "POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+auth+
			"Content-Length: 1000\r\n\r\n{\"id\": \"STALL00001\"")
		if took, _ := cutOff(t, fmt.Sprintf("JSON body, token %v", auth != ""), conn); took > timeout+10*time.Second {
			t.Errorf("cut off after %s with a %s body read timeout", took, timeout)
		}
	}
	a.do("GET", "/v1/products/STALL00001", nil).wantProblem(t, 404, "not_found")

	a.do("POST", "/v1/products", map[string]string{"id": "STALL00002", "name": "s"}).wantStatus(t, 201)
	conn := stallUpload(t, addr, "STALL00002", "1.0", 64<<10)
	took, answer := cutOff(t, "upload", conn)
	if took > timeout+10*time.Second {
		t.Errorf("upload cut off after %s with a %s body read timeout", took, timeout)
	}
	if !strings.HasPrefix(string(answer), "HTTP/1.1 400") {
		t.Errorf("a stalled upload is answered %.60q", answer)
	}
	a.do("GET", "/v1/products/STALL00002/firmware/1.0", nil).wantProblem(t, 404, "not_found")
	waitFor(t, "no upload in progress", func() bool { return metric(t, a.HTTPURL(), "otad_http_uploads_in_progress") == 0 })
}

// Every HTTP listener (console API, downloads, metrics) cuts off a client
// whose headers do not arrive in OTAD_HEADER_TIMEOUT, a connection idle
// for OTAD_IDLE_TIMEOUT, and a body that stalls; and answers headers over
// 64 KiB with 431.
func TestListenerLimits(t *testing.T) {
	const timeout = time.Second
	downloadAddr, metricsAddr := freeAddr(t), freeAddr(t)
	a := startApp(t, "sqlite", map[string]string{
		"OTAD_DOWNLOAD_ADDR": downloadAddr, "OTAD_METRICS_ADDR": metricsAddr,
		"OTAD_HEADER_TIMEOUT": timeout.String(), "OTAD_IDLE_TIMEOUT": timeout.String(), "OTAD_BODY_READ_TIMEOUT": timeout.String(),
	})
	bound := timeout + 10*time.Second
	for _, l := range []struct{ name, addr, path string }{
		{"http", strings.TrimPrefix(a.HTTPURL(), "http://"), "/healthz"},
		{"download", downloadAddr, "/no-such-download"},
		{"metrics", metricsAddr, "/metrics"},
	} {
		t.Run(l.name, func(t *testing.T) {
			// Headers that never end.
			conn := dialSend(t, l.addr, "GET "+l.path+" HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
			if took, _ := cutOff(t, "unfinished headers", conn); took > bound {
				t.Errorf("unfinished headers cut off after %s with a %s header timeout", took, timeout)
			}
			// One request answered, then nothing: the idle connection closes.
			conn = dialSend(t, l.addr, "GET "+l.path+" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+testToken+"\r\n\r\n")
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Close {
				t.Fatalf("the server closed a keep-alive connection at once (%d)", resp.StatusCode)
			}
			start := time.Now()
			conn.SetReadDeadline(start.Add(30 * time.Second))
			if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
				t.Fatalf("idle connection: read %d bytes, %v; want the server to close it", n, err)
			}
			if took := time.Since(start); took > bound {
				t.Errorf("idle connection closed after %s with a %s idle timeout", took, timeout)
			} else {
				t.Logf("idle connection closed after %s", took.Round(10*time.Millisecond))
			}
			// A body that stalls.
			conn = dialSend(t, l.addr, "POST "+l.path+" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
			if took, _ := cutOff(t, "stalled body", conn); took > bound {
				t.Errorf("stalled body cut off after %s with a %s body read timeout", took, timeout)
			}
			// Headers too large.
			conn = dialSend(t, l.addr, "GET "+l.path+" HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("b", 100<<10)+"\r\n\r\n")
			if _, answer := cutOff(t, "large headers", conn); !strings.HasPrefix(string(answer), "HTTP/1.1 431") {
				t.Errorf("100 KiB of headers answered %.60q, want 431", answer)
			}
		})
	}
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

// Stalled uploads cost little memory each: the real otad binary, on local
// files and on S3, holds stalledUploads uploads that each sent their
// headers and 1 KiB of a 10 MiB image, and its RSS and Go heap grow by
// less than stalledUploadMax per upload. It was about 4.4 MiB of heap:
// every upload allocated its whole hashing pipeline (4 MiB) and a local
// upload its 256 KiB copy buffer up front. Measured since: about 50 KiB of
// RSS and 30 to 223 KiB of heap in use per stalled upload, on both
// backends. The heap in use counts garbage not yet collected, as much as
// the collector's pacing allows at that moment, so its bound is wider
// (stalledHeapMax), still far under the 4.4 MiB it catches.
func TestStalledUploadsMemory(t *testing.T) {
	const (
		stalledUploads   = 400
		stalledUploadMax = 192 << 10
		stalledHeapMax   = 768 << 10
	)
	for _, backend := range []string{"local", "s3"} {
		t.Run(backend, func(t *testing.T) {
			env := map[string]string{
				"OTAD_HTTP_ADDR": "127.0.0.1:0", "OTAD_MQTT_ADDR": "127.0.0.1:0",
				"OTAD_DATA_DIR": t.TempDir(), "OTAD_API_TOKEN": testToken,
				"OTAD_MAX_UPLOADS": "1000", "OTAD_BODY_READ_TIMEOUT": "10m",
			}
			if backend == "s3" {
				for k, v := range s3Env(t) {
					env[k] = v
				}
				for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_EC2_METADATA_DISABLED"} {
					env[k] = os.Getenv(k)
				}
			}
			p := startProcess(t, env)
			c := &consoleClient{t: t, base: p.httpURL}
			pid := "STALLMEM01"
			c.call("POST", "/v1/products", strings.NewReader(`{"id": "`+pid+`", "name": "m"}`), 201, nil)
			addr := strings.TrimPrefix(p.httpURL, "http://")
			inProgress := func() float64 { return metric(t, p.httpURL, "otad_http_uploads_in_progress") }
			// Warm up every path an upload takes, complete and abandoned.
			for i := range 3 {
				c.call("POST", "/v1/products/"+pid+"/firmware?version=warm"+strconv.Itoa(i), strings.NewReader(strings.Repeat("w", 1<<20)), 201, nil)
				stallUpload(t, addr, pid, "gone"+strconv.Itoa(i), 1024).Close()
			}
			waitFor(t, "the warm-up uploads to end", func() bool { return inProgress() == 0 })
			proc := strconv.Itoa(p.cmd.Process.Pid)
			heap := func() int64 { return int64(metric(t, p.httpURL, "go_memstats_heap_inuse_bytes")) }
			before, heapBefore := procStatus(t, proc, "VmRSS"), heap()
			start := time.Now()
			for i := range stalledUploads {
				stallUpload(t, addr, pid, "stalled"+strconv.Itoa(i), 1024)
			}
			waitFor(t, "every upload in progress", func() bool { return inProgress() == stalledUploads })
			after, heapAfter := procStatus(t, proc, "VmRSS"), heap()
			per, heapPer := (after-before)/stalledUploads, (heapAfter-heapBefore)/stalledUploads
			t.Logf("%s: RSS %d MiB before, %d MiB with %d stalled uploads (%s to open them): %d KiB each; Go heap in use %d KiB each",
				backend, before>>20, after>>20, stalledUploads, time.Since(start).Round(time.Millisecond), per>>10, heapPer>>10)
			// The heap counts what is allocated, touched or not: memory the
			// kernel has not handed out yet still becomes RSS once reused.
			if per > stalledUploadMax || heapPer > stalledHeapMax {
				t.Errorf("each stalled upload takes %d KiB of RSS and %d KiB of heap, more than %d and %d KiB", per>>10, heapPer>>10, stalledUploadMax>>10, stalledHeapMax>>10)
			}
		})
	}
}
