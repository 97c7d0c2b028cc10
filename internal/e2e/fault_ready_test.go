package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/worker"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane/kernel"
)

// Issue 15, part 6: a gateway is offered for a domain only while it can serve it. A worker that cannot change its
// domain's interfaces (no CAP_NET_ADMIN), or whose WireGuard or VXLAN interface is missing, publishes no endpoint
// and status 0, says why (log, metric, status page), tries again every few seconds and becomes ready by itself
// once it can; keys registered meanwhile are applied then.

const readyDomain = "ffmuc_f15r" // interfaces wg-f15r and vx-f15r

// v2Gateway posts a v2 registration and returns the status code and the gateway's address in the answer (empty
// when there is none).
func v2Gateway(t *testing.T, post func(version, domain, key string) (int, string), key string) (int, string) {
	t.Helper()
	code, body := post("v2", readyDomain, key)
	var r struct{ Endpoint struct{ Address string } }
	_ = json.Unmarshal([]byte(body), &r)
	return code, r.Endpoint.Address
}

// TestNotPermittedNotOffered: a worker whose every change to its domain's interfaces is refused (EPERM, as without
// CAP_NET_ADMIN) while reading them works (a userspace WireGuard device) is not offered, and a node is sent to
// the other gateway. Once the changes are permitted the gateway becomes ready without a restart and the key
// registered meanwhile is on it. (It used to report status 1 and its endpoint: nodes were sent to a gateway that
// could not add them.) Its interfaces deleted later, it is withdrawn again.
func TestNotPermittedNotOffered(t *testing.T) {
	cfg := brokerConfig(t, filepath.Join(t.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", "")
	cfg.Domains = []string{readyDomain}
	d := startBroker(t, cfg)
	link := dataplane.LinkFor("f15r")
	var refuse atomic.Bool
	refuse.Store(true)
	denied := dataplane.NewFake(link)
	denied.Fail = func(step, _ string) error {
		switch step {
		case "device", "interface", "forwarding":
			return nil // reading needs no capability on a userspace device
		}
		if refuse.Load() {
			return fmt.Errorf("wg-f15r: %w", unix.EPERM)
		}
		return nil
	}
	startAgent(t, denied, "gw-a-denied", map[string]string{readyDomain: "f15r"}, mqttOpts(d.MQTTAddr()))
	startAgent(t, dataplane.NewFake(link), "gw-b-other", map[string]string{readyDomain: "f15r"}, mqttOpts(d.MQTTAddr()))
	// Each worker has connected once the broker has heard from it (its metric, whatever the value); the other one
	// serves once it is online with its endpoint too.
	reported := func(name string) bool {
		for _, w := range d.Broker.Workers() {
			if _, ok := w.Peers[readyDomain]; ok && w.Name == name {
				_, data := w.Data[readyDomain]
				return name == "gw-a-denied" || w.Online && data
			}
		}
		return false
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return reported("gw-b-other") }, "the other gateway does not serve")
	testenv.Eventually(t, 10*time.Second, func() bool { return reported("gw-a-denied") }, "the denied worker never reported")
	post := func(version, domain, key string) (int, string) { return post(t, d.HTTPAddr(), version, domain, key) }
	for range 5 {
		code, gw := v2Gateway(t, post, nodeKey)
		if code != 200 || gw != "gw-b-other.ext" {
			t.Fatalf("v2 answered %d with gateway %q; want 200 with gw-b-other.ext, not the gateway that may not add peers", code, gw)
		}
	}
	if online(d, "gw-a-denied") {
		t.Error("the denied worker reports online")
	}
	serving := map[string][]string{}
	for _, g := range d.Broker.Status().Gateways {
		serving[g.Name] = g.Serving
	}
	if want := map[string][]string{"gw-a-denied": {}, "gw-b-other": {readyDomain}}; !reflect.DeepEqual(want, serving) {
		t.Errorf("status page: serving %v, want %v", serving, want)
	}

	refuse.Store(false) // the operator fixed the capability; no restart
	testenv.Eventually(t, 15*time.Second, func() bool {
		code, gw := v2Gateway(t, post, testenv.NewKey(t).PublicKey().String())
		return code == 200 && gw == "gw-a-denied.ext"
	}, "the gateway did not become ready")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(denied.String(), "wg-f15r "+nodeKey+" peer route fdb")
	}, "the key registered while the gateway was not ready was lost: %s", testenv.Lazy(denied.String))

	denied.RemoveLink(link) // the operator deletes the interfaces while the worker runs: withdrawn, not offered
	testenv.Eventually(t, 15*time.Second, func() bool {
		code, gw := v2Gateway(t, post, testenv.NewKey(t).PublicKey().String())
		return code == 200 && gw == "gw-b-other.ext" && !online(d, "gw-a-denied")
	}, "the gateway whose interfaces were deleted is still offered")
}

