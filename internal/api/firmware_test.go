package api_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/otad/otad/internal/api"
	"github.com/otad/otad/internal/firmware"
	"github.com/otad/otad/internal/firmware/firmwaretest"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/sqlite"
)

const (
	fwToken   = "firmware-test-token-0123456789"
	fwProduct = "LAMP000001"
	partSize  = firmwaretest.MinPartSize
)

// fwServer is the real firmware stack: the console API and the download
// handler on their own loopback listeners, a real SQLite store and a real
// blob backend.
type fwServer struct {
	t      testing.TB
	url    string // console API
	dlURL  string // download listener
	store  *sqlite.Store
	be     *firmwaretest.Backend
	signer *ota.DownloadSigner
	// finished and dlFinished receive every console and download request
	// once its handler returned, so tests can wait for a server-side
	// outcome without sleeping.
	finished, dlFinished chan string
}

func newFWServer(t testing.TB, be *firmwaretest.Backend, maxSize int64) *fwServer {
	t.Helper()
	return newFWServerWith(t, be, maxSize, nil, nil)
}

// newFWServerWith lets a test adjust the API's and the download handler's
// configuration.
func newFWServerWith(t testing.TB, be *firmwaretest.Backend, maxSize int64, apiConfig func(*api.Config), dlConfig func(*api.DownloadConfig)) *fwServer {
	t.Helper()
	ctx := t.Context()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "otad.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.TokenCreate(ctx, &ota.APIToken{ID: "t1", Name: "test", Scope: ota.ScopeAdmin, Hash: ota.HashAPIToken(fwToken)}); err != nil {
		t.Fatal(err)
	}
	if err := st.ProductCreate(ctx, &ota.Product{ID: fwProduct, Name: "Lamp"}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))

	var dl http.Handler
	dlFinished := make(chan string, 64)
	dlSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dl.ServeHTTP(w, r)
		select {
		case dlFinished <- r.Method + " " + r.URL.Path:
		default:
		}
	}))
	t.Cleanup(dlSrv.Close)
	signer, err := ota.NewDownloadSigner(dlSrv.URL, []byte("download-secret-for-tests-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	dc := api.DownloadConfig{Logger: log, Signer: signer, Store: st, Blobs: be.Blobs, Registry: reg}
	if dlConfig != nil {
		dlConfig(&dc)
	}
	d, err := api.NewDownload(dc)
	if err != nil {
		t.Fatal(err)
	}
	dl = d
	ac := api.Config{Logger: log, Store: st, Blobs: be.Blobs, MaxFirmwareSize: maxSize, Registry: reg, Gatherer: reg}
	if apiConfig != nil {
		apiConfig(&ac)
	}
	srv, err := api.New(ac)
	if err != nil {
		t.Fatal(err)
	}
	finished := make(chan string, 64)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		srv.ServeHTTP(w, r)
		select {
		case finished <- r.Method + " " + r.URL.Path:
		default:
		}
	}))
	t.Cleanup(ts.Close)
	return &fwServer{t: t, url: ts.URL, dlURL: dlSrv.URL, store: st, be: be, signer: signer,
		finished: finished, dlFinished: dlFinished}
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// testClient waits for the server's answer to "Expect: 100-continue"
// however loaded the machine, so a refused body is never sent.
var testClient = &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}

type result struct {
	status int
	header http.Header
	body   []byte
}

func (r result) problemCode(t *testing.T) string {
	t.Helper()
	var p struct{ Code string }
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("answer %d is not problem+json: %q", r.status, r.body)
	}
	return p.Code
}

