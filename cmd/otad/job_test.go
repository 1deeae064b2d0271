package main

import (
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
)

// uploadFirmware uploads size random bytes as version and returns them.
func (a *testApp) uploadFirmware(t *testing.T, pid, version string, size int) []byte {
	t.Helper()
	img := make([]byte, size)
	rand.Read(img)
	a.do("POST", "/v1/products/"+pid+"/firmware?version="+version, img, "Content-Type", "application/octet-stream").wantStatus(t, 201)
	return img
}

type jobJSON struct {
	ID          string         `json:"id"`
	Status      string         `json:"status"`
	Counts      map[string]int `json:"counts"`
	Total       int            `json:"total"`
	CompletedAt *string        `json:"completed_at"`
}

func TestJobsAPI(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		pid := "JOBS000001"
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "p"}).wantStatus(t, 201)
		for i := range 5 {
			a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": fmt.Sprintf("d%d", i), "version": "1.0.0"}).wantStatus(t, 201)
		}
		a.uploadFirmware(t, pid, "2.0.0", 4096)
		base := "/v1/products/" + pid + "/jobs"

		for _, c := range []struct {
			body   string
			status int
			code   string
		}{
			{`{"firmware_version": "9.9.9", "targets": {"all": true}}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {}}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"all": true, "versions": ["1.0.0"]}}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"devices": ["d0", "nope"]}}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"devices": ["d0", "d0"]}}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"devices": ["bad name"]}}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"all": true}, "max_retries": -1}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"all": true}, "timeout_seconds": "60"}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"all": true}, "priority": 1}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"versions": ["0.0.1"]}}`, 400, "invalid"},
			// Numbers past what the database stores are the caller's error.
			{`{"firmware_version": "2.0.0", "targets": {"all": true}, "max_concurrent": 2147483648}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"all": true}, "max_per_minute": 99999999999}`, 400, "invalid"},
			{`{"firmware_version": "2.0.0", "targets": {"all": true}, "rollback_window_seconds": -1}`, 400, "invalid"},
		} {
			t.Log(c.body)
			a.do("POST", base, c.body).wantProblem(t, c.status, c.code)
		}
		a.do("POST", "/v1/products/NOPE000000/jobs", `{"firmware_version": "2.0.0", "targets": {"all": true}}`).wantProblem(t, 404, "not_found")
		// The largest documented job fits the body limit: 100,000 names of
		// 48 characters are read (and refused as unknown devices, not 413).
		names := make([]string, 100000)
		for i := range names {
			names[i] = fmt.Sprintf("%048d", i)
		}
		big := a.do("POST", base, map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"devices": names}})
		if p := big.wantProblem(t, 400, "invalid"); !strings.Contains(fmt.Sprint(p["detail"]), "do not exist") {
			t.Fatalf("a 100,000-device job: %v", p)
		}
		// Cursors this server never handed out are 400, whatever bytes they hold.
		for _, c := range []string{"AA", "_w", "gA"} { // NUL, 0xff, a lone continuation byte
			a.do("GET", "/v1/products/"+pid+"/devices?cursor="+c, nil).wantProblem(t, 400, "invalid")
		}

		var j jobJSON
		r := a.do("POST", base, map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"devices": []string{"d0", "d1", "d2"}},
			"timeout_seconds": 600, "max_retries": 0, "max_concurrent": 2})
		r.wantStatus(t, 201)
		r.decode(t, &j)
		if j.Status != "running" || j.Total != 3 || j.Counts["queued"] != 3 || len(j.Counts) != 9 {
			t.Fatalf("created job %+v", j)
		}
		// Devices d1 and d2 are busy: a job over the devices on 1.0.0 overlaps.
		p := a.do("POST", base, map[string]any{"firmware_version": "2.0.0", "targets": map[string]any{"versions": []string{"1.0.0"}}}).wantProblem(t, 409, "conflict")
		extra, _ := p["extra"].(map[string]any)
		if fmt.Sprint(extra["devices"]) != "[d0 d1 d2]" {
			t.Fatalf("conflict lists %v", extra["devices"])
		}
		a.do("DELETE", "/v1/products/"+pid+"/firmware/2.0.0", nil).wantProblem(t, 409, "conflict")

		var got jobJSON
		a.do("GET", base+"/"+j.ID, nil).decode(t, &got)
		if got.ID != j.ID || got.Total != 3 {
			t.Fatalf("GET job %+v", got)
		}
		a.do("GET", base+"/00000000000000000000", nil).wantProblem(t, 404, "not_found")
		a.do("GET", base+"/xyz", nil).wantProblem(t, 400, "invalid")
		a.do("GET", "/v1/products/JOBS000002/jobs/"+j.ID, nil).wantProblem(t, 404, "not_found")

		var page struct {
			Items []struct {
				DeviceName string `json:"device_name"`
				State      string `json:"state"`
				Attempts   int    `json:"attempts"`
			} `json:"items"`
			NextCursor string `json:"next_cursor"`
		}
		a.do("GET", base+"/"+j.ID+"/devices?limit=2&state=queued", nil).decode(t, &page)
		if len(page.Items) != 2 || page.Items[0].DeviceName != "d0" || page.NextCursor == "" {
			t.Fatalf("devices page %+v", page)
		}
		a.do("GET", base+"/"+j.ID+"/devices?cursor="+page.NextCursor, nil).decode(t, &page)
		if len(page.Items) != 1 || page.Items[0].DeviceName != "d2" {
			t.Fatalf("second page %+v", page)
		}
		a.do("GET", base+"/"+j.ID+"/devices?state=lost", nil).wantProblem(t, 400, "invalid")

		var list struct{ Items []jobJSON }
		a.do("GET", base, nil).decode(t, &list)
		if len(list.Items) != 1 || list.Items[0].ID != j.ID {
			t.Fatalf("job list %+v", list)
		}

		r = a.do("POST", base+"/"+j.ID+"/cancel", nil)
		r.wantStatus(t, 200)
		r.decode(t, &got)
		if got.Status != "canceled" || got.Counts["canceled"] != 3 {
			t.Fatalf("canceled job %+v", got)
		}
		a.do("POST", base+"/"+j.ID+"/cancel", nil).wantProblem(t, 409, "conflict")
		waitFor(t, "the canceled job to close", func() bool {
			a.do("GET", base+"/"+j.ID, nil).decode(t, &got)
			return got.CompletedAt != nil
		})
		a.do("DELETE", "/v1/products/"+pid+"/firmware/2.0.0", nil).wantStatus(t, 204)

		// Scheduled jobs wait for their start time.
		a.uploadFirmware(t, pid, "3.0.0", 100)
		r = a.do("POST", base, map[string]any{"firmware_version": "3.0.0", "targets": map[string]any{"all": true}, "start_at": "2099-01-01T00:00:00Z"})
		r.wantStatus(t, 201)
		r.decode(t, &got)
		if got.Status != "scheduled" || got.Total != 5 {
			t.Fatalf("scheduled job %+v", got)
		}
	})
}
