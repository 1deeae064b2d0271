package main

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/otad/otad/internal/store/testdb"
)

type tokenJSON struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Scope      string     `json:"scope"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	CreatedBy  string     `json:"created_by"`
	Token      string     `json:"token"`
}

type auditJSON struct {
	ID         int64             `json:"id"`
	TokenID    string            `json:"token_id"`
	TokenName  string            `json:"token_name"`
	Method     string            `json:"method"`
	Route      string            `json:"route"`
	Params     map[string]string `json:"params"`
	Path       string            `json:"path"`
	Resource   string            `json:"resource"`
	Status     int               `json:"status"`
	ClientAddr string            `json:"client_addr"`
}

// as sends a request with the given bearer token.
func (a *testApp) as(token, method, path string, body any) response {
	a.t.Helper()
	return a.do(method, path, body, "Authorization", "Bearer "+token)
}

// createToken creates a token through the API with the bearer token by.
func (a *testApp) createToken(by string, body map[string]any) tokenJSON {
	a.t.Helper()
	var tok tokenJSON
	r := a.as(by, "POST", "/v1/tokens", body)
	r.wantStatus(a.t, 201)
	r.decode(a.t, &tok)
	return tok
}

// tokens lists the tokens not revoked, by name.
func (a *testApp) tokens(by string) map[string]tokenJSON {
	a.t.Helper()
	var page struct{ Items []tokenJSON }
	r := a.as(by, "GET", "/v1/tokens", nil)
	r.wantStatus(a.t, 200)
	r.decode(a.t, &page)
	out := map[string]tokenJSON{}
	for _, tk := range page.Items {
		out[tk.Name] = tk
	}
	return out
}

func TestTokens(t *testing.T) {
	forEachEngine(t, testTokens)
}

func testTokens(t *testing.T, engine string) {
	a := startApp(t, engine, nil)
	bootstrap := a.tokens(testToken)["bootstrap"]
	if bootstrap.Scope != "admin" || bootstrap.CreatedBy != "" {
		t.Fatalf("bootstrap token %+v", bootstrap)
	}

	r := a.do("POST", "/v1/tokens", map[string]any{"name": "ci-read", "scope": "read"})
	r.wantStatus(t, 201)
	var reader tokenJSON
	r.decode(t, &reader)
	if !strings.HasPrefix(reader.Token, "otad_") || len(reader.Token) < 40 {
		t.Fatalf("token secret %q: want otad_ and 32 random bytes", reader.Token)
	}
	if r.Header.Get("Location") != "/v1/tokens/"+reader.ID || r.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("Location %q, Cache-Control %q", r.Header.Get("Location"), r.Header.Get("Cache-Control"))
	}
	if reader.CreatedBy != bootstrap.ID || reader.ExpiresAt != nil || reader.LastUsedAt != nil {
		t.Fatalf("created %+v", reader)
	}
	operator := a.createToken(testToken, map[string]any{"name": "deployer", "scope": "operator", "expires_in": 3600})
	if operator.ExpiresAt == nil || time.Until(*operator.ExpiresAt) < 50*time.Minute {
		t.Fatalf("expires_in 3600 gave expires_at %v", operator.ExpiresAt)
	}
	at := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
	admin := a.createToken(testToken, map[string]any{"name": "second admin", "scope": "admin", "expires_at": at})
	if admin.ExpiresAt == nil || !admin.ExpiresAt.Equal(at) {
		t.Fatalf("expires_at %v, want %v", admin.ExpiresAt, at)
	}
	listed := a.tokens(testToken)
	if len(listed) != 4 || listed["ci-read"].Token != "" {
		t.Fatalf("listed %v: want 4 tokens, no secrets", listed)
	}
	got := a.do("GET", "/v1/tokens/"+operator.ID, nil)
	got.wantStatus(t, 200)
	if strings.Contains(string(got.body), "hash") || strings.Contains(string(got.body), `"token"`) {
		t.Fatalf("GET shows the secret: %s", got.body)
	}

	// Scopes: read only reads, and never tokens or the audit log.
	a.do("POST", "/v1/products", map[string]string{"id": "SCOPE00001", "name": "s"}).wantStatus(t, 201)
	a.as(reader.Token, "GET", "/v1/products", nil).wantStatus(t, 200)
	a.as(reader.Token, "GET", "/v1/products/SCOPE00001/devices", nil).wantStatus(t, 200)
	p := a.as(reader.Token, "POST", "/v1/products", map[string]string{"name": "x"}).wantProblem(t, 403, "forbidden")
	if !strings.Contains(p["detail"].(string), "operator") {
		t.Errorf("403 detail %q does not say the scope needed", p["detail"])
	}
	a.as(reader.Token, "POST", "/v1/products/SCOPE00001/devices", map[string]string{"name": "d"}).wantProblem(t, 403, "forbidden")
	a.as(reader.Token, "GET", "/v1/tokens", nil).wantProblem(t, 403, "forbidden")
	a.as(reader.Token, "GET", "/v1/audit", nil).wantProblem(t, 403, "forbidden")
	// An unknown route or method is still 404 or 405, whatever the scope.
	a.as(reader.Token, "POST", "/v1/nowhere", map[string]string{}).wantStatus(t, 404)
	a.as(reader.Token, "PUT", "/v1/products", map[string]string{}).wantProblem(t, 405, "method_not_allowed")
	// /metrics takes a token of any scope.
	req, _ := http.NewRequest("GET", a.HTTPURL()+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+reader.Token)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics with a read token: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// Operator changes everything but tokens and the audit log.
	a.as(operator.Token, "POST", "/v1/products/SCOPE00001/devices", map[string]string{"name": "d1"}).wantStatus(t, 201)
	a.as(operator.Token, "PATCH", "/v1/products/SCOPE00001/devices/d1", map[string]any{"disabled": true}).wantStatus(t, 200)
	a.as(operator.Token, "POST", "/v1/tokens", map[string]any{"name": "mine", "scope": "admin"}).wantProblem(t, 403, "forbidden")
	a.as(operator.Token, "GET", "/v1/tokens/"+operator.ID, nil).wantProblem(t, 403, "forbidden")
	a.as(operator.Token, "DELETE", "/v1/tokens/"+reader.ID, nil).wantProblem(t, 403, "forbidden")
	a.as(operator.Token, "GET", "/v1/audit", nil).wantProblem(t, 403, "forbidden")
	a.as(admin.Token, "GET", "/v1/audit", nil).wantStatus(t, 200)

	// Last use is recorded at the first use, then at most once a minute.
	var seen tokenJSON
	a.do("GET", "/v1/tokens/"+reader.ID, nil).decode(t, &seen)
	if seen.LastUsedAt == nil {
		t.Fatal("last_used_at not set after the token was used")
	}
	a.as(reader.Token, "GET", "/v1/products", nil).wantStatus(t, 200)
	var again tokenJSON
	a.do("GET", "/v1/tokens/"+reader.ID, nil).decode(t, &again)
	if again.LastUsedAt == nil || !again.LastUsedAt.Equal(*seen.LastUsedAt) {
		t.Fatalf("last_used_at moved from %v to %v within a minute", seen.LastUsedAt, again.LastUsedAt)
	}

	// Bad input.
	for _, body := range []string{
		`{"name": "x", "scope": "root"}`,
		`{"name": "x"}`,
		`{"name": "", "scope": "read"}`,
		`{"name": "   ", "scope": "read"}`,
		`{"name": "` + strings.Repeat("n", 129) + `", "scope": "read"}`,
		`{"name": "a\u0007b", "scope": "read"}`,
		`{"name": "x", "scope": "read", "expires_in": 0}`,
		`{"name": "x", "scope": "read", "expires_in": -5}`,
		`{"name": "x", "scope": "read", "expires_in": 99999999999}`,
		`{"name": "x", "scope": "read", "expires_at": "2001-01-01T00:00:00Z"}`,
		`{"name": "x", "scope": "read", "expires_at": "9999-01-01T00:00:00Z"}`,
		`{"name": "x", "scope": "read", "expires_at": "tomorrow"}`,
		`{"name": "x", "scope": "read", "expires_in": 60, "expires_at": "` + at.Format(time.RFC3339) + `"}`,
		`{"name": "x", "scope": "read", "admin": true}`,
	} {
		a.do("POST", "/v1/tokens", body).wantProblem(t, 400, "invalid")
	}
	a.do("GET", "/v1/tokens/bad!id", nil).wantProblem(t, 400, "invalid")
	a.do("GET", "/v1/tokens/nope", nil).wantProblem(t, 404, "not_found")
	a.do("DELETE", "/v1/tokens/nope", nil).wantProblem(t, 404, "not_found")
	if n := len(a.tokens(testToken)); n != 4 {
		t.Fatalf("bad input stored tokens: %d listed", n)
	}

	// Expired: refused as an unknown token is.
	short := a.createToken(testToken, map[string]any{"name": "short", "scope": "read", "expires_in": 1})
	waitFor(t, "the token to expire", func() bool {
		return a.as(short.Token, "GET", "/v1/products", nil).StatusCode == 401
	})
	pr := a.as(short.Token, "GET", "/v1/products", nil).wantProblem(t, 401, "unauthorized")
	if pr["detail"] != "a valid bearer token is required" {
		t.Errorf("expired token detail %q", pr["detail"])
	}

	// Revoked: refused at once, gone from the API.
	a.do("DELETE", "/v1/tokens/"+reader.ID, nil).wantStatus(t, 204)
	a.as(reader.Token, "GET", "/v1/products", nil).wantProblem(t, 401, "unauthorized")
	a.do("GET", "/v1/tokens/"+reader.ID, nil).wantProblem(t, 404, "not_found")
	a.do("DELETE", "/v1/tokens/"+reader.ID, nil).wantProblem(t, 404, "not_found")
	if _, ok := a.tokens(testToken)["ci-read"]; ok {
		t.Fatal("a revoked token is listed")
	}

	// The bootstrap token is revocable, but the last usable admin token
	// is not.
	a.as(admin.Token, "DELETE", "/v1/tokens/"+bootstrap.ID, nil).wantStatus(t, 204)
	a.do("GET", "/v1/products", nil).wantProblem(t, 401, "unauthorized")
	a.as(admin.Token, "DELETE", "/v1/tokens/"+admin.ID, nil).wantProblem(t, 409, "conflict")
	a.as(admin.Token, "GET", "/v1/products", nil).wantStatus(t, 200)

	// The event log has every token created and revoked.
	var evs struct {
		Items []struct {
			Type string
			Data map[string]string
		}
	}
	a.as(admin.Token, "GET", "/v1/events?type=token.*", nil).decode(t, &evs)
	var kinds []string
	for _, e := range evs.Items {
		kinds = append(kinds, e.Type+" "+e.Data["name"])
	}
	want := "token.created bootstrap,token.created ci-read,token.created deployer,token.created second admin,token.created short," +
		"token.revoked ci-read,token.revoked bootstrap"
	if strings.Join(kinds, ",") != want {
		t.Fatalf("token events\n%s\nwant\n%s", strings.Join(kinds, ","), want)
	}

	// The audit log has every change and every refusal, and no reads.
	a.do("POST", "/v1/products", map[string]string{"name": "x"}, "Authorization", "Bearer otad_unknown").wantProblem(t, 401, "unauthorized")
	var entries []auditJSON
	var after int64
	for range 100 {
		var page struct {
			Items  []auditJSON
			LastID int64 `json:"last_id"`
		}
		a.as(admin.Token, "GET", "/v1/audit?limit=3&after="+strconv.FormatInt(after, 10), nil).decode(t, &page)
		entries = append(entries, page.Items...)
		if len(page.Items) == 0 {
			break
		}
		after = page.LastID
	}
	var lines []string
	for _, e := range entries {
		if e.Method == "GET" {
			t.Errorf("a read was audited: %+v", e)
		}
		if e.ClientAddr != "127.0.0.1" {
			t.Errorf("client address %q", e.ClientAddr)
		}
		lines = append(lines, strings.Join([]string{e.TokenName, e.Method, e.Route, strconv.Itoa(e.Status), e.Resource}, " "))
	}
	has := func(line string) bool {
		for _, l := range lines {
			if l == line {
				return true
			}
		}
		return false
	}
	for _, line := range []string{
		"bootstrap POST /v1/tokens 201 /v1/tokens/" + reader.ID,
		"bootstrap POST /v1/tokens 201 /v1/tokens/" + admin.ID,
		"bootstrap POST /v1/products 201 /v1/products/SCOPE00001",
		"ci-read POST /v1/products 403 ",
		"ci-read POST /v1/products/{pid}/devices 403 ",
		"deployer POST /v1/products/{pid}/devices 201 /v1/products/SCOPE00001/devices/d1",
		"deployer PATCH /v1/products/{pid}/devices/{name} 200 ",
		"deployer POST /v1/tokens 403 ",
		"deployer DELETE /v1/tokens/{id} 403 ",
		"bootstrap DELETE /v1/tokens/{id} 204 ",
		"second admin DELETE /v1/tokens/{id} 204 ",
		" POST /v1/products 401 ",
	} {
		if !has(line) {
			t.Errorf("audit log lacks %q:\n%s", line, strings.Join(lines, "\n"))
		}
	}
	for _, line := range lines {
		if strings.Contains(line, " 400 ") || strings.Contains(line, " 404 ") || strings.Contains(line, " 409 ") || strings.Contains(line, " 405 ") {
			t.Errorf("a request refused for other reasons than 401 and 403 was audited: %q", line)
		}
	}
	for _, e := range entries {
		if e.Method == "DELETE" && e.Status == 204 && e.TokenName == "second admin" {
			if e.Params["id"] != bootstrap.ID || e.Path != "/v1/tokens/"+bootstrap.ID || e.TokenID != admin.ID {
				t.Errorf("revocation entry %+v", e)
			}
		}
	}
}

// TestBootstrapTokenReplaced: OTAD_API_TOKEN given a new value replaces
// the previous one, which stops working; a revoked one is not brought
// back by a restart, and a new value then gives a new admin token.
func TestBootstrapTokenReplaced(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		env := map[string]string{"OTAD_DATA_DIR": t.TempDir()}
		if engine == "postgres" {
			env["OTAD_DATABASE_URL"] = testdb.PostgresURL(t)
		}
		const first, second, third = "first-token-0123456789", "second-token-0123456789", "third-token-0123456789"
		start := func(token string) *testApp {
			t.Helper()
			env["OTAD_API_TOKEN"] = token
			return startApp(t, engine, env)
		}
		a := start(first)
		a.as(first, "GET", "/v1/products", nil).wantStatus(t, 200)
		a.stop()

		a = start(second)
		a.as(second, "GET", "/v1/products", nil).wantStatus(t, 200)
		a.as(first, "GET", "/v1/products", nil).wantProblem(t, 401, "unauthorized")
		list := a.tokens(second)
		if len(list) != 1 || list["bootstrap"].Scope != "admin" {
			t.Fatalf("tokens after the change: %v, want one bootstrap admin token", list)
		}
		other := a.createToken(second, map[string]any{"name": "ops", "scope": "admin"})
		a.as(other.Token, "DELETE", "/v1/tokens/"+list["bootstrap"].ID, nil).wantStatus(t, 204)
		a.stop()

		// The same, revoked value: not accepted again.
		a = start(second)
		a.as(second, "GET", "/v1/products", nil).wantProblem(t, 401, "unauthorized")
		a.as(other.Token, "GET", "/v1/products", nil).wantStatus(t, 200)
		a.stop()

		// The first value, replaced long ago, is not brought back either.
		a = start(first)
		a.as(first, "GET", "/v1/products", nil).wantProblem(t, 401, "unauthorized")
		a.stop()

		a = start(third)
		a.as(third, "GET", "/v1/products", nil).wantStatus(t, 200)
		if n := len(a.tokens(third)); n != 2 {
			t.Fatalf("%d tokens, want ops and the new bootstrap", n)
		}
	})
}