// do sends a console request with the test token. body may be nil, a
// []byte (sent with its length) or an io.Reader (sent chunked, length
// unknown). JSON answers are validated against the OpenAPI document.
func (s *fwServer) do(method, path string, body any, headers ...string) result {
	s.t.Helper()
	var rd io.Reader
	var raw []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		raw, rd = b, bytes.NewReader(b)
	case io.Reader:
		rd = b
	}
	req, err := http.NewRequestWithContext(s.t.Context(), method, s.url+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	if _, ok := body.(io.Reader); ok {
		req.ContentLength = -1
	}
	req.Header.Set("Authorization", "Bearer "+fwToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := testClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	validateOpenAPI(s.t, req, raw, resp, got)
	return result{resp.StatusCode, resp.Header, got}
}

var openAPIRouter = sync.OnceValues(func() (routers.Router, error) {
	doc, err := api.LoadOpenAPI()
	if err != nil {
		return nil, err
	}
	return legacy.NewRouter(doc)
})

func validateOpenAPI(t testing.TB, req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) {
	t.Helper()
	router, err := openAPIRouter()
	if err != nil {
		t.Fatal(err)
	}
	vreq := req.Clone(context.Background())
	vreq.Body = io.NopCloser(bytes.NewReader(reqBody))
	route, params, err := router.FindRoute(vreq)
	if err != nil {
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed ||
			strings.Contains(strings.ToLower(req.URL.RawPath), "%2f") {
			return // refused as it should be, or a path the validator's router decodes before matching
		}
		t.Fatalf("%s %s is not in the OpenAPI document: %v", req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, ExcludeRequestBody: reqBody == nil}}
	if resp.StatusCode < 400 {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			t.Fatalf("accepted request does not match the OpenAPI document: %v", err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(respBody)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Fatalf("response to %s %s does not match the OpenAPI document: %v", req.Method, req.URL.Path, err)
	}
}

// upload stores data as version and returns the firmware the API answered.
func (s *fwServer) upload(version string, data []byte) *ota.Firmware {
	s.t.Helper()
	r := s.do("POST", "/v1/products/"+fwProduct+"/firmware?version="+url.QueryEscape(version), data)
	if r.status != http.StatusCreated {
		s.t.Fatalf("upload %s: %d %s", version, r.status, r.body)
	}
	var f ota.Firmware
	if err := json.Unmarshal(r.body, &f); err != nil {
		s.t.Fatal(err)
	}
	// The answer hides the blob key; the store has it.
	row, err := s.store.FirmwareGet(s.t.Context(), fwProduct, version)
	if err != nil {
		s.t.Fatal(err)
	}
	f.BlobKey = row.BlobKey
	return &f
}

// get downloads from a URL, with a Range header when rng is set.
func get(t *testing.T, method, rawURL string, headers ...string) result {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Set explicitly, so the client would not hide a compressed answer.
	req.Header.Set("Accept-Encoding", "gzip, deflate, br")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, rawURL, err)
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" {
		t.Errorf("download answered with Content-Encoding %q", ce)
	}
	if cl := resp.Header.Get("Content-Length"); cl != "" && method == "GET" && cl != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length %s but %d bytes came", cl, len(body))
	}
	return result{resp.StatusCode, resp.Header, body}
}

func image(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed, 'f', 'w'}).Read(b)
	return b
}

