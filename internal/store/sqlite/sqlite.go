// Package sqlite implements ota.Store on an embedded SQLite file through
// modernc.org/sqlite (pure Go, no cgo): otad's zero-setup default.
//
// The file runs in WAL mode with foreign keys on and a busy timeout. All
// writes go through one connection, so writers queue in Go instead of
// failing with SQLITE_BUSY; reads use a separate pool.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/queue"
	"github.com/otad/otad/migrations"
)

// Store is an ota.Store on SQLite.
type Store struct {
	write *sql.DB // one connection: SQLite has one writer at a time
	read  *sql.DB
	bus   *ota.LocalBus
}

var _ ota.Store = (*Store)(nil)

// Open opens (creating if needed) the database file at path. It does not
// migrate; call Migrate.
func Open(ctx context.Context, path string) (*Store, error) {
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "foreign_keys(1)", "busy_timeout(10000)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode()
	write, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	write.SetMaxOpenConns(1)
	write.SetConnMaxLifetime(0)
	write.SetConnMaxIdleTime(0)
	if err := write.PingContext(ctx); err != nil {
		write.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	read, err := sql.Open("sqlite", dsn)
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	read.SetMaxOpenConns(4)
	return &Store{write: write, read: read, bus: ota.NewLocalBus()}, nil
}

// Close closes the database, checkpointing the WAL.
func (s *Store) Close() error {
	return errors.Join(s.read.Close(), s.write.Close())
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.read.PingContext(ctx); err != nil {
		return &ota.Error{Code: ota.EUNAVAILABLE, Message: "database unreachable"}
	}
	return nil
}

// Migrate applies every embedded migration not yet applied.
func (s *Store) Migrate(ctx context.Context) (applied []string, err error) {
	if _, err := s.write.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied_at text NOT NULL)`); err != nil {
		return nil, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	entries, err := fs.ReadDir(migrations.SQLite, "sqlite")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	for _, e := range entries {
		var v int
		if _, err := fmt.Sscanf(e.Name(), "%04d_", &v); err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return applied, fmt.Errorf("migration %q: name must be NNNN_title.sql", e.Name())
		}
		b, err := fs.ReadFile(migrations.SQLite, "sqlite/"+e.Name())
		if err != nil {
			return applied, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		done, err := s.migrateOne(ctx, v, e.Name(), string(b))
		if err != nil {
			return applied, fmt.Errorf("migrate: apply %s: %w", e.Name(), err)
		}
		if done {
			applied = append(applied, e.Name())
		}
	}
	// River's schema (the webhook delivery queue), on the writer.
	river, err := queue.Migrate(ctx, s.QueueDriver())
	return append(applied, river...), err
}

// QueueDriver is River's driver on this store's one writer connection,
// as River's SQLite driver asks (one connection: no SQLITE_BUSY between
// River's work and otad's): webhook delivery queues its jobs in the same
// file.
func (s *Store) QueueDriver() riverdriver.Driver[*sql.Tx] { return riversqlite.New(s.write) }

func (s *Store) migrateOne(ctx context.Context, version int, name, script string) (bool, error) {
	tx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
		return false, err
	}
	if n > 0 {
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, script); err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
		version, name, fmtTime(ota.Now())); err != nil {
		return false, err
	}
	return true, tx.Commit()
}

// interpretError turns driver errors into ota errors: no rows is ENOTFOUND,
// a unique violation ECONFLICT, a foreign-key violation ENOTFOUND of the
// referenced row. what names the thing for the message.
func interpretError(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return ota.Errorf(ota.ENOTFOUND, "%s not found", what)
	}
	var sqErr *sqlite.Error
	if errors.As(err, &sqErr) {
		switch sqErr.Code() {
		case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			return ota.Errorf(ota.ECONFLICT, "%s already exists", what)
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
			return ota.Errorf(ota.ENOTFOUND, "%s refers to something that does not exist", what)
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return &ota.Error{Code: ota.EUNAVAILABLE, Message: "database busy"}
		}
	}
	return err
}

// timeLayout keeps times sortable as text: fixed width, UTC, microseconds.
const timeLayout = "2006-01-02T15:04:05.000000Z"

func fmtTime(t time.Time) string { return t.UTC().Format(timeLayout) }

func fmtTimePtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return fmtTime(*t)
}

// sqlTime scans a text time column into a time.Time.
type sqlTime struct{ t *time.Time }

func (s sqlTime) Scan(v any) error {
	str, ok := asString(v)
	if !ok {
		return fmt.Errorf("scan time: unexpected %T", v)
	}
	t, err := time.Parse(timeLayout, str)
	if err != nil {
		return fmt.Errorf("scan time: %w", err)
	}
	*s.t = t
	return nil
}

// sqlTimePtr scans a nullable text time column into a *time.Time.
type sqlTimePtr struct{ t **time.Time }

func (s sqlTimePtr) Scan(v any) error {
	if v == nil {
		*s.t = nil
		return nil
	}
	var t time.Time
	if err := (sqlTime{&t}).Scan(v); err != nil {
		return err
	}
	*s.t = &t
	return nil
}

func asString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case []byte:
		return string(x), true
	}
	return "", false
}

// Bus returns the signal bus of this single-node store: SQLite is one
// process's, so signals never leave it.
func (s *Store) Bus(*slog.Logger) ota.Bus { return s.bus }
