package main

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
)

func TestDevices(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		a.do("POST", "/v1/products", map[string]string{"id": "THERMO0001", "name": "Thermostat"}).wantStatus(t, 201)
		base := "/v1/products/THERMO0001/devices"

		var created map[string]any
		r := a.do("POST", base, map[string]string{"name": "dev-1", "version": "1.0.0"})
		r.wantStatus(t, 201)
		r.decode(t, &created)
		secret, _ := created["secret"].(string)
		key, err := base64.StdEncoding.DecodeString(secret)
		if err != nil || len(key) != 16 || len(secret) != 24 {
			t.Fatalf("secret %q: want base64 of 16 bytes", secret)
		}
		if r.Header.Get("Cache-Control") != "no-store" {
			t.Error("the answer carrying the secret may be cached")
		}
		var got map[string]any
		a.do("GET", base+"/dev-1", nil).decode(t, &got)
		if _, ok := got["secret"]; ok {
			t.Fatal("GET shows the device secret")
		}
		if got["version"] != "1.0.0" || got["online"] != false || got["last_seen_at"] != nil || got["upgrade"] != nil {
			t.Fatalf("device = %v", got)
		}
		if evs, ok := got["events"].([]any); !ok || len(evs) != 0 {
			t.Fatalf("events = %v, want empty list", got["events"])
		}
		a.do("POST", base, map[string]string{"name": "dev-1"}).wantProblem(t, 409, "conflict")
		a.do("POST", "/v1/products/NOPE000000/devices", map[string]string{"name": "x"}).wantProblem(t, 404, "not_found")
		for _, bad := range []string{"", strings.Repeat("a", 49), "a b", "a/b", "ä", "a#", "a+", "../x"} {
			a.do("POST", base, map[string]string{"name": bad}).wantProblem(t, 400, "invalid")
		}
		a.do("POST", base, map[string]string{"name": strings.Repeat("a", 48)}).wantStatus(t, 201)
		a.do("POST", base, map[string]string{"name": "A-z_0.9:x@y"}).wantStatus(t, 201)

		for i, v := range []string{"1.0.0", "2.0.0", "2.0.0", "1.0.0"} {
			a.do("POST", base, map[string]string{"name": "f" + string(rune('0'+i)), "version": v}).wantStatus(t, 201)
		}
		names := func(query string) []string {
			t.Helper()
			var out []string
			cursor := ""
			for range 20 {
				var page struct {
					Items      []map[string]any `json:"items"`
					NextCursor string           `json:"next_cursor"`
				}
				q := query + "&cursor=" + url.QueryEscape(cursor)
				a.do("GET", base+"?"+q, nil).decode(t, &page)
				for _, it := range page.Items {
					out = append(out, it["name"].(string))
				}
				if page.NextCursor == "" {
					return out
				}
				cursor = page.NextCursor
			}
			t.Fatal("pagination does not end")
			return nil
		}
		if got := strings.Join(names("version=2.0.0&limit=1"), ","); got != "f1,f2" {
			t.Fatalf("version=2.0.0 lists %s", got)
		}
		if got := strings.Join(names("version=1.0.0&limit=2"), ","); got != "dev-1,f0,f3" {
			t.Fatalf("version=1.0.0 lists %s", got)
		}
		if got := len(names("limit=3")); got != 7 {
			t.Fatalf("all devices: %d, want 7", got)
		}
		if got := len(names("online=false")); got != 7 {
			t.Fatalf("offline devices: %d, want 7", got)
		}
		a.do("GET", base+"?online=maybe", nil).wantProblem(t, 400, "invalid")

		var upd map[string]any
		a.do("PATCH", base+"/dev-1", map[string]bool{"disabled": true}).decode(t, &upd)
		if upd["disabled"] != true {
			t.Fatalf("after disable: %v", upd)
		}
		a.do("PATCH", base+"/dev-1", `{"disabled": "yes"}`).wantProblem(t, 400, "invalid")

		a.do("DELETE", base+"/dev-1", nil).wantStatus(t, 204)
		a.do("DELETE", base+"/dev-1", nil).wantProblem(t, 404, "not_found")
		a.do("GET", base+"/dev-1", nil).wantProblem(t, 404, "not_found")
		a.do("GET", base+"/bad%20name", nil).wantProblem(t, 400, "invalid")
		a.do("GET", base+"/dev-2/events", nil).wantProblem(t, 404, "not_found")
		a.do("GET", base+"/f0/events", nil).wantStatus(t, 200)
	})
}
