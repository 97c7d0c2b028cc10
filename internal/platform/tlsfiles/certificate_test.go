package tlsfiles

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

func current(t *testing.T, c *Certificate) *x509.Certificate {
	t.Helper()
	cert, err := c.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || cert == nil {
		t.Fatalf("GetCertificate: %v, %v", cert, err)
	}
	return cert.Leaf
}

// TestCertificateReload: a changed pair is taken on its own (file change) and on request (Reload); a pair that
// does not load is an ERROR naming the files and keeps the certificate in force.
func TestCertificateReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	ca := testenv.NewCA(t, "tlsfiles test CA")
	first := ca.Server(t, "127.0.0.1")
	testenv.WriteKeyPair(t, first, certFile, keyFile)
	log, logs := testenv.CaptureLogger(t)
	c, err := LoadCertificate(certFile, keyFile, 0, log)
	if err != nil {
		t.Fatal(err)
	}
	if !current(t, c).Equal(first.Leaf) {
		t.Fatal("the certificate read is not the one written")
	}

	// On request, without the watcher running: the next handshake gets the new one.
	second := ca.Server(t, "127.0.0.1")
	testenv.WriteKeyPair(t, second, certFile, keyFile)
	c.Reload()
	if !current(t, c).Equal(second.Leaf) {
		t.Error("Reload did not take the new certificate")
	}
	testenv.ReplaceFile(t, certFile, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
	c.Reload()
	if !current(t, c).Equal(second.Leaf) {
		t.Error("a broken file replaced the certificate in force")
	}
	line := ""
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "certificate not reloaded") {
			line = l
		}
	}
	if !strings.Contains(line, "level=ERROR") || !strings.Contains(line, "cert_file="+certFile) {
		t.Errorf("a broken file is not an ERROR naming it: %q", line)
	}

	// On change, with the watcher running.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	third := ca.Server(t, "127.0.0.1")
	testenv.WriteKeyPair(t, third, certFile, keyFile)
	testenv.Eventually(t, 5*time.Second, func() bool { return current(t, c).Equal(third.Leaf) }, "the changed files were not read")
}

func TestLoadCertificateRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadCertificate(filepath.Join(dir, "missing.pem"), filepath.Join(dir, "missing.key"), 0, testenv.Logger(t)); err == nil {
		t.Error("missing files accepted")
	}
	ca := testenv.NewCA(t, "tlsfiles test CA")
	testenv.WriteKeyPair(t, ca.Server(t, "127.0.0.1"), filepath.Join(dir, "a.pem"), filepath.Join(dir, "a.key"))
	testenv.WriteKeyPair(t, ca.Server(t, "127.0.0.1"), filepath.Join(dir, "b.pem"), filepath.Join(dir, "b.key"))
	_, err := LoadCertificate(filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.key"), 0, testenv.Logger(t))
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "a.pem")) {
		t.Errorf("certificate with another key: %v, want an error naming the file", err)
	}
}
