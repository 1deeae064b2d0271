package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mqttConn is a lean MQTT 3.1.1 client: one reader goroutine and a
// mutex-guarded writer, so that ten thousand simulated devices cost little
// in the simulator itself. Packets are encoded and decoded by mochi's
// packets package.
type mqttConn struct {
	conn      net.Conn
	keepalive time.Duration

	wmu sync.Mutex
	w   *bufio.Writer

	mu      sync.Mutex
	nextID  uint16
	pending map[uint16]chan packets.Packet // PUBACK / SUBACK waiters by packet id
	closed  error

	// incoming receives PUBLISH packets from the server (already
	// acknowledged). It is closed when the connection ends.
	incoming chan packets.Packet
	done     chan struct{}
}

// errConnClosed is returned for requests on a closed connection.
var errConnClosed = errors.New("connection closed")

// connackError is a refused CONNECT.
type connackError struct{ code byte }

func (e connackError) Error() string {
	return fmt.Sprintf("connection refused: return code %d", e.code)
}

// dialMQTT connects and completes CONNECT/CONNACK within ctx.
func dialMQTT(ctx context.Context, addr, clientID, user, pass string, keepalive time.Duration) (*mqttConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	c := &mqttConn{
		conn:      conn,
		keepalive: keepalive,
		w:         bufio.NewWriterSize(conn, 512),
		pending:   make(map[uint16]chan packets.Packet),
		incoming:  make(chan packets.Packet, 8),
		done:      make(chan struct{}),
	}
	err = c.write(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 4,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        uint16(keepalive / time.Second),
			ClientIdentifier: clientID,
			UsernameFlag:     true,
			Username:         []byte(user),
			PasswordFlag:     true,
			Password:         []byte(pass),
		},
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	r := bufio.NewReaderSize(conn, 512)
	pk, err := readPacket(r)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	if pk.FixedHeader.Type != packets.Connack {
		conn.Close()
		return nil, fmt.Errorf("expected CONNACK, got packet type %d", pk.FixedHeader.Type)
	}
	if pk.ReasonCode != 0 {
		conn.Close()
		return nil, connackError{pk.ReasonCode}
	}
	conn.SetDeadline(time.Time{})
	go c.readLoop(r)
	return c, nil
}

func readPacket(r *bufio.Reader) (packets.Packet, error) {
	var pk packets.Packet
	b, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	pk.ProtocolVersion = 4
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(buf)
	case packets.Publish:
		err = pk.PublishDecode(buf)
	case packets.Puback:
		err = pk.PubackDecode(buf)
	case packets.Suback:
		err = pk.SubackDecode(buf)
	case packets.Pingresp:
	case packets.Disconnect:
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

func (c *mqttConn) write(pk packets.Packet) error {
	pk.ProtocolVersion = 4
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		err = fmt.Errorf("cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.w.Write(buf.Bytes()); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *mqttConn) readLoop(r *bufio.Reader) {
	var err error
	defer func() {
		c.mu.Lock()
		c.closed = err
		for id, ch := range c.pending {
			close(ch)
			delete(c.pending, id)
		}
		c.mu.Unlock()
		close(c.incoming)
		close(c.done)
		c.conn.Close()
	}()
	for {
		var pk packets.Packet
		pk, err = readPacket(r)
		if err != nil {
			return
		}
		switch pk.FixedHeader.Type {
		case packets.Puback, packets.Suback:
			c.mu.Lock()
			ch := c.pending[pk.PacketID]
			delete(c.pending, pk.PacketID)
			c.mu.Unlock()
			if ch != nil {
				ch <- pk
			}
		case packets.Publish:
			if pk.FixedHeader.Qos > 0 {
				if err = c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}); err != nil {
					return
				}
			}
			select {
			case c.incoming <- pk:
			default: // a device that is busy drops what it cannot take, like the SDKs
			}
		case packets.Disconnect:
			err = errors.New("server sent DISCONNECT")
			return
		}
	}
}

// request sends a packet with a fresh packet id and waits for its ack.
func (c *mqttConn) request(ctx context.Context, pk packets.Packet) (packets.Packet, error) {
	ch := make(chan packets.Packet, 1)
	c.mu.Lock()
	if c.closed != nil || isClosed(c.done) {
		c.mu.Unlock()
		return pk, errConnClosed
	}
	for {
		c.nextID++
		if c.nextID == 0 {
			c.nextID = 1
		}
		if _, busy := c.pending[c.nextID]; !busy {
			break
		}
	}
	pk.PacketID = c.nextID
	c.pending[pk.PacketID] = ch
	c.mu.Unlock()
	if err := c.write(pk); err != nil {
		return pk, err
	}
	select {
	case ack, ok := <-ch:
		if !ok {
			return pk, errConnClosed
		}
		return ack, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, pk.PacketID)
		c.mu.Unlock()
		return pk, ctx.Err()
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// subscribe subscribes to one filter and returns the granted QoS (0x80 for
// a refusal).
func (c *mqttConn) subscribe(ctx context.Context, filter string, qos byte) (byte, error) {
	ack, err := c.request(ctx, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		Filters:     packets.Subscriptions{{Filter: filter, Qos: qos}},
	})
	if err != nil {
		return 0, err
	}
	if len(ack.ReasonCodes) != 1 {
		return 0, errors.New("malformed SUBACK")
	}
	return ack.ReasonCodes[0], nil
}

// publish sends a message; at QoS 1 it waits for the PUBACK.
func (c *mqttConn) publish(ctx context.Context, topic string, qos byte, payload []byte) error {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
	}
	if qos == 0 {
		return c.write(pk)
	}
	_, err := c.request(ctx, pk)
	return err
}

func (c *mqttConn) ping() error {
	return c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
}

// close sends DISCONNECT and closes the connection.
func (c *mqttConn) close() {
	_ = c.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	c.conn.Close()
	<-c.done
}

// drop closes the connection without DISCONNECT, as a device that loses
// its network does.
func (c *mqttConn) drop() {
	c.conn.Close()
	<-c.done
}
