package storetest

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
)

// jobFixture is a product with firmware 2.0.0 and devices d0..d(n-1) on
// 1.0.0, all online on node "n1", each having reported its version.
func jobFixture(t *testing.T, s ota.Store, n int) *ota.Product {
	t.Helper()
	p := MustProduct(t, s)
	must(t, s.FirmwareCreate(ctx(t), &ota.Firmware{ProductID: p.ID, Version: "2.0.0", Size: 1, BlobKey: "k"}))
	for i := range n {
		name := fmt.Sprintf("d%d", i)
		must(t, s.DeviceCreate(ctx(t), &ota.Device{ProductID: p.ID, Name: name, Secret: ota.NewDeviceSecret(), Version: "1.0.0"}))
		must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: name, Online: true, Node: "n1", At: ota.Now()}))
		Record(t, s, ota.Report{ProductID: p.ID, DeviceName: name, Type: ota.EventReportVersion, Version: "1.0.0", At: ota.Now()})
	}
	return p
}

func newJob(p *ota.Product, targets ota.JobTargets) *ota.Job {
	j := &ota.Job{ID: ota.NewJobID(), ProductID: p.ID, FirmwareVersion: "2.0.0", Status: ota.JobRunning, Targets: targets,
		TimeoutSeconds: 60, MaxRetries: 2, RetryBackoffSeconds: 5, RollbackWindowSeconds: 600}
	return j
}

// createJob stores j with the domain's first states (ota.NewExecution).
func createJob(t *testing.T, s ota.Store, j *ota.Job) error {
	return s.JobCreate(ctx(t), ota.JobCreateParams{Job: j, Initial: func(v string) ota.JobExecution {
		return ota.NewExecution(j, v, j.CreatedAt)
	}})
}

// claim claims up to limit executions of j on node at at, as the engine does.
func claim(t *testing.T, s ota.Store, j *ota.Job, node string, limit int, at time.Time) []*ota.JobExecution {
	t.Helper()
	run := *j
	run.Status = ota.JobRunning
	es, err := s.JobExecutionClaim(ctx(t), ota.JobExecutionClaimParams{JobID: j.ID, Node: node, At: at, Since: at.Add(-time.Minute),
		Limit: func(ota.JobPace) int { return limit },
		Claim: func(x *ota.JobExecution) (*ota.JobExecution, bool) {
			st := ota.Step(&run, x, ota.ExecEvent{Kind: ota.EventClaim, Deadline: at.Add(time.Minute)}, at)
			return &st.Exec, st.Changed
		}})
	must(t, err)
	return es
}

func names(es []*ota.JobExecution) []string {
	out := []string{}
	for _, e := range es {
		out = append(out, e.DeviceName)
	}
	sort.Strings(out)
	return out
}

// step applies ev to the stored execution of name in j and stores it.
func step(t *testing.T, s ota.Store, j *ota.Job, name string, ev ota.ExecEvent, at time.Time) *ota.JobExecution {
	t.Helper()
	x, err := s.JobExecutionGet(ctx(t), j.ID, name)
	must(t, err)
	st := ota.Step(j, x, ev, at)
	if !st.Changed {
		t.Fatalf("%s: %s changed nothing in %+v", name, ev.Kind, x)
	}
	must(t, s.JobExecutionUpdate(ctx(t), &st.Exec))
	return &st.Exec
}

func endNone(*ota.JobExecution) (*ota.JobExecution, bool) { return nil, false }

func cancelQueued(x *ota.JobExecution) (*ota.JobExecution, bool) {
	st := ota.Step(&ota.Job{}, x, ota.ExecEvent{Kind: ota.EventCancel}, ota.Now())
	return &st.Exec, st.Changed
}

// cancelJob cancels job id as an operator does, applying apply to its
// executions in states.
func cancelJob(t *testing.T, s ota.Store, id string, states []string, apply func(*ota.JobExecution) (*ota.JobExecution, bool)) ([]*ota.JobExecution, error) {
	t.Helper()
	now := ota.Now()
	return s.JobChange(ctx(t), ota.JobChangeParams{ID: id, At: now, States: states,
		Job:   func(j *ota.Job) (*ota.Job, error) { return ota.JobControl(j, ota.JobActionCancel, now) },
		Apply: func(_ *ota.Job, x *ota.JobExecution) (*ota.JobExecution, bool) { return apply(x) }})
}

// paceLimit is the claim limit max_concurrent and max_per_minute set, at
// most batch, without spreading a minute's claims.
func paceLimit(j *ota.Job, p ota.JobPace, batch int) int {
	n := batch
	if j.MaxConcurrent > 0 {
		n = min(n, j.MaxConcurrent-p.InFlight)
	}
	if j.MaxPerMinute > 0 {
		n = min(n, j.MaxPerMinute-p.NotifiedSince)
	}
	return max(n, 0)
}

func progress(p *ota.Product, name, state string) ota.ExecEvent {
	return ota.ExecEvent{Kind: ota.EventReport, Report: &ota.Report{ProductID: p.ID, DeviceName: name, Type: ota.EventReportProgress,
		Version: "2.0.0", State: state, At: ota.Now()}}
}

func detailDevices(t *testing.T, err error) []string {
	t.Helper()
	e, ok := err.(*ota.Error)
	if !ok {
		t.Fatalf("error %v is not *ota.Error", err)
	}
	m, _ := e.Detail.(map[string]any)
	names, _ := m["devices"].([]string)
	return names
}

