package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/otad/otad/internal/ota"
)

// ProductCreate stores a new product; its ID must be free.
func (s *Store) ProductCreate(ctx context.Context, p *ota.Product) error {
	if p.CreatedAt.IsZero() {
		p.CreatedAt = ota.Now()
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO products (id, name, description, created_at) VALUES ($1, $2, $3, $4)`,
		p.ID, p.Name, p.Description, p.CreatedAt)
	return interpretError(err, "product")
}

func (s *Store) ProductGet(ctx context.Context, id string) (*ota.Product, error) {
	p, err := scanProduct(s.pool.QueryRow(ctx, `SELECT id, name, description, created_at FROM products WHERE id = $1`, id))
	if err != nil {
		return nil, interpretError(err, "product")
	}
	return p, nil
}

func (s *Store) ProductList(ctx context.Context, params ota.ProductListParams) ([]*ota.Product, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, name, description, created_at FROM products WHERE id > $1 ORDER BY id LIMIT $2`,
		params.After, ota.PageLimit(params.Limit))
	return collect(rows, err, "products", scanProduct)
}

func scanProduct(row pgx.Row) (*ota.Product, error) {
	var p ota.Product
	err := row.Scan(&p.ID, &p.Name, &p.Description, &p.CreatedAt)
	p.CreatedAt = utc(p.CreatedAt)
	return &p, err
}

// collect scans every row with scan; err is the query's.
func collect[T any](rows pgx.Rows, err error, what string, scan func(pgx.Row) (T, error)) ([]T, error) {
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (T, error) { return scan(row) })
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	return out, nil
}

const deviceColumns = `product_id, name, secret, version, online, last_seen_at, disabled,
	upgrade_version, upgrade_state, upgrade_percent, upgrade_result_code, upgrade_result_msg, upgrade_updated_at, created_at`

func scanDevice(row pgx.Row) (*ota.Device, error) {
	var d ota.Device
	var uv, us, um *string
	var up, uc *int
	var ut *pgTime
	err := row.Scan(&d.ProductID, &d.Name, &d.Secret, &d.Version, &d.Online, &d.LastSeenAt, &d.Disabled,
		&uv, &us, &up, &uc, &um, &ut, &d.CreatedAt)
	if err != nil {
		return nil, err
	}
	d.CreatedAt = utc(d.CreatedAt)
	d.LastSeenAt = utcPtr(d.LastSeenAt)
	if us != nil {
		d.Upgrade = &ota.UpgradeProgress{Version: deref(uv), State: *us, Percent: derefInt(up),
			ResultCode: derefInt(uc), ResultMsg: deref(um)}
		if ut != nil {
			d.Upgrade.UpdatedAt = utc(*ut)
		}
	}
	return &d, nil
}

