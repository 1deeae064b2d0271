package main

// otactl against the real daemon: each command run in-process through
// cli.Main with its own stdout, stderr and exit code, every request it
// sends and every answer it gets checked against the OpenAPI document.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3filter"

	"github.com/otad/otad/internal/cli"
)

func init() {
	// The event stream's answer is checked as the text it is declared.
	openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.PlainBodyDecoder)
}

// ctl runs otactl against one otad, with its own config directory.
type ctl struct {
	a   *testApp
	t   *testing.T
	env map[string]string
	tr  *checkedTransport
}

type ctlResult struct {
	code           int
	stdout, stderr string
}

func (a *testApp) ctl(t *testing.T) *ctl {
	return &ctl{a: a, t: t, tr: &checkedTransport{t: t}, env: map[string]string{
		"OTAD_URL":        a.HTTPURL(),
		"OTAD_TOKEN":      testToken,
		"XDG_CONFIG_HOME": t.TempDir(),
		"HOME":            t.TempDir(),
	}}
}

// run runs otactl with args and stdin.
func (c *ctl) runCtx(ctx context.Context, stdin string, args ...string) ctlResult {
	var out, errOut syncBuffer
	code := cli.Main(ctx, args, cli.Env{
		Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut,
		Getenv: func(k string) string { return c.env[k] },
		HTTP:   &http.Client{Transport: c.tr},
	})
	return ctlResult{code, out.String(), errOut.String()}
}

func (c *ctl) run(args ...string) ctlResult {
	c.t.Helper()
	return c.runCtx(c.t.Context(), "", args...)
}

