package e2e

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// The full system in network namespaces, all on one bridge in the broker's namespace (192.0.2.0/24,
// TEST-NET-1, never routed):
//
//	broker  192.0.2.1   the wgkex-broker binary, embedded MQTT
//	gw1     192.0.2.11  a gateway process holding a userspace wg-welt (fe80::1) and vx-welt, and the
//	                    wgkex-worker binary beside it, weight 2
//	gw2     192.0.2.12  the same with fe80::2, weight 1
//	client  192.0.2.100 Gluon nodes: userspace WireGuard devices, curl, wg, ping
//
// Each gateway's device lives in a helper process (this test binary re-executed) with its own mount namespace,
// so that both can be named wg-welt: wgctrl finds userspace devices by their socket in /var/run/wireguard.
// The worker binary joins that process's network and mount namespaces, so it can be stopped, killed and
// restarted while the device and its peers stay, as on a real gateway.

// helperEnv makes the test binary a gateway helper: "name,private key hex,port,link address".
const helperEnv = "WGKEX_E2E_GATEWAY"

// gatewayHelper runs in a fresh mount namespace inside a gateway's network namespace: it creates wg-welt and
// vx-welt as the README tells operators to, prints "ready" and holds them until stdin closes.
func gatewayHelper(spec string) int {
	f := strings.Split(spec, ",")
	if len(f) != 4 {
		fmt.Fprintln(os.Stderr, "bad helper spec", spec)
		return 2
	}
	fail := func(err error) int { fmt.Fprintln(os.Stderr, "gateway helper:", err); return 1 }
	if err := os.MkdirAll("/var/run/wireguard", 0o755); err != nil {
		return fail(err)
	}
	if err := syscall.Mount("tmpfs", "/var/run/wireguard", "tmpfs", 0, "mode=0755"); err != nil {
		return fail(err)
	}
	kb, err := hex.DecodeString(f[1])
	if err != nil || len(kb) != 32 {
		return fail(fmt.Errorf("key %q", f[1]))
	}
	var key wgtypes.Key
	copy(key[:], kb)
	var port int
	fmt.Sscan(f[2], &port)
	closeDev, err := testenv.UserspaceDevice("wg-"+f[0], key, port)
	if err != nil {
		return fail(err)
	}
	defer closeDev()
	wg, vx := "wg-"+f[0], "vx-"+f[0]
	for _, args := range [][]string{
		{"link", "set", wg, "addrgenmode", "none"},
		{"-6", "addr", "add", f[3] + "/64", "dev", wg, "nodad"},
		{"link", "set", wg, "up"},
		{"link", "add", vx, "type", "vxlan", "id", fmt.Sprint(dataplane.VNI("testenv-" + f[0])), "dstport", fmt.Sprint(dataplane.VXLANPort), "local", f[3], "dev", wg},
		{"link", "set", vx, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fail(fmt.Errorf("ip %v: %v %s", args, err, out))
		}
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

type gateway struct {
	name, addr, link string
	ns               *testenv.NS
	pub              wgtypes.Key
	helper           *exec.Cmd
	cfg              string
	worker           *exec.Cmd
	workerDone       chan struct{}
}

type system struct {
	t         *testing.T
	dir       string
	brokerNS  *testenv.NS
	clientNS  *testenv.NS
	gws       []*gateway
	broker    *exec.Cmd
	brokerCfg string
	http      *http.Client
	obs       *testenv.Client
	nodes     int
}

const brokerIP = "192.0.2.1"

// newNetwork checks that the tools the test drives are installed, and makes the broker's namespace with the bridge
// at brokerIP and the clients' namespace attached to it at 192.0.2.100, with an HTTP client dialing from there.
func newNetwork(t *testing.T, tools ...string) *system {
	t.Helper()
	for _, tool := range tools {
		testenv.Tool(t, tool)
	}
	s := &system{t: t, dir: t.TempDir(), brokerNS: testenv.NewNS(t), clientNS: testenv.NewNS(t)}
	s.brokerNS.Run(t, "ip", "link", "add", "br0", "type", "bridge")
	s.brokerNS.Run(t, "ip", "addr", "add", brokerIP+"/24", "dev", "br0")
	s.brokerNS.Run(t, "ip", "link", "set", "br0", "up")
	s.attach("client", s.clientNS, "192.0.2.100")
	s.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) { return s.clientNS.Dial(network, addr) },
	}}
	return s
}

