package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// TestSingleHostOneFile: broker and worker from one wgkex.yaml, as a small network runs them on one host, the
// shared password in WGKEX_MQTT_PASSWORD and no mqtt.username (the worker then logs in with its name). Both
// binaries start, the gateway comes online and a node's key is a peer on it. The broker used to refuse this file
// (the shared login needed a username too).
func TestSingleHostOneFile(t *testing.T) {
	s := newNetwork(t, "wg", "bridge", "nsenter", "unshare")
	g := s.newGateway("gw1", "192.0.2.11", "fe80::1")
	g.cfg = filepath.Join(s.dir, "wgkex.yaml")
	if err := os.WriteFile(g.cfg, []byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers:
  gw1: {weight: 1}
externalName: 192.0.2.11
mqtt: {broker_url: %[1]s, broker_port: 1883}
broker_listen: {host: %[1]s, port: 5000}
broker:
  state_file: %[2]s
  mqtt_listeners: [{address: "%[1]s:1883"}]
worker: {name: gw1, metrics_interval: 1s}
`, brokerIP, filepath.Join(s.dir, "broker.db"))), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WGKEX_MQTT_PASSWORD", "one-file-secret") // both processes inherit it
	broker := exec.Command("nsenter", "--net="+s.brokerNS.Path(), binary(t, "wgkex-broker"), "--config", g.cfg)
	broker.Stdout, broker.Stderr = t.Output(), t.Output()
	if err := broker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Process.Kill(); broker.Wait() })
	s.startWorker(g)
	key := testenv.NewKey(t).PublicKey().String()
	var body string
	testenv.Eventually(t, 20*time.Second, func() bool {
		code, b, err := s.post("v2", key)
		body = b
		var e endpoint
		return err == nil && code == 200 && json.Unmarshal([]byte(b), &e) == nil && e.Endpoint.Address == "192.0.2.11"
	}, "v2 never answered with gw1: %s", testenv.Lazy(func() string { return body }))
	s.waitPeers(g, []string{key}, 20*time.Second)
}