func (s *Store) DeviceCreate(ctx context.Context, d *ota.Device) error {
	if d.CreatedAt.IsZero() {
		d.CreatedAt = ota.Now()
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO devices (product_id, name, secret, version, disabled, created_at)
		VALUES ($1, $2, $3, $4, $5, $6)`, d.ProductID, d.Name, d.Secret, d.Version, d.Disabled, d.CreatedAt)
	return interpretError(err, "device")
}

func (s *Store) DeviceGet(ctx context.Context, productID, name string) (*ota.Device, error) {
	d, err := scanDevice(s.pool.QueryRow(ctx, `SELECT `+deviceColumns+` FROM devices WHERE product_id = $1 AND name = $2`, productID, name))
	if err != nil {
		return nil, interpretError(err, "device")
	}
	return d, nil
}

func (s *Store) DeviceList(ctx context.Context, params ota.DeviceListParams) ([]*ota.Device, error) {
	where := []string{"product_id = $1", "name > $2"}
	args := []any{params.ProductID, params.After}
	if params.Version != "" {
		args = append(args, params.Version)
		where = append(where, fmt.Sprintf("version = $%d", len(args)))
	}
	if params.Online != nil {
		args = append(args, *params.Online)
		where = append(where, fmt.Sprintf("online = $%d", len(args)))
	}
	args = append(args, ota.PageLimit(params.Limit))
	q := `SELECT ` + deviceColumns + ` FROM devices WHERE ` + strings.Join(where, " AND ") +
		fmt.Sprintf(` ORDER BY name LIMIT $%d`, len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	return collect(rows, err, "devices", scanDevice)
}

func (s *Store) DeviceDelete(ctx context.Context, productID, name string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM devices WHERE product_id = $1 AND name = $2`, productID, name)
	if err != nil {
		return fmt.Errorf("delete device: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ota.Errorf(ota.ENOTFOUND, "device not found")
	}
	return nil
}

func (s *Store) DeviceSetDisabled(ctx context.Context, productID, name string, disabled bool) error {
	tag, err := s.pool.Exec(ctx, `UPDATE devices SET disabled = $3 WHERE product_id = $1 AND name = $2`, productID, name, disabled)
	if err != nil {
		return fmt.Errorf("set device disabled: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ota.Errorf(ota.ENOTFOUND, "device not found")
	}
	return nil
}

func (s *Store) DevicePresence(ctx context.Context, p ota.DevicePresenceParams) error {
	typ := ota.EventDisconnected
	if p.Online {
		typ = ota.EventConnected
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// A disconnect counts only from the node that holds the device: it
		// may have reconnected to another replica meanwhile.
		tag, err := tx.Exec(ctx, `UPDATE devices SET online = $3, node = CASE WHEN $3 THEN $4 ELSE node END, last_seen_at = $5
			WHERE product_id = $1 AND name = $2 AND ($3 OR node = $4)`,
			p.ProductID, p.DeviceName, p.Online, p.Node, p.At.UTC())
		if err != nil {
			return fmt.Errorf("device presence: %w", err)
		}
		if tag.RowsAffected() == 0 {
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM devices WHERE product_id = $1 AND name = $2)`, p.ProductID, p.DeviceName).Scan(&exists); err != nil {
				return fmt.Errorf("device presence: %w", err)
			}
			if !exists {
				return ota.Errorf(ota.ENOTFOUND, "device not found")
			}
			return nil
		}
		_, err = tx.Exec(ctx, `INSERT INTO device_events (product_id, device_name, type, created_at) VALUES ($1, $2, $3, $4)`,
			p.ProductID, p.DeviceName, typ, p.At.UTC())
		return interpretError(err, "device event")
	})
}

func (s *Store) DeviceReportsRecord(ctx context.Context, reports []ota.Report) error {
	rounds := splitOnePerDevice(reports)
	switch len(rounds) {
	case 0:
		return nil
	case 1:
		return s.deviceReportsRecordSet(ctx, s.pool, rounds[0]) // one statement is atomic
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		for _, round := range rounds {
			if err := s.deviceReportsRecordSet(ctx, tx, round); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Store) DeviceEventList(ctx context.Context, p ota.DeviceEventListParams) ([]*ota.DeviceEvent, error) {
	before := p.Before
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.pool.Query(ctx, `SELECT id, product_id, device_name, type, version, state, percent, result_code, result_msg, created_at
		FROM device_events WHERE product_id = $1 AND device_name = $2 AND id < $3 ORDER BY id DESC LIMIT $4`,
		p.ProductID, p.DeviceName, before, ota.PageLimit(p.Limit))
	return collect(rows, err, "device events", func(row pgx.Row) (*ota.DeviceEvent, error) {
		var e ota.DeviceEvent
		err := row.Scan(&e.ID, &e.ProductID, &e.DeviceName, &e.Type, &e.Version, &e.State, &e.Percent, &e.ResultCode, &e.ResultMsg, &e.CreatedAt)
		e.CreatedAt = utc(e.CreatedAt)
		return &e, err
	})
}

const firmwareColumns = `product_id, version, size, md5, sha256, description, blob_key, created_at`

func scanFirmware(row pgx.Row) (*ota.Firmware, error) {
	var f ota.Firmware
	err := row.Scan(&f.ProductID, &f.Version, &f.Size, &f.MD5, &f.SHA256, &f.Description, &f.BlobKey, &f.CreatedAt)
	f.CreatedAt = utc(f.CreatedAt)
	return &f, err
}

func (s *Store) FirmwareCreate(ctx context.Context, f *ota.Firmware) error {
	if f.CreatedAt.IsZero() {
		f.CreatedAt = ota.Now()
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO firmware (`+firmwareColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		f.ProductID, f.Version, f.Size, f.MD5, f.SHA256, f.Description, f.BlobKey, f.CreatedAt)
	return interpretError(err, "firmware version")
}

func (s *Store) FirmwareGet(ctx context.Context, productID, version string) (*ota.Firmware, error) {
	f, err := scanFirmware(s.pool.QueryRow(ctx, `SELECT `+firmwareColumns+` FROM firmware WHERE product_id = $1 AND version = $2`, productID, version))
	if err != nil {
		return nil, interpretError(err, "firmware")
	}
	return f, nil
}

func (s *Store) FirmwareList(ctx context.Context, p ota.FirmwareListParams) ([]*ota.Firmware, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+firmwareColumns+` FROM firmware WHERE product_id = $1 AND version > $2 ORDER BY version LIMIT $3`,
		p.ProductID, p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "firmware", scanFirmware)
}

func (s *Store) FirmwareDelete(ctx context.Context, productID, version string) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Lock the row so a job created concurrently waits for the outcome.
		var key string
		if err := tx.QueryRow(ctx, `SELECT blob_key FROM firmware WHERE product_id = $1 AND version = $2 FOR UPDATE`, productID, version).Scan(&key); err != nil {
			return interpretError(err, "firmware")
		}
		var active bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM jobs WHERE product_id = $1 AND firmware_version = $2 AND status IN ($3, $4))`,
			productID, version, ota.JobScheduled, ota.JobRunning).Scan(&active); err != nil {
			return fmt.Errorf("delete firmware: %w", err)
		}
		if active {
			return ota.Errorf(ota.ECONFLICT, "firmware %s is used by an active job", version)
		}
		_, err := tx.Exec(ctx, `DELETE FROM firmware WHERE product_id = $1 AND version = $2`, productID, version)
		return interpretError(err, "firmware")
	})
}

func (s *Store) TokenCreate(ctx context.Context, t *ota.APIToken) error {
	if t.CreatedAt.IsZero() {
		t.CreatedAt = ota.Now()
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO api_tokens (id, name, hash, created_at) VALUES ($1, $2, $3, $4)`, t.ID, t.Name, t.Hash, t.CreatedAt)
	return interpretError(err, "token")
}