func testJobCreate(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 4)
	// d3 already runs the target version: it is done at once.
	Record(t, s, ota.Report{ProductID: p.ID, DeviceName: "d3", Type: ota.EventReportVersion, Version: "2.0.0", At: ota.Now()})

	err := createJob(t, s, newJob(p, ota.JobTargets{Devices: []string{"d0", "ghost", "zz"}}))
	wantCode(t, err, ota.EINVALID)
	if got := detailDevices(t, err); !reflect.DeepEqual(got, []string{"ghost", "zz"}) {
		t.Fatalf("missing devices = %v", got)
	}
	wantCode(t, createJob(t, s, newJob(p, ota.JobTargets{Versions: []string{"9.9"}})), ota.EINVALID)
	noFirmware := newJob(p, ota.JobTargets{All: true})
	noFirmware.FirmwareVersion = "3.0.0"
	wantCode(t, createJob(t, s, noFirmware), ota.EINVALID)

	j := newJob(p, ota.JobTargets{Devices: []string{"d0", "d1", "d3"}})
	must(t, createJob(t, s, j))
	got, err := s.JobGet(ctx(t), j.ID)
	must(t, err)
	if !reflect.DeepEqual(got, j) {
		t.Fatalf("JobGet = %+v, want %+v", got, j)
	}
	counts, err := s.JobCounts(ctx(t), j.ID)
	must(t, err)
	if !reflect.DeepEqual(counts, map[string]int{ota.ExecQueued: 2, ota.ExecDone: 1}) {
		t.Fatalf("counts = %v", counts)
	}
	e, err := s.JobExecutionGet(ctx(t), j.ID, "d0")
	must(t, err)
	if e.State != ota.ExecQueued || e.FromVersion != "1.0.0" || e.Attempts != 0 || e.ProductID != p.ID {
		t.Fatalf("execution d0 = %+v", e)
	}
	done, err := s.JobExecutionGet(ctx(t), j.ID, "d3")
	must(t, err)
	if done.State != ota.ExecDone || done.Percent != 100 || done.FinishedAt == nil {
		t.Fatalf("execution d3 = %+v", done)
	}

	// An overlapping job is refused with the busy devices, and stores nothing.
	overlap := newJob(p, ota.JobTargets{All: true})
	err = createJob(t, s, overlap)
	wantCode(t, err, ota.ECONFLICT)
	if got := detailDevices(t, err); !reflect.DeepEqual(got, []string{"d0", "d1"}) {
		t.Fatalf("conflicting devices = %v", got)
	}
	_, err = s.JobGet(ctx(t), overlap.ID)
	wantCode(t, err, ota.ENOTFOUND)
	// Devices on given versions: d2 only (d3 is done, d0 and d1 are busy but
	// on 1.0.0 too, so this overlaps as well).
	wantCode(t, createJob(t, s, newJob(p, ota.JobTargets{Versions: []string{"1.0.0"}})), ota.ECONFLICT)
	j2 := newJob(p, ota.JobTargets{Devices: []string{"d2"}})
	must(t, createJob(t, s, j2))

	list, err := s.JobList(ctx(t), ota.JobListParams{ProductID: p.ID})
	must(t, err)
	if len(list) != 2 || list[0].ID != j.ID || list[1].ID != j2.ID {
		t.Fatalf("JobList = %v", list)
	}
	page, err := s.JobList(ctx(t), ota.JobListParams{ProductID: p.ID, After: j.ID})
	must(t, err)
	if len(page) != 1 || page[0].ID != j2.ID {
		t.Fatalf("JobList after first = %v", page)
	}
}

func testJobLifecycle(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 3)
	start := ota.Now().Add(time.Hour)
	j := newJob(p, ota.JobTargets{All: true})
	j.Status, j.StartAt = ota.JobScheduled, &start
	must(t, createJob(t, s, j))
	active, err := s.JobListActive(ctx(t))
	must(t, err)
	if len(active) != 1 || active[0].ID != j.ID {
		t.Fatalf("active jobs = %v", active)
	}
	start2 := ota.JobStatusParams{ID: j.ID, From: ota.JobScheduled, To: ota.JobRunning}
	must(t, s.JobSetStatus(ctx(t), start2))
	wantCode(t, s.JobSetStatus(ctx(t), start2), ota.ECONFLICT)
	j.Status = ota.JobRunning

	now := ota.Now()
	claimed := claim(t, s, j, "n1", 1, now)
	if len(claimed) != 1 || claimed[0].State != ota.ExecNotified || claimed[0].Attempts != 1 || !claimed[0].NotifiedAt.Equal(now) {
		t.Fatalf("claimed = %+v", claimed)
	}
	changed, err := cancelJob(t, s, j.ID, []string{ota.ExecQueued}, cancelQueued)
	must(t, err)
	if len(changed) != 2 {
		t.Fatalf("cancel changed %d executions, want the 2 queued", len(changed))
	}
	_, err = cancelJob(t, s, j.ID, []string{ota.ExecQueued}, cancelQueued)
	wantCode(t, err, ota.ECONFLICT)
	counts, err := s.JobCounts(ctx(t), j.ID)
	must(t, err)
	if !reflect.DeepEqual(counts, map[string]int{ota.ExecNotified: 1, ota.ExecCanceled: 2}) {
		t.Fatalf("counts after cancel = %v (in-flight devices keep going)", counts)
	}
	got, err := s.JobGet(ctx(t), j.ID)
	must(t, err)
	if got.Status != ota.JobCanceled || got.CompletedAt != nil {
		t.Fatalf("canceled job = %+v", got)
	}
	// Still listed as active until the engine closes it.
	active, err = s.JobListActive(ctx(t))
	must(t, err)
	if len(active) != 1 {
		t.Fatalf("active after cancel = %v", active)
	}
	step(t, s, j, claimed[0].DeviceName, progress(p, claimed[0].DeviceName, ota.ProgressDone), now)
	at := ota.Now()
	must(t, s.JobSetStatus(ctx(t), ota.JobStatusParams{ID: j.ID, From: ota.JobCanceled, To: ota.JobCanceled, CompletedAt: &at}))
	got, err = s.JobGet(ctx(t), j.ID)
	must(t, err)
	if got.Status != ota.JobCanceled || got.CompletedAt == nil || !got.CompletedAt.Equal(at) {
		t.Fatalf("closed job = %+v", got)
	}
	active, err = s.JobListActive(ctx(t))
	must(t, err)
	if len(active) != 0 {
		t.Fatalf("active after close = %v", active)
	}
	// Every device has ended: a new job over all of them is allowed.
	j2 := newJob(p, ota.JobTargets{All: true})
	must(t, createJob(t, s, j2))
	cur, err := s.JobExecutionCurrent(ctx(t), p.ID, claimed[0].DeviceName)
	must(t, err)
	if cur.JobID != j2.ID {
		t.Fatalf("current execution is of job %s, want the active %s", cur.JobID, j2.ID)
	}
	_, err = s.JobExecutionCurrent(ctx(t), p.ID, "never")
	wantCode(t, err, ota.ENOTFOUND)
}

