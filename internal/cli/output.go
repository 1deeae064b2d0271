package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// obj is a JSON object of the API, numbers kept exact.
type obj map[string]any

func decodeObj(raw []byte) (obj, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var o obj
	if err := dec.Decode(&o); err != nil {
		return nil, fmt.Errorf("decoding the answer: %w", err)
	}
	return o, nil
}

// get follows a dotted path: get("upgrade.state").
func (o obj) get(path string) any {
	var v any = map[string]any(o)
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

// str is the value at path as a table shows it.
func (o obj) str(path string) string { return format(o.get(path)) }

// text is the value at path, "" when absent or empty.
func (o obj) text(path string) string {
	switch v := o.get(path).(type) {
	case nil:
		return ""
	case string:
		return v
	case []any:
		if len(v) == 0 {
			return ""
		}
		return format(v)
	default:
		return format(v)
	}
}

// int is the number at path, 0 when absent.
func (o obj) int(path string) int64 {
	if n, ok := o.get(path).(json.Number); ok {
		i, _ := n.Int64()
		return i
	}
	return 0
}

// time is the time at path as a table shows it.
func (o obj) time(path string) string {
	s, ok := o.get(path).(string)
	if !ok || s == "" {
		return "-"
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func (o obj) list(path string) []any {
	l, _ := o.get(path).([]any)
	return l
}

func format(v any) string {
	switch v := v.(type) {
	case nil:
		return "-"
	case string:
		if v == "" {
			return "-"
		}
		return v
	case bool:
		if v {
			return "yes"
		}
		return "no"
	case json.Number:
		return v.String()
	case []any:
		if len(v) == 0 {
			return "-"
		}
		parts := make([]string, len(v))
		for i, x := range v {
			parts[i] = format(x)
		}
		return strings.Join(parts, ",")
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// column is one column of a table.
type column struct {
	header string
	value  func(obj) string
}

func col(header, path string) column {
	return column{header, func(o obj) string { return o.str(path) }}
}

func timeCol(header, path string) column {
	return column{header, func(o obj) string { return o.time(path) }}
}

// printList writes items as a table of cols, or as one JSON array.
func (a *app) printList(items []json.RawMessage, cols []column) error {
	if a.output == "json" {
		return writeJSONArray(a.env.Stdout, items)
	}
	rows := make([][]string, 0, len(items))
	for _, raw := range items {
		o, err := decodeObj(raw)
		if err != nil {
			return err
		}
		row := make([]string, len(cols))
		for i, c := range cols {
			row[i] = c.value(o)
		}
		rows = append(rows, row)
	}
	headers := make([]string, len(cols))
	for i, c := range cols {
		headers[i] = c.header
	}
	return writeTable(a.env.Stdout, headers, rows)
}

// printObject writes one object: its JSON as the server sent it, or the
// table view shows.
func (a *app) printObject(raw json.RawMessage, view func(w io.Writer, o obj) error) error {
	if a.output == "json" {
		return writeJSONRaw(a.env.Stdout, raw)
	}
	o, err := decodeObj(raw)
	if err != nil {
		return err
	}
	return view(a.env.Stdout, o)
}

// fieldsView shows the fields at paths, one a line.
func fieldsView(paths ...string) func(io.Writer, obj) error {
	return func(w io.Writer, o obj) error {
		return writeFields(w, fieldPairs(o, paths...))
	}
}

func fieldPairs(o obj, paths ...string) [][2]string {
	pairs := make([][2]string, len(paths))
	for i, p := range paths {
		v := o.str(p)
		if strings.HasSuffix(p, "_at") || strings.HasSuffix(p, "_since") {
			v = o.time(p)
		}
		pairs[i] = [2]string{p, v}
	}
	return pairs
}

func writeTable(w io.Writer, headers []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(headers, "\t"))
	for _, r := range rows {
		for i := range r {
			r[i] = cell(r[i])
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// cell keeps a table cell on one line and of a readable width.
func cell(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 60 {
		s = string(r[:59]) + "…"
	}
	return s
}

func writeFields(w io.Writer, pairs [][2]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, p := range pairs {
		v := p[1]
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", p[0], strings.Join(strings.Fields(v), " "))
	}
	return tw.Flush()
}

func writeJSONRaw(w io.Writer, raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

func writeJSONArray(w io.Writer, items []json.RawMessage) error {
	if items == nil {
		items = []json.RawMessage{}
	}
	b, err := json.Marshal(items)
	if err != nil {
		return err
	}
	return writeJSONRaw(w, b)
}

func writeJSONValue(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeJSONRaw(w, b)
}

// humanBytes is n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 3; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGT"[exp])
}

// joinText joins the values at paths that are there, with spaces.
func joinText(o obj, paths ...string) string {
	var parts []string
	for _, p := range paths {
		if v := o.text(p); v != "" {
			parts = append(parts, v)
		}
	}
	return strings.Join(parts, " ")
}
