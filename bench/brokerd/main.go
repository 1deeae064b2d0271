// Command brokerd runs otad's MQTT broker alone over a real store, for
// bench/mqtt.sh: it provisions N devices (writing their credentials for
// otasim), serves MQTT, Prometheus metrics and pprof on loopback, and
// prints memory figures on SIGUSR2 (live) and SIGUSR1 (after collecting
// garbage, so RSS can be read at rest). With -bare it runs mochi as otad
// configures it, admitting every client and storing nothing: the broker
// library's own cost, without otad's.
//
//	brokerd -postgres postgres://... -provision 10000 -devices-out devices.csv
//	brokerd -bare
package main

import (
	"context"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/otad/otad/internal/broker"
	"github.com/otad/otad/internal/engine"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/postgres"
	"github.com/otad/otad/internal/store/sqlite"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "brokerd:", err)
		os.Exit(1)
	}
}

func run() error {
	pgURL := flag.String("postgres", "", "PostgreSQL URL")
	sqlitePath := flag.String("sqlite", "", "SQLite file (when no -postgres)")
	provision := flag.Int("provision", 0, "create this many devices of a new product")
	devicesOut := flag.String("devices-out", "devices.csv", "where to write the provisioned devices' credentials")
	addr := flag.String("addr", "127.0.0.1:0", "MQTT listen address")
	metricsAddr := flag.String("metrics-addr", "127.0.0.1:0", "Prometheus metrics listen address")
	writers := flag.Int("writers", 0, "report writer transactions in flight (0: broker default)")
	batch := flag.Int("batch", 0, "most reports per transaction (0: broker default)")
	bare := flag.Bool("bare", false, "serve mochi as otad configures it, with an allow-all hook and no store")
	flag.Parse()
	if *provision < 0 || *provision > 50000 {
		return errors.New("-provision must be 0 to 50000")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	reg := prometheus.NewRegistry()
	var brokerAddr string
	if *bare {
		bb, err := broker.StartBare(*addr)
		if err != nil {
			return err
		}
		defer bb.Close()
		brokerAddr = bb.Addr()
	} else {
		b, closeAll, err := startOtad(ctx, log, reg, *pgURL, *sqlitePath, *provision, *devicesOut, broker.Options{Addr: *addr, Registerer: reg, Node: "bench", ReportWriters: *writers, ReportBatch: *batch})
		if err != nil {
			return err
		}
		defer closeAll()
		brokerAddr = b.Addr()
	}

	ml, err := net.Listen("tcp", *metricsAddr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	srv := &http.Server{Handler: mux}
	go srv.Serve(ml)
	defer srv.Close()

	fmt.Printf("ADDR=%s\nMETRICS=%s\nPID=%d\n", brokerAddr, ml.Addr(), os.Getpid())

	// SIGUSR2 prints the memory figures as they are (live); SIGUSR1
	// collects garbage and returns freed memory to the OS first.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	for {
		select {
		case <-ctx.Done():
			return nil
		case s := <-sig:
			label := "MEMLIVE"
			if s == syscall.SIGUSR1 {
				label = "MEM"
				runtime.GC()
				debug.FreeOSMemory()
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			fmt.Printf("%s heap_inuse=%d heap_alloc=%d stack_inuse=%d sys=%d goroutines=%d\n",
				label, ms.HeapInuse, ms.HeapAlloc, ms.StackInuse, ms.Sys, runtime.NumGoroutine())
		}
	}
}

// startOtad starts otad's broker and job engine over the store named by
// pgURL or sqlitePath, provisioning devices first; closeAll stops them.
func startOtad(ctx context.Context, log *slog.Logger, reg prometheus.Registerer, pgURL, sqlitePath string, provision int, devicesOut string, opts broker.Options) (*broker.Broker, func(), error) {
	var store interface {
		ota.Store
		Migrate(context.Context) ([]string, error)
	}
	var err error
	switch {
	case pgURL != "":
		store, err = postgres.Open(ctx, pgURL)
	case sqlitePath != "":
		store, err = sqlite.Open(ctx, sqlitePath)
	default:
		return nil, nil, errors.New("-postgres or -sqlite is required")
	}
	if err != nil {
		return nil, nil, err
	}
	if _, err := store.Migrate(ctx); err != nil {
		store.Close()
		return nil, nil, err
	}
	closeAll := func() { store.Close() }

	if provision > 0 {
		if err := provisionDevices(ctx, store, provision, devicesOut); err != nil {
			closeAll()
			return nil, nil, err
		}
	}

	b, err := broker.New(log, store, opts)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	// Reports go through the job engine, as in otad: each batch is applied
	// with the transitions it causes in one transaction.
	eng, err := engine.New(engine.Config{Logger: log, Store: store, Notifier: b, URLs: noURLs{}, Node: "bench", Registerer: reg})
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	b.SetReports(eng)
	if err := b.Start(ctx); err != nil {
		closeAll()
		return nil, nil, err
	}
	return b, func() { b.Close(); store.Close() }, nil
}

func provisionDevices(ctx context.Context, store ota.Store, n int, out string) error {
	p := &ota.Product{ID: ota.NewProductID(), Name: "bench"}
	if err := store.ProductCreate(ctx, p); err != nil {
		return err
	}
	devs := make([]*ota.Device, n)
	for i := range devs {
		devs[i] = &ota.Device{ProductID: p.ID, Name: fmt.Sprintf("sim-%05d", i), Secret: ota.NewDeviceSecret()}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				if err := store.DeviceCreate(ctx, devs[i]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.Write([]string{"product_id", "device_name", "secret"})
	for _, d := range devs {
		w.Write([]string{d.ProductID, d.Name, d.Secret})
	}
	w.Flush()
	if err := errors.Join(w.Error(), f.Close()); err != nil {
		return err
	}
	return nil
}

// noURLs signs no download URLs: the benchmark runs no jobs.
type noURLs struct{}

func (noURLs) URL(*ota.Firmware, time.Time) string { return "http://fw.invalid/none" }
