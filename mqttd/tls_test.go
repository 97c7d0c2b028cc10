package mqttd

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

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// ca is a certificate authority made by a test.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func newCA(t testing.TB, name string) *ca {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &ca{cert: cert, key: key, der: der}
}

// issue makes a certificate signed by c for a client (CN cn, DNS SANs) or, with ips, a server.
func (c *ca) issue(t testing.TB, cn string, dns []string, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	usage := x509.ExtKeyUsageClientAuth
	if len(ips) > 0 {
		usage = x509.ExtKeyUsageServerAuth
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: n, Subject: pkix.Name{CommonName: cn}, DNSNames: dns, IPAddresses: ips,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeKeyPair writes cert and key as PEM files named base.pem and base.key in dir.
func writeKeyPair(t testing.TB, dir, base string, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, base+".pem"), filepath.Join(dir, base+".key")
	writePEM(t, certFile, "CERTIFICATE", c.Certificate[0])
	k, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, keyFile, "PRIVATE KEY", k)
	return certFile, keyFile
}

// tlsDial returns a dialer for testenv that speaks TLS trusting root and presenting cert, if any.
func tlsDial(root *ca, cert *tls.Certificate) func(string, string) (net.Conn, error) {
	pool := x509.NewCertPool()
	pool.AddCert(root.cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Sent even when the server asks for another CA's certificates, as an attacker would.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return func(n, a string) (net.Conn, error) {
		c, err := tls.Dial(n, a, cfg)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

func TestClientCertificates(t *testing.T) {
	dir := t.TempDir()
	root, other := newCA(t, "wgkex test CA"), newCA(t, "someone else's CA")
	certFile, keyFile := writeKeyPair(t, dir, "server", root.issue(t, "mqtt", nil, net.ParseIP("127.0.0.1")))
	caFile := filepath.Join(dir, "clients.pem")
	writePEM(t, caFile, "CERTIFICATE", root.der)
	f := newFleet(t, func(o *Options) {
		o.Listeners = []Listener{{Address: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile}}
		o.Workers["gw-e"] = Account{}
	})
	dial := func(id string, c *tls.Certificate, user, pass string) (*testenv.Client, error) {
		cl, err := testenv.Dial(f.addr, id, testenv.ClientOptions{Dial: tlsDial(root, c), Username: user, Password: pass})
		if err == nil {
			t.Cleanup(cl.Close)
		}
		return cl, err
	}

	gwD := root.issue(t, "gw-d", nil)
	d, err := dial("gw-d", &gwD, "", "")
	if err != nil {
		t.Fatalf("gw-d with its own certificate: %v", err)
	}
	d.Publish(t, wire.StatusTopic("gw-d"), "1", 1, true)
	if err := d.TryPublish(wire.StatusTopic("gw-a"), "0", 1, true); err == nil {
		t.Error("gw-d published gw-a's status")
	}
	gwE := root.issue(t, "Gateway E", []string{"gw-e.example", "gw-e"})
	if _, err := dial("gw-e", &gwE, "", ""); err != nil {
		t.Errorf("gw-e named by a DNS SAN: %v", err)
	}
	// Password workers share the listener without a certificate.
	if _, err := dial("gw-a", nil, "gw-a", "pa"); err != nil {
		t.Errorf("gw-a with its password over TLS: %v", err)
	}

	foreign := other.issue(t, "gw-d", nil)
	rogue := root.issue(t, "rogue", nil)
	for _, c := range []struct {
		name, id string
		cert     *tls.Certificate
		user     string
	}{
		{"another CA", "gw-d", &foreign, ""},
		{"another worker's name", "gw-a", &gwD, ""},
		{"an unconfigured worker", "rogue", &rogue, ""},
		{"the shared password taking over a certificate's session", "gw-d", nil, "wgkex"},
	} {
		if _, err := dial(c.id, c.cert, c.user, "shared"); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	for _, r := range []string{reasonClientID, reasonUnknownWorker, reasonTakeover} {
		if f.refusedN(r) != 1 {
			t.Errorf("refusals for %s: %d, want 1", r, f.refusedN(r))
		}
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return f.refusedN(reasonProtocol) == 1 }, "bad handshake not counted")
	f.unchanged(t, wire.StatusTopic("gw-d")+"=1")
}
