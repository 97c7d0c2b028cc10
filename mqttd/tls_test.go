package mqttd

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// tlsDial returns a dialer for testenv that speaks TLS trusting root and presenting cert, if any.
func tlsDial(root *testenv.CA, cert *tls.Certificate) func(string, string) (net.Conn, error) {
	cfg := &tls.Config{RootCAs: root.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
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

// tlsListenerOf returns a TLS listener on 127.0.0.1:0 with a server certificate from root, verifying client
// certificates against root.
func tlsListenerOf(t *testing.T, root *testenv.CA) Listener {
	dir := t.TempDir()
	l := Listener{Address: "127.0.0.1:0", CertFile: filepath.Join(dir, "server.pem"),
		KeyFile: filepath.Join(dir, "server.key"), ClientCAFile: filepath.Join(dir, "clients.pem")}
	testenv.WriteKeyPair(t, root.Server(t, "127.0.0.1"), l.CertFile, l.KeyFile)
	root.WriteCert(t, l.ClientCAFile)
	return l
}

func TestClientCertificates(t *testing.T) {
	root, other := testenv.NewCA(t, "wgkex test CA"), testenv.NewCA(t, "someone else's CA")
	l := tlsListenerOf(t, root)
	f := newFleet(t, func(o *Options) {
		o.Listeners = []Listener{l}
		o.Workers["gw-e"] = Account{}
	})
	dial := func(id string, c *tls.Certificate, user, pass string) (*testenv.Client, error) {
		cl, err := testenv.Dial(f.addr, id, testenv.ClientOptions{Dial: tlsDial(root, c), Username: user, Password: pass})
		if err == nil {
			t.Cleanup(cl.Close)
		}
		return cl, err
	}

	gwD := root.Client(t, "gw-d")
	d, err := dial("gw-d", &gwD, "", "")
	if err != nil {
		t.Fatalf("gw-d with its own certificate: %v", err)
	}
	d.Publish(t, wire.StatusTopic("gw-d"), "1", 1, true)
	if err := d.TryPublish(wire.StatusTopic("gw-a"), "0", 1, true); err == nil {
		t.Error("gw-d published gw-a's status")
	}
	gwE := root.Client(t, "Gateway E", "gw-e.example", "gw-e")
	if _, err := dial("gw-e", &gwE, "", ""); err != nil {
		t.Errorf("gw-e named by a DNS SAN: %v", err)
	}
	// Password workers share the listener without a certificate.
	if _, err := dial("gw-a", nil, "gw-a", "pa"); err != nil {
		t.Errorf("gw-a with its password over TLS: %v", err)
	}

	foreign := other.Client(t, "gw-d")
	rogue := root.Client(t, "rogue")
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

// servedCert makes a new TLS handshake with addr, trusting root, and returns the certificate served.
func servedCert(t *testing.T, addr string, root *testenv.CA) *x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: root.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// certNotReloaded is logged when a changed certificate does not load.
const certNotReloaded = "certificate not reloaded, the previous one stays in force"

// TestListenerCertificateReload: a renewed certificate on a TLS listener is served to new handshakes without a
// restart, while a worker connected before keeps its connection; a broken renewal is logged and the certificate in
// force stays until a good one comes. The certificate used to be read once, at start.
func TestListenerCertificateReload(t *testing.T) {
	root := testenv.NewCA(t, "wgkex test CA")
	l := tlsListenerOf(t, root)
	f := newFleetCounting(t, func(o *Options) { o.Listeners = []Listener{l} }, certNotReloaded)
	a, err := testenv.Dial(f.addr, "gw-a", testenv.ClientOptions{Dial: tlsDial(root, nil), Username: "gw-a", Password: "pa"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	first := servedCert(t, f.addr, root)

	renewed := root.Server(t, "127.0.0.1")
	testenv.WriteKeyPair(t, renewed, l.CertFile, l.KeyFile)
	testenv.Eventually(t, 5*time.Second, func() bool { return servedCert(t, f.addr, root).Equal(renewed.Leaf) },
		"the renewed certificate is not served")
	if servedCert(t, f.addr, root).Equal(first) {
		t.Fatal("the first certificate is still served")
	}
	a.Publish(t, wire.DataTopic("gw-a", welt), "{}", 1, true) // over the connection made before the renewal
	if f.s.Clients() != 1 {
		t.Errorf("%d clients after the renewal, want gw-a still connected", f.s.Clients())
	}

	testenv.ReplaceFile(t, l.CertFile, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
	testenv.Eventually(t, 5*time.Second, func() bool { return f.logged.Load() > 0 }, "the broken renewal is not logged")
	if got := servedCert(t, f.addr, root); !got.Equal(renewed.Leaf) {
		t.Errorf("after a broken renewal serial %v is served, want %v", got.SerialNumber, renewed.Leaf.SerialNumber)
	}
	good := root.Server(t, "127.0.0.1")
	testenv.WriteKeyPair(t, good, l.CertFile, l.KeyFile)
	testenv.Eventually(t, 5*time.Second, func() bool { return servedCert(t, f.addr, root).Equal(good.Leaf) },
		"the certificate after the broken one is not served")
	a.Publish(t, wire.StatusTopic("gw-a"), "1", 1, true)
	testenv.Eventually(t, 5*time.Second, func() bool { return len(f.handled()) == 2 }, "the publishes are not handled")
	f.unchanged(t, wire.DataTopic("gw-a", welt)+"={}", wire.StatusTopic("gw-a")+"=1")
}

// TestListenerCertificateReloadOnRequest: ReloadCertificates (SIGHUP) reads the files at once, the next
// handshake gets the new certificate, and a connected worker stays connected.
func TestListenerCertificateReloadOnRequest(t *testing.T) {
	root := testenv.NewCA(t, "wgkex test CA")
	l := tlsListenerOf(t, root)
	f := newFleet(t, func(o *Options) { o.Listeners = []Listener{l} })
	a, err := testenv.Dial(f.addr, "gw-a", testenv.ClientOptions{Dial: tlsDial(root, nil), Username: "gw-a", Password: "pa"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	renewed := root.Server(t, "127.0.0.1")
	testenv.WriteKeyPair(t, renewed, l.CertFile, l.KeyFile)
	f.s.ReloadCertificates()
	if got := servedCert(t, f.addr, root); !got.Equal(renewed.Leaf) {
		t.Errorf("after ReloadCertificates serial %v is served, want %v", got.SerialNumber, renewed.Leaf.SerialNumber)
	}
	a.Publish(t, wire.StatusTopic("gw-a"), "1", 1, true)
	if f.s.Clients() != 1 {
		t.Errorf("%d clients after the reload, want gw-a still connected", f.s.Clients())
	}
}
