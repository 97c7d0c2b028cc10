package mqttclient

import (
	"context"
	"crypto/tls"
	"net/url"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// TestDialServerTLSWithoutServerName: tlsfiles.Client.Config leaves ServerName empty unless configured (it only
// "overrides the name verified"); autopaho's own TLS dialer (tls.Dialer) then verifies the host of the URL.
// dialServer must do the same, or every tls:// server without an explicit server name stops connecting.
func TestDialServerTLSWithoutServerName(t *testing.T) {
	ca := testenv.NewCA(t, "test ca")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.Server(t, "127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	cfg, err := tlsfiles.Client{}.Config() // no ServerName, as with most configurations
	if err != nil {
		t.Fatal(err)
	}
	cfg.RootCAs = ca.Pool()
	u := &url.URL{Scheme: "tls", Host: ln.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// What autopaho did before AttemptConnection was set:
	d := tls.Dialer{Config: cfg}
	if c, err := d.DialContext(ctx, "tcp", u.Host); err != nil {
		t.Fatalf("tls.Dialer (autopaho's way): %v", err)
	} else {
		c.Close()
	}
	c, err := dialServer(ctx, u, cfg)
	if err != nil {
		t.Fatalf("dialServer without a server name: %v", err)
	}
	c.Close()
	ln.Close()
	<-done
}
