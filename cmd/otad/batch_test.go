package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Bulk provisioning: a batch is registered whole or not at all, and its
// answer (JSON or CSV) carries secrets the devices log in with.
func TestDeviceBatch(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		pid := "BATCH00001"
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "batch"}).wantStatus(t, 201)
		batch := func(from, n int) map[string]any {
			ds := make([]map[string]string, n)
			for i := range ds {
				ds[i] = map[string]string{"name": fmt.Sprintf("bulk-%05d", from+i), "version": "1.0.0"}
			}
			return map[string]any{"devices": ds}
		}
		var created struct {
			Items []struct {
				ProductID string `json:"product_id"`
				Name      string `json:"name"`
				Version   string `json:"version"`
				Secret    string `json:"secret"`
			}
		}
		r := a.do("POST", "/v1/products/"+pid+"/device-batches", batch(0, 2000))
		r.wantStatus(t, 201)
		r.decode(t, &created)
		if len(created.Items) != 2000 || created.Items[1999].Name != "bulk-01999" || created.Items[0].Secret == "" || created.Items[0].Version != "1.0.0" {
			t.Fatalf("batch answer: %d items, last %+v", len(created.Items), created.Items[len(created.Items)-1])
		}

		// Names taken: 409 naming them, and nothing of the batch stored.
		p := a.do("POST", "/v1/products/"+pid+"/device-batches", batch(1990, 20)).wantProblem(t, 409, "conflict")
		if d := fmt.Sprint(p["extra"]); !strings.Contains(d, "bulk-01990") || strings.Contains(d, "bulk-02000") {
			t.Fatalf("conflict extra %s", d)
		}
		a.do("GET", "/v1/products/"+pid+"/devices/bulk-02000", nil).wantStatus(t, 404)
		// Bad entries are refused, naming the entry.
		dup := batch(5000, 3)
		dup["devices"].([]map[string]string)[2]["name"] = "bulk-05000"
		for _, bad := range []any{dup, map[string]any{"devices": []any{}}, map[string]any{"devices": []map[string]string{{"name": ".."}}}} {
			p := a.do("POST", "/v1/products/"+pid+"/device-batches", bad).wantProblem(t, 400, "invalid")
			if !strings.Contains(fmt.Sprint(p["detail"]), "devices") {
				t.Fatalf("refusal %v", p)
			}
		}
		a.do("POST", "/v1/products/NOPE000000/device-batches", batch(0, 2)).wantProblem(t, 404, "not_found")

		// CSV, as otasim reads it: those devices log in.
		r = a.do("POST", "/v1/products/"+pid+"/device-batches", batch(3000, 30), "Accept", "text/csv")
		r.wantStatus(t, 201)
		lines := strings.Split(strings.TrimSpace(string(r.body)), "\n")
		if len(lines) != 31 || lines[0] != "product_id,device_name,secret" || !strings.HasPrefix(lines[1], pid+",bulk-03000,") {
			t.Fatalf("CSV answer %q", r.body)
		}
		file := filepath.Join(t.TempDir(), "devices.csv")
		if err := os.WriteFile(file, r.body, 0o600); err != nil {
			t.Fatal(err)
		}
		startSim(t, a.MQTTAddr(), file).stop(t) // fails unless all 30 log in

		var page struct{ Items []struct{ Name string } }
		a.do("GET", "/v1/products/"+pid+"/devices?limit=1000", nil).decode(t, &page)
		if len(page.Items) != 1000 {
			t.Fatalf("%d devices listed", len(page.Items))
		}
		var evs struct {
			Items []struct {
				Type       string `json:"type"`
				DeviceName string `json:"device_name"`
			}
		}
		a.do("GET", "/v1/events?type=device.created&product_id="+pid+"&limit=1000", nil).decode(t, &evs)
		if len(evs.Items) != 1000 || evs.Items[0].DeviceName != "bulk-00000" {
			t.Fatalf("%d device.created events", len(evs.Items))
		}
	})
}
