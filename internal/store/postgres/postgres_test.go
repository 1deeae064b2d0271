package postgres_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/postgres"
	"github.com/otad/otad/internal/store/storetest"
	"github.com/otad/otad/internal/store/testdb"
)

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) ota.Store { return testdb.Postgres(t) })
}

// TestMigrateConcurrently starts several "replicas" migrating one empty
// database at the same moment: the advisory lock lets exactly one apply
// each migration and the others see it applied.
func TestMigrateConcurrently(t *testing.T) {
	url := testdb.PostgresURL(t)
	const replicas = 5
	var wg sync.WaitGroup
	applied := make([][]string, replicas)
	errs := make([]error, replicas)
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := postgres.Open(context.Background(), url)
			if err != nil {
				errs[i] = err
				return
			}
			defer s.Close()
			applied[i], errs[i] = s.Migrate(context.Background())
		}()
	}
	wg.Wait()
	total := 0
	for i := range replicas {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		total += len(applied[i])
	}
	s, err := postgres.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	again, err := s.Migrate(context.Background())
	if err != nil || len(again) != 0 {
		t.Fatalf("second migrate applied %v, %v; want nothing", again, err)
	}
	if total == 0 {
		t.Fatal("no replica applied any migration")
	}
	for i := range replicas {
		for j := range replicas {
			if i != j && len(applied[i]) > 0 && len(applied[j]) > 0 {
				t.Fatalf("replicas %d and %d both applied migrations: %v, %v", i, j, applied[i], applied[j])
			}
		}
	}
}

// TestJobCreateRacesDeviceDelete deletes a device while a job over it is
// being created, after the job has read its targets and before it inserts
// their executions: the deletion waits for the job and then ends the
// device's execution, so the job is not left with one queued for a device
// that is gone.
func TestJobCreateRacesDeviceDelete(t *testing.T) {
	url := testdb.PostgresURL(t)
	s, err := postgres.Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	watch, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(context.Background())
	p := storetest.MustProduct(t, s)
	if err := s.FirmwareCreate(t.Context(), &ota.Firmware{ProductID: p.ID, Version: "2.0.0", Size: 1, BlobKey: "k"}); err != nil {
		t.Fatal(err)
	}
	storetest.MustDevice(t, s, p.ID, "d0")
	storetest.MustDevice(t, s, p.ID, "d1")
	j := &ota.Job{ID: ota.NewJobID(), ProductID: p.ID, FirmwareVersion: "2.0.0", Status: ota.JobRunning,
		Targets: ota.JobTargets{All: true}, TimeoutSeconds: 60, RollbackWindowSeconds: 600, CreatedAt: ota.Now()}
	end := func(x *ota.JobExecution) (*ota.JobExecution, bool) {
		st := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventDeviceDeleted}, ota.Now())
		return &st.Exec, st.Changed
	}
	deleted := make(chan error, 1)
	err = s.JobCreate(t.Context(), ota.JobCreateParams{Job: j,
		Initial: func(v string) ota.JobExecution { return ota.NewExecution(j, v, j.CreatedAt) },
		Phases: func(cs []ota.PhaseCandidate) []int {
			// The targets are read: delete d0 now, and go on once the
			// deletion has either finished or is waiting on a lock.
			go func() { deleted <- s.DeviceDelete(context.Background(), p.ID, "d0", end) }()
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				select {
				case err := <-deleted:
					deleted <- err
					return make([]int, len(cs))
				default:
				}
				var waiting int
				if err := watch.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
					WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
					t.Error(err)
					break
				}
				if waiting > 0 {
					break
				}
			}
			return make([]int, len(cs))
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	x, err := s.JobExecutionGet(t.Context(), j.ID, "d0")
	if err != nil {
		t.Fatal(err)
	}
	counts, err := s.JobCounts(t.Context(), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if x.State != ota.ExecCanceled || counts[ota.ExecQueued] != 1 || counts[ota.ExecCanceled] != 1 {
		t.Fatalf("the deleted device's execution = %s (%s), the job's counts %v; want it canceled, d1 queued", x.State, x.ResultMsg, counts)
	}
}
