package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/mqttd"
	"github.com/freifunkMUC/wgkex-go/worker"
)

// workerRig is a gateway namespace with a running in-process worker connected to an in-process broker, whose
// own MQTT client publishes the keys (only it may).
type workerRig struct {
	ns    *testenv.NS
	agent *worker.Agent
	mqtt  *mqttd.Server
}

func newWorkerRig(b *testing.B) *workerRig {
	b.Helper()
	ns := testenv.NewNS(b)
	ns.Gateway(b, "welt", testenv.NewKey(b), 51820, "fe80::1")
	d := startBroker(b, brokerConfig(b, filepath.Join(b.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", "log: {level: warn}"))
	a, _ := runAgentEvery(b, ns, "gw-bench", d.MQTTAddr(), 0, time.Minute) // metrics as in production
	testenv.Eventually(b, 10*time.Second, func() bool { return len(d.Broker.Workers()) == 1 && d.Broker.Workers()[0].Online }, "worker not online")
	return &workerRig{ns: ns, agent: a, mqtt: d.MQTT}
}

func keys(b *testing.B, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = testenv.NewKey(b).PublicKey().String()
	}
	return out
}

func percentile(d []time.Duration, p float64) time.Duration {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[int(float64(len(d)-1)*p)]
}

// BenchmarkKeyToPeer measures one key from its MQTT publish to peer, route and FDB entry applied on a userspace
// wg-welt (the worker's Stats().Applied counting it), one key at a time.
func BenchmarkKeyToPeer(b *testing.B) {
	r := newWorkerRig(b)
	ks := keys(b, b.N)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := r.agent.Stats().Applied
		start := time.Now()
		r.mqtt.Publish(wire.KeyTopic("ffmuc_welt"), []byte(ks[i]), false, 0)
		for r.agent.Stats().Applied == before {
			time.Sleep(20 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
}

// Benchmark20kKeys measures 20,000 keys published at once until all are applied by the worker (peers, routes and
// FDB entries), and, in the same run, raw wgctrl adding the same 20,000 peers to a fresh device in one call.
func Benchmark20kKeys(b *testing.B) {
	const n = 20000
	for i := 0; i < b.N; i++ {
		ks := keys(b, n)
		// Raw wgctrl: one ConfigureDevice with every peer, nothing else.
		ns := testenv.NewNS(b)
		ns.WireGuard(b, "wg-raw", testenv.NewKey(b), 0)
		c, err := wgctrl.New()
		if err != nil {
			b.Fatal(err)
		}
		cfg := wgtypes.Config{}
		for _, k := range ks {
			pk, _ := wgtypes.ParseKey(k)
			p := wire.LinkLocalPrefix(k)
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: pk, ReplaceAllowedIPs: true,
				AllowedIPs: []net.IPNet{{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(128, 128)}}})
		}
		start := time.Now()
		if err := c.ConfigureDevice("wg-raw", cfg); err != nil {
			b.Fatal(err)
		}
		raw := time.Since(start)
		c.Close()

		r := newWorkerRig(b)
		base := r.agent.Stats().Applied
		start = time.Now()
		for _, k := range ks {
			r.mqtt.Publish(wire.KeyTopic("ffmuc_welt"), []byte(k), false, 0)
		}
		published := time.Since(start)
		applied := testenv.Lazy(func() string { return fmt.Sprint(r.agent.Stats().Applied - base) })
		testenv.Eventually(b, 120*time.Second, func() bool { return r.agent.Stats().Applied-base >= n }, "%v of %d keys applied", applied, n)
		all := time.Since(start)
		out := r.ns.Run(b, "bridge", "fdb", "show", "dev", "vx-welt")
		if got := len(lines(out)); got < n {
			b.Fatalf("%d fdb entries, want %d", got, n)
		}
		b.ReportMetric(raw.Seconds(), "raw-wgctrl-s")
		b.ReportMetric(published.Seconds(), "publish-s")
		b.ReportMetric(all.Seconds(), "worker-s")
		b.ReportMetric(all.Seconds()/raw.Seconds(), "ratio")
		fmt.Printf("20k keys: raw wgctrl %v, published in %v, worker applied all in %v (%.1fx)\n", raw, published, all, all.Seconds()/raw.Seconds())
	}
}
