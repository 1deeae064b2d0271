// Package storetest is the contract suite every ota.Store implementation
// passes. Each store method starts life as a case here; both drivers run it
// through Run.
package storetest

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/otad/otad/internal/ota"
)

// Run runs every contract case against fresh stores made by newStore.
func Run(t *testing.T, newStore func(t *testing.T) ota.Store) {
	cases := []struct {
		name string
		fn   func(t *testing.T, s ota.Store)
	}{
		{"Product", testProduct},
		{"ProductList", testProductList},
		{"Device", testDevice},
		{"DeviceBatch", testDeviceBatch},
		{"DeviceList", testDeviceList},
		{"DeviceDelete", testDeviceDelete},
		{"DevicePresence", testDevicePresence},
		{"DevicePresenceBatch", testDevicePresenceBatch},
		{"DeviceReportsRecord", testDeviceReportsRecord},
		{"DeviceReportsRecordManyDevices", testDeviceReportsRecordManyDevices},
		{"DeviceReportsApply", testDeviceReportsApply},
		{"DeviceDeleteKeepsJobHistory", testDeviceDeleteKeepsJobHistory},
		{"FirmwareDeleteInFlight", testFirmwareDeleteInFlight},
		{"JobCreateRacesFirmwareDelete", testJobCreateRacesFirmwareDelete},
		{"EventLog", testEventLog},
		{"EventLogFollow", testEventLogFollow},
		{"Webhook", testWebhook},
		{"WebhookAttemptConcurrent", testWebhookAttemptConcurrent},
		{"Firmware", testFirmware},
		{"FirmwareBlobKeys", testFirmwareBlobKeys},
		{"Token", testToken},
		{"TokenRevokeLastAdmin", testTokenRevokeLastAdmin},
		{"TokenRevokeConcurrent", testTokenRevokeConcurrent},
		{"TokenEnsure", testTokenEnsure},
		{"Audit", testAudit},
		{"DeviceSecret", testDeviceSecret},
		{"Verbatim", testVerbatim},
		{"DevicePresenceNode", testDevicePresenceNode},
		{"DevicePresenceTrailsReports", testDevicePresenceTrailsReports},
		{"SettingEnsure", testSettingEnsure},
		{"NodeHeartbeat", testNodeHeartbeat},
		{"JobCreate", testJobCreate},
		{"JobLifecycle", testJobLifecycle},
		{"JobExecutionClaim", testJobExecutionClaim},
		{"JobExecutionClaimConcurrent", testJobExecutionClaimConcurrent},
		{"JobExecutionClaimPacedConcurrent", testJobExecutionClaimPacedConcurrent},
		{"JobPhases", testJobPhases},
		{"JobCountsFollowExecutions", testJobCountsFollowExecutions},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, newStore(t))
		})
	}
}

