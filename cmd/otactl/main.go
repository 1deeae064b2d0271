// Command otactl is the command-line tool of otad's console API: products,
// devices (and their bulk import), firmware uploads, upgrade jobs with a
// live watch whose exit code gates pipelines, events, tokens and webhooks.
// See `otactl --help` and the README's otactl section.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/otad/otad/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
	stop()
	os.Exit(code)
}
