// Command otasim simulates devices against otad's MQTT broker (or any MQTT
// broker, for comparison): N devices with real credentials connect as the
// Tencent device SDKs do, report their version, send QoS 1 reports, hold
// their connections idle, and (with -upgrade) carry out update_firmware
// orders, or misbehave as told (-behaviour: fail with a code, fail once
// then succeed, time out, stall, drop offline mid-download and resume, roll
// back). It prints one JSON line per phase on stdout.
//
//	otasim provision -token $TOKEN -product SIM0000001 -n 100 -out devices.csv
//	otasim -devices devices.csv -upgrade -hold 10m -behaviour "fail:-4=10%,offline=5%"
//	otasim -devices devices.csv -n 10000 -hold 60s
//	otasim -devices devices.csv -n 1000 -reports 50
//	otasim -devices devices.csv -hold 2m -report-every 1s -latency-log lat.txt
//
// devices.csv holds "product_id,device_name,secret" lines (a header line
// is skipped), with an optional fourth column naming a device's behaviour.
// It targets loopback addresses only unless -allow-remote.
package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/otad/otad/internal/ota"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "otasim:", err)
		os.Exit(1)
	}
}

// maxDevices bounds a run, whatever the flags say.
const maxDevices = 50000

type config struct {
	broker         string
	brokers        []string // broker, split
	devicesFile    string
	n              int
	connectRate    int
	connectTimeout time.Duration
	keepalive      time.Duration
	version        string
	expectRsp      bool
	reports        int
	hold           time.Duration
	upgrade        bool
	upgradeTimeout time.Duration
	timeout        time.Duration
	allowRemote    bool
	behaviours     behaviourMix
	reconnect      bool
	downloadRate   int64
	offlineFor     time.Duration
	perDevice      bool
	reportEvery    time.Duration
	latencyLog     string
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("otasim", flag.ContinueOnError)
	fs.StringVar(&c.broker, "broker", "127.0.0.1:1883", "MQTT broker address (host:port); a comma-separated list fails over: "+
		"devices connect to the first and, when a connection attempt fails, try the next, as behind a TCP load balancer")
	fs.StringVar(&c.devicesFile, "devices", "", "CSV file of product_id,device_name,secret (required)")
	fs.IntVar(&c.n, "n", 0, "number of devices to simulate (0: all in the file)")
	fs.IntVar(&c.connectRate, "connect-rate", 1000, "new connections per second")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 30*time.Second, "timeout of one device's connect, subscribe and first report")
	fs.DurationVar(&c.keepalive, "keepalive", 240*time.Second, "MQTT keepalive")
	fs.StringVar(&c.version, "version", "1.0.0", "firmware version the devices report")
	fs.BoolVar(&c.expectRsp, "expect-rsp", true, "wait for report_version_rsp (false against a plain broker)")
	fs.IntVar(&c.reports, "reports", 0, "QoS 1 report_progress messages each device sends, one after the other, after connecting")
	fs.DurationVar(&c.hold, "hold", 0, "keep the connections open this long after reporting (SIGINT ends it early)")
	fs.BoolVar(&c.upgrade, "upgrade", false, "act on update_firmware: download, check MD5, report progress and done or fail")
	fs.DurationVar(&c.upgradeTimeout, "upgrade-timeout", 5*time.Minute, "time limit of one upgrade")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Minute, "time limit of the whole run")
	fs.BoolVar(&c.allowRemote, "allow-remote", false, "allow a broker address that is not loopback")
	mix := fs.String("behaviour", "", "shares of devices that misbehave on update_firmware, e.g. \"fail:-4=10%,flaky=5%,timeout=5%,stall=1%,offline=5%,rollback=2%\"; "+
		"the rest succeed; laid out in order over the devices of the file, so a run is reproducible; a fourth CSV column overrides it per device")
	fs.BoolVar(&c.reconnect, "reconnect", false, "reconnect (and report the version) when the broker drops the connection, e.g. when otad restarts")
	fs.Int64Var(&c.downloadRate, "download-rate", 0, "bytes per second each device downloads at (0: as fast as it can)")
	fs.DurationVar(&c.offlineFor, "offline-for", 2*time.Second, "how long an offline device stays away before it reconnects and resumes")
	fs.BoolVar(&c.perDevice, "per-device", false, "at the end, print one line per device: behaviour, version, updates received, attempts, reconnects")
	fs.DurationVar(&c.reportEvery, "report-every", 0, "while holding, each device publishes report_version at QoS 1 this often (the devices' starts spread over one interval)")
	fs.StringVar(&c.latencyLog, "latency-log", "", "with -report-every, write each report's PUBACK round trip to this file at the end: \"unix_ms latency_us\" lines")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var err error
	if c.behaviours, err = parseBehaviourMix(*mix); err != nil {
		return c, err
	}
	if c.reportEvery < 0 || c.reportEvery > 0 && c.reportEvery < 10*time.Millisecond {
		return c, errors.New("-report-every must be 0 or at least 10ms")
	}
	if c.latencyLog != "" && c.reportEvery == 0 {
		return c, errors.New("-latency-log needs -report-every")
	}
	if c.downloadRate < 0 || c.offlineFor < 0 {
		return c, errors.New("-download-rate and -offline-for must not be negative")
	}
	if c.devicesFile == "" {
		return c, errors.New("-devices is required")
	}
	c.brokers = strings.Split(c.broker, ",")
	for _, b := range c.brokers {
		host, _, err := net.SplitHostPort(b)
		if err != nil {
			return c, fmt.Errorf("-broker: %w", err)
		}
		if !c.allowRemote && !isLoopback(host) {
			return c, fmt.Errorf("-broker %s is not a loopback address (use -allow-remote)", b)
		}
	}
	if c.n < 0 || c.n > maxDevices || c.connectRate <= 0 || c.reports < 0 {
		return c, fmt.Errorf("-n must be 0 to %d, -connect-rate positive, -reports not negative", maxDevices)
	}
	return c, nil
}