func ctx(t *testing.T) context.Context { return t.Context() }

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if got := ota.ErrorCode(err); got != code {
		t.Fatalf("error = %v (code %q), want code %q", err, got, code)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// MustProduct creates a product with a fresh ID.
func MustProduct(t testing.TB, s ota.Store) *ota.Product {
	t.Helper()
	p := &ota.Product{ID: ota.NewProductID(), Name: "thermostat"}
	if err := s.ProductCreate(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

// MustDevice creates a device of product pid.
func MustDevice(t testing.TB, s ota.Store, pid, name string) *ota.Device {
	t.Helper()
	d := &ota.Device{ProductID: pid, Name: name, Secret: ota.NewDeviceSecret()}
	if err := s.DeviceCreate(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	return d
}

func testProduct(t *testing.T, s ota.Store) {
	p := &ota.Product{ID: "ABCDEF1234", Name: "Lamp", Description: "a lamp"}
	must(t, s.ProductCreate(ctx(t), p))
	if p.CreatedAt.IsZero() || p.CreatedAt.Location() != time.UTC {
		t.Fatalf("CreatedAt = %v, want set in UTC", p.CreatedAt)
	}
	got, err := s.ProductGet(ctx(t), "ABCDEF1234")
	must(t, err)
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("ProductGet = %+v, want %+v", got, p)
	}
	wantCode(t, s.ProductCreate(ctx(t), &ota.Product{ID: "ABCDEF1234", Name: "again"}), ota.ECONFLICT)
	_, err = s.ProductGet(ctx(t), "NOPE000000")
	wantCode(t, err, ota.ENOTFOUND)
}

func testProductList(t *testing.T, s ota.Store) {
	var want []string
	for i := range 7 {
		id := fmt.Sprintf("P%09d", i)
		want = append(want, id)
		must(t, s.ProductCreate(ctx(t), &ota.Product{ID: id, Name: "n"}))
	}
	var got []string
	after := ""
	for range 10 {
		page, err := s.ProductList(ctx(t), ota.ProductListParams{After: after, Limit: 3})
		must(t, err)
		if len(page) > 3 {
			t.Fatalf("page of %d, limit 3", len(page))
		}
		for _, p := range page {
			got = append(got, p.ID)
		}
		if len(page) < 3 {
			break
		}
		after = page[len(page)-1].ID
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("paged list = %v, want %v", got, want)
	}
	empty, err := s.ProductList(ctx(t), ota.ProductListParams{After: "ZZZZZZZZZZ"})
	must(t, err)
	if empty == nil || len(empty) != 0 {
		t.Fatalf("list past the end = %#v, want empty non-nil", empty)
	}
}

func testDevice(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	d := &ota.Device{ProductID: p.ID, Name: "dev-1:a@b.c_d", Secret: ota.NewDeviceSecret(), Version: "1.0.0"}
	must(t, s.DeviceCreate(ctx(t), d))
	got, err := s.DeviceGet(ctx(t), p.ID, d.Name)
	must(t, err)
	if !reflect.DeepEqual(got, d) {
		t.Fatalf("DeviceGet = %+v, want %+v", got, d)
	}
	wantCode(t, s.DeviceCreate(ctx(t), &ota.Device{ProductID: p.ID, Name: d.Name, Secret: ota.NewDeviceSecret()}), ota.ECONFLICT)
	wantCode(t, s.DeviceCreate(ctx(t), &ota.Device{ProductID: "NOPE000000", Name: "x", Secret: ota.NewDeviceSecret()}), ota.ENOTFOUND)
	_, err = s.DeviceGet(ctx(t), p.ID, "missing")
	wantCode(t, err, ota.ENOTFOUND)

	must(t, s.DeviceSetDisabled(ctx(t), p.ID, d.Name, true))
	got, err = s.DeviceGet(ctx(t), p.ID, d.Name)
	must(t, err)
	if !got.Disabled {
		t.Fatal("device not disabled")
	}
	wantCode(t, s.DeviceSetDisabled(ctx(t), p.ID, "missing", true), ota.ENOTFOUND)
}

func testDeviceList(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	other := MustProduct(t, s)
	MustDevice(t, s, other.ID, "not-mine")
	for i := range 5 {
		v := "1.0.0"
		if i%2 == 1 {
			v = "2.0.0"
		}
		must(t, s.DeviceCreate(ctx(t), &ota.Device{ProductID: p.ID, Name: fmt.Sprintf("d%d", i), Secret: ota.NewDeviceSecret(), Version: v}))
	}
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d3", Online: true, At: ota.Now()}))

	names := func(params ota.DeviceListParams) []string {
		t.Helper()
		params.ProductID = p.ID
		ds, err := s.DeviceList(ctx(t), params)
		must(t, err)
		out := []string{}
		for _, d := range ds {
			out = append(out, d.Name)
		}
		return out
	}
	on, off := true, false
	for _, c := range []struct {
		params ota.DeviceListParams
		want   []string
	}{
		{ota.DeviceListParams{}, []string{"d0", "d1", "d2", "d3", "d4"}},
		{ota.DeviceListParams{Limit: 2}, []string{"d0", "d1"}},
		{ota.DeviceListParams{After: "d1", Limit: 2}, []string{"d2", "d3"}},
		{ota.DeviceListParams{Version: "2.0.0"}, []string{"d1", "d3"}},
		{ota.DeviceListParams{Version: "2.0.0", After: "d1"}, []string{"d3"}},
		{ota.DeviceListParams{Online: &on}, []string{"d3"}},
		{ota.DeviceListParams{Online: &off, Version: "2.0.0"}, []string{"d1"}},
		{ota.DeviceListParams{Version: "9"}, []string{}},
	} {
		if got := names(c.params); !reflect.DeepEqual(got, c.want) {
			t.Errorf("DeviceList(%+v) = %v, want %v", c.params, got, c.want)
		}
	}
}

func testDeviceDelete(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	MustDevice(t, s, p.ID, "gone")
	Record(t, s, []ota.Report{{ProductID: p.ID, DeviceName: "gone", Type: ota.EventReportVersion, Version: "1", At: ota.Now()}}...)
	must(t, s.DeviceDelete(ctx(t), p.ID, "gone", endNone))
	wantCode(t, s.DeviceDelete(ctx(t), p.ID, "gone", endNone), ota.ENOTFOUND)
	_, err := s.DeviceGet(ctx(t), p.ID, "gone")
	wantCode(t, err, ota.ENOTFOUND)
	// A device created again under the same name starts with no history.
	MustDevice(t, s, p.ID, "gone")
	evs, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "gone"})
	must(t, err)
	if len(evs) != 0 {
		t.Fatalf("history of a re-created device = %+v, want empty", evs)
	}
}

func testDevicePresence(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	MustDevice(t, s, p.ID, "d")
	t1 := ota.Now().Add(-time.Minute)
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: true, At: t1}))
	d, err := s.DeviceGet(ctx(t), p.ID, "d")
	must(t, err)
	if !d.Online || d.LastSeenAt == nil || !d.LastSeenAt.Equal(t1) {
		t.Fatalf("after connect: online=%v last_seen=%v, want true %v", d.Online, d.LastSeenAt, t1)
	}
	t2 := ota.Now()
	must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "d", Online: false, At: t2}))
	d, err = s.DeviceGet(ctx(t), p.ID, "d")
	must(t, err)
	if d.Online || !d.LastSeenAt.Equal(t2) {
		t.Fatalf("after disconnect: online=%v last_seen=%v", d.Online, d.LastSeenAt)
	}
	evs, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "d"})
	must(t, err)
	if len(evs) != 2 || evs[0].Type != ota.EventDisconnected || evs[1].Type != ota.EventConnected {
		t.Fatalf("events = %+v, want disconnected then connected (newest first)", evs)
	}
	wantCode(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: "missing", Online: true, At: t2}), ota.ENOTFOUND)
}