func newSystem(t *testing.T) *system {
	t.Helper()
	s := newNetwork(t, "wg", "bridge", "curl", "ping", "nsenter", "unshare", "mosquitto_pub")
	// Production MQTT: gw1 proves its name with a client certificate, gw2 and gw3 (no gateway; it publishes
	// garbage) with their own passwords, over TLS; the observer is a read-only monitor on the plain listener.
	writeCert(t, s.dir, "gw1")
	hash := func(pw string) string { return testenv.BcryptHash(t, pw) }
	s.brokerCfg = filepath.Join(s.dir, "broker.yaml")
	os.WriteFile(s.brokerCfg, []byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers:
  gw1: {weight: 2}
  gw2: {weight: 1, password_hash: "%[3]s"}
  gw3: {weight: 0, password_hash: "%[4]s"}
broker_listen: {host: %[1]s, port: 5000}
broker:
  state_file: %[2]s
  mqtt_listeners:
    - address: "%[1]s:1883"
    - address: "%[1]s:8883"
      cert_file: %[5]s/server.pem
      key_file: %[5]s/server.key
      client_ca_file: %[5]s/ca.pem
  mqtt_monitors: {observer: {password_hash: "%[6]s"}}
  reconnect_grace: 1m
`, brokerIP, filepath.Join(s.dir, "broker.db"), hash("gw2-secret"), hash("gw3-secret"), s.dir, hash("obs-secret"))), 0o644)
	s.startBroker()
	for i, link := range []string{"fe80::1", "fe80::2"} {
		s.gws = append(s.gws, s.newGateway(fmt.Sprintf("gw%d", i+1), fmt.Sprintf("192.0.2.1%d", i+1), link))
	}
	for _, g := range s.gws {
		s.startWorker(g)
	}
	for _, g := range s.gws {
		s.waitOnline(g)
	}
	return s
}

// attach connects ns to the bridge with address addr.
func (s *system) attach(name string, ns *testenv.NS, addr string) {
	s.brokerNS.Veth(s.t, "v-"+name, ns, "eth0")
	s.brokerNS.Run(s.t, "ip", "link", "set", "v-"+name, "master", "br0", "up")
	ns.Run(s.t, "ip", "addr", "add", addr+"/24", "dev", "eth0")
	ns.Run(s.t, "ip", "link", "set", "eth0", "up")
}

func (s *system) startBroker() {
	t := s.t
	s.broker = exec.Command("nsenter", "--net="+s.brokerNS.Path(), binary(t, "wgkex-broker"), "--config", s.brokerCfg)
	s.broker.Stdout, s.broker.Stderr = t.Output(), t.Output()
	if err := s.broker.Start(); err != nil {
		t.Fatal(err)
	}
	b := s.broker
	t.Cleanup(func() { b.Process.Kill(); b.Wait() })
	testenv.Eventually(t, 10*time.Second, func() bool {
		c, err := s.brokerNS.Dial("tcp", brokerIP+":1883")
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "broker did not start")
	obs, err := testenv.Dial(brokerIP+":1883", "observer", testenv.ClientOptions{Dial: s.brokerNS.Dial,
		Username: "observer", Password: "obs-secret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(obs.Close)
	obs.Subscribe(t, "wireguard-metrics/#", "wireguard-worker/+/status")
	s.obs = obs
}

func (s *system) newGateway(name, addr, link string) *gateway {
	t := s.t
	g := &gateway{name: name, addr: addr, link: link, ns: testenv.NewNS(t)}
	s.attach(name, g.ns, addr)
	key := testenv.NewKey(t)
	g.pub = key.PublicKey()
	g.helper = exec.Command("nsenter", "--net="+g.ns.Path(), "unshare", "--mount", "--propagation", "private", os.Args[0], "-test.run=^$")
	g.helper.Env = append(os.Environ(), helperEnv+"=welt,"+hex.EncodeToString(key[:])+",51820,"+link)
	g.helper.Stderr = t.Output()
	stdin, _ := g.helper.StdinPipe()
	stdout, _ := g.helper.StdoutPipe()
	if err := g.helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); g.helper.Wait() })
	if l, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("gateway helper %s: %q %v", name, l, err)
	}
	g.cfg = filepath.Join(s.dir, name+".yaml")
	cred := fmt.Sprintf("cert_file: %[1]s/%[2]s.pem, key_file: %[1]s/%[2]s.key", s.dir, name)
	if name != "gw1" {
		cred = fmt.Sprintf("password: %s-secret", name) // username: the worker name
	}
	os.WriteFile(g.cfg, []byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
externalName: %s
mqtt: {broker_url: %s, broker_port: 8883, keepalive: 2, tls: true, ca_file: %s/ca.pem, server_name: mqtt.test, %s}
worker: {name: %s, metrics_interval: 1s}
`, addr, brokerIP, s.dir, cred, name)), 0o644)
	return g
}

