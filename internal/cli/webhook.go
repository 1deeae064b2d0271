package cli

import (
	"io"

	"github.com/spf13/cobra"

	"github.com/otad/otad/internal/client"
)

var webhookFields = []string{"id", "url", "description", "event_types", "product_id", "job_id", "enabled", "disabled_reason",
	"cursor", "failures", "failing_since", "created_at", "updated_at"}

func webhookView(w io.Writer, o obj) error {
	pairs := fieldPairs(o, webhookFields...)
	if s := o.text("secret"); s != "" {
		pairs = append(pairs, [2]string{"secret", s})
	}
	return writeFields(w, pairs)
}

// webhookFlags are a webhook's fields as flags; only those given are sent.
type webhookFlags struct {
	url, description, product, job string
	eventTypes                     []string
	enabled                        bool
}

func (f *webhookFlags) add(cmd *cobra.Command, withURL bool) {
	fl := cmd.Flags()
	if withURL {
		fl.StringVar(&f.url, "url", "", "where events are POSTed")
	}
	fl.StringVar(&f.description, "description", "", "free text")
	fl.StringSliceVar(&f.eventTypes, "event-type", nil, "only these event types (repeatable; a trailing .* keeps a prefix; none: every type)")
	fl.StringVar(&f.product, "product", "", "only events of this product")
	fl.StringVar(&f.job, "job", "", "only events of this job")
	fl.BoolVar(&f.enabled, "enabled", true, "deliver to it (--enabled=false: keep it, deliver nothing)")
}

func (f *webhookFlags) body(cmd *cobra.Command) map[string]any {
	body := map[string]any{}
	fl := cmd.Flags()
	for flag, field := range map[string]string{"url": "url", "description": "description", "product": "product_id", "job": "job_id"} {
		if fl.Changed(flag) {
			v, _ := fl.GetString(flag)
			body[field] = v
		}
	}
	if fl.Changed("event-type") {
		body["event_types"] = append([]string{}, f.eventTypes...)
	}
	if fl.Changed("enabled") {
		body["enabled"] = f.enabled
	}
	return body
}

func (a *app) webhooksCommand() *cobra.Command {
	cmd := group("webhooks", "Create, change and inspect webhooks that receive events", "webhook")
	var cf webhookFlags
	create := &cobra.Command{
		Use:     "create URL",
		Short:   "Create a webhook; its signing secret is shown this once",
		Example: "  otactl webhooks create https://ci.example/otad --event-type 'job.*' --product THERMO0001",
		Args:    argNames("URL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := cf.body(cmd)
			body["url"] = args[0]
			return a.call(cmd, client.Request{Method: "POST", Path: "/v1/webhooks", JSON: body}, webhookView, "")
		},
	}
	cf.add(create, false)

	var uf webhookFlags
	update := &cobra.Command{
		Use:     "update ID",
		Short:   "Change a webhook's URL, description, filters or enabled flag (the flags given)",
		Example: "  otactl webhooks update wh_0123456789abcdef0123 --enabled=true",
		Args:    argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := uf.body(cmd)
			if len(body) == 0 {
				return usagef("give a flag to change: --url, --description, --event-type, --product, --job, --enabled")
			}
			return a.call(cmd, client.Request{Method: "PATCH", Path: client.Path("/v1/webhooks", args[0]), JSON: body}, webhookView, "")
		},
	}
	uf.add(update, true)

	var limit int
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List webhooks",
		Args:    argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.list(cmd, "/v1/webhooks", nil, limit, []column{
				col("ID", "id"), col("URL", "url"), col("ENABLED", "enabled"), col("EVENTS", "event_types"),
				col("PRODUCT", "product_id"), col("JOB", "job_id"), col("FAILURES", "failures"), col("DISABLED REASON", "disabled_reason"),
			})
		},
	}
	limitFlag(list, &limit, 0)
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a webhook",
		Args:  argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.get(cmd, client.Path("/v1/webhooks", args[0]), webhookView)
		},
	}
	del := &cobra.Command{
		Use:     "delete ID",
		Aliases: []string{"rm"},
		Short:   "Delete a webhook and its delivery log",
		Args:    argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, client.Request{Method: "DELETE", Path: client.Path("/v1/webhooks", args[0])}, nil, "deleted webhook "+args[0])
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate-secret ID",
		Short: "Give a webhook a new signing secret, shown this once",
		Args:  argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, client.Request{Method: "POST", Path: client.Path("/v1/webhooks", args[0], "rotate-secret")}, webhookView, "")
		},
	}
	var dlimit int
	deliveries := &cobra.Command{
		Use:   "deliveries ID",
		Short: "List a webhook's deliveries, newest first",
		Args:  argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.list(cmd, client.Path("/v1/webhooks", args[0], "deliveries"), nil, dlimit, []column{
				col("SEQ", "seq"), col("EVENT", "event_type"), col("ATTEMPTS", "attempts"), col("STATUS", "status_code"),
				col("LATENCY MS", "latency_ms"), timeCol("DELIVERED", "delivered_at"), timeCol("LAST TRY", "updated_at"), col("ERROR", "error"),
			})
		},
	}
	limitFlag(deliveries, &dlimit, 100)
	cmd.AddCommand(create, list, show, update, del, rotate, deliveries)
	return cmd
}