func testJobExecutionClaim(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 6)
	// d4 is offline; d5 is online on another node.
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d4", Online: false, Node: "n1", At: ota.Now()}))
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d5", Online: true, Node: "n2", At: ota.Now()}))
	RecordOn(t, s, "n2", ota.Report{ProductID: p.ID, DeviceName: "d5", Type: ota.EventReportVersion, Version: "1.0.0", At: ota.Now()})
	j := newJob(p, ota.JobTargets{All: true})
	must(t, createJob(t, s, j))
	now := ota.Now()
	if got := names(claim(t, s, j, "n1", 2, now)); !reflect.DeepEqual(got, []string{"d0", "d1"}) {
		t.Fatalf("first claim = %v", got)
	}
	if got := names(claim(t, s, j, "n1", 10, now)); !reflect.DeepEqual(got, []string{"d2", "d3"}) {
		t.Fatalf("second claim = %v (offline and other-node devices must wait)", got)
	}
	// d3 fails and waits for a retry.
	fail := progress(p, "d3", ota.ProgressFail)
	fail.Report.ResultCode, fail.Report.ResultMsg = intp(-4), "time_out"
	stale, err := s.JobExecutionGet(ctx(t), j.ID, "d3")
	must(t, err)
	retry := step(t, s, j, "d3", fail, now)
	e, err := s.JobExecutionGet(ctx(t), j.ID, "d3")
	must(t, err)
	if e.State != ota.ExecQueued || e.ResultCode != -4 || e.ResultName != "md5_mismatch" || e.ResultMsg != "time_out" ||
		e.NextAttemptAt == nil || !e.NextAttemptAt.Equal(*retry.NextAttemptAt) || e.DeadlineAt != nil || e.Attempts != 1 || e.Rev != stale.Rev+1 {
		t.Fatalf("after the retry transition: %+v", e)
	}
	// A write from the execution as it was read before is refused.
	stale.State = ota.ExecDone
	wantCode(t, s.JobExecutionUpdate(ctx(t), stale), ota.ECONFLICT)

	if got := names(claim(t, s, j, "n1", 10, now)); len(got) != 0 {
		t.Fatalf("claim while d3 backs off = %v", got)
	}
	if got := names(claim(t, s, j, "n2", 10, now)); !reflect.DeepEqual(got, []string{"d5"}) {
		t.Fatalf("node n2 claim = %v", got)
	}
	later := *e.NextAttemptAt
	if got := names(claim(t, s, j, "n1", 10, later)); !reflect.DeepEqual(got, []string{"d3"}) {
		t.Fatalf("claim after backoff = %v", got)
	}
	e, err = s.JobExecutionGet(ctx(t), j.ID, "d3")
	must(t, err)
	if e.Attempts != 2 || e.ResultCode != -4 {
		t.Fatalf("second attempt: %+v", e)
	}
	var pace ota.JobPace
	_, err = s.JobExecutionClaim(ctx(t), ota.JobExecutionClaimParams{JobID: j.ID, Node: "n1", At: now, Since: now.Add(-time.Microsecond),
		Limit: func(p ota.JobPace) int { pace = p; return 0 }})
	must(t, err)
	if pace.InFlight != 5 || pace.NotifiedSince != 5 || pace.Notified != 5 || pace.Succeeded != 0 ||
		pace.LastNotifiedAt == nil {
		t.Fatalf("pace = %+v", pace)
	}

	// Progress in place; a terminal state is finished.
	d := progress(p, "d0", ota.ProgressDownloading)
	d.Report.Percent = intp(40)
	step(t, s, j, "d0", d, now)
	d.Report.Percent = intp(60)
	step(t, s, j, "d0", d, now)
	e, err = s.JobExecutionGet(ctx(t), j.ID, "d0")
	must(t, err)
	if e.State != ota.ExecDownloading || e.Percent != 60 || e.DeadlineAt == nil || !e.DeadlineAt.Equal(now.Add(time.Minute)) {
		t.Fatalf("d0 = %+v", e)
	}
	step(t, s, j, "d0", progress(p, "d0", ota.ProgressDone), now)
	e, err = s.JobExecutionGet(ctx(t), j.ID, "d0")
	must(t, err)
	if e.State != ota.ExecDone || e.FinishedAt == nil || e.DeadlineAt != nil || e.Percent != 100 {
		t.Fatalf("done d0 = %+v", e)
	}

	expired, err := s.JobExecutionsExpired(ctx(t), now.Add(2*time.Minute), 100)
	must(t, err)
	if got := names(expired); !reflect.DeepEqual(got, []string{"d1", "d2", "d3", "d5"}) {
		t.Fatalf("expired = %v", got)
	}
	expired, err = s.JobExecutionsExpired(ctx(t), now, 100)
	must(t, err)
	if len(expired) != 0 {
		t.Fatalf("expired before the deadline: %v", expired)
	}

	list, err := s.JobExecutionList(ctx(t), ota.JobExecutionListParams{JobID: j.ID, State: ota.ExecNotified, Limit: 2})
	must(t, err)
	if len(list) != 2 || list[0].DeviceName != "d1" || list[1].DeviceName != "d2" {
		t.Fatalf("notified page = %v", list)
	}
	list, err = s.JobExecutionList(ctx(t), ota.JobExecutionListParams{JobID: j.ID, After: "d3"})
	must(t, err)
	if len(list) != 2 || list[0].DeviceName != "d4" {
		t.Fatalf("page after d3 = %v", list)
	}
}

