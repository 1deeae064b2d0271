package cli

import (
	"encoding/json"
	"testing"
	"time"
)

func TestJobSpecs(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name, spec string
		parse      func(string) (any, error)
		want       string // JSON, or "" for an error
	}{
		{"phase", "percent=10%,soak=1h,threshold=95,abort=failed:20,abort=any:50:3:cancel", phase,
			`{"percent":10,"soak_seconds":3600,"success_threshold":95,"abort":[{"failure_type":"failed","threshold_percent":20},{"failure_type":"any","threshold_percent":50,"min_ended":3,"action":"cancel"}]}`},
		{"phase count", "count=2,soak=90", phase, `{"count":2,"soak_seconds":90}`},
		{"phase rest", "rest", phase, `{}`},
		{"phase empty", "", phase, `{}`},
		{"phase rest with options", "rest,soak=1m,threshold=90", phase, `{"soak_seconds":60,"success_threshold":90}`},
		{"phase zero threshold", "count=1,threshold=0", phase, `{"count":1,"success_threshold":0}`},
		{"phase unknown key", "size=3", phase, ""},
		{"phase no value", "percent=", phase, ""},
		{"phase bad soak", "count=1,soak=1.5s", phase, ""},
		{"phase bad abort", "count=1,abort=failed", phase, ""},
		{"abort", "timed_out:12.5:4:pause", abort, `{"failure_type":"timed_out","threshold_percent":12.5,"min_ended":4,"action":"pause"}`},
		{"abort type", "slow:10", abort, ""},
		{"abort action", "any:10:1:stop", abort, ""},
		{"abort parts", "any:10:1:pause:x", abort, ""},
		{"rate", "base=10,factor=1.5,every=20,on=succeeded", rate, `{"base_per_minute":10,"increment_factor":1.5,"increment_every":20,"increment_on":"succeeded"}`},
		{"rate partial", "base=10,factor=2", rate, ""},
		{"rate number", "base=ten,factor=2,every=1", rate, ""},
		{"window", "start=02:00,duration=3h,days=sat+sun,tz=Europe/Berlin", window, `{"days":["sat","sun"],"start":"02:00","duration_minutes":180,"time_zone":"Europe/Berlin"}`},
		{"window minutes", "start=23:30,duration=45", window, `{"start":"23:30","duration_minutes":45}`},
		{"window seconds", "start=23:30,duration=90s", window, ""},
		{"window no start", "duration=1h", window, ""},
		{"when duration", "90m", when(now), `"2026-05-01T13:30:00Z"`},
		{"when plus", "+1h", when(now), `"2026-05-01T13:00:00Z"`},
		{"when time", "2026-06-01T02:00:00+02:00", when(now), `"2026-06-01T02:00:00+02:00"`},
		{"when word", "tomorrow", when(now), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := c.parse(c.spec)
			if c.want == "" {
				if err == nil {
					t.Fatalf("%q: no error, got %+v", c.spec, v)
				}
				return
			}
			if err != nil {
				t.Fatalf("%q: %v", c.spec, err)
			}
			got, _ := json.Marshal(v)
			if string(got) != c.want {
				t.Fatalf("%q:\n got %s\nwant %s", c.spec, got, c.want)
			}
		})
	}
}

func phase(s string) (any, error)  { return parsePhase(s) }
func abort(s string) (any, error)  { return parseAbort(s) }
func rate(s string) (any, error)   { return parseRate(s) }
func window(s string) (any, error) { return parseWindow(s) }
func when(now time.Time) func(string) (any, error) {
	return func(s string) (any, error) { return parseWhen(s, now) }
}

func TestWatchOutcome(t *testing.T) {
	for _, c := range []struct {
		job         string
		exitOnPause bool
		code        int
		done        bool
		msg         string
	}{
		{`{"id":"J","status":"running","total":2,"counts":{"done":1}}`, false, 0, false, ""},
		{`{"id":"J","status":"completed","total":2,"counts":{"done":2}}`, false, ExitOK, true, "job J completed: 2 of 2 devices done"},
		{`{"id":"J","status":"completed","total":3,"counts":{"done":1,"failed":1,"timed_out":1}}`, false, ExitFailures, true,
			"job J completed with 2 of 3 devices not done (failed 1, timed_out 1)"},
		{`{"id":"J","status":"canceled","status_reason":"end_at reached","total":2,"counts":{"canceled":2}}`, false, ExitCanceled, true,
			"job J canceled: end_at reached (canceled 2)"},
		{`{"id":"J","status":"paused","total":2,"counts":{"queued":2}}`, false, 0, false, ""},
		{`{"id":"J","status":"paused","status_reason":"abort criterion","total":2,"counts":{"queued":2}}`, true, ExitPaused, true,
			"job J paused: abort criterion (queued 2)"},
	} {
		o, err := decodeObj([]byte(c.job))
		if err != nil {
			t.Fatal(err)
		}
		code, msg, done := watchOutcome(o, c.exitOnPause)
		if code != c.code || done != c.done || msg != c.msg {
			t.Errorf("%s: got %d %v %q, want %d %v %q", c.job, code, done, msg, c.code, c.done, c.msg)
		}
	}
}