// testDevicePresenceBatch: a batch applies each device's changes in the
// order given (whatever the order of the devices), refuses a missing
// device alone, and appends one event per change.
func testDevicePresenceBatch(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	MustDevice(t, s, p.ID, "a")
	MustDevice(t, s, p.ID, "b")
	seq, err := s.EventLastSeq(ctx(t))
	must(t, err)
	t0 := ota.Now().Add(-time.Minute)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	errs, err := s.DevicePresenceBatch(ctx(t), []ota.DevicePresenceParams{
		{ProductID: p.ID, DeviceName: "b", Online: true, Node: "n1", At: at(0)},
		{ProductID: p.ID, DeviceName: "a", Online: true, Node: "n1", At: at(1)},
		{ProductID: p.ID, DeviceName: "missing", Online: true, Node: "n1", At: at(2)},
		{ProductID: p.ID, DeviceName: "b", Online: false, Node: "n1", At: at(3)},
		{ProductID: p.ID, DeviceName: "a", Online: false, Node: "n1", At: at(4)},
		{ProductID: p.ID, DeviceName: "a", Online: true, Node: "n2", At: at(5)},
	})
	must(t, err)
	for i, err := range errs {
		if want := i == 2; ota.IsCode(err, ota.ENOTFOUND) != want || !want && err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
	}
	a, err := s.DeviceGet(ctx(t), p.ID, "a")
	must(t, err)
	b, err := s.DeviceGet(ctx(t), p.ID, "b")
	must(t, err)
	if !a.Online || a.Node != "n2" || !a.LastSeenAt.Equal(at(5)) || b.Online || !b.LastSeenAt.Equal(at(3)) {
		t.Fatalf("a online=%v node=%s seen=%v, b online=%v seen=%v; want a online on n2 at +5s, b offline at +3s",
			a.Online, a.Node, a.LastSeenAt, b.Online, b.LastSeenAt)
	}
	hist, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "a"})
	must(t, err)
	if len(hist) != 3 || hist[0].Type != ota.EventConnected || hist[1].Type != ota.EventDisconnected {
		t.Fatalf("a's history = %+v, want connected, disconnected, connected (newest first)", hist)
	}
	evs, err := s.EventList(ctx(t), ota.EventListParams{After: seq, ProductID: p.ID, Limit: ota.MaxPageLimit})
	must(t, err)
	if len(evs) != 5 {
		t.Fatalf("%d events, want one per change written (5): %+v", len(evs), evs)
	}
}

