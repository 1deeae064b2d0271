package main

// End-to-end upgrade jobs: the real daemon, devices simulated by the real
// otasim binary over MQTT (PROTOCOL.md credentials and messages) and real
// HTTP downloads with MD5 check and Range resume, on both store engines.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/store/testdb"
)

var simBuild = sync.OnceValues(func() (string, error) {
	dir, err := binDir("otasim-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "otasim")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "../otasim")...).CombinedOutput()
	if err != nil {
		return "", &buildError{string(out), err}
	}
	return bin, nil
})

// simProcess is otasim running as a child process.
type simProcess struct {
	cmd    *exec.Cmd
	out    *syncBuffer
	stderr *syncBuffer
	exited chan error
}

// simDevice is otasim's account of one device (-per-device).
type simDevice struct {
	Device         string `json:"device"`
	Behaviour      string `json:"behaviour"`
	Version        string `json:"version"`
	Updates        int    `json:"updates"`
	Attempts       int    `json:"attempts"`
	UpgradesDone   int    `json:"upgrades_done"`
	UpgradesFailed int    `json:"upgrades_failed"`
	Reconnects     int    `json:"reconnects"`
	ResumedFrom    int64  `json:"resumed_from"`
}

// simSummary is otasim's last line.
type simSummary struct {
	MaxUpgrading int            `json:"max_upgrading_at_once"`
	BadMessages  int            `json:"bad_messages"`
	Errors       map[string]int `json:"errors"`
}

// startSim runs otasim over the devices in csvFile against broker,
// carrying out upgrades, and waits until every device is connected and
// has reported its version.
func startSim(t *testing.T, broker, csvFile string, args ...string) *simProcess {
	t.Helper()
	bin, err := simBuild()
	if err != nil {
		t.Fatal(err)
	}
	args = append([]string{"-broker", broker, "-devices", csvFile, "-upgrade", "-hold", "10m", "-per-device",
		"-connect-rate", "200", "-timeout", "5m"}, args...)
	p := &simProcess{cmd: exec.Command(bin, args...), out: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	waitFor(t, "otasim's devices to connect", func() bool {
		if strings.Contains(p.out.String(), `"phase":"holding"`) {
			return true
		}
		select {
		case err := <-p.exited:
			t.Fatalf("otasim exited: %v\n%s%s", err, p.out, p.stderr)
		default:
		}
		return false
	})
	var connected struct{ Devices, Connected int }
	json.Unmarshal([]byte(strings.SplitN(p.out.String(), "\n", 2)[0]), &connected)
	if connected.Connected != connected.Devices {
		t.Fatalf("otasim connected %d of %d devices:\n%s", connected.Connected, connected.Devices, p.out)
	}
	return p
}

// stop ends otasim (SIGINT) and returns its account of each device.
func (p *simProcess) stop(t *testing.T) (map[string]simDevice, simSummary) {
	t.Helper()
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("otasim: %v\n%s%s", err, p.out, p.stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("otasim did not stop:\n%s", p.out)
	}
	devs := map[string]simDevice{}
	var sum simSummary
	for _, line := range strings.Split(strings.TrimSpace(p.out.String()), "\n") {
		var phase struct{ Phase string }
		if err := json.Unmarshal([]byte(line), &phase); err != nil {
			t.Fatalf("otasim output %q: %v", line, err)
		}
		switch phase.Phase {
		case "device":
			var d simDevice
			json.Unmarshal([]byte(line), &d)
			devs[d.Device] = d
		case "done":
			json.Unmarshal([]byte(line), &sum)
		}
	}
	if sum.BadMessages != 0 {
		t.Fatalf("otad sent messages a device SDK would not understand:\n%s", p.out)
	}
	if strings.Contains(p.stderr.String(), "DATA RACE") {
		t.Fatalf("otasim:\n%s", p.stderr)
	}
	return devs, sum
}

// provisionDevices creates devices on version 1.0.0 through the API and
// writes otasim's CSV, the fourth column naming each one's behaviour.
func (a *testApp) provisionDevices(t *testing.T, pid string, behaviours map[string]string, names ...string) string {
	t.Helper()
	var csv strings.Builder
	csv.WriteString("product_id,device_name,secret\n")
	for _, name := range names {
		var d struct{ Secret string }
		r := a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": name, "version": "1.0.0"})
		r.wantStatus(t, 201)
		r.decode(t, &d)
		fmt.Fprintf(&csv, "%s,%s,%s,%s\n", pid, name, d.Secret, behaviours[name])
	}
	file := filepath.Join(t.TempDir(), "devices.csv")
	if err := os.WriteFile(file, []byte(csv.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// writeCSV writes the subset names of a CSV to a new file.
func writeCSV(t *testing.T, from string, names ...string) string {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	out := []string{lines[0]}
	for _, l := range lines[1:] {
		for _, n := range names {
			if f := strings.Split(l, ","); len(f) > 1 && f[1] == n {
				out = append(out, l)
			}
		}
	}
	file := filepath.Join(t.TempDir(), "subset.csv")
	if err := os.WriteFile(file, []byte(strings.Join(out, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// otasim provision creates the product and the devices through the
// console API and writes credentials the simulated devices log in with.
func TestSimProvision(t *testing.T) {
	a := startApp(t, "sqlite", nil)
	bin, err := simBuild()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "devices.csv")
	args := []string{"provision", "-api", a.HTTPURL(), "-token", testToken, "-product", "PROV000001", "-n", "25", "-version", "1.2.3", "-out", file}
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("otasim provision: %v\n%s", err, out)
	}
	var page struct {
		Items []struct{ Name, Version string }
	}
	a.do("GET", "/v1/products/PROV000001/devices?limit=100", nil).decode(t, &page)
	if len(page.Items) != 25 || page.Items[0].Name != "sim-00000" || page.Items[0].Version != "1.2.3" {
		t.Fatalf("devices after provision: %+v", page.Items)
	}
	sim := startSim(t, a.MQTTAddr(), file, "-version", "1.2.3") // fails unless all 25 log in
	sim.stop(t)
	// The secrets are shown once: provisioning the same names again fails.
	if out, err := exec.Command(bin, args...).CombinedOutput(); err == nil || !strings.Contains(string(out), "409") {
		t.Fatalf("second provision: %v\n%s", err, out)
	}
}

type execJSON struct {
	DeviceName string     `json:"device_name"`
	State      string     `json:"state"`
	Percent    int        `json:"percent"`
	Attempts   int        `json:"attempts"`
	ResultCode int        `json:"result_code"`
	ResultName string     `json:"result_name"`
	ResultMsg  string     `json:"result_msg"`
	Phase      int        `json:"phase"`
	NotifiedAt *time.Time `json:"notified_at"`
}

func (a *testApp) job(t *testing.T, pid, id string) jobJSON {
	t.Helper()
	var j jobJSON
	r := a.do("GET", "/v1/products/"+pid+"/jobs/"+id, nil)
	r.wantStatus(t, 200)
	r.decode(t, &j)
	return j
}

func (a *testApp) jobExecutions(t *testing.T, pid, id string) map[string]execJSON {
	t.Helper()
	var page struct{ Items []execJSON }
	r := a.do("GET", "/v1/products/"+pid+"/jobs/"+id+"/devices?limit=1000", nil)
	r.wantStatus(t, 200)
	r.decode(t, &page)
	xs := map[string]execJSON{}
	for _, x := range page.Items {
		xs[x.DeviceName] = x
	}
	return xs
}

func (a *testApp) createJob(t *testing.T, pid string, body map[string]any) jobJSON {
	t.Helper()
	var j jobJSON
	r := a.do("POST", "/v1/products/"+pid+"/jobs", body)
	r.wantStatus(t, 201)
	r.decode(t, &j)
	return j
}

func inFlight(j jobJSON) int {
	return j.Counts["notified"] + j.Counts["downloading"] + j.Counts["burning"]
}

// One job over devices that succeed, are offline when it starts and connect
// later, drop offline mid-download and resume, fail once then succeed on
// the retry, fail every time, time out (silent after the download, or
// stalled half way through it), and roll back.
func TestJobDevicesEndToEnd(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		pid := "E2EJOB0001"
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "e2e"}).wantStatus(t, 201)
		behaviours := map[string]string{"ok-0": "ok", "ok-1": "ok", "late-0": "ok", "late-1": "ok",
			"offline-0": "offline", "flaky-0": "flaky:-1", "fail-0": "fail:-4", "timeout-0": "timeout", "stall-0": "stall", "rollback-0": "rollback"}
		online := []string{"ok-0", "ok-1", "offline-0", "flaky-0", "fail-0", "timeout-0", "stall-0", "rollback-0"}
		late := []string{"late-0", "late-1"}
		file := a.provisionDevices(t, pid, behaviours, append(online, late...)...)
		img := a.uploadFirmware(t, pid, "2.0.0", 64<<10)

		sim := startSim(t, a.MQTTAddr(), writeCSV(t, file, online...), "-offline-for", "1s")
		j := a.createJob(t, pid, map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"all": true},
			"timeout_seconds": 6, "max_retries": 1, "retry_backoff_seconds": 1})
		if j.Total != 10 {
			t.Fatalf("job %+v", j)
		}
		waitFor(t, "the online devices that succeed at once to be done", func() bool {
			xs := a.jobExecutions(t, pid, j.ID)
			return xs["ok-0"].State == "done" && xs["ok-1"].State == "done" && xs["offline-0"].State == "done"
		})
		// The offline devices wait, untouched, until they connect.
		xs := a.jobExecutions(t, pid, j.ID)
		for _, n := range late {
			if xs[n].State != "queued" || xs[n].Attempts != 0 {
				t.Fatalf("offline device %s: %+v", n, xs[n])
			}
		}
		lateSim := startSim(t, a.MQTTAddr(), writeCSV(t, file, late...))

		waitFor(t, "the job to complete", func() bool { return a.job(t, pid, j.ID).CompletedAt != nil })
		j = a.job(t, pid, j.ID)
		want := map[string]int{"queued": 0, "notified": 0, "downloading": 0, "burning": 0, "done": 6, "failed": 1, "timed_out": 2, "canceled": 0, "rolled_back": 1}
		if j.Status != "completed" || fmt.Sprint(j.Counts) != fmt.Sprint(want) {
			t.Fatalf("completed job: status %s counts %v, want %v", j.Status, j.Counts, want)
		}
		xs = a.jobExecutions(t, pid, j.ID)
		for name, w := range map[string]execJSON{
			"ok-0": {State: "done", Attempts: 1}, "ok-1": {State: "done", Attempts: 1},
			"late-0": {State: "done", Attempts: 1}, "late-1": {State: "done", Attempts: 1},
			"offline-0":  {State: "done", Attempts: 1},
			"flaky-0":    {State: "done", Attempts: 2},
			"fail-0":     {State: "failed", Attempts: 2, ResultCode: -4, ResultName: "md5_mismatch"},
			"timeout-0":  {State: "timed_out", Attempts: 2},
			"stall-0":    {State: "timed_out", Attempts: 2},
			"rollback-0": {State: "rolled_back", Attempts: 1},
		} {
			x := xs[name]
			if x.State != w.State || x.Attempts != w.Attempts || x.ResultCode != w.ResultCode || x.ResultName != w.ResultName {
				t.Errorf("%s: %+v, want state %s attempts %d result_code %d (%s)", name, x, w.State, w.Attempts, w.ResultCode, w.ResultName)
			}
		}
		if m := xs["rollback-0"].ResultMsg; !strings.Contains(m, "reports version 1.0.0 after done") {
			t.Errorf("rollback result_msg %q", m)
		}
		if m := xs["timeout-0"].ResultMsg; !strings.Contains(m, "no result within 6s") {
			t.Errorf("timeout result_msg %q", m)
		}

		// What the devices received and did.
		devs, _ := sim.stop(t)
		lateDevs, _ := lateSim.stop(t)
		for n, d := range lateDevs {
			devs[n] = d
		}
		for name, w := range map[string]simDevice{
			"ok-0": {Version: "2.0.0", Attempts: 1, UpgradesDone: 1}, "ok-1": {Version: "2.0.0", Attempts: 1, UpgradesDone: 1},
			"late-0": {Version: "2.0.0", Attempts: 1, UpgradesDone: 1}, "late-1": {Version: "2.0.0", Attempts: 1, UpgradesDone: 1},
			"offline-0": {Version: "2.0.0", Attempts: 1, UpgradesDone: 1, Reconnects: 1, ResumedFrom: int64(len(img) / 2)},
			"flaky-0":   {Version: "2.0.0", Attempts: 2, UpgradesDone: 1, UpgradesFailed: 1},
			"fail-0":    {Version: "1.0.0", Attempts: 2, UpgradesFailed: 2},
			"timeout-0": {Version: "1.0.0", Attempts: 2},
			// Stuck half way through its download, it ignores the retry's order.
			"stall-0":    {Version: "1.0.0", Attempts: 1, Updates: 2},
			"rollback-0": {Version: "1.0.0", Attempts: 1, UpgradesDone: 1},
		} {
			d := devs[name]
			if d.Version != w.Version || d.Attempts != w.Attempts || d.UpgradesDone != w.UpgradesDone ||
				d.UpgradesFailed != w.UpgradesFailed || d.Reconnects != w.Reconnects || d.ResumedFrom != w.ResumedFrom {
				t.Errorf("device %s: %+v, want %+v", name, d, w)
			}
			// One update_firmware per attempt; the offline device may get
			// it once more when it reconnects mid-download (and ignores it).
			if w.Updates != 0 && d.Updates != w.Updates {
				t.Errorf("device %s received update_firmware %d times, want %d", name, d.Updates, w.Updates)
			} else if extra := d.Updates - d.Attempts; w.Updates == 0 && (extra < 0 || extra > d.Reconnects) {
				t.Errorf("device %s received update_firmware %d times in %d attempts", name, d.Updates, d.Attempts)
			}
		}
		var dev struct{ Version string }
		a.do("GET", "/v1/products/"+pid+"/devices/offline-0", nil).decode(t, &dev)
		if dev.Version != "2.0.0" {
			t.Errorf("offline-0 is on %q after resuming its download", dev.Version)
		}
	})
}

// A job canceled half way: queued devices are canceled and never hear of
// it, the device upgrading meanwhile finishes, and the job closes.
func TestJobCancelEndToEnd(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		pid := "E2ECAN0001"
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "e2e"}).wantStatus(t, 201)
		names := []string{"c0", "c1", "c2", "c3", "c4", "c5"}
		file := a.provisionDevices(t, pid, nil, names...)
		a.uploadFirmware(t, pid, "2.0.0", 16<<10)
		// Each download takes about a second.
		sim := startSim(t, a.MQTTAddr(), file, "-download-rate", "16384")
		j := a.createJob(t, pid, map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"all": true},
			"timeout_seconds": 60, "max_concurrent": 1})
		waitFor(t, "a first device to be done", func() bool { return a.job(t, pid, j.ID).Counts["done"] >= 1 })
		r := a.do("POST", "/v1/products/"+pid+"/jobs/"+j.ID+"/cancel", nil)
		r.wantStatus(t, 200)
		waitFor(t, "the canceled job to close", func() bool { return a.job(t, pid, j.ID).CompletedAt != nil })
		j = a.job(t, pid, j.ID)
		if j.Status != "canceled" || j.Counts["done"]+j.Counts["canceled"] != 6 || j.Counts["canceled"] < 1 {
			t.Fatalf("canceled job: %s %v", j.Status, j.Counts)
		}
		devs, _ := sim.stop(t)
		for name, x := range a.jobExecutions(t, pid, j.ID) {
			d := devs[name]
			switch x.State {
			case "canceled":
				if x.Attempts != 0 || d.Updates != 0 || d.Version != "1.0.0" {
					t.Errorf("canceled %s: %+v; device %+v", name, x, d)
				}
			case "done":
				if x.Attempts != 1 || d.Updates != 1 || d.Version != "2.0.0" {
					t.Errorf("done %s: %+v; device %+v", name, x, d)
				}
			}
		}
	})
}