func hexMD5(b []byte) string    { s := md5.Sum(b); return hex.EncodeToString(s[:]) }
func hexSHA256(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestFirmwareUploadAndDownload(t *testing.T) {
	firmwaretest.Run(t, func(t *testing.T, be *firmwaretest.Backend) {
		s := newFWServer(t, be, 0)
		data := image(2*partSize+777, 1)
		size := int64(len(data))
		r := s.do("POST", "/v1/products/"+fwProduct+"/firmware?version=1.0.1&description=first+build&md5="+
			strings.ToUpper(hexMD5(data))+"&sha256="+hexSHA256(data), data)
		if r.status != http.StatusCreated {
			t.Fatalf("upload: %d %s", r.status, r.body)
		}
		var f ota.Firmware
		json.Unmarshal(r.body, &f)
		if f.ProductID != fwProduct || f.Version != "1.0.1" || f.Size != size || f.MD5 != hexMD5(data) ||
			f.SHA256 != hexSHA256(data) || f.Description != "first build" || f.CreatedAt.IsZero() {
			t.Fatalf("upload answered %+v", f)
		}
		if loc := r.header.Get("Location"); loc != "/v1/products/"+fwProduct+"/firmware/1.0.1" {
			t.Errorf("Location %q", loc)
		}
		var got ota.Firmware
		json.Unmarshal(s.do("GET", "/v1/products/"+fwProduct+"/firmware/1.0.1", nil).body, &got)
		if got.MD5 != f.MD5 || got.Size != size {
			t.Errorf("GET answered %+v", got)
		}
		var page struct{ Items []ota.Firmware }
		json.Unmarshal(s.do("GET", "/v1/products/"+fwProduct+"/firmware", nil).body, &page)
		if len(page.Items) != 1 || page.Items[0].Version != "1.0.1" {
			t.Errorf("list answered %+v", page.Items)
		}
		left := be.Leftovers(t)
		if len(left) != 1 || !strings.HasPrefix(left[0], fwProduct+"/1.0.1-") {
			t.Errorf("storage holds %v, want one object under %s/", left, fwProduct)
		}

		row, _ := s.store.FirmwareGet(t.Context(), fwProduct, "1.0.1")
		u := s.signer.URL(row, time.Now().Add(time.Hour))
		full := get(t, "GET", u)
		if full.status != 200 || !bytes.Equal(full.body, data) {
			t.Fatalf("full download: %d, %d bytes (equal: %v)", full.status, len(full.body), bytes.Equal(full.body, data))
		}
		for h, want := range map[string]string{
			"Content-Type": "application/octet-stream", "Content-Length": strconv.FormatInt(size, 10),
			"Accept-Ranges": "bytes", "ETag": `"` + f.MD5 + `"`,
		} {
			if got := full.header.Get(h); got != want {
				t.Errorf("%s: %q, want %q", h, got, want)
			}
		}
		head := get(t, "HEAD", u)
		if head.status != 200 || head.header.Get("Content-Length") != strconv.FormatInt(size, 10) || len(head.body) != 0 {
			t.Errorf("HEAD: %d, Content-Length %q, %d body bytes", head.status, head.header.Get("Content-Length"), len(head.body))
		}

		// Resume from arbitrary offsets, with and without an end, and with
		// the end equal to the size as one device SDK sends it.
		for _, off := range []int64{1, 4095, partSize - 1, partSize, size/2 + 13, size - 1} {
			for _, rng := range []string{fmt.Sprintf("bytes=%d-", off), fmt.Sprintf("bytes=%d-%d", off, size), fmt.Sprintf("bytes=%d-%d", off, size-1)} {
				p := get(t, "GET", u, "Range", rng)
				wantCR := fmt.Sprintf("bytes %d-%d/%d", off, size-1, size)
				if p.status != 206 || p.header.Get("Content-Range") != wantCR || !bytes.Equal(p.body, data[off:]) {
					t.Fatalf("%s: %d, Content-Range %q (want %q), %d bytes", rng, p.status, p.header.Get("Content-Range"), wantCR, len(p.body))
				}
			}
		}
		p := get(t, "GET", u, "Range", "bytes=100-199")
		if p.status != 206 || p.header.Get("Content-Range") != fmt.Sprintf("bytes 100-199/%d", size) || !bytes.Equal(p.body, data[100:200]) {
			t.Errorf("bytes=100-199: %d %q %d bytes", p.status, p.header.Get("Content-Range"), len(p.body))
		}
		p = get(t, "GET", u, "Range", "bytes=-10")
		if p.status != 206 || !bytes.Equal(p.body, data[size-10:]) {
			t.Errorf("bytes=-10: %d, %d bytes", p.status, len(p.body))
		}
		// A device that lost power right after the last byte resumes with
		// bytes=SIZE-SIZE: the 416 must have no body, or the C SDK writes
		// it into the image.
		for _, rng := range []string{fmt.Sprintf("bytes=%d-%d", size, size), fmt.Sprintf("bytes=%d-", size),
			fmt.Sprintf("bytes=%d-%d", size+5, size+10), "bytes=10-5", "bytes=abc"} {
			p := get(t, "GET", u, "Range", rng)
			if p.status != 416 || p.header.Get("Content-Range") != fmt.Sprintf("bytes */%d", size) || len(p.body) != 0 ||
				p.header.Get("Content-Length") != "0" {
				t.Errorf("%s: %d Content-Range %q, %d bytes of body; want 416 bytes */%d, empty", rng, p.status, p.header.Get("Content-Range"), len(p.body), size)
			}
		}
		// A partial copy of other bytes gets the whole image.
		p = get(t, "GET", u, "Range", "bytes=100-", "If-Range", `"0123"`)
		if p.status != 200 || !bytes.Equal(p.body, data) {
			t.Errorf("If-Range mismatch: %d, %d bytes", p.status, len(p.body))
		}

		// A device that loses its connection half way and resumes ends up
		// with the image its MD5 promises.
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		part := make([]byte, 1<<20+3)
		if _, err := io.ReadFull(resp.Body, part); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		rest := get(t, "GET", u, "Range", fmt.Sprintf("bytes=%d-%d", len(part), size))
		if hexMD5(append(part, rest.body...)) != f.MD5 {
			t.Error("resumed download does not match the MD5")
		}
	})
}

func TestDownloadRefusals(t *testing.T) {
	s := newFWServer(t, firmwaretest.Local(t), 0)
	data := image(10000, 2)
	f := s.upload("2.0.0", data)
	now := time.Now()
	good := s.signer.URL(f, now.Add(time.Hour))
	if r := get(t, "GET", good); r.status != 200 {
		t.Fatalf("good URL: %d", r.status)
	}
	tok := strings.TrimPrefix(good, s.dlURL+"/")
	tampered := []byte(tok)
	tampered[20] ^= 'A' ^ 'B' // still base64url, other bytes
	if tampered[20] == tok[20] {
		t.Fatal("tamper did nothing")
	}
	unknown := *f
	unknown.Version = "9.9.9"
	for _, c := range []struct {
		name, url string
		status    int
	}{
		{"expired", s.signer.URL(f, now.Add(-time.Second)), 403},
		{"tampered", s.dlURL + "/" + string(tampered), 403},
		{"unknown version", s.signer.URL(&unknown, now.Add(time.Hour)), 404},
		{"garbage", s.dlURL + "/hello", 404},
		{"root", s.dlURL + "/", 404},
		{"two segments", s.dlURL + "/" + tok + "/x", 404},
		{"dot dot", s.dlURL + "/%2e%2e/" + tok, 404},
		{"escaped token", s.dlURL + "/" + url.PathEscape(tok+"/"), 404},
	} {
		for _, method := range []string{"GET", "HEAD"} {
			if r := get(t, method, c.url); r.status != c.status {
				t.Errorf("%s %s: %d, want %d", method, c.name, r.status, c.status)
			}
		}
	}
	if r := s.do("POST", "/v1/products/"+fwProduct+"/firmware/2.0.0", nil); r.status != 405 {
		t.Errorf("POST on a firmware: %d", r.status)
	}
	req, _ := http.NewRequest("POST", good, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 405 {
		t.Errorf("POST download: %v %v", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}

	// Delete the version and upload other bytes under it: the old URL no
	// longer answers, a new one does.
	if r := s.do("DELETE", "/v1/products/"+fwProduct+"/firmware/2.0.0", nil); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if r := get(t, "GET", good); r.status != 404 {
		t.Errorf("URL of a deleted version: %d, want 404", r.status)
	}
	f2 := s.upload("2.0.0", image(10000, 3))
	if r := get(t, "GET", good); r.status != 404 {
		t.Errorf("old URL after re-upload with other bytes: %d, want 404", r.status)
	}
	if r := get(t, "GET", s.signer.URL(f2, now.Add(time.Hour))); r.status != 200 || hexMD5(r.body) != f2.MD5 {
		t.Errorf("new URL: %d", r.status)
	}
}

// stream hides the length of a body, so the client sends it chunked.
type stream struct{ r io.Reader }

func (s stream) Read(p []byte) (int, error) { return s.r.Read(p) }

func TestFirmwareUploadRefusals(t *testing.T) {
	firmwaretest.Run(t, func(t *testing.T, be *firmwaretest.Backend) {
		limit := int64(2*partSize + 100)
		s := newFWServer(t, be, limit)
		keep := s.upload("1.0.0", image(1000, 4))
		data := image(int(limit)+1, 5)
		base := "/v1/products/" + fwProduct + "/firmware"
		for _, c := range []struct {
			name   string
			path   string
			body   any
			status int
			code   string
			header []string
		}{
			{"empty", base + "?version=1.1", []byte{}, 400, "invalid", nil},
			{"empty chunked", base + "?version=1.1", stream{strings.NewReader("")}, 400, "invalid", nil},
			{"no version", base, data[:10], 400, "invalid", nil},
			{"long version", base + "?version=" + strings.Repeat("1", 33), data[:10], 400, "invalid", nil},
			{"version with space", base + "?version=1.0%201", data[:10], 400, "invalid", nil},
			{"version with NUL", base + "?version=1%00", data[:10], 400, "invalid", nil},
			{"description with control", base + "?version=1.1&description=a%07b", data[:10], 400, "invalid", nil},
			{"unknown product", "/v1/products/NOPE000000/firmware?version=1.1", data[:10], 404, "not_found", nil},
			{"malformed product", "/v1/products/..%2F..%2Fetc/firmware?version=1.1", data[:10], 400, "invalid", nil},
			{"existing version", base + "?version=1.0.0", data[:10], 409, "conflict", nil},
			// Refused before the body is sent.
			{"over the limit", base + "?version=1.1", data, 413, "too_large", []string{"Expect", "100-continue"}},
			{"over the limit chunked", base + "?version=1.1", stream{bytes.NewReader(data)}, 413, "too_large", nil},
			{"md5 mismatch", base + "?version=1.1&md5=" + hexMD5(data[:20]), data[:partSize+10], 400, "invalid", nil},
			{"sha256 mismatch", base + "?version=1.1&sha256=" + hexSHA256(data[:20]), stream{bytes.NewReader(data[:limit])}, 400, "invalid", nil},
			{"md5 not hex", base + "?version=1.1&md5=xyz", data[:10], 400, "invalid", nil},
			{"multipart", base + "?version=1.1", data[:10], 400, "invalid", []string{"Content-Type", "multipart/form-data; boundary=x"}},
		} {
			r := s.do("POST", c.path, c.body, c.header...)
			if r.status != c.status || r.problemCode(t) != c.code {
				t.Errorf("%s: %d %s, want %d %s", c.name, r.status, r.body, c.status, c.code)
			}
		}
		var page struct{ Items []ota.Firmware }
		json.Unmarshal(s.do("GET", base, nil).body, &page)
		if len(page.Items) != 1 || page.Items[0].Version != "1.0.0" {
			t.Errorf("after refused uploads the list is %+v, want only 1.0.0", page.Items)
		}
		if left := be.Leftovers(t); !slices.Equal(left, []string{keep.BlobKey}) {
			t.Errorf("after refused uploads storage holds %v, want only %s", left, keep.BlobKey)
		}
		// The limit itself is allowed.
		s.upload("1.2", data[:limit])
	})
}

// rawUpload sends an upload over a bare connection: headers announcing
// announced bytes, then only send of them.
func (s *fwServer) rawUpload(version string, announced int64, send []byte) net.Conn {
	s.t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "POST /v1/products/%s/firmware?version=%s HTTP/1.1\r\nHost: otad\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", fwProduct, version, fwToken, announced)
	if _, err := conn.Write(send); err != nil {
		s.t.Fatal(err)
	}
	return conn
}

func (s *fwServer) waitFinished(what string) {
	s.t.Helper()
	select {
	case got := <-s.finished:
		if !strings.HasPrefix(got, what) {
			s.t.Fatalf("finished %q, want %q", got, what)
		}
	case <-time.After(time.Minute): // a hang, not a synchronisation
		s.t.Fatalf("%s never finished", what)
	}
}

func TestFirmwareUploadCutShort(t *testing.T) {
	firmwaretest.Run(t, func(t *testing.T, be *firmwaretest.Backend) {
		s := newFWServerWith(t, be, 0, func(c *api.Config) { c.UploadStallTimeout = 300 * time.Millisecond }, nil)
		keep := s.upload("1.0.0", image(1000, 6))
		<-s.finished
		data := image(3*partSize, 7)

		// A Content-Length that lies: fewer bytes come, then the client
		// stops sending. The answer is 400 and nothing is kept.
		conn := s.rawUpload("1.1", int64(len(data))+1, data)
		conn.(*net.TCPConn).CloseWrite()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 400 || !strings.Contains(string(body), "ended early") {
			t.Errorf("truncated upload: %d %s", resp.StatusCode, body)
		}
		s.waitFinished("POST")

		// The client goes away half way through a multipart upload.
		conn = s.rawUpload("1.2", int64(len(data)), data[:2*partSize+5])
		conn.Close()
		s.waitFinished("POST")

		// The client stops sending but keeps the connection open.
		conn = s.rawUpload("1.3", int64(len(data)), data[:partSize+5])
		s.waitFinished("POST")
		conn.Close()

		var page struct{ Items []ota.Firmware }
		json.Unmarshal(s.do("GET", "/v1/products/"+fwProduct+"/firmware", nil).body, &page)
		if len(page.Items) != 1 {
			t.Errorf("after cut-short uploads the list is %+v, want only 1.0.0", page.Items)
		}
		if left := be.Leftovers(t); !slices.Equal(left, []string{keep.BlobKey}) {
			t.Errorf("after cut-short uploads storage holds %v, want only %s", left, keep.BlobKey)
		}
	})
}

// gatedBlobs holds every Put at a gate until the test opens it: the real
// backend underneath, with a way to line up concurrent uploads.
type gatedBlobs struct {
	ota.Blobs
	entered chan struct{}
	open    chan struct{}
}

func (g *gatedBlobs) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	g.entered <- struct{}{}
	<-g.open
	return g.Blobs.Put(ctx, key, r)
}

func TestFirmwareUploadRace(t *testing.T) {
	firmwaretest.Run(t, func(t *testing.T, be *firmwaretest.Backend) {
		gate := &gatedBlobs{Blobs: be.Blobs, entered: make(chan struct{}), open: make(chan struct{})}
		gated := *be
		gated.Blobs = gate
		s := newFWServer(t, &gated, 0)
		images := [][]byte{image(partSize+1, 8), image(partSize+2, 9)}
		results := make(chan result, 2)
		for _, img := range images {
			go func() {
				req, _ := http.NewRequest("POST", s.url+"/v1/products/"+fwProduct+"/firmware?version=3.0", bytes.NewReader(img))
				req.Header.Set("Authorization", "Bearer "+fwToken)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					results <- result{status: -1, body: []byte(err.Error())}
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				results <- result{status: resp.StatusCode, body: b}
			}()
		}
		// Both uploads reach storage, so both passed the check that the
		// version is free: only the insert can tell them apart.
		<-gate.entered
		<-gate.entered
		close(gate.open)
		var statuses []int
		for range 2 {
			r := <-results
			statuses = append(statuses, r.status)
		}
		slices.Sort(statuses)
		if !slices.Equal(statuses, []int{201, 409}) {
			t.Fatalf("racing uploads answered %v, want 201 and 409", statuses)
		}
		row, err := s.store.FirmwareGet(t.Context(), fwProduct, "3.0")
		if err != nil {
			t.Fatal(err)
		}
		if left := be.Leftovers(t); !slices.Equal(left, []string{row.BlobKey}) {
			t.Errorf("after the race storage holds %v, want only the winner's %s", left, row.BlobKey)
		}
		r := get(t, "GET", s.signer.URL(row, time.Now().Add(time.Hour)))
		if hexMD5(r.body) != row.MD5 || (row.MD5 != hexMD5(images[0]) && row.MD5 != hexMD5(images[1])) {
			t.Error("the stored image is neither upload")
		}
	})
}

func TestFirmwareDelete(t *testing.T) {
	firmwaretest.Run(t, func(t *testing.T, be *firmwaretest.Backend) {
		s := newFWServer(t, be, 0)
		f := s.upload("4.0", image(5000, 10))
		inUse := s.upload("4.1", image(5000, 11))
		ctx := t.Context()
		if err := s.store.DeviceCreate(ctx, &ota.Device{ProductID: fwProduct, Name: "lamp1", Secret: ota.NewDeviceSecret()}); err != nil {
			t.Fatal(err)
		}
		job := &ota.Job{ID: "job1", ProductID: fwProduct, FirmwareVersion: "4.1", Status: ota.JobRunning,
			Targets: ota.JobTargets{Devices: []string{"lamp1"}}, TimeoutSeconds: 600}
		if err := s.store.JobCreate(ctx, ota.JobCreateParams{Job: job, Initial: func(v string) ota.JobExecution {
			return ota.NewExecution(job, v, ota.Now())
		}}); err != nil {
			t.Fatal(err)
		}
		base := "/v1/products/" + fwProduct + "/firmware/"
		if r := s.do("DELETE", base+"4.1", nil); r.status != 409 || r.problemCode(t) != "conflict" {
			t.Errorf("delete of a version an active job uses: %d %s", r.status, r.body)
		}
		if r := s.do("DELETE", base+"4.0", nil); r.status != 204 {
			t.Fatalf("delete: %d %s", r.status, r.body)
		}
		if r := s.do("GET", base+"4.0", nil); r.status != 404 {
			t.Errorf("GET after delete: %d", r.status)
		}
		if r := s.do("DELETE", base+"4.0", nil); r.status != 404 {
			t.Errorf("second delete: %d", r.status)
		}
		if left := be.Leftovers(t); !slices.Equal(left, []string{inUse.BlobKey}) {
			t.Errorf("after delete storage holds %v, want only %s", left, inUse.BlobKey)
		}
		if r := get(t, "GET", s.signer.URL(f, time.Now().Add(time.Hour))); r.status != 404 {
			t.Errorf("download of a deleted version: %d", r.status)
		}
	})
}

// TestFirmwareVersionNames checks that versions with characters that mean
// something in paths are stored as plain names and found again.
func TestFirmwareVersionNames(t *testing.T) {
	be := firmwaretest.Local(t)
	s := newFWServer(t, be, 0)
	for _, v := range []string{"../../etc/passwd", "...", "%2e%2e", "a\\b", "1.0+build:7"} {
		f := s.upload(v, image(100, 12))
		if r := s.do("GET", "/v1/products/"+fwProduct+"/firmware/"+url.PathEscape(v), nil); r.status != 200 {
			t.Errorf("GET %q: %d %s", v, r.status, r.body)
		}
		if err := firmwareKeyInside(f.BlobKey); err != nil {
			t.Errorf("version %q: %v", v, err)
		}
		if r := get(t, "GET", s.signer.URL(f, time.Now().Add(time.Hour))); r.status != 200 || hexMD5(r.body) != f.MD5 {
			t.Errorf("download of %q: %d", v, r.status)
		}
		if r := s.do("DELETE", "/v1/products/"+fwProduct+"/firmware/"+url.PathEscape(v), nil); r.status != 204 {
			t.Errorf("DELETE %q: %d %s", v, r.status, r.body)
		}
	}
	for _, v := range []string{".", ".."} {
		if r := s.do("POST", "/v1/products/"+fwProduct+"/firmware?version="+v, image(100, 12)); r.status != 400 {
			t.Errorf("upload of version %q: %d", v, r.status)
		}
	}
	if r := s.do("GET", "/v1/products/"+fwProduct+"/firmware/"+strings.Repeat("9", 40), nil); r.status != 400 {
		t.Errorf("GET of an overlong version: %d", r.status)
	}
	if left := be.Leftovers(t); len(left) != 0 {
		t.Errorf("storage holds %v after deleting every version", left)
	}
}

func firmwareKeyInside(key string) error {
	rest, ok := strings.CutPrefix(key, fwProduct+"/")
	if !ok || strings.ContainsAny(rest, `/\%`) || strings.HasPrefix(rest, ".") {
		return fmt.Errorf("blob key %q is not one plain name under the product", key)
	}
	return nil
}

// TestFirmwareUploadStorageFails points the API at a bucket that does not
// exist: the upload fails as the server's fault and leaves no row.
func TestFirmwareUploadStorageFails(t *testing.T) {
	cfg := firmwaretest.S3Config(t, 0)
	cfg.Bucket += "-missing"
	blobs, err := firmware.NewS3(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := newFWServer(t, &firmwaretest.Backend{Name: "s3", Blobs: blobs}, 0)
	for _, size := range []int{1000, 2*partSize + 1} { // one PutObject; a multipart upload
		r := s.do("POST", "/v1/products/"+fwProduct+"/firmware?version=5.0", image(size, 13))
		if r.status != 500 || r.problemCode(t) != "internal" {
			t.Errorf("upload of %d bytes to a missing bucket: %d %s", size, r.status, r.body)
		}
	}
	if _, err := s.store.FirmwareGet(t.Context(), fwProduct, "5.0"); !ota.IsCode(err, ota.ENOTFOUND) {
		t.Errorf("a failed upload left a row: %v", err)
	}
}

// recordingBlobs is the real backend, noting the ranges asked of it.
type recordingBlobs struct {
	ota.Blobs
	mu     sync.Mutex
	ranges [][2]int64
}

func (r *recordingBlobs) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	r.mu.Lock()
	r.ranges = append(r.ranges, [2]int64{offset, length})
	r.mu.Unlock()
	return r.Blobs.Open(ctx, key, offset, length)
}

// TestDownloadPassesRange checks that a ranged download asks the backend
// for that range only, never for the whole image.
func TestDownloadPassesRange(t *testing.T) {
	firmwaretest.Run(t, func(t *testing.T, be *firmwaretest.Backend) {
		rec := &recordingBlobs{Blobs: be.Blobs}
		wrapped := *be
		wrapped.Blobs = rec
		s := newFWServer(t, &wrapped, 0)
		data := image(partSize+100, 14)
		f := s.upload("6.0", data)
		u := s.signer.URL(f, time.Now().Add(time.Hour))
		get(t, "GET", u, "Range", "bytes=1000-")
		get(t, "GET", u, "Range", fmt.Sprintf("bytes=10-%d", len(data)))
		get(t, "GET", u, "Range", "bytes=5-9")
		get(t, "GET", u)
		get(t, "HEAD", u)
		want := [][2]int64{{1000, int64(len(data)) - 1000}, {10, int64(len(data)) - 10}, {5, 5}, {0, int64(len(data))}}
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if !slices.Equal(rec.ranges, want) {
			t.Errorf("backend asked for %v, want %v", rec.ranges, want)
		}
	})
}

// TestDownloadStalledClient checks that a device that stops reading gives
// its connection back after the stall timeout instead of holding it.
func TestDownloadStalledClient(t *testing.T) {
	s := newFWServerWith(t, firmwaretest.Local(t), 0, nil, func(c *api.DownloadConfig) { c.StallTimeout = 200 * time.Millisecond })
	// Larger than what loopback socket buffers absorb.
	f := s.upload("7.0", image(64<<20, 15))
	u, _ := url.Parse(s.signer.URL(f, time.Now().Add(time.Hour)))
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.Path, u.Host)
	// Read nothing; the handler must end on its own.
	select {
	case <-s.dlFinished:
	case <-time.After(time.Minute): // a hang, not a synchronisation
		t.Fatal("the download handler still waits for a client that stopped reading")
	}
}

