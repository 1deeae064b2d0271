package cli

import (
	"bufio"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/otad/otad/internal/client"
)

// execStates are the states of a device in a job, in the order shown.
var execStates = []string{"queued", "notified", "downloading", "burning", "done", "failed", "timed_out", "rolled_back", "canceled"}

// targetsSummary is a job's targets on one line.
func targetsSummary(o obj) string {
	switch {
	case o.get("targets.all") == true:
		return "all devices"
	case len(o.list("targets.versions")) > 0:
		return "on " + o.str("targets.versions")
	default:
		names := o.list("targets.devices")
		return fmt.Sprintf("%d devices", len(names))
	}
}

// countsSummary is "done 18, failed 2" of the states with devices, but
// those skipped.
func countsSummary(o obj, path string, skip ...string) string {
	var parts []string
	for _, s := range execStates {
		if n := o.int(path + "." + s); n > 0 && !slices.Contains(skip, s) {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

var jobFields = []string{"id", "product_id", "firmware_version", "status", "status_reason", "created_at", "start_at",
	"end_at", "completed_at", "timeout_seconds", "max_retries", "retry_backoff_seconds", "max_concurrent", "max_per_minute",
	"rollback_window_seconds", "continuous", "current_phase", "phase_seed", "spread_versions"}

func jobView(w io.Writer, o obj) error {
	pairs := fieldPairs(o, jobFields...)
	pairs = append(pairs, [2]string{"targets", targetsSummary(o)})
	if o.get("rate") != nil {
		pairs = append(pairs, [2]string{"rate", fmt.Sprintf("%s/min ×%s every %s %s", o.str("rate.base_per_minute"),
			o.str("rate.increment_factor"), o.str("rate.increment_every"), firstOf(o.text("rate.increment_on"), "notified"))})
	}
	for i, c := range o.list("abort") {
		pairs = append(pairs, [2]string{fmt.Sprintf("abort[%d]", i), abortSummary(obj(c.(map[string]any)))})
	}
	for i, mw := range o.list("maintenance_windows") {
		m := obj(mw.(map[string]any))
		pairs = append(pairs, [2]string{fmt.Sprintf("window[%d]", i), fmt.Sprintf("%s %s for %s min %s",
			firstOf(m.text("days"), "every day"), m.str("start"), m.str("duration_minutes"), firstOf(m.text("time_zone"), "UTC"))})
	}
	if o.get("total") != nil {
		pairs = append(pairs, [2]string{"devices", fmt.Sprintf("%d: %s", o.int("total"), countsSummary(o, "counts"))})
	}
	if err := writeFields(w, pairs); err != nil {
		return err
	}
	phases := o.list("phases")
	if len(phases) == 0 || o.get("total") == nil {
		return nil
	}
	fmt.Fprintln(w, "\nphases:")
	rows := make([][]string, 0, len(phases))
	for _, p := range phases {
		ph := obj(p.(map[string]any))
		share := "rest"
		if ph.get("percent") != nil {
			share = ph.str("percent") + "%"
		} else if ph.get("count") != nil {
			share = ph.str("count")
		}
		soak := "-"
		if s := ph.int("soak_seconds"); s > 0 {
			soak = (time.Duration(s) * time.Second).String()
		}
		rows = append(rows, []string{strconv.FormatInt(ph.int("index")+1, 10), ph.str("state"), share, ph.str("size"), soak,
			firstOf(ph.text("success_threshold"), "100") + "%", countsSummary(ph, "counts"),
			ph.time("started_at"), ph.time("ended_at")})
	}
	return writeTable(w, []string{"PHASE", "STATE", "SHARE", "SIZE", "SOAK", "THRESHOLD", "DEVICES", "STARTED", "ENDED"}, rows)
}

func abortSummary(c obj) string {
	s := fmt.Sprintf("%s ≥ %s%%", c.str("failure_type"), c.str("threshold_percent"))
	if n := c.int("min_ended"); n > 0 {
		s += fmt.Sprintf(" of ≥ %d ended", n)
	}
	return s + " → " + firstOf(c.text("action"), "pause")
}

func (a *app) jobsCommand() *cobra.Command {
	cmd := group("jobs", "Create, follow and steer upgrade jobs", "job")
	var product string
	productFlag(cmd, &product)
	path := func(segments ...string) (string, error) {
		return a.productPath(product, append([]string{"jobs"}, segments...)...)
	}

	var limit int
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List jobs, oldest first",
		Args:    argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := path()
			if err != nil {
				return err
			}
			return a.list(cmd, p, nil, limit, []column{
				col("ID", "id"), col("FIRMWARE", "firmware_version"), col("STATUS", "status"), {"TARGETS", targetsSummary},
				timeCol("CREATED", "created_at"), timeCol("COMPLETED", "completed_at"), col("REASON", "status_reason"),
			})
		},
	}
	limitFlag(list, &limit, 0)

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a job: its options, devices per state, and each phase",
		Args:  argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path(args[0])
			if err != nil {
				return err
			}
			return a.get(cmd, p, jobView)
		},
	}

	control := func(action, short string) *cobra.Command {
		return &cobra.Command{
			Use:   action + " ID",
			Short: short,
			Args:  argNames("ID"),
			RunE: func(cmd *cobra.Command, args []string) error {
				p, err := path(args[0], action)
				if err != nil {
					return err
				}
				return a.call(cmd, client.Request{Method: "POST", Path: p}, jobView, "")
			},
		}
	}

	var state string
	var devLimit int
	devices := &cobra.Command{
		Use:   "devices ID",
		Short: "List each device's progress in a job",
		Args:  argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path(args[0], "devices")
			if err != nil {
				return err
			}
			q := url.Values{}
			if state != "" {
				q.Set("state", state)
			}
			return a.list(cmd, p, q, devLimit, []column{
				col("DEVICE", "device_name"), col("STATE", "state"), col("PHASE", "phase"), col("FROM", "from_version"),
				col("PERCENT", "percent"), col("ATTEMPTS", "attempts"),
				{"RESULT", func(o obj) string { return joinText(o, "result_name", "result_msg") }},
				timeCol("UPDATED", "updated_at"),
			})
		},
	}
	devices.Flags().StringVar(&state, "state", "", "only devices in this state ("+strings.Join(execStates, ", ")+")")
	_ = devices.RegisterFlagCompletionFunc("state", cobra.FixedCompletions(execStates, cobra.ShellCompDirectiveNoFileComp))
	limitFlag(devices, &devLimit, 0)

	cmd.AddCommand(a.jobCreateCommand(path), list, show, devices,
		control("cancel", "Cancel a job: queued devices are canceled, nothing more is dispatched"),
		control("pause", "Pause a job: nothing more is dispatched until resumed"),
		control("resume", "Resume a paused job"),
		control("retry", "Give a job's failed and timed-out devices new attempts"),
		control("advance", "Start a job's next phase now, whatever its gate says"),
		a.jobWatchCommand(path),
	)
	return cmd
}