// Pacing, and a restart of otad in the middle of a job: with
// max_concurrent 2 never more than two devices upgrade at once, as the
// API and the devices see it; otad is stopped while devices upgrade and
// started again on the same database and ports; the devices reconnect and
// the job finishes with every device done, none notified again once done,
// and no more attempts than the at-least-once delivery explains.
func TestJobPacingAndRestart(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		env := map[string]string{
			"OTAD_HTTP_ADDR": freeAddr(t),
			"OTAD_MQTT_ADDR": freeAddr(t),
			"OTAD_DATA_DIR":  t.TempDir(),
		}
		if engine == "postgres" {
			env["OTAD_DATABASE_URL"] = testdb.PostgresURL(t)
		}
		a := startApp(t, engine, env)
		pid := "E2EPAC0001"
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "e2e"}).wantStatus(t, 201)
		var names []string
		for i := range 8 {
			names = append(names, fmt.Sprintf("p%d", i))
		}
		file := a.provisionDevices(t, pid, nil, names...)
		a.uploadFirmware(t, pid, "2.0.0", 16<<10)
		// Each download takes about a second.
		sim := startSim(t, a.MQTTAddr(), file, "-download-rate", "16384", "-reconnect")
		j := a.createJob(t, pid, map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"all": true},
			"timeout_seconds": 60, "max_concurrent": 2, "max_retries": 2, "retry_backoff_seconds": 1})

		maxSeen := 0
		watch := func(a *testApp) func() jobJSON {
			return func() jobJSON {
				j := a.job(t, pid, j.ID)
				maxSeen = max(maxSeen, inFlight(j))
				if inFlight(j) > 2 {
					t.Fatalf("%d devices upgrading at once with max_concurrent 2: %v", inFlight(j), j.Counts)
				}
				return j
			}
		}
		get := watch(a)
		waitFor(t, "two devices done", func() bool { return get().Counts["done"] >= 2 })
		var doneBefore []string
		for name, x := range a.jobExecutions(t, pid, j.ID) {
			if x.State == "done" {
				doneBefore = append(doneBefore, name)
			}
		}
		if len(doneBefore) == len(names) {
			t.Fatalf("the job finished before otad was stopped")
		}
		connects := connectCounts(t, a.get, pid)
		if err := a.stop(); err != nil {
			t.Fatal(err)
		}
		a = startApp(t, engine, env)
		get = watch(a)
		waitFor(t, "the job to complete after the restart", func() bool { return get().CompletedAt != nil })
		j = get()
		if j.Status != "completed" || j.Counts["done"] != 8 {
			t.Fatalf("job after restart: %s %v", j.Status, j.Counts)
		}
		if maxSeen < 1 {
			t.Fatalf("never saw a device upgrading")
		}
		// A device done before the restart may reconnect after the job
		// completed: wait for all of them before asking otasim.
		waitReconnected(t, a.get, pid, connects)
		devs, sum := sim.stop(t)
		if sum.MaxUpgrading > 2 {
			t.Errorf("the devices saw %d upgrading at once", sum.MaxUpgrading)
		}
		xs := a.jobExecutions(t, pid, j.ID)
		for _, name := range names {
			x, d := xs[name], devs[name]
			if d.Version != "2.0.0" || d.UpgradesDone < 1 || x.Attempts < 1 || x.Attempts > 2 || d.Reconnects < 1 {
				t.Errorf("%s: %+v; device %+v", name, x, d)
			}
			// Each attempt notifies once; a reconnect may re-send it once.
			if d.Updates < x.Attempts || d.Updates > x.Attempts+d.Reconnects {
				t.Errorf("%s got update_firmware %d times in %d attempts and %d reconnects", name, d.Updates, x.Attempts, d.Reconnects)
			}
		}
		for _, name := range doneBefore {
			if x, d := xs[name], devs[name]; x.Attempts != 1 || d.Updates != 1 || d.UpgradesDone != 1 {
				t.Errorf("%s, done before the restart, was upgraded again: %+v; device %+v", name, x, d)
			}
		}
		t.Logf("most devices upgrading at once: %d (API), %d (devices); done before the restart: %v", maxSeen, sum.MaxUpgrading, doneBefore)
	})
}

