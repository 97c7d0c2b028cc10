package brokerd

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// blockedKey is on dashConfig's blocklist.
const blockedKey = "PcKkakZcTEx3LKh+G06Opb8/esg08aWK33A5/Ff1YXE="

// dashConfig has two gateways of different weights in two locations, a blocklist beside the state file, and
// samples peers quickly.
func dashConfig(t testing.TB, state string) *config.Config {
	t.Helper()
	blocklist := filepath.Join(filepath.Dir(state), "blocklist.yaml")
	if err := os.WriteFile(blocklist, []byte("- "+blockedKey+": stolen\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
domains: [ffmuc_welt, ffwert_city]
domain_prefixes: [ffmuc_, ffwert_]
workers:
  gw04.in.ffmuc.net: {weight: 30, location: MUC}
  gw05.in.ffmuc.net: {weight: 10, location: Vienna}
broker_listen: {host: 127.0.0.1, port: 0}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
  reconnect_grace: 1h
  dashboard: {sample_interval: 200ms}
  blocklist_file: %s
`, state, blocklist)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// fakeGateway is a worker speaking real MQTT to the daemon: it publishes its endpoint, its status and its peers the
// way wgkex-worker does (retained, QoS 1).
type fakeGateway struct {
	name   string
	client *testenv.Client
}

func connectGateway(t *testing.T, d *Daemon, name string) *fakeGateway {
	t.Helper()
	c := testenv.Connect(t, d.MQTTAddr(), name, testenv.ClientOptions{})
	return &fakeGateway{name: name, client: c}
}

func (g *fakeGateway) up(t *testing.T, domain string, port, peers int) {
	t.Helper()
	data := wire.WorkerData{ExternalAddress: strings.Replace(g.name, ".in.", ".ext.", 1), Port: port, PublicKey: gwKey, LinkAddress: wire.LinkLocal(gwKey).String()}
	g.client.Publish(t, wire.DataTopic(g.name, domain), string(data.Marshal()), 1, true)
	g.client.Publish(t, wire.StatusTopic(g.name), "1", 1, true)
	g.peers(t, domain, peers)
}

func (g *fakeGateway) peers(t *testing.T, domain string, n int) {
	t.Helper()
	g.client.Publish(t, wire.MetricTopic(domain, g.name), fmt.Sprint(n), 1, true)
}

func (g *fakeGateway) down(t *testing.T) {
	t.Helper()
	g.client.Publish(t, wire.StatusTopic(g.name), "0", 1, true)
}

// twoGateways connects gw04 (25 peers in ffmuc_welt) and gw05 (5 in ffmuc_welt, 2 in ffwert_city) and waits until
// the daemon has taken their reports.
func twoGateways(t *testing.T, d *Daemon) (gw4, gw5 *fakeGateway) {
	t.Helper()
	gw4, gw5 = connectGateway(t, d, "gw04.in.ffmuc.net"), connectGateway(t, d, "gw05.in.ffmuc.net")
	gw4.up(t, "ffmuc_welt", 51820, 25)
	gw5.up(t, "ffmuc_welt", 51821, 5)
	gw5.up(t, "ffwert_city", 51822, 2)
	testenv.Eventually(t, 5*time.Second, func() bool {
		ws := d.Broker.Workers()
		return len(ws) == 2 && ws[0].Online && ws[1].Online && ws[0].Peers["ffmuc_welt"] == 25 && ws[1].Peers["ffwert_city"] == 2
	}, "gateways not reported")
	return gw4, gw5
}

// scrape reads GET /metrics with the Prometheus text parser.
func scrape(t *testing.T, d *Daemon) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + d.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value is the value of the sample of family name whose labels are exactly labels ("k=v" pairs); ok is false
// when there is none.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	sort.Strings(labels)
	for _, m := range f.Metric {
		var got []string
		for _, l := range m.Label {
			got = append(got, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(labels, ",") {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// TestMetrics: after two gateways report over MQTT, known registrations, a refused one of each kind and a
// replay, GET /metrics shows exactly those counts; node-chosen domains do not become label values.
func TestMetrics(t *testing.T) {
	d := startDaemon(t, dashConfig(t, filepath.Join(t.TempDir(), "state.db")))
	gw4, gw5 := twoGateways(t, d)

	keys := make([]string, 3)
	for i := range keys {
		keys[i] = testenv.NewKey(t).PublicKey().String()
	}
	for _, k := range keys[:2] {
		if code, resp := post(t, d, "v2", `{"domain":"ffmuc_welt","public_key":"`+k+`"}`); code != 200 {
			t.Fatalf("v2: %d %s", code, resp)
		}
	}
	post(t, d, "v1", `{"domain":"ffmuc_welt","public_key":"`+keys[2]+`"}`)
	post(t, d, "v1", `{"domain":"ffmuc_welt","public_key":"bm90IGEga2V5"}`)
	for i := range 5 { // an attacker inventing domains
		post(t, d, "v2", fmt.Sprintf(`{"domain":"evil_%d","public_key":"%s"}`, i, keys[0]))
	}
	post(t, d, "v2", `{"domain":`)
	post(t, d, "v1", `{"domain":"ffmuc_welt","public_key":"`+blockedKey+`"}`)
	gw4.client.Publish(t, wire.ReplayRequestTopic(gw4.name), `{"domains":["ffmuc_welt","nodomain"]}`, 1, false)
	testenv.Eventually(t, 5*time.Second, func() bool {
		v, _ := value(scrape(t, d), "wgkex_broker_replayed_keys_total")
		return v == 3
	}, "replay not counted")

	fams := scrape(t, d)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"wgkex_broker_key_exchanges_total", []string{"api=v2", "domain=ffmuc_welt", "result=ok"}, 2},
		{"wgkex_broker_key_exchanges_total", []string{"api=v1", "domain=ffmuc_welt", "result=ok"}, 1},
		{"wgkex_broker_key_exchanges_total", []string{"api=v1", "domain=ffmuc_welt", "result=invalid_key"}, 1},
		{"wgkex_broker_key_exchanges_total", []string{"api=v2", "domain=", "result=unknown_domain"}, 5},
		{"wgkex_broker_key_exchanges_total", []string{"api=v2", "domain=", "result=malformed"}, 1},
		{"wgkex_broker_key_exchanges_total", []string{"api=v1", "domain=ffmuc_welt", "result=key_refused"}, 1},
		// gw04 carries 25 of 32 peers, one above its 3/4; gw05 carries 5+2, one below its 1/4: gw05 is chosen,
		// and counting each choice at once keeps it below (8 of 33 against 8.25).
		{"wgkex_broker_gateway_choices_total", []string{"worker=gw04.in.ffmuc.net"}, 0},
		{"wgkex_broker_gateway_choices_total", []string{"worker=gw05.in.ffmuc.net"}, 2},
		{"wgkex_broker_workers_online", nil, 2},
		{"wgkex_broker_worker_up", []string{"worker=gw04.in.ffmuc.net"}, 1},
		{"wgkex_broker_connected_peers", []string{"worker=gw04.in.ffmuc.net", "domain=ffmuc_welt"}, 25},
		{"wgkex_broker_connected_peers", []string{"worker=gw05.in.ffmuc.net", "domain=ffmuc_welt"}, 7},
		{"wgkex_broker_connected_peers", []string{"worker=gw05.in.ffmuc.net", "domain=ffwert_city"}, 2},
		{"wgkex_broker_replay_requests_total", nil, 1},
		{"wgkex_broker_replayed_keys_total", nil, 3},
		{"wgkex_mqtt_clients", nil, 2},
		{"wgkex_cluster_brokers", nil, 1}, // alone, with the embedded server
	} {
		got, ok := value(fams, c.name, c.labels...)
		if c.want == 0 && !ok {
			continue
		}
		if !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	for _, l := range fams["wgkex_broker_key_exchanges_total"].Metric {
		for _, lp := range l.Label {
			if strings.HasPrefix(lp.GetValue(), "evil") {
				t.Errorf("a node-chosen domain became a label value: %v", l)
			}
		}
	}
	if f := fams["wgkex_wal_fsync_seconds"]; f == nil || f.Metric[0].Histogram.GetSampleCount() < 1 {
		t.Errorf("write-ahead log fsyncs not observed after 3 registrations: %v", f)
	}
	if v, _ := value(fams, "wgkex_state_file_bytes"); v < 4096 {
		t.Errorf("wgkex_state_file_bytes = %v", v)
	}
	for _, name := range []string{"go_goroutines", "go_gc_duration_seconds", "process_resident_memory_bytes", "go_build_info"} {
		if fams[name] == nil {
			t.Errorf("%s missing", name)
		}
	}

	// A client that is no configured worker publishes a worker's status: refused, and counted.
	intruder := testenv.Connect(t, d.MQTTAddr(), "intruder", testenv.ClientOptions{})
	intruder.Publish(t, wire.StatusTopic(gw5.name), "1", 0, false)
	testenv.Eventually(t, 5*time.Second, func() bool {
		v, _ := value(scrape(t, d), "wgkex_mqtt_refused_total", "reason=publish")
		return v == 1
	}, "refused publish not counted")

	gw5.down(t)
	testenv.Eventually(t, 5*time.Second, func() bool {
		f := scrape(t, d)
		on, _ := value(f, "wgkex_broker_workers_online")
		up, _ := value(f, "wgkex_broker_worker_up", "worker=gw05.in.ffmuc.net")
		return on == 1 && up == 0
	}, "offline gateway still counted online")
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestMetricsDocumented: every broker metric README.md lists is served by a running broker (with the embedded
// server; TestBrokersShown checks the one served only with an external one), and the example
// Grafana dashboard uses only metrics README.md lists (the broker's and the worker's).
func TestMetricsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(wgkex_[a-z_]+)[`{]").FindAllStringSubmatch(string(readme), -1) {
		documented[m[1]] = true
	}
	if len(documented) < 7 {
		t.Fatalf("README.md lists %d metrics", len(documented))
	}
	d := startDaemon(t, dashConfig(t, filepath.Join(t.TempDir(), "state.db")))
	gw := connectGateway(t, d, "gw04.in.ffmuc.net")
	gw.up(t, "ffmuc_welt", 51820, 1)
	testenv.Eventually(t, 5*time.Second, func() bool {
		ws := d.Broker.Workers()
		return len(ws) == 1 && ws[0].Online && ws[0].Peers["ffmuc_welt"] == 1
	}, "gateway not reported")
	if code, body := post(t, d, "v2", `{"domain":"ffmuc_welt","public_key":"`+nodeKey+`"}`); code != 200 {
		t.Fatalf("v2: %d %s", code, body)
	}
	gw.client.Publish(t, wire.ReplayRequestTopic(gw.name), `{"domains":["ffmuc_welt"]}`, 1, false)
	testenv.Eventually(t, 5*time.Second, func() bool {
		_, ok := value(scrape(t, d), "wgkex_broker_replayed_keys_total")
		return ok
	}, "replay not counted")
	fams := scrape(t, d)
	for name := range documented {
		if strings.HasPrefix(name, "wgkex_worker_") {
			continue // the worker's own (worker.TestMetrics)
		}
		if name == "wgkex_cluster_broker_up" {
			continue // only with an external MQTT server (TestBrokersShown)
		}
		if name == "wgkex_wal_damaged_segment_records" {
			continue // only after a damaged log segment (store.TestDamagedSegmentKeptAside, e2e.TestFaultDamagedLogHeader)
		}
		if fams[name] == nil {
			t.Errorf("README.md lists %s, /metrics does not serve it", name)
		}
	}
	for name := range fams {
		if strings.HasPrefix(name, "wgkex_") && !documented[name] {
			t.Errorf("/metrics serves %s, README.md does not list it", name)
		}
	}
	grafana, err := os.ReadFile("../../../contrib/grafana/wgkex.json")
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(grafana, &v); err != nil {
		t.Fatalf("grafana dashboard: %v", err)
	}
	for _, m := range regexp.MustCompile(`wgkex_[a-z_]+`).FindAllString(string(grafana), -1) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
		if !documented[base] {
			t.Errorf("grafana dashboard uses %s, README.md does not list it", m)
		}
	}
}

// TestMetricsLint: GET /metrics, after gateways reported and nodes registered so that every family has samples,
// passes Prometheus' own linter (base units, _total counters, help texts, no reserved or camel-case names).
func TestMetricsLint(t *testing.T) {
	d := startDaemon(t, dashConfig(t, filepath.Join(t.TempDir(), "state.db")))
	twoGateways(t, d)
	post(t, d, "v2", `{"domain":"ffmuc_welt","public_key":"`+testenv.NewKey(t).PublicKey().String()+`"}`)
	post(t, d, "v1", `{"domain":"ffmuc_nowhere","public_key":"`+nodeKey+`"}`)
	resp, err := http.Get("http://" + d.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	problems, err := promlint.New(resp.Body).Lint()
	if err != nil {
		t.Fatalf("lint /metrics: %v", err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
