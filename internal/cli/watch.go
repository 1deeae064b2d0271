package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/otad/otad/internal/client"
)

// minRefresh spaces the job reads of a busy job's watch.
const minRefresh = 250 * time.Millisecond

func (a *app) jobWatchCommand(path func(...string) (string, error)) *cobra.Command {
	var exitOnPause bool
	cmd := &cobra.Command{
		Use:   "watch ID",
		Short: "Follow a job live until it ends; the exit code tells how it ended",
		Long: `Shows a job's devices per state and per phase, live: each event of the job
on the event stream (GET /v1/events/stream?job_id=ID) makes otactl read the
job's counts anew. A dropped stream is resumed where it broke (Last-Event-ID).
On a terminal the bars are redrawn in place; otherwise a line is printed each
time the counts change; with -o json, the job's JSON each time it changes.

It returns when the job ends, with an exit code a pipeline can gate on:
  0  the job completed and every device is done
  3  the job completed with devices not done (failed, timed out, rolled back, canceled)
  4  the job was canceled (by hand, an abort criterion, end_at)
  5  the job paused (only with --exit-on-pause: an abort criterion or a phase gate paused it)
  1  otactl could not follow it (the job does not exist, a bad token, …)
A paused job is otherwise watched until it is resumed and ends. A continuous
job ends only when canceled or at its end_at.`,
		Example: "  otactl jobs watch 0193f1c2a4b0e1d2c3f4 && echo rolled out",
		Args:    argNames("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path(args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			w := &watcher{app: a, c: c, path: p, id: args[0], exitOnPause: exitOnPause,
				tty: a.output != "json" && isTerminal(a.env.Stdout)}
			return w.run(cmd.Context())
		},
	}
	cmd.Flags().BoolVar(&exitOnPause, "exit-on-pause", false, "return (exit code 5) when the job pauses")
	return cmd
}

// watcher follows one job.
type watcher struct {
	*app
	c           *client.Client
	path, id    string
	exitOnPause bool
	tty         bool

	lastRaw   []byte
	lastLine  string
	drawn     int // lines of the last drawing, on a terminal
	streamErr chan error
}

func (w *watcher) run(ctx context.Context) error {
	o, err := w.refresh(ctx)
	if err != nil {
		return err
	}
	if done, err := w.ended(o); done {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Any event of the job, and each (re)connection of the stream (events
	// may have been missed while it was away), asks for a refresh.
	wake := make(chan struct{}, 1)
	poke := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	w.streamErr = make(chan error, 1)
	go func() {
		w.streamErr <- w.c.Stream(ctx, url.Values{"job_id": {w.id}}, client.StreamOptions{
			Connected: poke,
			Dropped: func(err error, wait time.Duration) {
				w.note(fmt.Sprintf("otactl: event stream lost (%s); reconnecting in %s", oneLine(err.Error()), wait))
			},
		}, func(client.Event) error { poke(); return nil })
	}()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-w.streamErr:
			return fmt.Errorf("following job %s: %w", w.id, err)
		case <-wake:
		}
		if wait := minRefresh - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		last = time.Now()
		o, err := w.refresh(ctx)
		if err != nil {
			var p *client.Problem
			if errors.As(err, &p) && p.Status < 500 && p.Status != http.StatusTooManyRequests {
				return err
			}
			// The server is away for a moment: the stream reconnects and
			// asks again.
			w.note(fmt.Sprintf("otactl: reading job %s: %s", w.id, oneLine(err.Error())))
			continue
		}
		if done, err := w.ended(o); done {
			return err
		}
	}
}

// refresh reads the job and shows it when it changed.
func (w *watcher) refresh(ctx context.Context) (obj, error) {
	var raw json.RawMessage
	if err := w.c.Get(ctx, w.path, nil, &raw); err != nil {
		return nil, err
	}
	o, err := decodeObj(raw)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(raw, w.lastRaw) {
		return o, nil
	}
	w.lastRaw = raw
	switch {
	case w.output == "json":
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return nil, err
		}
		buf.WriteByte('\n')
		_, err = w.env.Stdout.Write(buf.Bytes())
	case w.tty:
		err = w.draw(o)
	default:
		line := watchLine(o)
		if line != w.lastLine {
			w.lastLine = line
			_, err = fmt.Fprintf(w.env.Stdout, "%s %s\n", time.Now().Format("15:04:05"), line)
		}
	}
	return o, err
}

