package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/otad/otad/internal/api"
	"github.com/otad/otad/internal/broker"
	"github.com/otad/otad/internal/engine"
	"github.com/otad/otad/internal/firmware"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/postgres"
	"github.com/otad/otad/internal/store/sqlite"
	"github.com/otad/otad/internal/web"
	"github.com/otad/otad/internal/webhook"
)

// migratingStore is an ota.Store that can apply its migrations.
type migratingStore interface {
	ota.Store
	Migrate(ctx context.Context) ([]string, error)
}

// openStore opens Postgres when a database URL is set, else SQLite in the
// data dir, and the bus that carries signals between the replicas sharing
// it (LISTEN/NOTIFY; in-process for SQLite, which is single-node).
func openStore(ctx context.Context, cfg *Config, log *slog.Logger) (migratingStore, ota.Bus, error) {
	if cfg.DatabaseURL != "" {
		s, err := postgres.Open(ctx, cfg.DatabaseURL)
		if err != nil {
			return nil, nil, err
		}
		return s, s.Bus(log), nil
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("create data dir: %w", err)
	}
	s, err := sqlite.Open(ctx, filepath.Join(cfg.DataDir, "otad.db"))
	if err != nil {
		return nil, nil, err
	}
	return s, s.Bus(log), nil
}

// webhookPoll is how often each replica looks for webhooks behind the
// event log.
const webhookPoll = 500 * time.Millisecond

// newWebhooks builds webhook delivery on River's driver for the store's
// database.
func newWebhooks(s migratingStore, cfg webhook.Config) (*webhook.Service, error) {
	switch st := s.(type) {
	case *postgres.Store:
		return webhook.New(st.QueueDriver(), cfg)
	case *sqlite.Store:
		return webhook.New(st.QueueDriver(), cfg)
	}
	return nil, fmt.Errorf("webhooks: no queue for %T", s)
}

// app is one running otad: every component, wired. Tests start it on :0
// ports with a temp data dir and talk to it over the network.
type app struct {
	cfg    *Config
	log    *slog.Logger
	stdout io.Writer
	store  migratingStore
	blobs  ota.Blobs
	reg    *prometheus.Registry
	node   string

	httpLn, downloadLn, metricsLn, pprofLn     net.Listener
	httpSrv, downloadSrv, metricsSrv, pprofSrv *http.Server
	broker                                     *broker.Broker
	engine                                     *engine.Engine
	webhooks                                   *webhook.Service
	publicURL                                  string

	sweeper  *firmware.Sweeper
	cancel   context.CancelFunc // ends the engine and the sweeper
	engineWG sync.WaitGroup     // the engine and the sweeper
	failed   chan error
	wg       sync.WaitGroup // the HTTP servers
}

