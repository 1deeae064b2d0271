package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/broker"
	"github.com/otad/otad/internal/engine"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/storetest"
	"github.com/otad/otad/internal/store/testdb"
)

// syncBuffer is a bytes.Buffer safe for the simulator goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type noURLs struct{}

func (noURLs) URL(*ota.Firmware, time.Time) string { return "http://fw.test/x" }

// The simulator connects devices to the real broker, reports, and carries
// out an upgrade otad orders: download, progress, done, new version.
func TestSimulatorUpgrade(t *testing.T) {
	store := testdb.SQLite(t)
	log := slog.New(slog.DiscardHandler)
	b, err := broker.New(log, store, broker.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := engine.New(engine.Config{Logger: log, Store: store, Notifier: b, URLs: noURLs{}})
	if err != nil {
		t.Fatal(err)
	}
	b.SetReports(eng)
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	p := storetest.MustProduct(t, store)
	csv := "product_id,device_name,secret\n"
	var devs []*ota.Device
	for i := range 5 {
		d := storetest.MustDevice(t, store, p.ID, fmt.Sprintf("sim-%d", i))
		devs = append(devs, d)
		csv += d.ProductID + "," + d.Name + "," + d.Secret + "\n"
	}
	file := filepath.Join(t.TempDir(), "devices.csv")
	if err := os.WriteFile(file, []byte(csv), 0o600); err != nil {
		t.Fatal(err)
	}

	image := bytes.Repeat([]byte("firmware"), 20000)
	sum := md5.Sum(image)
	fw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/good":
			w.Write(image)
		case "/expired":
			http.Error(w, "expired", http.StatusForbidden)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(fw.Close)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-broker", b.Addr(), "-devices", file, "-reports", "3", "-hold", "5m", "-upgrade"}, &out)
	}()
	wait := func(what string, cond func() bool) {
		t.Helper()
		end := time.Now().Add(60 * time.Second)
		for !cond() {
			if time.Now().After(end) {
				t.Fatalf("timed out waiting for %s; output:\n%s", what, out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	wait("devices holding", func() bool { return strings.Contains(out.String(), `"phase":"holding"`) })
	get := func(d *ota.Device) *ota.Device {
		got, err := store.DeviceGet(context.Background(), d.ProductID, d.Name)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, d := range devs {
		if got := get(d); got.Version != "1.0.0" || !got.Online {
			t.Fatalf("%s: version %q online %v", d.Name, got.Version, got.Online)
		}
	}

	order := func(d *ota.Device, path string) {
		t.Helper()
		err := b.Publish(context.Background(), d.ProductID, d.Name, ota.UpdateFirmware{
			Version: "1.0.1", URL: fw.URL + path, MD5: hex.EncodeToString(sum[:]), FileSize: int64(len(image)),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	order(devs[0], "/good")
	order(devs[1], "/expired")
	order(devs[2], "/missing")
	wait("upgrade done", func() bool { return get(devs[0]).Version == "1.0.1" })
	wait("failures reported", func() bool {
		u1, u2 := get(devs[1]).Upgrade, get(devs[2]).Upgrade
		return u1 != nil && u1.State == ota.ExecFailed && u2 != nil && u2.State == ota.ExecFailed
	})
	if u := get(devs[0]).Upgrade; u.State != ota.ProgressDone || u.Percent != 100 {
		t.Fatalf("upgrade %+v", u)
	}
	if c := get(devs[1]).Upgrade.ResultCode; c != -3 {
		t.Fatalf("expired URL: result code %d, want -3", c)
	}
	if c := get(devs[2]).Upgrade.ResultCode; c != -2 {
		t.Fatalf("missing firmware: result code %d, want -2", c)
	}
	evs, err := store.DeviceEventList(context.Background(), ota.DeviceEventListParams{ProductID: devs[0].ProductID, DeviceName: devs[0].Name, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Type == ota.EventReportProgress && evs[i].Version == "1.0.1" {
			states = append(states, evs[i].State)
		}
	}
	if len(states) < 3 || states[0] != ota.ProgressDownloading || states[len(states)-2] != ota.ProgressBurning || states[len(states)-1] != ota.ProgressDone {
		t.Fatalf("progress history %v", states)
	}

	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("simulator did not stop")
	}
	var phases []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("output line %q: %v", line, err)
		}
		phases = append(phases, m)
	}
	if len(phases) != 4 || phases[0]["connected"] != 5.0 || phases[1]["reports"] != 15.0 || phases[3]["upgrades_done"] != 1.0 || phases[3]["upgrades_failed"] != 2.0 {
		t.Fatalf("output:\n%s", out.String())
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-devices", "x", "-broker", "10.0.0.1:1883"},
		{"-devices", "x", "-broker", "example.com:1883"},
		{"-devices", "x", "-n", "60000"},
		{"-devices", "x", "-broker", "nonsense"},
		{"-devices", "x", "-behaviour", "explode=5%"},
		{"-devices", "x", "-behaviour", "fail:-4=60%,timeout=50%"},
		{"-devices", "x", "-download-rate", "-1"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	if _, err := parseFlags([]string{"-devices", "x", "-broker", "10.0.0.1:1883", "-allow-remote"}); err != nil {
		t.Error(err)
	}
}
