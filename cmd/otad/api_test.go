package main

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestHealthAndMetrics(t *testing.T) {
	forEachEngine(t, testHealthAndMetrics)
}

func testHealthAndMetrics(t *testing.T, engine string) {
	metricsAddr := freeAddr(t)
	a := startApp(t, engine, map[string]string{"OTAD_METRICS_ADDR": metricsAddr})
	a.do("POST", "/v1/products", map[string]string{"id": "METRIC0001", "name": "m"}).wantStatus(t, 201)
	for _, n := range []string{"m1", "m2"} {
		a.do("POST", "/v1/products/METRIC0001/devices", map[string]string{"name": n, "version": "1.0"}).wantStatus(t, 201)
	}
	a.uploadFirmware(t, "METRIC0001", "2.0", 100)
	a.do("POST", "/v1/products/METRIC0001/jobs", map[string]any{"firmware_version": "2.0", "targets": map[string]any{"all": true}}).wantStatus(t, 201)
	a.do("GET", "/healthz", nil, "Authorization", "").wantStatus(t, 200)
	a.do("GET", "/readyz", nil, "Authorization", "").wantStatus(t, 200)
	a.do("GET", "/v1/products", nil).wantStatus(t, 200)
	// On the listener that also serves downloads, /metrics needs a token.
	noToken, err := http.Get(a.HTTPURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	noToken.Body.Close()
	if noToken.StatusCode != 401 {
		t.Fatalf("/metrics without a token: %d, want 401", noToken.StatusCode)
	}
	req, _ := http.NewRequest("GET", a.HTTPURL()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	withToken, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	withToken.Body.Close()
	if withToken.StatusCode != 200 {
		t.Fatalf("/metrics with a token: %d", withToken.StatusCode)
	}
	// OTAD_METRICS_ADDR serves them alone, without a token, and nothing else.
	other, err := http.Get("http://" + metricsAddr + "/v1/products")
	if err != nil {
		t.Fatal(err)
	}
	other.Body.Close()
	if other.StatusCode != 404 {
		t.Fatalf("the metrics listener serves the API: %d", other.StatusCode)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := ioCopy(&b, resp); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`otad_http_requests_total{code="200",method="GET",route="/v1/products"} 1`,
		`otad_http_request_duration_seconds_count{method="GET",route="/readyz"} 1`,
		`go_goroutines`,
		// The OTA gauges.
		`otad_devices 2`, `otad_devices_online 0`,
		`otad_jobs{status="running"} 1`, `otad_jobs{status="completed"} 0`,
		`otad_job_executions{state="queued"} 2`, `otad_job_executions{state="rolled_back"} 0`,
		`otad_mqtt_reports_pending 0`, `otad_engine_pass_seconds_count`, `otad_engine_pass_errors_total 0`,
		`otad_db_connections{use="in_use"}`, `otad_db_connections_max`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, b.String())
		}
	}
}

func TestOpenAPIServed(t *testing.T) {
	a := startApp(t, "sqlite", nil)
	var doc map[string]any
	r := a.do("GET", "/v1/openapi.json", nil)
	r.wantStatus(t, 200)
	r.decode(t, &doc)
	if doc["openapi"] != "3.0.3" || doc["paths"] == nil {
		t.Fatalf("openapi.json = %.200s", r.body)
	}
	a.do("GET", "/v1/openapi.yaml", nil).wantStatus(t, 200)
	a.do("GET", "/v1/openapi.json", nil, "Authorization", "").wantProblem(t, 401, "unauthorized")
}

func TestAuth(t *testing.T) {
	a := startApp(t, "sqlite", nil)
	for _, h := range []string{"", "Bearer", "Bearer ", "Basic " + testToken, "Bearer wrong-token", "Bearer " + testToken + "x", "bearer" + testToken} {
		r := a.do("GET", "/v1/products", nil, "Authorization", h)
		p := r.wantProblem(t, 401, "unauthorized")
		if p["detail"] != "a valid bearer token is required" {
			t.Errorf("401 detail %q reveals more than needed", p["detail"])
		}
		if r.Header.Get("WWW-Authenticate") == "" {
			t.Error("401 without WWW-Authenticate")
		}
	}
	a.do("POST", "/v1/products", map[string]string{"name": "x"}, "Authorization", "Bearer nope").wantProblem(t, 401, "unauthorized")
	r := a.do("GET", "/v1/products", nil)
	var page struct{ Items []any }
	r.decode(t, &page)
	if len(page.Items) != 0 {
		t.Fatal("an unauthorized create stored a product")
	}
	// The scheme is case-insensitive (RFC 7235).
	a.do("GET", "/v1/products", nil, "Authorization", "bearer "+testToken).wantStatus(t, 200)
}