func (s *Store) TokenGetByHash(ctx context.Context, hash string) (*ota.APIToken, error) {
	var t ota.APIToken
	err := s.pool.QueryRow(ctx, `SELECT id, name, hash, created_at FROM api_tokens WHERE hash = $1`, hash).Scan(&t.ID, &t.Name, &t.Hash, &t.CreatedAt)
	if err != nil {
		return nil, interpretError(err, "token")
	}
	t.CreatedAt = utc(t.CreatedAt)
	return &t, nil
}

func (s *Store) TokenCount(ctx context.Context) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM api_tokens`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count tokens: %w", err)
	}
	return n, nil
}

type pgTime = time.Time

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func derefInt(n *int) int {
	if n == nil {
		return 0
	}
	return *n
}

// splitOnePerDevice splits a batch into rounds in which each device has at
// most one report, keeping each device's reports in order: the broker's
// batches, where a device has one report in flight, are a single round.
func splitOnePerDevice(reports []ota.Report) [][]ota.Report {
	var rounds [][]ota.Report
	seen := make(map[[2]string]int, len(reports))
	for _, r := range reports {
		k := [2]string{r.ProductID, r.DeviceName}
		i := seen[k]
		seen[k] = i + 1
		if i == len(rounds) {
			rounds = append(rounds, nil)
		}
		rounds[i] = append(rounds[i], r)
	}
	return rounds
}

// deviceReportsRecordSet applies a batch with one report per device in a
// single set-based statement: each device row is updated once and the
// events of the devices that exist are inserted in batch order; reports of
// devices deleted meanwhile are dropped. With batches of 100 or more it
// writes about twice the reports per second of one statement per report.
func (s *Store) deviceReportsRecordSet(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, reports []ota.Report) error {
	n := len(reports)
	pids, names, types, versions, states, msgs := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	percents, codes := make([]*int32, n), make([]*int32, n)
	ats := make([]time.Time, n)
	for i, r := range reports {
		pids[i], names[i], types[i], versions[i], states[i], msgs[i] = r.ProductID, r.DeviceName, r.Type, r.Version, r.State, r.ResultMsg
		if r.Percent != nil {
			v := int32(*r.Percent)
			percents[i] = &v
		}
		if r.ResultCode != nil {
			v := int32(*r.ResultCode)
			codes[i] = &v
		}
		ats[i] = r.At.UTC()
	}
	_, err := db.Exec(ctx, `WITH r AS (
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[], $7::integer[], $8::text[], $9::timestamptz[])
				WITH ORDINALITY AS r(product_id, device_name, type, version, state, percent, result_code, result_msg, created_at, ord)
		), upd AS (
			UPDATE devices d SET
				online = true,
				last_seen_at = r.created_at,
				version = CASE WHEN r.type = 'report_version' THEN r.version ELSE d.version END,
				upgrade_version = CASE WHEN r.type = 'report_progress' THEN r.version ELSE d.upgrade_version END,
				upgrade_state = CASE WHEN r.type = 'report_progress' THEN r.state ELSE d.upgrade_state END,
				upgrade_percent = CASE WHEN r.type <> 'report_progress' THEN d.upgrade_percent
					WHEN r.percent IS NOT NULL THEN r.percent
					WHEN r.state = 'done' THEN 100
					WHEN d.upgrade_version = r.version THEN d.upgrade_percent ELSE 0 END,
				upgrade_result_code = CASE WHEN r.type = 'report_progress' THEN COALESCE(r.result_code, 0) ELSE d.upgrade_result_code END,
				upgrade_result_msg = CASE WHEN r.type = 'report_progress' THEN r.result_msg ELSE d.upgrade_result_msg END,
				upgrade_updated_at = CASE WHEN r.type = 'report_progress' THEN r.created_at ELSE d.upgrade_updated_at END
			FROM r WHERE d.product_id = r.product_id AND d.name = r.device_name
			RETURNING r.ord
		)
		INSERT INTO device_events (product_id, device_name, type, version, state, percent, result_code, result_msg, created_at)
		SELECT r.product_id, r.device_name, r.type, r.version, r.state, r.percent, r.result_code, r.result_msg, r.created_at
		FROM r JOIN upd ON upd.ord = r.ord
		ORDER BY r.ord`,
		pids, names, types, versions, states, percents, codes, msgs, ats)
	if err != nil {
		return fmt.Errorf("record reports: %w", interpretError(err, "report"))
	}
	return nil
}

func (s *Store) SettingEnsure(ctx context.Context, key, value string) (string, error) {
	if _, err := s.pool.Exec(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, key, value); err != nil {
		return "", fmt.Errorf("ensure setting %s: %w", key, err)
	}
	var v string
	if err := s.pool.QueryRow(ctx, `SELECT value FROM settings WHERE key = $1`, key).Scan(&v); err != nil {
		return "", fmt.Errorf("read setting %s: %w", key, err)
	}
	return v, nil
}

func (s *Store) NodeHeartbeat(ctx context.Context, node string, at, staleBefore time.Time) (int, error) {
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO nodes (name, seen_at) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET seen_at = $2`, node, at.UTC()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM nodes WHERE seen_at < $1`, staleBefore.UTC()); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE devices SET online = false WHERE online AND node <> '' AND node NOT IN (SELECT name FROM nodes)`)
		n = tag.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("node heartbeat: %w", err)
	}
	return int(n), nil
}
