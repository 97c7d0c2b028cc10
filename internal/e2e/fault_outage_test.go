package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/app/brokerd"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// The MQTT server restarted under the broker (issue 15, fault 5): a broker on Debian's Mosquitto
// (broker.mqtt_server) with persistence, as the Debian package runs it, and two workers on the fake dataplane.
// Mosquitto stopped with SIGTERM sends every worker's last will (retained status 0) before it closes the broker's
// connection, and delivers the persisted 0s again when it is back.

// outageRig is the broker, its Mosquitto and the workers gw1 and gw2.
type outageRig struct {
	t       *testing.T
	mosq    *testenv.MosquittoServer
	persist string
	d       *brokerd.Daemon
	logs    *testenv.Logs
	fakes   map[string]*dataplane.Fake
	stops   map[string]func()
}

func newOutageRig(t *testing.T, grace string) *outageRig {
	t.Helper()
	testenv.Tool(t, "mosquitto")
	dir := t.TempDir()
	o := &outageRig{t: t, persist: filepath.Join(dir, "mosquitto"), fakes: map[string]*dataplane.Fake{}, stops: map[string]func(){}}
	o.startMosquitto(testenv.FreeAddr(t))
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers: {gw1: {}, gw2: {}}
broker_listen: {host: 127.0.0.1, port: 0}
broker:
  state_file: %s
  reconnect_grace: %s
  mqtt_server: {url: "mqtt://%s", client_id: broker-o, keepalive: 2}
`, filepath.Join(dir, "state.db"), grace, o.mosq.Addr)), nil)
	if err != nil {
		t.Fatal(err)
	}
	log, logs := testenv.CaptureLogger(t)
	o.logs = logs
	if o.d, err = brokerd.Start(cfg, log.With("side", "broker")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.d.Shutdown(context.Background()) })
	for _, name := range []string{"gw1", "gw2"} {
		o.fakes[name] = dataplane.NewFake(dataplane.LinkFor("welt"))
		_, o.stops[name] = startAgent(t, o.fakes[name], name, map[string]string{"ffmuc_welt": "welt"}, mqttOpts(o.mosq.Addr))
	}
	testenv.Eventually(t, 20*time.Second, func() bool { return online(o.d, "gw1") && online(o.d, "gw2") }, "gateways not online")
	return o
}

func (o *outageRig) startMosquitto(addr string) {
	o.mosq = testenv.Mosquitto(o.t, testenv.MosquittoOptions{Addr: addr, Persist: o.persist})
}

// v2 registers a new key with API v2 and returns it and the gateway the answer names ("" unless 200).
func (o *outageRig) v2() (key, gateway string, code int, body string) {
	o.t.Helper()
	key = testenv.NewKey(o.t).PublicKey().String()
	code, body = post(o.t, o.d.HTTPAddr(), "v2", "ffmuc_welt", key)
	if code == 200 {
		var e endpoint
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			o.t.Fatalf("v2 answer %s: %v", body, err)
		}
		gateway, _ = strings.CutSuffix(e.Endpoint.Address, ".ext")
	}
	return key, gateway, code, body
}

// mustV2 is v2 that fails the test unless the answer is 200 and names one of the gateways.
func (o *outageRig) mustV2(when string, gateways ...string) string {
	o.t.Helper()
	key, gw, code, body := o.v2()
	if code != 200 || !slices.Contains(gateways, gw) {
		o.t.Fatalf("v2 %s: %d %s, want 200 with the endpoint of one of %v", when, code, strings.TrimSpace(body), gateways)
	}
	return key
}

// waitKeys waits until the worker has applied every key.
func (o *outageRig) waitKeys(name string, keys []string) {
	o.t.Helper()
	var missing []string
	testenv.Eventually(o.t, 30*time.Second, func() bool {
		missing = missing[:0]
		s := o.fakes[name].String()
		for _, k := range keys {
			if !strings.Contains(s, "wg-welt "+k+" peer") {
				missing = append(missing, k)
			}
		}
		return len(missing) == 0
	}, "%s lacks %v", name, testenv.Lazy(func() string {
		return fmt.Sprintf("%d of %d answered keys, e.g. %v", len(missing), len(keys), first(missing))
	}))
}

// mqttState reads the broker's MQTT connection from GET /api/v1/status, and wgkex_broker_mqtt_connected and
// wgkex_broker_workers_awaiting from GET /metrics: "connected=true awaiting=[] metrics=1,0".
func (o *outageRig) mqttState() string {
	o.t.Helper()
	get := func(path string) []byte {
		resp, err := http.Get("http://" + o.d.HTTPAddr() + path)
		if err != nil {
			o.t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	var st struct{ MQTT broker.MQTTState }
	if err := json.Unmarshal(get("/api/v1/status?history=0"), &st); err != nil {
		o.t.Fatal(err)
	}
	metric := func(name string) string {
		for _, l := range strings.Split(string(get("/metrics")), "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok {
				return v
			}
		}
		return "absent"
	}
	return fmt.Sprintf("connected=%v awaiting=%v metrics=%s,%s", st.MQTT.Connected, st.MQTT.Awaiting,
		metric("wgkex_broker_mqtt_connected"), metric("wgkex_broker_workers_awaiting"))
}

// outage stops Mosquitto with SIGTERM (kill: SIGKILL, no wills) and waits until the broker has noticed.
func (o *outageRig) outage(kill bool) {
	o.t.Helper()
	if kill {
		o.mosq.Stop()
	} else {
		o.mosq.Terminate()
	}
	testenv.Eventually(o.t, 10*time.Second, func() bool { return !o.d.Client.Connected() }, "broker did not notice that Mosquitto stopped")
}

// TestMosquittoRestart: Mosquitto restarts cleanly (SIGTERM: it sends every worker's will first) or not (SIGKILL)
// under a broker and its gateways. Nodes registering during the outage are answered 200 with a gateway's endpoint,
// every answered key reaches both gateways once they are back (by the queued publish or the replay), no gateway
// is ever marked offline, not even by the persisted wills Mosquitto delivers again after its restart, and the
// broker says that its connection is down while it is.
func TestMosquittoRestart(t *testing.T) {
	for _, kill := range []bool{false, true} {
		t.Run(map[bool]string{false: "SIGTERM", true: "SIGKILL"}[kill], func(t *testing.T) { testMosquittoRestart(t, kill) })
	}
}

func testMosquittoRestart(t *testing.T, kill bool) {
	o := newOutageRig(t, "1m")
	var keys []string
	for range 5 {
		keys = append(keys, o.mustV2("before the outage", "gw1", "gw2"))
	}
	o.waitKeys("gw1", keys)

	o.outage(kill)
	for i := range 20 {
		keys = append(keys, o.mustV2(fmt.Sprintf("%d during the outage", i), "gw1", "gw2"))
	}
	if got, want := o.mqttState(), "connected=false awaiting=[gw1 gw2] metrics=0,2"; got != want {
		t.Errorf("during the outage the broker says %s, want %s", got, want)
	}

	o.startMosquitto(o.mosq.Addr)
	// Nodes keep registering while the broker and the workers reconnect.
	testenv.Eventually(t, 30*time.Second, func() bool {
		keys = append(keys, o.mustV2("after the restart", "gw1", "gw2"))
		return o.mqttState() == "connected=true awaiting=[] metrics=1,0" && online(o.d, "gw1") && online(o.d, "gw2")
	}, "gateways not back: %s", testenv.Lazy(o.mqttState))
	o.waitKeys("gw1", keys)
	o.waitKeys("gw2", keys)
	if l := o.logs.String(); strings.Contains(l, "online=false") {
		t.Errorf("a gateway was marked offline during the restart:\n%s", grepLines(l, "online=false"))
	}
}

// TestMosquittoRestartGatewayGone: gw2 dies during the outage and does not come back. The broker keeps choosing
// among the gateways it knew during the outage, then marks gw2 offline once the grace after its reconnect has
// passed without a word from gw2, and sends every node to gw1 from then on; the keys answered with gw2 reach gw1.
func TestMosquittoRestartGatewayGone(t *testing.T) {
	o := newOutageRig(t, "8s") // gw1 reconnects within it even when its backoff has grown to 4 s
	o.outage(false)
	o.stops["gw2"]()
	var keys []string
	for i := range 10 {
		keys = append(keys, o.mustV2(fmt.Sprintf("%d during the outage", i), "gw1", "gw2"))
	}
	o.startMosquitto(o.mosq.Addr)
	testenv.Eventually(t, 30*time.Second, func() bool { return o.d.Client.Connected() && !online(o.d, "gw2") }, "gw2 not marked offline")
	if !online(o.d, "gw1") {
		t.Fatal("gw1 offline")
	}
	for range 10 {
		keys = append(keys, o.mustV2("after gw2 was marked offline", "gw1"))
	}
	o.waitKeys("gw1", keys)
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestFaultMosquittoRestartBinaries: fault 5 with the real binaries in network namespaces: two wgkex-broker
// binaries and two wgkex-worker binaries with userspace WireGuard on Debian's Mosquitto (persistence, passwords,
// the deployed ACL). Mosquitto is stopped with SIGTERM, which sends every gateway's last will; nodes registering
// at either broker meanwhile are answered 200 with a gateway's endpoint, and once Mosquitto is back every key
// answered is a peer with route and FDB entry on both gateways. The old code answered 400 "no gateway online"
// for the whole outage.
func TestFaultMosquittoRestartBinaries(t *testing.T) {
	testenv.RequireRoot(t)
	c := newCluster(t)
	var answered []string
	register := func(when string, n int) {
		for i := range n {
			id := []string{"broker-a", "broker-b"}[i%2]
			k := testenv.NewKey(t).PublicKey().String()
			code, body, err := c.post(id, "v2", k)
			var e endpoint
			json.Unmarshal([]byte(body), &e)
			if err != nil || code != 200 || (e.Endpoint.Address != "192.0.2.11" && e.Endpoint.Address != "192.0.2.12") {
				t.Fatalf("v2 at %s %s: %d %s %v", id, when, code, body, err)
			}
			answered = append(answered, k)
		}
	}
	register("before the outage", 6)
	c.mosq.Terminate()
	register("while Mosquitto is down", 20)
	c.mosq = testenv.Mosquitto(t, c.mosqOpts)
	register("right after Mosquitto is back", 6)
	for _, g := range c.gws {
		c.waitPeers(g, answered, 90*time.Second)
	}
	register("once the gateways are back", 6)
	for _, g := range c.gws {
		c.waitPeers(g, answered, 30*time.Second)
		c.checkConsistent(g)
	}
	t.Logf("%d keys answered 200 (20 while Mosquitto was down), all on both gateways", len(answered))
}