// ok runs otactl and wants exit 0.
func (c *ctl) ok(args ...string) ctlResult {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 {
		c.t.Fatalf("otactl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// json runs otactl -o json and decodes its output into v.
func (c *ctl) json(v any, args ...string) ctlResult {
	c.t.Helper()
	r := c.ok(append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		c.t.Fatalf("otactl %s -o json: %v\n%s", strings.Join(args, " "), err, r.stdout)
	}
	return r
}

// fails runs otactl and wants the exit code and, on stderr, exactly one
// line that contains want.
func (c *ctl) fails(code int, want string, args ...string) ctlResult {
	c.t.Helper()
	r := c.run(args...)
	if r.code != code {
		c.t.Fatalf("otactl %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if code == cli.ExitUsage && len(lines) == 2 && strings.HasPrefix(lines[1], "Run 'otactl") {
		lines = lines[:1] // the usage hint
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "otactl: ") || !strings.Contains(lines[0], want) {
		c.t.Fatalf("otactl %s: stderr %q, want one line with %q", strings.Join(args, " "), r.stderr, want)
	}
	return r
}

// checkedTransport sends otactl's requests to otad and checks each
// exchange against the OpenAPI document. cut breaks the open event
// streams, as a network would.
type checkedTransport struct {
	t       *testing.T
	mu      sync.Mutex
	streams []io.Closer
	opened  int
	lastIDs []string // Last-Event-ID of each stream request
	sent    []string // method and path of each request
}

func (c *checkedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		var err error
		if body, err = io.ReadAll(req.Body); err != nil {
			return nil, err
		}
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	c.mu.Lock()
	c.sent = append(c.sent, req.Method+" "+req.URL.Path)
	c.mu.Unlock()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		if err := checkOpenAPI(req, body, resp, nil); err != nil {
			c.t.Error(err)
		}
		c.mu.Lock()
		c.streams = append(c.streams, resp.Body)
		c.opened++
		c.lastIDs = append(c.lastIDs, req.Header.Get("Last-Event-ID"))
		c.mu.Unlock()
		return resp, nil
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	if err := checkOpenAPI(req, body, resp, got); err != nil {
		c.t.Error(err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(got))
	return resp, nil
}

func (c *checkedTransport) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.streams {
		s.Close()
	}
	c.streams = nil
}

// count is how many requests were sent of method and path.
func (c *checkedTransport) count(request string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, r := range c.sent {
		if r == request {
			n++
		}
	}
	return n
}

func (c *checkedTransport) streamsOpened() (int, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opened, append([]string(nil), c.lastIDs...)
}

// background runs otactl until it returns; cancel stops it.
type background struct {
	cancel context.CancelFunc
	done   chan ctlResult
	out    *syncBuffer
}

func (c *ctl) start(args ...string) *background {
	ctx, cancel := context.WithCancel(c.t.Context())
	b := &background{cancel: cancel, done: make(chan ctlResult, 1), out: &syncBuffer{}}
	go func() {
		var errOut syncBuffer
		code := cli.Main(ctx, args, cli.Env{
			Stdin: strings.NewReader(""), Stdout: b.out, Stderr: &errOut,
			Getenv: func(k string) string { return c.env[k] },
			HTTP:   &http.Client{Transport: c.tr},
		})
		b.done <- ctlResult{code, b.out.String(), errOut.String()}
	}()
	c.t.Cleanup(cancel)
	return b
}

// wait waits for the command to return by itself.
func (b *background) wait(t *testing.T) ctlResult {
	t.Helper()
	var r ctlResult
	waitFor(t, "otactl to return", func() bool {
		select {
		case r = <-b.done:
			return true
		default:
			return false
		}
	})
	return r
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

func randomFile(t *testing.T, size int) string {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	return writeFile(t, "fw.bin", string(b))
}

// Every command that is not about jobs, on the real daemon: output as
// tables and as JSON, errors as one line, exit codes.
func TestOtactlCommands(t *testing.T) {
	a := startApp(t, "sqlite", nil)
	c := a.ctl(t)

	// Usage errors: exit 2, one line and a hint.
	c.fails(cli.ExitUsage, `unknown command "bogus" for "otactl"`, "bogus")
	c.fails(cli.ExitUsage, `unknown command "lsit" for "otactl products" (did you mean list?)`, "products", "lsit")
	c.fails(cli.ExitUsage, "unknown flag: --bogus", "products", "list", "--bogus")
	c.fails(cli.ExitUsage, "needs NAME", "products", "create")
	c.fails(cli.ExitUsage, "--output must be table or json", "products", "list", "-o", "yaml")
	c.fails(cli.ExitUsage, "no product", "devices", "list")
	if r := c.ok("devices"); !strings.Contains(r.stdout, "import") {
		t.Fatalf("otactl devices shows no help: %s", r.stdout)
	}
	if r := c.ok("completion", "bash"); !strings.Contains(r.stdout, "bash completion") {
		t.Fatalf("completion bash: %.200s", r.stdout)
	}

	// The server and token: env, flags, then the config file.
	bad := a.ctl(t)
	bad.env["OTAD_TOKEN"] = "wrong"
	bad.fails(cli.ExitError, "otactl: 401 unauthorized: ", "products", "list")
	bad.ok("products", "list", "--token", testToken)
	conf := a.ctl(t)
	delete(conf.env, "OTAD_URL")
	delete(conf.env, "OTAD_TOKEN")
	conf.fails(cli.ExitUsage, "no server", "products", "list")
	conf.ok("config", "set", "server", a.HTTPURL())
	conf.ok("config", "set", "token", testToken)
	conf.ok("config", "set", "product", "CTLPROD001")
	var shown map[string]string
	conf.json(&shown, "config", "show")
	if shown["server"] != a.HTTPURL() || shown["token"] == testToken || !strings.HasPrefix(testToken, strings.TrimSuffix(shown["token"], "…")) ||
		shown["product"] != "CTLPROD001" || !strings.HasPrefix(shown["path"], conf.env["XDG_CONFIG_HOME"]) {
		t.Fatalf("config show: %v", shown)
	}
	if st, err := os.Stat(shown["path"]); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v %v", st.Mode(), err)
	}
	conf.fails(cli.ExitUsage, `unknown key "colour"`, "config", "set", "colour", "red")

	// Products.
	var p map[string]any
	conf.json(&p, "products", "create", "Thermostat", "--id", "CTLPROD001", "--description", "kitchen")
	if p["id"] != "CTLPROD001" || p["name"] != "Thermostat" || p["description"] != "kitchen" {
		t.Fatalf("products create: %v", p)
	}
	c.fails(cli.ExitError, "otactl: 409 conflict: ", "products", "create", "Again", "--id", "CTLPROD001")
	c.fails(cli.ExitError, "otactl: 400 invalid: ", "products", "create", "Bad", "--id", "lower")
	c.ok("products", "create", "Second")
	var products []map[string]any
	c.json(&products, "products", "list")
	if len(products) != 2 {
		t.Fatalf("products list: %v", products)
	}
	if r := c.ok("products", "list"); !strings.HasPrefix(r.stdout, "ID") || !strings.Contains(r.stdout, "CTLPROD001  Thermostat") {
		t.Fatalf("products list table:\n%s", r.stdout)
	}
	if r := c.ok("products", "show", "CTLPROD001"); !strings.Contains(r.stdout, "name:") || !strings.Contains(r.stdout, "Thermostat") {
		t.Fatalf("products show:\n%s", r.stdout)
	}
	c.fails(cli.ExitError, "otactl: 404 not_found: ", "products", "show", "NOPE000000")

	// Devices, on the product of the config file.
	var d map[string]any
	conf.json(&d, "devices", "create", "kitchen-1", "--version", "1.0.0")
	if d["name"] != "kitchen-1" || d["secret"] == "" || d["version"] != "1.0.0" {
		t.Fatalf("devices create: %v", d)
	}
	if r := conf.ok("devices", "create", "kitchen-2"); !strings.Contains(r.stdout, "secret:") {
		t.Fatalf("devices create shows no secret:\n%s", r.stdout)
	}
	c.env["OTAD_PRODUCT"] = "CTLPROD001"
	c.fails(cli.ExitError, "otactl: 409 conflict: ", "devices", "create", "kitchen-1")
	var devs []map[string]any
	c.json(&devs, "devices", "list", "--version", "1.0.0")
	if len(devs) != 1 || devs[0]["name"] != "kitchen-1" {
		t.Fatalf("devices list --version: %v", devs)
	}
	c.json(&devs, "devices", "list", "--online=false")
	if len(devs) != 2 {
		t.Fatalf("devices list --online=false: %v", devs)
	}
	c.json(&devs, "devices", "list", "--online")
	if len(devs) != 0 {
		t.Fatalf("devices list --online: %v", devs)
	}
	c.json(&devs, "devices", "list", "--limit", "1")
	if len(devs) != 1 {
		t.Fatalf("devices list --limit 1: %v", devs)
	}
	c.json(&d, "devices", "disable", "kitchen-2")
	if d["disabled"] != true {
		t.Fatalf("devices disable: %v", d)
	}
	c.json(&d, "devices", "enable", "kitchen-2")
	if d["disabled"] != false {
		t.Fatalf("devices enable: %v", d)
	}
	if r := c.ok("devices", "show", "kitchen-1", "-p", "CTLPROD001"); !strings.Contains(r.stdout, "history (newest first):") ||
		!strings.Contains(r.stdout, "version:") {
		t.Fatalf("devices show:\n%s", r.stdout)
	}
	c.json(&d, "devices", "show", "kitchen-1")
	if _, ok := d["events"]; !ok {
		t.Fatalf("devices show -o json has no events: %v", d)
	}
	var history []map[string]any
	c.json(&history, "devices", "history", "kitchen-1")
	if r := c.ok("devices", "delete", "kitchen-2"); !strings.Contains(r.stderr, "deleted device kitchen-2") {
		t.Fatalf("devices delete: %+v", r)
	}
	c.fails(cli.ExitError, "otactl: 404 not_found: ", "devices", "show", "kitchen-2")
	c.fails(cli.ExitError, "otactl: 400 invalid: ", "devices", "show", "bad name")

	// Bulk import: rows that fail are reported, the others created, their
	// secrets kept in a file only the owner reads.
	csvFile := writeFile(t, "fleet.csv", "name,version\nimp-1,1.0.0\nimp-2\nkitchen-1,1.0.0\nimp-3,1.0.0,extra\nbad name\nimp-1\n,1.0.0\nimp-4,1.1.0\n")
	secrets := filepath.Join(t.TempDir(), "secrets.csv")
	c.fails(cli.ExitUsage, "--secrets-out", "devices", "import", csvFile)
	r := c.run("devices", "import", csvFile, "--secrets-out", secrets, "--concurrency", "3")
	if r.code != cli.ExitError || !strings.Contains(r.stdout, "created 3 of 8 devices") {
		t.Fatalf("devices import: %+v", r)
	}
	// One batch refused for the taken name, one for the invalid one, then
	// the rest in one transaction.
	if n := c.tr.count("POST /v1/products/CTLPROD001/device-batches"); n != 3 {
		t.Fatalf("devices import sent %d batches, want 3", n)
	}
	for _, want := range []string{"line 4 (kitchen-1): 409 conflict", "line 5 (imp-3): 3 fields", "line 6 (bad name): 400 invalid",
		"line 7 (imp-1): imp-1 is on line 2 too", "line 8 (): no device name", "otactl: 5 of 8 devices not created"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("devices import stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	st, err := os.Stat(secrets)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secrets file: %v %v", st, err)
	}
	b, _ := os.ReadFile(secrets)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 4 || lines[0] != "product_id,device_name,secret" {
		t.Fatalf("secrets file:\n%s", b)
	}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if len(f) != 3 || f[0] != "CTLPROD001" || len(f[2]) < 20 {
			t.Fatalf("secrets line %q", l)
		}
	}
	var imp map[string]any
	r = c.runCtx(t.Context(), "imp-5\nimp-6,2.0.0\n", "devices", "import", "-", "--secrets-out", secrets, "-o", "json")
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &imp) != nil || imp["created"] != 2.0 {
		t.Fatalf("devices import from stdin: %+v", r)
	}
	if b, _ := os.ReadFile(secrets); strings.Count(string(b), "\n") != 6 || strings.Count(string(b), "product_id") != 1 {
		t.Fatalf("secrets file after a second import:\n%s", b)
	}
	c.json(&devs, "devices", "list", "--version", "1.1.0")
	if len(devs) != 1 || devs[0]["name"] != "imp-4" {
		t.Fatalf("imported imp-4: %v", devs)
	}

	// Firmware: upload with its throughput, list, show, delete.
	fw := randomFile(t, 300<<10)
	var f map[string]any
	r = c.json(&f, "firmware", "upload", fw, "--version", "2.0.0", "--description", "fixes")
	if f["version"] != "2.0.0" || f["size"] != float64(300<<10) || f["description"] != "fixes" {
		t.Fatalf("firmware upload: %v", f)
	}
	if !strings.Contains(r.stderr, "uploaded 2.0.0: 300.0 KiB in ") || !strings.Contains(r.stderr, "/s)") {
		t.Fatalf("firmware upload told no throughput: %q", r.stderr)
	}
	c.fails(cli.ExitUsage, "give --version", "firmware", "upload", fw)
	c.fails(cli.ExitError, "otactl: 409 conflict: ", "firmware", "upload", fw, "--version", "2.0.0")
	c.fails(cli.ExitError, "otactl: 400 invalid: ", "firmware", "upload", fw, "--version", "2.0.1", "--md5", "00000000000000000000000000000000")
	c.fails(cli.ExitError, "no such file", "firmware", "upload", filepath.Join(t.TempDir(), "none.bin"), "--version", "2.0.2")
	c.ok("firmware", "upload", fw, "--version", "1.0/beta")
	var fws []map[string]any
	c.json(&fws, "firmware", "list")
	if len(fws) != 2 {
		t.Fatalf("firmware list: %v", fws)
	}
	if r := c.ok("firmware", "list"); !strings.Contains(r.stdout, "300.0 KiB") {
		t.Fatalf("firmware list table:\n%s", r.stdout)
	}
	c.json(&f, "firmware", "show", "1.0/beta")
	if f["version"] != "1.0/beta" {
		t.Fatalf("firmware show: %v", f)
	}
	c.ok("firmware", "delete", "1.0/beta")
	c.fails(cli.ExitError, "otactl: 404 not_found: ", "firmware", "show", "1.0/beta")

	// Tokens: a read-only one reads and is refused a change (403);
	// revoked, it is refused everything (401).
	var tok map[string]any
	c.json(&tok, "tokens", "create", "reader", "--scope", "read", "--expires-at", "24h")
	if tok["scope"] != "read" || tok["expires_at"] == nil || !strings.HasPrefix(tok["token"].(string), "otad_") {
		t.Fatalf("tokens create: %v", tok)
	}
	c.fails(cli.ExitUsage, "--scope", "tokens", "create", "noscope")
	c.fails(cli.ExitError, "otactl: 400 invalid: ", "tokens", "create", "x", "--scope", "root")
	var toks []map[string]any
	c.json(&toks, "tokens", "list")
	if len(toks) < 2 {
		t.Fatalf("tokens list: %v", toks)
	}
	if r := c.ok("tokens", "show", tok["id"].(string)); !strings.Contains(r.stdout, "reader") || strings.Contains(r.stdout, tok["token"].(string)) {
		t.Fatalf("tokens show:\n%s", r.stdout)
	}
	reader := a.ctl(t)
	reader.env["OTAD_TOKEN"] = tok["token"].(string)
	reader.env["OTAD_PRODUCT"] = "CTLPROD001"
	reader.ok("devices", "list")
	reader.fails(cli.ExitError, "otactl: 403 forbidden: ", "devices", "create", "nope")
	c.ok("tokens", "revoke", tok["id"].(string))
	reader.fails(cli.ExitError, "otactl: 401 unauthorized: ", "devices", "list")
	c.fails(cli.ExitError, "otactl: 404 not_found: ", "tokens", "show", tok["id"].(string))

	// Events: the log, filtered, and its tail across a dropped connection.
	var events []map[string]any
	c.json(&events, "events", "list", "--product", "CTLPROD001", "--type", "device.*", "--limit", "0")
	created := 0
	for _, e := range events {
		if e["type"] == "device.created" {
			created++
		}
	}
	if created != 7 {
		t.Fatalf("events list: %d device.created, want 7: %v", created, events)
	}
	if r := c.ok("events", "list", "--type", "firmware.uploaded"); !strings.Contains(r.stdout, "firmware.uploaded") || !strings.HasPrefix(r.stdout, "SEQ") {
		t.Fatalf("events list table:\n%s", r.stdout)
	}
	c.fails(cli.ExitError, "otactl: 400 invalid: ", "events", "list", "--type", "Bad Type")

	tail := c.start("events", "tail", "--product", "CTLPROD001", "--type", "device.created", "-o", "json")
	waitFor(t, "the tail's stream", func() bool { n, _ := c.tr.streamsOpened(); return n == 1 })
	c.ok("devices", "create", "tail-1")
	waitFor(t, "tail-1 in the tail", func() bool { return strings.Contains(tail.out.String(), `"tail-1"`) })
	c.tr.cut()
	c.ok("devices", "create", "tail-2") // while the stream is down, or just back
	waitFor(t, "the tail to reconnect", func() bool { n, _ := c.tr.streamsOpened(); return n == 2 })
	c.ok("devices", "create", "tail-3")
	waitFor(t, "tail-3 in the tail", func() bool { return strings.Contains(tail.out.String(), `"tail-3"`) })
	tail.cancel()
	r = tail.wait(t)
	if r.code != 0 || !strings.Contains(r.stderr, "event stream lost") {
		t.Fatalf("events tail: %+v", r)
	}
	var seqs []float64
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil || e["type"] != "device.created" {
			t.Fatalf("events tail line %q: %v", l, err)
		}
		seqs = append(seqs, e["seq"].(float64))
	}
	if len(seqs) != 3 || !(seqs[0] < seqs[1] && seqs[1] < seqs[2]) {
		t.Fatalf("events tail printed %v, want tail-1..3 once each, in order:\n%s", seqs, r.stdout)
	}
	if _, ids := c.tr.streamsOpened(); ids[0] != "" || ids[1] != fmt.Sprint(seqs[0]) {
		t.Fatalf("the tail reconnected with Last-Event-ID %q, want %v", ids, seqs[0])
	}
}

// jobs create with every option of JobCreate, read back; the job
// controls; each device's progress; the refusals.
func TestOtactlJobs(t *testing.T) {
	a := startApp(t, "sqlite", nil)
	c := a.ctl(t)
	c.env["OTAD_PRODUCT"] = "CTLJOBS001"
	c.ok("products", "create", "jobs", "--id", "CTLJOBS001")
	for i := range 4 {
		c.ok("devices", "create", fmt.Sprintf("d%d", i), "--version", "1.0.0")
	}
	c.ok("firmware", "upload", randomFile(t, 4096), "--version", "2.0.0")

	every := []string{"jobs", "create", "--firmware", "2.0.0", "--all", "--timeout", "10m", "--max-retries", "1",
		"--retry-backoff", "1m", "--max-concurrent", "5", "--max-per-minute", "60", "--start-at", "1h", "--rollback-window", "30m",
		"--phase", "count=1,soak=10m,threshold=90,abort=failed:50:1:cancel", "--phase", "percent=50%,soak=60", "--phase", "rest",
		"--phase-seed", "42", "--spread-versions", "--abort", "any:20:2:pause", "--abort", "timed_out:30",
		"--rate", "base=10,factor=2,every=5,on=succeeded", "--window", "start=02:00,duration=3h,days=mon+tue,tz=Europe/Berlin",
		"--window", "start=23:30,duration=90", "--end-at", "48h", "--continuous"}
	var body map[string]any
	c.json(&body, append(every, "--dry-run")...)
	if body["timeout_seconds"] != 600.0 || body["continuous"] != true || len(body["phases"].([]any)) != 3 {
		t.Fatalf("jobs create --dry-run: %v", body)
	}
	var none []map[string]any
	if c.json(&none, "jobs", "list"); len(none) != 0 {
		t.Fatalf("the dry run created a job: %v", none)
	}
	type abort struct {
		FailureType      string  `json:"failure_type"`
		ThresholdPercent float64 `json:"threshold_percent"`
		MinEnded         int     `json:"min_ended"`
		Action           string  `json:"action"`
	}
	var job struct {
		ID                    string
		Status                string
		TimeoutSeconds        int     `json:"timeout_seconds"`
		MaxRetries            int     `json:"max_retries"`
		RetryBackoffSeconds   int     `json:"retry_backoff_seconds"`
		MaxConcurrent         int     `json:"max_concurrent"`
		MaxPerMinute          int     `json:"max_per_minute"`
		StartAt               *string `json:"start_at"`
		RollbackWindowSeconds int     `json:"rollback_window_seconds"`
		Phases                []struct {
			Percent          float64 `json:"percent"`
			Count            int     `json:"count"`
			SoakSeconds      int     `json:"soak_seconds"`
			SuccessThreshold float64 `json:"success_threshold"`
			Abort            []abort `json:"abort"`
			Size             int     `json:"size"`
		}
		PhaseSeed      int64   `json:"phase_seed"`
		SpreadVersions bool    `json:"spread_versions"`
		Abort          []abort `json:"abort"`
		Rate           struct {
			BasePerMinute   int     `json:"base_per_minute"`
			IncrementFactor float64 `json:"increment_factor"`
			IncrementEvery  int     `json:"increment_every"`
			IncrementOn     string  `json:"increment_on"`
		}
		Windows []struct {
			Days            []string `json:"days"`
			Start           string   `json:"start"`
			DurationMinutes int      `json:"duration_minutes"`
			TimeZone        string   `json:"time_zone"`
		} `json:"maintenance_windows"`
		EndAt      *string `json:"end_at"`
		Continuous bool    `json:"continuous"`
		Total      int     `json:"total"`
	}
	c.json(&job, every...)
	c.json(&job, "jobs", "show", job.ID)
	ph := job.Phases
	if job.Status != "scheduled" || job.TimeoutSeconds != 600 || job.MaxRetries != 1 || job.RetryBackoffSeconds != 60 ||
		job.MaxConcurrent != 5 || job.MaxPerMinute != 60 || job.StartAt == nil || job.RollbackWindowSeconds != 1800 ||
		len(ph) != 3 || ph[0].Count != 1 || ph[0].SoakSeconds != 600 || ph[0].SuccessThreshold != 90 ||
		len(ph[0].Abort) != 1 || ph[0].Abort[0] != (abort{"failed", 50, 1, "cancel"}) ||
		ph[1].Percent != 50 || ph[1].SoakSeconds != 60 || ph[2].Count != 0 || ph[2].Percent != 0 ||
		job.PhaseSeed != 42 || !job.SpreadVersions || len(job.Abort) != 2 || job.Abort[0] != (abort{"any", 20, 2, "pause"}) ||
		job.Abort[1].FailureType != "timed_out" || job.Abort[1].ThresholdPercent != 30 ||
		job.Rate.BasePerMinute != 10 || job.Rate.IncrementFactor != 2 || job.Rate.IncrementEvery != 5 || job.Rate.IncrementOn != "succeeded" ||
		len(job.Windows) != 2 || strings.Join(job.Windows[0].Days, "+") != "mon+tue" || job.Windows[0].Start != "02:00" ||
		job.Windows[0].DurationMinutes != 180 || job.Windows[0].TimeZone != "Europe/Berlin" || job.Windows[1].DurationMinutes != 90 ||
		job.EndAt == nil || !job.Continuous || job.Total != 4 {
		t.Fatalf("job with every option: %+v", job)
	}
	r := c.ok("jobs", "show", job.ID)
	for _, want := range []string{"status:", "scheduled", "phases:", "PHASE", "abort[0]:", "any ≥ 20% of ≥ 2 ended → pause",
		"window[0]:", "mon,tue 02:00 for 180 min Europe/Berlin", "rate:", "10/min ×2 every 5 succeeded", "devices:", "4: queued 4"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("jobs show lacks %q:\n%s", want, r.stdout)
		}
	}

	// Controls.
	c.json(&job, "jobs", "pause", job.ID)
	if job.Status != "paused" {
		t.Fatalf("jobs pause: %+v", job)
	}
	c.fails(cli.ExitError, "otactl: 409 conflict: ", "jobs", "pause", job.ID)
	c.json(&job, "jobs", "resume", job.ID)
	c.json(&job, "jobs", "cancel", job.ID)
	if job.Status != "canceled" {
		t.Fatalf("jobs cancel: %+v", job)
	}
	c.fails(cli.ExitError, "otactl: 409 conflict: ", "jobs", "retry", job.ID)
	c.fails(cli.ExitError, "otactl: 409 conflict: ", "jobs", "cancel", job.ID)

	// Named targets, from flags and a file; the devices of a job.
	names := writeFile(t, "names.txt", "d1\n# a comment\nd2\n")
	c.json(&job, "jobs", "create", "--firmware", "2.0.0", "--device", "d0", "--devices-file", names)
	if job.Total != 3 || job.Status != "running" {
		t.Fatalf("job over d0..d2: %+v", job)
	}
	var execs []map[string]any
	c.json(&execs, "jobs", "devices", job.ID, "--state", "queued")
	if len(execs) != 3 || execs[0]["device_name"] != "d0" {
		t.Fatalf("jobs devices --state queued: %v", execs)
	}
	c.json(&execs, "jobs", "devices", job.ID, "--state", "done")
	if len(execs) != 0 {
		t.Fatalf("jobs devices --state done: %v", execs)
	}
	if r := c.ok("jobs", "devices", job.ID); !strings.HasPrefix(r.stdout, "DEVICE") || strings.Count(r.stdout, "queued") != 3 {
		t.Fatalf("jobs devices table:\n%s", r.stdout)
	}
	c.fails(cli.ExitError, "otactl: 409 conflict: ", "jobs", "advance", job.ID) // no phases
	c.fails(cli.ExitError, "(1 devices: d1)", "jobs", "create", "--firmware", "2.0.0", "--device", "d1", "--device", "d3")
	c.fails(cli.ExitError, "otactl: 400 invalid: ", "jobs", "devices", job.ID, "--state", "sleeping")
	var jobs []map[string]any
	c.json(&jobs, "jobs", "list")
	if len(jobs) != 2 || jobs[1]["id"] != job.ID {
		t.Fatalf("jobs list: %v", jobs)
	}
	if r := c.ok("jobs", "list"); !strings.Contains(r.stdout, "3 devices") || !strings.Contains(r.stdout, "all devices") {
		t.Fatalf("jobs list table:\n%s", r.stdout)
	}
	c.fails(cli.ExitError, "otactl: 404 not_found: ", "jobs", "show", "00000000000000000000")
	c.fails(cli.ExitError, "otactl: 400 invalid: ", "jobs", "create", "--firmware", "9.9.9", "--all")

	// Refused before anything is sent.
	for _, bad := range [][]string{
		{"--all"},
		{"--firmware", "2.0.0"},
		{"--firmware", "2.0.0", "--all", "--version", "1.0.0"},
		{"--firmware", "2.0.0", "--all", "--phase", "percent=ten"},
		{"--firmware", "2.0.0", "--all", "--phase", "size=3"},
		{"--firmware", "2.0.0", "--all", "--abort", "slow:10"},
		{"--firmware", "2.0.0", "--all", "--abort", "failed:10:1:explode"},
		{"--firmware", "2.0.0", "--all", "--rate", "base=10"},
		{"--firmware", "2.0.0", "--all", "--window", "start=02:00"},
		{"--firmware", "2.0.0", "--all", "--start-at", "tomorrow"},
		{"--firmware", "2.0.0", "--all", "--timeout", "ten"},
	} {
		if r := c.run(append([]string{"jobs", "create"}, bad...)...); r.code != cli.ExitUsage {
			t.Errorf("jobs create %v: exit %d, want 2; %s", bad, r.code, r.stderr)
		}
	}
}