// testJobExecutionClaimConcurrent claims from several goroutines at once,
// as several replicas would: no execution is handed out twice.
func testJobExecutionClaimConcurrent(t *testing.T, s ota.Store) {
	const devices = 60
	p := jobFixture(t, s, devices)
	j := newJob(p, ota.JobTargets{All: true})
	must(t, createJob(t, s, j))
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				es := claim(t, s, j, "n1", 7, ota.Now())
				if len(es) == 0 {
					return
				}
				mu.Lock()
				for _, e := range es {
					seen[e.DeviceName]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != devices {
		t.Fatalf("claimed %d devices, want %d", len(seen), devices)
	}
	for d, n := range seen {
		if n != 1 {
			t.Fatalf("device %s claimed %d times", d, n)
		}
	}
}

// testJobExecutionClaimPacedConcurrent: claimers on two nodes at once,
// each limited by the pace the claim counts, never put more in flight
// than max_concurrent, nor notify more in a minute than max_per_minute.
func testJobExecutionClaimPacedConcurrent(t *testing.T, s ota.Store) {
	const devices = 40
	p := jobFixture(t, s, devices)
	for i := range devices / 2 {
		must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: fmt.Sprintf("d%d", i), Online: true, Node: "n2", At: ota.Now()}))
		RecordOn(t, s, "n2", ota.Report{ProductID: p.ID, DeviceName: fmt.Sprintf("d%d", i), Type: ota.EventReportVersion, Version: "1.0.0", At: ota.Now()})
	}
	for _, c := range []struct {
		conc, perMinute, want int
	}{{3, 0, 3}, {0, 5, 5}} {
		j := newJob(p, ota.JobTargets{All: true})
		j.MaxConcurrent, j.MaxPerMinute = c.conc, c.perMinute
		must(t, createJob(t, s, j))
		var wg sync.WaitGroup
		var mu sync.Mutex
		total := 0
		for w := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				node := []string{"n1", "n2"}[w%2]
				for range 5 {
					now := ota.Now()
					es, err := s.JobExecutionClaim(ctx(t), ota.JobExecutionClaimParams{JobID: j.ID, Node: node, At: now, Since: now.Add(-time.Minute),
						Limit: func(pace ota.JobPace) int { return paceLimit(j, pace, 2) },
						Claim: func(x *ota.JobExecution) (*ota.JobExecution, bool) {
							st := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventClaim, Deadline: now.Add(time.Minute)}, now)
							return &st.Exec, st.Changed
						}})
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					total += len(es)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if total != c.want {
			t.Fatalf("max_concurrent %d, max_per_minute %d: %d claimed, want %d", c.conc, c.perMinute, total, c.want)
		}
		_, err := cancelJob(t, s, j.ID, ota.ExecActiveStates, func(x *ota.JobExecution) (*ota.JobExecution, bool) {
			st := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventDeviceDeleted}, ota.Now()) // ends in-flight ones too
			return &st.Exec, st.Changed
		})
		must(t, err)
	}
}

