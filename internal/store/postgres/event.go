package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/ota"
)

// appendEvents adds evs to the event log in tx: to event_outbox, which
// takes no lock, so that transactions appending events do not wait for
// each other's commits. The sequencer (sequencer.go) numbers them once tx
// has committed; inTx wakes it.
func appendEvents(ctx context.Context, tx pgx.Tx, evs ...ota.Event) error {
	if len(evs) == 0 {
		return nil
	}
	n := len(evs)
	types, pids, jobs, devices, data := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	ats := make([]time.Time, n)
	for i, e := range evs {
		types[i], pids[i], jobs[i], devices[i], data[i], ats[i] = e.Type, e.ProductID, e.JobID, e.DeviceName, string(e.Data), e.CreatedAt.UTC()
	}
	// WITH ORDINALITY and ORDER BY keep the events' order in the ids.
	_, err := tx.Exec(ctx, `INSERT INTO event_outbox (type, product_id, job_id, device_name, data, created_at)
		SELECT e.type, e.product_id, e.job_id, e.device_name, e.data, e.created_at
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
			WITH ORDINALITY AS e(type, product_id, job_id, device_name, data, created_at, ord)
		ORDER BY e.ord`,
		types, pids, jobs, devices, data, ats)
	if err != nil {
		return fmt.Errorf("append events: %w", interpretError(err, "event"))
	}
	return nil
}

func (s *Store) EventList(ctx context.Context, p ota.EventListParams) ([]*ota.Event, error) {
	if err := s.seq.flush(ctx); err != nil {
		return nil, err
	}
	where := []string{"seq > $1"}
	args := []any{p.After}
	arg := func(v any) string { args = append(args, v); return fmt.Sprintf("$%d", len(args)) }
	for _, f := range []struct{ col, v string }{{"product_id", p.ProductID}, {"job_id", p.JobID}, {"device_name", p.DeviceName}} {
		if f.v != "" {
			where = append(where, f.col+" = "+arg(f.v))
		}
	}
	if len(p.Types) > 0 {
		var or []string
		for _, t := range p.Types {
			if prefix, ok := strings.CutSuffix(t, "*"); ok {
				or = append(or, "starts_with(type, "+arg(prefix)+")")
			} else {
				or = append(or, "type = "+arg(t))
			}
		}
		where = append(where, "("+strings.Join(or, " OR ")+")")
	}
	q := `SELECT seq, type, product_id, job_id, device_name, data, created_at FROM events WHERE ` + strings.Join(where, " AND ") +
		` ORDER BY seq LIMIT ` + arg(ota.PageLimit(p.Limit))
	rows, err := s.pool.Query(ctx, q, args...)
	return collect(rows, err, "events", func(row pgx.Row) (*ota.Event, error) {
		var e ota.Event
		var data string
		err := row.Scan(&e.Seq, &e.Type, &e.ProductID, &e.JobID, &e.DeviceName, &data, &e.CreatedAt)
		e.CreatedAt = utc(e.CreatedAt)
		if data != "" {
			e.Data = []byte(data)
		}
		return &e, err
	})
}

// pruneSQL deletes a batch of rows older than $1, about $2 of them, from
// each table that retention prunes. A batch is a range, up to the last
// key of the first $2 old rows, not a join with their keys: a join
// planned while a table was small (the generic plan of a cached
// statement) compares every row with every key once it is not (see
// sequenceSQL). Ties at a range's end may take a few rows more.
var pruneSQL = []string{
	`DELETE FROM events WHERE created_at < $1 AND seq <= (SELECT max(seq) FROM
		(SELECT seq FROM events WHERE created_at < $1 ORDER BY seq LIMIT $2) old)`,
	`DELETE FROM device_events WHERE created_at < $1 AND id <= (SELECT max(id) FROM
		(SELECT id FROM device_events WHERE created_at < $1 ORDER BY id LIMIT $2) old)`,
	`DELETE FROM audit_log WHERE created_at < $1 AND id <= (SELECT max(id) FROM
		(SELECT id FROM audit_log WHERE created_at < $1 ORDER BY id LIMIT $2) old)`,
	`DELETE FROM webhook_deliveries WHERE updated_at < $1 AND updated_at <= (SELECT max(updated_at) FROM
		(SELECT updated_at FROM webhook_deliveries WHERE updated_at < $1 ORDER BY updated_at LIMIT $2) old)`,
}

func (s *Store) EventsPrune(ctx context.Context, before time.Time, limit int) (int, error) {
	// Events still in the outbox are numbered first, so that they are
	// pruned as the others are.
	if err := s.seq.flush(ctx); err != nil {
		return 0, err
	}
	n := 0
	for _, q := range pruneSQL {
		tag, err := s.pool.Exec(ctx, q, before.UTC(), limit)
		if err != nil {
			return n, fmt.Errorf("prune events: %w", err)
		}
		n += int(tag.RowsAffected())
	}
	return n, nil
}

// executionEvents are the events of executions moving from froms[i] to xs[i].
func executionEvents(froms, xs []*ota.JobExecution) []ota.Event {
	var evs []ota.Event
	for i, x := range xs {
		if e, ok := ota.ExecutionEvent(froms[i], x); ok {
			evs = append(evs, e)
		}
	}
	return evs
}

func (s *Store) EventLastSeq(ctx context.Context) (int64, error) {
	if err := s.seq.flush(ctx); err != nil {
		return 0, err
	}
	var n int64
	// max(seq), not event_seq: an older replica may still be numbering
	// in its own transactions; max(seq) is what a reader can see, and
	// cheap on the primary key.
	if err := s.pool.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM events`).Scan(&n); err != nil {
		return 0, fmt.Errorf("last event: %w", err)
	}
	return n, nil
}

func (s *Store) Stats(ctx context.Context) (ota.Stats, error) {
	st := ota.Stats{JobsByStatus: map[string]int{}, ExecutionsByState: map[string]int{}}
	batch := &pgx.Batch{}
	batch.Queue(`SELECT status, count(*) FROM jobs GROUP BY status`)
	batch.Queue(`SELECT c.state, sum(c.n) FROM (SELECT job_id, state, n FROM job_counts UNION ALL SELECT job_id, state, n FROM job_count_deltas) c
		JOIN jobs j ON j.id = c.job_id
		WHERE j.status IN ('scheduled', 'running') OR j.status = 'canceled' AND j.completed_at IS NULL GROUP BY c.state HAVING sum(c.n) <> 0`)
	batch.Queue(`SELECT count(*), count(*) FILTER (WHERE online) FROM devices`)
	br := s.pool.SendBatch(ctx, batch)
	defer br.Close()
	for _, m := range []map[string]int{st.JobsByStatus, st.ExecutionsByState} {
		rows, err := br.Query()
		if err != nil {
			return st, fmt.Errorf("stats: %w", err)
		}
		var k string
		var n int
		if _, err := pgx.ForEachRow(rows, []any{&k, &n}, func() error { m[k] = n; return nil }); err != nil {
			return st, fmt.Errorf("stats: %w", err)
		}
	}
	if err := br.QueryRow().Scan(&st.Devices, &st.DevicesOnline); err != nil {
		return st, fmt.Errorf("stats: %w", err)
	}
	return st, nil
}

func (s *Store) PoolStats() ota.PoolStats {
	p := s.pool.Stat()
	return ota.PoolStats{InUse: int(p.AcquiredConns()), Idle: int(p.IdleConns()), Max: int(p.MaxConns())}
}