func (a *app) jobCreateCommand(path func(...string) (string, error)) *cobra.Command {
	var (
		firmware, devicesFile, startAt, endAt, rate string
		all, spread, continuous, dryRun             bool
		versions, devices, phases, aborts, windows  []string
		timeout, backoff, rollbackWindow            time.Duration
		retries, concurrent, perMinute              int
		seed                                        int64
	)
	cmd := &cobra.Command{
		Use:   "create --firmware VERSION (--all | --version V... | --device NAME... | --devices-file FILE) [options]",
		Short: "Start an upgrade job, phased, paced and windowed as told",
		Long: `Starts a job that upgrades its targets to the firmware version: every device
(--all), the devices now on given versions (--version, repeated), or named
devices (--device, repeated, or --devices-file with one name a line).

A phase is --phase with keys percent (or count), soak, threshold and abort:
  --phase count=2,soak=30m --phase percent=10,soak=1h,threshold=95 --phase rest
the last phase ("rest") takes the devices left. An abort criterion is
TYPE:PERCENT[:MIN_ENDED[:ACTION]] with TYPE failed, timed_out, rolled_back or
any and ACTION pause (default) or cancel: --abort failed:10:5:cancel, or
abort=... inside a phase. The rate is base=N,factor=F,every=N[,on=succeeded];
a maintenance window start=HH:MM,duration=3h[,days=mon+tue][,tz=Europe/Berlin].
Times are RFC 3339 or a duration from now (2h).`,
		Example: `  otactl jobs create --firmware 2.0.0 --version 1.0.0 --max-concurrent 50
  otactl jobs create --firmware 2.0.0 --all --phase count=5,soak=1h --phase percent=25,soak=1h \
      --phase rest --abort any:10:5:pause --window start=01:00,duration=4h,tz=Europe/Berlin`,
		Args: argNames(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			fl := cmd.Flags()
			if firmware == "" {
				return usagef("give --firmware VERSION")
			}
			body := jobCreate{FirmwareVersion: firmware, PhaseSeed: seed, SpreadVersions: spread, Continuous: continuous}
			if devicesFile != "" {
				names, err := readNames(a.env.Stdin, devicesFile)
				if err != nil {
					return err
				}
				devices = append(devices, names...)
			}
			kinds := 0
			for _, has := range []bool{all, len(versions) > 0, len(devices) > 0} {
				if has {
					kinds++
				}
			}
			if kinds != 1 {
				return usagef("give exactly one of --all, --version and --device (or --devices-file)")
			}
			body.Targets = jobTargets{All: all, Versions: versions, Devices: devices}
			seconds := func(name string, d time.Duration) *int {
				if !fl.Changed(name) {
					return nil
				}
				n := int(d.Round(time.Second) / time.Second)
				return &n
			}
			ints := func(name string, n int) *int {
				if !fl.Changed(name) {
					return nil
				}
				return &n
			}
			body.TimeoutSeconds = seconds("timeout", timeout)
			body.RetryBackoffSeconds = seconds("retry-backoff", backoff)
			body.RollbackWindowSeconds = seconds("rollback-window", rollbackWindow)
			body.MaxRetries = ints("max-retries", retries)
			body.MaxConcurrent = ints("max-concurrent", concurrent)
			body.MaxPerMinute = ints("max-per-minute", perMinute)
			now := time.Now()
			for _, t := range []struct {
				flag, value string
				into        **time.Time
			}{{"start-at", startAt, &body.StartAt}, {"end-at", endAt, &body.EndAt}} {
				if t.value == "" {
					continue
				}
				when, err := parseWhen(t.value, now)
				if err != nil {
					return usagef("--%s: %v", t.flag, err)
				}
				*t.into = &when
			}
			for i, spec := range phases {
				p, err := parsePhase(spec)
				if err != nil {
					return usagef("--phase %d: %v", i+1, err)
				}
				body.Phases = append(body.Phases, p)
			}
			for _, spec := range aborts {
				c, err := parseAbort(spec)
				if err != nil {
					return usagef("--abort: %v", err)
				}
				body.Abort = append(body.Abort, c)
			}
			if rate != "" {
				r, err := parseRate(rate)
				if err != nil {
					return usagef("--rate: %v", err)
				}
				body.Rate = r
			}
			for _, spec := range windows {
				w, err := parseWindow(spec)
				if err != nil {
					return usagef("--window: %v", err)
				}
				body.MaintenanceWindows = append(body.MaintenanceWindows, w)
			}
			if dryRun {
				return writeJSONValue(a.env.Stdout, body)
			}
			p, err := path()
			if err != nil {
				return err
			}
			return a.call(cmd, client.Request{Method: "POST", Path: p, JSON: body}, jobView, "")
		},
	}
	f := cmd.Flags()
	f.StringVar(&firmware, "firmware", "", "the firmware version to install (required)")
	f.BoolVar(&all, "all", false, "target every device of the product")
	f.StringSliceVar(&versions, "version", nil, "target the devices now on this version (repeatable)")
	f.StringSliceVar(&devices, "device", nil, "target this device (repeatable)")
	f.StringVar(&devicesFile, "devices-file", "", "target the devices named in this file, one a line (- for stdin)")
	f.DurationVar(&timeout, "timeout", 0, "one attempt's time, from notification to done (server default 30m)")
	f.IntVar(&retries, "max-retries", 0, "further attempts after a failure or timeout (server default 2)")
	f.DurationVar(&backoff, "retry-backoff", 0, "wait before the first retry, doubling after (server default 30s)")
	f.IntVar(&concurrent, "max-concurrent", 0, "most devices upgrading at once (0: no limit)")
	f.IntVar(&perMinute, "max-per-minute", 0, "most notifications a minute (0: no limit)")
	f.StringVar(&startAt, "start-at", "", "start later: an RFC 3339 time or a duration from now")
	f.DurationVar(&rollbackWindow, "rollback-window", 0, "how long after done another version counts as a rollback (server default 1h; 0: never)")
	f.StringArrayVar(&phases, "phase", nil, "a rollout phase, such as percent=10,soak=1h,threshold=95 (repeatable, in order; \"rest\" for the last)")
	f.Int64Var(&seed, "phase-seed", 0, "seed of the phases' random draw (default: chosen by the server)")
	f.BoolVar(&spread, "spread-versions", false, "draw each phase evenly from the devices' current versions")
	f.StringArrayVar(&aborts, "abort", nil, "an abort criterion of the whole job, TYPE:PERCENT[:MIN_ENDED[:ACTION]] (repeatable)")
	f.StringVar(&rate, "rate", "", "an exponential rate: base=N,factor=F,every=N[,on=notified|succeeded]")
	f.StringArrayVar(&windows, "window", nil, "a maintenance window: start=HH:MM,duration=3h[,days=mon+tue][,tz=ZONE] (repeatable)")
	f.StringVar(&endAt, "end-at", "", "from then on nothing is dispatched and the job ends: an RFC 3339 time or a duration from now")
	f.BoolVar(&continuous, "continuous", false, "keep adding devices that come to match the targets")
	f.BoolVar(&dryRun, "dry-run", false, "print the request's JSON and send nothing")
	return cmd
}

// readNames reads device names, one a line (commas too), from file or,
// for "-", from stdin.
func readNames(stdin io.Reader, file string) ([]string, error) {
	in, closeIn, err := openInput(stdin, file)
	if err != nil {
		return nil, err
	}
	defer closeIn()
	var names []string
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		for _, n := range strings.Split(sc.Text(), ",") {
			if n = strings.TrimSpace(n); n != "" && !strings.HasPrefix(n, "#") {
				names = append(names, n)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s names no device", file)
	}
	return names, nil
}
