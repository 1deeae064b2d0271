package cli

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/otad/otad/internal/client"
)

var deviceFields = []string{"product_id", "name", "version", "online", "last_seen_at", "disabled", "created_at"}

// upgradeSummary is a device's current upgrade on one line.
func upgradeSummary(o obj) string {
	if o.get("upgrade") == nil {
		return "-"
	}
	return joinText(o, "upgrade.version", "upgrade.state", "upgrade.percent") + "% " + o.text("upgrade.result_name")
}

func deviceView(w io.Writer, o obj) error {
	pairs := append(fieldPairs(o, deviceFields...), [2]string{"upgrade", upgradeSummary(o)})
	if m := o.text("upgrade.result_msg"); m != "" {
		pairs = append(pairs, [2]string{"upgrade_message", m})
	}
	if s, ok := o.get("secret").(string); ok {
		pairs = append(pairs, [2]string{"secret", s})
	}
	if err := writeFields(w, pairs); err != nil {
		return err
	}
	events := o.list("events")
	if events == nil {
		return nil
	}
	fmt.Fprintln(w, "\nhistory (newest first):")
	rows := make([][]string, 0, len(events))
	for _, e := range events {
		ev := obj(e.(map[string]any))
		rows = append(rows, historyRow(ev))
	}
	return writeTable(w, historyHeaders, rows)
}

var historyHeaders = []string{"TIME", "TYPE", "VERSION", "STATE", "PERCENT", "RESULT"}

func historyRow(ev obj) []string {
	return []string{ev.time("created_at"), ev.str("type"), ev.str("version"), ev.str("state"), ev.str("percent"),
		firstOf(joinText(ev, "result_code", "result_msg"), "-")}
}

var deviceColumns = []column{
	col("NAME", "name"), col("VERSION", "version"), col("ONLINE", "online"), timeCol("LAST SEEN", "last_seen_at"),
	col("DISABLED", "disabled"), {"UPGRADE", upgradeSummary},
}

func (a *app) devicesCommand() *cobra.Command {
	cmd := group("devices", "Register, list, disable and delete devices; import them from CSV", "device")
	var product string
	productFlag(cmd, &product)
	pid := func() (string, error) { return a.product(product) }
	path := func(segments ...string) (string, error) {
		return a.productPath(product, append([]string{"devices"}, segments...)...)
	}

	var version string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Register a device; its secret is shown this once",
		Args:  argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path()
			if err != nil {
				return err
			}
			body := map[string]string{"name": args[0]}
			if version != "" {
				body["version"] = version
			}
			return a.call(cmd, client.Request{Method: "POST", Path: p, JSON: body}, deviceView, "")
		},
	}
	create.Flags().StringVar(&version, "version", "", "the version the device runs now, if known")

	var limit int
	var online bool
	var listVersion string
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List devices, by name",
		Example: "  otactl devices list --version 1.0.0 --online\n  otactl devices list --online=false",
		Args:    argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := path()
			if err != nil {
				return err
			}
			q := url.Values{}
			if listVersion != "" {
				q.Set("version", listVersion)
			}
			if cmd.Flags().Changed("online") {
				q.Set("online", strconv.FormatBool(online))
			}
			return a.list(cmd, p, q, limit, deviceColumns)
		},
	}
	list.Flags().StringVar(&listVersion, "version", "", "only devices on this version")
	list.Flags().BoolVar(&online, "online", false, "only online devices (--online=false: only offline ones)")
	limitFlag(list, &limit, 0)

	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a device: version, presence, current upgrade and its 20 newest events",
		Args:  argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path(args[0])
			if err != nil {
				return err
			}
			return a.get(cmd, p, deviceView)
		},
	}

	var historyLimit int
	history := &cobra.Command{
		Use:   "history NAME",
		Short: "List a device's history, newest first",
		Args:  argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path(args[0], "events")
			if err != nil {
				return err
			}
			cols := make([]column, len(historyHeaders))
			for i, h := range historyHeaders {
				cols[i] = column{h, func(o obj) string { return historyRow(o)[i] }}
			}
			return a.list(cmd, p, nil, historyLimit, cols)
		},
	}
	limitFlag(history, &historyLimit, 100)

	setDisabled := func(use, short string, disabled bool) *cobra.Command {
		return &cobra.Command{
			Use:   use + " NAME",
			Short: short,
			Args:  argNames("NAME"),
			RunE: func(cmd *cobra.Command, args []string) error {
				p, err := path(args[0])
				if err != nil {
					return err
				}
				body := map[string]bool{"disabled": disabled}
				return a.call(cmd, client.Request{Method: "PATCH", Path: p, JSON: body}, fieldsView(deviceFields...), "")
			},
		}
	}
	del := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a device and its history (its session is closed)",
		Args:    argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path(args[0])
			if err != nil {
				return err
			}
			return a.call(cmd, client.Request{Method: "DELETE", Path: p}, nil, "deleted device "+args[0])
		},
	}

	cmd.AddCommand(create, list, show, history,
		setDisabled("disable", "Disable a device: it cannot log in, its session is closed", true),
		setDisabled("enable", "Enable a disabled device", false),
		del, a.deviceImportCommand(pid))
	return cmd
}

