package main

// The web console in a real browser: Debian's chromium, driven by chromedp,
// against the real daemon and devices simulated by otasim. Every page is
// screenshot at 1280 px and at phone width into the artifacts directory
// ($OTAD_TEST_ARTIFACTS, else cmd/otad/testdata/console-artifacts).

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/otad/otad/internal/store/testdb"
)

// browser is one headless chromium tab on the console.
type browser struct {
	t    *testing.T
	ctx  context.Context
	base string
	dir  string // where screenshots go
	name string // the viewport's name in screenshot file names

	mu       sync.Mutex
	problems []string // exceptions and CSP violations the page reported
}

func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testdb.SkipOrFail(t, "no chromium on PATH (scripts/test.sh installs Debian's chromium)")
	return ""
}

func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("OTAD_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("testdata", "console-artifacts")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 900), chromedp.Flag("lang", "en-US"))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	b := &browser{t: t, ctx: ctx, base: base, dir: artifactsDir(t), name: "desktop"}
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		cancel()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			// Refused requests (the bad token's 401) are logged by the
			// browser as network errors: expected. Anything the page's
			// code threw, or the CSP blocked, is not.
			if m.IsException() || m.Source == "security" || m.Type == chromedp.ConsoleError && m.Source != "network" {
				b.mu.Lock()
				b.problems = append(b.problems, fmt.Sprintf("%s:%d %s", m.URL, m.Line+1, m))
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		<-done
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, p := range b.problems {
			t.Errorf("the page reported: %s", p)
		}
	})
	t.Logf("console screenshots go to %s", b.dir)
	return b
}

// run runs actions with a generous deadline; on failure it keeps a
// screenshot of what the page showed.
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 3*time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.shot("failed")
		b.t.Fatalf("%s: %v\npage text:\n%s", what, err, b.eval(`document.body.innerText`))
	}
}

// eval returns the JSON-decoded value of a JavaScript expression.
func (b *browser) eval(expr string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[any](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	if s, ok := v.(string); ok {
		return s
	}
	out, _ := json.Marshal(v)
	return string(out)
}

// waitJS waits until a JavaScript condition holds on the page: the page's
// own state, never a fixed delay.
func (b *browser) waitJS(what, cond string) {
	b.t.Helper()
	b.run("waiting for "+what, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(150*time.Second)))
}

// waitText waits until the element sel shows text containing want.
func (b *browser) waitText(sel, want string) {
	b.t.Helper()
	b.waitJS(fmt.Sprintf("%s to show %q", sel, want), fmt.Sprintf(`(document.querySelector(%q)?.textContent ?? '').includes(%q)`, sel, want))
}

func (b *browser) open(route string) {
	b.t.Helper()
	b.run("open "+route, chromedp.Navigate(b.base+"/#"+route))
}

// set gives an input a value as typing would (input and change events).
func (b *browser) set(sel, value string) {
	b.t.Helper()
	b.run("set "+sel, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => {
		const el = document.querySelector(%q);
		if (!el) throw new Error('no element %s');
		el.value = %q;
		el.dispatchEvent(new Event('input', { bubbles: true }));
		el.dispatchEvent(new Event('change', { bubbles: true }));
	})()`, sel, sel, value)))
}

// fill sets fields: selector, value, selector, value…
func (b *browser) fill(pairs ...string) {
	b.t.Helper()
	for i := 0; i+1 < len(pairs); i += 2 {
		b.set(pairs[i], pairs[i+1])
	}
}

func (b *browser) click(sel string) {
	b.t.Helper()
	b.run("click "+sel, chromedp.Click(chromedp.CSS(sel)))
}

// shot keeps a screenshot of the whole page as name-{desktop,phone}.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	// From the top, so that the sticky header is where a person sees it.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0)`)); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	file := filepath.Join(b.dir, fmt.Sprintf("%s-%s.png", name, b.name))
	if err := os.WriteFile(file, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) viewport(name string, width, height int64, opts ...chromedp.EmulateViewportOption) {
	b.t.Helper()
	b.name = name
	b.run("viewport "+name, chromedp.EmulateViewport(width, height, opts...))
}

