package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/ota"
)

const tokenColumns = `id, name, scope, hash, origin, created_at, expires_at, last_used_at, created_by, revoked_at`

func scanToken(row pgx.Row) (*ota.APIToken, error) {
	var t ota.APIToken
	err := row.Scan(&t.ID, &t.Name, &t.Scope, &t.Hash, &t.Origin, &t.CreatedAt, &t.ExpiresAt, &t.LastUsedAt, &t.CreatedBy, &t.RevokedAt)
	t.CreatedAt = utc(t.CreatedAt)
	t.ExpiresAt, t.LastUsedAt, t.RevokedAt = utcPtr(t.ExpiresAt), utcPtr(t.LastUsedAt), utcPtr(t.RevokedAt)
	return &t, err
}

func tokenInsert(ctx context.Context, tx pgx.Tx, t *ota.APIToken, orIgnore bool) (bool, error) {
	if t.CreatedAt.IsZero() {
		t.CreatedAt = ota.Now()
	}
	q := `INSERT INTO api_tokens (` + tokenColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`
	if orIgnore {
		q += ` ON CONFLICT DO NOTHING`
	}
	tag, err := tx.Exec(ctx, q, t.ID, t.Name, t.Scope, t.Hash, t.Origin, t.CreatedAt, t.ExpiresAt, t.LastUsedAt, t.CreatedBy, t.RevokedAt)
	if err != nil {
		return false, interpretError(err, "token")
	}
	return tag.RowsAffected() > 0, nil
}

func (s *Store) TokenCreate(ctx context.Context, t *ota.APIToken) error {
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tokenInsert(ctx, tx, t, false); err != nil {
			return err
		}
		return appendEvents(ctx, tx, ota.TokenEvent(ota.LogTokenCreated, t, t.CreatedAt))
	})
}

func (s *Store) TokenEnsure(ctx context.Context, t *ota.APIToken) (*ota.APIToken, error) {
	var got *ota.APIToken
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		// Replicas starting at once with a new OTAD_API_TOKEN: the first
		// to lock the origin's tokens replaces, the others find it done.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('otad api_tokens origin ' || $1))`, t.Origin); err != nil {
			return fmt.Errorf("lock tokens: %w", err)
		}
		created, err := tokenInsert(ctx, tx, t, true)
		if err != nil {
			return err
		}
		if got, err = scanToken(tx.QueryRow(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE hash = $1`, t.Hash)); err != nil {
			return interpretError(err, "token")
		}
		var evs []ota.Event
		if created {
			evs = append(evs, ota.TokenEvent(ota.LogTokenCreated, got, got.CreatedAt))
		}
		if got.RevokedAt == nil && got.Origin == t.Origin {
			now := ota.Now()
			rows, err := tx.Query(ctx, `UPDATE api_tokens SET revoked_at = $1 WHERE origin = $2 AND revoked_at IS NULL AND id <> $3
				RETURNING `+tokenColumns, now, t.Origin, got.ID)
			replaced, err := collect(rows, err, "tokens", scanToken)
			if err != nil {
				return err
			}
			for _, r := range replaced {
				evs = append(evs, ota.TokenEvent(ota.LogTokenRevoked, r, now))
			}
		}
		return appendEvents(ctx, tx, evs...)
	})
	if err != nil {
		return nil, fmt.Errorf("ensure token: %w", err)
	}
	return got, nil
}

func (s *Store) TokenGet(ctx context.Context, id string) (*ota.APIToken, error) {
	t, err := scanToken(s.pool.QueryRow(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE id = $1`, id))
	if err != nil {
		return nil, interpretError(err, "token")
	}
	return t, nil
}

