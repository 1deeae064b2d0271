package postgres

import "github.com/jackc/pgx/v5/pgxpool"

// For the tests of package postgres_test.

const SequenceSQL = sequenceSQL

var PruneSQL = pruneSQL

func PoolOf(s *Store) *pgxpool.Pool { return s.pool }