// TestConsole drives the console as an operator would: a bad token is
// refused, sign-in, firmware uploaded through the page, a phased job
// created through the form against otasim devices, paused and resumed
// from its live page, watched to the end.
func TestConsole(t *testing.T) {
	a := startApp(t, "sqlite", nil)
	b := newBrowser(t, a.HTTPURL())

	// The console's files are fixed routes with their security headers
	// (validated against the OpenAPI document), beside the download tokens.
	for _, p := range []string{"/", "/ui/main.js", "/ui/console.css", "/ui/favicon.svg"} {
		r := a.do("GET", p, nil, "Authorization", "")
		r.wantStatus(t, 200)
		if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Fatalf("%s: CSP %q", p, csp)
		}
	}
	a.do("GET", "/ui/nothing.js", nil, "Authorization", "").wantProblem(t, 404, "not_found")
	index := string(a.do("GET", "/", nil, "Authorization", "").body)
	if regexp.MustCompile(`<script(?:\s+type="module")?>|\son[a-z]+=|style=`).MatchString(index) {
		t.Fatalf("the page has inline script or style:\n%s", index)
	}

	pid := "CONSOLE001"
	a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "Thermostat", "description": "Living-room thermostats"}).wantStatus(t, 201)
	var names []string
	behaviours := map[string]string{}
	for i := range 12 {
		n := fmt.Sprintf("therm-%02d", i)
		names, behaviours[n] = append(names, n), "ok"
	}
	behaviours["therm-07"] = "fail:-4"
	file := a.provisionDevices(t, pid, behaviours, names...)
	for _, n := range []string{"legacy-0", "legacy-1"} { // offline, on an older version
		a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": n, "version": "0.9.0"}).wantStatus(t, 201)
	}
	// Each download takes about a second.
	sim := startSim(t, a.MQTTAddr(), file, "-download-rate", "65536")

	// A bad token is refused, and nothing is kept.
	b.open("/")
	b.run("sign-in form", chromedp.WaitVisible(chromedp.CSS("#token")))
	b.shot("signin")
	b.run("type a bad token", chromedp.SendKeys(chromedp.CSS("#token"), "not-a-token-0123456789"), chromedp.Click(chromedp.CSS("#signin")))
	b.waitText("#signin-status", "That token was refused")
	b.shot("signin-refused")
	if got := b.eval(`JSON.stringify([sessionStorage.length, localStorage.length])`); got != "[0,0]" {
		t.Fatalf("a refused token was kept: storage %s", got)
	}

	// Sign in: the token goes to sessionStorage, never into the URL.
	b.set("#token", testToken)
	b.click("#signin")
	b.waitText("main h1", "Fleet overview")
	b.waitText(".product-card", "14")
	b.waitText(".product-card", "12 online")
	if got := b.eval(`JSON.stringify([sessionStorage.getItem('otad.token') === ` + fmt.Sprintf("%q", testToken) + `, localStorage.length, location.href.includes('token')])`); got != "[true,0,false]" {
		t.Fatalf("token storage: %s", got)
	}
	b.shot("overview")

	// The SSE parser and its reconnection, in the browser that runs it:
	// chunks cut anywhere, CRLF, comments, retry, and Last-Event-ID on
	// reconnect; a refused stream is not tried again.
	got := b.eval(`(async () => {
		const m = await import('/ui/sse.js');
		const events = [];
		const p = new m.Parser(e => events.push(e));
		for (const c of ['id: 1\r', '\nevent: a\ndata: x\ndata:y\n', '\n: keep-alive\n\nid: 2\ndata', ': z\r\n\r\n', 'retry: 3000\n\n']) p.feed(c);
		const enc = new TextEncoder();
		const calls = [], seen = [];
		const fetchFn = async (url, opts) => {
			calls.push(opts.headers['Last-Event-ID'] || '');
			if (calls.length === 1) return new Response(new ReadableStream({ start(c) {
				c.enqueue(enc.encode('retry: 10\n\nid: 7\nevent: job.created\ndata: {"seq":7}\n\n')); c.close(); } }), { status: 200 });
			return new Response('{"code":"unauthorized","detail":"no"}', { status: 401 });
		};
		await new Promise(done => m.follow('/v1/events/stream', { fetchFn, onEvent: e => seen.push(e.type + '#' + e.id),
			onState: s => { seen.push(s); if (s === 'failed') done(); } }));
		return JSON.stringify({ events, retry: p.retry, lastId: p.lastId, calls, seen });
	})()`)
	want := `{"events":[{"id":"1","type":"a","data":"x\ny"},{"id":"2","type":"message","data":"z"}],"retry":3000,"lastId":"2","calls":["","7"],"seen":["open","job.created#7","reconnecting","failed"]}`
	if got != want {
		t.Fatalf("SSE parser:\n got %s\nwant %s", got, want)
	}

	// Products and devices, with the device list's filters.
	b.click(`.nav a[data-nav="products"]`)
	b.waitText("main table", pid)
	b.shot("products")
	b.open("/products/" + pid + "?version=1.0.0&online=true")
	b.waitText("main .row .muted", "12 devices")
	b.open("/products/" + pid + "?version=0.9.0")
	b.waitText("main .row .muted", "2 devices")
	b.open("/products/" + pid)
	b.waitText("main .row .muted", "14 devices")
	b.shot("devices")
	b.set(`input[name="name"]`, "no-such-device")
	b.run("open a device by name", chromedp.Click(chromedp.CSS(`form[role=search]:nth-of-type(2) button`)))
	b.waitText("main", "No device named no-such-device")
	b.set(`input[name="name"]`, "therm-03")
	b.run("open a device by name", chromedp.Click(chromedp.CSS(`form[role=search]:nth-of-type(2) button`)))
	b.waitText("main h2", "therm-03")
	b.waitText("main table", "reported version 1.0.0")
	b.shot("device")

	// Firmware uploaded through the page, with its progress.
	img := make([]byte, 64<<10)
	rand.Read(img)
	imgFile := filepath.Join(t.TempDir(), "fw-2.0.0.bin")
	if err := os.WriteFile(imgFile, img, 0o600); err != nil {
		t.Fatal(err)
	}
	b.click(`.tabs a[href$="/firmware"]`)
	b.run("firmware form", chromedp.WaitVisible(chromedp.CSS("#fw-file")), chromedp.SetUploadFiles(chromedp.CSS("#fw-file"), []string{imgFile}))
	b.waitJS("the version guessed from the file name", `document.querySelector('#fw-version').value === '2.0.0'`)
	b.set("#fw-description", "Fixes the schedule")
	b.click("#fw-upload")
	b.waitText("#fw-status", "Uploaded 2.0.0")
	b.waitJS("the progress bar at 100%", `document.querySelector('.upload-progress [role=progressbar]').getAttribute('aria-valuenow') === '100'`)
	b.waitText("main table", "Fixes the schedule")
	b.shot("firmware")
	var fw struct{ MD5, Description string }
	a.do("GET", "/v1/products/"+pid+"/firmware/2.0.0", nil).decode(t, &fw)
	if sum := md5.Sum(img); fw.MD5 != hex.EncodeToString(sum[:]) || fw.Description != "Fixes the schedule" {
		t.Fatalf("uploaded firmware %+v", fw)
	}

	// A phased job through the form: the devices on 1.0.0, in three
	// phases, an exponential rate, an always-open window, an end.
	b.click(`.tabs a[href$="/jobs"]`)
	b.click("#new-job")
	b.run("job form", chromedp.WaitVisible(chromedp.CSS("#job-create")))
	for _, sel := range []string{"#t-versions", "#add-phase", "#add-phase", "#job-rate", "#add-window"} {
		b.click(sel)
	}
	b.fill("#job-firmware", "2.0.0", "#job-versions", "1.0.0",
		".phase:nth-child(1) .phase-kind", "count", ".phase:nth-child(1) .phase-size", "2",
		".phase:nth-child(1) .phase-soak", "1", ".phase:nth-child(1) .phase-threshold", "50",
		".phase:nth-child(2) .phase-size", "50", ".phase:nth-child(2) .phase-soak", "1", ".phase:nth-child(2) .phase-threshold", "80",
		"#job-max-concurrent", "4", "#rate-base", "30", "#rate-factor", "2", "#rate-every", "2",
		"#job-timeout", "120", "#job-retries", "0",
		".window .window-start", "00:00", ".window .window-duration", "1440", ".window .window-zone", "UTC")
	b.run("end_at in two hours", chromedp.Evaluate[chromedp.Void](`(() => {
		const d = new Date(Date.now() + 2 * 3600e3), p = n => String(n).padStart(2, '0');
		const el = document.querySelector('#job-end-at');
		el.value = d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + 'T' + p(d.getHours()) + ':' + p(d.getMinutes());
		el.dispatchEvent(new Event('change', { bubbles: true }));
	})()`))
	b.waitText("#job-preview", "12 devices targeted, 12 online now")
	b.waitText("#job-preview", "Phases: 1: 2 · 2: 6 · 3: 4")
	b.shot("job-form")
	b.click("#job-create")
	b.waitJS("the job page", `/\/jobs\/[0-9a-f]{20}$/.test(location.hash)`)
	id := b.eval(`location.hash.split('/').pop()`)
	var created struct {
		Status     string
		MaxRetries int `json:"max_retries"`
		Targets    struct{ Versions []string }
		Phases     []struct {
			Count            int
			Percent          float64
			SoakSeconds      int     `json:"soak_seconds"`
			SuccessThreshold float64 `json:"success_threshold"`
		}
		Rate *struct {
			Base   int     `json:"base_per_minute"`
			Factor float64 `json:"increment_factor"`
			Every  int     `json:"increment_every"`
		}
		Windows []struct {
			Start    string
			Duration int    `json:"duration_minutes"`
			Zone     string `json:"time_zone"`
		} `json:"maintenance_windows"`
		EndAt time.Time `json:"end_at"`
		Total int
	}
	a.do("GET", "/v1/products/"+pid+"/jobs/"+id, nil).decode(t, &created)
	if created.Total != 12 || created.MaxRetries != 0 || fmt.Sprint(created.Targets.Versions) != "[1.0.0]" || len(created.Phases) != 3 ||
		created.Phases[0].Count != 2 || created.Phases[0].SuccessThreshold != 50 || created.Phases[1].Percent != 50 || created.Phases[1].SoakSeconds != 1 ||
		created.Rate == nil || created.Rate.Base != 30 || created.Rate.Factor != 2 || created.Rate.Every != 2 ||
		len(created.Windows) != 1 || created.Windows[0].Start != "00:00" || created.Windows[0].Duration != 1440 || created.Windows[0].Zone != "UTC" ||
		created.EndAt.Sub(time.Now().Add(2*time.Hour)).Abs() > 5*time.Minute {
		t.Fatalf("the form created %+v", created)
	}

	// The live page: pause and resume from it, then watch it complete.
	b.waitText("#stream-state", "live")
	b.waitText("#job-status", "running")
	b.click("#action-pause")
	b.waitText("#job-status", "paused")
	if j := a.job(t, pid, id); j.Status != "paused" {
		t.Fatalf("after Pause the API says %s", j.Status)
	}
	b.shot("job-paused")
	b.click("#action-resume")
	b.waitJS("the job to run again", `['running', 'completed'].includes(document.querySelector('#job-status').textContent)`)
	b.waitText("#job-status", "completed")
	b.waitText("#count-done strong", "11")
	b.waitText("#count-failed strong", "1")
	b.waitJS("the timeline to show each phase starting", `document.querySelectorAll('#timeline li[data-type="job.phase_started"]').length === 2`)
	for _, typ := range []string{"job.paused", "job.running", "job.completed", "execution.failed"} {
		b.waitJS("the timeline to show "+typ, fmt.Sprintf(`document.querySelector('#timeline li[data-type=%q]') !== null`, typ))
	}
	b.waitJS("every phase to have ended", `[...document.querySelectorAll('#job-phases tbody tr')].map(r => r.querySelector('.badge').textContent).join() === 'passed,passed,completed'`)
	b.shot("job")
	if j := a.job(t, pid, id); j.Status != "completed" || j.Counts["done"] != 11 || j.Counts["failed"] != 1 {
		t.Fatalf("the API says %s %v", j.Status, j.Counts)
	}
	// The README's picture of the job page: the top of it, at 1280 px.
	b.run("a taller viewport", chromedp.EmulateViewport(1280, 1250), chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0)`))
	if png, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot()); err == nil {
		os.WriteFile(filepath.Join(b.dir, "readme-job.png"), png, 0o644)
	}
	// Retry from the page: the failed device gets a new attempt (and
	// fails again), the job completes again.
	b.click("#action-retry")
	b.waitJS("the retried device to fail again", `document.querySelectorAll('#timeline li[data-type="execution.failed"]').length === 2`)
	b.waitText("#job-status", "completed")
	if j := a.job(t, pid, id); j.Status != "completed" || j.Counts["done"] != 11 || j.Counts["failed"] != 1 {
		t.Fatalf("after Retry the API says %s %v", j.Status, j.Counts)
	}
	// The device table, filtered by state, with the failure's name.
	b.set("#exec-state", "failed")
	b.waitJS("only the failed device", `[...document.querySelectorAll('#job-devices tbody tr')].map(r => r.dataset.device).join() === 'therm-07'`)
	b.waitText("#job-devices .result-name", "md5_mismatch")
	b.shot("job-failed-devices")
	b.set("#exec-state", "")
	b.waitJS("every device", `document.querySelectorAll('#job-devices tbody tr').length === 12`)

	// The overview shows the fleet on its new version.
	b.open("/")
	b.waitText(".product-card", "2.0.0")
	b.waitText(".product-card", "None.")

	// Every page again at phone width, each once it shows what it is for.
	b.viewport("phone", 390, 844, chromedp.EmulateMobile)
	for _, p := range []struct{ name, route, sel, text string }{
		{"overview", "/", ".product-card", "2.0.0"},
		{"products", "/products", "main table", pid},
		{"devices", "/products/" + pid, "main table", "therm-11"},
		{"device", "/products/" + pid + "/devices/therm-07", "main table", "reported version"},
		{"firmware", "/products/" + pid + "/firmware", "main table", "2.0.0"},
		{"jobs", "/products/" + pid + "/jobs", "main table", id},
		{"job-form", "/products/" + pid + "/jobs/new", "#job-preview", "14 devices targeted"},
		{"job", "/products/" + pid + "/jobs/" + id, "#timeline", "Job created"},
	} {
		name := p.name
		b.open(p.route)
		b.waitText(p.sel, p.text)
		if name == "job" {
			b.waitText("#stream-state", "live")
			b.waitText("#job-devices", "therm-11")
		}
		if w := b.eval(`String(document.documentElement.scrollWidth)`); w != "390" {
			t.Errorf("%s is %s px wide at phone width: it scrolls sideways", name, w)
		}
		b.shot(name)
	}
	b.click("#signout")
	b.run("sign-in form", chromedp.WaitVisible(chromedp.CSS("#token")))
	if got := b.eval(`String(sessionStorage.length + localStorage.length)`); got != "0" {
		t.Fatalf("signing out left %s items in storage", got)
	}
	b.shot("signin")
	sim.stop(t)
}
