package api

import (
	"context"
	"crypto/subtle"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/otad/otad/internal/ota"
)

// scopes is the one table of what each route needs: the first entry whose
// prefix the route pattern is under applies; reads (GET, and HEAD routed
// as GET) need read, every other method write. A route under no entry
// needs admin.
var scopes = []struct {
	prefix      string
	read, write ota.Scope
}{
	{"/v1/tokens", ota.ScopeAdmin, ota.ScopeAdmin},
	{"/v1/audit", ota.ScopeAdmin, ota.ScopeAdmin},
	{"/v1", ota.ScopeRead, ota.ScopeOperator},
	{"/metrics", ota.ScopeRead, ota.ScopeRead},
}

// scopeFor returns the scope a request of method on route needs.
func scopeFor(method, route string) ota.Scope {
	for _, e := range scopes {
		if route == e.prefix || strings.HasPrefix(route, e.prefix+"/") {
			if method == http.MethodGet {
				return e.read
			}
			return e.write
		}
	}
	return ota.ScopeAdmin
}

// tokenTouchEvery is how often a token's last use is written at most, so
// that authentication stays a read.
const tokenTouchEvery = time.Minute

// callerKey holds the *caller of a request in its context.
type callerKey struct{}

// caller is who sent a request: the token authenticate accepted, nil
// before (or when it refused).
type caller struct{ token *ota.APIToken }

// callerOf returns the request's caller, set by audit or authenticate.
func callerOf(r *http.Request) *caller {
	c, _ := r.Context().Value(callerKey{}).(*caller)
	return c
}

// withCaller returns r with a caller in its context, its own if it has one.
func withCaller(r *http.Request) (*http.Request, *caller) {
	if c := callerOf(r); c != nil {
		return r, c
	}
	c := &caller{}
	return r.WithContext(context.WithValue(r.Context(), callerKey{}, c)), c
}

// authenticate requires a valid bearer token: known, not revoked, not
// expired. Every refusal looks the same, so a caller learns nothing about
// which tokens exist.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, err := s.token(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		r, c := withCaller(r)
		c.token = t
		next.ServeHTTP(w, r)
	})
}

var errNoToken = ota.Errorf(ota.EUNAUTHORIZED, "a valid bearer token is required")

// token returns the usable token the request presents, and records its
// use (at most every tokenTouchEvery).
func (s *Server) token(r *http.Request) (*ota.APIToken, error) {
	scheme, secret, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	secret = strings.TrimSpace(secret)
	if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" || len(secret) > 512 {
		return nil, errNoToken
	}
	hash := ota.HashAPIToken(secret)
	t, err := s.store.TokenGetByHash(r.Context(), hash)
	if ota.IsCode(err, ota.ENOTFOUND) {
		return nil, errNoToken
	}
	if err != nil {
		return nil, err
	}
	now := ota.Now()
	if subtle.ConstantTimeCompare([]byte(t.Hash), []byte(hash)) != 1 || !t.Usable(now) {
		return nil, errNoToken
	}
	if t.LastUsedAt == nil || now.Sub(*t.LastUsedAt) >= tokenTouchEvery {
		// A failure here costs a stale last-used time, not the request.
		if err := s.store.TokenTouch(r.Context(), t.ID, now); err != nil {
			s.log.WarnContext(r.Context(), "could not record a token's use", "token_id", t.ID, "err", err)
		}
		t.LastUsedAt = &now
	}
	return t, nil
}

// authorize refuses, with 403, a request its token's scope does not allow
// (see scopes). Requests for no route go on to be answered 404 or 405.
func (s *Server) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route, _ := s.route(r)
		if route != "" {
			need := scopeFor(r.Method, route)
			if c := callerOf(r); c == nil || c.token == nil || !c.token.Scope.Allows(need) {
				s.writeError(w, r, ota.Errorf(ota.EFORBIDDEN, "this token's scope does not allow %s %s: it needs %s", r.Method, route, need))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// route returns the pattern of the endpoint a request goes to ("" for
// none: it will be answered 404 or 405) and the values of its
// placeholders, as the router will see them. chi's Find also answers a
// pattern for a method that pattern does not serve: only an endpoint in
// s.endpoints counts.
func (s *Server) route(r *http.Request) (string, map[string]string) {
	rctx := chi.NewRouteContext()
	path := r.URL.RawPath
	if path == "" {
		path = r.URL.Path
	}
	pattern := trimPattern(s.router.Find(rctx, r.Method, path))
	if !s.endpoints[r.Method+" "+pattern] {
		return "", map[string]string{}
	}
	params := map[string]string{}
	for i, k := range rctx.URLParams.Keys {
		if k != "*" && i < len(rctx.URLParams.Values) {
			params[k] = auditText(rctx.URLParams.Values[i])
		}
	}
	return pattern, params
}

// endpointsOf lists every method and route pattern the router serves.
func endpointsOf(router chi.Router) (map[string]bool, error) {
	out := map[string]bool{}
	err := chi.Walk(router, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		out[method+" "+trimPattern(route)] = true
		return nil
	})
	return out, err
}

// trimPattern drops the trailing slash of a route pattern: /v1/products/
// is the same route as /v1/products.
func trimPattern(p string) string {
	if p != "/" {
		p = strings.TrimSuffix(p, "/")
	}
	return p
}

// audit writes every console request that changes something to the audit
// log once it is answered: those that succeeded, and those refused for
// want of a token (401) or of scope (403). Reads are not written.
func (s *Server) audit(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions {
			next.ServeHTTP(w, r)
			return
		}
		r, c := withCaller(r)
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		if status >= 400 && status != http.StatusUnauthorized && status != http.StatusForbidden {
			return
		}
		route, params := s.route(r)
		e := &ota.AuditEntry{Method: r.Method, Route: route, Params: params, Path: auditText(r.URL.Path), Status: status}
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			e.ClientAddr = host
		}
		if status < 400 {
			e.Resource = auditText(ww.Header().Get("Location"))
		}
		if c.token != nil {
			e.TokenID, e.TokenName = c.token.ID, c.token.Name
		}
		// The answer is sent: the entry is written even when the client
		// has gone meanwhile.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
		defer cancel()
		if err := s.store.AuditAppend(ctx, e); err != nil {
			s.log.ErrorContext(ctx, "could not write the audit log", "method", r.Method, "route", route, "status", status, "err", err)
		}
	})
}

// auditText makes a caller's text safe to store and show: at most 256
// bytes of valid UTF-8 without control characters.
func auditText(s string) string {
	if len(s) > 256 {
		s = s[:256]
	}
	s = strings.ToValidUTF8(s, "")
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, s)
}