// jobs watch follows otasim's upgrades to the end: 0 when every device is
// done, 3 when some failed, 4 for a canceled job, 5 for a paused one with
// --exit-on-pause; the devices imported with otactl log in with the
// secrets it wrote.
func TestOtactlWatch(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		c := a.ctl(t)
		fw := randomFile(t, 64<<10)
		fleet := func(pid string, n int) string {
			c.ok("products", "create", pid, "--id", pid)
			c.ok("firmware", "upload", fw, "--version", "2.0.0", "-p", pid)
			var csv strings.Builder
			for i := range n {
				fmt.Fprintf(&csv, "%s-%02d,1.0.0\n", strings.ToLower(pid[:4]), i)
			}
			secrets := filepath.Join(t.TempDir(), "secrets.csv")
			c.ok("devices", "import", writeFile(t, "fleet.csv", csv.String()), "--secrets-out", secrets, "-p", pid)
			return secrets
		}
		good, bad := "WATCHGOOD1", "WATCHBAD01"
		startSim(t, a.MQTTAddr(), fleet(good, 6))
		startSim(t, a.MQTTAddr(), fleet(bad, 4), "-behaviour", "fail:-4=50%")

		var job struct{ ID, Status string }
		// A soak of a second: the canaries' version reports come after
		// their done (with none, the gate may look before and pause).
		c.json(&job, "jobs", "create", "-p", good, "--firmware", "2.0.0", "--all", "--phase", "count=2,soak=1s", "--phase", "rest")
		r := c.run("jobs", "watch", job.ID, "-p", good)
		if r.code != cli.ExitOK || !strings.Contains(r.stderr, "completed: 6 of 6 devices done") || !strings.Contains(r.stdout, "completed 6/6 done (phase 2 of 2): done 6") {
			t.Fatalf("watch of a good job: %+v", r)
		}
		var devs []map[string]any
		c.json(&devs, "devices", "list", "-p", good, "--version", "2.0.0", "--online")
		if len(devs) != 6 {
			t.Fatalf("after the good job, %d devices online on 2.0.0", len(devs))
		}

		c.json(&job, "jobs", "create", "-p", bad, "--firmware", "2.0.0", "--all", "--max-retries", "0")
		r = c.run("jobs", "watch", job.ID, "-p", bad, "-o", "json")
		if r.code != cli.ExitFailures || !strings.Contains(r.stderr, "completed with 2 of 4 devices not done (failed 2)") {
			t.Fatalf("watch of a failing job: %+v", r)
		}
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		var last struct {
			Status string
			Counts map[string]int
		}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last.Status != "completed" || last.Counts["failed"] != 2 || last.Counts["done"] != 2 {
			t.Fatalf("watch -o json ended with %q: %v", lines[len(lines)-1], err)
		}
		var failed []map[string]any
		c.json(&failed, "jobs", "devices", job.ID, "-p", bad, "--state", "failed")
		if len(failed) != 2 || failed[0]["result_name"] != "md5_mismatch" {
			t.Fatalf("failed devices: %v", failed)
		}

		// A scheduled job: paused (--exit-on-pause), then canceled.
		c.json(&job, "jobs", "create", "-p", good, "--firmware", "2.0.0", "--all", "--start-at", "1h")
		w := c.start("jobs", "watch", job.ID, "-p", good, "--exit-on-pause")
		waitFor(t, "the watch to open its stream", func() bool { return strings.Contains(w.out.String(), "scheduled") })
		c.ok("jobs", "pause", job.ID, "-p", good)
		if r := w.wait(t); r.code != cli.ExitPaused || !strings.Contains(r.stderr, "paused") {
			t.Fatalf("watch --exit-on-pause: %+v", r)
		}
		w = c.start("jobs", "watch", job.ID, "-p", good)
		waitFor(t, "the second watch to show the job", func() bool { return strings.Contains(w.out.String(), "paused") })
		c.ok("jobs", "cancel", job.ID, "-p", good)
		if r := w.wait(t); r.code != cli.ExitCanceled || !strings.Contains(r.stderr, "canceled") {
			t.Fatalf("watch of a canceled job: %+v", r)
		}
		c.fails(cli.ExitCanceled, "canceled", "jobs", "watch", job.ID, "-p", good) // already over
		c.fails(cli.ExitError, "otactl: 404 not_found: ", "jobs", "watch", "00000000000000000000", "-p", good)
	})
}

