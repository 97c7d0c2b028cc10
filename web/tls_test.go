package web

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// writeCert makes a self-signed certificate for 127.0.0.1 with the given serial and writes it and its key as PEM
// (each file written beside and renamed, as certbot swaps files). It returns the certificate.
func writeCert(t *testing.T, certFile, keyFile string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "broker.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	replace(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	replace(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	cert, _ := x509.ParseCertificate(der)
	return cert
}

func replace(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// servedSerial connects to addr, trusting any certificate, and returns the serial of the one served.
func servedSerial(t *testing.T, addr string) int64 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

func TestHTTPSReloadsCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	first := writeCert(t, certFile, keyFile, 1)
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), nil))
	cert, err := LoadCertificate(certFile, keyFile, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cert.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	s, _, _ := newServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := s.HTTPServer(ln.Addr().String())
	go hs.Serve(TLSListener(ln, cert))
	t.Cleanup(func() { hs.Close() })
	addr := ln.Addr().String()

	// A client that verifies: the API answers over HTTPS.
	pool := x509.NewCertPool()
	pool.AddCert(first)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Get("https://" + addr + "/api/v1/locations")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != `{"locations":["MUC","Vienna"]}`+"\n" {
		t.Errorf("GET over HTTPS: %d %q", resp.StatusCode, b)
	}

	// Renewal: the new certificate is served without a restart.
	writeCert(t, certFile, keyFile, 2)
	testenv.Eventually(t, 5*time.Second, func() bool { return servedSerial(t, addr) == 2 }, "renewed certificate not served")

	// A broken renewal keeps the certificate in force; a later good one is taken.
	replace(t, certFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"))
	writeCert(t, filepath.Join(dir, "other.pem"), keyFile, 3) // the key changes, the certificate file stays broken
	testenv.Eventually(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), "certificate not reloaded") }, "broken renewal not noticed")
	if got := servedSerial(t, addr); got != 2 {
		t.Errorf("after a broken renewal serial %d is served, want 2", got)
	}
	writeCert(t, certFile, keyFile, 4)
	testenv.Eventually(t, 5*time.Second, func() bool { return servedSerial(t, addr) == 4 }, "certificate after the broken one not served")

	// net/http's own refusals are JSON over TLS too.
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	go conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n"))
	got, _ := io.ReadAll(conn)
	if want := "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 36\r\nConnection: close\r\n\r\n" + `{"error":{"message":"Bad Request"}}` + "\n"; string(got) != want {
		t.Errorf("malformed request over TLS: %q", got)
	}
}

// syncBuffer is a bytes.Buffer for a logger on another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestLoadCertificateRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadCertificate(filepath.Join(dir, "missing.pem"), filepath.Join(dir, "missing.key"), 0, testenv.Logger(t)); err == nil {
		t.Error("missing files accepted")
	}
	writeCert(t, filepath.Join(dir, "a.pem"), filepath.Join(dir, "a.key"), 1)
	writeCert(t, filepath.Join(dir, "b.pem"), filepath.Join(dir, "b.key"), 2)
	if _, err := LoadCertificate(filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.key"), 0, testenv.Logger(t)); err == nil {
		t.Error("certificate with another key accepted")
	}
}
