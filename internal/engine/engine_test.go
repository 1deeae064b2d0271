package engine_test

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/engine"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/testdb"
)

// outbox records what the engine sends, as the MQTT broker would deliver it.
type outbox struct {
	mu   sync.Mutex
	msgs map[string][]ota.UpdateFirmware
	down map[string]bool // devices whose delivery fails
}

func (o *outbox) Publish(_ context.Context, pid, name string, msg any) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.down[name] {
		return ota.Errorf(ota.EUNAVAILABLE, "device is not connected")
	}
	o.msgs[name] = append(o.msgs[name], msg.(ota.UpdateFirmware))
	return nil
}

func (o *outbox) Disconnect(string, string) {}

func (o *outbox) count(name string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.msgs[name])
}

func (o *outbox) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, m := range o.msgs {
		n += len(m)
	}
	return n
}

type signer struct{}

func (signer) URL(f *ota.Firmware, exp time.Time) string {
	return fmt.Sprintf("http://fw.test/%s-%s-%d", f.ProductID, f.Version, exp.Unix())
}

// clock is a test clock the engine reads.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type fixture struct {
	t     *testing.T
	store ota.Store
	eng   *engine.Engine
	out   *outbox
	clock *clock
	pid   string
}

// newFixture makes a product with firmware 2.0.0 and n online devices
// d00.. on 1.0.0, and an engine whose passes the test drives by hand.
func newFixture(t *testing.T, engineName string, n int) *fixture {
	s := testdb.Open(t, engineName)
	f := &fixture{t: t, store: s, out: &outbox{msgs: map[string][]ota.UpdateFirmware{}, down: map[string]bool{}},
		clock: &clock{t: ota.Now()}, pid: ota.NewProductID()}
	ctx := t.Context()
	must(t, s.ProductCreate(ctx, &ota.Product{ID: f.pid, Name: "p"}))
	must(t, s.FirmwareCreate(ctx, &ota.Firmware{ProductID: f.pid, Version: "2.0.0", Size: 1234,
		MD5: "cc03e747a6afbbcbf8be7668acfebee5", SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", BlobKey: "k"}))
	var err error
	f.eng, err = engine.New(engine.Config{Logger: slog.New(slog.DiscardHandler), Store: s, Notifier: f.out, URLs: signer{},
		Node: "n1", Now: f.clock.Now, Batch: 7})
	must(t, err)
	for i := range n {
		f.addDevice(fmt.Sprintf("d%02d", i), true)
	}
	return f
}

func (f *fixture) addDevice(name string, online bool) {
	ctx := f.t.Context()
	must(f.t, f.store.DeviceCreate(ctx, &ota.Device{ProductID: f.pid, Name: name, Secret: ota.NewDeviceSecret(), Version: "1.0.0"}))
	if online {
		f.online(name, true)
	}
}

// online records the device connected (and, as devices do, reporting its
// version) or disconnected.
func (f *fixture) online(name string, on bool) {
	must(f.t, f.store.DevicePresence(f.t.Context(), ota.DevicePresenceParams{ProductID: f.pid, DeviceName: name, Online: on, Node: "n1", At: f.clock.Now()}))
	if on {
		f.clock.Add(time.Microsecond)
		f.apply(ota.Report{ProductID: f.pid, DeviceName: name, Type: ota.EventReportVersion, Version: "1.0.0", At: f.clock.Now()})
	}
}

// pass runs one engine pass, as its Run loop does on every tick.
func (f *fixture) pass() {
	f.t.Helper()
	must(f.t, f.eng.RunOnce(f.t.Context()))
}

func (f *fixture) report(r ota.Report) {
	r.ProductID = f.pid
	r.At = f.clock.Now()
	f.apply(r)
	f.pass() // as Run does when a report wakes it
}

// apply applies one report as the broker's writer does.
func (f *fixture) apply(r ota.Report) {
	f.t.Helper()
	refused, err := f.eng.ApplyReports(f.t.Context(), []ota.Report{r})
	must(f.t, err)
	must(f.t, refused[0])
}

func (f *fixture) version(name, v string) {
	f.report(ota.Report{DeviceName: name, Type: ota.EventReportVersion, Version: v})
}

func (f *fixture) progress(name, state string, pct, code int) {
	f.report(ota.Report{DeviceName: name, Type: ota.EventReportProgress, Version: "2.0.0", State: state, Percent: &pct, ResultCode: &code})
}

func (f *fixture) exec(job, name string) *ota.JobExecution {
	f.t.Helper()
	x, err := f.store.JobExecutionGet(f.t.Context(), job, name)
	must(f.t, err)
	return x
}

func (f *fixture) wantState(job, name, state string) *ota.JobExecution {
	f.t.Helper()
	x := f.exec(job, name)
	if x.State != state {
		f.t.Fatalf("%s is %s, want %s (%+v)", name, x.State, state, x)
	}
	return x
}

func (f *fixture) create(j *ota.Job) *ota.Job {
	f.t.Helper()
	j.ProductID = f.pid
	j.FirmwareVersion = "2.0.0"
	must(f.t, f.eng.CreateJob(f.t.Context(), j))
	return j
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func forEachEngine(t *testing.T, fn func(t *testing.T, engine string)) {
	for _, e := range testdb.Engines {
		t.Run(e, func(t *testing.T) {
			t.Parallel()
			fn(t, e)
		})
	}
}

func TestJobHappyPath(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 3)
		f.addDevice("offline", false)
		f.version("d02", "2.0.0") // already on the target: done at once
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, RollbackWindowSeconds: 3600})
		f.wantState(j.ID, "d02", ota.ExecDone)
		f.pass()
		for _, d := range []string{"d00", "d01"} {
			x := f.wantState(j.ID, d, ota.ExecNotified)
			if x.Attempts != 1 || f.out.count(d) != 1 {
				t.Fatalf("%s: attempts %d, messages %d", d, x.Attempts, f.out.count(d))
			}
			m := f.out.msgs[d][0]
			if m.Type != "update_firmware" || m.Version != "2.0.0" || m.MD5 != "cc03e747a6afbbcbf8be7668acfebee5" || m.FileSize != 1234 || m.JobID != j.ID || m.SHA256 == "" || m.URL == "" {
				t.Fatalf("message = %+v", m)
			}
		}
		f.wantState(j.ID, "offline", ota.ExecQueued)
		if f.out.count("offline") != 0 || f.out.count("d02") != 0 {
			t.Fatal("an offline or done device was notified")
		}

		// d00 goes through every state; late reports change nothing.
		f.progress("d00", ota.ProgressDownloading, 10, 0)
		f.progress("d00", ota.ProgressDownloading, 60, 0)
		f.progress("d00", ota.ProgressDownloading, 30, 0) // out of order
		if x := f.wantState(j.ID, "d00", ota.ExecDownloading); x.Percent != 60 {
			t.Fatalf("percent %d, want 60", x.Percent)
		}
		f.progress("d00", ota.ProgressBurning, 0, 0)
		f.progress("d00", ota.ProgressDownloading, 90, 0) // late
		f.wantState(j.ID, "d00", ota.ExecBurning)
		f.progress("d00", ota.ProgressDone, 0, 0)
		f.progress("d00", ota.ProgressDownloading, 95, 0) // after done
		if x := f.wantState(j.ID, "d00", ota.ExecDone); x.Percent != 100 || x.FinishedAt == nil {
			t.Fatalf("done execution %+v", x)
		}
		// d01 confirms by reporting the target version (no burning, no done).
		f.progress("d01", ota.ProgressDownloading, 100, 0)
		f.version("d01", "2.0.0")
		f.wantState(j.ID, "d01", ota.ExecDone)

		// A report for another version is recorded but moves nothing.
		f.apply(ota.Report{ProductID: f.pid, DeviceName: "offline", Type: ota.EventReportProgress, Version: "9.9", State: ota.ProgressDone, At: f.clock.Now()})
		f.wantState(j.ID, "offline", ota.ExecQueued)
		f.online("offline", false)

		// The offline device connects and reports its version: it is
		// notified at once, without waiting for the next pass.
		f.online("offline", true)
		f.version("offline", "1.0.0")
		f.wantState(j.ID, "offline", ota.ExecNotified)
		if f.out.count("offline") != 1 {
			t.Fatal("reconnecting device not notified")
		}
		// Re-reporting the old version while notified re-sends the message.
		f.version("offline", "1.0.0")
		if f.out.count("offline") != 2 {
			t.Fatal("message not re-sent on report_version")
		}
		f.progress("offline", ota.ProgressDone, 0, 0)
		f.pass()
		got, err := f.store.JobGet(t.Context(), j.ID)
		must(t, err)
		if got.Status != ota.JobCompleted || got.CompletedAt == nil {
			t.Fatalf("job %+v, want completed", got)
		}
		// A later report of the old version is a rollback; the job stays
		// completed and the other counts stand.
		f.version("d00", "1.0.0")
		x := f.wantState(j.ID, "d00", ota.ExecRolledBack)
		if x.ResultMsg == "" {
			t.Fatal("rollback without a reason")
		}
		f.pass()
		got, err = f.store.JobGet(t.Context(), j.ID)
		must(t, err)
		counts, err := f.store.JobCounts(t.Context(), j.ID)
		must(t, err)
		if got.Status != ota.JobCompleted || counts[ota.ExecDone] != 3 || counts[ota.ExecRolledBack] != 1 {
			t.Fatalf("after the rollback: job %s, counts %v", got.Status, counts)
		}
	})
}

