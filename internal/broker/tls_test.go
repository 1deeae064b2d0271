package broker

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	otadengine "github.com/otad/otad/internal/engine"
	"github.com/otad/otad/internal/ota"
	"github.com/otad/otad/internal/store/sqlite"
	"github.com/otad/otad/internal/store/storetest"
)

// selfSigned returns a certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "otad test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	e := newEnv(t, "sqlite", func(o *Options) {
		o.TLSAddr = "127.0.0.1:0"
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		o.ConnectTimeout = 500 * time.Millisecond
	})
	if e.broker.TLSAddr() == "" || e.broker.TLSAddr() == e.broker.Addr() {
		t.Fatalf("tls addr %q, plain addr %q", e.broker.TLSAddr(), e.broker.Addr())
	}
	d := e.device("tls")
	user, pass := d.creds(t)
	c, code, err := e.connect3(4, d.clientID, user, pass, func(o *paho.ClientOptions) {
		o.Servers = nil
		o.AddBroker("ssl://" + e.broker.TLSAddr())
		o.SetTLSConfig(&tls.Config{RootCAs: pool})
	})
	if err != nil {
		t.Fatalf("TLS connect: %d %v", code, err)
	}
	c.mustSubscribe(t, d.updateTopic(), 1)
	c.publish1(t, d.reportTopic(), `{"type":"report_version","report":{"version":"8.8.3"}}`)
	if v := e.get(d).Version; v != "8.8.3" {
		t.Fatalf("version %q", v)
	}
	c.next(t)

	// A client that opens TCP and never finishes the handshake is dropped.
	conn, err := net.Dial("tcp", e.broker.TLSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(deadline))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("stalled handshake: read %d %v", n, err)
	}
}

