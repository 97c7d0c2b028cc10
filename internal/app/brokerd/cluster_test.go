package brokerd

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker/cluster"
	"github.com/freifunkMUC/wgkex-go/broker/selection"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// clusterUsers are the Mosquitto accounts: every broker logs in as wgkex-broker (deploy/mosquitto/acl).
var clusterUsers = map[string]string{
	"wgkex-broker": "pb", "gw1": "p1", "gw2": "p2", "observer": "po",
}

func clusterConfig(t testing.TB, state, mqttAddr, id string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers:
  gw1: {weight: 2}
  gw2: {weight: 1}
broker_listen: {host: 127.0.0.1, port: 0}
broker:
  state_file: %s
  reconnect_grace: 1h
  mqtt_server: {url: "mqtt://%s", username: wgkex-broker, password: %s, client_id: %s, keepalive: 2}
`, state, mqttAddr, clusterUsers["wgkex-broker"], id)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func randomKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// gateway plays a worker on the shared server with its own password: endpoint, status and 0 peers.
func gateway(t *testing.T, addr, name string) *testenv.Client {
	t.Helper()
	c := testenv.Connect(t, addr, name, testenv.ClientOptions{Username: name, Password: clusterUsers[name]})
	c.Subscribe(t, wire.KeyFilter("ffmuc_welt"), wire.ReplayKeysTopic(name))
	data := wire.WorkerData{ExternalAddress: name + ".ext", Port: 51820, PublicKey: gwKey, LinkAddress: "fe80::1"}
	c.Publish(t, wire.DataTopic(name, "ffmuc_welt"), string(data.Marshal()), 1, true)
	c.Publish(t, wire.MetricTopic("ffmuc_welt", name), "0", 1, true)
	c.Publish(t, wire.StatusTopic(name), "1", 1, true)
	return c
}

func brokersAlive(d *Daemon, n int) func() bool {
	return func() bool {
		select {
		case <-d.Cluster.CaughtUp():
		default:
			return false
		}
		ws := d.Broker.Workers()
		return len(d.Cluster.Alive()) == n && len(ws) == 2 && ws[0].Online && ws[1].Online
	}
}

// TestTwoBrokersOnMosquitto: two brokers on Debian's Mosquitto with a password file and an ACL share keys, spread
// nodes registering alternately at both exactly by weight, answer a replay once, and a broker that was down
// catches up on the keys it missed.
func TestTwoBrokersOnMosquitto(t *testing.T) {
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Users: clusterUsers, ACL: testenv.DeployedACL(t)}).Addr
	gw1, gw2 := gateway(t, addr, "gw1"), gateway(t, addr, "gw2")
	dir := t.TempDir()
	a := startDaemon(t, clusterConfig(t, filepath.Join(dir, "a.db"), addr, "broker-a"))
	bCfg := clusterConfig(t, filepath.Join(dir, "b.db"), addr, "broker-b")
	b := startDaemon(t, bCfg)
	testenv.Eventually(t, 10*time.Second, brokersAlive(a, 2), "broker a: workers or peers not seen")
	testenv.Eventually(t, 10*time.Second, brokersAlive(b, 2), "broker b: workers or peers not seen")

	// Alternating registrations spread 2:1 exactly as on one broker: every answer is the one broker's answer
	// (the pure selection over the counts so far). Without shared choices each broker would fill its own
	// 2:1 and both would start with gw1.
	count := map[string]int{}
	model := []selection.Gateway{
		{Name: "gw1", Weight: 2, Configured: true, Online: true, Peers: map[string]int{"ffmuc_welt": 0}},
		{Name: "gw2", Weight: 1, Configured: true, Online: true, Peers: map[string]int{"ffmuc_welt": 0}},
	}
	var keys []string
	for i := range 30 {
		d := a
		if i%2 == 1 {
			d = b
		}
		k := randomKey(t)
		keys = append(keys, k)
		code, resp := post(t, d, "v2", `{"domain":"ffmuc_welt","public_key":"`+k+`"}`)
		if code != 200 {
			t.Fatalf("v2 at %d: %d %s", i, code, resp)
		}
		var ans struct{ Endpoint struct{ Address string } }
		json.Unmarshal([]byte(resp), &ans)
		got := strings.TrimSuffix(ans.Endpoint.Address, ".ext")
		want, _ := selection.Choose(model, 3, "ffmuc_welt", "")
		if got != want.Name {
			t.Fatalf("registration %d: gateway %s, one broker would choose %s (so far %v)", i, got, want.Name, count)
		}
		for _, g := range model {
			if g.Name == got {
				g.Peers["ffmuc_welt"]++
			}
		}
		count[got]++
	}
	if count["gw1"] != 20 || count["gw2"] != 10 {
		t.Errorf("spread over two brokers: %v, want gw1 20, gw2 10", count)
	}

	// Every key is in both state files, whichever broker took it.
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, k := range keys {
			for _, d := range []*Daemon{a, b} {
				if _, err := d.Store.Key("ffmuc_welt", k); err != nil {
					return false
				}
			}
		}
		return true
	}, "keys not recorded by both brokers")

	// A replay request is answered by exactly one broker.
	gw2.Publish(t, wire.ReplayRequestTopic("gw2"), `{"domains":["ffmuc_welt"]}`, 1, false)
	last := func() (n, keys int) {
		for _, m := range gw2.Messages() {
			if m.Topic == wire.ReplayKeysTopic("gw2") {
				rb, _ := wire.ParseReplayBatch([]byte(m.Payload))
				keys += len(rb.Keys)
				if rb.Last {
					n++
				}
			}
		}
		return n, keys
	}
	testenv.Eventually(t, 10*time.Second, func() bool { n, _ := last(); return n >= 1 }, "no replay")
	// A second request, answered too, fences the first: had both brokers answered it, there would be 3.
	gw2.Publish(t, wire.ReplayRequestTopic("gw2"), `{"domains":["ffmuc_welt"]}`, 1, false)
	testenv.Eventually(t, 10*time.Second, func() bool { n, _ := last(); return n >= 2 }, "no second replay")
	a.Broker.WaitReplays()
	b.Broker.WaitReplays()
	if n, k := last(); n != 2 || k != 60 {
		t.Errorf("two replay requests: %d complete replays with %d keys, want 2 with 60", n, k)
	}
	_ = gw1

	// b is down while a takes 200 keys; back up, it catches up before it replays.
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return len(a.Cluster.Alive()) == 1 }, "a still sees b")
	var missed []string
	for range 200 {
		k := randomKey(t)
		missed = append(missed, k)
		if code, resp := post(t, a, "v1", `{"domain":"ffmuc_welt","public_key":"`+k+`"}`); code != 200 {
			t.Fatalf("v1: %d %s", code, resp)
		}
	}
	b = startDaemon(t, bCfg)
	select {
	case <-b.Cluster.CaughtUp():
	case <-time.After(20 * time.Second):
		t.Fatal("b did not catch up")
	}
	for _, k := range missed {
		if _, err := b.Store.Key("ffmuc_welt", k); err != nil {
			t.Fatalf("key registered while b was down: %v", err)
		}
	}
}

// clusterStatus is what GET /api/v1/status says about the brokers on the MQTT server, decoded by the JSON names
// that scripts use.
type clusterStatus struct {
	Broker struct {
		ID string `json:"id"`
	} `json:"broker"`
	Brokers []struct {
		ID    string    `json:"id"`
		Alive bool      `json:"alive"`
		Self  bool      `json:"self"`
		Since time.Time `json:"since"`
	} `json:"brokers"`
}

// brokersShown returns the brokers a's /metrics and status JSON show: the count of live ones and, per broker,
// its up value (-1: no series) and its status entry (alive, self, since set).
func brokersShown(t *testing.T, d *Daemon) string {
	t.Helper()
	f := scrape(t, d)
	n, ok := value(f, "wgkex_cluster_brokers")
	out := fmt.Sprintf("brokers %v %v;", n, ok)
	for _, id := range []string{"broker-a", "broker-b"} {
		up, ok := value(f, "wgkex_cluster_broker_up", "broker="+id)
		out += fmt.Sprintf(" %s up %v %v;", id, up, ok)
	}
	var st clusterStatus
	getJSON(t, d, "/api/v1/status?history=0", &st)
	out += " status " + st.Broker.ID + ":"
	for _, b := range st.Brokers {
		out += fmt.Sprintf(" %s alive=%v self=%v since=%v", b.ID, b.Alive, b.Self, !b.Since.IsZero())
	}
	return out
}

// TestBrokersShown: with two brokers on one Mosquitto, broker a's /metrics and status JSON show both alive; once b
// has shut down, a counts one broker and shows b gone (up 0, not alive); once b's retained status is deleted, a no
// longer lists it.
func TestBrokersShown(t *testing.T) {
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Users: clusterUsers, ACL: testenv.DeployedACL(t)}).Addr
	dir := t.TempDir()
	a := startDaemon(t, clusterConfig(t, filepath.Join(dir, "a.db"), addr, "broker-a"))
	b := startDaemon(t, clusterConfig(t, filepath.Join(dir, "b.db"), addr, "broker-b"))
	both := "brokers 2 true; broker-a up 1 true; broker-b up 1 true; status broker-a:" +
		" broker-a alive=true self=true since=false broker-b alive=true self=false since=true"
	var seen string
	got := testenv.Lazy(func() string { return seen })
	testenv.Eventually(t, 10*time.Second, func() bool { seen = brokersShown(t, a); return seen == both },
		"broker a shows: %s\nwant: %s", got, both)
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	one := "brokers 1 true; broker-a up 1 true; broker-b up 0 true; status broker-a:" +
		" broker-a alive=true self=true since=false broker-b alive=false self=false since=true"
	testenv.Eventually(t, 10*time.Second, func() bool { seen = brokersShown(t, a); return seen == one },
		"broker a shows: %s\nwant: %s", got, one)
	// The operator deletes b's retained status, as README.md says for a broker taken out of service: a forgets it.
	op := testenv.Connect(t, addr, "operator", testenv.ClientOptions{Username: "wgkex-broker", Password: clusterUsers["wgkex-broker"]})
	op.Publish(t, cluster.BrokerStatusTopic("broker-b"), "", 1, true)
	alone := "brokers 1 true; broker-a up 1 true; broker-b up 0 false; status broker-a:" +
		" broker-a alive=true self=true since=false"
	testenv.Eventually(t, 10*time.Second, func() bool { seen = brokersShown(t, a); return seen == alone },
		"broker a shows: %s\nwant: %s", got, alone)
}

// TestChoiceBurst: under a burst of v2 registrations at one broker, the other counts every choice.
func TestChoiceBurst(t *testing.T) {
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Users: clusterUsers, ACL: testenv.DeployedACL(t)}).Addr
	gateway(t, addr, "gw1")
	gateway(t, addr, "gw2")
	dir := t.TempDir()
	aCfg := clusterConfig(t, filepath.Join(dir, "a.db"), addr, "broker-a")
	aCfg.BrokerListen.RateLimit = 0 // the burst comes from one address
	a := startDaemon(t, aCfg)
	b := startDaemon(t, clusterConfig(t, filepath.Join(dir, "b.db"), addr, "broker-b"))
	testenv.Eventually(t, 10*time.Second, brokersAlive(a, 2), "broker a: workers or peers not seen")
	testenv.Eventually(t, 10*time.Second, brokersAlive(b, 2), "broker b: workers or peers not seen")
	const n = 400
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range n / 16 {
				if code, resp := post(t, a, "v2", `{"domain":"ffmuc_welt","public_key":"`+randomKey(t)+`"}`); code != 200 {
					t.Errorf("v2: %d %s", code, resp)
				}
			}
		})
	}
	wg.Wait()
	counted := func() int {
		sum := 0
		for _, w := range b.Broker.Workers() {
			sum += w.Peers["ffmuc_welt"]
		}
		return sum
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return counted() == n }, "broker b counted %d of %d choices",
		testenv.Lazy(func() string { return fmt.Sprint(counted()) }), n)
}

// TestThreeBrokersOnDeployedACL: the shipped ACL lets any number of brokers in: three brokers, each with a
// client id of its own, see each other alive and record each other's keys.
func TestThreeBrokersOnDeployedACL(t *testing.T) {
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Users: clusterUsers, ACL: testenv.DeployedACL(t)}).Addr
	gateway(t, addr, "gw1")
	gateway(t, addr, "gw2")
	dir := t.TempDir()
	var ds []*Daemon
	for _, id := range []string{"broker-a", "broker-b", "broker-c"} {
		ds = append(ds, startDaemon(t, clusterConfig(t, filepath.Join(dir, id+".db"), addr, id)))
	}
	for i, d := range ds {
		testenv.Eventually(t, 10*time.Second, brokersAlive(d, 3), "broker %d: workers or peers not seen", i)
	}
	var keys []string
	for i, d := range ds {
		k := randomKey(t)
		keys = append(keys, k)
		if code, resp := post(t, d, "v2", `{"domain":"ffmuc_welt","public_key":"`+k+`"}`); code != 200 {
			t.Fatalf("v2 at broker %d: %d %s", i, code, resp)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, k := range keys {
			for _, d := range ds {
				if _, err := d.Store.Key("ffmuc_welt", k); err != nil {
					return false
				}
			}
		}
		return true
	}, "keys not recorded by all three brokers")
}
