// Command otad is a self-hosted OTA firmware orchestration service: an
// embedded MQTT broker for devices, a console REST API, and a job engine.
//
//	otad [flags]          run the daemon
//	otad migrate [flags]  apply database migrations and exit
//	otad version          print the version and exit
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	_ "time/tzdata" // maintenance windows name IANA zones; the image has no zoneinfo
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "otad:", err)
		os.Exit(1)
	}
}

// run is otad's whole life: it returns when ctx is canceled (after a
// graceful shutdown) or when something fails to start.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "migrate" || args[0] == "version" || args[0] == "serve") {
		cmd, args = args[0], args[1:]
	}
	if cmd == "serve" && len(args) == 1 && (args[0] == "--version" || args[0] == "-version") {
		cmd = "version"
	}
	if cmd == "version" {
		fmt.Fprintln(stdout, "otad", version)
		return nil
	}
	cfg, err := parseConfig("otad "+cmd, args, getenv, stderr)
	if err != nil {
		return err
	}
	log := cfg.logger(stderr)
	if cmd == "migrate" {
		st, _, err := openStore(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer st.Close()
		applied, err := st.Migrate(ctx)
		for _, m := range applied {
			fmt.Fprintln(stdout, "applied", m)
		}
		if err == nil && len(applied) == 0 {
			fmt.Fprintln(stdout, "database is up to date")
		}
		return err
	}

	a, err := newApp(ctx, cfg, log, stdout)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		a.Close(context.Background())
		return err
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-a.Failed():
		log.Error("fatal", "err", err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(err, a.Close(shutdownCtx))
}
