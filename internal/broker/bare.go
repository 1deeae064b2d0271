package broker

import (
	"fmt"
	"log/slog"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Bare is mochi as otad runs it (the same capabilities, buffers and
// listener) with a hook that admits every client and topic and stores
// nothing. It is the floor under otad's broker: bench/mqtt.sh measures it
// beside otad and mosquitto to tell mochi's own cost from otad's.
type Bare struct {
	server *mqtt.Server
	l      *listener
}

// StartBare serves a bare broker on addr until Close.
func StartBare(addr string) (*Bare, error) {
	opts := Options{Addr: addr}
	opts.setDefaults()
	log := slog.New(slog.DiscardHandler)
	s := newServer(opts, log)
	if err := s.AddHook(new(allowAll), nil); err != nil {
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	nl, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("broker: listen %s: %w", addr, err)
	}
	l := newListener("tcp", s, nl, nil, opts.ConnectTimeout, log, nil, func(*deviceConn) {})
	if err := s.AddListener(l); err != nil {
		nl.Close()
		return nil, fmt.Errorf("broker: add listener: %w", err)
	}
	if err := s.Serve(); err != nil {
		s.Close()
		return nil, fmt.Errorf("broker: serve: %w", err)
	}
	return &Bare{server: s, l: l}, nil
}

// Addr is the address the bare broker listens on.
func (b *Bare) Addr() string { return b.l.Address() }

// Close stops the bare broker and closes its connections.
func (b *Bare) Close() error { return b.server.Close() }

// allowAll admits every connection and topic.
type allowAll struct{ mqtt.HookBase }

func (*allowAll) ID() string { return "allow-all" }
func (*allowAll) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (*allowAll) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (*allowAll) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }
