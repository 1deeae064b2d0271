package main

import (
	"context"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/otad/otad/internal/store/testdb"
)

// A database outage is answered 503 with Retry-After, not 500, and the
// API answers again once the database is back.
func TestDatabaseOutage503(t *testing.T) {
	dbURL := testdb.PostgresURL(t)
	a := startApp(t, "postgres", map[string]string{"OTAD_DATABASE_URL": dbURL})
	a.do("POST", "/v1/products", map[string]string{"id": "OUTAGE0001", "name": "o"}).wantStatus(t, 201)

	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	admin, err := pgx.Connect(context.Background(), os.Getenv("OTAD_TEST_POSTGRES_URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	exec := func(q string) {
		t.Helper()
		if _, err := admin.Exec(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	// The outage: no new connections, and every open one cut.
	exec(`ALTER DATABASE ` + db + ` ALLOW_CONNECTIONS false`)
	t.Cleanup(func() { admin.Exec(context.Background(), `ALTER DATABASE `+db+` ALLOW_CONNECTIONS true`) })
	exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '` + db + `' AND pid <> pg_backend_pid()`)

	r := a.do("GET", "/v1/products", nil)
	r.wantProblem(t, 503, "unavailable")
	if r.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	exec(`ALTER DATABASE ` + db + ` ALLOW_CONNECTIONS true`)
	waitFor(t, "the API to answer again", func() bool { return a.do("GET", "/v1/products", nil).StatusCode == 200 })
}
