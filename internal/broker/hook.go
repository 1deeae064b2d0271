package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otad/otad/internal/ota"
)

// session is what the broker knows of an authenticated device connection.
type session struct {
	productID   string
	deviceName  string
	reportTopic string
	updateTopic string
	// authSeq orders the authentication against Broker.Disconnect calls.
	authSeq uint64
}

// hook is the broker's mochi hook: authentication, ACL, reports, presence.
// mochi calls it on each client's goroutine; everything slow is bounded by
// a timeout or handed to a worker.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "otad" }

var provided = []byte{
	mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
	mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
	mqtt.OnPublish, mqtt.OnWill, mqtt.OnWillSent,
	mqtt.OnPacketEncode, mqtt.OnPacketRead, mqtt.OnSubscribe, mqtt.OnPublishDropped,
}

func (h *hook) Provides(b byte) bool { return bytes.IndexByte(provided, b) >= 0 }

// authMethod is the refusal reason of a CONNECT naming an MQTT 5
// authentication method.
const authMethod = "auth_method"

// authTimeout bounds the device lookup of a connection attempt.
const authTimeout = 5 * time.Second

// OnConnect authenticates the device. mochi calls it before
// OnConnectAuthenticate; doing the work here lets the broker answer "not
// authorized" (0x87; 5 for MQTT 3) rather than mochi's "bad username or
// password", and "server unavailable" when the store fails.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	dc, ok := cl.Net.Conn.(*deviceConn)
	if !ok {
		return packets.ErrNotAuthorized
	}
	dc.connectRead.Store(true)
	seq := h.b.seq.Add(1)
	now := h.b.opts.Now()
	clientID := pk.Connect.ClientIdentifier
	if m := pk.Properties.AuthenticationMethod; m != "" {
		// MQTT 5 enhanced authentication: otad implements none.
		pid, name, _ := ota.SplitClientID(clientID)
		return h.refuse(cl, authMethod, pid, name, ota.Errorf(ota.EUNAUTHORIZED, "authentication method %q is not supported", clip(m)))
	}
	var pid, name, method string
	var check func(*ota.Device) error
	if cert := verifiedClientCert(dc); cert != nil {
		// A certificate from the client CA names its device in the
		// CommonName and stands in for the signed password.
		method = "certificate"
		if cert.Subject.CommonName != clientID {
			return h.refuse(cl, ota.AuthClientIDMismatch, "", "",
				ota.Errorf(ota.EUNAUTHORIZED, "client certificate is for %q", clip(cert.Subject.CommonName)))
		}
		var err error
		if pid, name, err = ota.SplitClientID(clientID); err != nil {
			return h.refuse(cl, ota.AuthBadUsername, "", "", err)
		}
		check = func(d *ota.Device) error {
			if d.Disabled {
				return &ota.Error{Code: ota.EUNAUTHORIZED, Message: "device is disabled", Detail: ota.AuthDisabled}
			}
			return nil
		}
	} else {
		method = "password"
		login := ota.DeviceLogin{ClientID: clientID, Username: string(pk.Connect.Username), Password: string(pk.Connect.Password)}
		u, err := login.Parse(now)
		if err != nil {
			// Name the device the login was for, when the client ID says.
			pid, name, _ := ota.SplitClientID(clientID)
			return h.refuse(cl, ota.AuthReason(err), pid, name, err)
		}
		pid, name = u.ProductID, u.DeviceName
		check = func(d *ota.Device) error {
			secret, err := h.b.opts.Secrets.Open(d.ProductID, d.Name, d.Secret)
			if err != nil {
				h.b.log.Error("device secret does not open", "product_id", d.ProductID, "device", d.Name, "error", err)
				return &ota.Error{Code: ota.EUNAVAILABLE, Message: ota.ErrorMessage(err), Detail: "secret_error"}
			}
			d.Secret = secret
			return login.Check(d, now)
		}
	}
	reportTopic := ota.ReportTopic(pid, name)
	if pk.Connect.WillFlag && pk.Connect.WillTopic != reportTopic {
		return h.refuse(cl, "will_topic", pid, name,
			ota.Errorf(ota.EFORBIDDEN, "will topic %q is not the device's report topic", clip(pk.Connect.WillTopic)))
	}
	ctx, cancel := context.WithTimeout(h.b.ctx, authTimeout)
	d, err := h.b.store.DeviceGet(ctx, pid, name)
	cancel()
	if ota.IsCode(err, ota.ENOTFOUND) {
		return h.refuse(cl, ota.AuthUnknownDevice, pid, name, err)
	}
	if err != nil {
		h.b.log.Error("device lookup failed", "product_id", pid, "device", name, "err", err)
		return h.refuse(cl, "store_error", pid, name, err)
	}
	if err := check(d); err != nil {
		return h.refuse(cl, ota.AuthReason(err), pid, name, err)
	}
	if h.b.revokedSince(clientID, seq) {
		return h.refuse(cl, reasonRevoked, pid, name, errRevoked)
	}
	h.b.metrics.logins.WithLabelValues(method).Inc()
	// A delayed Will would be sent from mochi's event loop, where the
	// store must not be waited on: send it when the connection ends.
	cl.Properties.Will.WillDelayInterval = 0
	dc.sess.Store(&session{
		productID:   pid,
		deviceName:  name,
		reportTopic: reportTopic,
		updateTopic: ota.UpdateTopic(pid, name),
		authSeq:     seq,
	})
	return nil
}