// testDeviceReportsApply: a batch reads the devices and their current
// executions, and writes what the applier changed, all or nothing.
func testDeviceReportsApply(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 3)
	j := newJob(p, ota.JobTargets{Devices: []string{"d0", "d1"}})
	must(t, createJob(t, s, j))
	now := ota.Now()
	claim(t, s, j, "n1", 10, now)
	reports := []ota.Report{
		{ProductID: p.ID, DeviceName: "d0", Type: ota.EventReportProgress, Version: "2.0.0", State: ota.ProgressDownloading, Percent: intp(30), At: now},
		{ProductID: p.ID, DeviceName: "d0", Type: ota.EventReportProgress, Version: "2.0.0", State: ota.ProgressDone, At: now.Add(time.Second)},
		{ProductID: p.ID, DeviceName: "d2", Type: ota.EventReportVersion, Version: "1.5.0", At: now},
		{ProductID: p.ID, DeviceName: "ghost", Type: ota.EventReportVersion, Version: "1.5.0", At: now},
	}
	engine := func(fail error) func(context.Context, *ota.ReportBatch) error {
		return func(_ context.Context, b *ota.ReportBatch) error {
			if b.Devices[ota.DeviceKey{ProductID: p.ID, Name: "ghost"}] != nil {
				t.Error("a device that does not exist was read")
			}
			if b.Execs[ota.DeviceKey{ProductID: p.ID, Name: "d2"}] != nil {
				t.Error("d2, in no job, has an execution")
			}
			for i, r := range b.Reports {
				k := ota.DeviceKey{ProductID: r.ProductID, Name: r.DeviceName}
				d := b.Devices[k]
				if d == nil {
					continue
				}
				ota.ApplyReport(d, r, "n1")
				b.Record[i] = true
				if x := b.Execs[k]; x != nil {
					st := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventReport, Report: &r}, r.At)
					*x = st.Exec
				}
			}
			return fail
		}
	}
	// The applier failing writes nothing.
	boom := ota.Errorf(ota.EUNAVAILABLE, "boom")
	if err := s.DeviceReportsApply(ctx(t), reports, engine(boom)); err != boom {
		t.Fatalf("DeviceReportsApply = %v, want the applier's error", err)
	}
	if e, _ := s.JobExecutionGet(ctx(t), j.ID, "d0"); e.State != ota.ExecNotified {
		t.Fatalf("d0 after a failed batch = %+v", e)
	}
	if d, _ := s.DeviceGet(ctx(t), p.ID, "d2"); d.Version != "1.0.0" {
		t.Fatalf("d2 after a failed batch = %+v", d)
	}
	// An execution written since it was read (its Rev moved on) is a
	// conflict, and nothing of the batch is written.
	err := s.DeviceReportsApply(ctx(t), reports, func(c context.Context, b *ota.ReportBatch) error {
		b.Execs[ota.DeviceKey{ProductID: p.ID, Name: "d0"}].Rev += 7
		return engine(nil)(c, b)
	})
	wantCode(t, err, ota.ECONFLICT)
	if e, _ := s.JobExecutionGet(ctx(t), j.ID, "d0"); e.State != ota.ExecNotified {
		t.Fatalf("d0 after a conflicting batch = %+v", e)
	}
	if evs, _ := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "d2"}); len(evs) != 2 {
		t.Fatalf("history of d2 after failed batches = %+v, want only the fixture's connect and version", evs)
	}
	must(t, s.DeviceReportsApply(ctx(t), reports, engine(nil)))
	e, err := s.JobExecutionGet(ctx(t), j.ID, "d0")
	must(t, err)
	if e.State != ota.ExecDone || e.Percent != 100 || e.FinishedAt == nil {
		t.Fatalf("d0 = %+v", e)
	}
	d0, err := s.DeviceGet(ctx(t), p.ID, "d0")
	must(t, err)
	if d0.Upgrade == nil || d0.Upgrade.State != ota.ProgressDone || d0.Upgrade.Percent != 100 || d0.Node != "n1" || !d0.Online {
		t.Fatalf("device d0 = %+v", d0)
	}
	evs, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "d0"})
	must(t, err)
	if len(evs) != 4 || evs[0].State != ota.ProgressDone || evs[1].State != ota.ProgressDownloading {
		t.Fatalf("history of d0 = %+v", evs) // the fixture's two, then the batch's two in order
	}
	d1, err := s.JobExecutionGet(ctx(t), j.ID, "d1")
	must(t, err)
	if d1.State != ota.ExecNotified || d1.Rev != 1 {
		t.Fatalf("d1, which did not report, = %+v", d1)
	}
}

// testDeviceDeleteKeepsJobHistory: a deleted device's executions stay in
// their jobs; one still active is ended by the callback.
func testDeviceDeleteKeepsJobHistory(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 3)
	j := newJob(p, ota.JobTargets{All: true})
	must(t, createJob(t, s, j))
	claim(t, s, j, "n1", 1, ota.Now()) // d0 in flight
	step(t, s, j, "d1", ota.ExecEvent{Kind: ota.EventReport, Report: &ota.Report{Type: ota.EventReportVersion, Version: "2.0.0", At: ota.Now()}}, ota.Now())
	before, err := s.JobCounts(ctx(t), j.ID)
	must(t, err)
	end := func(x *ota.JobExecution) (*ota.JobExecution, bool) {
		st := ota.Step(j, x, ota.ExecEvent{Kind: ota.EventDeviceDeleted}, ota.Now())
		return &st.Exec, st.Changed
	}
	must(t, s.DeviceDelete(ctx(t), p.ID, "d0", end))
	must(t, s.DeviceDelete(ctx(t), p.ID, "d1", end))
	after, err := s.JobCounts(ctx(t), j.ID)
	must(t, err)
	want := map[string]int{ota.ExecQueued: 1, ota.ExecCanceled: 1, ota.ExecDone: 1}
	if !reflect.DeepEqual(before, map[string]int{ota.ExecQueued: 1, ota.ExecNotified: 1, ota.ExecDone: 1}) || !reflect.DeepEqual(after, want) {
		t.Fatalf("counts before %v, after deleting d0 and d1 %v, want %v", before, after, want)
	}
	x, err := s.JobExecutionGet(ctx(t), j.ID, "d0")
	must(t, err)
	if x.State != ota.ExecCanceled || x.ResultMsg != "device deleted" {
		t.Fatalf("d0's execution = %+v", x)
	}
}

