package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/otad/otad/internal/ota"
)

type scanner interface{ Scan(dest ...any) error }

// collect scans every row with scan and closes rows.
func collect[T any](rows *sql.Rows, err error, what string, scan func(scanner) (T, error)) ([]T, error) {
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", what, err)
	}
	return out, nil
}

// execOne runs a statement that must touch exactly one row.
func (s *Store) execOne(ctx context.Context, what, q string, args ...any) error {
	res, err := s.write.ExecContext(ctx, q, args...)
	if err != nil {
		return interpretError(err, what)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ota.Errorf(ota.ENOTFOUND, "%s not found", what)
	}
	return nil
}

// inTx runs fn in a write transaction.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return interpretError(err, "transaction")
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	return interpretError(tx.Commit(), "transaction")
}

func scanProduct(row scanner) (*ota.Product, error) {
	var p ota.Product
	err := row.Scan(&p.ID, &p.Name, &p.Description, sqlTime{&p.CreatedAt})
	return &p, err
}

func (s *Store) ProductCreate(ctx context.Context, p *ota.Product) error {
	if p.CreatedAt.IsZero() {
		p.CreatedAt = ota.Now()
	}
	_, err := s.write.ExecContext(ctx, `INSERT INTO products (id, name, description, created_at) VALUES (?, ?, ?, ?)`,
		p.ID, p.Name, p.Description, fmtTime(p.CreatedAt))
	return interpretError(err, "product")
}

func (s *Store) ProductGet(ctx context.Context, id string) (*ota.Product, error) {
	p, err := scanProduct(s.read.QueryRowContext(ctx, `SELECT id, name, description, created_at FROM products WHERE id = ?`, id))
	if err != nil {
		return nil, interpretError(err, "product")
	}
	return p, nil
}

func (s *Store) ProductList(ctx context.Context, params ota.ProductListParams) ([]*ota.Product, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT id, name, description, created_at FROM products WHERE id > ? ORDER BY id LIMIT ?`,
		params.After, ota.PageLimit(params.Limit))
	return collect(rows, err, "products", scanProduct)
}

const deviceColumns = `product_id, name, secret, version, online, last_seen_at, disabled, node, ready,
	upgrade_version, upgrade_state, upgrade_percent, upgrade_result_code, upgrade_result_msg, upgrade_updated_at, created_at`

func scanDevice(row scanner) (*ota.Device, error) {
	var d ota.Device
	var uv, us, um sql.NullString
	var up, uc sql.NullInt64
	var ut *time.Time
	err := row.Scan(&d.ProductID, &d.Name, &d.Secret, &d.Version, &d.Online, sqlTimePtr{&d.LastSeenAt}, &d.Disabled, &d.Node, &d.Ready,
		&uv, &us, &up, &uc, &um, sqlTimePtr{&ut}, sqlTime{&d.CreatedAt})
	if err != nil {
		return nil, err
	}
	if us.Valid {
		d.Upgrade = &ota.UpgradeProgress{Version: uv.String, State: us.String, Percent: int(up.Int64),
			ResultCode: int(uc.Int64), ResultName: ota.ResultName(int(uc.Int64)), ResultMsg: um.String}
		if ut != nil {
			d.Upgrade.UpdatedAt = *ut
		}
	}
	return &d, nil
}

func (s *Store) DeviceCreate(ctx context.Context, ds ...*ota.Device) error {
	now := ota.Now()
	for _, d := range ds {
		if d.CreatedAt.IsZero() {
			d.CreatedAt = now
		}
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		ins, err := tx.PrepareContext(ctx, `INSERT INTO devices (product_id, name, secret, version, disabled, created_at)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`)
		if err != nil {
			return fmt.Errorf("prepare device insert: %w", err)
		}
		defer ins.Close()
		var taken []string
		for _, d := range ds {
			res, err := ins.ExecContext(ctx, d.ProductID, d.Name, d.Secret, d.Version, d.Disabled, fmtTime(d.CreatedAt))
			if err != nil {
				return interpretError(err, "device")
			}
			if n, _ := res.RowsAffected(); n == 0 && len(taken) < 100 {
				taken = append(taken, d.Name)
			}
		}
		if len(taken) > 0 {
			if len(ds) == 1 {
				taken = nil // one device: the plain message
			}
			return ota.DevicesTaken(taken)
		}
		return appendEvents(ctx, tx, ota.DeviceCreatedEvents(ds)...)
	})
}

func (s *Store) DeviceGet(ctx context.Context, productID, name string) (*ota.Device, error) {
	d, err := scanDevice(s.read.QueryRowContext(ctx, `SELECT `+deviceColumns+` FROM devices WHERE product_id = ? AND name = ?`, productID, name))
	if err != nil {
		return nil, interpretError(err, "device")
	}
	return d, nil
}

func (s *Store) DeviceList(ctx context.Context, params ota.DeviceListParams) ([]*ota.Device, error) {
	where := []string{"product_id = ?", "name > ?"}
	args := []any{params.ProductID, params.After}
	if params.Version != "" {
		where = append(where, "version = ?")
		args = append(args, params.Version)
	}
	if params.Online != nil {
		where = append(where, "online = ?")
		args = append(args, *params.Online)
	}
	args = append(args, ota.PageLimit(params.Limit))
	rows, err := s.read.QueryContext(ctx, `SELECT `+deviceColumns+` FROM devices WHERE `+strings.Join(where, " AND ")+` ORDER BY name LIMIT ?`, args...)
	return collect(rows, err, "devices", scanDevice)
}

func (s *Store) DeviceDelete(ctx context.Context, productID, name string, end func(*ota.JobExecution) (*ota.JobExecution, bool)) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE product_id = ? AND name = ?`, productID, name)
		if err != nil {
			return interpretError(err, "device")
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ota.Errorf(ota.ENOTFOUND, "device not found")
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+execColumns+` FROM job_executions WHERE product_id = ? AND device_name = ? AND state IN `+activeStates,
			productID, name)
		active, err := collect(rows, err, "active executions", scanExec)
		if err != nil {
			return err
		}
		for _, x := range active {
			if y, ok := end(x); ok {
				if err := execUpdate(ctx, tx, x, y); err != nil {
					return err
				}
			}
		}
		return appendEvents(ctx, tx, ota.DeviceChangeEvent(ota.LogDeviceDeleted, productID, name, ota.Now(), nil))
	})
}

