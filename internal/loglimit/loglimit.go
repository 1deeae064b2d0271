// Package loglimit keeps otad's logs bounded whatever devices and clients
// do: a slog handler that lets at most a burst of records with the same
// message through per second and counts the ones it held back on the next
// record of that message it lets through (suppressed_before). An outage
// that makes every device's report fail then writes a few lines a second,
// not one per report.
package loglimit

import (
	"context"
	"log/slog"
	"sync"
)

// maxMessages bounds the messages tracked in one second; messages are the
// program's constants, so it is never reached but by a bug.
const maxMessages = 4096

// Handler is the limiting slog.Handler; its WithAttrs and WithGroup
// derivatives share its budget.
type Handler struct {
	h slog.Handler
	s *state
}

type state struct {
	mu         sync.Mutex
	burst      int
	second     int64
	counts     map[string]int // records of each message this second
	suppressed map[string]int // held back since the last one let through
}

// New limits h to burst records per message per second.
func New(h slog.Handler, burst int) *Handler {
	return &Handler{h: h, s: &state{burst: max(burst, 1), counts: map[string]int{}, suppressed: map[string]int{}}}
}

func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	s := h.s
	s.mu.Lock()
	if sec := r.Time.Unix(); sec != s.second {
		s.second = sec
		clear(s.counts)
	}
	n, known := s.counts[r.Message]
	if !known && len(s.counts) >= maxMessages {
		n = s.burst // too many messages: hold it back
	}
	if n >= s.burst {
		if len(s.suppressed) < maxMessages || s.suppressed[r.Message] > 0 {
			s.suppressed[r.Message]++
		}
		s.mu.Unlock()
		return nil
	}
	s.counts[r.Message] = n + 1
	held := s.suppressed[r.Message]
	delete(s.suppressed, r.Message)
	s.mu.Unlock()
	if held > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed_before", held))
	}
	return h.h.Handle(ctx, r)
}

func (h *Handler) WithAttrs(a []slog.Attr) slog.Handler { return &Handler{h.h.WithAttrs(a), h.s} }
func (h *Handler) WithGroup(n string) slog.Handler      { return &Handler{h.h.WithGroup(n), h.s} }
