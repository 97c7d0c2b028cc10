package tlsfiles

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/platform/filewatch"
)

// Certificate is a server's TLS certificate read from PEM files, and read again whenever they change (a certbot
// renewal: Run) or on request (SIGHUP: Reload). A pair that does not load is logged as an error naming the files
// and keeps the previous certificate in force. Only new handshakes get a new certificate: connections made before
// are not touched. The HTTPS listener and the embedded MQTT server's TLS listeners use it alike. It is safe for
// concurrent use.
type Certificate struct {
	certFile, keyFile string
	log               *slog.Logger
	watch             *filewatch.Watcher
	cur               atomic.Pointer[tls.Certificate]
	mu                sync.Mutex // serialises loads, so that an older read never replaces a newer one
}

// LoadCertificate reads the certificate chain and key. interval is the period of the stat fallback to file change
// notification (0: 10 seconds). Call Run to reload on change, or Close.
func LoadCertificate(certFile, keyFile string, interval time.Duration, log *slog.Logger) (*Certificate, error) {
	c := &Certificate{certFile: certFile, keyFile: keyFile, log: log}
	// The watch begins before the read, so that a change while the files are read is seen.
	c.watch = filewatch.New(filewatch.Options{Paths: []string{certFile, keyFile}, Interval: interval, Log: log})
	if err := c.load(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Certificate) load() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("load certificate %s and key %s: %w", c.certFile, c.keyFile, err)
	}
	c.cur.Store(&cert)
	c.log.Info("certificate loaded", "file", c.certFile, "subject", cert.Leaf.Subject.String(),
		"not_after", cert.Leaf.NotAfter)
	return nil
}

// GetCertificate returns the certificate in force, for tls.Config.GetCertificate.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load(), nil
}

// Reload reads the files again now. A pair that does not load is logged, and the certificate in force stays.
func (c *Certificate) Reload() {
	if err := c.load(); err != nil {
		c.log.Error("certificate not reloaded, the previous one stays in force", "cert_file", c.certFile,
			"key_file", c.keyFile, "err", err)
	}
}

// Run reloads the certificate whenever its files change, until ctx ends. Call it once.
func (c *Certificate) Run(ctx context.Context) { c.watch.Run(ctx, c.Reload) }

// Close releases the file watcher of a Certificate that is not Run.
func (c *Certificate) Close() { c.watch.Close() }
