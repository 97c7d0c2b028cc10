package worker

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// TestClientOptions: the worker logs in as its name with a password of its own, names its TLS files by the
// mqtt.* keys, and a missing client certificate stops it before it connects.
func TestClientOptions(t *testing.T) {
	a, _ := newAgent(t, dataplane.NewFake(welt), nil)
	missing := filepath.Join(t.TempDir(), "gw.pem")
	m := MQTT{BrokerURL: "mqtt.example.org", BrokerPort: 8883, TLS: true, Password: "pw", Keepalive: 5, CertFile: missing, KeyFile: missing}
	o := a.clientOptions(m)
	want := mqttclient.Server{Addr: "mqtt.example.org", Port: 8883, TLS: true, Username: "gw04", Password: "pw",
		ClientID: "gw04", Keepalive: 5, MaxPacket: mqttclient.MaxPacket, Files: tlsfiles.Client{Keys: "mqtt.", CertFile: missing, KeyFile: missing}}
	if diff := cmp.Diff(want, o.Server); diff != "" {
		t.Errorf("server (-want +got):\n%s", diff)
	}
	if _, err := mqttclient.New(testenv.Logger(t), o); err == nil || !strings.Contains(err.Error(), "mqtt.cert_file") {
		t.Errorf("missing client certificate: %v", err)
	}
	m.Username = "shared"
	if got := a.clientOptions(m).Server.Username; got != "shared" {
		t.Errorf("username %q, want the configured one", got)
	}
}