func TestJobRetryAndTimeout(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 2)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxRetries: 1, RetryBackoffSeconds: 10, TimeoutSeconds: 60})
		f.pass()
		// d00 fails with an MD5 mismatch, then with a second fail in a row.
		f.progress("d00", ota.ProgressDownloading, 100, 0)
		f.progress("d00", ota.ProgressFail, 0, -4)
		f.progress("d00", ota.ProgressFail, 0, -5)
		x := f.wantState(j.ID, "d00", ota.ExecQueued)
		if x.ResultCode != -4 || x.ResultName != "md5_mismatch" || x.NextAttemptAt == nil {
			t.Fatalf("after fail: %+v", x)
		}
		// Before the backoff, re-reporting does not re-dispatch.
		f.version("d00", "1.0.0")
		f.wantState(j.ID, "d00", ota.ExecQueued)
		f.clock.Add(11 * time.Second)
		f.version("d00", "1.0.0")
		if x := f.wantState(j.ID, "d00", ota.ExecNotified); x.Attempts != 2 || f.out.count("d00") != 2 {
			t.Fatalf("retry: %+v, %d messages", x, f.out.count("d00"))
		}
		// The retry budget is spent: the next failure is final.
		f.progress("d00", ota.ProgressFail, 0, -2)
		if x := f.wantState(j.ID, "d00", ota.ExecFailed); x.ResultCode != -2 {
			t.Fatalf("final failure %+v", x)
		}

		// d01 never answers: it times out, is retried after the backoff by
		// the dispatcher, and times out for good.
		f.clock.Add(61 * time.Second)
		f.pass()
		f.wantState(j.ID, "d01", ota.ExecQueued)
		f.clock.Add(11 * time.Second)
		f.pass()
		f.wantState(j.ID, "d01", ota.ExecNotified)
		f.clock.Add(61 * time.Second)
		f.pass()
		f.wantState(j.ID, "d01", ota.ExecTimedOut)
		f.pass()
		got, err := f.store.JobGet(t.Context(), j.ID)
		must(t, err)
		counts, err := f.store.JobCounts(t.Context(), j.ID)
		must(t, err)
		if got.Status != ota.JobCompleted || counts[ota.ExecFailed] != 1 || counts[ota.ExecTimedOut] != 1 {
			t.Fatalf("job %s counts %v", got.Status, counts)
		}
	})
}