// newApp opens the store, migrates it, binds the HTTP listeners and builds
// every component. Nothing is served until Start.
func newApp(ctx context.Context, cfg *Config, log *slog.Logger, stdout io.Writer) (_ *app, err error) {
	a := &app{cfg: cfg, log: log, stdout: stdout, reg: prometheus.NewRegistry(), failed: make(chan error, 5), node: nodeName()}
	defer func() {
		if err != nil {
			a.closeResources()
		}
	}()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var bus ota.Bus
	if a.store, bus, err = openStore(ctx, cfg, log); err != nil {
		return nil, err
	}
	applied, err := a.store.Migrate(ctx)
	if err != nil {
		return nil, err
	}
	for _, m := range applied {
		log.Info("applied migration", "component", "store", "name", m)
	}
	if err := a.bootstrapToken(ctx); err != nil {
		return nil, err
	}
	secrets, err := cfg.secretBox()
	if err != nil {
		return nil, err
	}
	if err := sealSecrets(ctx, a.store, secrets, log); err != nil {
		return nil, err
	}
	blobs, err := openBlobs(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	a.blobs = blobs
	a.sweeper, err = firmware.NewSweeper(firmware.SweeperConfig{Store: a.store, Blobs: blobs, Grace: cfg.SweepGrace, Logger: log, Registry: a.reg})
	if err != nil {
		return nil, err
	}
	if a.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("http listen: %w", err)
	}
	if cfg.DownloadAddr != "" {
		if a.downloadLn, err = net.Listen("tcp", cfg.DownloadAddr); err != nil {
			return nil, fmt.Errorf("download listen: %w", err)
		}
	}
	if cfg.MetricsAddr != "" {
		if a.metricsLn, err = net.Listen("tcp", cfg.MetricsAddr); err != nil {
			return nil, fmt.Errorf("metrics listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
		a.metricsSrv = a.newHTTPServer(mux, "metrics", false)
	}
	if cfg.PprofAddr != "" {
		if a.pprofLn, err = net.Listen("tcp", cfg.PprofAddr); err != nil {
			return nil, fmt.Errorf("pprof listen: %w", err)
		}
		a.pprofSrv = a.newHTTPServer(pprofMux(), "pprof", false)
	}
	a.publicURL = cfg.PublicURL
	if a.publicURL == "" {
		ln := a.httpLn
		if a.downloadLn != nil {
			ln = a.downloadLn
		}
		a.publicURL = "http://" + dialable(ln.Addr().String())
		log.Warn("OTAD_PUBLIC_URL is not set: devices are sent download URLs under "+a.publicURL+", which only this machine reaches", "component", "download")
	}
	secret, err := a.store.SettingEnsure(ctx, "download_secret", randomSecret())
	if err != nil {
		return nil, err
	}
	signer, err := ota.NewDownloadSigner(a.publicURL, []byte(secret))
	if err != nil {
		return nil, fmt.Errorf("OTAD_PUBLIC_URL: %w", err)
	}
	limit := api.NewRateLimiter(float64(cfg.RateLimit), int(cfg.RateBurst), 0, nil)
	if err := limit.Register(a.reg); err != nil {
		return nil, err
	}
	download, err := api.NewDownload(api.DownloadConfig{Logger: log, Signer: signer, Store: a.store, Blobs: a.blobs, Registry: a.reg, RateLimit: limit})
	if err != nil {
		return nil, err
	}

	// The broker hands every report to the engine, which applies it in the
	// broker's batched writer; the engine notifies devices through the broker.
	var tlsConfig *tls.Config
	if cfg.MQTTTLSAddr != "" {
		cert, err := tls.LoadX509KeyPair(cfg.MQTTTLSCert, cfg.MQTTTLSKey)
		if err != nil {
			return nil, fmt.Errorf("mqtt tls: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if cfg.MQTTTLSClientCA != "" {
			// Certificates are asked for, and verified when given: a device
			// with one logs in by it, the others by their signed password.
			pem, err := os.ReadFile(cfg.MQTTTLSClientCA)
			if err != nil {
				return nil, fmt.Errorf("OTAD_MQTT_TLS_CLIENT_CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("OTAD_MQTT_TLS_CLIENT_CA: %s holds no PEM certificate", cfg.MQTTTLSClientCA)
			}
			tlsConfig.ClientCAs, tlsConfig.ClientAuth = pool, tls.VerifyClientCertIfGiven
		}
	}
	a.broker, err = broker.New(log, a.store, broker.Options{
		Addr: cfg.MQTTAddr, TLSAddr: cfg.MQTTTLSAddr, TLSConfig: tlsConfig, Node: a.node, Secrets: secrets, Registerer: a.reg,
	})
	if err != nil {
		return nil, err
	}
	eng, err := engine.New(engine.Config{Logger: log, Store: a.store, Notifier: a.broker, URLs: signer, Node: a.node,
		Bus: bus, Retention: cfg.EventRetention, Registerer: a.reg})
	if err != nil {
		return nil, err
	}
	a.broker.SetReports(eng)
	a.engine = eng
	if a.webhooks, err = newWebhooks(a.store, webhook.Config{Logger: log, Store: a.store, Timeout: cfg.WebhookTimeout,
		Poll: webhookPoll, Node: a.node, Policy: ota.WebhookPolicy{Backoff: cfg.WebhookBackoff, MaxBackoff: cfg.WebhookBackoffMax,
			DisableAfter: cfg.WebhookDisableAfter}}); err != nil {
		return nil, err
	}

	apiSrv, err := api.New(api.Config{Logger: log, Store: a.store, Jobs: eng, Blobs: a.blobs, Secrets: secrets,
		MaxFirmwareSize: cfg.MaxFirmwareSize, Download: download, Console: web.Files(), Registry: a.reg, Gatherer: a.reg,
		BodyReadTimeout: cfg.BodyReadTimeout, UploadStallTimeout: cfg.BodyReadTimeout, MaxUploads: int(cfg.MaxUploads), RateLimit: limit})
	if err != nil {
		return nil, err
	}
	a.httpSrv = a.newHTTPServer(apiSrv, "http", true)
	a.httpSrv.RegisterOnShutdown(apiSrv.CloseStreams)
	if a.downloadLn != nil {
		a.downloadSrv = a.newHTTPServer(download, "download", false)
	}
	return a, nil
}

// maxHeaderBytes caps the request headers on every HTTP listener; more
// is answered 431.
const maxHeaderBytes = 64 << 10

// newHTTPServer builds one of otad's HTTP servers, each with the same
// header timeout, header size cap and idle timeout. The console API sets
// its own read deadlines per request (OTAD_BODY_READ_TIMEOUT, and per read
// for uploads); the other listeners take no request bodies, so one read
// timeout bounds a whole request there (apiDeadlines false).
func (a *app) newHTTPServer(h http.Handler, component string, apiDeadlines bool) *http.Server {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: a.cfg.HeaderTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		IdleTimeout:       a.cfg.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(a.log.With("component", component).Handler(), slog.LevelWarn),
	}
	if !apiDeadlines {
		srv.ReadTimeout = a.cfg.HeaderTimeout + a.cfg.BodyReadTimeout
	}
	return srv
}

// pprofMux serves Go's runtime profiles (OTAD_PPROF_ADDR): goroutines,
// heap, CPU and the rest under /debug/pprof/, as `go tool pprof` reads
// them.
func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// openBlobs opens the S3 bucket when one is configured, else the firmware
// directory under the data dir.
func openBlobs(ctx context.Context, cfg *Config, log *slog.Logger) (firmware.Sweepable, error) {
	if cfg.S3Bucket == "" {
		return firmware.NewLocal(filepath.Join(cfg.DataDir, "firmware"))
	}
	s3, err := firmware.NewS3(ctx, firmware.S3Config{Bucket: cfg.S3Bucket, Endpoint: cfg.S3Endpoint, PathStyle: cfg.S3PathStyle, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("s3: %w", err)
	}
	if err := s3.Ping(ctx); err != nil {
		return nil, fmt.Errorf("s3 bucket %s: %w", cfg.S3Bucket, err)
	}
	return s3, nil
}

// nodeName names this process among replicas: host name and a random
// suffix, new at every start.
func nodeName() string {
	host, _ := os.Hostname()
	return host + "-" + randomID()[:8]
}

func randomSecret() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// bootstrapToken makes sure the console API can be used. OTAD_API_TOKEN
// is an admin token named bootstrap; a new value revokes the previous
// one's, and a value revoked is not accepted again. Without it, when the
// database never had a token, one is generated and printed once. Only
// hashes are stored.
func (a *app) bootstrapToken(ctx context.Context) error {
	if a.cfg.APIToken != "" {
		t, err := a.store.TokenEnsure(ctx, &ota.APIToken{ID: ota.NewTokenID(), Name: "bootstrap", Scope: ota.ScopeAdmin,
			Hash: ota.HashAPIToken(a.cfg.APIToken), Origin: ota.TokenOriginEnv})
		if err != nil {
			return err
		}
		if t.RevokedAt != nil {
			a.log.Warn("OTAD_API_TOKEN is a revoked token and is not accepted; give it a new value for a new admin token", "component", "api", "token_id", t.ID)
		}
		return nil
	}
	n, err := a.store.TokenCount(ctx)
	if err != nil || n > 0 {
		return err
	}
	token := ota.NewAPIToken()
	if err := a.store.TokenCreate(ctx, &ota.APIToken{ID: ota.NewTokenID(), Name: "bootstrap", Scope: ota.ScopeAdmin,
		Hash: ota.HashAPIToken(token), Origin: ota.TokenOriginGenerated}); err != nil {
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

// Start serves: HTTP, downloads, the MQTT broker, the job engine and
// webhook delivery.
func (a *app) Start(ctx context.Context) error {
	// Register this replica before devices connect to it, so that no other
	// replica takes them for a dead node's; the engine keeps it fresh.
	now := ota.Now()
	if _, err := a.store.NodeHeartbeat(ctx, a.node, now, now.Add(-engine.NodeStaleAfter)); err != nil {
		return err
	}
	if err := a.broker.Start(ctx); err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	a.serve(a.httpSrv, a.httpLn, "http")
	a.log.Info("console API listening", "component", "http", "addr", a.HTTPURL())
	if a.metricsSrv != nil {
		a.serve(a.metricsSrv, a.metricsLn, "metrics")
		a.log.Info("metrics listening", "component", "metrics", "addr", a.metricsLn.Addr().String())
	}
	if a.pprofSrv != nil {
		a.serve(a.pprofSrv, a.pprofLn, "pprof")
		a.log.Info("profiles listening", "component", "pprof", "addr", a.pprofLn.Addr().String())
	}
	if a.downloadSrv != nil {
		a.serve(a.downloadSrv, a.downloadLn, "download")
		a.log.Info("firmware downloads listening", "component", "download", "addr", a.downloadLn.Addr().String())
	}
	a.log.Info("devices download firmware from", "component", "download", "public_url", a.publicURL)
	a.engineWG.Add(3)
	go func() {
		defer a.engineWG.Done()
		a.engine.Run(runCtx)
	}()
	go func() {
		defer a.engineWG.Done()
		if err := a.webhooks.Run(runCtx, a.cfg.ShutdownTimeout); err != nil {
			a.log.Error("webhook delivery stopped", "component", "webhook", "err", err)
		}
	}()
	go func() {
		defer a.engineWG.Done()
		a.sweeper.Run(runCtx, a.cfg.SweepInterval)
	}()
	return nil
}

func (a *app) serve(srv *http.Server, ln net.Listener, name string) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.failed <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

// MQTTAddr is the address devices connect to.
func (a *app) MQTTAddr() string { return dialable(a.broker.Addr()) }

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

// Close stops the engine and webhook delivery first, so that nothing new
// is dispatched, then
// the broker, which writes the reports in flight, then HTTP, letting
// in-flight requests finish within ctx, and closes the database last.
func (a *app) Close(ctx context.Context) error {
	var errs []error
	if a.cancel != nil {
		a.cancel()
	}
	a.engineWG.Wait()
	if a.broker != nil {
		if err := a.broker.Close(); err != nil {
			errs = append(errs, fmt.Errorf("mqtt shutdown: %w", err))
		}
	}
	for _, srv := range []*http.Server{a.httpSrv, a.downloadSrv, a.metricsSrv, a.pprofSrv} {
		if srv != nil {
			if err := srv.Shutdown(ctx); err != nil {
				errs = append(errs, fmt.Errorf("http shutdown: %w", err))
			}
		}
	}
	a.wg.Wait()
	errs = append(errs, a.closeResources())
	return errors.Join(errs...)
}

// closeResources closes what newApp opened.
func (a *app) closeResources() error {
	var errs []error
	for _, ln := range []net.Listener{a.httpLn, a.downloadLn, a.metricsLn, a.pprofLn} {
		if ln != nil {
			ln.Close()
		}
	}
	if c, ok := a.blobs.(io.Closer); ok {
		errs = append(errs, c.Close())
	}
	if a.store != nil {
		if err := a.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
	}
	return errors.Join(errs...)
}