func (s *Store) DeviceSetDisabled(ctx context.Context, productID, name string, disabled bool) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE devices SET disabled = ? WHERE product_id = ? AND name = ?`, disabled, productID, name)
		if err != nil {
			return interpretError(err, "device")
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ota.Errorf(ota.ENOTFOUND, "device not found")
		}
		typ := ota.LogDeviceEnabled
		if disabled {
			typ = ota.LogDeviceDisabled
		}
		return appendEvents(ctx, tx, ota.DeviceChangeEvent(typ, productID, name, ota.Now(), nil))
	})
}

func (s *Store) DevicePresence(ctx context.Context, p ota.DevicePresenceParams) error {
	errs, err := s.DevicePresenceBatch(ctx, []ota.DevicePresenceParams{p})
	if err != nil {
		return err
	}
	return errs[0]
}

func (s *Store) DevicePresenceBatch(ctx context.Context, ps []ota.DevicePresenceParams) ([]error, error) {
	errs := make([]error, len(ps))
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		clear(errs)
		for i, p := range ps {
			ok, err := presence(ctx, tx, p)
			if err != nil {
				return err
			}
			if !ok {
				errs[i] = ota.Errorf(ota.ENOTFOUND, "device not found")
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return errs, nil
}

// presence records one connect or disconnect; false when the device does
// not exist.
func presence(ctx context.Context, tx *sql.Tx, p ota.DevicePresenceParams) (bool, error) {
	typ := ota.EventDisconnected
	if p.Online {
		typ = ota.EventConnected
	}
	at := fmtTime(p.At)
	// A disconnect counts only from the node that holds the device: it
	// may have reconnected to another replica meanwhile. A connect makes
	// the device not ready until it reports its version in this
	// connection. Reports are stored at once and presence later, so a
	// report newer than this change may be stored already: it comes from a
	// later connection, which a disconnect does not end and a connect has
	// readied.
	res, err := tx.ExecContext(ctx, `UPDATE devices SET node = CASE WHEN ?3 THEN ?4 ELSE node END,
		online = ?3 OR online AND coalesce(last_seen_at > ?5, 0),
		ready = ready AND coalesce(last_seen_at > ?5, 0), last_seen_at = max(coalesce(last_seen_at, ?5), ?5)
		WHERE product_id = ?1 AND name = ?2 AND (?3 OR node = ?4)`, p.ProductID, p.DeviceName, p.Online, p.Node, at)
	if err != nil {
		return false, interpretError(err, "device")
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var exists int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM devices WHERE product_id = ? AND name = ?`, p.ProductID, p.DeviceName).Scan(&exists); err != nil {
			return false, interpretError(err, "device")
		}
		return exists > 0, nil
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO device_events (product_id, device_name, type, created_at) VALUES (?, ?, ?, ?)`,
		p.ProductID, p.DeviceName, typ, at)
	if err != nil {
		return false, interpretError(err, "device event")
	}
	return true, appendEvents(ctx, tx, ota.PresenceEvent(p))
}

func (s *Store) DeviceReportsApply(ctx context.Context, reports []ota.Report, apply func(context.Context, *ota.ReportBatch) error) error {
	if len(reports) == 0 {
		return nil
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		b := &ota.ReportBatch{Reports: reports, Devices: map[ota.DeviceKey]*ota.Device{}, Execs: map[ota.DeviceKey]*ota.JobExecution{},
			Record: make([]bool, len(reports))}
		read := map[ota.DeviceKey]ota.JobExecution{}
		for _, r := range reports {
			k := ota.DeviceKey{ProductID: r.ProductID, Name: r.DeviceName}
			if _, ok := b.Devices[k]; ok {
				continue
			}
			d, err := scanDevice(tx.QueryRowContext(ctx, `SELECT `+deviceColumns+` FROM devices WHERE product_id = ? AND name = ?`, k.ProductID, k.Name))
			if errors.Is(err, sql.ErrNoRows) {
				continue // deleted meanwhile: its reports are dropped
			}
			if err != nil {
				return fmt.Errorf("read reporting device: %w", interpretError(err, "device"))
			}
			b.Devices[k] = d
			x, err := scanExec(tx.QueryRowContext(ctx, `SELECT `+execColumns+` FROM job_executions WHERE product_id = ? AND device_name = ?
				ORDER BY (state IN `+activeStates+`) DESC, created_at DESC, job_id DESC LIMIT 1`, k.ProductID, k.Name))
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read reporting device's execution: %w", interpretError(err, "job execution"))
			}
			b.Execs[k], read[k] = x, *x
		}
		if err := apply(ctx, b); err != nil {
			return err
		}
		for i, r := range reports {
			if !b.Record[i] {
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO device_events (product_id, device_name, type, version, state, percent, result_code, result_msg, created_at)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				r.ProductID, r.DeviceName, r.Type, r.Version, r.State, r.Percent, r.ResultCode, r.ResultMsg, fmtTime(r.At)); err != nil {
				return fmt.Errorf("record report: %w", interpretError(err, "report"))
			}
		}
		for _, d := range b.Devices {
			if err := deviceWrite(ctx, tx, d); err != nil {
				return err
			}
		}
		for k, x := range b.Execs {
			if from := read[k]; *x != from {
				if err := execUpdate(ctx, tx, &from, x); err != nil {
					return err
				}
			}
		}
		return appendEvents(ctx, tx, ota.ReportEvents(b)...)
	})
}

// deviceWrite stores what reports change of a device.
func deviceWrite(ctx context.Context, tx *sql.Tx, d *ota.Device) error {
	var uv, us, um, ut any
	var up, uc any
	if u := d.Upgrade; u != nil {
		uv, us, up, uc, um, ut = u.Version, u.State, u.Percent, u.ResultCode, u.ResultMsg, fmtTime(u.UpdatedAt)
	}
	_, err := tx.ExecContext(ctx, `UPDATE devices SET version = ?3, online = ?4, node = ?5, last_seen_at = ?6,
		upgrade_version = ?7, upgrade_state = ?8, upgrade_percent = ?9, upgrade_result_code = ?10, upgrade_result_msg = ?11, upgrade_updated_at = ?12,
		ready = ?13
		WHERE product_id = ?1 AND name = ?2`,
		d.ProductID, d.Name, d.Version, d.Online, d.Node, fmtTimePtr(d.LastSeenAt), uv, us, up, uc, um, ut, d.Ready)
	if err != nil {
		return fmt.Errorf("write device: %w", interpretError(err, "device"))
	}
	return nil
}

func (s *Store) DeviceEventList(ctx context.Context, p ota.DeviceEventListParams) ([]*ota.DeviceEvent, error) {
	before := p.Before
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.read.QueryContext(ctx, `SELECT id, product_id, device_name, type, version, state, percent, result_code, result_msg, created_at
		FROM device_events WHERE product_id = ? AND device_name = ? AND id < ? ORDER BY id DESC LIMIT ?`,
		p.ProductID, p.DeviceName, before, ota.PageLimit(p.Limit))
	return collect(rows, err, "device events", func(row scanner) (*ota.DeviceEvent, error) {
		var e ota.DeviceEvent
		var pct, code sql.NullInt64
		err := row.Scan(&e.ID, &e.ProductID, &e.DeviceName, &e.Type, &e.Version, &e.State, &pct, &code, &e.ResultMsg, sqlTime{&e.CreatedAt})
		if pct.Valid {
			n := int(pct.Int64)
			e.Percent = &n
		}
		if code.Valid {
			n := int(code.Int64)
			e.ResultCode = &n
		}
		return &e, err
	})
}

const firmwareColumns = `product_id, version, size, md5, sha256, description, blob_key, created_at`

func scanFirmware(row scanner) (*ota.Firmware, error) {
	var f ota.Firmware
	err := row.Scan(&f.ProductID, &f.Version, &f.Size, &f.MD5, &f.SHA256, &f.Description, &f.BlobKey, sqlTime{&f.CreatedAt})
	return &f, err
}

func (s *Store) FirmwareCreate(ctx context.Context, f *ota.Firmware) error {
	if f.CreatedAt.IsZero() {
		f.CreatedAt = ota.Now()
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO firmware (`+firmwareColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			f.ProductID, f.Version, f.Size, f.MD5, f.SHA256, f.Description, f.BlobKey, fmtTime(f.CreatedAt))
		if err != nil {
			return interpretError(err, "firmware version")
		}
		return appendEvents(ctx, tx, ota.FirmwareEvent(ota.LogFirmwareUploaded, f, f.CreatedAt))
	})
}

