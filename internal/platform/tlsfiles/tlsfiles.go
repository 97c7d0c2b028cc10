// Package tlsfiles builds TLS configuration from PEM files: the one MQTT client (internal/mqttclient, the
// worker's and the broker's of an external server) its client configuration, the embedded server its client CA,
// and the HTTPS and MQTT listeners their certificates, reloaded when they change.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// Client names the files of a TLS client.
type Client struct {
	// Keys is the prefix of the configuration keys that errors name ("mqtt.", "broker.mqtt_server.").
	Keys string
	// CAFile is a PEM bundle to verify the server with; empty means the system roots.
	CAFile string
	// ServerName overrides the name verified in the server certificate.
	ServerName string
	// CertFile and KeyFile are a client certificate; empty means none.
	CertFile, KeyFile string
}

// Config builds the client's TLS configuration: TLS 1.2 or later, the CA bundle (else the system roots), the
// server name to verify, and the client certificate if one is given.
func (c Client) Config() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if c.CAFile != "" {
		pool, err := Pool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%sca_file: %w", c.Keys, err)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%scert_file: %w", c.Keys, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Pool reads a PEM bundle of CA certificates; a file without any is an error.
func Pool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", file)
	}
	return pool, nil
}
