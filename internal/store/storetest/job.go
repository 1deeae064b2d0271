package storetest

import (
	"fmt"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
)

// jobFixture is a product with firmware 2.0.0 and devices d0..d(n-1) on
// 1.0.0, all online on node "n1".
func jobFixture(t *testing.T, s ota.Store, n int) *ota.Product {
	t.Helper()
	p := MustProduct(t, s)
	must(t, s.FirmwareCreate(ctx(t), &ota.Firmware{ProductID: p.ID, Version: "2.0.0", Size: 1, BlobKey: "k"}))
	for i := range n {
		name := fmt.Sprintf("d%d", i)
		must(t, s.DeviceCreate(ctx(t), &ota.Device{ProductID: p.ID, Name: name, Secret: ota.NewDeviceSecret(), Version: "1.0.0"}))
		must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: name, Online: true, Node: "n1", At: ota.Now()}))
	}
	return p
}

func newJob(p *ota.Product, targets ota.JobTargets) *ota.Job {
	j := &ota.Job{ID: ota.NewJobID(), ProductID: p.ID, FirmwareVersion: "2.0.0", Status: ota.JobRunning, Targets: targets,
		TimeoutSeconds: 60, MaxRetries: 2, RetryBackoffSeconds: 5}
	return j
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
	must(t, s.DeviceReportsRecord(ctx(t), []ota.Report{{ProductID: p.ID, DeviceName: "d3", Type: ota.EventReportVersion, Version: "2.0.0", At: ota.Now()}}))

	err := s.JobCreate(ctx(t), newJob(p, ota.JobTargets{Devices: []string{"d0", "ghost", "zz"}}))
	wantCode(t, err, ota.EINVALID)
	if got := detailDevices(t, err); !reflect.DeepEqual(got, []string{"ghost", "zz"}) {
		t.Fatalf("missing devices = %v", got)
	}
	wantCode(t, s.JobCreate(ctx(t), newJob(p, ota.JobTargets{Versions: []string{"9.9"}})), ota.EINVALID)

	j := newJob(p, ota.JobTargets{Devices: []string{"d0", "d1", "d3"}})
	must(t, s.JobCreate(ctx(t), j))
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
	err = s.JobCreate(ctx(t), overlap)
	wantCode(t, err, ota.ECONFLICT)
	if got := detailDevices(t, err); !reflect.DeepEqual(got, []string{"d0", "d1"}) {
		t.Fatalf("conflicting devices = %v", got)
	}
	_, err = s.JobGet(ctx(t), overlap.ID)
	wantCode(t, err, ota.ENOTFOUND)
	// Devices on given versions: d2 only (d3 is done, d0 and d1 are busy but
	// on 1.0.0 too, so this overlaps as well).
	wantCode(t, s.JobCreate(ctx(t), newJob(p, ota.JobTargets{Versions: []string{"1.0.0"}})), ota.ECONFLICT)
	j2 := newJob(p, ota.JobTargets{Devices: []string{"d2"}})
	must(t, s.JobCreate(ctx(t), j2))

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
	must(t, s.JobCreate(ctx(t), j))
	active, err := s.JobListActive(ctx(t))
	must(t, err)
	if len(active) != 1 || active[0].ID != j.ID {
		t.Fatalf("active jobs = %v", active)
	}
	must(t, s.JobStart(ctx(t), j.ID))
	wantCode(t, s.JobStart(ctx(t), j.ID), ota.ECONFLICT)

	now := ota.Now()
	claimed, err := s.JobExecutionClaim(ctx(t), ota.JobExecutionClaimParams{JobID: j.ID, Node: "n1", Limit: 1, At: now, Deadline: now.Add(time.Minute)})
	must(t, err)
	if len(claimed) != 1 || claimed[0].State != ota.ExecNotified || claimed[0].Attempts != 1 || !claimed[0].NotifiedAt.Equal(now) {
		t.Fatalf("claimed = %+v", claimed)
	}
	ok, err := s.JobFinish(ctx(t), j.ID, now)
	must(t, err)
	if ok {
		t.Fatal("JobFinish finished a job with active executions")
	}
	must(t, s.JobCancel(ctx(t), j.ID, now))
	wantCode(t, s.JobCancel(ctx(t), j.ID, now), ota.ECONFLICT)
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
	// Still listed as active until its last execution ends.
	active, err = s.JobListActive(ctx(t))
	must(t, err)
	if len(active) != 1 {
		t.Fatalf("active after cancel = %v", active)
	}
	must(t, s.JobExecutionTransition(ctx(t), ota.JobExecutionTransitionParams{JobID: j.ID, DeviceName: claimed[0].DeviceName,
		From: ota.ExecNotified, To: ota.ExecDone, At: now}))
	ok, err = s.JobFinish(ctx(t), j.ID, now)
	must(t, err)
	if !ok {
		t.Fatal("JobFinish did not close the canceled job")
	}
	got, err = s.JobGet(ctx(t), j.ID)
	must(t, err)
	if got.Status != ota.JobCanceled || got.CompletedAt == nil {
		t.Fatalf("closed job = %+v", got)
	}
	active, err = s.JobListActive(ctx(t))
	must(t, err)
	if len(active) != 0 {
		t.Fatalf("active after close = %v", active)
	}
	// Every device has ended: a new job over all of them is allowed.
	j2 := newJob(p, ota.JobTargets{All: true})
	must(t, s.JobCreate(ctx(t), j2))
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
	j := newJob(p, ota.JobTargets{All: true})
	must(t, s.JobCreate(ctx(t), j))
	now := ota.Now()
	// d3 waits for a retry.
	future := now.Add(time.Hour)
	claim := func(node, device string, limit int, at time.Time) []string {
		t.Helper()
		es, err := s.JobExecutionClaim(ctx(t), ota.JobExecutionClaimParams{JobID: j.ID, Node: node, DeviceName: device, Limit: limit, At: at, Deadline: at.Add(time.Minute)})
		must(t, err)
		out := []string{}
		for _, e := range es {
			out = append(out, e.DeviceName)
		}
		sort.Strings(out)
		return out
	}
	if got := claim("n1", "d3", 10, now); !reflect.DeepEqual(got, []string{"d3"}) {
		t.Fatalf("claim d3 = %v", got)
	}
	fail := -4
	msg := "md5 mismatch"
	must(t, s.JobExecutionTransition(ctx(t), ota.JobExecutionTransitionParams{JobID: j.ID, DeviceName: "d3", From: ota.ExecNotified,
		To: ota.ExecQueued, ResultCode: &fail, ResultMsg: &msg, NextAttemptAt: &future, At: now}))
	e, err := s.JobExecutionGet(ctx(t), j.ID, "d3")
	must(t, err)
	if e.State != ota.ExecQueued || e.ResultCode != -4 || e.ResultMsg != msg || e.NextAttemptAt == nil || !e.NextAttemptAt.Equal(future) || e.DeadlineAt != nil || e.Attempts != 1 {
		t.Fatalf("after retry transition: %+v", e)
	}

	if got := claim("n1", "", 2, now); !reflect.DeepEqual(got, []string{"d0", "d1"}) {
		t.Fatalf("first claim = %v", got)
	}
	if got := claim("n1", "", 10, now); !reflect.DeepEqual(got, []string{"d2"}) {
		t.Fatalf("second claim = %v (offline, other-node and backing-off devices must wait)", got)
	}
	if got := claim("n2", "", 10, now); !reflect.DeepEqual(got, []string{"d5"}) {
		t.Fatalf("node n2 claim = %v", got)
	}
	if got := claim("n1", "", 10, future); !reflect.DeepEqual(got, []string{"d3"}) {
		t.Fatalf("claim after backoff = %v", got)
	}
	e, err = s.JobExecutionGet(ctx(t), j.ID, "d3")
	must(t, err)
	if e.Attempts != 2 || e.ResultCode != -4 {
		t.Fatalf("second attempt: %+v", e)
	}
	pace, err := s.JobPace(ctx(t), j.ID, now)
	must(t, err)
	if pace != (ota.JobPace{InFlight: 5, NotifiedSince: 5, ActiveOrQueued: 6}) {
		t.Fatalf("pace = %+v", pace)
	}

	// Progress in place, CAS on the state, terminal states finish.
	pct := 40
	must(t, s.JobExecutionTransition(ctx(t), ota.JobExecutionTransitionParams{JobID: j.ID, DeviceName: "d0", From: ota.ExecNotified, To: ota.ExecDownloading, Percent: &pct, At: now}))
	pct = 60
	must(t, s.JobExecutionTransition(ctx(t), ota.JobExecutionTransitionParams{JobID: j.ID, DeviceName: "d0", From: ota.ExecDownloading, To: ota.ExecDownloading, Percent: &pct, At: now}))
	wantCode(t, s.JobExecutionTransition(ctx(t), ota.JobExecutionTransitionParams{JobID: j.ID, DeviceName: "d0", From: ota.ExecNotified, To: ota.ExecBurning, At: now}), ota.ECONFLICT)
	e, err = s.JobExecutionGet(ctx(t), j.ID, "d0")
	must(t, err)
	if e.State != ota.ExecDownloading || e.Percent != 60 || e.DeadlineAt == nil || !e.DeadlineAt.Equal(now.Add(time.Minute)) {
		t.Fatalf("d0 = %+v", e)
	}
	must(t, s.JobExecutionTransition(ctx(t), ota.JobExecutionTransitionParams{JobID: j.ID, DeviceName: "d0", From: ota.ExecDownloading, To: ota.ExecFailed, At: now}))
	e, err = s.JobExecutionGet(ctx(t), j.ID, "d0")
	must(t, err)
	if e.FinishedAt == nil || e.DeadlineAt != nil {
		t.Fatalf("failed d0 = %+v", e)
	}

	expired, err := s.JobExecutionsExpired(ctx(t), now.Add(2*time.Minute), 100)
	must(t, err)
	var names []string
	for _, e := range expired {
		names = append(names, e.DeviceName)
	}
	sort.Strings(names)
	if !reflect.DeepEqual(names, []string{"d1", "d2", "d5"}) {
		t.Fatalf("expired = %v", names)
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
	must(t, s.JobCreate(ctx(t), j))
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				now := ota.Now()
				es, err := s.JobExecutionClaim(ctx(t), ota.JobExecutionClaimParams{JobID: j.ID, Node: "n1", Limit: 7, At: now, Deadline: now.Add(time.Minute)})
				if err != nil {
					t.Error(err)
					return
				}
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