func (s *Store) FirmwareGet(ctx context.Context, productID, version string) (*ota.Firmware, error) {
	f, err := scanFirmware(s.read.QueryRowContext(ctx, `SELECT `+firmwareColumns+` FROM firmware WHERE product_id = ? AND version = ?`, productID, version))
	if err != nil {
		return nil, interpretError(err, "firmware")
	}
	return f, nil
}

func (s *Store) FirmwareBlobKeys(ctx context.Context, keys []string) ([]string, error) {
	list, err := json.Marshal(keys)
	if err != nil {
		return nil, fmt.Errorf("list firmware blob keys: %w", err)
	}
	rows, err := s.read.QueryContext(ctx, `SELECT blob_key FROM firmware WHERE blob_key IN (SELECT value FROM json_each(?))`, string(list))
	found, err := collect(rows, err, "firmware blob keys", func(row scanner) (k string, err error) { return k, row.Scan(&k) })
	return found, err
}

func (s *Store) FirmwareList(ctx context.Context, p ota.FirmwareListParams) ([]*ota.Firmware, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT `+firmwareColumns+` FROM firmware WHERE product_id = ? AND version > ? ORDER BY version LIMIT ?`,
		p.ProductID, p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "firmware", scanFirmware)
}

func (s *Store) FirmwareDelete(ctx context.Context, productID, version string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var active int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM jobs WHERE product_id = ?1 AND firmware_version = ?2 AND status IN (?3, ?4)`,
			productID, version, ota.JobScheduled, ota.JobRunning).Scan(&active); err != nil {
			return fmt.Errorf("delete firmware: %w", err)
		}
		if active > 0 {
			return ota.Errorf(ota.ECONFLICT, "firmware %s is used by an active job", version)
		}
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM job_executions x JOIN jobs j ON j.id = x.job_id
			WHERE j.product_id = ?1 AND j.firmware_version = ?2 AND x.state IN `+activeStates, productID, version).Scan(&active); err != nil {
			return fmt.Errorf("delete firmware: %w", err)
		}
		if active > 0 {
			return ota.Errorf(ota.ECONFLICT, "firmware %s is still being installed by %d devices", version, active)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM firmware WHERE product_id = ? AND version = ?`, productID, version)
		if err != nil {
			return interpretError(err, "firmware")
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ota.Errorf(ota.ENOTFOUND, "firmware not found")
		}
		return appendEvents(ctx, tx, ota.FirmwareEvent(ota.LogFirmwareDeleted, &ota.Firmware{ProductID: productID, Version: version}, ota.Now()))
	})
}

func (s *Store) SettingEnsure(ctx context.Context, key, value string) (string, error) {
	var v string
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`, key, value); err != nil {
			return interpretError(err, "setting")
		}
		return tx.QueryRowContext(ctx, `SELECT value FROM settings WHERE key = ?`, key).Scan(&v)
	})
	if err != nil {
		return "", fmt.Errorf("ensure setting %s: %w", key, err)
	}
	return v, nil
}

func (s *Store) NodeHeartbeat(ctx context.Context, node string, at, staleBefore time.Time) (int, error) {
	var n int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO nodes (name, seen_at) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET seen_at = ?2`, node, fmtTime(at)); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE seen_at < ?`, fmtTime(staleBefore)); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE devices SET online = 0 WHERE online AND node <> '' AND node NOT IN (SELECT name FROM nodes)`)
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("node heartbeat: %w", interpretError(err, "node"))
	}
	return int(n), nil
}
