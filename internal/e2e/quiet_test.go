package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/app/brokerd"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// TestHealthyBrokerQuiet: a healthy broker (credentials for its four gateways, the reference's keepalive of 5 s)
// through a day's events in fast motion: the gateways connect, nodes register, a gateway restarts, all stop. Its
// log at level info has no WARN or ERROR line and no packet in it: every warning is something to act on. The old
// code warned of each worker's farewell ("disconnect with will message", with the packet) and of a keepalive
// below mochi's liking.
func TestHealthyBrokerQuiet(t *testing.T) {
	names := []string{"gw1", "gw2", "gw3", "gw4"}
	var workers strings.Builder
	for _, n := range names {
		fmt.Fprintf(&workers, "  %s: {password_hash: %q}\n", n, testenv.BcryptHash(t, n+"-secret"))
	}
	cfg := brokerConfig(t, filepath.Join(t.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", "workers:\n"+workers.String())
	logs := &testenv.Logs{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelInfo}))
	d, err := brokerd.Start(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Shutdown(context.Background())
	link := dataplane.LinkFor("welt")
	stops := map[string]func(){}
	start := func(n string) {
		ro := mqttOpts(d.MQTTAddr())
		ro.MQTT.Keepalive, ro.MQTT.Username, ro.MQTT.Password = 5, n, n+"-secret"
		_, stops[n] = startAgent(t, dataplane.NewFake(link), n, map[string]string{"ffmuc_welt": "welt"}, ro)
	}
	for _, n := range names {
		start(n)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, n := range names {
			if !online(d, n) {
				return false
			}
		}
		return true
	}, "gateways not online")
	for range 20 {
		if code, body := post(t, d.HTTPAddr(), "v2", "ffmuc_welt", testenv.NewKey(t).PublicKey().String()); code != 200 {
			t.Fatalf("v2: %d %s", code, body)
		}
	}
	stops["gw2"]()
	testenv.Eventually(t, 10*time.Second, func() bool { return !online(d, "gw2") }, "gw2 still online after its stop")
	start("gw2")
	testenv.Eventually(t, 10*time.Second, func() bool { return online(d, "gw2") }, "gw2 not back")
	for _, n := range names {
		stops[n]()
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.Contains(line, "pk.type=") {
			t.Errorf("a healthy broker logged: %s", line)
		}
	}
}
