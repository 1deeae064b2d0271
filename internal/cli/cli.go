// Package cli is otactl, the command-line tool of otad's console API:
// products, devices, firmware, jobs (with a live watch), events, tokens and
// webhooks. It goes through the public API only (package client).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/otad/otad/internal/client"
)

// Exit codes. jobs watch has codes of its own for how the job ended, so
// that a pipeline can gate on it.
const (
	ExitOK       = 0
	ExitError    = 1 // the command failed: the API refused it, the server is away, a file is missing
	ExitUsage    = 2 // the command line is wrong
	ExitFailures = 3 // jobs watch: the job completed, some devices not done
	ExitCanceled = 4 // jobs watch: the job was canceled (by hand, an abort criterion, end_at)
	ExitPaused   = 5 // jobs watch --exit-on-pause: the job paused
)

// Version is otactl's version, set at build time.
var Version = "dev"

// Env is what otactl runs with: main gives the process's, tests their own.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// HTTP sends the API requests; nil is a default client.
	HTTP *http.Client
}

// app is one run of otactl.
type app struct {
	env Env
	// flags of the root command
	server, token, output, configFile string
	// ran is set once a command's own code starts: errors before it
	// (flags, arguments, unknown commands) are usage errors.
	ran bool
}

// usageError is a wrong command line (exit 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitError ends otactl with a code of its own after the command has
// said what happened.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// Main runs otactl with args (without the program name) and returns its
// exit code.
func Main(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if env.Stdin == nil {
		env.Stdin = strings.NewReader("")
	}
	a := &app{env: env}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(env.Stderr, "otactl: %s\n", ee.msg)
		}
		return ee.code
	}
	var ue usageError
	if errors.As(err, &ue) || !a.ran {
		fmt.Fprintf(env.Stderr, "otactl: %s\n", oneLine(err.Error()))
		fmt.Fprintf(env.Stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		return ExitUsage
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return ExitError // interrupted: the user knows
	}
	fmt.Fprintf(env.Stderr, "otactl: %s\n", oneLine(err.Error()))
	return ExitError
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "otactl",
		Short: "Command-line tool of the otad OTA firmware server",
		Long: `otactl drives an otad server through its console API: products, devices,
firmware, upgrade jobs (and watching them live), events, tokens, webhooks.

The server and token come from --server/--token, else OTAD_URL/OTAD_TOKEN,
else the config file (otactl config set server URL; otactl config set token
TOKEN). Commands about one product take --product, else OTAD_PRODUCT, else
the config file's product.

Exit codes: 0 ok, 1 error, 2 usage error; jobs watch: 3 the job completed
with devices not done, 4 the job was canceled, 5 the job paused
(--exit-on-pause).`,
		Version:       Version,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          noArgs,
		RunE:          func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.server, "server", "", "otad's address, such as http://127.0.0.1:8080 (env OTAD_URL)")
	pf.StringVar(&a.token, "token", "", "console API token (env OTAD_TOKEN)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	pf.StringVar(&a.configFile, "config", "", "config file (default $XDG_CONFIG_HOME/otactl/config.json)")
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if a.output != "table" && a.output != "json" {
			return usagef("--output must be table or json, not %q", a.output)
		}
		return nil
	}
	root.AddCommand(
		a.configCommand(),
		a.productsCommand(),
		a.devicesCommand(),
		a.firmwareCommand(),
		a.jobsCommand(),
		a.eventsCommand(),
		a.tokensCommand(),
		a.webhooksCommand(),
	)
	markRun(root, a)
	return root
}

// markRun makes every command note when its own code starts (app.ran).
func markRun(c *cobra.Command, a *app) {
	if f := c.RunE; f != nil {
		c.RunE = func(cmd *cobra.Command, args []string) error {
			a.ran = true
			return f(cmd, args)
		}
	}
	for _, sub := range c.Commands() {
		markRun(sub, a)
	}
}

// group is a command that only holds others: alone it shows its help; an
// unknown subcommand is a usage error.
func group(use, short string, aliases ...string) *cobra.Command {
	return &cobra.Command{
		Use:     use,
		Short:   short,
		Aliases: aliases,
		Args:    noArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, ", "))
	}
	return usageError{errors.New(msg)}
}

// argNames takes exactly the positional arguments named, for the usage
// error to name what is missing.
func argNames(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == len(names) {
			return nil
		}
		if len(args) < len(names) {
			return usagef("%s needs %s", cmd.CommandPath(), strings.Join(names[len(args):], " and "))
		}
		return usagef("%s takes %d argument(s) (%s), got %d", cmd.CommandPath(), len(names), strings.Join(names, ", "), len(args))
	}
}

// client is the API client of the server and token the flags, the
// environment and the config file give.
func (a *app) client() (*client.Client, error) {
	cfg, err := a.loadConfig()
	if err != nil {
		return nil, err
	}
	server := firstOf(a.server, a.env.Getenv("OTAD_URL"), cfg.Server)
	if server == "" {
		return nil, usagef("no server: give --server, OTAD_URL or `otactl config set server URL`")
	}
	if !strings.HasPrefix(server, "http://") && !strings.HasPrefix(server, "https://") {
		return nil, usagef("server %q: give an http:// or https:// URL", server)
	}
	token := firstOf(a.token, a.env.Getenv("OTAD_TOKEN"), cfg.Token)
	if token == "" {
		return nil, usagef("no token: give --token, OTAD_TOKEN or `otactl config set token TOKEN`")
	}
	return &client.Client{BaseURL: server, Token: token, HTTP: a.env.HTTP, UserAgent: "otactl/" + Version}, nil
}

// product is the product ID of --product, OTAD_PRODUCT or the config file.
func (a *app) product(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if p := a.env.Getenv("OTAD_PRODUCT"); p != "" {
		return p, nil
	}
	cfg, err := a.loadConfig()
	if err != nil {
		return "", err
	}
	if cfg.Product == "" {
		return "", usagef("no product: give --product, OTAD_PRODUCT or `otactl config set product ID`")
	}
	return cfg.Product, nil
}

func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// productFlag adds --product/-p to a group of product-scoped commands.
func productFlag(c *cobra.Command, p *string) {
	c.PersistentFlags().StringVarP(p, "product", "p", "", "product ID (env OTAD_PRODUCT, or the config file's product)")
}

// productPath is a path under the product of flag (see product):
// productPath(flag, "devices", name) is /v1/products/PID/devices/NAME.
func (a *app) productPath(flag string, segments ...string) (string, error) {
	pid, err := a.product(flag)
	if err != nil {
		return "", err
	}
	return client.Path("/v1/products", append([]string{pid}, segments...)...), nil
}
