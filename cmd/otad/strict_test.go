package main

import "testing"

// Input encoding/json would quietly accept is refused, and nothing is
// stored: a key in another case, a key twice, invalid UTF-8, C1 controls,
// "." and ".." as names.
func TestStrictInput(t *testing.T) {
	forEachEngine(t, func(t *testing.T, engine string) {
		a := startApp(t, engine, nil)
		pid := "STRICT0001"
		a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "strict"}).wantStatus(t, 201)
		a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": "d1"}).wantStatus(t, 201)
		dev := "/v1/products/" + pid + "/devices/d1"
		for _, body := range []string{
			`{"Disabled": true}`,
			`{"disabled": true, "disabled": false}`,
			`{"DISABLED": true}`,
			"{\"disabled\": true, \"x\": \"\xff\"}",
		} {
			a.do("PATCH", dev, body).wantProblem(t, 400, "invalid")
		}
		var d struct{ Disabled bool }
		a.do("GET", dev, nil).decode(t, &d)
		if d.Disabled {
			t.Fatal("a refused PATCH disabled the device")
		}
		for _, body := range []string{
			`{"name": "."}`, `{"name": ".."}`,
			`{"name": "d2", "version": ".."}`,
			`{"name": "d3", "name": "d4"}`,
		} {
			a.do("POST", "/v1/products/"+pid+"/devices", body).wantProblem(t, 400, "invalid")
		}
		a.do("POST", "/v1/products", `{"id": "STRICT0002", "name": "a\u0085b"}`).wantProblem(t, 400, "invalid")
		a.do("POST", "/v1/products/"+pid+"/jobs", `{"firmware_version": "1", "targets": {"All": true}}`).wantProblem(t, 400, "invalid")
		a.do("GET", "/v1/products/STRICT0002", nil).wantProblem(t, 404, "not_found")
	})
}
