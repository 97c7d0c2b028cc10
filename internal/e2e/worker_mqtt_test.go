package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/app/brokerd"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/worker"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// These tests run the worker on the fake dataplane: they are about its MQTT side, and need no root.

func online(d *brokerd.Daemon, name string) bool {
	for _, w := range d.Broker.Workers() {
		if w.Name == name {
			return w.Online
		}
	}
	return false
}

func mqttOpts(addr string) worker.RunOptions {
	host, port, _ := strings.Cut(addr, ":")
	var p int
	fmt.Sscan(port, &p)
	return worker.RunOptions{MQTT: worker.MQTT{BrokerURL: host, BrokerPort: p, Keepalive: 2},
		MetricsInterval: 200 * time.Millisecond, CleanupInterval: time.Hour}
}

// writeCert makes a CA and a server certificate for mqtt.test, and writes ca.pem, server.pem, server.key; and
// for each client name a client certificate with that CN, as NAME.pem and NAME.key.
func writeCert(t *testing.T, dir string, clients ...string) {
	t.Helper()
	ca := testenv.NewCA(t, "wgkex test CA")
	ca.WriteCert(t, filepath.Join(dir, "ca.pem"))
	testenv.WriteKeyPair(t, ca.Server(t, "mqtt.test"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	for _, name := range clients {
		testenv.WriteKeyPair(t, ca.Client(t, name), filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key"))
	}
}

// TestWorkerTLS: the embedded server with a TLS listener, the shared password and client certificates; the
// worker verifies it with mqtt.ca_file and mqtt.server_name (the reference worker ignored mqtt.tls). A worker
// trusting only the system roots does not get in; one with its own client certificate does without a password.
func TestWorkerTLS(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "gw-cert")
	cfg := brokerConfig(t, filepath.Join(dir, "state.db"), "127.0.0.1:0", "127.0.0.1:0",
		"workers: {gw-tls: {}, gw-untrusted: {}, gw-wrongpw: {}, gw-cert: {}}")
	cfg.Broker.MQTTListeners[0].CertFile = filepath.Join(dir, "server.pem")
	cfg.Broker.MQTTListeners[0].KeyFile = filepath.Join(dir, "server.key")
	cfg.Broker.MQTTListeners[0].ClientCAFile = filepath.Join(dir, "ca.pem")
	cfg.MQTT.Username, cfg.MQTT.Password = "wgkex", "s3cret"
	d := startBroker(t, cfg)

	withCert := mqttOpts(d.MQTTAddr())
	withCert.MQTT.TLS, withCert.MQTT.CAFile, withCert.MQTT.ServerName = true, filepath.Join(dir, "ca.pem"), "mqtt.test"
	withCert.MQTT.CertFile, withCert.MQTT.KeyFile = filepath.Join(dir, "gw-cert.pem"), filepath.Join(dir, "gw-cert.key")
	startAgent(t, dataplane.NewFake(dataplane.LinkFor("welt")), "gw-cert", map[string]string{"ffmuc_welt": "welt"}, withCert)
	testenv.Eventually(t, 10*time.Second, func() bool { return online(d, "gw-cert") }, "worker with a client certificate did not connect")

	ro := mqttOpts(d.MQTTAddr())
	ro.MQTT.TLS, ro.MQTT.Username, ro.MQTT.Password = true, "wgkex", "s3cret"
	untrusted := ro
	ro.MQTT.CAFile, ro.MQTT.ServerName = filepath.Join(dir, "ca.pem"), "mqtt.test"
	untrustedAgent, _ := startAgent(t, dataplane.NewFake(dataplane.LinkFor("welt")), "gw-untrusted", map[string]string{"ffmuc_welt": "welt"}, untrusted)
	startAgent(t, dataplane.NewFake(dataplane.LinkFor("welt")), "gw-tls", map[string]string{"ffmuc_welt": "welt"}, ro)
	testenv.Eventually(t, 10*time.Second, func() bool { return online(d, "gw-tls") }, "worker did not connect over TLS")
	if online(d, "gw-untrusted") {
		t.Error("a worker that cannot verify the server got in")
	}
	wrong := ro
	wrong.MQTT.Password = "guess"
	wrongAgent, _ := startAgent(t, dataplane.NewFake(dataplane.LinkFor("welt")), "gw-wrongpw", map[string]string{"ffmuc_welt": "welt"}, wrong)
	// Wait for the evidence (refused attempts), not for a time.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return untrustedAgent.Stats().ConnectErrors >= 1 && wrongAgent.Stats().ConnectErrors >= 1
	}, "no refused connection attempts")
	if online(d, "gw-wrongpw") || online(d, "gw-untrusted") {
		t.Error("a worker with a wrong password or an unverifiable server got in")
	}
}

