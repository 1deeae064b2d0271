package client

import (
	"encoding/json"
	"testing"
)

func TestProblemError(t *testing.T) {
	for _, c := range []struct {
		p    Problem
		want string
	}{
		{Problem{Status: 409, Code: "conflict", Detail: "device already exists"}, "409 conflict: device already exists"},
		{Problem{Status: 502, Detail: "bad\ngateway"}, "502 bad gateway: bad gateway"},
		{Problem{Status: 409, Code: "conflict", Detail: "devices are in another active job",
			Extra: json.RawMessage(`{"devices":["a","b","c","d","e","f"]}`)},
			"409 conflict: devices are in another active job (6 devices: a, b, c, d, e, …)"},
	} {
		if got := c.p.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
}

func TestPath(t *testing.T) {
	if got := Path("/v1/products", "P", "firmware", "1.0/beta 2"); got != "/v1/products/P/firmware/1.0%2Fbeta%202" {
		t.Fatal(got)
	}
}
