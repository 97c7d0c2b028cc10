package brokerd

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

const (
	nodeKey = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	gwKey   = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
)

func testConfig(t testing.TB, state string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
domains: [ffmuc_welt, ffwert_city]
domain_prefixes: [ffmuc_, ffwert_]
workers:
  gw04.in.ffmuc.net: {weight: 30, location: MUC}
  gw05.in.ffmuc.net: {weight: 30, location: MUC}
mqtt: {username: wgkex, password: shared}
broker_listen: {host: 127.0.0.1, port: 0}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
  reconnect_grace: 1h
`, state)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startDaemon(t *testing.T, cfg *config.Config) *Daemon {
	t.Helper()
	d, err := Start(cfg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	return d
}

func post(t *testing.T, d *Daemon, version, body string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+d.HTTPAddr()+"/api/"+version+"/wg/key/exchange", "application/x-www-form-urlencoded", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// refWorker runs testdata/refworker.py (Debian's python3-paho-mqtt) as a reference worker.
func refWorker(t *testing.T, d *Daemon, worker, domain string, peers int) *exec.Cmd {
	t.Helper()
	py := testenv.Tool(t, "/usr/bin/python3") // Debian's, where python3-paho-mqtt lives
	if err := exec.Command(py, "-c", "import paho.mqtt.client").Run(); err != nil {
		testenv.Skip(t, "python3-paho-mqtt not installed")
	}
	host, port, _ := strings.Cut(d.MQTTAddr(), ":")
	cmd := exec.Command(py, "testdata/refworker.py", host, port, worker, domain, gwKey, wire.LinkLocal(gwKey).String(), fmt.Sprint(peers))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = t.Output()
	cmd.Env = append(os.Environ(), "MQTT_USERNAME=wgkex", "MQTT_PASSWORD=shared")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("reference worker: %q, %v", line, err)
	}
	return cmd
}

// TestBrokerEndToEnd: a mixed fleet on the reference's shared password. A reference worker (python paho)
// reports itself; v2 answers with its endpoint; mosquitto_sub, as the other gateway, sees every registered key;
// garbage on every topic the broker reads changes nothing, whether refused (another worker's topics) or parsed
// (the publisher's own); a restarted broker answers v2 before the worker speaks again.
func TestBrokerEndToEnd(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.db")
	cfg := testConfig(t, state)
	d := startDaemon(t, cfg)
	subBin := testenv.Tool(t, "mosquitto_sub")
	host, port, _ := strings.Cut(d.MQTTAddr(), ":")
	sub := exec.Command(subBin, "-h", host, "-p", port, "-u", "wgkex", "-P", "shared", "-i", "gw05.in.ffmuc.net",
		"-t", "wireguard/ffmuc_welt/+", "-v", "-C", "2", "-W", "20")
	subOut, _ := sub.StdoutPipe()
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	// mosquitto_sub has subscribed once the server counts it.
	testenv.Eventually(t, 5*time.Second, func() bool { return d.MQTT.Clients() == 1 }, "mosquitto_sub did not connect")

	refWorker(t, d, "gw04.in.ffmuc.net", "ffmuc_welt", 20)
	testenv.Eventually(t, 5*time.Second, func() bool {
		ws := d.Broker.Workers()
		return len(ws) == 1 && ws[0].Online && ws[0].Peers["ffmuc_welt"] == 20 && len(ws[0].Data) == 1
	}, "worker state not reported")

	body := `{"domain":"ffmuc_welt","public_key":"` + nodeKey + `"}`
	if code, resp := post(t, d, "v1", body); code != 200 || resp != "{\"Message\":\"OK\"}\n" {
		t.Errorf("v1: %d %s", code, resp)
	}
	want := `{"Endpoint":{"Address":"gw04.ext.ffmuc.net","AllowedIPs":["fe80::27c:16ff:fec0:6c74"],"Port":"51820","PublicKey":"` + gwKey + `"}}` + "\n"
	if code, resp := post(t, d, "v2", body); code != 200 || resp != want {
		t.Errorf("v2: %d %s\nwant %s", code, resp, want)
	}
	seen, _ := io.ReadAll(subOut)
	sub.Wait()
	wantSeen := "wireguard/ffmuc_welt/all " + nodeKey + "\n" + "wireguard/ffmuc_welt/all " + nodeKey + "\n"
	if string(seen) != wantSeen {
		t.Errorf("mosquitto_sub saw %q, want %q", seen, wantSeen)
	}

	// Garbage on every topic the broker reads.
	before := d.Broker.Workers()
	pubBin := testenv.Tool(t, "mosquitto_pub")
	for _, m := range [][2]string{
		{"wireguard-metrics/ffmuc_welt/gw04.in.ffmuc.net/connected_peers", "1"},
		{"wireguard-worker/gw04.in.ffmuc.net/status", "0"},
		{"wireguard/ffmuc_welt/all", gwKey},
		{"wireguard-metrics/nodomain/gw05.in.ffmuc.net/connected_peers", "3"},
		{"wireguard-metrics/x", "3"},
		{"wireguard-worker/gw05.in.ffmuc.net/nodomain/data", "{}"},
	} {
		// As gw05, outside its topics: refused (MQTT 3.1.1: acknowledged and dropped).
		exec.Command(pubBin, "-h", host, "-p", port, "-u", "wgkex", "-P", "shared", "-i", "gw05.in.ffmuc.net",
			"-t", m[0], "-m", m[1], "-q", "1", "-r").Run()
	}
	// An unconfigured gateway announcing itself with the shared password is not even let in.
	for _, topic := range []string{"wireguard-worker/rogue/status", "wireguard-metrics/ffmuc_welt/rogue/connected_peers"} {
		if exec.Command(pubBin, "-h", host, "-p", port, "-u", "wgkex", "-P", "shared", "-i", "rogue",
			"-t", topic, "-m", "1", "-q", "1", "-r").Run() == nil {
			t.Error("rogue got in with the shared password")
		}
	}
	for _, m := range [][2]string{
		{"wireguard-metrics/ffmuc_welt/gw05.in.ffmuc.net/connected_peers", "many"},
		{"wireguard-metrics/ffmuc_welt/gw05.in.ffmuc.net/connected_peers", ""},
		{"wireguard-worker/gw05.in.ffmuc.net/status", "yes"},
		{"wireguard-worker/gw05.in.ffmuc.net/ffmuc_welt/data", "{broken"},
		{"wireguard-worker/gw05.in.ffmuc.net/ffmuc_welt/data", "[]"},
		{"wgkex/replay/gw05.in.ffmuc.net/request", "{{"},
		{"wgkex/replay/gw05.in.ffmuc.net/request", `{"domains":["a/b"]}`},
	} {
		// As gw05, on its own topics: accepted, and dropped by the broker's parsers.
		args := []string{"-h", host, "-p", port, "-u", "wgkex", "-P", "shared", "-i", "gw05.in.ffmuc.net", "-t", m[0], "-q", "1"}
		if m[1] == "" {
			args = append(args, "-n", "-r")
		} else {
			args = append(args, "-m", m[1])
		}
		if out, err := exec.Command(pubBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub %v: %v %s", m, err, out)
		}
	}
	if diff := cmp.Diff(before, d.Broker.Workers()); diff != "" {
		t.Errorf("garbage changed the worker state (-before +after):\n%s", diff)
	}
	if code, _ := post(t, d, "v2", body); code != 200 {
		t.Errorf("v2 after garbage: %d", code)
	}

	// Restart on the same state file: v2 answers before any worker speaks.
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	d2 := startDaemon(t, testConfig(t, state))
	if code, resp := post(t, d2, "v2", body); code != 200 || resp != want {
		t.Errorf("v2 after restart: %d %s", code, resp)
	}
	rec, err := d2.Store.Key("ffmuc_welt", nodeKey)
	if err != nil || rec.Gateway != "gw04.in.ffmuc.net" {
		t.Errorf("key record after restart: %+v, %v", rec, err)
	}
}

// TestLastWillMarksOffline: a worker that vanishes is marked offline by its last will and no longer chosen.
func TestLastWillMarksOffline(t *testing.T) {
	d := startDaemon(t, testConfig(t, filepath.Join(t.TempDir(), "state.db")))
	w := refWorker(t, d, "gw04.in.ffmuc.net", "ffmuc_welt", 1)
	body := `{"domain":"ffmuc_welt","public_key":"` + nodeKey + `"}`
	testenv.Eventually(t, 5*time.Second, func() bool { c, _ := post(t, d, "v2", body); return c == 200 }, "worker never chosen")
	w.Process.Kill() // no DISCONNECT: the server sends the will after 1.5 × keepalive at most
	testenv.Eventually(t, 15*time.Second, func() bool { c, _ := post(t, d, "v2", body); return c == 400 }, "dead worker still chosen")
}

func TestGateways(t *testing.T) {
	thirty := 30
	got := Gateways(map[string]config.Worker{"gw04": {Weight: &thirty, Location: "MUC"}, "gw07": {}})
	want := map[string]broker.Gateway{"gw04": {Weight: 30, Location: "MUC"}, "gw07": {Weight: 1}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Gateways (-want +got):\n%s", diff)
	}
}
