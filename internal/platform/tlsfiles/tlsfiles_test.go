package tlsfiles

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCA(t, "tlsfiles test CA")
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "gw.pem"), filepath.Join(dir, "gw.key")
	ca.WriteCert(t, caFile)
	testenv.WriteKeyPair(t, ca.Client(t, "gw1"), certFile, keyFile)

	c, err := Client{Keys: "mqtt.", CAFile: caFile, ServerName: "mqtt.test", CertFile: certFile, KeyFile: keyFile}.Config()
	if err != nil {
		t.Fatal(err)
	}
	if c.ServerName != "mqtt.test" || c.RootCAs == nil || len(c.Certificates) != 1 || c.Certificates[0].Leaf.Subject.CommonName != "gw1" {
		t.Errorf("config: server name %q, roots %v, certificates %d", c.ServerName, c.RootCAs != nil, len(c.Certificates))
	}
	if c, err := (Client{}).Config(); err != nil || c.RootCAs != nil || len(c.Certificates) != 0 {
		t.Errorf("nothing configured: %v, system roots %v, %d certificates", err, c.RootCAs == nil, len(c.Certificates))
	}

	missing := filepath.Join(dir, "missing.pem")
	for _, tt := range []struct {
		c    Client
		want string
	}{
		{Client{Keys: "mqtt.", CAFile: missing}, "mqtt.ca_file: "},
		{Client{Keys: "mqtt.", CAFile: keyFile}, "mqtt.ca_file: " + keyFile + ": no PEM certificate found"},
		{Client{Keys: "broker.mqtt_server.", CertFile: missing, KeyFile: missing}, "broker.mqtt_server.cert_file: "},
		{Client{Keys: "mqtt.", CertFile: certFile, KeyFile: caFile}, "mqtt.cert_file: "},
	} {
		if _, err := tt.c.Config(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want an error with %q", tt.c, err, tt.want)
		}
	}
}
