package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/otad/otad/internal/client"
)

// eventFilters are the event log's filters as flags.
type eventFilters struct {
	types                []string
	product, job, device string
	after                int64
}

func (f *eventFilters) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringSliceVar(&f.types, "type", nil, "only these event types (repeatable or comma-separated; a trailing .* keeps a prefix: execution.*)")
	fl.StringVar(&f.product, "product", "", "only events of this product")
	fl.StringVar(&f.job, "job", "", "only events of this job")
	fl.StringVar(&f.device, "device", "", "only events of this device")
	fl.Int64Var(&f.after, "after", 0, "only events after this sequence number")
}

func (f *eventFilters) query(cmd *cobra.Command) url.Values {
	q := url.Values{}
	if len(f.types) > 0 {
		q.Set("type", strings.Join(f.types, ","))
	}
	for k, v := range map[string]string{"product_id": f.product, "job_id": f.job, "device": f.device} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if cmd.Flags().Changed("after") {
		q.Set("after", strconv.FormatInt(f.after, 10))
	}
	return q
}

// eventData is an event's data as compact JSON.
func eventData(e client.Event) string {
	var buf bytes.Buffer
	if len(e.Data) == 0 || json.Compact(&buf, e.Data) != nil || buf.String() == "{}" {
		return "-"
	}
	return buf.String()
}

func (a *app) eventsCommand() *cobra.Command {
	cmd := group("events", "Read and follow the event log", "event")

	var lf eventFilters
	var limit int
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List events, oldest first",
		Example: "  otactl events list --job 0193f1c2a4b0e1d2c3f4 --type 'execution.*' --limit 0",
		Args:    argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			var items []json.RawMessage
			var rows [][]string
			_, err = c.Events(cmd.Context(), lf.query(cmd), limit, func(e client.Event) error {
				items = append(items, e.Raw)
				rows = append(rows, []string{strconv.FormatInt(e.Seq, 10), e.CreatedAt.Local().Format("2006-01-02 15:04:05"),
					e.Type, firstOf(e.ProductID, "-"), firstOf(e.JobID, "-"), firstOf(e.DeviceName, "-"), eventData(e)})
				return nil
			})
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSONArray(a.env.Stdout, items)
			}
			return writeTable(a.env.Stdout, []string{"SEQ", "TIME", "TYPE", "PRODUCT", "JOB", "DEVICE", "DATA"}, rows)
		},
	}
	lf.add(list)
	limitFlag(list, &limit, 100)

	var tf eventFilters
	tail := &cobra.Command{
		Use:   "tail",
		Short: "Follow the event log as it grows (from its end, or after --after)",
		Long: `Prints each new event as it happens, one a line (-o json: each event's JSON),
until interrupted. A dropped connection is resumed after the last event
printed (Last-Event-ID), so none is lost or repeated.`,
		Example: "  otactl events tail --product THERMO0001 --type 'job.*,execution.failed'",
		Args:    argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			err = c.Stream(cmd.Context(), tf.query(cmd), client.StreamOptions{
				Dropped: func(err error, wait time.Duration) {
					a.note(fmt.Sprintf("otactl: event stream lost (%s); reconnecting in %s", oneLine(err.Error()), wait))
				},
			}, func(e client.Event) error {
				if a.output == "json" {
					var buf bytes.Buffer
					json.Compact(&buf, e.Raw)
					buf.WriteByte('\n')
					_, err := a.env.Stdout.Write(buf.Bytes())
					return err
				}
				subject := joinText(obj{"p": e.ProductID, "j": e.JobID, "d": e.DeviceName}, "p", "j", "d")
				_, err := fmt.Fprintf(a.env.Stdout, "%d %s %s %s %s\n", e.Seq, e.CreatedAt.Local().Format("15:04:05.000"),
					e.Type, firstOf(subject, "-"), eventData(e))
				return err
			})
			if cmd.Context().Err() != nil {
				return nil // interrupted: the usual end of a tail
			}
			return err
		},
	}
	tf.add(tail)
	cmd.AddCommand(list, tail)
	return cmd
}