func TestJobPacing(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 20)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxConcurrent: 3})
		f.pass()
		if n := f.out.total(); n != 3 {
			t.Fatalf("%d notified, max_concurrent 3", n)
		}
		finished := 0
		for round := 0; finished < 20; round++ {
			if round > 20 {
				t.Fatal("rollout does not finish")
			}
			xs, err := f.store.JobExecutionList(t.Context(), ota.JobExecutionListParams{JobID: j.ID, State: ota.ExecNotified})
			must(t, err)
			if len(xs) > 3 {
				t.Fatalf("%d devices upgrading at once, max 3", len(xs))
			}
			for _, x := range xs {
				f.progress(x.DeviceName, ota.ProgressDone, 0, 0)
				finished++
			}
			f.pass()
		}

		// max_per_minute 4: one every 15 s, never four at once.
		g := newFixture(t, name, 10)
		g.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxPerMinute: 4})
		var at []time.Duration // when each notification went out, from the start
		start := g.clock.Now()
		for range 30 {
			before := g.out.total()
			g.pass()
			if n := g.out.total() - before; n > 1 {
				t.Fatalf("%d notified in one pass at max_per_minute 4", n)
			} else if n == 1 {
				at = append(at, g.clock.Now().Sub(start))
			}
			g.clock.Add(5 * time.Second)
		}
		if len(at) < 8 || len(at) > 10 {
			t.Fatalf("%d notified in 150 s at max_per_minute 4: at %v", len(at), at)
		}
		for i := 4; i < len(at); i++ {
			if at[i]-at[i-4] < time.Minute {
				t.Fatalf("5 notifications within a minute: %v", at)
			}
		}
	})
}