// stats are counted across devices; the JSON names are the output's.
type stats struct {
	Connected      atomic.Int64 `json:"-"`
	ConnectFailed  atomic.Int64 `json:"-"`
	Reports        atomic.Int64 `json:"-"`
	ReportsFailed  atomic.Int64 `json:"-"`
	Updates        atomic.Int64 `json:"-"`
	UpgradesDone   atomic.Int64 `json:"-"`
	UpgradesFailed atomic.Int64 `json:"-"`
	BadMessages    atomic.Int64 `json:"-"`
	Reconnects     atomic.Int64 `json:"-"`
	Upgrading      atomic.Int64 `json:"-"` // devices between update_firmware and their last report
	MaxUpgrading   atomic.Int64 `json:"-"` // the most at once
}

// isLoopback reports whether host is a loopback address or localhost.
func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// upgradeStarted counts a device that starts upgrading.
func (s *simulator) upgradeStarted() {
	n := s.stats.Upgrading.Add(1)
	for {
		m := s.stats.MaxUpgrading.Load()
		if n <= m || s.stats.MaxUpgrading.CompareAndSwap(m, n) {
			return
		}
	}
}

type simulator struct {
	cfg   config
	stats stats
	http  *http.Client

	mu        sync.Mutex
	latencies []time.Duration // QoS 1 report round trips
	timed     []timedLatency  // -report-every's round trips
	errs      map[string]int  // first errors by text, for the summary
}

func (s *simulator) count(c *atomic.Int64) { c.Add(1) }

