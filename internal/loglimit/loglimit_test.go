package loglimit

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestHandler(t *testing.T) {
	var out bytes.Buffer
	h := New(slog.NewTextHandler(&out, nil), 3)
	log := slog.New(h).With("component", "x")
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	emit := func(msg string, at time.Time) {
		r := slog.NewRecord(at, slog.LevelWarn, msg, 0)
		log.Handler().Handle(context.Background(), r)
	}
	for range 50 {
		emit("noisy", at)
	}
	emit("other", at) // its own budget
	if n := strings.Count(out.String(), "msg=noisy"); n != 3 {
		t.Fatalf("%d noisy lines in one second, want 3:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "msg=other") {
		t.Fatal("another message was held back with the noisy one")
	}
	out.Reset()
	emit("noisy", at.Add(time.Second))
	if !strings.Contains(out.String(), "suppressed_before=47") || !strings.Contains(out.String(), "component=x") {
		t.Fatalf("next second: %s", out.String())
	}
}
