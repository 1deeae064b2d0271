package broker

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi's failure logs name the packet, never dump it, call the error
// err, and are bounded per second.
func TestMochiLogQuiet(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(newMochiLog(slog.LevelWarn, slog.NewTextHandler(&out, nil)))
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "$ota/report/P/d", Payload: bytes.Repeat([]byte{'x'}, 4000)}
	log.Info("new client") // below min
	for range 100 {
		log.Warn("error processing packet", "error", "bad", "pk", pk)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != mochiLogBurst {
		t.Fatalf("%d lines in one second, want %d:\n%s", len(lines), mochiLogBurst, out.String())
	}
	if len(lines[0]) > 300 || strings.Contains(lines[0], "xxxx") || !strings.Contains(lines[0], "pk.payload_bytes=4000") ||
		!strings.Contains(lines[0], "pk.type=Publish") || !strings.Contains(lines[0], "err=bad") {
		t.Fatalf("line = %s", lines[0])
	}
	out.Reset()
	r := slog.NewRecord(time.Now().Add(time.Hour), slog.LevelWarn, "error processing packet", 0)
	log.Handler().Handle(t.Context(), r)
	if !strings.Contains(out.String(), "suppressed_before=90") {
		t.Fatalf("the next second's line does not count the suppressed: %s", out.String())
	}
}
