package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	brokercluster "github.com/freifunkMUC/wgkex-go/broker/cluster"
	"github.com/freifunkMUC/wgkex-go/broker/selection"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// The cluster in network namespaces: Debian's Mosquitto at 192.0.2.1:1883 with a password file (one user per
// gateway, wgkex-broker for both brokers) and an ACL; the wgkex-broker binaries a (REST on :5000) and b (:5001) on it, each
// with its own state file; gw1 (weight 2) and gw2 (weight 1) with userspace WireGuard and the wgkex-worker
// binary; gw3 (weight 1) a reference-style worker (python paho).

var clusterUsers = map[string]string{
	"wgkex-broker": "secret-b", "gw1": "p1", "gw2": "p2", "gw3": "p3", "gw-probe": "pp", "observer": "po",
}

type clusterBroker struct {
	id, cfg, port string
	cmd           *exec.Cmd
	done          chan struct{}
	caughtUp      chan struct{}
}

type cluster struct {
	*system
	brokers  map[string]*clusterBroker
	mqtt     string
	mosq     *testenv.MosquittoServer
	mosqOpts testenv.MosquittoOptions // to start it again
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	s := newNetwork(t, "wg", "bridge", "nsenter", "unshare", "mosquitto", "mosquitto_passwd")
	c := &cluster{system: s, brokers: map[string]*clusterBroker{}, mqtt: brokerIP + ":1883"}
	c.mosqOpts = testenv.MosquittoOptions{Users: clusterUsers, ACL: testenv.DeployedACL(t), Addr: c.mqtt,
		Wrap: []string{"nsenter", "--net=" + s.brokerNS.Path()}, Dial: s.brokerNS.Dial, Persist: filepath.Join(s.dir, "mosquitto")}
	c.mosq = testenv.Mosquitto(t, c.mosqOpts)
	obs, err := testenv.Dial(c.mqtt, "observer", testenv.ClientOptions{Dial: s.brokerNS.Dial, Username: "observer", Password: clusterUsers["observer"]})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(obs.Close)
	obs.Subscribe(t, "wireguard-metrics/#", "wireguard-worker/+/status", brokercluster.BrokerStatusFilter)
	s.obs = obs
	for _, b := range []struct{ id, port string }{{"broker-a", "5000"}, {"broker-b", "5001"}} {
		cb := &clusterBroker{id: b.id, port: b.port, cfg: filepath.Join(s.dir, b.id+".yaml")}
		os.WriteFile(cb.cfg, []byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers:
  gw1: {weight: 2}
  gw2: {weight: 1}
  gw3: {weight: 1}
broker_listen: {host: %s, port: %s}
broker:
  state_file: %s
  reconnect_grace: 1m
  mqtt_server: {url: "mqtt://%s", username: wgkex-broker, client_id: %s, keepalive: 2}
`, brokerIP, b.port, filepath.Join(s.dir, b.id+".db"), c.mqtt, b.id)), 0o644)
		c.brokers[b.id] = cb
		c.startBroker(b.id)
	}
	for i, link := range []string{"fe80::1", "fe80::2"} {
		g := s.newGateway(fmt.Sprintf("gw%d", i+1), fmt.Sprintf("192.0.2.1%d", i+1), link)
		// Credentials of its own; metrics only at connect, so that the choices are not reset during the test.
		os.WriteFile(g.cfg, []byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
externalName: %s
mqtt: {broker_url: %s, broker_port: 1883, keepalive: 2, username: %s, password: %s}
worker: {name: %s, metrics_interval: 10m}
`, g.addr, brokerIP, g.name, clusterUsers[g.name], g.name)), 0o644)
		s.gws = append(s.gws, g)
		s.startWorker(g)
	}
	for _, g := range s.gws {
		s.waitOnline(g)
	}
	return c
}

