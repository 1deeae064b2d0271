package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/sqltext"
)

const webhookColumns = `id, url, description, event_types, product_id, job_id, enabled, disabled_reason, secret,
	cursor_seq, failing_since, failures, rev, created_at, updated_at`

func scanWebhook(row scanner) (*ota.Webhook, error) {
	var w ota.Webhook
	var types string
	err := row.Scan(&w.ID, &w.URL, &w.Description, &types, &w.ProductID, &w.JobID, &w.Enabled, &w.DisabledReason, &w.Secret,
		&w.Cursor, sqlTimePtr{&w.FailingSince}, &w.Failures, &w.Rev, sqlTime{&w.CreatedAt}, sqlTime{&w.UpdatedAt})
	w.EventTypes = sqltext.SplitList(types)
	return &w, err
}

func (s *Store) WebhookCreate(ctx context.Context, w *ota.Webhook) error {
	w.CreatedAt = ota.Now()
	w.UpdatedAt = w.CreatedAt
	return s.inTx(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRowContext(ctx, `INSERT INTO webhooks (id, url, description, event_types, product_id, job_id, enabled, disabled_reason,
			secret, cursor_seq, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT coalesce(max(seq), 0) FROM events), ?, ?) RETURNING cursor_seq`,
			w.ID, w.URL, w.Description, sqltext.List(w.EventTypes), w.ProductID, w.JobID, w.Enabled, w.DisabledReason,
			w.Secret, fmtTime(w.CreatedAt), fmtTime(w.UpdatedAt)).Scan(&w.Cursor)
		if err != nil {
			return interpretError(err, "webhook")
		}
		return appendEvents(ctx, tx, ota.WebhookEvent(ota.LogWebhookCreated, w, w.CreatedAt))
	})
}

func (s *Store) WebhookGet(ctx context.Context, id string) (*ota.Webhook, error) {
	w, err := scanWebhook(s.read.QueryRowContext(ctx, `SELECT `+webhookColumns+` FROM webhooks WHERE id = ?`, id))
	if err != nil {
		return nil, interpretError(err, "webhook")
	}
	return w, nil
}

func (s *Store) WebhookList(ctx context.Context, p ota.WebhookListParams) ([]*ota.Webhook, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+webhookColumns+` FROM webhooks WHERE id > ? ORDER BY id LIMIT ?`, p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "webhooks", scanWebhook)
}

func (s *Store) WebhookUpdate(ctx context.Context, p ota.WebhookUpdateParams) error {
	w := p.Webhook
	at := ota.Now()
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE webhooks SET url = ?, description = ?, event_types = ?, product_id = ?, job_id = ?,
			enabled = ?, disabled_reason = ?, secret = ?, rev = rev + 1, updated_at = ?,
			failing_since = CASE WHEN ? THEN NULL ELSE failing_since END, failures = CASE WHEN ? THEN 0 ELSE failures END
			WHERE id = ? AND rev = ?`,
			w.URL, w.Description, sqltext.List(w.EventTypes), w.ProductID, w.JobID, w.Enabled, w.DisabledReason,
			w.Secret, fmtTime(at), p.ResetFailing, p.ResetFailing, w.ID, w.Rev)
		if err != nil {
			return interpretError(err, "webhook")
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return webhookGone(ctx, tx, w.ID)
		}
		w.Rev++
		w.UpdatedAt = at
		if p.ResetFailing {
			w.FailingSince, w.Failures = nil, 0
		}
		return appendEvents(ctx, tx, ota.WebhookEvent(p.Event, w, at))
	})
}

// webhookGone tells why a compare-and-set on a webhook changed nothing:
// ENOTFOUND when it no longer exists, else ECONFLICT.
func webhookGone(ctx context.Context, tx *sql.Tx, id string) error {
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM webhooks WHERE id = ?`, id).Scan(&n); err != nil {
		return fmt.Errorf("webhook: %w", interpretError(err, "webhook"))
	}
	if n == 0 {
		return ota.Errorf(ota.ENOTFOUND, "webhook not found")
	}
	return ota.Errorf(ota.ECONFLICT, "webhook changed concurrently; read it again")
}