func TestBootstrapTokenPrintedOnce(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{"OTAD_API_TOKEN": "", "OTAD_DATA_DIR": dir}
	first := startApp(t, "sqlite", env)
	out := first.stdout.String()
	i := strings.Index(out, "otad_")
	if i < 0 {
		t.Fatalf("first start printed no token: %q", out)
	}
	token := strings.Fields(out[i:])[0]
	first.do("GET", "/v1/products", nil, "Authorization", "Bearer "+token).wantStatus(t, 200)
	first.Close(t.Context())
	second := startApp(t, "sqlite", env)
	if strings.Contains(second.stdout.String(), "otad_") {
		t.Fatalf("second start printed a token again: %q", second.stdout.String())
	}
	second.do("GET", "/v1/products", nil, "Authorization", "Bearer "+token).wantStatus(t, 200)
	// It is revocable, and not generated again once revoked.
	other := second.createToken(token, map[string]any{"name": "ops", "scope": "admin"})
	bootstrap := second.tokens(token)["bootstrap"]
	second.as(other.Token, "DELETE", "/v1/tokens/"+bootstrap.ID, nil).wantStatus(t, 204)
	second.stop()
	third := startApp(t, "sqlite", env)
	if strings.Contains(third.stdout.String(), "otad_") {
		t.Fatalf("a start after the revocation printed a token: %q", third.stdout.String())
	}
	third.as(token, "GET", "/v1/products", nil).wantProblem(t, 401, "unauthorized")
	third.as(other.Token, "GET", "/v1/products", nil).wantStatus(t, 200)
}

func TestProducts(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		var p map[string]any
		r := a.do("POST", "/v1/products", map[string]string{"id": "LAMP000001", "name": "Lamp", "description": "a lamp"})
		r.wantStatus(t, 201)
		r.decode(t, &p)
		if p["id"] != "LAMP000001" || p["name"] != "Lamp" || r.Header.Get("Location") != "/v1/products/LAMP000001" {
			t.Fatalf("created %v (Location %q)", p, r.Header.Get("Location"))
		}
		r = a.do("POST", "/v1/products", map[string]string{"name": "generated"})
		r.wantStatus(t, 201)
		r.decode(t, &p)
		gen, _ := p["id"].(string)
		if len(gen) != 10 || strings.Trim(gen, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") != "" {
			t.Fatalf("generated id %q", gen)
		}
		a.do("GET", "/v1/products/LAMP000001", nil).wantStatus(t, 200)
		a.do("GET", "/v1/products/"+gen, nil).wantStatus(t, 200)
		a.do("GET", "/v1/products/NOPE000000", nil).wantProblem(t, 404, "not_found")
		a.do("GET", "/v1/products/lamp000001", nil).wantProblem(t, 400, "invalid")
		a.do("POST", "/v1/products", map[string]string{"id": "LAMP000001", "name": "again"}).wantProblem(t, 409, "conflict")

		// Pagination walks every product exactly once.
		for i := range 5 {
			a.do("POST", "/v1/products", map[string]string{"id": "PAGE00000" + string(rune('0'+i)), "name": "p"}).wantStatus(t, 201)
		}
		seen := map[string]bool{}
		cursor := ""
		for pages := 0; ; pages++ {
			if pages > 10 {
				t.Fatal("pagination does not end")
			}
			var page struct {
				Items      []map[string]any `json:"items"`
				NextCursor string           `json:"next_cursor"`
			}
			a.do("GET", "/v1/products?limit=2&cursor="+url.QueryEscape(cursor), nil).decode(t, &page)
			for _, it := range page.Items {
				id := it["id"].(string)
				if seen[id] {
					t.Fatalf("product %s listed twice", id)
				}
				seen[id] = true
			}
			if page.NextCursor == "" {
				break
			}
			cursor = page.NextCursor
		}
		if len(seen) != 7 {
			t.Fatalf("listed %d products, want 7", len(seen))
		}
		a.do("GET", "/v1/products?limit=0", nil).wantProblem(t, 400, "invalid")
		a.do("GET", "/v1/products?limit=abc", nil).wantProblem(t, 400, "invalid")
		a.do("GET", "/v1/products?cursor=%%%", nil).wantProblem(t, 400, "invalid")
		a.do("GET", "/v1/products?cursor=!!!", nil).wantProblem(t, 400, "invalid")
	})
}