// testFirmwareDeleteInFlight: firmware stays while any execution of any
// job of it, a canceled job's too, has not ended.
func testFirmwareDeleteInFlight(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 2)
	j := newJob(p, ota.JobTargets{All: true})
	must(t, createJob(t, s, j))
	claim(t, s, j, "n1", 1, ota.Now())
	wantCode(t, s.FirmwareDelete(ctx(t), p.ID, "2.0.0"), ota.ECONFLICT)
	_, err := cancelJob(t, s, j.ID, []string{ota.ExecQueued}, cancelQueued)
	must(t, err)
	wantCode(t, s.FirmwareDelete(ctx(t), p.ID, "2.0.0"), ota.ECONFLICT)
	step(t, s, j, "d0", progress(p, "d0", ota.ProgressDone), ota.Now())
	must(t, s.FirmwareDelete(ctx(t), p.ID, "2.0.0"))
	wantCode(t, createJob(t, s, newJob(p, ota.JobTargets{All: true})), ota.EINVALID)
}

func testDevicePresenceNode(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	MustDevice(t, s, p.ID, "d")
	now := ota.Now()
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: true, Node: "a", At: now}))
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: true, Node: "b", At: now}))
	// Node a learns late that its connection closed: the device stays online on b.
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: false, Node: "a", At: now}))
	d, err := s.DeviceGet(ctx(t), p.ID, "d")
	must(t, err)
	if !d.Online {
		t.Fatal("a stale disconnect from another node took the device offline")
	}
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: false, Node: "b", At: now}))
	d, err = s.DeviceGet(ctx(t), p.ID, "d")
	must(t, err)
	if d.Online {
		t.Fatal("disconnect from the holding node ignored")
	}
}

// testDevicePresenceTrailsReports: presence is written in the background,
// reports are not, so a reconnected device's version report can be stored
// before the disconnect of its previous connection and its new connect.
// Neither may leave it offline or not ready: it would never be notified.
func testDevicePresenceTrailsReports(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	MustDevice(t, s, p.ID, "d")
	t0 := ota.Now().Add(-time.Minute)
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: true, Node: "n1", At: t0}))
	Record(t, s, ota.Report{ProductID: p.ID, DeviceName: "d", Type: ota.EventReportVersion, Version: "1.0.0", At: t0.Add(time.Second)})
	// The connection drops at t0+10s, the device reconnects at t0+11s and
	// reports at t0+12s; the report is stored first.
	Record(t, s, ota.Report{ProductID: p.ID, DeviceName: "d", Type: ota.EventReportVersion, Version: "1.0.0", At: t0.Add(12 * time.Second)})
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: false, Node: "n1", At: t0.Add(10 * time.Second)}))
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: true, Node: "n1", At: t0.Add(11 * time.Second)}))
	d, err := s.DeviceGet(ctx(t), p.ID, "d")
	must(t, err)
	if !d.Online || !d.Ready || !d.LastSeenAt.Equal(t0.Add(12*time.Second)) {
		t.Fatalf("after a late disconnect and connect: online=%v ready=%v last_seen=%v, want true true %v", d.Online, d.Ready, d.LastSeenAt, t0.Add(12*time.Second))
	}
	evs, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "d"})
	must(t, err)
	var types []string
	for _, e := range evs {
		types = append(types, e.Type)
	}
	if want := []string{ota.EventConnected, ota.EventDisconnected, ota.EventReportVersion, ota.EventReportVersion, ota.EventConnected}; !slices.Equal(types, want) {
		t.Fatalf("history (newest first) = %v, want %v", types, want)
	}
	// A disconnect after the last report counts.
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: false, Node: "n1", At: t0.Add(20 * time.Second)}))
	d, err = s.DeviceGet(ctx(t), p.ID, "d")
	must(t, err)
	if d.Online || d.Ready {
		t.Fatalf("after the last disconnect: online=%v ready=%v, want false false", d.Online, d.Ready)
	}
}

// testJobCreateRacesFirmwareDelete: a job created while its firmware is
// being deleted either exists with its firmware, or was refused; never a
// job whose firmware is gone.
func testJobCreateRacesFirmwareDelete(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 1)
	for i := range 10 {
		v := fmt.Sprintf("3.0.%d", i)
		must(t, s.FirmwareCreate(ctx(t), &ota.Firmware{ProductID: p.ID, Version: v, Size: 1, BlobKey: "k" + v}))
		j := newJob(p, ota.JobTargets{All: true})
		j.FirmwareVersion = v
		var createErr, deleteErr error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); createErr = createJob(t, s, j) }()
		go func() { defer wg.Done(); deleteErr = s.FirmwareDelete(ctx(t), p.ID, v) }()
		wg.Wait()
		_, fwErr := s.FirmwareGet(ctx(t), p.ID, v)
		_, jobErr := s.JobGet(ctx(t), j.ID)
		switch {
		case createErr == nil && (deleteErr == nil || fwErr != nil || jobErr != nil):
			t.Fatalf("round %d: job created (%v) and firmware deleted (%v): firmware %v", i, jobErr, deleteErr, fwErr)
		case createErr != nil && jobErr == nil:
			t.Fatalf("round %d: create failed (%v) but the job exists", i, createErr)
		case createErr != nil && !ota.IsCode(createErr, ota.EINVALID) && !ota.IsCode(createErr, ota.ECONFLICT):
			t.Fatalf("round %d: create failed with %v", i, createErr)
		}
		if createErr == nil {
			// End the job so the next round's device is free.
			_, err := cancelJob(t, s, j.ID, []string{ota.ExecQueued}, cancelQueued)
			must(t, err)
		}
	}
}