func intp(n int) *int { return &n }

// Record applies reports as the engine does for devices in no job: each
// existing device is updated by ota.ApplyReport on node "n1", and each
// report of an existing device is recorded.
func Record(t testing.TB, s ota.Store, reports ...ota.Report) {
	t.Helper()
	RecordOn(t, s, "n1", reports...)
}

// RecordOn is Record for reports received on node.
func RecordOn(t testing.TB, s ota.Store, node string, reports ...ota.Report) {
	t.Helper()
	err := s.DeviceReportsApply(t.Context(), reports, func(_ context.Context, b *ota.ReportBatch) error {
		for i, r := range b.Reports {
			if d := b.Devices[ota.DeviceKey{ProductID: r.ProductID, Name: r.DeviceName}]; d != nil {
				ota.ApplyReport(d, r, node)
				b.Record[i] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testDeviceReportsRecord(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	MustDevice(t, s, p.ID, "a")
	MustDevice(t, s, p.ID, "b")
	now := ota.Now()
	reports := []ota.Report{
		{ProductID: p.ID, DeviceName: "a", Type: ota.EventReportVersion, Version: "1.0.0", At: now},
		{ProductID: p.ID, DeviceName: "ghost", Type: ota.EventReportVersion, Version: "1.0.0", At: now},
		{ProductID: p.ID, DeviceName: "b", Type: ota.EventReportProgress, Version: "1.1.0", State: ota.ProgressDownloading, Percent: intp(49), ResultCode: intp(0), At: now},
		{ProductID: p.ID, DeviceName: "b", Type: ota.EventReportProgress, Version: "1.1.0", State: ota.ProgressBurning, ResultCode: intp(0), At: now.Add(time.Second)},
	}
	Record(t, s, reports...)
	Record(t, s)

	a, err := s.DeviceGet(ctx(t), p.ID, "a")
	must(t, err)
	if a.Version != "1.0.0" || !a.Online || a.LastSeenAt == nil || !a.LastSeenAt.Equal(now) || a.Upgrade != nil {
		t.Fatalf("device a = %+v", a)
	}
	b, err := s.DeviceGet(ctx(t), p.ID, "b")
	must(t, err)
	want := &ota.UpgradeProgress{Version: "1.1.0", State: ota.ProgressBurning, Percent: 49, UpdatedAt: now.Add(time.Second)}
	if !reflect.DeepEqual(b.Upgrade, want) {
		t.Fatalf("device b upgrade = %+v, want %+v (percent kept from downloading)", b.Upgrade, want)
	}
	Record(t, s, []ota.Report{{ProductID: p.ID, DeviceName: "b", Type: ota.EventReportProgress,
		Version: "1.1.0", State: ota.ProgressFail, ResultCode: intp(-4), ResultMsg: "time_out", At: now.Add(2 * time.Second)}}...)
	b, err = s.DeviceGet(ctx(t), p.ID, "b")
	must(t, err)
	if b.Upgrade.State != ota.ExecFailed || b.Upgrade.ResultCode != -4 || b.Upgrade.ResultMsg != "time_out" {
		t.Fatalf("device b upgrade after fail = %+v", b.Upgrade)
	}

	evs, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "b"})
	must(t, err)
	if len(evs) != 3 {
		t.Fatalf("events of b = %d, want 3", len(evs))
	}
	first := evs[2]
	if first.Type != ota.EventReportProgress || first.State != ota.ProgressDownloading || first.Percent == nil || *first.Percent != 49 ||
		first.ResultCode == nil || *first.ResultCode != 0 || first.Version != "1.1.0" || !first.CreatedAt.Equal(now) {
		t.Fatalf("oldest event of b = %+v", first)
	}
	if evs[1].Percent != nil {
		t.Fatalf("burning event percent = %v, want none", *evs[1].Percent)
	}
	older, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "b", Before: evs[0].ID, Limit: 1})
	must(t, err)
	if len(older) != 1 || older[0].ID != evs[1].ID {
		t.Fatalf("page before %d = %+v", evs[0].ID, older)
	}
	ghost, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "ghost"})
	must(t, err)
	if len(ghost) != 0 {
		t.Fatalf("events of an unknown device were stored: %+v", ghost)
	}
}