// TestWorkerStartsBeforeBroker: the first connection failing is retried, not fatal.
func TestWorkerStartsBeforeBroker(t *testing.T) {
	relay := testenv.NewRelay(t) // the worker's address, before a broker exists behind it
	fake := dataplane.NewFake(dataplane.LinkFor("welt"))
	startAgent(t, fake, "gw-early", map[string]string{"ffmuc_welt": "welt"}, mqttOpts(relay.Addr()))
	testenv.Eventually(t, 10*time.Second, func() bool { return relay.Refused() >= 2 }, "the worker did not try before the broker started")
	d := startBroker(t, brokerConfig(t, filepath.Join(t.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", ""))
	relay.Forward("tcp", d.MQTTAddr())
	testenv.Eventually(t, 20*time.Second, func() bool { return online(d, "gw-early") }, "worker did not connect once the broker came up")
	if code, _ := post(t, d.HTTPAddr(), "v1", "ffmuc_welt", nodeKey); code != 200 {
		t.Fatal("v1 failed")
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(fake.String(), nodeKey) }, "key not applied")
}

// TestMissingInterfaceLater: a domain whose interfaces are missing is reported and retried while the other
// domain works; once they exist, the worker publishes the domain's endpoint and asks for its keys again, so a key
// registered meanwhile is applied.
func TestMissingInterfaceLater(t *testing.T) {
	cfg := brokerConfig(t, filepath.Join(t.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", "")
	cfg.Domains = []string{"ffmuc_welt", "ffmuc_nord"}
	d := startBroker(t, cfg)
	welt, nord := dataplane.LinkFor("welt"), dataplane.LinkFor("nord")
	fake := dataplane.NewFake(welt)
	startAgent(t, fake, "gw-half", map[string]string{"ffmuc_welt": "welt", "ffmuc_nord": "nord"}, mqttOpts(d.MQTTAddr()))
	testenv.Eventually(t, 10*time.Second, func() bool { return online(d, "gw-half") }, "worker not online")
	key2 := testenv.NewKey(t).PublicKey().String()
	post(t, d.HTTPAddr(), "v1", "ffmuc_welt", nodeKey)
	post(t, d.HTTPAddr(), "v1", "ffmuc_nord", key2)
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(fake.String(), "wg-welt "+nodeKey) }, "welt key not applied")
	if _, ok := d.Broker.Workers()[0].Data["ffmuc_nord"]; ok {
		t.Error("endpoint published for a domain without interfaces")
	}
	fake.AddLink(nord)
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, ok := d.Broker.Workers()[0].Data["ffmuc_nord"]
		return ok && strings.Contains(fake.String(), "wg-nord "+key2+" peer route fdb")
	}, "nord not picked up: %s", fake.String())
}

// TestWorkerAgainstMosquitto: the same worker against Debian's Mosquitto: keys published with mosquitto_pub are
// applied, and the retained endpoint data and status arrive with the reference payloads.
func TestWorkerAgainstMosquitto(t *testing.T) {
	bin := testenv.Tool(t, "mosquitto")
	sub := testenv.Tool(t, "mosquitto_sub")
	pub := testenv.Tool(t, "mosquitto_pub")
	// Mosquitto listens on a Unix socket in the test's directory (as root, "user root" keeps it from dropping to a
	// user that may not write there); the worker reaches it through a relay on a port the system picked.
	sock := filepath.Join(t.TempDir(), "mosquitto.sock")
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("listener 0 %s\nallow_anonymous true\npersistence false\nuser root\n", sock)), 0o644)
	m := exec.Command(bin, "-c", conf)
	m.Stdout, m.Stderr = t.Output(), t.Output()
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Process.Kill(); m.Wait() })
	testenv.Eventually(t, 10*time.Second, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "mosquitto did not start")
	relay := testenv.NewRelay(t)
	relay.Forward("unix", sock)
	addr := relay.Addr()

	fake := dataplane.NewFake(dataplane.LinkFor("welt"))
	startAgent(t, fake, "gw-mosq", map[string]string{"ffmuc_welt": "welt"}, mqttOpts(addr))
	var out []byte
	testenv.Eventually(t, 10*time.Second, func() bool {
		out, _ = exec.Command(sub, "--unix", sock, "-t", "wireguard-worker/gw-mosq/#", "-v", "-C", "2", "-W", "1").Output()
		return strings.Count(string(out), "\n") == 2
	}, "retained data and status not on mosquitto: %q", out)
	want := "wireguard-worker/gw-mosq/ffmuc_welt/data " + string(wire.WorkerData{ExternalAddress: "gw-mosq.ext", Port: 51820,
		PublicKey: "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", LinkAddress: "fe80::1"}.Marshal()) + "\nwireguard-worker/gw-mosq/status 1\n"
	if got := string(out); got != want && got != strings.Join(reverse(strings.SplitAfter(want, "\n")[:2]), "") {
		t.Errorf("mosquitto_sub: %q\nwant %q", got, want)
	}
	if o, err := exec.Command(pub, "--unix", sock, "-t", "wireguard/ffmuc_welt/all", "-m", nodeKey).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, o)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(fake.String(), nodeKey+" peer route fdb") }, "key from mosquitto not applied")
}

