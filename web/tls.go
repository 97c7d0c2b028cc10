package web

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/filewatch"
)

// Certificate is a TLS certificate read from PEM files and read again whenever they change (a certbot renewal).
// A pair that does not load keeps the previous certificate in force. It is safe for concurrent use.
type Certificate struct {
	certFile, keyFile string
	log               *slog.Logger
	watch             *filewatch.Watcher
	cur               atomic.Pointer[tls.Certificate]
}

// LoadCertificate reads the certificate chain and key. interval is the period of the stat fallback to file change
// notification (0: 10 seconds).
func LoadCertificate(certFile, keyFile string, interval time.Duration, log *slog.Logger) (*Certificate, error) {
	c := &Certificate{certFile: certFile, keyFile: keyFile, log: log}
	c.watch = filewatch.New(filewatch.Options{Paths: []string{certFile, keyFile}, Interval: interval, Log: log})
	if err := c.load(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Certificate) load() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("load certificate %s and key %s: %w", c.certFile, c.keyFile, err)
	}
	c.cur.Store(&cert)
	c.log.Info("certificate loaded", "file", c.certFile, "subject", cert.Leaf.Subject.String(), "not_after", cert.Leaf.NotAfter)
	return nil
}

// GetCertificate returns the certificate in force, for tls.Config.GetCertificate.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load(), nil
}

// Run reloads the certificate when its files change, until ctx ends. Call it once.
func (c *Certificate) Run(ctx context.Context) {
	c.watch.Run(ctx, func() {
		if err := c.load(); err != nil {
			c.log.Warn("certificate not reloaded, the previous one stays in force", "err", err)
		}
	})
}

// Close releases the file watcher of a Certificate that is not Run.
func (c *Certificate) Close() { c.watch.Close() }

// TLSListener serves HTTPS on ln with cert, HTTP/1.1 only (Gluon's clients speak nothing else), with net/http's
// own error answers in JSON as for Listener.
func TLSListener(ln net.Listener, cert *Certificate) net.Listener {
	return Listener(tls.NewListener(ln, &tls.Config{
		GetCertificate: cert.GetCertificate,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
	}))
}
