package api

import (
	"fmt"
	"testing"
	"time"
)

func TestRateLimiter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	l := NewRateLimiter(10, 5, 100, clock)
	for i := range 5 {
		if w := l.take("a"); w != 0 {
			t.Fatalf("request %d of a burst of 5 refused (%s)", i, w)
		}
	}
	if w := l.take("a"); w <= 0 || w > 100*time.Millisecond {
		t.Fatalf("6th request: wait %s, want up to 100ms", w)
	}
	if w := l.wait("a"); w <= 0 {
		t.Fatal("wait after the burst says go")
	}
	if w := l.take("b"); w != 0 {
		t.Fatalf("another key is refused (%s)", w)
	}
	now = now.Add(100 * time.Millisecond)
	if w := l.take("a"); w != 0 {
		t.Fatalf("a refilled token is refused (%s)", w)
	}

	// Keys unused for as long as a bucket takes to fill (0.5s) go away.
	for i := range 98 {
		l.take(fmt.Sprint("k", i))
	}
	if n := l.Len(); n != 100 {
		t.Fatalf("%d keys, want 100", n)
	}
	// The table is full and every key in use: a new key is refused.
	if w := l.take("new"); w <= 0 {
		t.Fatal("a 101st key was tracked")
	}
	now = now.Add(2 * time.Second)
	if w := l.take("new"); w != 0 {
		t.Fatalf("a new key after the others went idle: wait %s", w)
	}
	if n := l.Len(); n != 1 {
		t.Fatalf("%d keys after the sweep, want 1", n)
	}
	// Busy keys are swept as requests go on, without the table filling.
	for i := range 10_000 {
		now = now.Add(time.Millisecond)
		l.take(fmt.Sprint("x", i))
		if n := l.Len(); n > 100 {
			t.Fatalf("%d keys tracked", n)
		}
	}
	if NewRateLimiter(0, 5, 0, nil) != nil {
		t.Fatal("a limit of 0 is not off")
	}
	var off *RateLimiter
	if off.take("a") != 0 || off.wait("a") != 0 {
		t.Fatal("a nil limiter limits")
	}
}
