package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/otad/otad/internal/ota"
)

type tokenCreateRequest struct {
	Name  string    `json:"name"`
	Scope ota.Scope `json:"scope"`
	// ExpiresAt or ExpiresIn (seconds), not both; neither: never.
	ExpiresAt *time.Time `json:"expires_at"`
	ExpiresIn *int64     `json:"expires_in"`
}

// tokenCreated is the one answer that shows a token's secret.
type tokenCreated struct {
	*ota.APIToken
	Token string `json:"token"`
}

func (s *Server) tokenCreate(w http.ResponseWriter, r *http.Request) error {
	var req tokenCreateRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	now := ota.Now()
	secret := ota.NewAPIToken()
	t := &ota.APIToken{ID: ota.NewTokenID(), Name: req.Name, Scope: req.Scope, Hash: ota.HashAPIToken(secret),
		Origin: ota.TokenOriginAPI, CreatedAt: now, CreatedBy: callerOf(r).token.ID}
	if err := t.Validate(); err != nil {
		return err
	}
	var err error
	if t.ExpiresAt, err = ota.TokenExpiry(req.ExpiresAt, req.ExpiresIn, now); err != nil {
		return err
	}
	if err := s.store.TokenCreate(r.Context(), t); err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/tokens/"+t.ID)
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusCreated, tokenCreated{APIToken: t, Token: secret})
}

func (s *Server) tokenList(w http.ResponseWriter, r *http.Request) error {
	after, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	ts, err := s.store.TokenList(r.Context(), ota.TokenListParams{After: after, Limit: limit})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, newPage(ts, limit, func(t *ota.APIToken) string { return t.ID }))
}

func (s *Server) tokenGet(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if err := ota.ValidateTokenID(id); err != nil {
		return err
	}
	t, err := s.store.TokenGet(r.Context(), id)
	if err != nil {
		return err
	}
	if t.RevokedAt != nil {
		return ota.Errorf(ota.ENOTFOUND, "token not found")
	}
	return writeJSON(w, http.StatusOK, t)
}

// tokenDelete revokes a token: it stops working at once. The last usable
// admin token is kept (409), so that the API cannot lock itself out.
func (s *Server) tokenDelete(w http.ResponseWriter, r *http.Request) error {
	id := chi.URLParam(r, "id")
	if err := ota.ValidateTokenID(id); err != nil {
		return err
	}
	if _, err := s.store.TokenRevoke(r.Context(), id, ota.Now()); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// auditPage is a page of the audit log. LastID is where to continue from
// (?after=): the last entry's ID, or the one asked after when the page is
// empty.
type auditPage struct {
	Items  []*ota.AuditEntry `json:"items"`
	LastID int64             `json:"last_id"`
}

func (s *Server) auditList(w http.ResponseWriter, r *http.Request) error {
	_, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	p := ota.AuditListParams{Limit: limit}
	if v := r.URL.Query().Get("after"); v != "" {
		if p.After, err = strconv.ParseInt(v, 10, 64); err != nil || p.After < 0 {
			return ota.Errorf(ota.EINVALID, "after must be an audit entry id")
		}
	}
	es, err := s.store.AuditList(r.Context(), p)
	if err != nil {
		return err
	}
	page := auditPage{Items: es, LastID: p.After}
	if page.Items == nil {
		page.Items = []*ota.AuditEntry{}
	}
	if len(es) > 0 {
		page.LastID = es[len(es)-1].ID
	}
	return writeJSON(w, http.StatusOK, page)
}
