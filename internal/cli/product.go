package cli

import (
	"github.com/spf13/cobra"

	"github.com/otad/otad/internal/client"
)

var productView = fieldsView("id", "name", "description", "created_at")

func (a *app) productsCommand() *cobra.Command {
	cmd := group("products", "Register and list products", "product")
	var id, description string
	create := &cobra.Command{
		Use:     "create NAME",
		Short:   "Register a product (its ID is generated unless --id)",
		Example: "  otactl products create Thermostat --id THERMO0001",
		Args:    argNames("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]string{"name": args[0]}
			if id != "" {
				body["id"] = id
			}
			if description != "" {
				body["description"] = description
			}
			return a.call(cmd, client.Request{Method: "POST", Path: "/v1/products", JSON: body}, productView, "")
		},
	}
	create.Flags().StringVar(&id, "id", "", "the product ID: 10 characters of A-Z and 0-9")
	create.Flags().StringVar(&description, "description", "", "free text")

	var limit int
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List products",
		Args:    argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.list(cmd, "/v1/products", nil, limit, []column{
				col("ID", "id"), col("NAME", "name"), col("DESCRIPTION", "description"), timeCol("CREATED", "created_at"),
			})
		},
	}
	limitFlag(list, &limit, 0)

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a product",
		Args:  argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.get(cmd, client.Path("/v1/products", args[0]), productView)
		},
	}
	cmd.AddCommand(create, list, show)
	return cmd
}
