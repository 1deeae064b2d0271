package postgres

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/sqltext"
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
		return nil, fmt.Errorf("list %s: %w", what, interpretError(err, what))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (T, error) { return scan(row) })
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", what, interpretError(err, what))
	}
	return out, nil
}

const deviceColumns = `product_id, name, secret, version, online, last_seen_at, disabled, node, ready,
	upgrade_version, upgrade_state, upgrade_percent, upgrade_result_code, upgrade_result_msg, upgrade_updated_at, created_at`

func scanDevice(row pgx.Row) (*ota.Device, error) {
	var d ota.Device
	var uv, us, um *string
	var up, uc *int
	var ut *pgTime
	err := row.Scan(&d.ProductID, &d.Name, &d.Secret, &d.Version, &d.Online, &d.LastSeenAt, &d.Disabled, &d.Node, &d.Ready,
		&uv, &us, &up, &uc, &um, &ut, &d.CreatedAt)
	if err != nil {
		return nil, err
	}
	d.CreatedAt = utc(d.CreatedAt)
	d.LastSeenAt = utcPtr(d.LastSeenAt)
	if us != nil {
		d.Upgrade = &ota.UpgradeProgress{Version: deref(uv), State: *us, Percent: derefInt(up),
			ResultCode: derefInt(uc), ResultName: ota.ResultName(derefInt(uc)), ResultMsg: deref(um)}
		if ut != nil {
			d.Upgrade.UpdatedAt = utc(*ut)
		}
	}
	return &d, nil
}

func (s *Store) DeviceCreate(ctx context.Context, ds ...*ota.Device) error {
	now := ota.Now()
	pids, names := make([]string, len(ds)), make([]string, len(ds))
	for i, d := range ds {
		if d.CreatedAt.IsZero() {
			d.CreatedAt = now
		}
		pids[i], names[i] = d.ProductID, d.Name
	}
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if len(ds) == 1 {
			d := ds[0]
			_, err := tx.Exec(ctx, `INSERT INTO devices (product_id, name, secret, version, disabled, created_at)
				VALUES ($1, $2, $3, $4, $5, $6)`, d.ProductID, d.Name, d.Secret, d.Version, d.Disabled, d.CreatedAt)
			if err != nil {
				return interpretError(err, "device")
			}
		} else {
			// A batch: the names taken first (to name them), then COPY.
			rows, err := tx.Query(ctx, `SELECT d.name FROM devices d
				JOIN unnest($1::text[], $2::text[]) AS u(product_id, name) ON d.product_id = u.product_id AND d.name = u.name
				ORDER BY d.name LIMIT 100`, pids, names)
			taken, err := collect(rows, err, "devices taken", func(r pgx.Row) (string, error) {
				var n string
				return n, r.Scan(&n)
			})
			if err != nil {
				return err
			}
			if len(taken) > 0 {
				return ota.DevicesTaken(taken)
			}
			_, err = tx.CopyFrom(ctx, pgx.Identifier{"devices"}, []string{"product_id", "name", "secret", "version", "disabled", "created_at"},
				pgx.CopyFromSlice(len(ds), func(i int) ([]any, error) {
					d := ds[i]
					return []any{d.ProductID, d.Name, d.Secret, d.Version, d.Disabled, d.CreatedAt}, nil
				}))
			if err != nil {
				e := interpretError(err, "device")
				if ota.IsCode(e, ota.ECONFLICT) {
					return ota.DevicesTaken(nil) // taken since the check
				}
				return e
			}
		}
		return appendEvents(ctx, tx, ota.DeviceCreatedEvents(ds)...)
	})
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