// testDeviceReportsRecordManyDevices records a batch with one report per
// device, as the broker's group commit writes them (a driver may take a
// set-based path for it), with the same outcome as one by one.
func testDeviceReportsRecordManyDevices(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		MustDevice(t, s, p.ID, n)
	}
	now := ota.Now()
	// d was downloading 1.1.0, e was downloading 1.0.9: the batch's reports
	// without a percent keep d's and reset e's.
	Record(t, s, []ota.Report{
		{ProductID: p.ID, DeviceName: "d", Type: ota.EventReportProgress, Version: "1.1.0", State: ota.ProgressDownloading, Percent: intp(30), At: now},
	}...)
	Record(t, s, []ota.Report{
		{ProductID: p.ID, DeviceName: "e", Type: ota.EventReportProgress, Version: "1.0.9", State: ota.ProgressDownloading, Percent: intp(70), At: now},
	}...)
	at := now.Add(time.Second)
	Record(t, s, []ota.Report{
		{ProductID: p.ID, DeviceName: "a", Type: ota.EventReportVersion, Version: "2.0.0", At: at},
		{ProductID: p.ID, DeviceName: "ghost", Type: ota.EventReportVersion, Version: "2.0.0", At: at},
		{ProductID: p.ID, DeviceName: "b", Type: ota.EventReportProgress, Version: "1.1.0", State: ota.ProgressDownloading, Percent: intp(49), ResultCode: intp(0), At: at},
		{ProductID: p.ID, DeviceName: "c", Type: ota.EventReportProgress, Version: "1.1.0", State: ota.ProgressDone, ResultCode: intp(0), At: at},
		{ProductID: p.ID, DeviceName: "d", Type: ota.EventReportProgress, Version: "1.1.0", State: ota.ProgressBurning, At: at},
		{ProductID: p.ID, DeviceName: "e", Type: ota.EventReportProgress, Version: "1.1.0", State: ota.ProgressFail, ResultCode: intp(-2), ResultMsg: "404", At: at},
	}...)
	get := func(name string) *ota.Device {
		d, err := s.DeviceGet(ctx(t), p.ID, name)
		must(t, err)
		if !d.Online || d.LastSeenAt == nil || !d.LastSeenAt.Equal(at) {
			t.Fatalf("device %s: online %v last seen %v", name, d.Online, d.LastSeenAt)
		}
		return d
	}
	if a := get("a"); a.Version != "2.0.0" || a.Upgrade != nil {
		t.Fatalf("device a = %+v", a)
	}
	for name, want := range map[string]ota.UpgradeProgress{
		"b": {Version: "1.1.0", State: ota.ProgressDownloading, Percent: 49, UpdatedAt: at},
		"c": {Version: "1.1.0", State: ota.ProgressDone, Percent: 100, UpdatedAt: at},
		"d": {Version: "1.1.0", State: ota.ProgressBurning, Percent: 30, UpdatedAt: at},
		"e": {Version: "1.1.0", State: ota.ExecFailed, Percent: 0, ResultCode: -2, ResultName: "file_not_found", ResultMsg: "404", UpdatedAt: at},
	} {
		if d := get(name); d.Upgrade == nil || *d.Upgrade != want {
			t.Fatalf("device %s upgrade = %+v, want %+v", name, d.Upgrade, want)
		}
	}
	for name, n := range map[string]int{"a": 1, "b": 1, "c": 1, "d": 2, "e": 2, "ghost": 0} {
		evs, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: name})
		must(t, err)
		if len(evs) != n {
			t.Fatalf("events of %s = %d, want %d", name, len(evs), n)
		}
		if n > 0 && !evs[0].CreatedAt.Equal(at) {
			t.Fatalf("newest event of %s = %+v", name, evs[0])
		}
	}
	e, err := s.DeviceEventList(ctx(t), ota.DeviceEventListParams{ProductID: p.ID, DeviceName: "e"})
	must(t, err)
	if e[0].State != ota.ProgressFail || e[0].ResultCode == nil || *e[0].ResultCode != -2 || e[0].ResultMsg != "404" || e[0].Percent != nil {
		t.Fatalf("fail event of e = %+v", e[0])
	}
}