// in runs a command in the gateway's network and mount namespaces (where its wg-welt socket is).
func (g *gateway) in(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"-t", fmt.Sprint(g.helper.Process.Pid), "-m", "-n", name}, args...)...)
}

func (s *system) startWorker(g *gateway) {
	g.worker = g.in(binary(s.t, "wgkex-worker"), "--config", g.cfg)
	g.worker.Stdout, g.worker.Stderr = s.t.Output(), s.t.Output()
	if err := g.worker.Start(); err != nil {
		s.t.Fatal(err)
	}
	g.workerDone = make(chan struct{})
	w, done := g.worker, g.workerDone
	go func() { w.Wait(); close(done) }()
	s.t.Cleanup(func() { w.Process.Kill(); <-done })
}

func (s *system) stopWorker(g *gateway, sig syscall.Signal) {
	g.worker.Process.Signal(sig)
	select {
	case <-g.workerDone:
	case <-time.After(10 * time.Second):
		s.t.Fatalf("worker %s did not exit on %v", g.name, sig)
	}
}

// waitOnline waits until the observer has seen status 1 and a metric from the gateway.
func (s *system) waitOnline(g *gateway) {
	s.t.Helper()
	testenv.Eventually(s.t, 20*time.Second, func() bool {
		st, m := "", ""
		for _, x := range s.obs.Messages() {
			switch x.Topic {
			case wire.StatusTopic(g.name):
				st = x.Payload
			case wire.MetricTopic("ffmuc_welt", g.name):
				m = x.Payload
			}
		}
		return st == "1" && m != "" && m != "-1"
	}, "%s not online", g.name)
}

// peers returns the gateway's state as sets: WireGuard peers, /128 routes and FDB dsts (the last two as the
// peers' keys, via their link-local addresses), and whether any FDB entry or route appears twice.
func (s *system) peers(g *gateway) (wg, routes, fdb map[string]bool, dup bool) {
	t := s.t
	run := func(name string, args ...string) string {
		out, err := g.in(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v %s", name, args, err, out)
		}
		return string(out)
	}
	wg, routes, fdb = map[string]bool{}, map[string]bool{}, map[string]bool{}
	byAddr := map[string]string{}
	for _, l := range lines(run("wg", "show", "wg-welt", "peers")) {
		wg[l] = true
		byAddr[wire.LinkLocal(l).String()] = l
	}
	name := func(addr string) string {
		if k, ok := byAddr[addr]; ok {
			return k
		}
		return "orphan " + addr
	}
	for _, l := range lines(run("ip", "-6", "route", "show", "dev", "wg-welt")) {
		f := strings.Fields(l)[0]
		if f == "fe80::/64" {
			continue
		}
		if routes[name(f)] {
			dup = true
		}
		routes[name(f)] = true
	}
	for _, l := range lines(run("bridge", "fdb", "show", "dev", "vx-welt")) {
		f := strings.Fields(l)
		for i := range f {
			if f[i] == "dst" && i+1 < len(f) {
				if fdb[name(f[i+1])] {
					dup = true
				}
				fdb[name(f[i+1])] = true
			}
		}
	}
	return wg, routes, fdb, dup
}