// startBroker runs the broker binary; its password comes from the environment. caughtUp is closed when it logs
// that it has caught up (or found no one to catch up from).
func (c *cluster) startBroker(id string) {
	t, b := c.t, c.brokers[id]
	b.cmd = exec.Command("nsenter", "--net="+c.brokerNS.Path(), binary(t, "wgkex-broker"), "--config", b.cfg)
	b.cmd.Env = append(os.Environ(), "WGKEX_BROKER_MQTT_SERVER_PASSWORD="+clusterUsers["wgkex-broker"])
	pr, pw := io.Pipe()
	b.cmd.Stdout, b.cmd.Stderr = t.Output(), pw
	b.caughtUp, b.done = make(chan struct{}), make(chan struct{})
	go func(caughtUp chan struct{}) {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			l := sc.Text()
			fmt.Fprintln(t.Output(), id+": "+l)
			if strings.Contains(l, `msg="caught up"`) || strings.Contains(l, `msg="no other broker alive`) {
				once.Do(func() { close(caughtUp) })
			}
		}
	}(b.caughtUp)
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd, done := b.cmd, b.done
	go func() { cmd.Wait(); pw.Close(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	c.waitBroker(id, "1")
	select {
	case <-b.caughtUp:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not catch up", id)
	}
}

// waitBroker waits until the observer has seen the broker's retained liveness become status.
func (c *cluster) waitBroker(id, status string) {
	c.t.Helper()
	testenv.Eventually(c.t, 20*time.Second, func() bool {
		st := ""
		for _, m := range c.obs.Messages() {
			if m.Topic == brokercluster.BrokerStatusTopic(id) {
				st = m.Payload
			}
		}
		return st == status
	}, "%s status not %s", id, status)
}

func (c *cluster) post(id, version, key string) (int, string, error) {
	body := fmt.Sprintf(`{"domain":"ffmuc_welt","public_key":%q}`, key)
	resp, err := c.http.Post("http://"+brokerIP+":"+c.brokers[id].port+"/api/"+version+"/wg/key/exchange", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// refWorker runs the reference-style worker gw3 (python paho, with its password) and collects the keys it gets.
func (c *cluster) refWorker() func() map[string]bool {
	t := c.t
	py := testenv.Tool(t, "/usr/bin/python3")
	if err := exec.Command(py, "-c", "import paho.mqtt.client").Run(); err != nil {
		testenv.Skip(t, "python3-paho-mqtt not installed")
	}
	cmd := exec.Command("nsenter", "--net="+c.brokerNS.Path(), py, "../app/brokerd/testdata/refworker.py", brokerIP, "1883", "gw3",
		"ffmuc_welt", testenv.NewKey(t).PublicKey().String(), "fe80::3", "0")
	cmd.Env = append(os.Environ(), "MQTT_USERNAME=gw3", "MQTT_PASSWORD="+clusterUsers["gw3"])
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	var mu sync.Mutex
	keys := map[string]bool{}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			l := sc.Text()
			if l == "ready" {
				close(ready)
			}
			if k, ok := strings.CutPrefix(l, "key "); ok {
				mu.Lock()
				keys[k] = true
				mu.Unlock()
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("reference worker not ready")
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, m := range c.obs.Messages() {
			if m.Topic == wire.MetricTopic("ffmuc_welt", "gw3") {
				return true
			}
		}
		return false
	}, "gw3 not online")
	return func() map[string]bool {
		mu.Lock()
		defer mu.Unlock()
		out := make(map[string]bool, len(keys))
		for k := range keys {
			out[k] = true
		}
		return out
	}
}

// TestClusterOnMosquitto: two broker binaries on Debian's Mosquitto with passwords and an ACL, two Go workers and
// a reference-style one. Nodes registering alternately at both brokers spread exactly by weight; a key
// registered at a is replayed by b to a gateway that was down; kill -9 of a during a burst loses no key a
// answered, nodes keep registering at b, and a, restarted, catches up.
func TestClusterOnMosquitto(t *testing.T) {
	testenv.RequireRoot(t)
	c := newCluster(t)
	refKeys := c.refWorker()
	gw1, gw2 := c.gw("gw1"), c.gw("gw2")

	var all []string
	step(t, "registrations alternating between the brokers spread exactly by weight", func() {
		model := []selection.Gateway{
			{Name: "gw1", Weight: 2, Configured: true, Online: true, Peers: map[string]int{"ffmuc_welt": 0}},
			{Name: "gw2", Weight: 1, Configured: true, Online: true, Peers: map[string]int{"ffmuc_welt": 0}},
			{Name: "gw3", Weight: 1, Configured: true, Online: true, Peers: map[string]int{"ffmuc_welt": 0}},
		}
		count := map[string]int{}
		for i := range 40 {
			id := "broker-a"
			if i%2 == 1 {
				id = "broker-b"
			}
			k := testenv.NewKey(t).PublicKey().String()
			code, body, err := c.post(id, "v2", k)
			if err != nil || code != 200 {
				t.Fatalf("v2 %d at %s: %d %s %v", i, id, code, body, err)
			}
			all = append(all, k)
			var e endpoint
			json.Unmarshal([]byte(body), &e)
			got := map[string]string{"192.0.2.11": "gw1", "192.0.2.12": "gw2", "gw3": "gw3"}[e.Endpoint.Address]
			want, _ := selection.Choose(model, 4, "ffmuc_welt", "")
			if got != want.Name {
				t.Fatalf("registration %d at %s went to %q (%s), one broker would choose %s; so far %v", i, id, got, e.Endpoint.Address, want.Name, count)
			}
			for _, g := range model {
				if g.Name == got {
					g.Peers["ffmuc_welt"]++
				}
			}
			count[got]++
		}
		if count["gw1"] != 20 || count["gw2"] != 10 || count["gw3"] != 10 {
			t.Errorf("spread %v, want gw1 20, gw2 10, gw3 10", count)
		}
		for _, g := range c.gws {
			c.waitPeers(g, all, 20*time.Second)
		}
		testenv.Eventually(t, 10*time.Second, func() bool {
			got := refKeys()
			for _, k := range all {
				if !got[k] {
					return false
				}
			}
			return true
		}, "reference worker did not get every key")
	})

	step(t, "a key registered at a is replayed by b to a gateway that was down", func() {
		c.stopWorker(gw2, syscall.SIGTERM)
		var keys []string
		for range 20 {
			k := testenv.NewKey(t).PublicKey().String()
			if code, body, err := c.post("broker-a", "v1", k); err != nil || code != 200 {
				t.Fatalf("v1 at a: %d %s %v", code, body, err)
			}
			keys = append(keys, k)
		}
		all = append(all, keys...)
		// a stops, so that only b can answer gw2's replay request.
		a := c.brokers["broker-a"]
		a.cmd.Process.Signal(syscall.SIGTERM)
		<-a.done
		c.waitBroker("broker-a", "0")
		c.startWorker(gw2)
		c.waitPeers(gw2, keys, 20*time.Second)
		c.checkConsistent(gw2)
		c.startBroker("broker-a")
	})

	step(t, "kill -9 of a during a burst: b knows every key a answered, nodes keep registering at b, a catches up", func() {
		c.stopWorker(gw2, syscall.SIGTERM)
		bu := startBurst(t, 4, func(w int, k string) (string, bool) {
			id := []string{"broker-a", "broker-b"}[w%2]
			code, _, err := c.post(id, "v2", k)
			if err != nil && id == "broker-a" {
				return "", true // a is gone
			}
			if code != 200 {
				return "", false
			}
			return id, false
		})
		testenv.Eventually(t, 20*time.Second, func() bool { return bu.count("broker-a") >= 100 }, "burst too slow")
		a := c.brokers["broker-a"]
		a.cmd.Process.Kill()
		<-a.done
		atKill := bu.count("broker-b")
		// b keeps answering after a is gone.
		testenv.Eventually(t, 20*time.Second, func() bool { return bu.count("broker-b") >= atKill+100 }, "b stopped answering")
		bu.end()
		t.Logf("a answered %d before kill -9, b %d in all", bu.count("broker-a"), bu.count("broker-b"))
		c.waitBroker("broker-a", "0") // its will
		// gw2 was down: only b can replay, and it must have every key a answered.
		c.startWorker(gw2)
		burst := bu.keys("broker-a", "broker-b")
		c.waitPeers(gw2, burst, 30*time.Second)
		c.checkConsistent(gw2)
		c.waitPeers(gw1, burst, 30*time.Second)

		// a restarts and catches up from b: with b stopped, a replays every key b took while a was down.
		c.startBroker("broker-a")
		b := c.brokers["broker-b"]
		b.cmd.Process.Signal(syscall.SIGTERM)
		<-b.done
		probe, err := testenv.Dial(c.mqtt, "gw-probe", testenv.ClientOptions{Dial: c.brokerNS.Dial, Username: "gw-probe", Password: clusterUsers["gw-probe"]})
		if err != nil {
			t.Fatal(err)
		}
		defer probe.Close()
		probe.Subscribe(t, wire.ReplayKeysTopic("gw-probe"))
		probe.Publish(t, wire.ReplayRequestTopic("gw-probe"), `{"domains":["ffmuc_welt"]}`, 1, false)
		got := map[string]bool{}
		testenv.Eventually(t, 20*time.Second, func() bool {
			last := false
			for _, m := range probe.Messages() {
				rb, err := wire.ParseReplayBatch([]byte(m.Payload))
				if err != nil {
					continue
				}
				for _, k := range rb.Keys {
					got[k] = true
				}
				last = last || rb.Last
			}
			return last
		}, "no replay from a")
		var missing []string
		for _, k := range append(append([]string(nil), all...), burst...) {
			if !got[k] {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			t.Errorf("restarted a lacks %d of %d keys, e.g. %v", len(missing), len(all)+len(burst), first(missing))
		}
	})
}