// otad killed (SIGKILL: no graceful shutdown) in the middle of a job and
// started again on the same database: the devices reconnect and the job
// finishes, every device done, none upgraded again once done, and every
// extra update_firmware explained by a reconnect or a retry.
func TestJobSurvivesKill(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		env := map[string]string{
			"OTAD_HTTP_ADDR": freeAddr(t), "OTAD_MQTT_ADDR": freeAddr(t),
			"OTAD_DATA_DIR": t.TempDir(), "OTAD_API_TOKEN": testToken,
		}
		if engine == "postgres" {
			env["OTAD_DATABASE_URL"] = testdb.PostgresURL(t)
		}
		p := startProcess(t, env)
		c := &consoleClient{t: t, base: p.httpURL}
		pid := "E2EKIL0001"
		c.call("POST", "/v1/products", strings.NewReader(`{"id": "`+pid+`", "name": "e2e"}`), 201, nil)
		var csv strings.Builder
		csv.WriteString("product_id,device_name,secret\n")
		var names []string
		for i := range 8 {
			name := fmt.Sprintf("k%d", i)
			var d struct{ Secret string }
			c.call("POST", "/v1/products/"+pid+"/devices", strings.NewReader(`{"name": "`+name+`", "version": "1.0.0"}`), 201, &d)
			fmt.Fprintf(&csv, "%s,%s,%s\n", pid, name, d.Secret)
			names = append(names, name)
		}
		file := filepath.Join(t.TempDir(), "devices.csv")
		if err := os.WriteFile(file, []byte(csv.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		c.call("POST", "/v1/products/"+pid+"/firmware?version=2.0.0", strings.NewReader(strings.Repeat("firmware", 2048)), 201, nil)
		// Each download takes about a second.
		sim := startSim(t, env["OTAD_MQTT_ADDR"], file, "-download-rate", "16384", "-reconnect")
		var j jobJSON
		c.call("POST", "/v1/products/"+pid+"/jobs", strings.NewReader(`{"firmware_version": "2.0.0", "targets": {"all": true},
			"timeout_seconds": 60, "max_concurrent": 2, "max_retries": 2, "retry_backoff_seconds": 1}`), 201, &j)
		executions := func() map[string]execJSON {
			var page struct{ Items []execJSON }
			c.call("GET", "/v1/products/"+pid+"/jobs/"+j.ID+"/devices?limit=100", nil, 200, &page)
			xs := map[string]execJSON{}
			for _, x := range page.Items {
				xs[x.DeviceName] = x
			}
			return xs
		}
		waitFor(t, "two devices done", func() bool {
			c.call("GET", "/v1/products/"+pid+"/jobs/"+j.ID, nil, 200, &j)
			return j.Counts["done"] >= 2
		})
		connects := connectCounts(t, c.get, pid)
		p.cmd.Process.Kill()
		<-p.exited
		var doneBefore []string
		// What the database holds now is what the killed otad left.
		p = startProcess(t, env)
		c.base = p.httpURL
		for name, x := range executions() {
			if x.State == "done" {
				doneBefore = append(doneBefore, name)
			}
		}
		if len(doneBefore) == len(names) {
			t.Fatalf("the job finished before otad was killed")
		}
		waitFor(t, "the job to complete after the kill", func() bool {
			c.call("GET", "/v1/products/"+pid+"/jobs/"+j.ID, nil, 200, &j)
			if n := inFlight(j); n > 2 {
				t.Fatalf("%d devices upgrading at once with max_concurrent 2: %v", n, j.Counts)
			}
			return j.CompletedAt != nil
		})
		if j.Status != "completed" || j.Counts["done"] != 8 {
			t.Fatalf("job after the kill: %s %v", j.Status, j.Counts)
		}
		// A device done before the kill may reconnect after the job
		// completed: wait for all of them before asking otasim.
		waitReconnected(t, c.get, pid, connects)
		devs, _ := sim.stop(t)
		xs := executions()
		for _, name := range names {
			x, d := xs[name], devs[name]
			if d.Version != "2.0.0" || x.Attempts < 1 || x.Attempts > 2 || d.Reconnects < 1 {
				t.Errorf("%s: %+v; device %+v", name, x, d)
			}
			if d.Updates < x.Attempts || d.Updates > x.Attempts+d.Reconnects {
				t.Errorf("%s got update_firmware %d times in %d attempts and %d reconnects", name, d.Updates, x.Attempts, d.Reconnects)
			}
		}
		for _, name := range doneBefore {
			if x, d := xs[name], devs[name]; x.Attempts != 1 || d.Updates != 1 || d.UpgradesDone != 1 {
				t.Errorf("%s, done before the kill, was upgraded again: %+v; device %+v", name, x, d)
			}
		}
		var seen []string
		for _, name := range names {
			seen = append(seen, fmt.Sprintf("%s: %d attempts, %d update_firmware", name, xs[name].Attempts, devs[name].Updates))
		}
		t.Logf("done before the kill: %v; %s", doneBefore, strings.Join(seen, ", "))
	})
}

// connectCounts counts each device's device.online events: its connects
// that otad recorded.
func connectCounts(t *testing.T, get func(path string, out any), pid string) map[string]int {
	t.Helper()
	_, bodies := logEvents(t, get, "type=device.online&product_id="+pid, 0)
	n := map[string]int{}
	for _, raw := range bodies {
		var e eventJSON
		json.Unmarshal(raw, &e)
		n[e.DeviceName]++
	}
	return n
}

// waitReconnected waits until every device of before (connectCounts
// taken before otad went down) has connected again. A device's online flag
// says nothing here: a killed otad leaves its devices marked online.
func waitReconnected(t *testing.T, get func(path string, out any), pid string, before map[string]int) {
	t.Helper()
	waitFor(t, "every device to reconnect", func() bool {
		now := connectCounts(t, get, pid)
		for name, n := range before {
			if now[name] <= n {
				return false
			}
		}
		return true
	})
}