// importRow is one device of an import file.
type importRow struct {
	Line    int    `json:"line"`
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
}

func (a *app) deviceImportCommand(product func() (string, error)) *cobra.Command {
	var secretsOut string
	var concurrency int
	cmd := &cobra.Command{
		Use:   "import FILE.csv",
		Short: "Register the devices of a CSV file (name[,version]), their secrets written to --secrets-out",
		Long: `Registers each device of FILE.csv: lines of name[,version], a first line
"name,version" taken as a header. Each created device's secret is appended to
--secrets-out (created with mode 0600) as product_id,device_name,secret, the
format otasim reads. Rows that fail are reported and the rest go on; the exit
code is 1 when any failed. "-" reads the CSV from standard input.

Devices are registered in batches of up to 1,000 (POST …/device-batches, one
transaction each); a batch refused for some of its rows is sent again
without them. A server without batches gets the devices one by one,
--concurrency at once.`,
		Example: "  otactl devices import fleet.csv --secrets-out secrets.csv",
		Args:    argNames("FILE.csv"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if secretsOut == "" {
				return usagef("give --secrets-out FILE: the secrets are shown only once")
			}
			if concurrency < 1 || concurrency > 64 {
				return usagef("--concurrency must be 1 to 64")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			pid, err := product()
			if err != nil {
				return err
			}
			rows, err := readImport(a.env.Stdin, args[0])
			if err != nil {
				return err
			}
			out, err := openSecrets(secretsOut)
			if err != nil {
				return err
			}
			defer out.Close()
			im := &importer{c: c, pid: pid, out: out, concurrency: concurrency}
			im.run(cmd.Context(), rows)
			if err := out.Close(); err != nil && im.writeErr == nil {
				im.writeErr = err
			}
			if im.writeErr != nil {
				return fmt.Errorf("writing %s: %w (%d devices were created)", secretsOut, im.writeErr, im.created)
			}
			if err := cmd.Context().Err(); err != nil {
				return fmt.Errorf("interrupted after %d devices were created (their secrets are in %s)", im.created, secretsOut)
			}
			var failed []importRow
			for _, r := range rows {
				if r.Error != "" {
					failed = append(failed, r)
				}
			}
			if a.output == "json" {
				if failed == nil {
					failed = []importRow{}
				}
				err = writeJSONValue(a.env.Stdout, map[string]any{"product_id": pid, "created": im.created, "failed": failed, "secrets_file": secretsOut})
			} else {
				fmt.Fprintf(a.env.Stdout, "created %d of %d devices; secrets in %s\n", im.created, len(rows), secretsOut)
			}
			for _, r := range failed {
				fmt.Fprintf(a.env.Stderr, "otactl: line %d (%s): %s\n", r.Line, r.Name, r.Error)
			}
			if err != nil {
				return err
			}
			if len(failed) > 0 {
				return &exitError{ExitError, fmt.Sprintf("%d of %d devices not created", len(failed), len(rows))}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&secretsOut, "secrets-out", "", "file the secrets are appended to (product_id,device_name,secret; mode 0600)")
	cmd.Flags().IntVar(&concurrency, "concurrency", 8, "devices registered at once by a server without batches")
	return cmd
}

// importBatch is how many devices go in one batch.
const importBatch = 1000

// importer registers the rows of an import file.
type importer struct {
	c           *client.Client
	pid         string
	out         *secretsFile
	concurrency int

	mu       sync.Mutex
	created  int
	writeErr error
	oneByOne bool // the server has no batches
}

// createdDevice is a device as its creation answers it.
type createdDevice struct {
	ProductID string `json:"product_id"`
	Name      string `json:"name"`
	Secret    string `json:"secret"`
}

func (im *importer) keep(d createdDevice) {
	im.mu.Lock()
	defer im.mu.Unlock()
	im.created++
	if im.writeErr == nil {
		im.writeErr = im.out.Write([]string{d.ProductID, d.Name, d.Secret})
	}
}

func (im *importer) run(ctx context.Context, rows []importRow) {
	var todo []*importRow
	for i := range rows {
		if rows[i].Error == "" {
			todo = append(todo, &rows[i])
		}
	}
	for len(todo) > 0 && ctx.Err() == nil && im.writeErr == nil {
		n := min(importBatch, len(todo))
		im.batch(ctx, todo[:n])
		todo = todo[n:]
	}
}

// batch registers rows in one transaction; the rows the server refuses by
// name are marked and the rest sent again.
func (im *importer) batch(ctx context.Context, rows []*importRow) {
	path := client.Path("/v1/products", im.pid, "device-batches")
	for len(rows) > 0 && !im.oneByOne {
		devices := make([]map[string]string, len(rows))
		for i, r := range rows {
			devices[i] = deviceBody(r)
		}
		var answer struct {
			Items []createdDevice `json:"items"`
		}
		err := im.c.Do(ctx, client.Request{Method: "POST", Path: path, JSON: map[string]any{"devices": devices}}, &answer)
		if err == nil {
			for _, d := range answer.Items {
				im.keep(d)
			}
			return
		}
		var p *client.Problem
		if !errors.As(err, &p) {
			break // the server is away: each row says so below
		}
		if refused := refusedRows(p, rows); len(refused) > 0 {
			rows = slices.DeleteFunc(rows, func(r *importRow) bool { return r.Error != "" })
			continue
		}
		if p.Status == http.StatusNotFound || p.Status == http.StatusMethodNotAllowed {
			im.oneByOne = true // a server without batches; or no such product, as each row will say
		}
		break
	}
	im.each(ctx, rows)
}

// refusedRows marks the rows a refused batch names: the names taken
// (409, extra.devices) or the one that is invalid (400, "devices[i]: …").
func refusedRows(p *client.Problem, rows []*importRow) []*importRow {
	var refused []*importRow
	switch p.Code {
	case "conflict":
		var extra struct {
			Devices []string `json:"devices"`
		}
		json.Unmarshal(p.Extra, &extra)
		for _, r := range rows {
			if slices.Contains(extra.Devices, r.Name) {
				r.Error = "409 conflict: the device exists already"
				refused = append(refused, r)
			}
		}
	case "invalid":
		var i int
		if _, err := fmt.Sscanf(p.Detail, "devices[%d]:", &i); err == nil && i >= 0 && i < len(rows) {
			_, msg, _ := strings.Cut(p.Detail, ": ")
			rows[i].Error = "400 invalid: " + msg
			refused = append(refused, rows[i])
		}
	}
	return refused
}

// each registers rows one by one, a few at once.
func (im *importer) each(ctx context.Context, rows []*importRow) {
	path := client.Path("/v1/products", im.pid, "devices")
	work := make(chan *importRow)
	var wg sync.WaitGroup
	for range im.concurrency {
		wg.Go(func() {
			for r := range work {
				var d createdDevice
				if err := im.c.Do(ctx, client.Request{Method: "POST", Path: path, JSON: deviceBody(r)}, &d); err != nil {
					r.Error = oneLine(err.Error())
					continue
				}
				im.keep(d)
			}
		})
	}
	for _, r := range rows {
		if ctx.Err() != nil {
			break
		}
		work <- r
	}
	close(work)
	wg.Wait()
}

func deviceBody(r *importRow) map[string]string {
	body := map[string]string{"name": r.Name}
	if r.Version != "" {
		body["version"] = r.Version
	}
	return body
}

// readImport reads the rows of an import file; a malformed row is kept
// with its error, so that it is reported with the others.
func readImport(stdin io.Reader, file string) ([]importRow, error) {
	in, closeIn, err := openInput(stdin, file)
	if err != nil {
		return nil, err
	}
	defer closeIn()
	r := csv.NewReader(in)
	r.FieldsPerRecord = -1
	r.TrimLeadingSpace = true
	r.Comment = '#'
	var rows []importRow
	seen := map[string]int{}
	first := true
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		line, _ := r.FieldPos(0)
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			return nil, err
		}
		if first && strings.EqualFold(strings.TrimSpace(rec[0]), "name") {
			first = false
			continue // the header
		}
		first = false
		row := importRow{Line: line, Name: strings.TrimSpace(rec[0])}
		if len(rec) > 1 {
			row.Version = strings.TrimSpace(rec[1])
		}
		switch {
		case len(rec) > 2:
			row.Error = fmt.Sprintf("%d fields; a row is name[,version]", len(rec))
		case row.Name == "":
			row.Error = "no device name"
		case seen[row.Name] != 0:
			row.Error = fmt.Sprintf("%s is on line %d too", row.Name, seen[row.Name])
		}
		if row.Name != "" && seen[row.Name] == 0 {
			seen[row.Name] = line
		}
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("%s: no devices", file)
	}
	return rows, nil
}

// secretsFile appends device credentials to a CSV file only its owner
// may read.
type secretsFile struct {
	f *os.File
	w *csv.Writer
}

func openSecrets(path string) (*secretsFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	// An existing file keeps its secrets and gets the new ones; it may
	// not stay readable by others.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	s := &secretsFile{f: f, w: csv.NewWriter(f)}
	if st.Size() == 0 {
		if err := s.Write([]string{"product_id", "device_name", "secret"}); err != nil {
			f.Close()
			return nil, err
		}
	}
	return s, nil
}

// Write writes one row through to the file, so that a secret is kept
// even if otactl is stopped right after.
func (s *secretsFile) Write(rec []string) error {
	s.w.Write(rec)
	s.w.Flush()
	return s.w.Error()
}

func (s *secretsFile) Close() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Sync()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.f = nil
	return err
}
