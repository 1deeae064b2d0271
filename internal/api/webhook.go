package api

import (
	"context"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/otad/otad/internal/ota"
)

type webhookCreateRequest struct {
	URL         string   `json:"url"`
	Description string   `json:"description"`
	EventTypes  []string `json:"event_types"`
	ProductID   string   `json:"product_id"`
	JobID       string   `json:"job_id"`
	Enabled     *bool    `json:"enabled"`
}

// webhookPatchRequest changes the fields it names; an empty product_id,
// job_id or event_types clears that filter.
type webhookPatchRequest struct {
	URL         *string   `json:"url"`
	Description *string   `json:"description"`
	EventTypes  *[]string `json:"event_types"`
	ProductID   *string   `json:"product_id"`
	JobID       *string   `json:"job_id"`
	Enabled     *bool     `json:"enabled"`
}

// webhookSecret is the answer that shows a webhook's signing secret: to
// create and rotate-secret, never again.
type webhookSecret struct {
	*ota.Webhook
	Secret string `json:"secret"`
}

func (s *Server) webhookCreate(w http.ResponseWriter, r *http.Request) error {
	var req webhookCreateRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	wh := &ota.Webhook{ID: ota.NewWebhookID(), URL: req.URL, Description: req.Description, EventTypes: req.EventTypes,
		ProductID: req.ProductID, JobID: req.JobID, Enabled: req.Enabled == nil || *req.Enabled, Secret: ota.NewWebhookSecret()}
	if err := s.webhookCheck(r.Context(), wh); err != nil {
		return err
	}
	if err := s.store.WebhookCreate(r.Context(), wh); err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/webhooks/"+wh.ID)
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusCreated, webhookSecret{Webhook: wh, Secret: wh.Secret})
}

// webhookCheck validates a webhook's settings, and that the product and
// job its filters name exist: a typo would otherwise deliver nothing,
// silently.
func (s *Server) webhookCheck(ctx context.Context, wh *ota.Webhook) error {
	if wh.EventTypes == nil {
		wh.EventTypes = []string{}
	}
	if err := wh.Validate(); err != nil {
		return err
	}
	if wh.ProductID != "" {
		if _, err := s.store.ProductGet(ctx, wh.ProductID); ota.IsCode(err, ota.ENOTFOUND) {
			return ota.Errorf(ota.EINVALID, "product_id names no product")
		} else if err != nil {
			return err
		}
	}
	if wh.JobID != "" {
		if _, err := s.store.JobGet(ctx, wh.JobID); ota.IsCode(err, ota.ENOTFOUND) {
			return ota.Errorf(ota.EINVALID, "job_id names no job")
		} else if err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) webhookList(w http.ResponseWriter, r *http.Request) error {
	after, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	ws, err := s.store.WebhookList(r.Context(), ota.WebhookListParams{After: after, Limit: limit})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, newPage(ws, limit, func(wh *ota.Webhook) string { return wh.ID }))
}

// webhook loads the webhook named in the path.
func (s *Server) webhook(r *http.Request) (*ota.Webhook, error) {
	id := chi.URLParam(r, "id")
	if err := ota.ValidateWebhookID(id); err != nil {
		return nil, err
	}
	return s.store.WebhookGet(r.Context(), id)
}

func (s *Server) webhookGet(w http.ResponseWriter, r *http.Request) error {
	wh, err := s.webhook(r)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, wh)
}

// webhookPatch changes a webhook's settings. Enabling it again forgets
// its failures and why it was disabled; delivery resumes after its
// cursor, with what happened meanwhile (as long as the log keeps it).
func (s *Server) webhookPatch(w http.ResponseWriter, r *http.Request) error {
	var req webhookPatchRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	wh, err := s.webhook(r)
	if err != nil {
		return err
	}
	p := ota.WebhookUpdateParams{Webhook: wh, Event: ota.LogWebhookUpdated}
	for _, f := range []struct {
		from *string
		to   *string
	}{{req.URL, &wh.URL}, {req.Description, &wh.Description}, {req.ProductID, &wh.ProductID}, {req.JobID, &wh.JobID}} {
		if f.from != nil {
			*f.to = *f.from
		}
	}
	if req.EventTypes != nil {
		wh.EventTypes = *req.EventTypes
	}
	if req.Enabled != nil {
		if *req.Enabled && !wh.Enabled {
			p.ResetFailing = true
		}
		if *req.Enabled != wh.Enabled {
			wh.DisabledReason = ""
		}
		wh.Enabled = *req.Enabled
	}
	if err := s.webhookCheck(r.Context(), wh); err != nil {
		return err
	}
	if err := s.store.WebhookUpdate(r.Context(), p); err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, wh)
}

// webhookRotate gives a webhook a new signing secret, used from the next
// delivery on, and shows it once.
func (s *Server) webhookRotate(w http.ResponseWriter, r *http.Request) error {
	wh, err := s.webhook(r)
	if err != nil {
		return err
	}
	wh.Secret = ota.NewWebhookSecret()
	if err := s.store.WebhookUpdate(r.Context(), ota.WebhookUpdateParams{Webhook: wh, Event: ota.LogWebhookUpdated}); err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, webhookSecret{Webhook: wh, Secret: wh.Secret})
}

func (s *Server) webhookDelete(w http.ResponseWriter, r *http.Request) error {
	wh, err := s.webhook(r)
	if err != nil {
		return err
	}
	if err := s.store.WebhookDelete(r.Context(), wh.ID); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// webhookDeliveries lists a webhook's delivery log, newest event first;
// cursors are sequence numbers.
func (s *Server) webhookDeliveries(w http.ResponseWriter, r *http.Request) error {
	wh, err := s.webhook(r)
	if err != nil {
		return err
	}
	after, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	before, err := numberCursor(after)
	if err != nil {
		return err
	}
	ds, err := s.store.WebhookDeliveryList(r.Context(), ota.WebhookDeliveryListParams{WebhookID: wh.ID, Before: before, Limit: limit})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, newPage(ds, limit, func(d *ota.WebhookDelivery) string { return strconv.FormatInt(d.Seq, 10) }))
}
