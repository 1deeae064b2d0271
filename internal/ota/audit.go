package ota

import "time"

// AuditEntry is one console action in the audit log: a request that
// changed something, or one refused for want of a valid token (401) or
// of scope (403).
type AuditEntry struct {
	ID int64 `json:"id"`
	// TokenID and TokenName are who sent it; empty when no valid token
	// was presented.
	TokenID   string `json:"token_id"`
	TokenName string `json:"token_name"`
	Method    string `json:"method"`
	// Route is the route pattern (/v1/products/{pid}/devices/{name}), or
	// empty for a path the API does not serve; Params the values of its
	// placeholders.
	Route  string            `json:"route"`
	Params map[string]string `json:"params"`
	Path   string            `json:"path"`
	// Resource is the path of what the request created, when it created
	// something.
	Resource   string    `json:"resource"`
	Status     int       `json:"status"`
	ClientAddr string    `json:"client_addr"`
	CreatedAt  time.Time `json:"created_at"`
}

// AuditListParams selects a page of the audit log, oldest first.
type AuditListParams struct {
	After int64 // entries with a greater ID
	Limit int
}