// waitPeers waits until every key is a peer with route and FDB entry on g.
func (s *system) waitPeers(g *gateway, keys []string, timeout time.Duration) {
	s.t.Helper()
	var missing []string
	testenv.Eventually(s.t, timeout, func() bool {
		wg, routes, fdb, _ := s.peers(g)
		missing = missing[:0]
		for _, k := range keys {
			if !wg[k] || !routes[k] || !fdb[k] {
				missing = append(missing, k)
			}
		}
		return len(missing) == 0
	}, "%s lacks %d of %d keys, e.g. %v", g.name, len(missing), len(keys), first(missing))
}

func first(s []string) []string {
	if len(s) > 3 {
		return s[:3]
	}
	return s
}

// checkConsistent waits until g has no duplicate or orphan route or FDB entry and no peer without them (a batch
// being applied passes through such states), and fails with what is wrong if that does not happen.
func (s *system) checkConsistent(g *gateway) {
	s.t.Helper()
	var problems []string
	testenv.Eventually(s.t, 10*time.Second, func() bool {
		problems = problems[:0]
		wg, routes, fdb, dup := s.peers(g)
		if dup {
			problems = append(problems, "duplicate route or fdb entry")
		}
		for _, set := range []map[string]bool{routes, fdb} {
			for k := range set {
				if strings.HasPrefix(k, "orphan") || !wg[k] {
					problems = append(problems, k+" without a peer")
				}
			}
		}
		for k := range wg {
			if !routes[k] || !fdb[k] {
				problems = append(problems, "peer "+k+" without route or fdb entry")
			}
		}
		return len(problems) == 0
	}, "%s inconsistent: %v", g.name, first(problems))
}

type endpoint struct {
	Endpoint struct {
		Address    string
		AllowedIPs []string
		Port       string
		PublicKey  string
	}
}