func (s *Store) TokenGetByHash(ctx context.Context, hash string) (*ota.APIToken, error) {
	t, err := scanToken(s.pool.QueryRow(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE hash = $1`, hash))
	if err != nil {
		return nil, interpretError(err, "token")
	}
	return t, nil
}

func (s *Store) TokenList(ctx context.Context, p ota.TokenListParams) ([]*ota.APIToken, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE revoked_at IS NULL AND id > $1 ORDER BY id LIMIT $2`,
		p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "tokens", scanToken)
}

func (s *Store) TokenCount(ctx context.Context) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM api_tokens`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count tokens: %w", err)
	}
	return n, nil
}

func (s *Store) TokenRevoke(ctx context.Context, id string, at time.Time) (*ota.APIToken, error) {
	var t *ota.APIToken
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		// Lock the unrevoked admin tokens first: two revocations at once
		// cannot then each count the other's token as the one left.
		if _, err := tx.Exec(ctx, `SELECT id FROM api_tokens WHERE scope = $1 AND revoked_at IS NULL ORDER BY id FOR UPDATE`, ota.ScopeAdmin); err != nil {
			return fmt.Errorf("lock admin tokens: %w", err)
		}
		var err error
		if t, err = scanToken(tx.QueryRow(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE id = $1 AND revoked_at IS NULL FOR UPDATE`, id)); err != nil {
			return interpretError(err, "token")
		}
		if t.Scope == ota.ScopeAdmin && t.Usable(at) {
			var others int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM api_tokens WHERE scope = $1 AND revoked_at IS NULL
				AND (expires_at IS NULL OR expires_at > $2) AND id <> $3`, ota.ScopeAdmin, at, id).Scan(&others); err != nil {
				return fmt.Errorf("count admin tokens: %w", err)
			}
			if others == 0 {
				return ota.ErrLastAdmin
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE api_tokens SET revoked_at = $1 WHERE id = $2`, at, id); err != nil {
			return interpretError(err, "token")
		}
		t.RevokedAt = &at
		return appendEvents(ctx, tx, ota.TokenEvent(ota.LogTokenRevoked, t, at))
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

func (s *Store) TokenTouch(ctx context.Context, id string, at time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)`, at, id)
	if err != nil {
		return fmt.Errorf("touch token: %w", interpretError(err, "token"))
	}
	return nil
}

func (s *Store) AuditAppend(ctx context.Context, e *ota.AuditEntry) error {
	if e.CreatedAt.IsZero() {
		e.CreatedAt = ota.Now()
	}
	params, _ := json.Marshal(e.Params)
	err := s.pool.QueryRow(ctx, `INSERT INTO audit_log (token_id, token_name, method, route, params, path, resource, status, client_addr, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id`,
		e.TokenID, e.TokenName, e.Method, e.Route, string(params), e.Path, e.Resource, e.Status, e.ClientAddr, e.CreatedAt).Scan(&e.ID)
	if err != nil {
		return fmt.Errorf("append audit entry: %w", interpretError(err, "audit entry"))
	}
	return nil
}

func (s *Store) AuditList(ctx context.Context, p ota.AuditListParams) ([]*ota.AuditEntry, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, token_id, token_name, method, route, params, path, resource, status, client_addr, created_at
		FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2`, p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "audit log", func(row pgx.Row) (*ota.AuditEntry, error) {
		var e ota.AuditEntry
		var params string
		if err := row.Scan(&e.ID, &e.TokenID, &e.TokenName, &e.Method, &e.Route, &params, &e.Path, &e.Resource, &e.Status, &e.ClientAddr,
			&e.CreatedAt); err != nil {
			return nil, err
		}
		e.CreatedAt = utc(e.CreatedAt)
		if err := json.Unmarshal([]byte(params), &e.Params); err != nil {
			return nil, fmt.Errorf("audit entry %d params: %w", e.ID, err)
		}
		if e.Params == nil {
			e.Params = map[string]string{}
		}
		return &e, nil
	})
}

func (s *Store) DeviceSecretList(ctx context.Context, p ota.DeviceSecretListParams) ([]ota.DeviceSecret, error) {
	rows, err := s.pool.Query(ctx, `SELECT product_id, name, secret FROM devices WHERE (product_id, name) > ($1, $2)
		ORDER BY product_id, name LIMIT $3`, p.AfterProduct, p.AfterName, ota.PageLimit(p.Limit))
	return collect(rows, err, "device secrets", func(row pgx.Row) (ota.DeviceSecret, error) {
		var d ota.DeviceSecret
		return d, row.Scan(&d.ProductID, &d.Name, &d.Stored)
	})
}

func (s *Store) DeviceSecretUpdate(ctx context.Context, p ota.DeviceSecretUpdateParams) error {
	tag, err := s.pool.Exec(ctx, `UPDATE devices SET secret = $1 WHERE product_id = $2 AND name = $3 AND secret = $4`, p.New, p.ProductID, p.Name, p.Old)
	if err != nil {
		return fmt.Errorf("update device secret: %w", interpretError(err, "device"))
	}
	if tag.RowsAffected() == 0 {
		return ota.Errorf(ota.ECONFLICT, "device secret changed or device deleted")
	}
	return nil
}
