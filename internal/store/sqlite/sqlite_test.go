package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/sqlite"
	"github.com/otad/otad/internal/store/storetest"
	"github.com/otad/otad/internal/store/testdb"
)

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) ota.Store { return testdb.SQLite(t) })
}

// TestReopen checks that data survives closing and reopening the file and
// that migrating twice is a no-op.
func TestReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "otad.db")
	ctx := context.Background()
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if applied, err := s.Migrate(ctx); err != nil || len(applied) == 0 {
		t.Fatalf("first migrate: %v %v", applied, err)
	}
	p := storetest.MustProduct(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if applied, err := s.Migrate(ctx); err != nil || len(applied) != 0 {
		t.Fatalf("second migrate: %v %v", applied, err)
	}
	if _, err := s.ProductGet(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
}
