package postgres_test

import (
	"context"
	"sync"
	"testing"

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