// verifiedClientCert returns the client certificate of a TLS connection
// when the listener verified it against its client CAs (TLSConfig.ClientCAs
// with ClientAuth VerifyClientCertIfGiven or stricter), or nil.
func verifiedClientCert(dc *deviceConn) *x509.Certificate {
	tc, ok := dc.Conn.(*tls.Conn)
	if !ok {
		return nil
	}
	cs := tc.ConnectionState()
	if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return nil
	}
	return cs.PeerCertificates[0]
}

// refuse answers a CONNECT with a refusal and ends the connection.
func (h *hook) refuse(cl *mqtt.Client, reason, pid, name string, err error) error {
	code := packets.ErrNotAuthorized
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrBadUsernameOrPassword // mochi sends it as 3.1.1's 5, "not authorized"
	}
	switch reason {
	case "store_error", "secret_error":
		code = packets.ErrServerUnavailable
	case authMethod:
		code = packets.ErrBadAuthenticationMethod // 0x8C; MQTT 5 only
	}
	if reason == "" {
		reason = "other"
	}
	h.b.metrics.refused.WithLabelValues(reason).Inc()
	h.b.log.Info("connection refused", "reason", reason, "product_id", pid, "device", name,
		"client_id", clip(cl.ID), "remote", cl.Net.Remote, "err", ota.ErrorMessage(err))
	_ = h.b.server.SendConnack(cl, code, false, nil)
	return code
}

// OnConnectAuthenticate admits exactly the connections OnConnect
// authenticated.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return sessionOf(cl.Net.Conn) != nil
}

// reasonRevoked refuses a connection whose device was disabled or deleted
// (Broker.Disconnect) while it was signing in.
const reasonRevoked = "revoked"

var errRevoked = ota.Errorf(ota.EUNAUTHORIZED, "device was disabled or deleted while signing in")

// OnSessionEstablish makes cl the one connection of its client ID. mochi
// takes a session over without holding a lock from its look-up of the
// client ID to its Clients.Add, so concurrent sign-ins with one ID miss
// each other and stay connected, and an old connection that ends after a
// newer one was added removes the newer one from Clients. Here, under b.mu,
// the newest connection replaces the holder in b.sessions, closes it
// ("session taken over") and waits until mochi is done with it, so that
// mochi's take-overs and clean-ups happen one connection at a time. The
// wait lasts as long as the hook the old connection is in (a store write
// is bounded by ReportTimeout) and holds up only the new connection.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	dc, _ := cl.Net.Conn.(*deviceConn)
	s := sessionOf(cl.Net.Conn)
	if s == nil {
		return // OnConnectAuthenticate admits no such connection
	}
	dc.client = cl
	h.b.mu.Lock()
	prev := h.b.sessions[cl.ID]
	h.b.sessions[cl.ID] = cl
	revoked := h.b.revokedLocked(cl.ID, s.authSeq)
	h.b.mu.Unlock()
	if revoked {
		// Disconnect found the previous holder, if any, and not cl:
		// refuse it, but let it take its place in the order.
		h.refuse(cl, reasonRevoked, s.productID, s.deviceName, errRevoked)
		cl.Stop(packets.ErrNotAuthorized)
	}
	if prev == nil {
		return
	}
	h.b.kick(prev, packets.ErrSessionTakenOver)
	pdc := prev.Net.Conn.(*deviceConn)
	<-pdc.done
	if pdc.online.Load() {
		dc.online.Store(true) // the device is online until cl ends
	}
}