func testFirmware(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	f := &ota.Firmware{ProductID: p.ID, Version: "1.0.1", Size: 31242, MD5: "cc03e747a6afbbcbf8be7668acfebee5",
		SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", Description: "fixes", BlobKey: p.ID + "/1.0.1/x"}
	must(t, s.FirmwareCreate(ctx(t), f))
	got, err := s.FirmwareGet(ctx(t), p.ID, "1.0.1")
	must(t, err)
	if !reflect.DeepEqual(got, f) {
		t.Fatalf("FirmwareGet = %+v, want %+v", got, f)
	}
	dup := *f
	dup.BlobKey = "other"
	wantCode(t, s.FirmwareCreate(ctx(t), &dup), ota.ECONFLICT)
	nf := *f
	nf.ProductID = "NOPE000000"
	wantCode(t, s.FirmwareCreate(ctx(t), &nf), ota.ENOTFOUND)
	must(t, s.FirmwareCreate(ctx(t), &ota.Firmware{ProductID: p.ID, Version: "1.0.2", BlobKey: "k2"}))
	list, err := s.FirmwareList(ctx(t), ota.FirmwareListParams{ProductID: p.ID})
	must(t, err)
	if len(list) != 2 || list[0].Version != "1.0.1" || list[1].Version != "1.0.2" {
		t.Fatalf("FirmwareList = %+v", list)
	}
	list, err = s.FirmwareList(ctx(t), ota.FirmwareListParams{ProductID: p.ID, After: "1.0.1"})
	must(t, err)
	if len(list) != 1 || list[0].Version != "1.0.2" {
		t.Fatalf("FirmwareList after 1.0.1 = %+v", list)
	}
	must(t, s.FirmwareDelete(ctx(t), p.ID, "1.0.1"))
	wantCode(t, s.FirmwareDelete(ctx(t), p.ID, "1.0.1"), ota.ENOTFOUND)
	_, err = s.FirmwareGet(ctx(t), p.ID, "1.0.1")
	wantCode(t, err, ota.ENOTFOUND)
}

func testFirmwareBlobKeys(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	for i, key := range []string{p.ID + "/a-1", p.ID + "/b-2", p.ID + "/it's-%_3"} {
		must(t, s.FirmwareCreate(ctx(t), &ota.Firmware{ProductID: p.ID, Version: fmt.Sprint("1.", i), BlobKey: key}))
	}
	many := []string{p.ID + "/b-2", "gone/x", p.ID + "/it's-%_3", p.ID + "/a-"}
	for i := range 3000 { // more than one statement's worth of parameters anywhere
		many = append(many, fmt.Sprintf("%s/orphan-%d", p.ID, i))
	}
	got, err := s.FirmwareBlobKeys(ctx(t), many)
	must(t, err)
	slices.Sort(got)
	if want := []string{p.ID + "/b-2", p.ID + "/it's-%_3"}; !slices.Equal(got, want) {
		t.Fatalf("FirmwareBlobKeys = %q, want %q", got, want)
	}
	got, err = s.FirmwareBlobKeys(ctx(t), nil)
	must(t, err)
	if len(got) != 0 {
		t.Fatalf("FirmwareBlobKeys(nil) = %q", got)
	}
	must(t, s.FirmwareDelete(ctx(t), p.ID, "1.1"))
	got, err = s.FirmwareBlobKeys(ctx(t), []string{p.ID + "/b-2"})
	must(t, err)
	if len(got) != 0 {
		t.Fatalf("FirmwareBlobKeys after the delete = %q", got)
	}
}

// testVerbatim stores strings that would break naive SQL and reads them back.
func testVerbatim(t *testing.T, s ota.Store) {
	evil := []string{
		`'); DROP TABLE products; --`,
		`" OR 1=1 --`,
		`Robert'); DELETE FROM devices WHERE ('a'='a`,
		`\'; SELECT pg_sleep(10); --`,
		"日本語 🙂 ?1 $1 %s",
	}
	for i, e := range evil {
		id := fmt.Sprintf("EVIL%06d", i)
		must(t, s.ProductCreate(ctx(t), &ota.Product{ID: id, Name: e, Description: e}))
		got, err := s.ProductGet(ctx(t), id)
		must(t, err)
		if got.Name != e || got.Description != e {
			t.Fatalf("stored %q, read %q", e, got.Name)
		}
	}
	list, err := s.ProductList(ctx(t), ota.ProductListParams{})
	must(t, err)
	if len(list) != len(evil) {
		t.Fatalf("%d products after injection attempts, want %d", len(list), len(evil))
	}
	_, err = s.DeviceGet(ctx(t), "EVIL000000", `x' OR '1'='1`)
	wantCode(t, err, ota.ENOTFOUND)
}

func testSettingEnsure(t *testing.T, s ota.Store) {
	v, err := s.SettingEnsure(ctx(t), "k", "first")
	must(t, err)
	if v != "first" {
		t.Fatalf("first ensure = %q", v)
	}
	v, err = s.SettingEnsure(ctx(t), "k", "second")
	must(t, err)
	if v != "first" {
		t.Fatalf("second ensure = %q, want the first value kept", v)
	}
}

func testNodeHeartbeat(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	t0 := ota.Now()
	must2 := func(n int, err error) int {
		t.Helper()
		must(t, err)
		return n
	}
	// Replicas register before their devices connect.
	must2(s.NodeHeartbeat(ctx(t), "dead", t0.Add(-time.Hour), t0.Add(-2*time.Hour)))
	must2(s.NodeHeartbeat(ctx(t), "a", t0, t0.Add(-2*time.Hour)))
	must2(s.NodeHeartbeat(ctx(t), "b", t0, t0.Add(-2*time.Hour)))
	for _, d := range []struct{ name, node string }{{"on-a", "a"}, {"on-b", "b"}, {"on-dead", "dead"}} {
		MustDevice(t, s, p.ID, d.name)
		must(t, s.DevicePresence(ctx(t), ota.DevicePresenceParams{ProductID: p.ID, DeviceName: d.name, Online: true, Node: d.node, At: t0}))
	}
	if n := must2(s.NodeHeartbeat(ctx(t), "b", t0, t0.Add(-2*time.Hour))); n != 0 {
		t.Fatalf("marked %d devices offline while every node is alive", n)
	}
	// Node a beats again; dead has not been seen for an hour.
	if n := must2(s.NodeHeartbeat(ctx(t), "a", t0, t0.Add(-time.Minute))); n != 1 {
		t.Fatalf("marked %d devices offline, want 1 (the dead node's)", n)
	}
	for name, want := range map[string]bool{"on-a": true, "on-b": true, "on-dead": false} {
		d, err := s.DeviceGet(ctx(t), p.ID, name)
		must(t, err)
		if d.Online != want {
			t.Errorf("%s online = %v, want %v", name, d.Online, want)
		}
	}
	if n := must2(s.NodeHeartbeat(ctx(t), "a", t0.Add(time.Second), t0.Add(-time.Minute))); n != 0 {
		t.Fatalf("second heartbeat marked %d offline", n)
	}
}

// testDeviceBatch: a batch is stored whole with an event per device, or
// not at all, naming the devices already taken.
func testDeviceBatch(t *testing.T, s ota.Store) {
	p := MustProduct(t, s)
	MustDevice(t, s, p.ID, "b0042")
	seq, err := s.EventLastSeq(ctx(t))
	must(t, err)
	batch := func(n int) []*ota.Device {
		ds := make([]*ota.Device, n)
		for i := range ds {
			ds[i] = &ota.Device{ProductID: p.ID, Name: fmt.Sprintf("b%04d", i), Secret: ota.NewDeviceSecret(), Version: "1.0.0"}
		}
		return ds
	}
	err = s.DeviceCreate(ctx(t), batch(3000)...)
	wantCode(t, err, ota.ECONFLICT)
	if d := err.(*ota.Error).Detail; fmt.Sprint(d) != "map[devices:[b0042]]" {
		t.Fatalf("conflict detail %v, want the taken device", d)
	}
	ds, err := s.DeviceList(ctx(t), ota.DeviceListParams{ProductID: p.ID, Limit: 10})
	must(t, err)
	if len(ds) != 1 {
		t.Fatalf("%d devices after a refused batch, want 1", len(ds))
	}
	ds = batch(3000)
	ds[42].Name = "other"
	must(t, s.DeviceCreate(ctx(t), ds...))
	got, err := s.DeviceGet(ctx(t), p.ID, "b2999")
	must(t, err)
	if got.Secret != ds[2999].Secret || got.Version != "1.0.0" || got.CreatedAt.IsZero() {
		t.Fatalf("batch device %+v", got)
	}
	evs, err := s.EventList(ctx(t), ota.EventListParams{After: seq, Types: []string{ota.LogDeviceCreated}, Limit: ota.MaxPageLimit})
	must(t, err)
	if len(evs) != ota.MaxPageLimit || evs[0].DeviceName != "b0000" {
		t.Fatalf("%d events after the batch, first %+v", len(evs), evs[0])
	}
	wantCode(t, s.DeviceCreate(ctx(t), &ota.Device{ProductID: "NOPE000000", Name: "x", Secret: "s"}, &ota.Device{ProductID: "NOPE000000", Name: "y", Secret: "s"}), ota.ENOTFOUND)
}
