package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/otad/otad/internal/api"
	"github.com/otad/otad/internal/store/testdb"
)

const testToken = "test-token-0123456789abcdef"

// testApp is a real otad on :0 ports with a temp data dir.
type testApp struct {
	*app
	t      *testing.T
	stdout *bytes.Buffer

	closeOnce sync.Once
	closeErr  error
}

// stop closes the app once, as its cleanup does; a test that restarts
// otad stops it first.
func (a *testApp) stop() error {
	a.closeOnce.Do(func() { a.closeErr = a.Close(context.Background()) })
	return a.closeErr
}

// startApp starts otad on the given engine with extra environment; before
// is applied to the app before it starts listening.
func startApp(t *testing.T, engine string, env map[string]string, before ...func(*app)) *testApp {
	t.Helper()
	cfg := testConfig(t, engine, env)
	out := &bytes.Buffer{}
	a, err := newApp(t.Context(), cfg, cfg.logger(testWriter{t}), out)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range before {
		f(a)
	}
	if err := a.Start(t.Context()); err != nil {
		a.Close(context.Background())
		t.Fatal(err)
	}
	ta := &testApp{app: a, t: t, stdout: out}
	t.Cleanup(func() {
		if err := ta.stop(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return ta
}

// testConfig is the configuration startApp runs otad with: :0 ports, a
// temp data dir, the test token, a fresh PostgreSQL database for the
// postgres engine (unless env names one), and env on top.
func testConfig(t *testing.T, engine string, env map[string]string) *Config {
	t.Helper()
	vars := map[string]string{
		"OTAD_HTTP_ADDR": "127.0.0.1:0",
		"OTAD_MQTT_ADDR": "127.0.0.1:0",
		"OTAD_DATA_DIR":  t.TempDir(),
		"OTAD_API_TOKEN": testToken,
		"OTAD_LOG_LEVEL": "warn",
		// waitFor polls the API far faster than any client should;
		// TestRateLimit sets a limit of its own.
		"OTAD_RATE_LIMIT": "0",
	}
	if engine == "postgres" && env["OTAD_DATABASE_URL"] == "" {
		vars["OTAD_DATABASE_URL"] = testdb.PostgresURL(t)
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := parseConfig("otad", nil, func(k string) string { return vars[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var openAPIRouter = sync.OnceValues(func() (routers.Router, error) {
	doc, err := api.LoadOpenAPI()
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("openapi document invalid: %w", err)
	}
	return legacy.NewRouter(doc)
})

// response is an answer read whole.
type response struct {
	*http.Response
	body []byte
}

func (r response) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// problem decodes a problem+json answer and checks status and code.
func (r response) wantProblem(t *testing.T, status int, code string) map[string]any {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", r.StatusCode, status, r.body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("content type %q, want application/problem+json", ct)
	}
	var p map[string]any
	r.decode(t, &p)
	if p["code"] != code {
		t.Fatalf("problem code %v, want %q: %s", p["code"], code, r.body)
	}
	return p
}

func (r response) wantStatus(t *testing.T, status int) {
	t.Helper()
	if r.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", r.StatusCode, status, r.body)
	}
}

// do sends a request with the test token (unless headers say otherwise)
// and validates both the request and the response against the OpenAPI
// document, so the document and the code cannot drift apart.
func (a *testApp) do(method, path string, body any, headers ...string) response {
	a.t.Helper()
	return a.doWith(http.DefaultClient, method, path, body, headers...)
}

// doWith is do through client.
func (a *testApp) doWith(client *http.Client, method, path string, body any, headers ...string) response {
	a.t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	case []byte:
		raw = b
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			a.t.Fatal(err)
		}
	}
	req, err := http.NewRequestWithContext(a.t.Context(), method, a.HTTPURL()+path, bytes.NewReader(raw))
	if err != nil {
		a.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	a.validate(req, raw, resp, got)
	return response{resp, got}
}

// get reads path into out (any status; the answer is validated).
func (a *testApp) get(path string, out any) { a.do("GET", path, nil).decode(a.t, out) }

func (a *testApp) validate(req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) {
	a.t.Helper()
	if err := checkOpenAPI(req, reqBody, resp, respBody); err != nil {
		a.t.Fatal(err)
	}
}

// checkOpenAPI checks a request and its answer against the OpenAPI
// document.
func checkOpenAPI(req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) error {
	router, err := openAPIRouter()
	if err != nil {
		return err
	}
	vreq := req.Clone(context.Background())
	vreq.Body = io.NopCloser(bytes.NewReader(reqBody))
	if vreq.URL.RawPath != "" {
		// Match the path as sent: an escaped / (a version 1.0%2Fbeta) is
		// inside one segment.
		vreq.URL.Path = vreq.URL.RawPath
	}
	route, pathParams, err := router.FindRoute(vreq)
	if err != nil {
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
			return nil // an undocumented path is expected to be refused
		}
		return fmt.Errorf("%s %s is not in the OpenAPI document: %v", req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: pathParams, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	// Requests are checked only when the server accepted them: tests send
	// malformed requests on purpose, and those must be refused.
	if resp.StatusCode < 400 {
		if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
			return fmt.Errorf("accepted request does not match the OpenAPI document: %v", err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(respBody)), Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		return fmt.Errorf("response to %s %s does not match the OpenAPI document: %v", req.Method, req.URL.Path, err)
	}
	return nil
}

// forEachEngine runs fn once on SQLite and once on PostgreSQL.
func forEachEngine(t *testing.T, fn func(t *testing.T, engine string)) {
	for _, engine := range testdb.Engines {
		t.Run(engine, func(t *testing.T) {
			t.Parallel()
			fn(t, engine)
		})
	}
}