func (s *Store) DeviceDelete(ctx context.Context, productID, name string, end func(*ota.JobExecution) (*ota.JobExecution, bool)) error {
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		// After a job being created over this device commits, so that its
		// execution is ended below, not left queued for a device gone.
		if err := lockTargets(ctx, tx, productID, false); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM devices WHERE product_id = $1 AND name = $2`, productID, name)
		if err != nil {
			return fmt.Errorf("delete device: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return ota.Errorf(ota.ENOTFOUND, "device not found")
		}
		// Its history has no foreign key (migration 0010): reports and
		// presence append to it only while holding the device's row, which
		// the delete above now holds until commit.
		if _, err := tx.Exec(ctx, `DELETE FROM device_events WHERE product_id = $1 AND device_name = $2`, productID, name); err != nil {
			return fmt.Errorf("delete device history: %w", err)
		}
		rows, err := tx.Query(ctx, `SELECT `+execColumns+` FROM job_executions WHERE product_id = $1 AND device_name = $2 AND state IN `+activeStates+` FOR UPDATE`,
			productID, name)
		active, err := collect(rows, err, "active executions", scanExec)
		if err != nil {
			return err
		}
		var froms, ended []*ota.JobExecution
		for _, x := range active {
			if y, ok := end(x); ok {
				froms, ended = append(froms, x), append(ended, y)
			}
		}
		if err := execUpdateAll(ctx, tx, ended); err != nil {
			return err
		}
		evs := append(executionEvents(froms, ended), ota.DeviceChangeEvent(ota.LogDeviceDeleted, productID, name, ota.Now(), nil))
		return appendEvents(ctx, tx, evs...)
	})
}

func (s *Store) DeviceSetDisabled(ctx context.Context, productID, name string, disabled bool) error {
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE devices SET disabled = $3 WHERE product_id = $1 AND name = $2`, productID, name, disabled)
		if err != nil {
			return fmt.Errorf("set device disabled: %w", err)
		}
		if tag.RowsAffected() == 0 {
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

// DevicePresenceBatch sends every change in one round trip, one statement
// each, in device order (each device's changes in the order given), the
// order in which report batches lock devices too.
func (s *Store) DevicePresenceBatch(ctx context.Context, ps []ota.DevicePresenceParams) ([]error, error) {
	order := make([]int, len(ps))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		x, y := ps[order[a]], ps[order[b]]
		return x.ProductID < y.ProductID || x.ProductID == y.ProductID && x.DeviceName < y.DeviceName
	})
	errs := make([]error, len(ps))
	err := s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		clear(errs)
		// A disconnect counts only from the node that holds the device: it
		// may have reconnected to another replica meanwhile. A connect
		// makes the device not ready until it reports its version in this
		// connection. Reports are stored at once and presence later, so a
		// report newer than this change may be stored already: it comes
		// from a later connection, which a disconnect does not end and a
		// connect has readied.
		batch := &pgx.Batch{}
		for _, i := range order {
			p := ps[i]
			typ := ota.EventDisconnected
			if p.Online {
				typ = ota.EventConnected
			}
			batch.Queue(`WITH u AS (UPDATE devices SET node = CASE WHEN $3 THEN $4 ELSE node END,
					online = $3 OR online AND COALESCE(last_seen_at > $5, false),
					ready = ready AND COALESCE(last_seen_at > $5, false), last_seen_at = GREATEST(last_seen_at, $5)
					WHERE product_id = $1 AND name = $2 AND ($3 OR node = $4) RETURNING product_id, name),
				h AS (INSERT INTO device_events (product_id, device_name, type, created_at) SELECT product_id, name, $6, $5 FROM u)
				SELECT EXISTS (SELECT 1 FROM u), EXISTS (SELECT 1 FROM devices WHERE product_id = $1 AND name = $2)`,
				p.ProductID, p.DeviceName, p.Online, p.Node, p.At.UTC(), typ)
		}
		br := tx.SendBatch(ctx, batch)
		var evs []ota.Event
		for _, i := range order {
			var changed, exists bool
			if err := br.QueryRow().Scan(&changed, &exists); err != nil {
				br.Close()
				return fmt.Errorf("device presence: %w", interpretError(err, "device"))
			}
			switch {
			case changed:
				evs = append(evs, ota.PresenceEvent(ps[i]))
			case !exists:
				errs[i] = ota.Errorf(ota.ENOTFOUND, "device not found")
			}
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("device presence: %w", interpretError(err, "device"))
		}
		return appendEvents(ctx, tx, evs...)
	})
	if err != nil {
		return nil, err
	}
	return errs, nil
}