func (s *simulator) fail(err error) {
	s.mu.Lock()
	if len(s.errs) < 20 || s.errs[err.Error()] > 0 {
		s.errs[err.Error()]++
	}
	s.mu.Unlock()
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "provision" {
		return provision(ctx, args[1:], stdout)
	}
	cfg, err := parseFlags(args)
	if err != nil {
		return err
	}
	ids, err := readDevices(cfg.devicesFile)
	if err != nil {
		return err
	}
	if cfg.n > 0 {
		if cfg.n > len(ids) {
			return fmt.Errorf("-n %d but only %d devices in %s", cfg.n, len(ids), cfg.devicesFile)
		}
		ids = ids[:cfg.n]
	}
	if len(ids) > maxDevices {
		return fmt.Errorf("%d devices, more than %d", len(ids), maxDevices)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	s := &simulator{cfg: cfg, errs: map[string]int{}, http: &http.Client{Transport: &http.Transport{DisableCompression: true}}}
	out := json.NewEncoder(stdout)

	// Connect: each device connects, subscribes and reports its version.
	devices := make([]*device, len(ids))
	tick := time.NewTicker(time.Second / time.Duration(cfg.connectRate))
	defer tick.Stop()
	var wg sync.WaitGroup
	start := time.Now()
	for i, id := range ids {
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		b := cfg.behaviours.of(i, len(ids))
		if id.Behaviour != nil {
			b = *id.Behaviour
		}
		d := newDevice(ctx, s, id, b)
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, cfg.connectTimeout)
			defer cancel()
			err := d.connect(cctx)
			if err == nil {
				err = d.reportVersion(cctx)
			}
			if err != nil {
				s.count(&s.stats.ConnectFailed)
				s.fail(err)
				if c := d.getConn(); c != nil {
					c.close()
				}
				return
			}
			s.count(&s.stats.Connected)
			devices[i] = d
			if cfg.reconnect {
				go d.supervise()
			}
		}()
	}
	wg.Wait()
	live := slices.DeleteFunc(devices, func(d *device) bool { return d == nil })
	connectSecs := time.Since(start).Seconds()
	out.Encode(map[string]any{
		"phase": "connected", "devices": len(ids), "connected": s.stats.Connected.Load(),
		"failed": s.stats.ConnectFailed.Load(), "seconds": round(connectSecs),
		"connects_per_second": round(float64(s.stats.Connected.Load()) / connectSecs), "errors": s.errors(),
	})

	// Report: every device sends its reports one after the other, each
	// waiting for its PUBACK, all devices at once.
	if cfg.reports > 0 {
		start = time.Now()
		for _, d := range live {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lat := make([]time.Duration, 0, cfg.reports)
				for i := range cfg.reports {
					payload := fmt.Sprintf(`{"type": "report_progress", "report": {"progress": {"state": "downloading", "percent": "%d", "result_code": "0", "result_msg": ""}, "version": "%s"}}`,
						i*100/cfg.reports, cfg.version)
					rctx, cancel := context.WithTimeout(ctx, cfg.connectTimeout)
					t0 := time.Now()
					err := d.getConn().publish(rctx, d.reportTopic(), 1, []byte(payload))
					cancel()
					if err != nil {
						s.count(&s.stats.ReportsFailed)
						s.fail(fmt.Errorf("report: %w", err))
						break
					}
					lat = append(lat, time.Since(t0))
					s.count(&s.stats.Reports)
				}
				s.mu.Lock()
				s.latencies = append(s.latencies, lat...)
				s.mu.Unlock()
			}()
		}
		wg.Wait()
		secs := time.Since(start).Seconds()
		slices.Sort(s.latencies)
		out.Encode(map[string]any{
			"phase": "reported", "devices": len(live), "reports": s.stats.Reports.Load(), "failed": s.stats.ReportsFailed.Load(),
			"seconds": round(secs), "reports_per_second": round(float64(s.stats.Reports.Load()) / secs),
			"p50_ms": ms(pct(s.latencies, 50)), "p99_ms": ms(pct(s.latencies, 99)), "max_ms": ms(pct(s.latencies, 100)),
			"errors": s.errors(),
		})
	}

	// Hold: stay connected and idle (keepalive pings only).
	if cfg.hold > 0 {
		out.Encode(map[string]any{"phase": "holding", "connected": liveCount(live), "seconds": cfg.hold.Seconds()})
		s.holdAll(ctx, live, cfg.hold)
		if cfg.reportEvery > 0 {
			if err := s.writeLatencies(out); err != nil {
				return err
			}
		}
	}
	stillConnected := liveCount(live)
	online := make([]bool, len(live))
	for i, d := range live {
		online[i] = d.online()
		d.stop()
	}
	if cfg.perDevice {
		for i, d := range live {
			out.Encode(map[string]any{
				"phase": "device", "device": d.id.Name, "behaviour": d.behave.String(), "version": d.getVersion(), "online_at_end": online[i],
				"updates": d.updates.Load(), "attempts": d.attempts.Load(), "upgrades_done": d.done.Load(),
				"upgrades_failed": d.failed.Load(), "reconnects": d.reconnects.Load(), "resumed_from": d.resumedFrom.Load(),
			})
		}
	}
	out.Encode(map[string]any{
		"phase": "done", "still_connected_at_end": stillConnected, "updates": s.stats.Updates.Load(),
		"upgrades_done": s.stats.UpgradesDone.Load(), "upgrades_failed": s.stats.UpgradesFailed.Load(),
		"reconnects": s.stats.Reconnects.Load(), "max_upgrading_at_once": s.stats.MaxUpgrading.Load(),
		"bad_messages": s.stats.BadMessages.Load(), "errors": s.errors(),
	})
	if s.stats.BadMessages.Load() > 0 {
		return errors.New("the broker sent messages a device SDK would not understand")
	}
	return nil
}

// holdAll keeps every connection alive for d, pinging at the keepalive
// interval, until d passes or ctx ends.
func (s *simulator) holdAll(ctx context.Context, live []*device, d time.Duration) {
	end := time.NewTimer(d)
	defer end.Stop()
	ping := time.NewTicker(s.cfg.keepalive / 2)
	defer ping.Stop()
	if s.cfg.reportEvery > 0 {
		rctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		for i, dv := range live {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.reportEvery(rctx, dv, time.Duration(i)*s.cfg.reportEvery/time.Duration(len(live)))
			}()
		}
	}
	for {
		select {
		case <-end.C:
			return
		case <-ctx.Done():
			return
		case <-ping.C:
			for _, dv := range live {
				if c := dv.getConn(); c != nil {
					_ = c.ping()
				}
			}
		}
	}
}