// form builds a multipart/form-data body from name, value pairs; a value
// of type []byte becomes a file part.
func form(t *testing.T, fields ...any) (body []byte, contentType string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for i := 0; i+1 < len(fields); i += 2 {
		name := fields[i].(string)
		switch v := fields[i+1].(type) {
		case string:
			mw.WriteField(name, v)
		case []byte:
			fw, err := mw.CreateFormFile(name, "fw.bin")
			if err != nil {
				t.Fatal(err)
			}
			fw.Write(v)
		}
	}
	mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

func TestFirmwareUploadForm(t *testing.T) {
	firmwaretest.Run(t, func(t *testing.T, be *firmwaretest.Backend) {
		s := newFWServer(t, be, 0)
		data := image(2*partSize+3, 16)
		base := "/v1/products/" + fwProduct + "/firmware"
		body, ct := form(t, "version", "8.0", "description", "from a form", "md5", hexMD5(data), "file", data)
		r := s.do("POST", base, body, "Content-Type", ct)
		if r.status != 201 {
			t.Fatalf("form upload: %d %s", r.status, r.body)
		}
		var f ota.Firmware
		json.Unmarshal(r.body, &f)
		if f.Version != "8.0" || f.Description != "from a form" || f.Size != int64(len(data)) || f.SHA256 != hexSHA256(data) {
			t.Errorf("form upload answered %+v", f)
		}
		row, _ := s.store.FirmwareGet(t.Context(), fwProduct, "8.0")
		if dl := get(t, "GET", s.signer.URL(row, time.Now().Add(time.Hour))); !bytes.Equal(dl.body, data) {
			t.Error("the image uploaded by form does not download byte for byte")
		}
		// The version may come in the query instead.
		body, ct = form(t, "file", data[:100])
		if r := s.do("POST", base+"?version=8.0.1", body, "Content-Type", ct); r.status != 201 {
			t.Errorf("form with the version in the query: %d %s", r.status, r.body)
		}

		for _, c := range []struct {
			name  string
			query string
			parts []any
		}{
			{"file before the version", "", []any{"file", data[:100], "version", "8.1"}},
			{"part after the file", "", []any{"version", "8.1", "file", data, "description", "late"}},
			{"md5 mismatch", "", []any{"version", "8.1", "md5", hexMD5(data[:5]), "file", data}},
			{"query and form differ", "?version=8.1", []any{"version", "8.2", "file", data[:100]}},
			{"unknown field", "", []any{"version", "8.1", "color", "red", "file", data[:100]}},
			{"no file", "", []any{"version", "8.1"}},
			{"empty file", "", []any{"version", "8.1", "file", []byte{}}},
			{"long field", "", []any{"description", strings.Repeat("d", 5000), "version", "8.1", "file", data[:100]}},
		} {
			body, ct := form(t, c.parts...)
			if r := s.do("POST", base+c.query, body, "Content-Type", ct); r.status != 400 || r.problemCode(t) != "invalid" {
				t.Errorf("%s: %d %s, want 400 invalid", c.name, r.status, r.body)
			}
		}
		var page struct{ Items []ota.Firmware }
		json.Unmarshal(s.do("GET", base, nil).body, &page)
		if len(page.Items) != 2 {
			t.Errorf("after refused forms the list is %+v, want 8.0 and 8.0.1", page.Items)
		}
		if left := be.Leftovers(t); len(left) != 2 {
			t.Errorf("after refused forms storage holds %v, want the two stored images", left)
		}
	})
}
