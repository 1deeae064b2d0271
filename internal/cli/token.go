package cli

import (
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/otad/otad/internal/client"
)

var tokenFields = []string{"id", "name", "scope", "created_at", "expires_at", "last_used_at", "created_by"}

func tokenView(w io.Writer, o obj) error {
	pairs := fieldPairs(o, tokenFields...)
	if t := o.text("token"); t != "" {
		pairs = append(pairs, [2]string{"token", t})
	}
	return writeFields(w, pairs)
}

func (a *app) tokensCommand() *cobra.Command {
	cmd := group("tokens", "Create, list and revoke console API tokens (admin scope)", "token")
	var scope, expires string
	create := &cobra.Command{
		Use:     "create NAME --scope read|operator|admin",
		Short:   "Create a token; the token itself is shown this once",
		Example: "  otactl tokens create ci --scope operator --expires-at 720h",
		Args:    argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if scope == "" {
				return usagef("give --scope read, operator or admin")
			}
			body := map[string]any{"name": args[0], "scope": scope}
			if expires != "" {
				t, err := parseWhen(expires, time.Now())
				if err != nil {
					return usagef("--expires-at: %v", err)
				}
				body["expires_at"] = t
			}
			return a.call(cmd, client.Request{Method: "POST", Path: "/v1/tokens", JSON: body}, tokenView, "")
		},
	}
	create.Flags().StringVar(&scope, "scope", "", "read, operator or admin (required)")
	create.Flags().StringVar(&expires, "expires-at", "", "when it stops working: an RFC 3339 time or a duration from now (default: never)")
	_ = create.RegisterFlagCompletionFunc("scope", cobra.FixedCompletions([]string{"read", "operator", "admin"}, cobra.ShellCompDirectiveNoFileComp))

	var limit int
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the tokens not revoked",
		Args:    argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.list(cmd, "/v1/tokens", nil, limit, []column{
				col("ID", "id"), col("NAME", "name"), col("SCOPE", "scope"), timeCol("CREATED", "created_at"),
				timeCol("EXPIRES", "expires_at"), timeCol("LAST USED", "last_used_at"),
			})
		},
	}
	limitFlag(list, &limit, 0)
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a token",
		Args:  argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.get(cmd, client.Path("/v1/tokens", args[0]), tokenView)
		},
	}
	revoke := &cobra.Command{
		Use:     "revoke ID",
		Aliases: []string{"delete", "rm"},
		Short:   "Revoke a token: it stops working at once",
		Args:    argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, client.Request{Method: "DELETE", Path: client.Path("/v1/tokens", args[0])}, nil, "revoked token "+args[0])
		},
	}
	cmd.AddCommand(create, list, show, revoke)
	return cmd
}
