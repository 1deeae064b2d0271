package api

import (
	"strings"
	"testing"

	"github.com/otad/otad/internal/ota"
)

// TestScopeTable: every route the API serves needs the scope the README
// promises: tokens and the audit log admin, other reads read, other
// changes operator.
func TestScopeTable(t *testing.T) {
	s := &Server{}
	s.router = s.routes()
	endpoints, err := endpointsOf(s.router)
	if err != nil {
		t.Fatal(err)
	}
	for e := range endpoints {
		method, route, _ := strings.Cut(e, " ")
		want := ota.ScopeOperator
		switch {
		case strings.HasPrefix(route, "/v1/tokens") || strings.HasPrefix(route, "/v1/audit"):
			want = ota.ScopeAdmin
		case method == "GET":
			want = ota.ScopeRead
		}
		if route == "/healthz" || route == "/readyz" {
			continue // no token at all
		}
		if got := scopeFor(method, route); got != want {
			t.Errorf("%s %s needs %s, want %s", method, route, got, want)
		}
	}
	if got := scopeFor("POST", "/v2/new"); got != ota.ScopeAdmin {
		t.Errorf("a route in no entry needs %s, want admin", got)
	}
}