// TestInterfacesAppearLater: the worker starts in a network namespace where its domain has neither wg-f15r nor
// vx-f15r. It is not offered (400 "no gateway online"); wg-f15r alone does not make it ready (it used to: the
// endpoint went out as soon as the WireGuard device could be read, and nodes came to a gateway whose FDB entries
// failed); once vx-f15r exists too it is ready within seconds, without a restart, gets nodes, and the key
// registered while it was not ready is on the device.
func TestInterfacesAppearLater(t *testing.T) {
	for _, tool := range []string{"bridge", "ip"} {
		testenv.Tool(t, tool)
	}
	ns := testenv.NewNS(t)
	cfg := brokerConfig(t, filepath.Join(t.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", "")
	cfg.Domains = []string{readyDomain}
	d := startBroker(t, cfg)
	dp, err := kernel.OpenAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	log, logs := testenv.CaptureLogger(t)
	a, err := worker.New(dp, log, worker.Options{Name: "gw-late", Domains: map[string]string{readyDomain: "f15r"},
		ExternalName: "gw-late.ext", StaleTimeout: 3 * time.Hour, Grace: 10 * time.Minute, RetryDelay: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Run(ctx, mqttOpts(d.MQTTAddr())) }()
	t.Cleanup(func() { cancel(); <-done })
	post := func(version, domain, key string) (int, string) { return post(t, d.HTTPAddr(), version, domain, key) }

	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), "wg-f15r") },
		"the worker did not report the missing wg-f15r")
	if code, body := post("v2", readyDomain, nodeKey); code != 400 || !strings.Contains(body, "no gateway online") {
		t.Errorf("v2 without interfaces: %d %s", code, body)
	}

	// The WireGuard device, without the VXLAN link yet.
	var closeDev func()
	if err := ns.Do(func() (err error) {
		closeDev, err = testenv.UserspaceDevice("wg-f15r", testenv.NewKey(t), 51820)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeDev() })
	ns.Run(t, "ip", "link", "set", "wg-f15r", "addrgenmode", "none")
	ns.Run(t, "ip", "-6", "addr", "add", "fe80::1/64", "dev", "wg-f15r", "nodad")
	ns.Run(t, "ip", "link", "set", "wg-f15r", "up")
	// Either the worker says vx-f15r is missing, or (the bug) the broker offers it.
	testenv.Eventually(t, 10*time.Second, func() bool {
		if strings.Contains(logs.String(), "vx-f15r: no such interface") {
			return true
		}
		for _, w := range d.Broker.Workers() {
			if _, ok := w.Data[readyDomain]; ok {
				return true
			}
		}
		return false
	}, "neither a report of the missing vx-f15r nor an endpoint")
	if code, gw := v2Gateway(t, post, nodeKey); code != 400 {
		t.Fatalf("v2 with wg-f15r but no vx-f15r: %d, gateway %q; want 400", code, gw)
	}

	ns.Run(t, "ip", "link", "add", "vx-f15r", "type", "vxlan", "id", "4242", "dstport", fmt.Sprint(dataplane.VXLANPort), "local", "fe80::1", "dev", "wg-f15r")
	ns.Run(t, "ip", "link", "set", "vx-f15r", "up")
	testenv.Eventually(t, 15*time.Second, func() bool {
		code, gw := v2Gateway(t, post, testenv.NewKey(t).PublicKey().String())
		return code == 200 && gw == "gw-late.ext"
	}, "the gateway did not become ready once its interfaces existed")
	ll := wire.LinkLocal(nodeKey).String()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(ns.Run(t, "bridge", "fdb", "show", "dev", "vx-f15r"), "dst "+ll+" via wg-f15r")
	}, "the key registered while the gateway was not ready is not on it")
}

