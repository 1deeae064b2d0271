package postgres_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/postgres"
	"github.com/otad/otad/internal/store/testdb"
)

// BenchmarkJobExecutionClaim measures one claim of a running job over
// BENCH_EXECUTIONS executions (default 10,000), BENCH_ONLINE of whose
// devices (default 100) are online on the claiming node: the pace counted
// and the due executions selected, none of them taken (Claim skips them),
// so every iteration sees the same rows. And the job's counts, and a page
// of its executions filtered by state from deep inside.
func BenchmarkJobExecutionClaim(b *testing.B) {
	n, online := envInt(b, "BENCH_EXECUTIONS", 10000), envInt(b, "BENCH_ONLINE", 100)
	url := testdb.PostgresURL(b)
	ctx := context.Background()
	s, err := postgres.Open(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	p := &ota.Product{ID: "BENCH00001", Name: "bench"}
	if err := s.ProductCreate(ctx, p); err != nil {
		b.Fatal(err)
	}
	if err := s.FirmwareCreate(ctx, &ota.Firmware{ProductID: p.ID, Version: "2.0.0", Size: 1, BlobKey: "k"}); err != nil {
		b.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	// Synthetic devices, the first online ones ready on node n1.
	if _, err := conn.Exec(ctx, `INSERT INTO devices (product_id, name, secret, version, online, ready, node, created_at)
		SELECT $1, 'dev' || lpad(i::text, 7, '0'), 'secret', '1.0.0', i < $3, i < $3, CASE WHEN i < $3 THEN 'n1' ELSE '' END, now()
		FROM generate_series(0, $2 - 1) AS i`, p.ID, n, online); err != nil {
		b.Fatal(err)
	}
	j := &ota.Job{ID: ota.NewJobID(), ProductID: p.ID, FirmwareVersion: "2.0.0", Status: ota.JobRunning, Targets: ota.JobTargets{All: true},
		TimeoutSeconds: 60, MaxRetries: 2, RetryBackoffSeconds: 5, CreatedAt: ota.Now()}
	t0 := time.Now()
	if err := s.JobCreate(ctx, ota.JobCreateParams{Job: j, Initial: func(v string) ota.JobExecution { return ota.NewExecution(j, v, j.CreatedAt) }}); err != nil {
		b.Fatal(err)
	}
	b.Logf("job over %d devices created in %v", n, time.Since(t0))
	claim := func() {
		now := ota.Now()
		_, err := s.JobExecutionClaim(ctx, ota.JobExecutionClaimParams{JobID: j.ID, Node: "n1", At: now, Since: now.Add(-time.Minute),
			Limit: func(ota.JobPace) int { return 500 },
			Claim: func(x *ota.JobExecution) (*ota.JobExecution, bool) { return x, false }})
		if err != nil {
			b.Fatal(err)
		}
	}
	// A job's first claims come before autovacuum has counted its new
	// executions (and, on a new fleet, its devices): a plan from those
	// statistics must not be much slower.
	t0 = time.Now()
	claim()
	b.Logf("a claim before ANALYZE took %v", time.Since(t0))
	if _, err := conn.Exec(ctx, `ANALYZE`); err != nil {
		b.Fatal(err)
	}
	b.Run("claim", func(b *testing.B) {
		for b.Loop() {
			claim()
		}
	})
	b.Run("counts", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.JobCounts(ctx, j.ID); err != nil {
				b.Fatal(err)
			}
		}
	})
	// A dispatch pass as the engine makes it: every due execution of the
	// online devices claimed, 500 a claim, each claim going on from the
	// previous one; then all of them queued again, untimed.
	b.Run("pass", func(b *testing.B) {
		for b.Loop() {
			after, total := "", 0
			for {
				now := ota.Now()
				xs, err := s.JobExecutionClaim(ctx, ota.JobExecutionClaimParams{JobID: j.ID, Node: "n1", After: after, At: now, Since: now.Add(-time.Minute),
					Limit: func(ota.JobPace) int { return 500 },
					Claim: func(x *ota.JobExecution) (*ota.JobExecution, bool) {
						st := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventClaim, Deadline: now.Add(time.Minute)}, now)
						return &st.Exec, st.Changed
					}})
				if err != nil {
					b.Fatal(err)
				}
				total += len(xs)
				if len(xs) < 500 {
					break
				}
				after = xs[len(xs)-1].DeviceName
			}
			if total != min(n, online) {
				b.Fatalf("a pass claimed %d, want %d", total, min(n, online))
			}
			b.StopTimer()
			if _, err := conn.Exec(ctx, `UPDATE job_executions SET state = 'queued', attempts = 0, notified_at = NULL, deadline_at = NULL WHERE job_id = $1`, j.ID); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	after := fmt.Sprintf("dev%07d", n*9/10)
	b.Run("page_state", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.JobExecutionList(ctx, ota.JobExecutionListParams{JobID: j.ID, State: ota.ExecNotified, After: after, Limit: 100}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func envInt(b *testing.B, key string, def int) int {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 2000000 {
		b.Fatalf("%s=%q: want a number from 1 to 2000000", key, v)
	}
	return n
}