func TestJobCancelAndSchedule(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 4)
		j := f.create(&ota.Job{Targets: ota.JobTargets{Devices: []string{"d00", "d01", "d02"}}, MaxConcurrent: 1})
		f.pass()
		f.wantState(j.ID, "d00", ota.ExecNotified)
		must(t, f.eng.CancelJob(t.Context(), j.ID))
		f.pass()
		f.wantState(j.ID, "d01", ota.ExecCanceled)
		f.wantState(j.ID, "d02", ota.ExecCanceled)
		if f.out.total() != 1 {
			t.Fatal("a canceled job dispatched more")
		}
		// The in-flight device is still tracked and ends the job.
		f.progress("d00", ota.ProgressDone, 0, 0)
		f.pass()
		got, _ := f.store.JobGet(t.Context(), j.ID)
		if got.Status != ota.JobCanceled || got.CompletedAt == nil {
			t.Fatalf("canceled job %+v", got)
		}
		if err := f.eng.CancelJob(t.Context(), j.ID); ota.ErrorCode(err) != ota.ECONFLICT {
			t.Fatalf("second cancel: %v", err)
		}

		// A scheduled job waits for its start time.
		start := f.clock.Now().Add(time.Hour)
		s := f.create(&ota.Job{Targets: ota.JobTargets{Devices: []string{"d03"}}, StartAt: &start})
		if s.Status != ota.JobScheduled {
			t.Fatalf("status %s", s.Status)
		}
		f.pass()
		f.wantState(s.ID, "d03", ota.ExecQueued)
		f.clock.Add(time.Hour)
		f.pass()
		f.wantState(s.ID, "d03", ota.ExecNotified)

		// Overlapping jobs are refused with the devices in conflict.
		err := f.eng.CreateJob(t.Context(), &ota.Job{ProductID: f.pid, FirmwareVersion: "2.0.0", Targets: ota.JobTargets{All: true}})
		if ota.ErrorCode(err) != ota.ECONFLICT {
			t.Fatalf("overlap: %v", err)
		}
		for _, bad := range []*ota.Job{
			{ProductID: f.pid, FirmwareVersion: "9.9.9", Targets: ota.JobTargets{All: true}},
			{ProductID: f.pid, FirmwareVersion: "2.0.0"},
			{ProductID: f.pid, FirmwareVersion: "2.0.0", Targets: ota.JobTargets{All: true, Devices: []string{"d00"}}},
			{ProductID: f.pid, FirmwareVersion: "2.0.0", Targets: ota.JobTargets{Devices: []string{"d00", "d00"}}},
			{ProductID: f.pid, FirmwareVersion: "2.0.0", Targets: ota.JobTargets{All: true}, MaxRetries: -1},
		} {
			if err := f.eng.CreateJob(t.Context(), bad); ota.ErrorCode(err) != ota.EINVALID {
				t.Errorf("CreateJob(%+v) = %v, want invalid", bad, err)
			}
		}
	})
}