// webhooks: created, delivered to a real receiver, changed, rotated,
// its deliveries listed, deleted.
func TestOtactlWebhooks(t *testing.T) {
	a := startApp(t, "sqlite", fastWebhooks)
	c := a.ctl(t)
	c.env["OTAD_PRODUCT"] = "CTLHOOK001"
	c.ok("products", "create", "hooks", "--id", "CTLHOOK001")
	recv := newHookReceiver(t, 0)

	var wh map[string]any
	c.json(&wh, "webhooks", "create", recv.srv.URL, "--event-type", "device.created", "--product", "CTLHOOK001", "--description", "ci")
	id, _ := wh["id"].(string)
	secret, _ := wh["secret"].(string)
	if !strings.HasPrefix(id, "wh_") || !strings.HasPrefix(secret, "whsec_") || wh["enabled"] != true || wh["product_id"] != "CTLHOOK001" {
		t.Fatalf("webhooks create: %v", wh)
	}
	recv.setSecret(secret)
	c.fails(cli.ExitError, "otactl: 400 invalid: ", "webhooks", "create", "ftp://example.com/x")
	c.ok("devices", "create", "hooked-1")
	waitFor(t, "the delivery of device.created", func() bool { seqs, _ := recv.received(); return len(seqs) == 1 })
	var deliveries []map[string]any
	waitFor(t, "the delivery in the log", func() bool {
		c.json(&deliveries, "webhooks", "deliveries", id)
		return len(deliveries) == 1 && deliveries[0]["delivered_at"] != nil
	})
	if deliveries[0]["event_type"] != "device.created" || deliveries[0]["status_code"] != 200.0 {
		t.Fatalf("webhooks deliveries: %v", deliveries)
	}
	if r := c.ok("webhooks", "deliveries", id); !strings.HasPrefix(r.stdout, "SEQ") || !strings.Contains(r.stdout, "device.created") {
		t.Fatalf("webhooks deliveries table:\n%s", r.stdout)
	}

	c.json(&wh, "webhooks", "update", id, "--enabled=false", "--event-type", "device.*", "--description", "off")
	if wh["enabled"] != false || wh["description"] != "off" || fmt.Sprint(wh["event_types"]) != "[device.*]" {
		t.Fatalf("webhooks update: %v", wh)
	}
	c.fails(cli.ExitUsage, "give a flag to change", "webhooks", "update", id)
	var whs []map[string]any
	c.json(&whs, "webhooks", "list")
	if len(whs) != 1 || whs[0]["id"] != id || whs[0]["secret"] != nil {
		t.Fatalf("webhooks list: %v", whs)
	}
	if r := c.ok("webhooks", "show", id); !strings.Contains(r.stdout, "enabled:") || strings.Contains(r.stdout, secret) {
		t.Fatalf("webhooks show:\n%s", r.stdout)
	}
	c.json(&wh, "webhooks", "rotate-secret", id)
	if s, _ := wh["secret"].(string); !strings.HasPrefix(s, "whsec_") || s == secret {
		t.Fatalf("webhooks rotate-secret: %v", wh)
	}
	c.ok("webhooks", "delete", id)
	c.fails(cli.ExitError, "otactl: 404 not_found: ", "webhooks", "show", id)
}