func reverse(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[len(s)-1-i] = x
	}
	return out
}

// TestFailingKeyRetried: a key the dataplane refuses is retried by the worker's own loop (with a doubling delay,
// no replay from the broker: it used to ask for the whole domain every metrics interval), and applied once the
// dataplane works again: nothing is lost.
func TestFailingKeyRetried(t *testing.T) {
	d := startBroker(t, brokerConfig(t, filepath.Join(t.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", ""))
	requests := func() float64 {
		fams, err := d.Metrics.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if f.GetName() == "wgkex_broker_replay_requests_total" {
				return f.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return -1
	}
	fake := dataplane.NewFake(dataplane.LinkFor("welt"))
	var broken atomic.Bool
	broken.Store(true)
	fake.Fail = func(step, key string) error {
		if step == "fdb" && broken.Load() {
			return errors.New("fdb broken")
		}
		return nil
	}
	a, _ := startAgent(t, fake, "gw-broken", map[string]string{"ffmuc_welt": "welt"}, mqttOpts(d.MQTTAddr()))
	testenv.Eventually(t, 10*time.Second, func() bool { return online(d, "gw-broken") }, "worker not online")
	post(t, d.HTTPAddr(), "v1", "ffmuc_welt", nodeKey)
	testenv.Eventually(t, 30*time.Second, func() bool { return a.Stats().Failed >= 6 }, "key not retried")
	// Five retries take 100+200+…+1600 ms, fifteen metrics intervals (200 ms): the worker asked for a replay at
	// connect (once more at most, had the answer been late), and not because of the failing key.
	if got := requests(); got < 1 || got > 2 {
		t.Errorf("%v replay requests, want 1", got)
	}
	broken.Store(false)
	testenv.Eventually(t, 20*time.Second, func() bool { return strings.Contains(fake.String(), nodeKey+" peer route fdb") }, "failed key not retried: %v", testenv.Lazy(fake.String))
}

// TestReplayRequestRetried: a replay request that no broker receives is lost (MQTT drops a message nobody
// subscribes to; on Mosquitto any user may also join the brokers' shared subscription and swallow its share). The
// worker asks again until a last batch arrives, and then stops asking.
func TestReplayRequestRetried(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	fake := dataplane.NewFake(dataplane.LinkFor("welt"))
	startAgent(t, fake, "gw-retry", map[string]string{"ffmuc_welt": "welt"}, mqttOpts(mq.Addr))
	obs := testenv.Connect(t, mq.Addr, "observer", testenv.ClientOptions{})
	obs.Subscribe(t, "wireguard-worker/gw-retry/status")
	obs.WaitFor(t, "wireguard-worker/gw-retry/status") // its first request went to no one

	b := testenv.Connect(t, mq.Addr, "late-broker", testenv.ClientOptions{})
	b.Subscribe(t, "$share/wgkex/"+wire.ReplayRequestFilter)
	b.WaitFor(t, wire.ReplayRequestTopic("gw-retry"))
	batch, _ := json.Marshal(wire.ReplayBatch{Domain: "ffmuc_welt", Last: true, Keys: []string{nodeKey}})
	b.Publish(t, wire.ReplayKeysTopic("gw-retry"), string(batch), 1, false)
	testenv.Eventually(t, 10*time.Second, func() bool { return strings.Contains(fake.String(), nodeKey+" peer route fdb") }, "replayed key not applied")

	// Answered: no more requests, whatever the metrics interval (200 ms here) brings.
	n := len(b.Messages())
	obs.Subscribe(t, "wireguard-metrics/#")
	for range 3 {
		before := len(obs.Messages())
		testenv.Eventually(t, 10*time.Second, func() bool { return len(obs.Messages()) > before }, "no metrics")
	}
	if got := len(b.Messages()); got > n+1 {
		t.Errorf("%d replay requests after the answer", got-n)
	}
}
