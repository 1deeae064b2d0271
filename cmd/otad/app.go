package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/otad/otad/internal/api"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/postgres"
	"github.com/otad/otad/internal/store/sqlite"
)

// migratingStore is an ota.Store that can apply its migrations.
type migratingStore interface {
	ota.Store
	Migrate(ctx context.Context) ([]string, error)
}

// openStore opens Postgres when a database URL is set, else SQLite in the
// data dir.
func openStore(ctx context.Context, cfg *Config) (migratingStore, error) {
	if cfg.DatabaseURL != "" {
		return postgres.Open(ctx, cfg.DatabaseURL)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	return sqlite.Open(ctx, filepath.Join(cfg.DataDir, "otad.db"))
}

// app is one running otad: every component, wired. Tests start it on :0
// ports with a temp data dir and talk to it over the network.
type app struct {
	cfg    *Config
	log    *slog.Logger
	stdout io.Writer
	store  migratingStore
	reg    *prometheus.Registry

	httpLn  net.Listener
	httpSrv *http.Server

	failed chan error
	wg     sync.WaitGroup
}

// newApp opens the store, migrates it and builds every component. Nothing
// listens until Start.
func newApp(ctx context.Context, cfg *Config, log *slog.Logger, stdout io.Writer) (*app, error) {
	a := &app{cfg: cfg, log: log, stdout: stdout, reg: prometheus.NewRegistry(), failed: make(chan error, 4)}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	a.store = st
	applied, err := st.Migrate(ctx)
	if err != nil {
		st.Close()
		return nil, err
	}
	for _, m := range applied {
		log.Info("applied migration", "component", "store", "name", m)
	}
	if err := a.bootstrapToken(ctx); err != nil {
		st.Close()
		return nil, err
	}
	apiSrv, err := api.New(api.Config{Logger: log, Store: st, Registry: a.reg, Gatherer: a.reg})
	if err != nil {
		st.Close()
		return nil, err
	}
	a.httpSrv = &http.Server{
		Handler:           apiSrv,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelWarn),
	}
	return a, nil
}

// bootstrapToken makes sure the console API can be used: the configured
// token is registered, or, when there is none and the database has no token
// yet, one is generated and printed once. Only its hash is stored.
func (a *app) bootstrapToken(ctx context.Context) error {
	if a.cfg.APIToken != "" {
		hash := api.HashToken(a.cfg.APIToken)
		_, err := a.store.TokenGetByHash(ctx, hash)
		if ota.IsCode(err, ota.ENOTFOUND) {
			err = a.store.TokenCreate(ctx, &ota.APIToken{ID: randomID(), Name: "OTAD_API_TOKEN", Hash: hash})
			if ota.IsCode(err, ota.ECONFLICT) { // another replica registered it first
				err = nil
			}
		}
		return err
	}
	n, err := a.store.TokenCount(ctx)
	if err != nil || n > 0 {
		return err
	}
	b := make([]byte, 32)
	rand.Read(b)
	token := "otad_" + base64.RawURLEncoding.EncodeToString(b)
	if err := a.store.TokenCreate(ctx, &ota.APIToken{ID: randomID(), Name: "bootstrap", Hash: api.HashToken(token)}); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "otad: generated the console API token; it is shown only this once:\n\n    %s\n\n", token)
	return nil
}

func randomID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Start opens the listeners and serves.
func (a *app) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http listen: %w", err)
	}
	a.httpLn = ln
	a.log.Info("console API listening", "component", "http", "addr", a.HTTPURL())
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.failed <- fmt.Errorf("http: %w", err)
		}
	}()
	return nil
}

// Failed reports a component that stopped on its own.
func (a *app) Failed() <-chan error { return a.failed }

// HTTPURL is the base URL of the console API.
func (a *app) HTTPURL() string {
	return "http://" + dialable(a.httpLn.Addr().String())
}

// dialable turns a listen address such as [::]:8080 into one a client on
// this machine can dial.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "::" || host == "0.0.0.0" {
		host = "127.0.0.1"
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return host + ":" + port
}

// Close stops accepting work, lets in-flight requests finish within ctx,
// and closes the database last.
func (a *app) Close(ctx context.Context) error {
	var errs []error
	if a.httpLn != nil {
		if err := a.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
	}
	a.wg.Wait()
	if err := a.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	return errors.Join(errs...)
}
