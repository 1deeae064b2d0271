package cli

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// jobCreate is the API's JobCreate: only what a flag set is sent, so that
// the server's defaults hold for the rest.
type jobCreate struct {
	FirmwareVersion       string      `json:"firmware_version"`
	Targets               jobTargets  `json:"targets"`
	TimeoutSeconds        *int        `json:"timeout_seconds,omitempty"`
	MaxRetries            *int        `json:"max_retries,omitempty"`
	RetryBackoffSeconds   *int        `json:"retry_backoff_seconds,omitempty"`
	MaxConcurrent         *int        `json:"max_concurrent,omitempty"`
	MaxPerMinute          *int        `json:"max_per_minute,omitempty"`
	StartAt               *time.Time  `json:"start_at,omitempty"`
	RollbackWindowSeconds *int        `json:"rollback_window_seconds,omitempty"`
	Phases                []jobPhase  `json:"phases,omitempty"`
	PhaseSeed             int64       `json:"phase_seed,omitempty"`
	SpreadVersions        bool        `json:"spread_versions,omitempty"`
	Abort                 []jobAbort  `json:"abort,omitempty"`
	Rate                  *jobRate    `json:"rate,omitempty"`
	MaintenanceWindows    []jobWindow `json:"maintenance_windows,omitempty"`
	EndAt                 *time.Time  `json:"end_at,omitempty"`
	Continuous            bool        `json:"continuous,omitempty"`
}

type jobTargets struct {
	Devices  []string `json:"devices,omitempty"`
	All      bool     `json:"all,omitempty"`
	Versions []string `json:"versions,omitempty"`
}

type jobPhase struct {
	Percent          float64    `json:"percent,omitempty"`
	Count            int        `json:"count,omitempty"`
	SoakSeconds      *int       `json:"soak_seconds,omitempty"`
	SuccessThreshold *float64   `json:"success_threshold,omitempty"`
	Abort            []jobAbort `json:"abort,omitempty"`
}

type jobAbort struct {
	FailureType      string  `json:"failure_type"`
	ThresholdPercent float64 `json:"threshold_percent"`
	MinEnded         *int    `json:"min_ended,omitempty"`
	Action           string  `json:"action,omitempty"`
}

type jobRate struct {
	BasePerMinute   int     `json:"base_per_minute"`
	IncrementFactor float64 `json:"increment_factor"`
	IncrementEvery  int     `json:"increment_every"`
	IncrementOn     string  `json:"increment_on,omitempty"`
}

type jobWindow struct {
	Days            []string `json:"days,omitempty"`
	Start           string   `json:"start"`
	DurationMinutes int      `json:"duration_minutes"`
	TimeZone        string   `json:"time_zone,omitempty"`
}

// specFields splits "k=v,k=v" into pairs, in order (a key may repeat).
func specFields(spec string, keys ...string) ([][2]string, error) {
	var out [][2]string
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if !ok || strings.TrimSpace(v) == "" {
			return nil, fmt.Errorf("%q: want key=value", part)
		}
		if !slices.Contains(keys, k) {
			return nil, fmt.Errorf("unknown key %q (keys: %s)", k, strings.Join(keys, ", "))
		}
		out = append(out, [2]string{k, strings.TrimSpace(v)})
	}
	return out, nil
}

// parsePercent reads "10" or "10%".
func parsePercent(s string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a percentage", s)
	}
	return f, nil
}

// parseSeconds reads a duration ("1h30m") or a number of seconds.
func parseSeconds(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return n, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (such as 90s, 30m, 1h)", s)
	}
	if d%time.Second != 0 {
		return 0, fmt.Errorf("%q: whole seconds only", s)
	}
	return int(d / time.Second), nil
}

// parsePhase reads a phase: "percent=10,soak=1h,threshold=95,abort=failed:20",
// "count=2", or "rest" (or "", or "rest,threshold=90") for the last phase,
// which takes the devices left.
func parsePhase(spec string) (jobPhase, error) {
	var p jobPhase
	parts := strings.Split(spec, ",")
	parts = slices.DeleteFunc(parts, func(s string) bool { return strings.TrimSpace(s) == "rest" })
	fields, err := specFields(strings.Join(parts, ","), "percent", "count", "soak", "threshold", "abort")
	if err != nil {
		return p, err
	}
	for _, f := range fields {
		switch k, v := f[0], f[1]; k {
		case "percent":
			if p.Percent, err = parsePercent(v); err != nil {
				return p, err
			}
		case "count":
			if p.Count, err = strconv.Atoi(v); err != nil {
				return p, fmt.Errorf("count %q is not a number", v)
			}
		case "soak":
			n, err := parseSeconds(v)
			if err != nil {
				return p, fmt.Errorf("soak %w", err)
			}
			p.SoakSeconds = &n
		case "threshold":
			t, err := parsePercent(v)
			if err != nil {
				return p, fmt.Errorf("threshold %w", err)
			}
			p.SuccessThreshold = &t
		case "abort":
			c, err := parseAbort(v)
			if err != nil {
				return p, err
			}
			p.Abort = append(p.Abort, c)
		}
	}
	return p, nil
}

