package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/otad/otad/internal/ota"
)

// testCert is a certificate and its key, issued by parent (itself when
// nil).
type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func newTestCert(t *testing.T, tmpl *x509.Certificate, parent *testCert) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCert{cert: cert, key: key, der: der}
}

func newTestCA(t *testing.T) *testCert {
	return newTestCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "otad test CA"},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, nil)
}

func (c *testCert) tls() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{c.der}, PrivateKey: c.key}
}

// writePEM writes the certificate, and its key when keyFile is set.
func (c *testCert) writePEM(t *testing.T, certFile, keyFile string) {
	t.Helper()
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if keyFile != "" {
		b, err := x509.MarshalPKCS8PrivateKey(c.key)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// With OTAD_MQTT_TLS_CLIENT_CA set, a device logs in on the TLS listener
// with a client certificate from that CA whose CommonName is its client
// ID, no password; a certificate from another CA fails the handshake, and
// a device without a certificate still logs in with its signed password.
func TestMQTTClientCertificate(t *testing.T) {
	dir := t.TempDir()
	serverCA, deviceCA, rogueCA := newTestCA(t), newTestCA(t), newTestCA(t)
	server := newTestCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: "otad"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, serverCA)
	files := map[string]string{"cert": filepath.Join(dir, "server.pem"), "key": filepath.Join(dir, "server.key"), "ca": filepath.Join(dir, "devices-ca.pem")}
	server.writePEM(t, files["cert"], files["key"])
	deviceCA.writePEM(t, files["ca"], "")

	a := startApp(t, "sqlite", map[string]string{"OTAD_MQTT_TLS_ADDR": "127.0.0.1:0",
		"OTAD_MQTT_TLS_CERT": files["cert"], "OTAD_MQTT_TLS_KEY": files["key"], "OTAD_MQTT_TLS_CLIENT_CA": files["ca"]})
	pid := "TLSCERT001"
	a.do("POST", "/v1/products", map[string]string{"id": pid, "name": "tls"}).wantStatus(t, 201)
	var created struct{ Secret string }
	a.do("POST", "/v1/products/"+pid+"/devices", map[string]string{"name": "cert-dev", "version": "1.0"}).decode(t, &created)
	clientID := ota.ClientID(pid, "cert-dev")
	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)

	connect := func(cert *testCert, user, pass string) (paho.Client, error) {
		cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{cert.tls()}
		}
		o := paho.NewClientOptions().AddBroker("ssl://" + a.broker.TLSAddr()).SetTLSConfig(cfg).
			SetClientID(clientID).SetUsername(user).SetPassword(pass).SetProtocolVersion(4).
			SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
		c := paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(30 * time.Second) {
			t.Fatal("connect did not finish within 30s")
		}
		return c, tok.Error()
	}
	deviceCert := newTestCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: clientID},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, deviceCA)
	c, err := connect(deviceCert, "", "")
	if err != nil {
		t.Fatalf("certificate login refused: %v", err)
	}
	if tok := c.Publish(ota.ReportTopic(pid, "cert-dev"), 1, false, `{"type":"report_version","report":{"version":"7.0.0"}}`); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	var dev struct{ Version string }
	a.do("GET", "/v1/products/"+pid+"/devices/cert-dev", nil).decode(t, &dev)
	if dev.Version != "7.0.0" {
		t.Fatalf("the device's version is %q after its report", dev.Version)
	}
	c.Disconnect(0)

	rogue := newTestCert(t, &x509.Certificate{Subject: pkix.Name{CommonName: clientID},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, rogueCA)
	if _, err := connect(rogue, "", ""); err == nil {
		t.Fatal("a certificate from another CA logged in")
	}
	if _, err := connect(nil, "", ""); err == nil {
		t.Fatal("no certificate and no password logged in")
	}
	user := clientID + ";21010406;a1b2c;" + "9999999999"
	pass, err := ota.SignDeviceUsername(created.Secret, user, ota.SignHMACSHA256)
	if err != nil {
		t.Fatal(err)
	}
	c, err = connect(nil, user, pass)
	if err != nil {
		t.Fatalf("password login over TLS with client CAs set: %v", err)
	}
	c.Disconnect(0)
}
