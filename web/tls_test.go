package web

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// issue issues a server certificate for 127.0.0.1 and writes it and its key as PEM (each file replaced as a whole,
// as certbot swaps files). It returns the certificate.
func issue(t *testing.T, ca *testenv.CA, certFile, keyFile string) *x509.Certificate {
	t.Helper()
	c := ca.Server(t, "127.0.0.1")
	testenv.WriteKeyPair(t, c, certFile, keyFile)
	return c.Leaf
}

// served connects to addr, trusting any certificate, and returns the one served.
func served(t *testing.T, addr string) *x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

func TestHTTPSReloadsCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	ca := testenv.NewCA(t, "web test CA")
	issue(t, ca, certFile, keyFile)
	log, logs := testenv.CaptureLogger(t)
	cert, err := tlsfiles.LoadCertificate(certFile, keyFile, 0, log)
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
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
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
	renewed := issue(t, ca, certFile, keyFile)
	testenv.Eventually(t, 5*time.Second, func() bool { return served(t, addr).Equal(renewed) }, "renewed certificate not served")

	// A broken renewal keeps the certificate in force; a later good one is taken.
	testenv.ReplaceFile(t, certFile, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
	issue(t, ca, filepath.Join(dir, "other.pem"), keyFile) // the key changes, the certificate file stays broken
	testenv.Eventually(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), "certificate not reloaded") }, "broken renewal not noticed")
	if got := served(t, addr); !got.Equal(renewed) {
		t.Errorf("after a broken renewal serial %v is served, want the renewed %v", got.SerialNumber, renewed.SerialNumber)
	}
	good := issue(t, ca, certFile, keyFile)
	testenv.Eventually(t, 5*time.Second, func() bool { return served(t, addr).Equal(good) }, "certificate after the broken one not served")

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