// testJobPhases: phases as assigned at creation, claims only up to the
// current phase, counts per phase (ended since, unhealthy), a job's change
// compare-and-set on its Rev, and devices added to a continuous job.
func testJobPhases(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 6)
	j := newJob(p, ota.JobTargets{All: true})
	j.Phases = []ota.JobPhase{{Count: 2}, {}}
	j.Continuous = true
	j.CreatedAt = ota.Now()
	err := s.JobCreate(ctx(t), ota.JobCreateParams{Job: j,
		Initial: func(v string) ota.JobExecution { return ota.NewExecution(j, v, j.CreatedAt) },
		Phases: func(cs []ota.PhaseCandidate) []int {
			out := make([]int, len(cs))
			for i, c := range cs {
				if c.Name != "d0" && c.Name != "d1" {
					out[i] = 1
				}
			}
			return out
		}})
	must(t, err)
	got, err := s.JobGet(ctx(t), j.ID)
	must(t, err)
	if len(got.Phases) != 2 || got.Phases[0].Count != 2 || !got.Continuous || got.Phase != 0 {
		t.Fatalf("stored rollout %+v", got.JobRollout)
	}
	// Only phase 0 is claimed while it is current.
	now := ota.Now()
	run := *got
	xs, err := s.JobExecutionClaim(ctx(t), ota.JobExecutionClaimParams{JobID: j.ID, Node: "n1", At: now, Since: now.Add(-time.Minute),
		Limit: func(ota.JobPace) int { return 10 },
		Claim: func(x *ota.JobExecution) (*ota.JobExecution, bool) {
			st := ota.Step(&run, x, ota.ExecEvent{Kind: ota.EventClaim, Deadline: now.Add(time.Minute)}, now)
			return &st.Exec, st.Changed
		}})
	must(t, err)
	if got := names(xs); !reflect.DeepEqual(got, []string{"d0", "d1"}) {
		t.Fatalf("claimed %v in phase 0", got)
	}
	step(t, s, &run, "d0", progress(p, "d0", ota.ProgressDone), now)
	step(t, s, &run, "d1", progress(p, "d1", ota.ProgressFail), now)
	counts, err := s.JobPhaseCounts(ctx(t), ota.JobPhaseCountsParams{JobID: j.ID, Unhealthy: true, Phase: 0})
	must(t, err)
	if len(counts) != 2 || counts[0].Counts[ota.ExecDone] != 1 || counts[0].EndedSince[ota.ExecDone] != 1 ||
		counts[1].Counts[ota.ExecQueued] != 4 || counts[0].Unhealthy != 1 { // d0 done but still on 1.0.0
		t.Fatalf("phase counts %+v", counts)
	}
	later := now.Add(time.Second)
	counts, err = s.JobPhaseCounts(ctx(t), ota.JobPhaseCountsParams{JobID: j.ID, Since: &later})
	must(t, err)
	if n := counts[0].EndedSince[ota.ExecDone] + counts[0].EndedSince[ota.ExecQueued]; n != 0 {
		t.Fatalf("ended since later: %+v", counts[0])
	}

	// JobChange is compare-and-set on Rev: a stale decision is ECONFLICT.
	change := func(rev int) error {
		_, err := s.JobChange(ctx(t), ota.JobChangeParams{ID: j.ID, At: later, Job: func(cur *ota.Job) (*ota.Job, error) {
			if cur.Rev != rev {
				return nil, ota.Errorf(ota.ECONFLICT, "changed meanwhile")
			}
			to, err := ota.JobControl(cur, ota.JobActionAdvance, later)
			return to, err
		}})
		return err
	}
	must(t, change(got.Rev))
	wantCode(t, change(got.Rev), ota.ECONFLICT)
	got, err = s.JobGet(ctx(t), j.ID)
	must(t, err)
	if got.Phase != 1 || got.Phases[0].Result != ota.PhaseAdvanced || got.Phases[1].StartedAt == nil {
		t.Fatalf("advanced job %+v", got.JobRollout)
	}

	// New devices join the continuous job, in its current phase; once.
	// A look at some devices adds only those of them that match.
	MustDevice(t, s, p.ID, "new")
	MustDevice(t, s, p.ID, "new2")
	add := ota.JobAddParams{Job: got, At: later, Initial: func(v string) ota.JobExecution { return ota.NewExecution(got, v, later) }}
	some := add
	some.Devices = []string{"d0", "new", "absent"}
	n, err := s.JobExecutionsAdd(ctx(t), some)
	must(t, err)
	if n != 1 {
		t.Fatalf("%d of d0 (in the job), new and absent added, want 1", n)
	}
	some.Devices = []string{}
	if n, err := s.JobExecutionsAdd(ctx(t), some); err != nil || n != 0 {
		t.Fatalf("a look at no device added %d, %v", n, err)
	}
	n, err = s.JobExecutionsAdd(ctx(t), add)
	must(t, err)
	if n != 1 {
		t.Fatalf("%d devices added by a look at all (new2 left), want 1", n)
	}
	x, err := s.JobExecutionGet(ctx(t), j.ID, "new")
	must(t, err)
	if x.Phase != 1 || x.State != ota.ExecQueued {
		t.Fatalf("added execution %+v", x)
	}
	if n, err := s.JobExecutionsAdd(ctx(t), add); err != nil || n != 0 {
		t.Fatalf("second add: %d, %v", n, err)
	}
}