func (s *system) post(version, key string) (int, string, error) {
	body := fmt.Sprintf(`{"domain":"ffmuc_welt","public_key":%q}`, key)
	resp, err := s.http.Post("http://"+brokerIP+":5000/api/"+version+"/wg/key/exchange", "application/x-www-form-urlencoded", strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// chosen registers a fresh key with v2 and returns the chosen gateway's name ("" on error).
func (s *system) chosen() string {
	code, body, err := s.post("v2", testenv.NewKey(s.t).PublicKey().String())
	if err != nil || code != 200 {
		return ""
	}
	var e endpoint
	json.Unmarshal([]byte(body), &e)
	for _, g := range s.gws {
		if e.Endpoint.PublicKey == g.pub.String() {
			return g.name
		}
	}
	return "?"
}

// allChosen reports whether n registrations in a row all chose gateway name.
func (s *system) allChosen(name string, n int) bool {
	for i := 0; i < n; i++ {
		if s.chosen() != name {
			return false
		}
	}
	return true
}

// anyChosen reports whether one of n registrations chose gateway name.
func (s *system) anyChosen(name string, n int) bool {
	for i := 0; i < n; i++ {
		if s.chosen() == name {
			return true
		}
	}
	return false
}

func (s *system) gw(name string) *gateway {
	for _, g := range s.gws {
		if g.name == name {
			return g
		}
	}
	s.t.Fatalf("no gateway %s", name)
	return nil
}

// node plays a Gluon node: a WireGuard key pair, curl to v2, its own userspace WireGuard device configured with
// the answer, a real handshake and an IPv6 ping from its link-local address to the gateway's link address.
func (s *system) node() (*gateway, wgtypes.Key) {
	t := s.t
	s.nodes++
	dev := fmt.Sprintf("node%d", s.nodes)
	key := testenv.NewKey(t)
	pub := s.clientNS.WireGuard(t, dev, key, 0)
	body := fmt.Sprintf(`{"domain":"ffmuc_welt","public_key":%q}`, pub.String())
	out := s.clientNS.Run(t, "curl", "-sS", "--fail-with-body", "-m", "10", "-H", "Content-Type: application/x-www-form-urlencoded",
		"-d", body, "http://"+brokerIP+":5000/api/v2/wg/key/exchange")
	var e endpoint
	if err := json.Unmarshal([]byte(out), &e); err != nil || len(e.Endpoint.AllowedIPs) != 1 {
		t.Fatalf("v2 answer %q: %v", out, err)
	}
	var g *gateway
	for _, x := range s.gws {
		if x.pub.String() == e.Endpoint.PublicKey {
			g = x
		}
	}
	if g == nil || e.Endpoint.Address != g.addr || e.Endpoint.Port != "51820" || e.Endpoint.AllowedIPs[0] != g.link {
		t.Fatalf("v2 answer %+v does not describe a gateway", e)
	}
	ll := wire.LinkLocal(pub.String()).String()
	s.clientNS.Run(t, "ip", "-6", "addr", "add", ll+"/64", "dev", dev, "nodad")
	s.clientNS.Run(t, "wg", "set", dev, "peer", e.Endpoint.PublicKey,
		"endpoint", net.JoinHostPort(e.Endpoint.Address, e.Endpoint.Port), "allowed-ips", e.Endpoint.AllowedIPs[0]+"/128")
	deadline := time.Now().Add(20 * time.Second)
	for s.clientNS.Command("ping", "-6", "-c", "1", "-W", "1", "-I", dev, e.Endpoint.AllowedIPs[0]+"%"+dev).Run() != nil {
		if time.Now().After(deadline) {
			gwShow, _ := g.in("wg", "show").CombinedOutput()
			t.Fatalf("ping from %s to %s%%%s (gateway %s) failed\nclient:\n%s\n%s\ngateway:\n%s", ll, e.Endpoint.AllowedIPs[0], dev, g.name,
				s.clientNS.Run(t, "wg", "show", dev), s.clientNS.Run(t, "ip", "-6", "addr", "show", "dev", dev), gwShow)
		}
		time.Sleep(200 * time.Millisecond)
	}
	hs := s.clientNS.Run(t, "wg", "show", dev, "latest-handshakes")
	if f := strings.Fields(hs); len(f) != 2 || f[1] == "0" {
		t.Errorf("no handshake with %s: %q", g.name, hs)
	}
	return g, key
}

// willWithin bounds the time from a worker's death to its last will: the server sends the will 1.5 × keepalive
// (2 s here) after the last packet it got, which is before the death, so 3 s; 1 s more for a busy 2-core machine.
const willWithin = 3*time.Second + time.Second

func TestSystem(t *testing.T) {
	s := newSystem(t)
	gw1, gw2 := s.gw("gw1"), s.gw("gw2")

	step(t, "node connects through the chosen gateway", func() {
		g, _ := s.node()
		testenv.Eventually(t, 10*time.Second, func() bool {
			return s.obs.WaitFor(t, wire.MetricTopic("ffmuc_welt", g.name)).Payload == "1"
		}, "%s does not report the node as connected", g.name)
	})

	step(t, "nodes spread 2:1", func() {
		// Interpolation spreads exactly 2:1 between two metrics updates. An update (every second here) resets a
		// gateway's count to the peers really connected, and the choices after it make up for the difference: an
		// update of gw2 late in a burst sends the rest of it to gw2. So a burst that a metrics update fell into
		// is tried again (at most five times).
		metrics := func() int {
			n := 0
			for _, m := range s.obs.Messages() {
				if strings.HasPrefix(m.Topic, "wireguard-metrics/") {
					n++
				}
			}
			return n
		}
		for try := 1; ; try++ {
			before := metrics()
			count := map[string]int{}
			for i := 0; i < 30; i++ {
				count[s.chosen()]++
			}
			if metrics() != before && try < 5 {
				t.Logf("a metrics update fell into burst %d (%v): again", try, count)
				continue
			}
			if count["gw1"] < 19 || count["gw1"] > 21 || count["gw1"]+count["gw2"] != 30 {
				t.Errorf("30 registrations went %v, want 20:10", count)
			}
			return
		}
	})

	step(t, "keys registered while a gateway is down are replayed to it", func() {
		s.stopWorker(gw2, syscall.SIGTERM)
		testenv.Eventually(t, 10*time.Second, func() bool { return s.allChosen("gw1", 2) }, "gw2 still chosen")
		var keys []string
		for i := 0; i < 25; i++ {
			k := testenv.NewKey(t).PublicKey().String()
			if code, body, err := s.post("v1", k); err != nil || code != 200 {
				t.Fatalf("v1: %d %s %v", code, body, err)
			}
			keys = append(keys, k)
		}
		s.waitPeers(gw1, keys, 10*time.Second)
		s.startWorker(gw2)
		s.waitPeers(gw2, keys, 20*time.Second)
		testenv.Eventually(t, 10*time.Second, func() bool { return s.anyChosen("gw2", 3) }, "gw2 not chosen again")
		s.checkConsistent(gw2)
	})

	step(t, "kill -9 of the broker during a burst loses no answered key", func() {
		// gw2 is down during the burst, so it can only learn the keys from the restarted broker's state.
		s.stopWorker(gw2, syscall.SIGTERM)
		bu := startBurst(t, 4, func(_ int, k string) (string, bool) {
			code, _, err := s.post("v1", k)
			if err != nil {
				return "", true // the broker is gone
			}
			if code != 200 {
				return "", false
			}
			return "broker", false
		})
		testenv.Eventually(t, 20*time.Second, func() bool { return bu.count("broker") >= 150 }, "burst too slow")
		s.broker.Process.Kill()
		s.broker.Wait()
		bu.end()
		keys := bu.keys("broker")
		t.Logf("%d registrations answered before kill -9", len(keys))
		s.obs.Close()
		s.startBroker()
		s.startWorker(gw2)
		// gw1 reconnects on its own; both ask for the replay.
		for _, g := range s.gws {
			s.waitPeers(g, keys, 60*time.Second)
			s.checkConsistent(g)
		}
	})

	step(t, "garbage on every topic changes nothing", func() {
		// Settle first: keys stored but not answered before the kill -9 may still be arriving by replay.
		settle := testenv.NewKey(t).PublicKey().String()
		if code, body, err := s.post("v1", settle); err != nil || code != 200 {
			t.Fatalf("v1: %d %s %v", code, body, err)
		}
		for _, g := range s.gws {
			s.waitPeers(g, []string{settle}, 10*time.Second)
			s.checkConsistent(g)
		}
		before := map[string][]string{}
		for _, g := range s.gws {
			wg, _, _, _ := s.peers(g)
			before[g.name] = slices.Sorted(maps.Keys(wg))
		}
		// Published by gw3 with its own password: refused outside gw3's topics (acknowledged and dropped: MQTT
		// 3.1.1), dropped by the broker's parsers on gw3's own.
		pub := func(topic, payload string) {
			args := []string{"-h", brokerIP, "-u", "gw3", "-P", "gw3-secret", "-i", "gw3", "-t", topic, "-q", "1"}
			if payload == "" {
				args = append(args, "-n")
			} else {
				args = append(args, "-m", payload)
			}
			s.brokerNS.Run(t, "mosquitto_pub", args...)
		}
		valid := testenv.NewKey(t).PublicKey().String()
		for _, m := range [][2]string{
			{"wireguard/ffmuc_welt/all", "garbage"}, {"wireguard/ffmuc_welt/all", ""}, {"wireguard/ffmuc_welt/all", valid + "\n"},
			{"wireguard/ffmuc_welt/all", strings.Repeat("A", 5000)}, {"wireguard/ffmuc_nope/all", valid},
			{"wireguard-metrics/ffmuc_welt/gw1/connected_peers", "lots"}, {"wireguard-metrics/ffmuc_welt/gw1/connected_peers", ""},
			{"wireguard-metrics/ffmuc_nope/gw1/connected_peers", "3"},
			{"wireguard-worker/gw1/status", "up"}, {"wireguard-worker/gw2/status", ""},
			{"wireguard-worker/gw1/ffmuc_welt/data", "{"}, {"wireguard-worker/gw2/ffmuc_welt/data", `{"Port":"x"}`},
			{"wgkex/replay/gw1/request", "{"}, {"wgkex/replay/gw2/request", `{"domains":["ffmuc_nope"]}`},
			{"wgkex/replay/gw1/keys", "{"}, {"wgkex/replay/gw2/keys", `{"domain":"ffmuc_welt","seq":0,"last":true,"keys":["bad","` + valid + `x"]}`},
			{"wgkex/replay/gw1/keys", `{"domain":"ffmuc_nope","seq":0,"last":true,"keys":["` + valid + `"]}`},
			{"wireguard-worker/gw3/status", "up"}, {"wireguard-worker/gw3/ffmuc_welt/data", "{"},
			{"wireguard-metrics/ffmuc_welt/gw3/connected_peers", "lots"}, {"wgkex/replay/gw3/request", "{"},
		} {
			pub(m[0], m[1])
		}
		// A valid registration after the garbage: once both gateways have it, they have read everything before.
		sentinel := testenv.NewKey(t).PublicKey().String()
		if code, body, err := s.post("v1", sentinel); err != nil || code != 200 {
			t.Fatalf("v1 after garbage: %d %s %v", code, body, err)
		}
		for _, g := range s.gws {
			s.waitPeers(g, []string{sentinel}, 10*time.Second)
			wg, _, _, _ := s.peers(g)
			delete(wg, sentinel)
			if got := slices.Sorted(maps.Keys(wg)); strings.Join(got, ",") != strings.Join(before[g.name], ",") {
				t.Errorf("%s peers changed by garbage: %d before, %d after", g.name, len(before[g.name]), len(got))
			}
			if g.worker.ProcessState != nil {
				t.Errorf("%s worker died", g.name)
			}
			s.checkConsistent(g)
		}
		if s.broker.ProcessState != nil {
			t.Error("broker died")
		}
		if c := s.chosen(); c != "gw1" && c != "gw2" {
			t.Errorf("v2 after garbage: %q", c)
		}
	})

	step(t, "kill -9 of a worker: offline within 1.5x keepalive, state recovered, chosen again", func() {
		s.stopWorker(gw1, syscall.SIGKILL)
		killed := time.Now()
		testenv.Eventually(t, willWithin, func() bool {
			return s.obs.WaitFor(t, wire.StatusTopic("gw1")).Payload == "0"
		}, "no last will for gw1 within 1.5x keepalive")
		t.Logf("last will after %v (keepalive 2 s)", time.Since(killed).Round(100*time.Millisecond))
		for i := 0; i < 6; i++ {
			if c := s.chosen(); c != "gw2" {
				t.Fatalf("dead gw1 chosen (%q)", c)
			}
		}
		// Damage what a crash mid-apply could leave: a peer whose route and FDB entry are missing.
		wg, _, _, _ := s.peers(gw1)
		victim := slices.Sorted(maps.Keys(wg))[0]
		ll := wire.LinkLocal(victim).String()
		gw1.in("ip", "-6", "route", "del", ll+"/128", "dev", "wg-welt").Run()
		gw1.in("bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vx-welt", "dst", ll, "via", "wg-welt").Run()
		s.startWorker(gw1)
		s.waitOnline(gw1)
		s.waitPeers(gw1, slices.Sorted(maps.Keys(wg)), 20*time.Second)
		s.checkConsistent(gw1)
		testenv.Eventually(t, 10*time.Second, func() bool { return s.chosen() == "gw1" }, "gw1 not chosen again")
	})

	step(t, "a lost connection marks the worker offline within 1.5x keepalive", func() {
		gw2.ns.Run(t, "ip", "link", "set", "eth0", "down")
		lost := time.Now()
		testenv.Eventually(t, willWithin, func() bool {
			return s.obs.WaitFor(t, wire.StatusTopic("gw2")).Payload == "0"
		}, "gw2 not marked offline within 1.5x keepalive")
		t.Logf("gw2 offline %v after its link went down (keepalive 2 s)", time.Since(lost).Round(100*time.Millisecond))
		for i := 0; i < 6; i++ {
			if c := s.chosen(); c != "gw1" {
				t.Fatalf("unreachable gw2 chosen (%q)", c)
			}
		}
		gw2.ns.Run(t, "ip", "link", "set", "eth0", "up")
		s.waitOnline(gw2)
		testenv.Eventually(t, 20*time.Second, func() bool { return s.anyChosen("gw2", 3) }, "gw2 not chosen again")
		s.checkConsistent(gw2)
	})
}

// step runs one stage of a system test; the stages share the system, so a failure stops the test.
func step(t *testing.T, name string, fn func()) {
	t.Helper()
	t.Logf("=== %s", name)
	start := time.Now()
	fn()
	t.Logf("=== %s: done in %v", name, time.Since(start).Round(time.Millisecond))
}
