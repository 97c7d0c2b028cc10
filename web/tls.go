package web

import (
	"crypto/tls"
	"net"

	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
)

// TLSListener serves HTTPS on ln with cert (reloaded when its files change or on request: see tlsfiles), HTTP/1.1
// only (Gluon's clients speak nothing else), with net/http's own error answers in JSON as for Listener.
func TLSListener(ln net.Listener, cert *tlsfiles.Certificate) net.Listener {
	return Listener(tls.NewListener(ln, &tls.Config{
		GetCertificate: cert.GetCertificate,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
	}))
}
