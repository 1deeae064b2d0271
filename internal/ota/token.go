package ota

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"time"
)

// Scope is what a console API token may do. Scopes are ordered: each
// allows everything the one before it does.
type Scope string

const (
	// ScopeRead may read (GET and HEAD) everything but tokens and the
	// audit log.
	ScopeRead Scope = "read"
	// ScopeOperator may also change products, devices, firmware, jobs,
	// events and webhooks.
	ScopeOperator Scope = "operator"
	// ScopeAdmin may do everything, tokens and the audit log included.
	ScopeAdmin Scope = "admin"
)

var scopeRank = map[Scope]int{ScopeRead: 1, ScopeOperator: 2, ScopeAdmin: 3}

// Valid reports whether s is a known scope.
func (s Scope) Valid() bool { return scopeRank[s] > 0 }

// Allows reports whether a token of scope s may do what needs scope need.
func (s Scope) Allows(need Scope) bool { return s.Valid() && scopeRank[s] >= scopeRank[need] }

// Where a token came from: the API, OTAD_API_TOKEN, or the one otad
// generated and printed at its first start.
const (
	TokenOriginAPI       = "api"
	TokenOriginEnv       = "env"
	TokenOriginGenerated = "generated"
)

// TokenPrefix starts every token otad generates, so that secret scanners
// can recognise one.
const TokenPrefix = "otad_"

// TokenNameMaxLen is the longest token name.
const TokenNameMaxLen = 128

// MaxTokenLifetime is the longest expiry a token can be given.
const MaxTokenLifetime = 10 * 366 * 24 * time.Hour

// APIToken is a console API bearer token. Only the SHA-256 of its secret
// is stored; a revoked token's row stays, so that its secret is never
// accepted (or re-added from OTAD_API_TOKEN) again.
type APIToken struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Scope Scope  `json:"scope"`
	Hash  string `json:"-"` // hex SHA-256 of the token, see HashAPIToken
	// Origin is one of the TokenOrigin constants.
	Origin     string     `json:"-"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	// CreatedBy is the ID of the token that created this one; empty for
	// the tokens otad made itself.
	CreatedBy string     `json:"created_by"`
	RevokedAt *time.Time `json:"-"`
}

// Usable reports whether t authenticates a request at now: not revoked
// and not expired.
func (t *APIToken) Usable(now time.Time) bool {
	return t.RevokedAt == nil && (t.ExpiresAt == nil || now.Before(*t.ExpiresAt))
}

// Validate checks a token before it is stored.
func (t *APIToken) Validate() error {
	if err := ValidateTokenID(t.ID); err != nil {
		return err
	}
	if strings.TrimSpace(t.Name) == "" {
		return Errorf(EINVALID, "token name must not be empty")
	}
	if err := ValidateText("token name", t.Name, TokenNameMaxLen); err != nil {
		return err
	}
	if !t.Scope.Valid() {
		return Errorf(EINVALID, "scope must be %s, %s or %s", ScopeRead, ScopeOperator, ScopeAdmin)
	}
	return nil
}

// NewTokenID returns a new token ID: 20 hex digits that sort in creation
// order, as job IDs do.
func NewTokenID() string { return NewJobID() }

// ValidateTokenID checks the shape of a token ID before it reaches a
// query: 1 to 64 characters of A-Z a-z 0-9 _ - (IDs of tokens made before
// NewTokenID were base64url).
func ValidateTokenID(id string) error {
	if len(id) < 1 || len(id) > 64 {
		return Errorf(EINVALID, "token id must be 1 to 64 characters of A-Z a-z 0-9 _ -")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return Errorf(EINVALID, "token id must be 1 to 64 characters of A-Z a-z 0-9 _ -")
		}
	}
	return nil
}

// NewAPIToken returns a new token secret: TokenPrefix and 32 random bytes
// in base64url.
func NewAPIToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// HashAPIToken returns the stored form of a token secret.
func HashAPIToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// TokenExpiry resolves the optional expiry of a new token, given either as
// a time or as seconds from now (not both); nil means it never expires.
func TokenExpiry(at *time.Time, inSeconds *int64, now time.Time) (*time.Time, error) {
	switch {
	case at != nil && inSeconds != nil:
		return nil, Errorf(EINVALID, "give expires_at or expires_in, not both")
	case inSeconds != nil:
		if *inSeconds < 1 || *inSeconds > int64(MaxTokenLifetime/time.Second) {
			return nil, Errorf(EINVALID, "expires_in must be 1 to %d seconds", int64(MaxTokenLifetime/time.Second))
		}
		e := now.Add(time.Duration(*inSeconds) * time.Second).UTC().Truncate(time.Microsecond)
		return &e, nil
	case at != nil:
		if !at.After(now) {
			return nil, Errorf(EINVALID, "expires_at must be in the future")
		}
		if at.Sub(now) > MaxTokenLifetime {
			return nil, Errorf(EINVALID, "expires_at must be within %d days", int(MaxTokenLifetime/(24*time.Hour)))
		}
		e := at.UTC().Truncate(time.Microsecond)
		return &e, nil
	}
	return nil, nil
}

// TokenListParams selects a page of the tokens not revoked, ordered by ID.
type TokenListParams struct {
	After string
	Limit int
}

// TokenEvent is the event of a console API token created or revoked
// (LogTokenCreated, LogTokenRevoked); it never carries the secret or its
// hash.
func TokenEvent(typ string, t *APIToken, at time.Time) Event {
	return newEvent(typ, "", "", "", at, map[string]string{"id": t.ID, "name": t.Name, "scope": string(t.Scope)})
}

// ErrLastAdmin is why the last usable admin token cannot be revoked.
var ErrLastAdmin = &Error{Code: ECONFLICT, Message: "this is the last usable admin token: create another admin token before revoking it"}
