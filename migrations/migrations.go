// Package migrations embeds the numbered schema migrations of both store
// engines. Files are named NNNN_title.sql; the same number means the same
// change in both engines.
package migrations

import "embed"

// Postgres holds the PostgreSQL migrations under postgres/.
//
//go:embed postgres/*.sql
var Postgres embed.FS

// SQLite holds the SQLite migrations under sqlite/.
//
//go:embed sqlite/*.sql
var SQLite embed.FS
