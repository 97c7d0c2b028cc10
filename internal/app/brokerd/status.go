package brokerd

import (
	"context"
	"os"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/web"
)

// newRegistry is the broker's one Prometheus registry, with the Go runtime, process and build collectors. Every
// package registers its own collectors in it; GET /metrics serves it.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	return reg
}

// version is the broker's module version and VCS revision as the Go toolchain recorded them.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}

// dashboard is what the status page needs from the daemon, with the page's credentials from cfg.
func (d *Daemon) dashboard(cfg *config.Config) web.Dashboard {
	id := "" // alone on the embedded server
	if d.Cluster != nil {
		id = d.Cluster.ID()
	}
	path := cfg.Broker.StateFile
	clients := func() int { return -1 } // an external MQTT server does not tell
	if d.MQTT != nil {
		clients = d.MQTT.Clients
	}
	return web.Dashboard{
		ID:          id,
		Version:     version(),
		Started:     d.started,
		MQTTClients: clients,
		StateFileBytes: func() int64 {
			fi, err := os.Stat(path)
			if err != nil {
				return 0
			}
			return fi.Size()
		},
		PeerHistory:  d.peerHistory,
		Metrics:      promhttp.HandlerFor(d.Metrics, promhttp.HandlerOpts{Registry: d.Metrics}),
		Username:     cfg.Broker.Dashboard.Username,
		PasswordHash: []byte(cfg.Broker.Dashboard.PasswordHash),
	}
}

func (d *Daemon) peerHistory(since time.Time) (map[string][]web.Sample, error) {
	samples, err := d.Store.PeerSamples(since)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]web.Sample, len(samples))
	for w, ss := range samples {
		conv := make([]web.Sample, len(ss))
		for i, s := range ss {
			conv[i] = web.Sample{Time: s.Time, Peers: s.Peers}
		}
		out[w] = conv
	}
	return out, nil
}

// sample records every online worker's connected peers at once and then every interval until ctx ends, for the
// status page's chart. The store keeps at most store.SampleSlots samples per worker.
func (d *Daemon) sample(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		now := time.Now() // before the state is read: a sample never predates what it shows
		peers := map[string]int{}
		for _, w := range d.Broker.Workers() {
			if !w.Online {
				continue // a gap in the chart
			}
			n := 0
			for _, p := range w.Peers {
				n += max(p, 0)
			}
			peers[w.Name] = n
		}
		if len(peers) > 0 {
			if err := d.Store.PutPeerSamples(now, interval, peers); err != nil {
				d.log.Warn("peer samples not recorded", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
