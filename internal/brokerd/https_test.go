package brokerd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// TestHTTPSListener starts the broker with broker_listen.tls_port and registers a key over HTTPS. The port is
// fixed (443), so the test takes a loopback address of its own (127.x.y.z) instead of a port that might be taken.
func TestHTTPSListener(t *testing.T) {
	testenv.RequireRoot(t) // port 443
	dir := t.TempDir()
	host := fmt.Sprintf("127.%d.%d.%d", 1+mrand.IntN(250), mrand.IntN(256), 1+mrand.IntN(250))
	certFile, keyFile := filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	cert := selfSigned(t, host, certFile, keyFile)
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
broker_listen: {host: %q, port: 0, tls_port: 443, cert_file: %q, key_file: %q}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
`, host, certFile, keyFile, filepath.Join(dir, "state.db"))), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfg)
	if got, want := d.HTTPSAddr(), host+":443"; got != want {
		t.Fatalf("HTTPSAddr = %q, want %q", got, want)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Post("https://"+host+"/api/v1/wg/key/exchange", "application/x-www-form-urlencoded",
		strings.NewReader(`{"domain":"ffmuc_welt","public_key":"`+nodeKey+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != `{"Message":"OK"}`+"\n" {
		t.Errorf("v1 over HTTPS: %d %q", resp.StatusCode, b)
	}
	if _, err := d.Store.Key("ffmuc_welt", nodeKey); err != nil {
		t.Errorf("key registered over HTTPS not stored: %v", err)
	}
}

func selfSigned(t *testing.T, host, certFile, keyFile string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		IPAddresses:  []net.IP{net.ParseIP(host)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	replaceFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
	replaceFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	cert, _ := x509.ParseCertificate(der)
	return cert
}