func (s *Store) DeviceReportsApply(ctx context.Context, reports []ota.Report, apply func(context.Context, *ota.ReportBatch) error) error {
	if len(reports) == 0 {
		return nil
	}
	var keys [][2]string
	seen := map[ota.DeviceKey]bool{}
	for _, r := range reports {
		k := ota.DeviceKey{ProductID: r.ProductID, Name: r.DeviceName}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, [2]string{k.ProductID, k.Name})
		}
	}
	// Lock in one order, so that concurrent batches never deadlock.
	sort.Slice(keys, func(i, j int) bool {
		return keys[i][0] < keys[j][0] || keys[i][0] == keys[j][0] && keys[i][1] < keys[j][1]
	})
	pids, names := make([]string, len(keys)), make([]string, len(keys))
	for i, k := range keys {
		pids[i], names[i] = k[0], k[1]
	}
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		b := &ota.ReportBatch{Reports: reports, Devices: make(map[ota.DeviceKey]*ota.Device, len(keys)),
			Execs: make(map[ota.DeviceKey]*ota.JobExecution, len(keys)), Record: make([]bool, len(reports))}
		// The device rows are locked: reports of one device are applied one
		// batch at a time, whichever replica received them.
		batch := &pgx.Batch{}
		batch.Queue(`SELECT `+deviceColumns+` FROM devices d JOIN unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(product_id, name, ord)
			USING (product_id, name) ORDER BY k.ord FOR UPDATE OF d`, pids, names)
		batch.Queue(`SELECT `+sqltext.Qualify("x.", execColumns)+`
			FROM unnest($1::text[], $2::text[]) AS k(product_id, name) CROSS JOIN LATERAL `+currentExecution("k.product_id", "k.name")+` x`, pids, names)
		br := tx.SendBatch(ctx, batch)
		rows, err := br.Query()
		devices, err := collect(rows, err, "reporting devices", scanDevice)
		if err != nil {
			br.Close()
			return err
		}
		rows, err = br.Query()
		execs, err := collect(rows, err, "reporting devices' executions", scanExec)
		if err != nil {
			br.Close()
			return err
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("read reporting devices: %w", err)
		}
		for _, d := range devices {
			b.Devices[ota.DeviceKey{ProductID: d.ProductID, Name: d.Name}] = d
		}
		read := make(map[ota.DeviceKey]ota.JobExecution, len(execs))
		for _, x := range execs {
			k := ota.DeviceKey{ProductID: x.ProductID, Name: x.DeviceName}
			b.Execs[k], read[k] = x, *x
		}
		if err := apply(ctx, b); err != nil {
			return err
		}
		var froms, changed []*ota.JobExecution
		for k, x := range b.Execs {
			if from := read[k]; *x != from {
				froms, changed = append(froms, &from), append(changed, x)
			}
		}
		if err := devicesWrite(ctx, tx, b); err != nil {
			return err
		}
		if err := execUpdateAll(ctx, tx, changed); err != nil {
			return err
		}
		return appendEvents(ctx, tx, append(executionEvents(froms, changed), ota.ReportEvents(b)...)...)
	})
}

