package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
)

// testEventLog: the changes of a job's life are in the log, in order,
// filterable.
func testEventLog(t *testing.T, s ota.Store) {
	p := jobFixture(t, s, 2)
	j := newJob(p, ota.JobTargets{All: true})
	must(t, createJob(t, s, j))
	claim(t, s, j, "n1", 1, ota.Now())
	step(t, s, j, "d0", progress(p, "d0", ota.ProgressDone), ota.Now())
	must(t, s.DeviceSetDisabled(ctx(t), p.ID, "d1", true))

	all, err := s.EventList(ctx(t), ota.EventListParams{ProductID: p.ID})
	must(t, err)
	var types []string
	for i, e := range all {
		if i > 0 && e.Seq <= all[i-1].Seq {
			t.Fatalf("sequence not increasing: %d after %d", e.Seq, all[i-1].Seq)
		}
		types = append(types, e.Type)
	}
	want := []string{"firmware.uploaded",
		"device.created", "device.online", "device.version_reported",
		"device.created", "device.online", "device.version_reported",
		"job.created", "execution.notified", "execution.done", "device.disabled"}
	if fmt.Sprint(types) != fmt.Sprint(want) {
		t.Fatalf("event types\n got %v\nwant %v", types, want)
	}
	done := all[9]
	if done.JobID != j.ID || done.DeviceName != "d0" || string(done.Data) == "" {
		t.Fatalf("execution event = %+v", done)
	}
	// Filters: by job, by type and type prefix, after a sequence number.
	byJob, err := s.EventList(ctx(t), ota.EventListParams{JobID: j.ID})
	must(t, err)
	if len(byJob) != 3 {
		t.Fatalf("events of the job = %d, want 3", len(byJob))
	}
	execs, err := s.EventList(ctx(t), ota.EventListParams{ProductID: p.ID, Types: []string{"execution.*", "device.disabled"}})
	must(t, err)
	if len(execs) != 3 || execs[2].Type != "device.disabled" {
		t.Fatalf("filtered by type = %+v", execs)
	}
	after, err := s.EventList(ctx(t), ota.EventListParams{ProductID: p.ID, After: all[8].Seq, Limit: 1})
	must(t, err)
	if len(after) != 1 || after[0].Seq != all[9].Seq {
		t.Fatalf("page after %d = %+v", all[8].Seq, after)
	}
	// Retention: everything older than now goes, in batches.
	n, err := s.EventsPrune(ctx(t), ota.Now().Add(time.Hour), 3)
	must(t, err)
	if n != 6 {
		t.Fatalf("pruned %d, want 3 events and 3 history entries", n)
	}
}

// testEventLogFollow: a reader that follows the log with "after" while
// writers commit concurrently sees every event exactly once: sequence
// numbers grow in commit order.
func testEventLogFollow(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	start, err := s.EventList(ctx(t), ota.EventListParams{ProductID: p.ID})
	must(t, err)
	const writers, each = 4, 25
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.DeviceCreate(ctx(t), &ota.Device{ProductID: p.ID, Name: fmt.Sprintf("w%d-%d", w, i), Secret: ota.NewDeviceSecret()}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	seen := map[string]bool{}
	var last int64
	if len(start) > 0 {
		last = start[len(start)-1].Seq
	}
	deadline := time.Now().Add(60 * time.Second)
	for len(seen) < writers*each && time.Now().Before(deadline) && !t.Failed() {
		page, err := s.EventList(ctx(t), ota.EventListParams{ProductID: p.ID, After: last, Types: []string{ota.LogDeviceCreated}, Limit: 7})
		must(t, err)
		for _, e := range page {
			if e.Seq <= last || seen[e.DeviceName] {
				t.Fatalf("event %d (%s) seen again or out of order after %d", e.Seq, e.DeviceName, last)
			}
			seen[e.DeviceName], last = true, e.Seq
		}
	}
	wg.Wait()
	all, err := s.EventList(ctx(t), ota.EventListParams{ProductID: p.ID, Types: []string{ota.LogDeviceCreated}, Limit: ota.MaxPageLimit})
	must(t, err)
	if len(all) != writers*each || len(seen) != writers*each {
		t.Fatalf("%d events stored, %d seen by the follower; want %d", len(all), len(seen), writers*each)
	}
}
