package broker

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// BenchmarkIdleConnectionMemory measures the goroutine stacks and heap of an
// idle connection that has connected, subscribed, published one QoS 1
// message and received one: for a bare mochi server with an allow-all hook
// (the floor otad's configuration of mochi cannot go below) and for otad's
// broker over SQLite (a report_version answered with report_version_rsp).
// The clients are plain sockets driven from the benchmark's goroutine, so
// every stack counted is the server's. Figures are per connection, live
// (before the forced collections; with GOGC=off no collection has shrunk a
// stack since it grew) and after two forced collections (Go shrinks a
// stack by half at most once per collection, and only when it uses less
// than a quarter of it).
//
//	go test -run '^$' -bench IdleConnectionMemory -benchtime 1x ./internal/broker/
//	GOGC=off go test -run '^$' -bench IdleConnectionMemory -benchtime 1x ./internal/broker/
func BenchmarkIdleConnectionMemory(b *testing.B) {
	const conns = 500
	b.Run("mochi", func(b *testing.B) {
		// mochi as otad runs it, with nothing behind its hook.
		s, err := StartBare("127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		measureIdle(b, conns, func(i int) rawClient {
			topic := fmt.Sprintf("t/%d", i)
			return rawClient{addr: s.Addr(), id: fmt.Sprintf("c%d", i), sub: topic, pub: topic, payload: "x"}
		})
	})
	b.Run("otad", func(b *testing.B) {
		e := newEnv(b, "sqlite")
		devs := make([]*device, conns)
		for i := range devs {
			devs[i] = e.device(fmt.Sprintf("m%04d", i))
		}
		measureIdle(b, conns, func(i int) rawClient {
			d := devs[i]
			user, pass := d.creds(b)
			return rawClient{addr: e.broker.Addr(), id: d.clientID, user: user, pass: pass, sub: d.updateTopic(), pub: d.reportTopic(),
				payload: `{"type":"report_version","report":{"version":"1.0.0"}}`}
		})
	})
}

// TestConnectionStacks bounds the goroutine stacks an authenticated
// connection keeps once it has reported its version and received its
// report_version_rsp, as they grew (collection is off meanwhile). mochi's
// two goroutines grow to 32 and 8 KiB; anything otad does on the
// connection's goroutine that is deeper than mochi's own publish path
// (publishing the reply from there did) doubles the first to 64.
func TestConnectionStacks(t *testing.T) {
	const conns = 200
	e := newEnv(t, "sqlite")
	devs := make([]*device, conns)
	for i := range devs {
		devs[i] = e.device(fmt.Sprintf("s%04d", i))
	}
	runtime.GC()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var before, live runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, d := range devs {
		user, pass := d.creds(t)
		c, err := rawClient{addr: e.broker.Addr(), id: d.clientID, user: user, pass: pass, sub: d.updateTopic(), pub: d.reportTopic(),
			payload: `{"type":"report_version","report":{"version":"1.0.0"}}`}.run()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	runtime.ReadMemStats(&live)
	per := (float64(live.StackInuse) - float64(before.StackInuse)) / conns / 1024
	t.Logf("goroutine stacks: %.1f KiB a connection", per)
	if per > 52 {
		t.Errorf("goroutine stacks: %.1f KiB a connection, want at most 52 (mochi's own 40 and room for otad's work)", per)
	}
}

func measureIdle(b *testing.B, n int, client func(i int) rawClient) {
	for range b.N {
		runtime.GC()
		var before, live, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var open []net.Conn
		for i := range n {
			c, err := client(i).run()
			if err != nil {
				b.Fatal(err)
			}
			open = append(open, c)
		}
		runtime.ReadMemStats(&live)
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&after)
		per := func(a, z uint64) float64 { return (float64(z) - float64(a)) / float64(n) }
		b.ReportMetric(per(before.StackInuse, live.StackInuse), "stack-B/conn-live")
		b.ReportMetric(per(before.StackInuse, after.StackInuse), "stack-B/conn-gc")
		b.ReportMetric(per(before.HeapInuse, after.HeapInuse), "heap-B/conn-gc")
		for _, c := range open {
			c.Close()
		}
	}
}

// rawClient is an MQTT 3.1.1 client with no goroutine of its own.
type rawClient struct {
	addr, id, user, pass, sub, pub, payload string
}

// run connects, subscribes to sub, publishes payload to pub at QoS 1, and
// returns once it has the PUBACK and one message on sub.
func (rc rawClient) run() (net.Conn, error) {
	c, err := net.Dial("tcp", rc.addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(deadline))
	r := bufio.NewReader(c)
	str := func(b []byte, s string) []byte { return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...) }
	send := func(typ byte, body []byte) error {
		pk := []byte{typ}
		for n := len(body); ; {
			d := byte(n % 128)
			n /= 128
			if n > 0 {
				d |= 0x80
			}
			pk = append(pk, d)
			if n == 0 {
				break
			}
		}
		_, err := c.Write(append(pk, body...))
		return err
	}
	// read returns the next packet's type and body.
	read := func() (byte, []byte, error) {
		typ, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		var n, shift int
		for {
			d, err := r.ReadByte()
			if err != nil {
				return 0, nil, err
			}
			n |= int(d&0x7f) << shift
			shift += 7
			if d&0x80 == 0 {
				break
			}
		}
		body := make([]byte, n)
		_, err = io.ReadFull(r, body)
		return typ >> 4, body, err
	}
	expect := func(want byte) error {
		typ, body, err := read()
		if err == nil && typ != want {
			err = fmt.Errorf("got packet type %d (% x), want %d", typ, body, want)
		}
		return err
	}
	// ackAndMessage reads the PUBACK and the message on sub, in either
	// order, and acknowledges the message.
	ackAndMessage := func() error {
		var acked, got bool
		for !acked || !got {
			typ, body, err := read()
			if err != nil {
				return err
			}
			switch {
			case typ == 4 && !acked:
				acked = true
			case typ == 3 && !got && len(body) >= 2:
				got = true
				at := 2 + int(binary.BigEndian.Uint16(body))
				if len(body) < at+2 {
					return fmt.Errorf("short PUBLISH")
				}
				if err := send(0x40, body[at:at+2]); err != nil {
					return err
				}
			default:
				return fmt.Errorf("unexpected packet type %d", typ)
			}
		}
		return nil
	}
	flags := byte(0x02) // clean session
	if rc.user != "" {
		flags |= 0xc0
	}
	connect := append(str(nil, "MQTT"), 4, flags, 0, 60)
	connect = str(connect, rc.id)
	if rc.user != "" {
		connect = str(str(connect, rc.user), rc.pass)
	}
	steps := []func() error{
		func() error { return send(0x10, connect) },
		func() error { return expect(2) }, // CONNACK
		func() error { return send(0x82, append(str([]byte{0, 1}, rc.sub), 1)) },
		func() error { return expect(9) }, // SUBACK
		func() error { return send(0x32, append(append(str(nil, rc.pub), 0, 2), rc.payload...)) },
		ackAndMessage,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			c.Close()
			return nil, fmt.Errorf("client %s: %w", rc.id, err)
		}
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