// timedLatency is one PUBACK round trip and when its report was sent.
type timedLatency struct {
	at  time.Time
	lat time.Duration
}

// reportEvery publishes d's report_version at QoS 1 every
// cfg.reportEvery, the first after offset, until ctx ends, and records
// each one's PUBACK round trip (a report still unanswered at the end is
// not counted; one that fails is).
func (s *simulator) reportEvery(ctx context.Context, d *device, offset time.Duration) {
	select {
	case <-time.After(offset):
	case <-ctx.Done():
		return
	}
	tick := time.NewTicker(s.cfg.reportEvery)
	defer tick.Stop()
	for {
		if c := d.getConn(); c != nil {
			payload := fmt.Sprintf(`{"type": "report_version", "report": {"version": "%s"}}`, d.getVersion())
			pctx, cancel := context.WithTimeout(ctx, s.cfg.connectTimeout)
			t0 := time.Now()
			err := c.publish(pctx, d.reportTopic(), 1, []byte(payload))
			cancel()
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				s.count(&s.stats.ReportsFailed)
				s.fail(fmt.Errorf("periodic report: %w", err))
			default:
				s.count(&s.stats.Reports)
				s.mu.Lock()
				s.timed = append(s.timed, timedLatency{t0, time.Since(t0)})
				s.mu.Unlock()
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// writeLatencies writes -report-every's round trips to -latency-log and
// prints their summary.
func (s *simulator) writeLatencies(out *json.Encoder) error {
	s.mu.Lock()
	timed := slices.Clone(s.timed)
	s.mu.Unlock()
	lats := make([]time.Duration, len(timed))
	for i, t := range timed {
		lats[i] = t.lat
	}
	slices.Sort(lats)
	out.Encode(map[string]any{
		"phase": "periodic_reports", "reports": len(timed), "failed": s.stats.ReportsFailed.Load(),
		"p50_ms": ms(pct(lats, 50)), "p99_ms": ms(pct(lats, 99)), "max_ms": ms(pct(lats, 100)), "errors": s.errors(),
	})
	if s.cfg.latencyLog == "" {
		return nil
	}
	slices.SortFunc(timed, func(a, b timedLatency) int { return a.at.Compare(b.at) })
	var b strings.Builder
	for _, t := range timed {
		fmt.Fprintf(&b, "%d %d\n", t.at.UnixMilli(), t.lat.Microseconds())
	}
	return os.WriteFile(s.cfg.latencyLog, []byte(b.String()), 0o644)
}

func liveCount(live []*device) int {
	n := 0
	for _, d := range live {
		if d.online() {
			n++
		}
	}
	return n
}

func (s *simulator) errors() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.errs)
}

func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted) - 1) * p / 100
	return sorted[i]
}

func ms(d time.Duration) float64 { return round(float64(d) / float64(time.Millisecond)) }
func round(f float64) float64    { return float64(int64(f*100+0.5)) / 100 }

// readDevices reads product_id,device_name,secret lines, with an optional
// fourth column naming the device's behaviour.
func readDevices(path string) ([]identity, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(bufio.NewReader(f))
	r.FieldsPerRecord = -1
	var ids []identity
	for line := 1; ; line++ {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if line == 1 && rec[0] == "product_id" {
			continue
		}
		if len(rec) != 3 && len(rec) != 4 {
			return nil, fmt.Errorf("%s:%d: want product_id,device_name,secret[,behaviour]", path, line)
		}
		id := identity{ProductID: rec[0], Name: rec[1], Secret: rec[2]}
		if len(rec) == 4 && rec[3] != "" {
			b, err := parseBehaviour(rec[3])
			if err != nil {
				return nil, fmt.Errorf("%s:%d: %w", path, line, err)
			}
			id.Behaviour = &b
		}
		if err := ota.ValidateProductID(id.ProductID); err != nil {
			return nil, fmt.Errorf("%s:%d: %s", path, line, ota.ErrorMessage(err))
		}
		if err := ota.ValidateDeviceName(id.Name); err != nil {
			return nil, fmt.Errorf("%s:%d: %s", path, line, ota.ErrorMessage(err))
		}
		if _, err := ota.DecodeDeviceSecret(id.Secret); err != nil {
			return nil, fmt.Errorf("%s:%d: %s", path, line, ota.ErrorMessage(err))
		}
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: no devices", path)
	}
	return ids, nil
}