// testJobCountsFollowExecutions: a job's counts (JobCounts, JobPhaseCounts,
// the pace a claim sees, Stats) always equal its executions counted one
// by one, through creation with phases, claims, reports, a conflicting
// write that is rolled back, a cancel and a device's deletion; and a page
// filtered by state, from a cursor, holds exactly that state's devices.
func testJobCountsFollowExecutions(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 7)
	Record(t, s, ota.Report{ProductID: p.ID, DeviceName: "d6", Type: ota.EventReportVersion, Version: "2.0.0", At: ota.Now()})
	j := newJob(p, ota.JobTargets{All: true})
	j.Phases = []ota.JobPhase{{Count: 3}, {}}
	j.CreatedAt = ota.Now()
	must(t, s.JobCreate(ctx(t), ota.JobCreateParams{Job: j,
		Initial: func(v string) ota.JobExecution { return ota.NewExecution(j, v, j.CreatedAt) },
		Phases:  func(cs []ota.PhaseCandidate) []int { return ota.AssignPhases(j, cs) }}))
	check := func(when string) {
		t.Helper()
		xs, err := s.JobExecutionList(ctx(t), ota.JobExecutionListParams{JobID: j.ID, Limit: 100})
		must(t, err)
		want, wantPhase, wantAttempted := map[string]int{}, map[int]map[string]int{}, map[int]map[string]int{}
		inFlight, notified, succeeded := 0, 0, 0
		for _, x := range xs {
			want[x.State]++
			if wantPhase[x.Phase] == nil {
				wantPhase[x.Phase], wantAttempted[x.Phase] = map[string]int{}, map[string]int{}
			}
			wantPhase[x.Phase][x.State]++
			if x.Attempts > 0 {
				wantAttempted[x.Phase][x.State]++
				notified++
				if x.State == ota.ExecDone {
					succeeded++
				}
			}
			if ota.ExecInFlight(x.State) {
				inFlight++
			}
		}
		got, err := s.JobCounts(ctx(t), j.ID)
		must(t, err)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: JobCounts = %v, executions say %v", when, got, want)
		}
		phases, err := s.JobPhaseCounts(ctx(t), ota.JobPhaseCountsParams{JobID: j.ID})
		must(t, err)
		gotPhase, gotAttempted := map[int]map[string]int{}, map[int]map[string]int{}
		for _, pc := range phases {
			gotPhase[pc.Phase], gotAttempted[pc.Phase] = pc.Counts, map[string]int{}
			for st, n := range pc.EndedSince {
				if n != 0 {
					gotAttempted[pc.Phase][st] = n
				}
			}
		}
		if !reflect.DeepEqual(gotPhase, wantPhase) || !reflect.DeepEqual(gotAttempted, wantAttempted) {
			t.Fatalf("%s: JobPhaseCounts = %v attempted %v, executions say %v attempted %v", when, gotPhase, gotAttempted, wantPhase, wantAttempted)
		}
		now := ota.Now()
		var pace ota.JobPace
		_, err = s.JobExecutionClaim(ctx(t), ota.JobExecutionClaimParams{JobID: j.ID, Node: "n1", At: now, Since: now.Add(-time.Minute),
			Limit: func(p ota.JobPace) int { pace = p; return 0 }})
		must(t, err)
		if pace.InFlight != inFlight || pace.Notified != notified || pace.Succeeded != succeeded {
			t.Fatalf("%s: pace %+v, executions say in flight %d, notified %d, succeeded %d", when, pace, inFlight, notified, succeeded)
		}
		st, err := s.Stats(ctx(t))
		must(t, err)
		if !reflect.DeepEqual(st.ExecutionsByState, want) {
			t.Fatalf("%s: Stats = %v, executions say %v", when, st.ExecutionsByState, want)
		}
		for state, n := range want {
			var page []string
			after := ""
			for {
				xs, err := s.JobExecutionList(ctx(t), ota.JobExecutionListParams{JobID: j.ID, State: state, After: after, Limit: 1})
				must(t, err)
				if len(xs) == 0 {
					break
				}
				if xs[0].State != state {
					t.Fatalf("%s: page of %s holds %+v", when, state, xs[0])
				}
				page, after = append(page, xs[0].DeviceName), xs[0].DeviceName
			}
			if len(page) != n || !sort.StringsAreSorted(page) {
				t.Fatalf("%s: pages of %s = %v, want %d in order", when, state, page, n)
			}
		}
	}
	check("created")
	run := *j
	run.Phase = 1
	now := ota.Now()
	claimed := claim(t, s, &run, "n1", 5, now) // phase 0's three
	if len(claimed) != 3 {
		t.Fatalf("claimed %d, want 3", len(claimed))
	}
	check("claimed")
	step(t, s, &run, claimed[0].DeviceName, progress(p, claimed[0].DeviceName, ota.ProgressDownloading), now)
	step(t, s, &run, claimed[1].DeviceName, progress(p, claimed[1].DeviceName, ota.ProgressDone), now)
	step(t, s, &run, claimed[2].DeviceName, progress(p, claimed[2].DeviceName, ota.ProgressFail), now)
	check("reported")
	// A write that loses its compare-and-set changes no count.
	stale := *claimed[0]
	stale.State = ota.ExecDone
	wantCode(t, s.JobExecutionUpdate(ctx(t), &stale), ota.ECONFLICT)
	check("conflict")
	_, err := cancelJob(t, s, j.ID, []string{ota.ExecQueued}, cancelQueued)
	must(t, err)
	check("canceled")
	must(t, s.DeviceDelete(ctx(t), p.ID, claimed[0].DeviceName, func(x *ota.JobExecution) (*ota.JobExecution, bool) {
		st := ota.Step(&ota.Job{}, x, ota.ExecEvent{Kind: ota.EventDeviceDeleted}, ota.Now())
		return &st.Exec, st.Changed
	}))
	check("device deleted")
}