// parseAbort reads an abort criterion: TYPE:PERCENT[:MIN_ENDED[:ACTION]],
// such as "failed:10", "any:20:5:cancel".
func parseAbort(spec string) (jobAbort, error) {
	var c jobAbort
	parts := strings.Split(spec, ":")
	if len(parts) < 2 || len(parts) > 4 {
		return c, fmt.Errorf("abort %q: want TYPE:PERCENT[:MIN_ENDED[:ACTION]], such as failed:10:5:pause", spec)
	}
	c.FailureType = parts[0]
	if !slices.Contains([]string{"failed", "timed_out", "rolled_back", "any"}, c.FailureType) {
		return c, fmt.Errorf("abort %q: the type is failed, timed_out, rolled_back or any", spec)
	}
	var err error
	if c.ThresholdPercent, err = parsePercent(parts[1]); err != nil {
		return c, fmt.Errorf("abort %q: %w", spec, err)
	}
	if len(parts) > 2 && parts[2] != "" {
		n, err := strconv.Atoi(parts[2])
		if err != nil {
			return c, fmt.Errorf("abort %q: min_ended %q is not a number", spec, parts[2])
		}
		c.MinEnded = &n
	}
	if len(parts) > 3 {
		c.Action = parts[3]
		if c.Action != "pause" && c.Action != "cancel" {
			return c, fmt.Errorf("abort %q: the action is pause or cancel", spec)
		}
	}
	return c, nil
}

// parseRate reads "base=10,factor=2,every=50[,on=succeeded]".
func parseRate(spec string) (*jobRate, error) {
	fields, err := specFields(spec, "base", "factor", "every", "on")
	if err != nil {
		return nil, err
	}
	r := &jobRate{}
	has := map[string]bool{}
	for _, f := range fields {
		k, v := f[0], f[1]
		has[k] = true
		switch k {
		case "base":
			r.BasePerMinute, err = strconv.Atoi(v)
		case "factor":
			r.IncrementFactor, err = strconv.ParseFloat(v, 64)
		case "every":
			r.IncrementEvery, err = strconv.Atoi(v)
		case "on":
			r.IncrementOn = v
		}
		if err != nil {
			return nil, fmt.Errorf("%s %q is not a number", k, v)
		}
	}
	for _, k := range []string{"base", "factor", "every"} {
		if !has[k] {
			return nil, fmt.Errorf("%q: give base, factor and every", spec)
		}
	}
	return r, nil
}

// parseWindow reads "start=02:00,duration=3h[,days=mon+tue][,tz=Europe/Berlin]".
func parseWindow(spec string) (jobWindow, error) {
	var w jobWindow
	fields, err := specFields(spec, "start", "duration", "days", "tz")
	if err != nil {
		return w, err
	}
	for _, f := range fields {
		switch k, v := f[0], f[1]; k {
		case "start":
			w.Start = v
		case "duration":
			n, err := strconv.Atoi(v)
			if err != nil {
				d, derr := time.ParseDuration(v)
				if derr != nil || d%time.Minute != 0 {
					return w, fmt.Errorf("duration %q: minutes, or a duration of whole minutes such as 3h", v)
				}
				n = int(d / time.Minute)
			}
			w.DurationMinutes = n
		case "days":
			w.Days = strings.Split(v, "+")
		case "tz":
			w.TimeZone = v
		}
	}
	if w.Start == "" || w.DurationMinutes == 0 {
		return w, fmt.Errorf("%q: give start=HH:MM and duration", spec)
	}
	return w, nil
}

// parseWhen reads a time: RFC 3339, or a duration from now ("2h", "+2h").
func parseWhen(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(s, "+")); err == nil {
		return now.Add(d).UTC().Truncate(time.Second), nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2026-05-01T02:00:00Z) nor a duration from now (2h)", s)
}
