package ota

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Webhook is an HTTP endpoint that receives the events of the log that
// pass its filters, in sequence order, signed the Standard Webhooks way
// (https://www.standardwebhooks.com). Cursor is the sequence number of
// the last event it has been given (or skipped, for not passing the
// filters): delivery resumes after it, whatever replica or restart.
type Webhook struct {
	ID          string `json:"id"`
	URL         string `json:"url"`
	Description string `json:"description"`
	// EventTypes keeps events of these types; "execution.*" keeps a
	// prefix. Empty keeps all.
	EventTypes []string `json:"event_types"`
	ProductID  string   `json:"product_id"`
	JobID      string   `json:"job_id"`
	Enabled    bool     `json:"enabled"`
	// DisabledReason says why delivery stopped on its own; empty when a
	// caller disabled it (or it is enabled).
	DisabledReason string `json:"disabled_reason"`
	// Secret is "whsec_" and the base64 of the signing key. The API shows
	// it only in the answers to create and rotate-secret.
	Secret string `json:"-"`
	Cursor int64  `json:"cursor"`
	// FailingSince is when the current run of failed deliveries began;
	// nil while deliveries succeed. Failures counts that run's attempts.
	FailingSince *time.Time `json:"failing_since"`
	Failures     int        `json:"failures"`
	// Rev counts the changes of its settings; updates compare-and-set on it.
	Rev       int       `json:"-"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Webhook event types.
const (
	LogWebhookCreated  = "webhook.created"
	LogWebhookUpdated  = "webhook.updated"
	LogWebhookDeleted  = "webhook.deleted"
	LogWebhookDisabled = "webhook.disabled" // disabled by otad after failing too long
)

// Webhook limits.
const (
	WebhookURLMaxLen         = 2048
	WebhookDescriptionMaxLen = 1024
	webhookSecretPrefix      = "whsec_"
	webhookSecretBytes       = 32
	webhookIDPrefix          = "wh_"
)

// NewWebhookID returns a webhook ID that sorts by creation time: "wh_" and
// a job-ID-shaped sortable hex string.
func NewWebhookID() string { return webhookIDPrefix + NewJobID() }

// ValidateWebhookID checks the shape of a webhook ID before it reaches a
// query.
func ValidateWebhookID(id string) error {
	rest, ok := strings.CutPrefix(id, webhookIDPrefix)
	if _, err := hex.DecodeString(rest); !ok || len(rest) != 20 || err != nil {
		return Errorf(EINVALID, "webhook id must be wh_ and 20 hex digits")
	}
	return nil
}

// NewWebhookSecret returns a signing secret in the Standard Webhooks
// format: "whsec_" and the base64 of 32 random bytes.
func NewWebhookSecret() string {
	b := make([]byte, webhookSecretBytes)
	rand.Read(b)
	return webhookSecretPrefix + base64.StdEncoding.EncodeToString(b)
}

// WebhookKey returns the HMAC key of a secret made by NewWebhookSecret.
func WebhookKey(secret string) ([]byte, error) {
	rest, ok := strings.CutPrefix(secret, webhookSecretPrefix)
	key, err := base64.StdEncoding.DecodeString(rest)
	if !ok || err != nil || len(key) < 24 {
		return nil, Errorf(EINVALID, "webhook secret must be whsec_ and the base64 of at least 24 bytes")
	}
	return key, nil
}

// WebhookSignature signs one delivery: "v1," and the base64 of
// HMAC-SHA256(key, id.timestamp.body), as the webhook-signature header
// carries it.
func WebhookSignature(key []byte, msgID string, ts time.Time, body []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(msgID + "." + strconv.FormatInt(ts.Unix(), 10) + "."))
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// WebhookMessageID is the webhook-id of an event's delivery: the same on
// every attempt, so that a receiver can drop a repeat.
func WebhookMessageID(seq int64) string { return "evt_" + strconv.FormatInt(seq, 10) }

// Validate checks a webhook's settings before it is stored.
func (w *Webhook) Validate() error {
	if err := ValidateWebhookURL(w.URL); err != nil {
		return err
	}
	if err := ValidateText("description", w.Description, WebhookDescriptionMaxLen); err != nil {
		return err
	}
	if err := ValidateEventTypes(w.EventTypes); err != nil {
		return err
	}
	if w.ProductID != "" {
		if err := ValidateProductID(w.ProductID); err != nil {
			return err
		}
	}
	if w.JobID != "" {
		if err := ValidateJobID(w.JobID); err != nil {
			return err
		}
	}
	_, err := WebhookKey(w.Secret)
	return err
}

// ValidateWebhookURL checks an endpoint URL: absolute http or https with
// a host, no user information (it would show in every answer) and no
// fragment.
func ValidateWebhookURL(s string) error {
	if s == "" || len(s) > WebhookURLMaxLen {
		return Errorf(EINVALID, "url must be 1 to %d characters", WebhookURLMaxLen)
	}
	u, err := url.Parse(s)
	if err != nil || !validUTF8NoControl(s) || strings.ContainsAny(s, " \t\n") {
		return Errorf(EINVALID, "url is not a valid URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return Errorf(EINVALID, "url must be http:// or https://")
	case u.Host == "" || u.Hostname() == "":
		return Errorf(EINVALID, "url must name a host")
	case u.User != nil:
		return Errorf(EINVALID, "url must not hold a user name or password; put a token in its path or query")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return Errorf(EINVALID, "url must not have a fragment")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return Errorf(EINVALID, "url port must be 1 to 65535")
		}
	}
	return nil
}

// Filter is the event log selection a webhook receives after its cursor.
func (w *Webhook) Filter(limit int) EventListParams {
	return EventListParams{After: w.Cursor, Types: w.EventTypes, ProductID: w.ProductID, JobID: w.JobID, Limit: limit}
}

// WebhookEvent is the event of a webhook created, changed, deleted or
// disabled; it never carries the secret.
func WebhookEvent(typ string, w *Webhook, at time.Time) Event {
	data := struct {
		ID             string `json:"id"`
		URL            string `json:"url"`
		Enabled        bool   `json:"enabled"`
		DisabledReason string `json:"disabled_reason,omitempty"`
	}{w.ID, w.URL, w.Enabled, w.DisabledReason}
	return newEvent(typ, "", "", "", at, data)
}

// WebhookPolicy is how delivery retries and gives up.
type WebhookPolicy struct {
	// Backoff is the wait after the first failure; each failure after
	// doubles it, up to MaxBackoff, with jitter.
	Backoff, MaxBackoff time.Duration
	// DisableAfter is how long an endpoint may fail without a success
	// before it is disabled.
	DisableAfter time.Duration
}

// Retry is how long to wait before the next attempt after failures
// failed ones in a row: Backoff doubled per failure, capped at MaxBackoff,
// then drawn between half of that and all of it, so that endpoints that
// failed together do not retry together.
func (p WebhookPolicy) Retry(failures int) time.Duration {
	d := p.Backoff
	for i := 1; i < failures && d < p.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, p.MaxBackoff)
	if d <= 1 {
		return d
	}
	return d/2 + mrand.N(d/2+1)
}

// ShouldDisable reports whether w has failed for DisableAfter by now, and
// why, in the words its disabled_reason shows.
func (p WebhookPolicy) ShouldDisable(w *Webhook, now time.Time, lastError string) (bool, string) {
	if w.FailingSince == nil || now.Sub(*w.FailingSince) < p.DisableAfter {
		return false, ""
	}
	return true, fmt.Sprintf("every delivery failed since %s (%d attempts, for more than %s); the last: %s",
		w.FailingSince.Format(time.RFC3339), w.Failures, p.DisableAfter, truncate(lastError, 256))
}

// WebhookListParams selects a page of webhooks, ordered by ID.
type WebhookListParams struct {
	After string
	Limit int
}

// WebhookUpdateParams stores a webhook's new settings, compare-and-set on
// Webhook.Rev, and appends Event (LogWebhookUpdated or
// LogWebhookDisabled). ResetFailing forgets the current run of failures,
// as when a caller enables it again.
type WebhookUpdateParams struct {
	Webhook      *Webhook
	Event        string
	ResetFailing bool
}

// WebhookDelivery is the record of one event's delivery to one webhook:
// its attempts so far and the outcome of the last.
type WebhookDelivery struct {
	WebhookID string `json:"-"`
	Seq       int64  `json:"seq"`
	EventType string `json:"event_type"`
	Attempts  int    `json:"attempts"`
	// StatusCode is the last attempt's HTTP status, 0 when no answer came
	// (Error says why).
	StatusCode  int        `json:"status_code"`
	Error       string     `json:"error"`
	LatencyMS   int64      `json:"latency_ms"`
	DeliveredAt *time.Time `json:"delivered_at"`
	CreatedAt   time.Time  `json:"created_at"` // the first attempt
	UpdatedAt   time.Time  `json:"updated_at"` // the last attempt
}

// OK reports whether the attempt succeeded: any 2xx.
func (d *WebhookDelivery) OK() bool { return d.StatusCode >= 200 && d.StatusCode < 300 }

// WebhookAttemptParams records one attempt at delivering an event: the
// delivery's row, and on success the webhook's cursor moved from From to
// the event's Seq (compare-and-set: ECONFLICT when it moved meanwhile),
// on failure the webhook's run of failures.
type WebhookAttemptParams struct {
	WebhookID string
	From      int64
	Attempt   WebhookDelivery // Seq, EventType, StatusCode, Error, LatencyMS; UpdatedAt is the attempt's time
}

// WebhookDeliveryListParams selects a page of a webhook's deliveries,
// newest event first.
type WebhookDeliveryListParams struct {
	WebhookID string
	Before    int64 // events with a smaller sequence number, when set
	Limit     int
}
