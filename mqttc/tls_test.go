package mqttc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// pki writes a CA, a server certificate for mqtt.test and 127.0.0.1, and a client certificate for CN broker-a
// into dir, as PEM files ca.pem, server.pem/.key, client.pem/.key.
func pki(t *testing.T, dir string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.pem", "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, tmpl *x509.Certificate) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = big.NewInt(serial), time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(key)
		write(name+".pem", "CERTIFICATE", der)
		write(name+".key", "EC PRIVATE KEY", kb)
	}
	leaf("server", 2, &x509.Certificate{Subject: pkix.Name{CommonName: "mqtt.test"}, DNSNames: []string{"mqtt.test"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	leaf("client", 3, &x509.Certificate{Subject: pkix.Name{CommonName: "broker-a"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

// TestClientTLS: against Mosquitto requiring a client certificate, the client connects over TLS with the CA, the
// server name and its certificate; without the certificate, or trusting the system roots only, it never does.
func TestClientTLS(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	pki(t, dir)
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Extra: "cafile " + dir + "/ca.pem\ncertfile " + dir + "/server.pem\nkeyfile " + dir +
		"/server.key\nrequire_certificate true\nuse_identity_as_username true\n"}).Addr
	_, port, _ := net.SplitHostPort(addr)
	good := config.MQTTServer{URL: "tls://127.0.0.1:" + port, CAFile: dir + "/ca.pem", ServerName: "mqtt.test",
		CertFile: dir + "/client.pem", KeyFile: dir + "/client.key", ClientID: "broker-a", Keepalive: 5}
	in := &inbox{}
	c, err := New(testenv.Logger(t), Options{Server: good})
	if err != nil {
		t.Fatal(err)
	}
	c.Handle("test/#", in.handle)
	if err := c.Serve(); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testenv.Eventually(t, 10*time.Second, c.Connected, "no TLS connection with a client certificate")

	noCert, noCA := good, good
	noCert.CertFile, noCert.KeyFile, noCert.ClientID = "", "", "no-cert"
	noCA.CAFile, noCA.ClientID = "", "no-ca"
	for _, tc := range []struct {
		s    config.MQTTServer
		want string
	}{{noCert, "certificate required"}, {noCA, "certificate signed by unknown authority"}} {
		log := &logBuffer{}
		b, err := New(slog.New(slog.NewTextHandler(log, nil)), Options{Server: tc.s})
		if err != nil {
			t.Fatal(err)
		}
		b.Serve()
		defer b.Close()
		testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(log.String(), tc.want) }, "%s: no %q in %s", tc.s.ClientID, tc.want, log)
		if b.Connected() {
			t.Errorf("%s connected", tc.s.ClientID)
		}
	}
}

// logBuffer collects log output safely across goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