func (s *Store) WebhookDelete(ctx context.Context, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		w, err := scanWebhook(tx.QueryRowContext(ctx, `DELETE FROM webhooks WHERE id = ? RETURNING `+webhookColumns, id))
		if err != nil {
			return interpretError(err, "webhook")
		}
		return appendEvents(ctx, tx, ota.WebhookEvent(ota.LogWebhookDeleted, w, ota.Now()))
	})
}

func (s *Store) WebhookListDue(ctx context.Context, limit int) ([]string, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT id FROM webhooks WHERE enabled AND cursor_seq < (SELECT coalesce(max(seq), 0) FROM events)
		ORDER BY id LIMIT ?`, limit)
	return collect(rows, err, "due webhooks", func(row scanner) (string, error) {
		var id string
		return id, row.Scan(&id)
	})
}

func (s *Store) WebhookAttempt(ctx context.Context, p ota.WebhookAttemptParams) (*ota.Webhook, error) {
	a := p.Attempt
	at := fmtTime(a.UpdatedAt)
	var w *ota.Webhook
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		ok := a.OK()
		var err error
		w, err = scanWebhook(tx.QueryRowContext(ctx, `UPDATE webhooks SET
			cursor_seq = CASE WHEN ? THEN ? ELSE cursor_seq END,
			failing_since = CASE WHEN ? THEN NULL ELSE coalesce(failing_since, ?) END,
			failures = CASE WHEN ? THEN 0 ELSE failures + 1 END
			WHERE id = ? AND cursor_seq = ? RETURNING `+webhookColumns, ok, a.Seq, ok, at, ok, p.WebhookID, p.From))
		if errors.Is(err, sql.ErrNoRows) {
			return webhookGone(ctx, tx, p.WebhookID)
		}
		if err != nil {
			return interpretError(err, "webhook")
		}
		var delivered any
		if ok {
			delivered = at
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO webhook_deliveries (webhook_id, seq, event_type, attempts, status_code, error, latency_ms,
			delivered_at, created_at, updated_at) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?8)
			ON CONFLICT (webhook_id, seq) DO UPDATE SET attempts = attempts + 1, status_code = ?4, error = ?5,
				latency_ms = ?6, delivered_at = coalesce(?7, delivered_at), updated_at = ?8`,
			p.WebhookID, a.Seq, a.EventType, a.StatusCode, a.Error, a.LatencyMS, delivered, at)
		return interpretError(err, "webhook delivery")
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

func (s *Store) WebhookAdvance(ctx context.Context, id string, from, to int64) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE webhooks SET cursor_seq = ? WHERE id = ? AND cursor_seq = ?`, to, id, from)
		if err != nil {
			return interpretError(err, "webhook")
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return webhookGone(ctx, tx, id)
		}
		return nil
	})
}

func (s *Store) WebhookDeliveryList(ctx context.Context, p ota.WebhookDeliveryListParams) ([]*ota.WebhookDelivery, error) {
	before := p.Before
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.read.QueryContext(ctx, `SELECT webhook_id, seq, event_type, attempts, status_code, error, latency_ms, delivered_at, created_at, updated_at
		FROM webhook_deliveries WHERE webhook_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?`, p.WebhookID, before, ota.PageLimit(p.Limit))
	return collect(rows, err, "webhook deliveries", func(row scanner) (*ota.WebhookDelivery, error) {
		var d ota.WebhookDelivery
		err := row.Scan(&d.WebhookID, &d.Seq, &d.EventType, &d.Attempts, &d.StatusCode, &d.Error, &d.LatencyMS,
			sqlTimePtr{&d.DeliveredAt}, sqlTime{&d.CreatedAt}, sqlTime{&d.UpdatedAt})
		return &d, err
	})
}
