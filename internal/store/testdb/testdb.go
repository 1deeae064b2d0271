// Package testdb opens fresh, migrated stores for tests: an SQLite file in a
// temp dir, and a throwaway database on the PostgreSQL server named by
// OTAD_TEST_POSTGRES_URL. Only tests import it.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/postgres"
	"github.com/otad/otad/internal/store/sqlite"
)

// RequireServices reports whether the environment demands that every
// external service be present (CI sets OTAD_TEST_REQUIRE_SERVICES=1).
func RequireServices() bool { return os.Getenv("OTAD_TEST_REQUIRE_SERVICES") != "" }

// SkipOrFail skips the test because a service is missing, or fails it when
// services are required.
func SkipOrFail(t testing.TB, why string) {
	t.Helper()
	if RequireServices() {
		t.Fatalf("%s, and OTAD_TEST_REQUIRE_SERVICES is set", why)
	}
	t.Skip(why)
}

// Engines lists the store engines for table-driven tests.
var Engines = []string{"sqlite", "postgres"}

// Open returns a fresh, migrated store of the named engine, closed when
// the test ends.
func Open(t testing.TB, engine string) ota.Store {
	t.Helper()
	switch engine {
	case "sqlite":
		return SQLite(t)
	case "postgres":
		return Postgres(t)
	}
	t.Fatalf("unknown engine %q", engine)
	return nil
}

// SQLite returns a fresh, migrated SQLite store in a temp dir.
func SQLite(t testing.TB) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "otad.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// PostgresURL creates an empty database on the test server and returns its
// URL; the database is dropped when the test ends.
func PostgresURL(t testing.TB) string {
	t.Helper()
	admin := os.Getenv("OTAD_TEST_POSTGRES_URL")
	if admin == "" {
		SkipOrFail(t, "OTAD_TEST_POSTGRES_URL is not set")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("connect to test postgres: %v", err)
	}
	defer conn.Close(ctx)
	b := make([]byte, 6)
	rand.Read(b)
	name := "otad_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), admin)
		if err != nil {
			t.Errorf("drop test database: %v", err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop test database: %v", err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// Postgres returns a fresh, migrated store on its own throwaway database.
func Postgres(t testing.TB) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}