// TestWorkerWithoutNetAdmin runs the wgkex-broker and wgkex-worker binaries in a network namespace whose wg-f15r
// (userspace) and vx-f15r exist, the worker under setpriv without CAP_NET_ADMIN. It can read the device but not
// add routes or FDB entries: it must never be offered (it published status 1 and its endpoint, and v2 sent nodes
// to it), its metric says the domain is not ready and its log says why. Started again with the capability, it
// becomes ready and the key registered meanwhile is applied.
func TestWorkerWithoutNetAdmin(t *testing.T) {
	setpriv := testenv.Tool(t, "setpriv")
	testenv.Tool(t, "nsenter")
	testenv.Tool(t, "bridge")
	ns := testenv.NewNS(t)
	ns.Gateway(t, "f15r", testenv.NewKey(t), 51820, "fe80::1")
	dir := t.TempDir()
	// A fresh namespace has every port free; FreeAddr only picks distinct numbers.
	_, httpPort, _ := net.SplitHostPort(testenv.FreeAddr(t))
	_, mqttPort, _ := net.SplitHostPort(testenv.FreeAddr(t))
	_, metricsPort, _ := net.SplitHostPort(testenv.FreeAddr(t))
	brokerCfg := filepath.Join(dir, "broker.yaml")
	os.WriteFile(brokerCfg, []byte(fmt.Sprintf(`
domains: [%s]
domain_prefixes: [ffmuc_]
broker_listen: {host: 127.0.0.1, port: %s}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:%s"}]
`, readyDomain, httpPort, filepath.Join(dir, "broker.db"), mqttPort)), 0o644)
	workerCfg := filepath.Join(dir, "worker.yaml")
	os.WriteFile(workerCfg, []byte(fmt.Sprintf(`
domains: [%s]
domain_prefixes: [ffmuc_]
externalName: gw-nocap.ext
mqtt: {broker_url: 127.0.0.1, broker_port: %s, keepalive: 2}
worker: {name: gw-nocap, metrics_interval: 1s, metrics_listen: "127.0.0.1:%s"}
`, readyDomain, mqttPort, metricsPort)), 0o644)

	run := func(name string, args ...string) (stop func()) {
		cmd := exec.Command("nsenter", append([]string{"--net=" + ns.Path(), name}, args...)...)
		cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		stop = func() {
			cmd.Process.Signal(unix.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}
		t.Cleanup(stop)
		return stop
	}
	run(binary(t, "wgkex-broker"), "--config", brokerCfg)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) { return ns.Dial(network, addr) },
	}}
	get := func(url string) (int, string) {
		resp, err := hc.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	post := func(version, domain, key string) (int, string) {
		resp, err := hc.Post("http://127.0.0.1:"+httpPort+"/api/"+version+"/wg/key/exchange", "application/json",
			strings.NewReader(fmt.Sprintf(`{"domain":%q,"public_key":%q}`, domain, key)))
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { code, _ := get("http://127.0.0.1:" + httpPort + "/api/v1/status"); return code == 200 },
		"broker did not start")

	stopWorker := run(setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-net_admin", "--",
		binary(t, "wgkex-worker"), "--config", workerCfg)
	// The broker has heard from the worker once the gateway is on its status page.
	var status string
	testenv.Eventually(t, 15*time.Second, func() bool {
		_, status = get("http://127.0.0.1:" + httpPort + "/api/v1/status")
		return strings.Contains(status, `"name":"gw-nocap"`)
	}, "the worker never reported: %s", testenv.Lazy(func() string { return status }))
	if code, body := post("v2", readyDomain, nodeKey); code != 400 || !strings.Contains(body, "no gateway online") {
		t.Errorf("v2 to a worker without CAP_NET_ADMIN: %d %s; want 400 no gateway online", code, body)
	}
	var metrics string
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, metrics = get("http://127.0.0.1:" + metricsPort + "/metrics")
		return strings.Contains(metrics, `wgkex_worker_domain_ready{domain="`+readyDomain+`"} 0`)
	}, "no readiness metric of 0: %s", testenv.Lazy(func() string { return metrics }))
	if strings.Contains(ns.Run(t, "bridge", "fdb", "show", "dev", "vx-f15r"), "via wg-f15r") {
		t.Error("an FDB entry was added without CAP_NET_ADMIN")
	}

	stopWorker()
	run(binary(t, "wgkex-worker"), "--config", workerCfg) // with the capability
	testenv.Eventually(t, 15*time.Second, func() bool {
		code, _ := post("v2", readyDomain, testenv.NewKey(t).PublicKey().String())
		return code == 200
	}, "the worker with CAP_NET_ADMIN is not offered")
	ll := wire.LinkLocal(nodeKey).String()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(ns.Run(t, "bridge", "fdb", "show", "dev", "vx-f15r"), "dst "+ll+" via wg-f15r")
	}, "the key registered while the worker could not serve was lost")
}
