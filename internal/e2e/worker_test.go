package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

const nodeKey = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="

// TestWorkerEndToEnd: in a namespace with a userspace wg-welt and vx-welt, a worker connected to the broker turns
// a v1 registration into a peer (wg show), a route (ip -6 route) and an FDB entry (bridge fdb show); its
// endpoint data, status and metrics arrive with the reference payloads, so v2 answers with this gateway; the
// health check answers on the link address; a clean stop publishes -1 and status 0.
func TestWorkerEndToEnd(t *testing.T) {
	for _, tool := range []string{"wg", "bridge", "curl"} {
		testenv.Tool(t, tool)
	}
	ns := testenv.NewNS(t)
	gwPub := ns.Gateway(t, "welt", testenv.NewKey(t), 51820, "fe80::1")
	b := startBroker(t, brokerConfig(t, filepath.Join(t.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", ""))
	obs := testenv.Connect(t, b.MQTTAddr(), "observer", testenv.ClientOptions{})
	obs.Subscribe(t, "wireguard-worker/#", "wireguard-metrics/#")

	_, stop := runAgent(t, ns, "gw-test", b.MQTTAddr(), 8080)
	wantData := fmt.Sprintf(`{"ExternalAddress": "gw-test.ext", "Port": 51820, "PublicKey": "%s", "LinkAddress": "fe80::1"}`, gwPub)
	if m := obs.WaitFor(t, "wireguard-worker/gw-test/ffmuc_welt/data"); m.Payload != wantData || !m.Retain {
		t.Errorf("data %+v\nwant %s", m, wantData)
	}
	if m := obs.WaitFor(t, "wireguard-worker/gw-test/status"); m.Payload != "1" {
		t.Errorf("status %+v", m)
	}
	if m := obs.WaitFor(t, "wireguard-metrics/ffmuc_welt/gw-test/connected_peers"); m.Payload != "0" || !m.Retain {
		t.Errorf("metric %+v", m)
	}

	if code, body := post(t, b.HTTPAddr(), "v1", "ffmuc_welt", nodeKey); code != 200 {
		t.Fatalf("v1: %d %s", code, body)
	}
	ll := wire.LinkLocal(nodeKey).String()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(ns.Run(t, "bridge", "fdb", "show", "dev", "vx-welt"), "dst "+ll+" via wg-welt")
	}, "fdb entry for %s not added", ll)
	if got := ns.Run(t, "wg", "show", "wg-welt", "allowed-ips"); strings.TrimSpace(got) != nodeKey+"\t"+ll+"/128" {
		t.Errorf("wg show allowed-ips: %q", got)
	}
	if got := ns.Run(t, "ip", "-6", "route", "show", ll+"/128"); !strings.Contains(got, ll+" dev wg-welt") {
		t.Errorf("ip -6 route: %q", got)
	}

	want := fmt.Sprintf(`{"Endpoint":{"Address":"gw-test.ext","AllowedIPs":["fe80::1"],"Port":"51820","PublicKey":"%s"}}`+"\n", gwPub)
	if code, body := post(t, b.HTTPAddr(), "v2", "ffmuc_welt", nodeKey); code != 200 || body != want {
		t.Errorf("v2: %d %s\nwant %s", code, body, want)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		out, err := ns.Command("curl", "-s", "-m", "2", "http://[fe80::1%wg-welt]:8080/").Output()
		return err == nil && string(out) == "OK\n"
	}, "health check on [fe80::1%%wg-welt]:8080 did not answer OK")

	stop()
	testenv.Eventually(t, 5*time.Second, func() bool {
		return obs.WaitFor(t, "wireguard-worker/gw-test/status").Payload == "0" &&
			obs.WaitFor(t, "wireguard-metrics/ffmuc_welt/gw-test/connected_peers").Payload == "-1"
	}, "no farewell")
	if code, _ := post(t, b.HTTPAddr(), "v2", "ffmuc_welt", nodeKey); code != 400 {
		t.Errorf("v2 after the worker stopped: %d, want 400", code)
	}
}

// TestHealthWithoutBroker: the health check answers from the gateway itself. With no MQTT server reachable the
// tunnels still carry traffic, so a Gluon node checking http://[link address%wg]/ must get 200 (a 503 makes it
// tear its tunnel down); only a worker draining for shutdown answers 503.
func TestHealthWithoutBroker(t *testing.T) {
	testenv.Tool(t, "curl")
	ns := testenv.NewNS(t)
	ns.Gateway(t, "welt", testenv.NewKey(t), 51820, "fe80::1")
	a, _ := runAgent(t, ns, "gw-alone", testenv.NewRelay(t).Addr(), 8080) // refuses every connection: no broker
	testenv.Eventually(t, 10*time.Second, func() bool { return a.Stats().ConnectErrors >= 1 }, "no connection attempt")
	var out []byte
	testenv.Eventually(t, 10*time.Second, func() bool {
		out, _ = ns.Command("curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "http://[fe80::1%wg-welt]:8080/").Output()
		return string(out) == "200"
	}, "health check without a broker: %s, want 200", out)
}

// TestHealthAfterInterfaceRecreated: the operator deletes and re-creates wg-welt (and vx-welt) while the worker
// runs. The health listener was bound to the old interface; the worker listens again on the new one. (It kept the
// dead listener: every node's check failed, and Gluon nodes tore their tunnels down every minute until the
// worker was restarted.)
func TestHealthAfterInterfaceRecreated(t *testing.T) {
	testenv.Tool(t, "curl")
	ns := testenv.NewNS(t)
	key := testenv.NewKey(t)
	create := func() func() {
		var closeDev func()
		if err := ns.Do(func() (err error) { closeDev, err = testenv.UserspaceDevice("wg-welt", key, 51820); return err }); err != nil {
			t.Fatal(err)
		}
		ns.Run(t, "ip", "link", "set", "wg-welt", "addrgenmode", "none")
		ns.Run(t, "ip", "link", "set", "wg-welt", "up")
		ns.Run(t, "ip", "-6", "addr", "add", "fe80::1/64", "dev", "wg-welt", "nodad")
		ns.Run(t, "ip", "link", "add", "vx-welt", "type", "vxlan", "id", "4242", "dstport", "8472", "local", "fe80::1", "dev", "wg-welt")
		ns.Run(t, "ip", "link", "set", "vx-welt", "up")
		return closeDev
	}
	closeDev := create()
	runAgent(t, ns, "gw-recreated", testenv.NewRelay(t).Addr(), 8080)
	health := func() string {
		out, _ := ns.Command("curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "http://[fe80::1%wg-welt]:8080/").Output()
		return string(out)
	}
	testenv.Eventually(t, 20*time.Second, func() bool { return health() == "200" }, "no health check answer")
	ns.Command("ip", "link", "del", "vx-welt").Run()
	closeDev()
	closeDev = create()
	t.Cleanup(closeDev)
	testenv.Eventually(t, 30*time.Second, func() bool { return health() == "200" }, "no health check answer on the re-created interface")
}
