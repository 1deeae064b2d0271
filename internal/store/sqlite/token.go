package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/otad/otad/internal/ota"
)

const tokenColumns = `id, name, scope, hash, origin, created_at, expires_at, last_used_at, created_by, revoked_at`

func scanToken(row scanner) (*ota.APIToken, error) {
	var t ota.APIToken
	err := row.Scan(&t.ID, &t.Name, &t.Scope, &t.Hash, &t.Origin, sqlTime{&t.CreatedAt}, sqlTimePtr{&t.ExpiresAt},
		sqlTimePtr{&t.LastUsedAt}, &t.CreatedBy, sqlTimePtr{&t.RevokedAt})
	return &t, err
}

func tokenInsert(ctx context.Context, tx *sql.Tx, t *ota.APIToken, orIgnore bool) (bool, error) {
	if t.CreatedAt.IsZero() {
		t.CreatedAt = ota.Now()
	}
	q := `INSERT INTO api_tokens (` + tokenColumns + `) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	if orIgnore {
		q += ` ON CONFLICT DO NOTHING`
	}
	res, err := tx.ExecContext(ctx, q, t.ID, t.Name, t.Scope, t.Hash, t.Origin, fmtTime(t.CreatedAt), fmtTimePtr(t.ExpiresAt),
		fmtTimePtr(t.LastUsedAt), t.CreatedBy, fmtTimePtr(t.RevokedAt))
	if err != nil {
		return false, interpretError(err, "token")
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

func (s *Store) TokenCreate(ctx context.Context, t *ota.APIToken) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tokenInsert(ctx, tx, t, false); err != nil {
			return err
		}
		return appendEvents(ctx, tx, ota.TokenEvent(ota.LogTokenCreated, t, t.CreatedAt))
	})
}

func (s *Store) TokenEnsure(ctx context.Context, t *ota.APIToken) (*ota.APIToken, error) {
	var got *ota.APIToken
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		created, err := tokenInsert(ctx, tx, t, true)
		if err != nil {
			return err
		}
		if got, err = scanToken(tx.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE hash = ?`, t.Hash)); err != nil {
			return interpretError(err, "token")
		}
		var evs []ota.Event
		if created {
			evs = append(evs, ota.TokenEvent(ota.LogTokenCreated, got, got.CreatedAt))
		}
		if got.RevokedAt == nil && got.Origin == t.Origin {
			rows, err := tx.QueryContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE origin = ? AND revoked_at IS NULL AND id <> ?`, t.Origin, got.ID)
			replaced, err := collect(rows, err, "tokens", scanToken)
			if err != nil {
				return err
			}
			now := ota.Now()
			for _, r := range replaced {
				if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = ? WHERE id = ?`, fmtTime(now), r.ID); err != nil {
					return interpretError(err, "token")
				}
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
	t, err := scanToken(s.read.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE id = ?`, id))
	if err != nil {
		return nil, interpretError(err, "token")
	}
	return t, nil
}

func (s *Store) TokenGetByHash(ctx context.Context, hash string) (*ota.APIToken, error) {
	t, err := scanToken(s.read.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE hash = ?`, hash))
	if err != nil {
		return nil, interpretError(err, "token")
	}
	return t, nil
}

func (s *Store) TokenList(ctx context.Context, p ota.TokenListParams) ([]*ota.APIToken, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE revoked_at IS NULL AND id > ? ORDER BY id LIMIT ?`,
		p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "tokens", scanToken)
}

func (s *Store) TokenCount(ctx context.Context) (int, error) {
	var n int
	if err := s.read.QueryRowContext(ctx, `SELECT count(*) FROM api_tokens`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count tokens: %w", err)
	}
	return n, nil
}

func (s *Store) TokenRevoke(ctx context.Context, id string, at time.Time) (*ota.APIToken, error) {
	var t *ota.APIToken
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		if t, err = scanToken(tx.QueryRowContext(ctx, `SELECT `+tokenColumns+` FROM api_tokens WHERE id = ? AND revoked_at IS NULL`, id)); err != nil {
			return interpretError(err, "token")
		}
		if t.Scope == ota.ScopeAdmin && t.Usable(at) {
			var others int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM api_tokens WHERE scope = ? AND revoked_at IS NULL
				AND (expires_at IS NULL OR expires_at > ?) AND id <> ?`, ota.ScopeAdmin, fmtTime(at), id).Scan(&others); err != nil {
				return fmt.Errorf("count admin tokens: %w", err)
			}
			if others == 0 {
				return ota.ErrLastAdmin
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE api_tokens SET revoked_at = ? WHERE id = ?`, fmtTime(at), id); err != nil {
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
	_, err := s.write.ExecContext(ctx, `UPDATE api_tokens SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)`,
		fmtTime(at), id)
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
	err := s.write.QueryRowContext(ctx, `INSERT INTO audit_log (token_id, token_name, method, route, params, path, resource, status, client_addr, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		e.TokenID, e.TokenName, e.Method, e.Route, string(params), e.Path, e.Resource, e.Status, e.ClientAddr, fmtTime(e.CreatedAt)).Scan(&e.ID)
	if err != nil {
		return fmt.Errorf("append audit entry: %w", interpretError(err, "audit entry"))
	}
	return nil
}

func (s *Store) AuditList(ctx context.Context, p ota.AuditListParams) ([]*ota.AuditEntry, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT id, token_id, token_name, method, route, params, path, resource, status, client_addr, created_at
		FROM audit_log WHERE id > ? ORDER BY id LIMIT ?`, p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "audit log", func(row scanner) (*ota.AuditEntry, error) {
		var e ota.AuditEntry
		var params string
		if err := row.Scan(&e.ID, &e.TokenID, &e.TokenName, &e.Method, &e.Route, &params, &e.Path, &e.Resource, &e.Status, &e.ClientAddr,
			sqlTime{&e.CreatedAt}); err != nil {
			return nil, err
		}
		return &e, unmarshalParams(params, &e)
	})
}

// unmarshalParams reads the stored route parameters of an audit entry.
func unmarshalParams(params string, e *ota.AuditEntry) error {
	if err := json.Unmarshal([]byte(params), &e.Params); err != nil {
		return fmt.Errorf("audit entry %d params: %w", e.ID, err)
	}
	if e.Params == nil {
		e.Params = map[string]string{}
	}
	return nil
}

func (s *Store) DeviceSecretList(ctx context.Context, p ota.DeviceSecretListParams) ([]ota.DeviceSecret, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT product_id, name, secret FROM devices WHERE (product_id, name) > (?, ?)
		ORDER BY product_id, name LIMIT ?`, p.AfterProduct, p.AfterName, ota.PageLimit(p.Limit))
	return collect(rows, err, "device secrets", func(row scanner) (ota.DeviceSecret, error) {
		var d ota.DeviceSecret
		return d, row.Scan(&d.ProductID, &d.Name, &d.Stored)
	})
}

func (s *Store) DeviceSecretUpdate(ctx context.Context, p ota.DeviceSecretUpdateParams) error {
	res, err := s.write.ExecContext(ctx, `UPDATE devices SET secret = ? WHERE product_id = ? AND name = ? AND secret = ?`, p.New, p.ProductID, p.Name, p.Old)
	if err != nil {
		return fmt.Errorf("update device secret: %w", interpretError(err, "device"))
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ota.Errorf(ota.ECONFLICT, "device secret changed or device deleted")
	}
	return nil
}