// devicesWrite stores what a batch changed of its devices and appends its
// recorded reports to their history, in two statements.
func devicesWrite(ctx context.Context, tx pgx.Tx, b *ota.ReportBatch) error {
	n := len(b.Devices)
	pids, names, versions, nodes := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
	online, ready, seen := make([]bool, 0, n), make([]bool, 0, n), make([]*time.Time, 0, n)
	uv, us, um := make([]*string, 0, n), make([]*string, 0, n), make([]*string, 0, n)
	up, uc := make([]*int32, 0, n), make([]*int32, 0, n)
	ut := make([]*time.Time, 0, n)
	for _, d := range b.Devices {
		pids, names, versions, nodes = append(pids, d.ProductID), append(names, d.Name), append(versions, d.Version), append(nodes, d.Node)
		online, ready, seen = append(online, d.Online), append(ready, d.Ready), append(seen, utcPtr(d.LastSeenAt))
		if u := d.Upgrade; u != nil {
			p, c, at := int32(u.Percent), int32(u.ResultCode), u.UpdatedAt.UTC()
			uv, us, um, up, uc, ut = append(uv, &u.Version), append(us, &u.State), append(um, &u.ResultMsg), append(up, &p), append(uc, &c), append(ut, &at)
		} else {
			uv, us, um, up, uc, ut = append(uv, nil), append(us, nil), append(um, nil), append(up, nil), append(uc, nil), append(ut, nil)
		}
	}
	batch := &pgx.Batch{}
	batch.Queue(`UPDATE devices d SET version = u.version, online = u.online, node = u.node, last_seen_at = u.last_seen_at,
			ready = u.ready, upgrade_version = u.uv, upgrade_state = u.us, upgrade_percent = u.up, upgrade_result_code = u.uc,
			upgrade_result_msg = u.um, upgrade_updated_at = u.ut
		FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::text[], $6::timestamptz[],
			$7::text[], $8::text[], $9::integer[], $10::integer[], $11::text[], $12::timestamptz[], $13::boolean[])
			AS u(product_id, name, version, online, node, last_seen_at, uv, us, up, uc, um, ut, ready)
		WHERE d.product_id = u.product_id AND d.name = u.name`,
		pids, names, versions, online, nodes, seen, uv, us, up, uc, um, ut, ready)
	var rp, rn, rt, rv, rs, rm []string
	var rpct, rcode []*int32
	var rat []time.Time
	for i, r := range b.Reports {
		if !b.Record[i] {
			continue
		}
		rp, rn, rt, rv, rs, rm = append(rp, r.ProductID), append(rn, r.DeviceName), append(rt, r.Type), append(rv, r.Version), append(rs, r.State), append(rm, r.ResultMsg)
		rpct, rcode, rat = append(rpct, int32p(r.Percent)), append(rcode, int32p(r.ResultCode)), append(rat, r.At.UTC())
	}
	if len(rp) > 0 {
		batch.Queue(`INSERT INTO device_events (product_id, device_name, type, version, state, percent, result_code, result_msg, created_at)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[], $7::integer[], $8::text[], $9::timestamptz[])`,
			rp, rn, rt, rv, rs, rpct, rcode, rm, rat)
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("record reports: %w", interpretError(err, "report"))
	}
	return nil
}

func int32p(n *int) *int32 {
	if n == nil {
		return nil
	}
	v := int32(*n)
	return &v
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
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO firmware (`+firmwareColumns+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			f.ProductID, f.Version, f.Size, f.MD5, f.SHA256, f.Description, f.BlobKey, f.CreatedAt)
		if err != nil {
			return interpretError(err, "firmware version")
		}
		return appendEvents(ctx, tx, ota.FirmwareEvent(ota.LogFirmwareUploaded, f, f.CreatedAt))
	})
}

func (s *Store) FirmwareGet(ctx context.Context, productID, version string) (*ota.Firmware, error) {
	f, err := scanFirmware(s.pool.QueryRow(ctx, `SELECT `+firmwareColumns+` FROM firmware WHERE product_id = $1 AND version = $2`, productID, version))
	if err != nil {
		return nil, interpretError(err, "firmware")
	}
	return f, nil
}

func (s *Store) FirmwareBlobKeys(ctx context.Context, keys []string) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT blob_key FROM firmware WHERE blob_key = ANY($1)`, keys)
	found, err := collect(rows, err, "firmware blob keys", func(row pgx.Row) (k string, err error) { return k, row.Scan(&k) })
	return found, err
}

func (s *Store) FirmwareList(ctx context.Context, p ota.FirmwareListParams) ([]*ota.Firmware, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+firmwareColumns+` FROM firmware WHERE product_id = $1 AND version > $2 ORDER BY version LIMIT $3`,
		p.ProductID, p.After, ota.PageLimit(p.Limit))
	return collect(rows, err, "firmware", scanFirmware)
}

func (s *Store) FirmwareDelete(ctx context.Context, productID, version string) error {
	return s.inTx(ctx, pgx.TxOptions{}, func(tx pgx.Tx) error {
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
		var installing int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM job_executions x JOIN jobs j ON j.id = x.job_id
			WHERE j.product_id = $1 AND j.firmware_version = $2 AND x.state IN `+activeStates, productID, version).Scan(&installing); err != nil {
			return fmt.Errorf("delete firmware: %w", err)
		}
		if installing > 0 {
			return ota.Errorf(ota.ECONFLICT, "firmware %s is still being installed by %d devices", version, installing)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM firmware WHERE product_id = $1 AND version = $2`, productID, version); err != nil {
			return interpretError(err, "firmware")
		}
		return appendEvents(ctx, tx, ota.FirmwareEvent(ota.LogFirmwareDeleted, &ota.Firmware{ProductID: productID, Version: version}, ota.Now()))
	})
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