// ended says whether the watch is over, and with which exit.
func (w *watcher) ended(o obj) (bool, error) {
	code, msg, done := watchOutcome(o, w.exitOnPause)
	if !done {
		return false, nil
	}
	if code == ExitOK {
		w.note(msg)
		return true, nil
	}
	return true, &exitError{code, msg}
}

// watchOutcome is how a watch of the job ends: its exit code and what to
// say, or not yet.
func watchOutcome(o obj, exitOnPause bool) (code int, msg string, done bool) {
	id := o.text("id")
	reason := ""
	if r := o.text("status_reason"); r != "" {
		reason = ": " + r
	}
	switch o.text("status") {
	case "completed":
		total, ok := o.int("total"), o.int("counts.done")
		if ok == total {
			return ExitOK, fmt.Sprintf("job %s completed: %d of %d devices done", id, ok, total), true
		}
		return ExitFailures, fmt.Sprintf("job %s completed with %d of %d devices not done (%s)", id, total-ok, total,
			countsSummary(o, "counts", "done")), true
	case "canceled":
		return ExitCanceled, fmt.Sprintf("job %s canceled%s (%s)", id, reason, countsSummary(o, "counts")), true
	case "paused":
		if exitOnPause {
			return ExitPaused, fmt.Sprintf("job %s paused%s (%s)", id, reason, countsSummary(o, "counts")), true
		}
	}
	return 0, "", false
}

// watchLine is the job's progress on one line.
func watchLine(o obj) string {
	s := fmt.Sprintf("%s %s", o.text("status"), progressCount(o))
	if n := len(o.list("phases")); n > 0 {
		s += fmt.Sprintf(" (phase %d of %d)", o.int("current_phase")+1, n)
	}
	s += ": " + countsSummary(o, "counts")
	if r := o.text("status_reason"); r != "" {
		s += " — " + r
	}
	return s
}

func progressCount(o obj) string {
	return fmt.Sprintf("%d/%d done", o.int("counts.done"), o.int("total"))
}

// draw redraws the job's bars in place.
func (w *watcher) draw(o obj) error {
	var b strings.Builder
	if w.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA\x1b[J", w.drawn) // up to the last drawing, and clear it
	}
	lines := watchBars(o)
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	w.drawn = len(lines)
	_, err := io.WriteString(w.env.Stdout, b.String())
	return err
}

// watchBars are the job's lines: a bar per state, then one per phase.
func watchBars(o obj) []string {
	total := o.int("total")
	head := fmt.Sprintf("job %s → %s  %s  %s", o.text("id"), o.text("firmware_version"), o.text("status"), progressCount(o))
	if n := len(o.list("phases")); n > 0 {
		head += fmt.Sprintf("  phase %d of %d", o.int("current_phase")+1, n)
	}
	if r := o.text("status_reason"); r != "" {
		head += "  (" + r + ")"
	}
	lines := []string{head}
	for _, s := range execStates {
		n := o.int("counts." + s)
		lines = append(lines, fmt.Sprintf("  %-12s %s %d", s, bar(n, total), n))
	}
	phases := o.list("phases")
	if len(phases) > 0 {
		lines = append(lines, "phases:")
	}
	for _, p := range phases {
		ph := obj(p.(map[string]any))
		lines = append(lines, fmt.Sprintf("  %-3d %-9s %s %d/%d done  %s", ph.int("index")+1, ph.text("state"),
			bar(ph.int("counts.done"), ph.int("size")), ph.int("counts.done"), ph.int("size"), countsSummary(ph, "counts")))
	}
	return lines
}

// bar is n of total as a bar of 30 cells.
func bar(n, total int64) string {
	const width = 30
	filled := 0
	if total > 0 {
		filled = int((n*width + total/2) / total)
	}
	filled = min(max(filled, 0), width)
	if n > 0 && filled == 0 {
		filled = 1 // show that there are some
	}
	return strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
}
