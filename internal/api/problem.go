package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/otad/otad/internal/ota"
)

// statusOf maps every ota error code to its HTTP status; the one table.
var statusOf = map[string]int{
	ota.EINVALID:      http.StatusBadRequest,
	ota.ENOTFOUND:     http.StatusNotFound,
	ota.ECONFLICT:     http.StatusConflict,
	ota.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	ota.EUNAUTHORIZED: http.StatusUnauthorized,
	ota.EFORBIDDEN:    http.StatusForbidden,
	ota.EUNAVAILABLE:  http.StatusServiceUnavailable,
	ota.ETOOMANY:      http.StatusTooManyRequests,
	ota.EINTERNAL:     http.StatusInternalServerError,
}

// Problem is an RFC 9457 problem detail with otad's stable code.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Code     string `json:"code"`
	Instance string `json:"instance,omitempty"`
	// Extra carries structured detail, such as conflicting devices.
	Extra any `json:"extra,omitempty"`
}

// writeError answers err as problem+json. Only internal errors are logged:
// the others are the caller's doing and are told to the caller.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := ota.ErrorCode(err)
	if code == ota.EINTERNAL && s.store != nil {
		// A database outage surfaces as whatever the driver said: if the
		// store does not answer now, tell the caller to come back.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 2*time.Second)
		if s.store.Ping(ctx) != nil {
			err = fmt.Errorf("%w (%w)", &ota.Error{Code: ota.EUNAVAILABLE, Message: "the database is unavailable; try again shortly"}, err)
			code = ota.EUNAVAILABLE
		}
		cancel()
	}
	if (code == ota.EUNAVAILABLE || code == ota.ETOOMANY) && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", "5")
	}
	status, ok := statusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	if code == ota.EINTERNAL || code == ota.EUNAVAILABLE {
		s.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	var extra any
	var oe *ota.Error
	if errors.As(err, &oe) {
		extra = oe.Detail
	}
	writeProblem(w, Problem{
		Type:     "https://otad.dev/problems/" + code,
		Title:    http.StatusText(status),
		Status:   status,
		Detail:   ota.ErrorMessage(err),
		Code:     code,
		Instance: r.URL.Path,
		Extra:    extra,
	})
}

func writeProblem(w http.ResponseWriter, p Problem) {
	if p.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="otad"`)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	json.NewEncoder(w).Encode(p)
}

// writeJSON answers v as JSON with the given status. Its nil result lets
// handlers end with it; an encoding failure cannot be answered anymore.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	return nil
}

// handle adapts a handler that returns its error: the error is answered as
// problem+json, in one place.
func (s *Server) handle(fn func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			s.writeError(w, r, err)
		}
	}
}
