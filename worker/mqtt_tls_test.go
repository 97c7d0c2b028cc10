package worker

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestTLSConfigClientCertificate(t *testing.T) {
	c, err := TLSConfig(MQTT{})
	if err != nil || len(c.Certificates) != 0 {
		t.Fatalf("no certificate configured: %v, %d certificates", err, len(c.Certificates))
	}
	missing := filepath.Join(t.TempDir(), "gw.pem")
	if _, err := TLSConfig(MQTT{CertFile: missing, KeyFile: missing}); err == nil || !strings.Contains(err.Error(), "mqtt.cert_file") {
		t.Errorf("missing client certificate: %v", err)
	}
}
