package brokerd

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/web"
)

// status fetches and decodes the daemon's /api/v1/status.
func status(t *testing.T, d *Daemon) web.StatusBody {
	t.Helper()
	var st web.StatusBody
	getJSON(t, d, "/api/v1/status", &st)
	return st
}

// TestStatusFromDaemon: the daemon fills in what the status page cannot learn from the broker (version, uptime,
// MQTT clients, state file size) and samples every online gateway's peers into the state file for the chart,
// leaving a gap while a gateway is offline.
func TestStatusFromDaemon(t *testing.T) {
	d := startDaemon(t, dashConfig(t, filepath.Join(t.TempDir(), "state.db")))
	_, gw5 := twoGateways(t, d)
	// latest returns each gateway's newest sample taken at or after since.
	latest := func(since time.Time) map[string]int {
		ss, err := d.Store.PeerSamples(since)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for w, l := range ss {
			out[w] = l[len(l)-1].Peers
		}
		return out
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		return cmp.Equal(latest(time.Time{}), map[string]int{"gw04.in.ffmuc.net": 25, "gw05.in.ffmuc.net": 7})
	}, "samples: %v, want gw04 25 and gw05 5+2", latest(time.Time{}))
	gw5.down(t)
	testenv.Eventually(t, 10*time.Second, func() bool { return !d.Broker.Workers()[1].Online }, "gw05 still online")
	offline := time.Now()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return cmp.Equal(latest(offline), map[string]int{"gw04.in.ffmuc.net": 25})
	}, "samples after gw05 went offline: %v, want gw04 only", latest(offline))

	st := status(t, d)
	b := st.Broker
	if b.Version == "" || b.MQTTClients != 2 || b.StateFileBytes < 4096 || b.UptimeSeconds <= 0 || b.Started.IsZero() {
		t.Errorf("broker facts: %+v", b)
	}
	if st.PeerHistory == nil || len(st.PeerHistory.Times) == 0 || len(st.PeerHistory.Workers) != 2 {
		t.Errorf("peer history: %+v", st.PeerHistory)
	}
}

// TestStatusOnExternalMQTT: with broker.mqtt_server the status page and /metrics work too; the MQTT client count
// is unknown there (-1).
func TestStatusOnExternalMQTT(t *testing.T) {
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Users: clusterUsers, ACL: testenv.DeployedACL(t)}).Addr
	gateway(t, addr, "gw1")
	d := startDaemon(t, clusterConfig(t, filepath.Join(t.TempDir(), "state.db"), addr, "broker-a"))
	testenv.Eventually(t, 10*time.Second, func() bool { ws := d.Broker.Workers(); return len(ws) == 1 && ws[0].Online }, "gw1 not seen")
	st := status(t, d)
	if st.Broker.MQTTClients != -1 || len(st.Gateways) != 2 || !st.Gateways[0].Online || st.Gateways[0].Name != "gw1" {
		t.Errorf("status: %+v %+v", st.Broker, st.Gateways)
	}
	if v, ok := value(scrape(t, d), "wgkex_broker_workers_online"); !ok || v != 1 {
		t.Errorf("workers online: %v %v", v, ok)
	}
}

// getJSON decodes the answer to GET path on the daemon's HTTP listener into v.
func getJSON(t *testing.T, d *Daemon, path string, v any) {
	t.Helper()
	resp, err := http.Get("http://" + d.HTTPAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}
