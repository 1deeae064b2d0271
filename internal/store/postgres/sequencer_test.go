package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/otad/otad/internal/store/postgres"
	"github.com/otad/otad/internal/store/testdb"
)

// TestBatchPlans plans the statements that move or delete rows in batches
// as pgx's cached statements come to be planned: generically, made while
// their tables are empty. Each must scan its table, not join it with the
// batch's keys: a join planned for an empty outbox compared every row with
// every id once a cancellation had put a million events there, for
// minutes, holding event_seq's lock. And the sequencer's statement must
// move the first events in id order, numbered from its base.
func TestBatchPlans(t *testing.T) {
	url := testdb.PostgresURL(t)
	s := openStore(t, url)
	if _, err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, url)
	ctx := t.Context()
	stmts := map[string]string{"sequencer": `PREPARE b (bigint, integer) AS ` + postgres.SequenceSQL}
	for i, q := range postgres.PruneSQL {
		stmts[fmt.Sprintf("prune %d", i)] = `PREPARE b (timestamptz, integer) AS ` + q
	}
	for _, q := range []string{
		`TRUNCATE event_outbox, events, device_events, audit_log, webhook_deliveries`,
		`VACUUM ANALYZE event_outbox, events, device_events, audit_log, webhook_deliveries`,
		`SET plan_cache_mode = force_generic_plan`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for name, prepare := range stmts {
		if _, err := conn.Exec(ctx, prepare); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		args := "(now(), 10000)"
		if name == "sequencer" {
			args = "(0, 10000)"
		}
		var plan string
		if err := conn.QueryRow(ctx, `EXPLAIN (FORMAT JSON) EXECUTE b `+args).Scan(&plan); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, join := range []string{`"Nested Loop"`, `"Hash Join"`, `"Merge Join"`} {
			if strings.Contains(plan, join) {
				t.Errorf("%s: the generic plan has a %s:\n%s", name, join, plan)
			}
		}
		if _, err := conn.Exec(ctx, `DEALLOCATE b`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `PREPARE seq (bigint, integer) AS `+postgres.SequenceSQL); err != nil {
		t.Fatal(err)
	}

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `INSERT INTO event_outbox (type, device_name, created_at)
		SELECT 'test', 'd' || i, now() FROM generate_series(1, 3000) AS i`); err != nil {
		t.Fatal(err)
	}
	tag, err := tx.Exec(ctx, `EXECUTE seq (100, 1000)`)
	if err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() != 1000 {
		t.Fatalf("moved %d events, want 1000", tag.RowsAffected())
	}
	var left, first, last int64
	var firstDev, lastDev string
	if err := tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM event_outbox), min(seq), max(seq),
		(SELECT device_name FROM events ORDER BY seq LIMIT 1), (SELECT device_name FROM events ORDER BY seq DESC LIMIT 1)
		FROM events`).Scan(&left, &first, &last, &firstDev, &lastDev); err != nil {
		t.Fatal(err)
	}
	if left != 2000 || first != 101 || last != 1100 || firstDev != "d1" || lastDev != "d1000" {
		t.Fatalf("outbox left %d, events seq %d-%d (%s to %s); want 2000 left, seq 101-1100 (d1 to d1000)", left, first, last, firstDev, lastDev)
	}
}

// TestCanceledStatementStops: a statement whose context ends stops on the
// server, and so gives up its locks, instead of running on after its
// client has gone; its connection stays usable.
func TestCanceledStatementStops(t *testing.T) {
	url := testdb.PostgresURL(t)
	s := openStore(t, url)
	pool := postgres.PoolOf(s)
	const sleep = `SELECT pg_sleep(60) -- canceled by its context`
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := pool.Exec(ctx, sleep); err == nil {
		t.Fatal("a 60 s sleep returned within its 200 ms context")
	}
	conn := connect(t, url)
	deadline := time.Now().Add(busWait)
	for {
		var running int
		if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active' AND query = $1`, sleep).Scan(&running); err != nil {
			t.Fatal(err)
		}
		if running == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the canceled statement still runs on the server %v later", busWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := pool.Exec(t.Context(), `SELECT 1`); err != nil {
		t.Fatalf("the pool after a canceled statement: %v", err)
	}
}
