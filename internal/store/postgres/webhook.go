package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/sqltext"
)

const webhookColumns = `id, url, description, event_types, product_id, job_id, enabled, disabled_reason, secret,
	cursor_seq, failing_since, failures, rev, created_at, updated_at`

func scanWebhook(row pgx.Row) (*ota.Webhook, error) {
	var w ota.Webhook
	var types string
	err := row.Scan(&w.ID, &w.URL, &w.Description, &types, &w.ProductID, &w.JobID, &w.Enabled, &w.DisabledReason, &w.Secret,
		&w.Cursor, &w.FailingSince, &w.Failures, &w.Rev, &w.CreatedAt, &w.UpdatedAt)
	w.EventTypes = sqltext.SplitList(types)
	w.FailingSince, w.CreatedAt, w.UpdatedAt = utcPtr(w.FailingSince), utc(w.CreatedAt), utc(w.UpdatedAt)
	return &w, err
}

func (s *Store) WebhookCreate(ctx context.Context, w *ota.Webhook) error {
	w.CreatedAt = ota.Now()
	w.UpdatedAt = w.CreatedAt
	// Number what has committed, so that the cursor below passes it.
	if err := s.seq.flush(ctx); err != nil {
		return err
	}
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		// The newest event this transaction sees: one committed later
		// comes after it.
		err := tx.QueryRow(ctx, `INSERT INTO webhooks (id, url, description, event_types, product_id, job_id, enabled, disabled_reason,
			secret, cursor_seq, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, (SELECT coalesce(max(seq), 0) FROM events), $10, $10) RETURNING cursor_seq`,
			w.ID, w.URL, w.Description, sqltext.List(w.EventTypes), w.ProductID, w.JobID, w.Enabled, w.DisabledReason,
			w.Secret, w.CreatedAt).Scan(&w.Cursor)
		if err != nil {
			return interpretError(err, "webhook")
		}
		return appendEvents(ctx, tx, ota.WebhookEvent(ota.LogWebhookCreated, w, w.CreatedAt))
	})
}

func (s *Store) WebhookGet(ctx context.Context, id string) (*ota.Webhook, error) {
	w, err := scanWebhook(s.pool.QueryRow(ctx, `SELECT `+webhookColumns+` FROM webhooks WHERE id = $1`, id))
	if err != nil {
		return nil, interpretError(err, "webhook")
	}
	return w, nil
}

func (s *Store) WebhookList(ctx context.Context, p ota.WebhookListParams) ([]*ota.Webhook, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+webhookColumns+` FROM webhooks WHERE id > $1 ORDER BY id LIMIT $2`, p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "webhooks", scanWebhook)
}

func (s *Store) WebhookUpdate(ctx context.Context, p ota.WebhookUpdateParams) error {
	w := p.Webhook
	at := ota.Now()
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE webhooks SET url = $3, description = $4, event_types = $5, product_id = $6, job_id = $7,
			enabled = $8, disabled_reason = $9, secret = $10, rev = rev + 1, updated_at = $11,
			failing_since = CASE WHEN $12 THEN NULL ELSE failing_since END, failures = CASE WHEN $12 THEN 0 ELSE failures END
			WHERE id = $1 AND rev = $2`,
			w.ID, w.Rev, w.URL, w.Description, sqltext.List(w.EventTypes), w.ProductID, w.JobID, w.Enabled, w.DisabledReason,
			w.Secret, at, p.ResetFailing)
		if err != nil {
			return interpretError(err, "webhook")
		}
		if tag.RowsAffected() == 0 {
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
func webhookGone(ctx context.Context, tx pgx.Tx, id string) error {
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM webhooks WHERE id = $1`, id).Scan(&n); err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	if n == 0 {
		return ota.Errorf(ota.ENOTFOUND, "webhook not found")
	}
	return ota.Errorf(ota.ECONFLICT, "webhook changed concurrently; read it again")
}

func (s *Store) WebhookDelete(ctx context.Context, id string) error {
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		w, err := scanWebhook(tx.QueryRow(ctx, `DELETE FROM webhooks WHERE id = $1 RETURNING `+webhookColumns, id))
		if err != nil {
			return interpretError(err, "webhook")
		}
		return appendEvents(ctx, tx, ota.WebhookEvent(ota.LogWebhookDeleted, w, ota.Now()))
	})
}

func (s *Store) WebhookListDue(ctx context.Context, limit int) ([]string, error) {
	if err := s.seq.flush(ctx); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT id FROM webhooks WHERE enabled AND cursor_seq < (SELECT coalesce(max(seq), 0) FROM events)
		ORDER BY id LIMIT $1`, limit)
	return collect(rows, err, "due webhooks", func(row pgx.Row) (string, error) {
		var id string
		return id, row.Scan(&id)
	})
}

func (s *Store) WebhookAttempt(ctx context.Context, p ota.WebhookAttemptParams) (*ota.Webhook, error) {
	a := p.Attempt
	at := a.UpdatedAt.UTC()
	var w *ota.Webhook
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		ok := a.OK()
		var err error
		w, err = scanWebhook(tx.QueryRow(ctx, `UPDATE webhooks SET
			cursor_seq = CASE WHEN $3 THEN $4 ELSE cursor_seq END,
			failing_since = CASE WHEN $3 THEN NULL ELSE coalesce(failing_since, $5) END,
			failures = CASE WHEN $3 THEN 0 ELSE failures + 1 END
			WHERE id = $1 AND cursor_seq = $2 RETURNING `+webhookColumns, p.WebhookID, p.From, ok, a.Seq, at))
		if errors.Is(err, pgx.ErrNoRows) {
			return webhookGone(ctx, tx, p.WebhookID)
		}
		if err != nil {
			return interpretError(err, "webhook")
		}
		var delivered *time.Time
		if ok {
			delivered = &at
		}
		_, err = tx.Exec(ctx, `INSERT INTO webhook_deliveries (webhook_id, seq, event_type, attempts, status_code, error, latency_ms,
			delivered_at, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $8)
			ON CONFLICT (webhook_id, seq) DO UPDATE SET attempts = webhook_deliveries.attempts + 1, status_code = $4, error = $5,
				latency_ms = $6, delivered_at = coalesce($7, webhook_deliveries.delivered_at), updated_at = $8`,
			p.WebhookID, a.Seq, a.EventType, a.StatusCode, a.Error, a.LatencyMS, delivered, at)
		return interpretError(err, "webhook delivery")
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

func (s *Store) WebhookAdvance(ctx context.Context, id string, from, to int64) error {
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE webhooks SET cursor_seq = $3 WHERE id = $1 AND cursor_seq = $2`, id, from, to)
		if err != nil {
			return interpretError(err, "webhook")
		}
		if tag.RowsAffected() == 0 {
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
	rows, err := s.pool.Query(ctx, `SELECT webhook_id, seq, event_type, attempts, status_code, error, latency_ms, delivered_at, created_at, updated_at
		FROM webhook_deliveries WHERE webhook_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3`, p.WebhookID, before, ota.PageLimit(p.Limit))
	return collect(rows, err, "webhook deliveries", func(row pgx.Row) (*ota.WebhookDelivery, error) {
		var d ota.WebhookDelivery
		err := row.Scan(&d.WebhookID, &d.Seq, &d.EventType, &d.Attempts, &d.StatusCode, &d.Error, &d.LatencyMS, &d.DeliveredAt, &d.CreatedAt, &d.UpdatedAt)
		d.DeliveredAt, d.CreatedAt, d.UpdatedAt = utcPtr(d.DeliveredAt), utc(d.CreatedAt), utc(d.UpdatedAt)
		return &d, err
	})
}
