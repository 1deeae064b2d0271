// Package sqltext builds the fixed pieces of SQL text that both store
// drivers share. Its input is the program's own constants, never a caller's.
package sqltext

import "strings"

// Strings returns vs as a SQL list of string literals: ('a', 'b').
func Strings(vs []string) string { return "('" + strings.Join(vs, "', '") + "')" }

// Qualify prefixes every column of a comma-separated column list, as in
// "x." for a table aliased x.
func Qualify(prefix, columns string) string {
	cols := strings.Split(columns, ",")
	for i, c := range cols {
		cols[i] = prefix + strings.TrimSpace(c)
	}
	return strings.Join(cols, ", ")
}

// List is the stored form of a list of names without commas (a webhook's
// event types): comma-separated, empty for none.
func List(vs []string) string { return strings.Join(vs, ",") }

// SplitList reads what List stored.
func SplitList(s string) []string {
	if s == "" {
		return []string{}
	}
	return strings.Split(s, ",")
}