// OnSessionEstablished records the device online.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	dc, _ := cl.Net.Conn.(*deviceConn)
	s := sessionOf(cl.Net.Conn)
	if s == nil || cl.Closed() {
		return
	}
	dc.online.Store(true)
	h.b.log.Debug("device connected", "product_id", s.productID, "device", s.deviceName, "protocol", cl.Properties.ProtocolVersion, "remote", cl.Net.Remote)
	h.b.presence.enqueue(ota.DevicePresenceParams{ProductID: s.productID, DeviceName: s.deviceName, Online: true, Node: h.b.opts.Node, At: h.b.opts.Now()})
}

// OnDisconnect notes a connection closed for a packet too large. The
// device is recorded offline once mochi is done with the connection
// (Broker.connectionEnded).
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	s := sessionOf(cl.Net.Conn)
	if s == nil {
		return
	}
	if errors.Is(err, packets.ErrPacketTooLarge) {
		h.b.metrics.dropped.WithLabelValues(dropTooLarge).Inc()
		h.b.log.Warn("connection closed: packet too large", "product_id", s.productID, "device", s.deviceName, "limit", h.b.opts.MaxPacketSize)
	}
}

// OnACLCheck lets a device publish only to its report topic and subscribe
// (and receive) only its exact update topic. The inline client, which
// carries otad's own messages, is not checked.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	s := sessionOf(cl.Net.Conn)
	if s == nil {
		return false
	}
	if write && topic == s.reportTopic || !write && topic == s.updateTopic {
		return true
	}
	action := "subscribe"
	if write {
		action = "publish"
	}
	h.b.metrics.aclDenied.WithLabelValues(action).Inc()
	if topic == deniedTopic {
		return false // logged with the real topic in OnPacketRead
	}
	h.b.log.Info("topic denied", "action", action, "topic", clip(topic), "product_id", s.productID, "device", s.deviceName)
	return false
}

// deniedTopic replaces, in OnPacketRead, a publish topic that mochi would
// drop without a word (the $SYS tree): the ACL then refuses it with the
// usual answers (PUBACK 0x87 for MQTT 5, disconnect for QoS 1 in MQTT 3).
const deniedTopic = "$ota/denied"

// OnPacketRead routes device publishes to topics mochi silently ignores
// into the ACL's refusal.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type == packets.Publish && !cl.Net.Inline && pk.TopicName != "" &&
		!strings.ContainsAny(pk.TopicName, "+#") && !mqtt.IsValidFilter(pk.TopicName, true) {
		if s := sessionOf(cl.Net.Conn); s != nil {
			h.b.log.Info("topic denied", "action", "publish", "topic", clip(pk.TopicName), "product_id", s.productID, "device", s.deviceName)
		}
		pk.TopicName = deniedTopic
	}
	return pk, nil
}

// OnSubscribe refuses shared subscriptions ($share/...): mochi checks only
// the filter after the group against the ACL. An empty filter makes mochi
// answer "topic filter invalid".
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	for i, f := range pk.Filters {
		if len(f.ShareName) > 0 {
			h.b.metrics.aclDenied.WithLabelValues("subscribe").Inc()
			h.b.log.Info("topic denied", "action", "subscribe", "topic", clip("$share/"+strings.Join(f.ShareName, "/")+"/"+f.Filter))
			pk.Filters[i].Filter = ""
			pk.Filters[i].ShareName = nil
		}
	}
	return pk
}

// Report drop reasons (the reason label of otad_mqtt_reports_dropped_total).
const (
	dropTooLarge   = "too_large"
	dropMalformed  = "malformed"
	dropStoreError = "store_error"
	dropRevoked    = "revoked"
)