func TestProductBadInput(t *testing.T) {
	a := startApp(t, "sqlite", nil)
	for _, c := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"malformed", `{"name": "x"`, 400, "invalid"},
		{"not json", `hello`, 400, "invalid"},
		{"empty", ``, 400, "invalid"},
		{"array", `[]`, 400, "invalid"},
		{"unknown field", `{"name": "x", "color": "red"}`, 400, "invalid"},
		{"wrong type", `{"name": 5}`, 400, "invalid"},
		{"two objects", `{"name": "x"}{"name": "y"}`, 400, "invalid"},
		{"lowercase id", `{"id": "abcdefghij", "name": "x"}`, 400, "invalid"},
		{"short id", `{"id": "ABC", "name": "x"}`, 400, "invalid"},
		{"id with quote", `{"id": "ABCDEFGHI'", "name": "x"}`, 400, "invalid"},
		{"no name", `{"id": "ABCDEFGHIJ"}`, 400, "invalid"},
		{"control chars", `{"name": "a\u0000b"}`, 400, "invalid"},
		{"long name", `{"name": "` + strings.Repeat("n", 129) + `"}`, 400, "invalid"},
		{"oversized", `{"name": "x", "description": "` + strings.Repeat("d", 70<<10) + `"}`, 413, "too_large"},
	} {
		t.Log(c.name)
		a.do("POST", "/v1/products", c.body).wantProblem(t, c.status, c.code)
	}
	a.do("POST", "/v1/products", `{"name": "x"}`, "Content-Type", "text/plain").wantProblem(t, 400, "invalid")
	var page struct{ Items []any }
	a.do("GET", "/v1/products", nil).decode(t, &page)
	if len(page.Items) != 0 {
		t.Fatalf("bad input stored %d products", len(page.Items))
	}
}

func TestInjectionStoredVerbatim(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		evil := `x'); DROP TABLE devices; --`
		a.do("POST", "/v1/products", map[string]string{"id": "EVIL000001", "name": evil, "description": `" OR 1=1; --`}).wantStatus(t, 201)
		var p map[string]any
		a.do("GET", "/v1/products/EVIL000001", nil).decode(t, &p)
		if p["name"] != evil {
			t.Fatalf("name read back as %q", p["name"])
		}
		a.do("POST", "/v1/products/EVIL000001/devices", map[string]string{"name": "d1'--"}).wantProblem(t, 400, "invalid")
		a.do("POST", "/v1/products/EVIL000001/devices", map[string]string{"name": "d1", "version": "1.0'; DROP TABLE x;--"}).wantProblem(t, 400, "invalid")
		a.do("GET", "/v1/products/EVIL000001/devices?version="+url.QueryEscape("' OR '1'='1"), nil).wantProblem(t, 400, "invalid")
		a.do("POST", "/v1/products/EVIL000001/devices", map[string]string{"name": "d1"}).wantStatus(t, 201)
		a.do("GET", "/v1/products/EVIL000001/devices/d1", nil).wantStatus(t, 200)
	})
}

func ioCopy(b *strings.Builder, resp *http.Response) (int64, error) { return io.Copy(b, resp.Body) }

// TestCurlDefaultContentType: `curl -d '{...}'` sends
// application/x-www-form-urlencoded; the README's walk-through relies on
// JSON being accepted under it.
func TestCurlDefaultContentType(t *testing.T) {
	a := startApp(t, "sqlite", nil)
	req, _ := http.NewRequest("POST", a.HTTPURL()+"/v1/products", strings.NewReader(`{"id":"CURL000001","name":"curl"}`))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("status %d, want 201", resp.StatusCode)
	}
	a.do("GET", "/v1/products/CURL000001", nil).wantStatus(t, 200)
}

// OTAD_PPROF_ADDR serves Go's profiles on a listener of their own, without
// a token; the console API's address serves none.
func TestPprofListener(t *testing.T) {
	pprofAddr := freeAddr(t)
	a := startApp(t, "sqlite", map[string]string{"OTAD_PPROF_ADDR": pprofAddr})
	resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if _, err := ioCopy(&b, resp); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(b.String(), "goroutine profile: total") {
		t.Fatalf("goroutine profile: %d %.200q", resp.StatusCode, b.String())
	}
	other, err := http.Get("http://" + pprofAddr + "/v1/products")
	if err != nil {
		t.Fatal(err)
	}
	other.Body.Close()
	if other.StatusCode != 404 {
		t.Fatalf("the pprof listener serves the API: %d", other.StatusCode)
	}
	a.do("GET", "/debug/pprof/goroutine", nil).wantStatus(t, 404)
}
