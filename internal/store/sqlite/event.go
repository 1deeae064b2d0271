package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/otad/otad/internal/ota"
)

// appendEvents adds evs to the event log inside tx. The one writer
// connection makes the sequence grow in commit order.
func appendEvents(ctx context.Context, tx *sql.Tx, evs ...ota.Event) error {
	for _, e := range evs {
		if _, err := tx.ExecContext(ctx, `INSERT INTO events (type, product_id, job_id, device_name, data, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
			e.Type, e.ProductID, e.JobID, e.DeviceName, string(e.Data), fmtTime(e.CreatedAt)); err != nil {
			return fmt.Errorf("append event: %w", interpretError(err, "event"))
		}
	}
	return nil
}

func (s *Store) EventList(ctx context.Context, p ota.EventListParams) ([]*ota.Event, error) {
	where := []string{"seq > ?"}
	args := []any{p.After}
	for _, f := range []struct{ col, v string }{{"product_id", p.ProductID}, {"job_id", p.JobID}, {"device_name", p.DeviceName}} {
		if f.v != "" {
			where = append(where, f.col+" = ?")
			args = append(args, f.v)
		}
	}
	if len(p.Types) > 0 {
		var or []string
		for _, t := range p.Types {
			if prefix, ok := strings.CutSuffix(t, "*"); ok {
				or = append(or, "substr(type, 1, ?) = ?")
				args = append(args, len(prefix), prefix)
			} else {
				or = append(or, "type = ?")
				args = append(args, t)
			}
		}
		where = append(where, "("+strings.Join(or, " OR ")+")")
	}
	args = append(args, ota.PageLimit(p.Limit))
	rows, err := s.read.QueryContext(ctx, `SELECT seq, type, product_id, job_id, device_name, data, created_at FROM events
		WHERE `+strings.Join(where, " AND ")+` ORDER BY seq LIMIT ?`, args...)
	return collect(rows, err, "events", func(row scanner) (*ota.Event, error) {
		var e ota.Event
		var data string
		err := row.Scan(&e.Seq, &e.Type, &e.ProductID, &e.JobID, &e.DeviceName, &data, sqlTime{&e.CreatedAt})
		if data != "" {
			e.Data = []byte(data)
		}
		return &e, err
	})
}

func (s *Store) EventsPrune(ctx context.Context, before time.Time, limit int) (int, error) {
	n := 0
	for _, table := range []string{"events", "device_events", "audit_log", "webhook_deliveries"} {
		// Each table's key, and the time it is pruned by.
		key, at := map[string]string{"events": "seq", "device_events": "id", "audit_log": "id", "webhook_deliveries": "rowid"}[table], "created_at"
		if table == "webhook_deliveries" {
			at = "updated_at"
		}
		res, err := s.write.ExecContext(ctx, `DELETE FROM `+table+` WHERE `+key+` IN (SELECT `+key+` FROM `+table+` WHERE `+at+` < ? ORDER BY `+key+` LIMIT ?)`,
			fmtTime(before), limit)
		if err != nil {
			return n, fmt.Errorf("prune %s: %w", table, interpretError(err, table))
		}
		m, _ := res.RowsAffected()
		n += int(m)
	}
	return n, nil
}

func (s *Store) EventLastSeq(ctx context.Context) (int64, error) {
	var n int64
	if err := s.read.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM events`).Scan(&n); err != nil {
		return 0, fmt.Errorf("last event: %w", interpretError(err, "event"))
	}
	return n, nil
}

func (s *Store) Stats(ctx context.Context) (ota.Stats, error) {
	st := ota.Stats{JobsByStatus: map[string]int{}, ExecutionsByState: map[string]int{}}
	for q, m := range map[string]map[string]int{
		`SELECT status, count(*) FROM jobs GROUP BY status`: st.JobsByStatus,
		`SELECT c.state, sum(c.n) FROM job_counts c JOIN jobs j ON j.id = c.job_id
			WHERE j.status IN ('scheduled', 'running') OR j.status = 'canceled' AND j.completed_at IS NULL GROUP BY c.state HAVING sum(c.n) <> 0`: st.ExecutionsByState,
	} {
		type pair struct {
			k string
			n int
		}
		rows, err := s.read.QueryContext(ctx, q)
		pairs, err := collect(rows, err, "stats", func(row scanner) (pair, error) {
			var p pair
			return p, row.Scan(&p.k, &p.n)
		})
		if err != nil {
			return st, err
		}
		for _, p := range pairs {
			m[p.k] = p.n
		}
	}
	err := s.read.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(online), 0) FROM devices`).Scan(&st.Devices, &st.DevicesOnline)
	if err != nil {
		return st, fmt.Errorf("stats: %w", err)
	}
	return st, nil
}

func (s *Store) PoolStats() ota.PoolStats {
	r, w := s.read.Stats(), s.write.Stats()
	return ota.PoolStats{InUse: r.InUse + w.InUse, Idle: r.Idle + w.Idle, Max: r.MaxOpenConnections + w.MaxOpenConnections}
}