// An acknowledged report survives the process being killed with SIGKILL:
// the test re-runs its own binary as a broker over an SQLite file, publishes
// at QoS 1, kills it the moment the PUBACK arrives, and reopens the file.
func TestReportSurvivesSIGKILL(t *testing.T) {
	if os.Getenv("OTAD_BROKER_CHILD_DB") != "" {
		t.Skip("runs as the child only")
	}
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "otad.db")
	s, err := sqlite.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := storetest.MustProduct(t, s)
	dev := storetest.MustDevice(t, s, p.ID, "crash")
	s.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestBrokerChildProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "OTAD_BROKER_CHILD_DB="+dbPath)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "CHILD_ADDR="); ok {
				addrc <- a
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-time.After(deadline):
		t.Fatal("child broker did not start")
	}

	d := &device{Device: dev, clientID: ota.ClientID(dev.ProductID, dev.Name)}
	user, pass := d.creds(t)
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(d.clientID).
		SetUsername(user).SetPassword(pass).SetAutoReconnect(false).SetConnectTimeout(deadline)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(deadline) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	const n = 20
	for i := range n {
		tok := c.Publish(d.reportTopic(), 1, false, fmt.Sprintf(`{"type":"report_progress","report":{"progress":{"state":"downloading","percent":%d},"version":"2.0.0"}}`, i*5))
		if !tok.WaitTimeout(deadline) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	// The last PUBACK is in: kill at once.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	c.Disconnect(0)

	s2, err := sqlite.Open(context.Background(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	evs, err := s2.DeviceEventList(context.Background(), ota.DeviceEventListParams{ProductID: dev.ProductID, DeviceName: dev.Name, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	reports := 0
	for _, ev := range evs {
		if ev.Type == ota.EventReportProgress {
			reports++
		}
	}
	if reports != n {
		t.Fatalf("%d of %d acknowledged reports survived SIGKILL", reports, n)
	}
	got, err := s2.DeviceGet(context.Background(), dev.ProductID, dev.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got.Upgrade == nil || got.Upgrade.Percent != (n-1)*5 {
		t.Fatalf("upgrade after restart: %+v", got.Upgrade)
	}
}

// TestBrokerChildProcess is the broker process TestReportSurvivesSIGKILL
// kills. It does nothing in a normal run.
func TestBrokerChildProcess(t *testing.T) {
	db := os.Getenv("OTAD_BROKER_CHILD_DB")
	if db == "" {
		t.Skip("helper process for TestReportSurvivesSIGKILL")
	}
	s, err := sqlite.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	b, err := New(log, s, Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := otadengine.New(otadengine.Config{Logger: log, Store: s, Notifier: b, URLs: noURLs{}})
	if err != nil {
		t.Fatal(err)
	}
	b.SetReports(eng)
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("CHILD_ADDR=%s\n", b.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	select {
	case <-ctx.Done():
	case <-time.After(time.Minute): // never outlive the parent test by much
	}
	b.Close()
}

// testCA issues certificates for tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "otad test device CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a client certificate with the given CommonName.
func (ca *testCA) issue(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A device may authenticate with a client certificate from the configured
// CA whose CommonName is its client ID; the signed password still works.
func TestClientCertificateAuth(t *testing.T) {
	serverCert, serverPool := selfSigned(t)
	ca, rogue := newTestCA(t), newTestCA(t)
	e := newEnv(t, "sqlite", func(o *Options) {
		o.TLSAddr = "127.0.0.1:0"
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12,
			ClientCAs: ca.pool, ClientAuth: tls.VerifyClientCertIfGiven}
	})
	d, other, disabled := e.device("certdev"), e.device("other"), e.device("off")
	if err := e.store.DeviceSetDisabled(context.Background(), disabled.ProductID, disabled.Name, true); err != nil {
		t.Fatal(err)
	}
	withCert := func(cert *tls.Certificate) func(*paho.ClientOptions) {
		return func(o *paho.ClientOptions) {
			o.Servers = nil
			o.AddBroker("ssl://" + e.broker.TLSAddr())
			cfg := &tls.Config{RootCAs: serverPool}
			if cert != nil {
				cfg.Certificates = []tls.Certificate{*cert}
			}
			o.SetTLSConfig(cfg)
		}
	}

	good := ca.issue(t, d.clientID)
	c, code, err := e.connect3(4, d.clientID, "", "", withCert(&good))
	if err != nil {
		t.Fatalf("certificate login refused: %d %v", code, err)
	}
	c.mustSubscribe(t, d.updateTopic(), 1)
	c.publish1(t, d.reportTopic(), `{"type":"report_version","report":{"version":"7.0.0"}}`)
	if v := e.get(d).Version; v != "7.0.0" {
		t.Fatalf("version %q", v)
	}
	if n := counter(e.broker.metrics.logins.WithLabelValues("certificate")); n != 1 {
		t.Fatalf("certificate logins %v", n)
	}
	c.Disconnect(0)

	// Another device's certificate does not open this client ID.
	if _, code, err := e.connect3(4, other.clientID, "", "", withCert(&good)); err == nil || code != 5 {
		t.Fatalf("certificate for another client id: %d %v", code, err)
	}
	// A disabled device's certificate is refused.
	off := ca.issue(t, disabled.clientID)
	if _, code, err := e.connect3(4, disabled.clientID, "", "", withCert(&off)); err == nil || code != 5 {
		t.Fatalf("disabled device's certificate: %d %v", code, err)
	}
	// A certificate from another CA fails the TLS handshake.
	forged := rogue.issue(t, d.clientID)
	if _, _, err := e.connect3(4, d.clientID, "", "", withCert(&forged)); err == nil {
		t.Fatal("certificate from an unknown CA accepted")
	}
	// Without a certificate the signed password works, and is required.
	user, pass := d.creds(t)
	c2, code, err := e.connect3(4, d.clientID, user, pass, withCert(nil))
	if err != nil {
		t.Fatalf("password login over TLS: %d %v", code, err)
	}
	c2.Disconnect(0)
	if _, code, err := e.connect3(4, d.clientID, "", "", withCert(nil)); err == nil || code != 5 {
		t.Fatalf("no certificate, no password: %d %v", code, err)
	}
}