// OnPublish turns a device's PUBLISH on its report topic (mochi has checked
// the ACL) into a durable report before mochi acknowledges it. The packet
// itself is never routed or retained.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	s := sessionOf(cl.Net.Conn)
	if s == nil {
		return pk, packets.ErrRejectPacket
	}
	qos := pk.FixedHeader.Qos
	r, err := ota.ParseReport(s.productID, s.deviceName, pk.Payload, h.b.opts.Now())
	if err != nil {
		reason := dropMalformed
		if ota.IsCode(err, ota.ETOOLARGE) {
			reason = dropTooLarge
		}
		h.b.metrics.dropped.WithLabelValues(reason).Inc()
		h.b.log.Warn("report dropped", "reason", reason, "product_id", s.productID, "device", s.deviceName,
			"qos", qos, "bytes", len(pk.Payload), "err", ota.ErrorMessage(err), "payload_prefix", prefix(pk.Payload))
		if cl.Properties.ProtocolVersion == 5 && qos > 0 {
			return pk, packets.ErrPayloadFormatInvalid // PUBACK 0x99
		}
		// MQTT 3 has no negative PUBACK: acknowledge and drop, keeping the
		// connection, so the device does not resend it forever.
		return pk, packets.CodeSuccessIgnore
	}
	err = h.b.rec.record(r, time.Now().Add(h.b.opts.ReportTimeout))
	if ota.IsCode(err, ota.EFORBIDDEN) {
		// Disabled or deleted while connected: the engine closes the
		// session; the report is neither stored nor acknowledged.
		h.b.metrics.dropped.WithLabelValues(dropRevoked).Inc()
		if cl.Properties.ProtocolVersion == 5 && qos > 0 {
			return pk, packets.ErrNotAuthorized // PUBACK 0x87
		}
		cl.Stop(packets.ErrNotAuthorized)
		return pk, packets.ErrRejectPacket
	}
	if err != nil {
		h.b.metrics.dropped.WithLabelValues(dropStoreError).Inc()
		h.b.log.Error("report not stored", "product_id", s.productID, "device", s.deviceName, "type", r.Type, "qos", qos, "err", err)
		switch {
		case qos == 0:
			return pk, packets.CodeSuccessIgnore
		case cl.Properties.ProtocolVersion == 5:
			return pk, packets.ErrUnspecifiedError // PUBACK 0x80
		}
		// MQTT 3: close without acknowledging; the device sends the report
		// again after it reconnects.
		cl.Stop(packets.ErrUnspecifiedError)
		return pk, packets.ErrRejectPacket
	}
	h.b.metrics.reports.WithLabelValues(r.Type).Inc()
	if r.Type == ota.EventReportVersion {
		h.b.reply(reply{productID: s.productID, deviceName: s.deviceName, version: r.Version})
	}
	return pk, packets.CodeSuccessIgnore
}

// OnWill keeps a device's Will (checked at CONNECT to be on its report
// topic) from being retained.
func (h *hook) OnWill(_ *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	will.Retain = false
	return will, nil
}

// OnWillSent records a device's Will as a report, like any other message on
// its report topic. It runs on the connection's goroutine before
// OnDisconnect, so the report is written before the device is recorded
// offline.
func (h *hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	s := sessionOf(cl.Net.Conn)
	if s == nil {
		return
	}
	r, err := ota.ParseReport(s.productID, s.deviceName, pk.Payload, h.b.opts.Now())
	if err != nil {
		h.b.metrics.dropped.WithLabelValues(dropMalformed).Inc()
		h.b.log.Warn("will dropped", "product_id", s.productID, "device", s.deviceName, "err", ota.ErrorMessage(err))
		return
	}
	if err := h.b.rec.record(r, time.Now().Add(h.b.opts.ReportTimeout)); err != nil {
		h.b.metrics.dropped.WithLabelValues(dropStoreError).Inc()
		h.b.log.Error("will not stored", "product_id", s.productID, "device", s.deviceName, "err", err)
		return
	}
	h.b.metrics.reports.WithLabelValues(r.Type).Inc()
}

// OnPublishDropped counts messages to a device that mochi dropped because
// the device's write queue was full (it is not reading).
func (h *hook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.b.metrics.downlinksDropped.Inc()
	h.b.log.Warn("message to device dropped: write queue full", "client_id", clip(cl.ID), "topic", clip(pk.TopicName))
}

// OnPacketEncode tells MQTT 5 devices the broker's limits in CONNACK.
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0 && cl.Properties.ProtocolVersion == 5 {
		pk.Properties.MaximumPacketSize = h.b.opts.MaxPacketSize
		pk.Properties.WildcardSubAvailable, pk.Properties.WildcardSubAvailableFlag = 0, true
		pk.Properties.SharedSubAvailable, pk.Properties.SharedSubAvailableFlag = 0, true
		pk.Properties.SubIDAvailable, pk.Properties.SubIDAvailableFlag = 0, true
	}
	return pk
}

// clip shortens untrusted strings for logs.
func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "…"
	}
	return s
}

// prefix shows the start of a rejected payload, quoted, for logs.
func prefix(b []byte) string {
	if len(b) > 48 {
		b = b[:48]
	}
	return string(b)
}