// TestDispatchSurvivesRestart: a new engine over the same store (otad
// restarted) carries on without notifying a device twice.
func TestDispatchSurvivesRestart(t *testing.T) {
	f := newFixture(t, "sqlite", 10)
	j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxConcurrent: 4})
	f.pass()
	second, err := engine.New(engine.Config{Logger: slog.New(slog.DiscardHandler), Store: f.store, Notifier: f.out, URLs: signer{}, Node: "n1", Now: f.clock.Now})
	must(t, err)
	f.eng = second
	f.pass()
	if n := f.out.total(); n != 4 {
		t.Fatalf("%d notifications after restart, want 4", n)
	}
	names := []string{}
	for d, m := range f.out.msgs {
		if len(m) != 1 {
			t.Fatalf("%s notified %d times", d, len(m))
		}
		names = append(names, d)
	}
	sort.Strings(names)
	for _, d := range names {
		f.progress(d, ota.ProgressDone, 0, 0)
	}
	f.pass()
	counts, _ := f.store.JobCounts(t.Context(), j.ID)
	if counts[ota.ExecDone] != 4 || counts[ota.ExecNotified] != 4 {
		t.Fatalf("counts %v", counts)
	}
}

// A device's connect-time report_version that a dispatch pass overtakes
// (the pass notifies the device, then the report is applied) does not
// re-send update_firmware; a report received after the notification does.
func TestJobReportBeforeNotification(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 1)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}})
		r := ota.Report{ProductID: f.pid, DeviceName: "d00", Type: ota.EventReportVersion, Version: "1.0.0", At: f.clock.Now()}
		f.clock.Add(time.Millisecond)
		f.pass()
		f.wantState(j.ID, "d00", ota.ExecNotified)
		f.apply(r) // received before the notification, applied after it
		if n := f.out.count("d00"); n != 1 {
			t.Fatalf("%d messages, want 1: a report older than the notification re-sent it", n)
		}
		f.clock.Add(time.Second)
		f.version("d00", "1.0.0")
		if n := f.out.count("d00"); n != 2 {
			t.Fatalf("%d messages, want 2: a report after the notification must re-send it", n)
		}
	})
}

// The device's truth wins: a done, or the target version, reported after
// the attempt timed out or failed for good makes the execution done.
func TestJobDoneAfterTimeout(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 2)
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxRetries: 0, TimeoutSeconds: 60})
		f.pass()
		f.clock.Add(61 * time.Second)
		f.pass()
		f.wantState(j.ID, "d00", ota.ExecTimedOut)
		f.wantState(j.ID, "d01", ota.ExecTimedOut)
		got, err := f.store.JobGet(t.Context(), j.ID)
		must(t, err)
		if got.Status != ota.JobCompleted {
			t.Fatalf("job %s, want completed", got.Status)
		}
		f.progress("d00", ota.ProgressDone, 0, 0)
		f.version("d01", "2.0.0")
		f.wantState(j.ID, "d00", ota.ExecDone)
		f.wantState(j.ID, "d01", ota.ExecDone)
		counts, err := f.store.JobCounts(t.Context(), j.ID)
		must(t, err)
		if counts[ota.ExecDone] != 2 || counts[ota.ExecTimedOut] != 0 {
			t.Fatalf("counts %v", counts)
		}
	})
}

// A notification that cannot be delivered puts the execution back to
// queued without using an attempt.
func TestJobPublishFailure(t *testing.T) {
	forEachEngine(t, func(t *testing.T, name string) {
		f := newFixture(t, name, 1)
		f.out.mu.Lock()
		f.out.down["d00"] = true
		f.out.mu.Unlock()
		j := f.create(&ota.Job{Targets: ota.JobTargets{All: true}, MaxRetries: 0})
		f.pass()
		if x := f.wantState(j.ID, "d00", ota.ExecQueued); x.Attempts != 0 || x.NextAttemptAt == nil {
			t.Fatalf("after a failed publish: %+v", x)
		}
		f.out.mu.Lock()
		f.out.down["d00"] = false
		f.out.mu.Unlock()
		f.pass()
		f.wantState(j.ID, "d00", ota.ExecQueued) // waits a little first
		f.clock.Add(10 * time.Second)
		f.pass()
		if x := f.wantState(j.ID, "d00", ota.ExecNotified); x.Attempts != 1 || f.out.count("d00") != 1 {
			t.Fatalf("after delivery: %+v, %d messages", x, f.out.count("d00"))
		}
	})
}
