// Package postgres implements ota.Store on PostgreSQL through pgx v5.
// Several otad replicas may share one database: migrations take an advisory
// lock, and state changes are compare-and-set.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/queue"
	"github.com/otad/otad/migrations"
)

// migrationLockID is the advisory lock key held while migrating ("otad" in ASCII).
const migrationLockID = 0x6f746164

// Store is an ota.Store on PostgreSQL.
type Store struct {
	pool *pgxpool.Pool
	seq  *sequencer
}

var _ ota.Store = (*Store)(nil)

// DefaultMaxConns is the most connections a store opens when its URL does
// not say (pool_max_conns).
const DefaultMaxConns = 16

// Open connects to the database at url. It does not migrate; call Migrate.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if !strings.Contains(url, "pool_max_conns") {
		// pgx's default, the number of CPUs but at least 4, leaves a
		// device's login waiting behind the report and presence writers'
		// transactions when a fleet connects at once.
		cfg.MaxConns = DefaultMaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	return &Store{pool: pool, seq: newSequencer(pool)}, nil
}

// Close releases every connection.
func (s *Store) Close() error {
	s.seq.stop()
	s.pool.Close()
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return &ota.Error{Code: ota.EUNAVAILABLE, Message: "database unreachable"}
	}
	return nil
}

// Migrate applies every embedded migration not yet applied. A session-level
// advisory lock makes replicas that start together migrate one at a time.
func (s *Store) Migrate(ctx context.Context) (applied []string, err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: acquire connection: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLockID); err != nil {
		return nil, fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLockID)

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)`); err != nil {
		return nil, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	files, err := migrationFiles(migrations.Postgres, "postgres")
	if err != nil {
		return nil, err
	}
	for _, m := range files {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`, m.version).Scan(&exists); err != nil {
			return applied, fmt.Errorf("migrate: check %s: %w", m.name, err)
		}
		if exists {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`, m.version, m.name, time.Now().UTC())
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("migrate: apply %s: %w", m.name, err)
		}
		applied = append(applied, m.name)
	}
	// River's schema (the webhook delivery queue), under the same lock:
	// rivermigrate takes none of its own.
	river, err := queue.Migrate(ctx, s.QueueDriver())
	return append(applied, river...), err
}

// QueueDriver is River's driver on this store's pool: webhook delivery
// queues its jobs in the same database.
func (s *Store) QueueDriver() riverdriver.Driver[pgx.Tx] { return riverpgxv5.New(s.pool) }

type migration struct {
	version int
	name    string
	sql     string
}

func migrationFiles(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var out []migration
	for _, e := range entries {
		var v int
		if _, err := fmt.Sscanf(e.Name(), "%04d_", &v); err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("migration %q: name must be NNNN_title.sql", e.Name())
		}
		b, err := fs.ReadFile(fsys, dir+"/"+e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

// interpretError turns driver errors into ota errors: no rows is ENOTFOUND,
// a unique violation ECONFLICT, a foreign-key violation ENOTFOUND of the
// referenced row. what names the thing for the message.
func interpretError(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return ota.Errorf(ota.ENOTFOUND, "%s not found", what)
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "23505": // unique_violation
			return ota.Errorf(ota.ECONFLICT, "%s already exists", what)
		case "23503": // foreign_key_violation
			return ota.Errorf(ota.ENOTFOUND, "%s refers to something that does not exist", what)
		case "40001", "40P01": // serialization_failure, deadlock_detected
			return ota.Errorf(ota.ECONFLICT, "%s changed concurrently; try again", what)
		case "57P01", "57P02", "57P03": // admin_shutdown, crash_shutdown, cannot_connect_now: the server cut this connection
			return &ota.Error{Code: ota.EUNAVAILABLE, Message: "the database is unavailable; try again shortly"}
		case "22021", "22P05": // invalid byte sequence / untranslatable character (NUL)
			return ota.Errorf(ota.EINVALID, "%s contains characters that cannot be stored", what)
		}
	}
	return err
}

// execer is a pool or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// inTx runs fn in a transaction with opts, committing when it returns nil.
// A serialization failure or deadlock is ECONFLICT.
func (s *Store) inTx(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	err := pgx.BeginTxFunc(ctx, s.pool, opts, fn)
	if err == nil {
		s.seq.kick() // the transaction may have appended events
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01") {
		return interpretError(err, "transaction")
	}
	return err
}

func utc(t time.Time) time.Time { return t.UTC() }

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
