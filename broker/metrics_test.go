package broker

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkObserveExchange is what counting adds to every registration: the Prometheus counters and the status
// page's per-minute ring, from all cores at once.
func BenchmarkObserveExchange(b *testing.B) {
	br := &Broker{domain: map[string]bool{"ffmuc_welt": true}, meters: newMeters(), log: slog.New(slog.DiscardHandler),
		opts: Options{Now: time.Now}}
	if err := br.registerMetrics(prometheus.NewRegistry()); err != nil {
		b.Fatal(err)
	}
	r := Request{Domain: "ffmuc_welt"}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			br.observeExchange(APIv2, r, "gw04.in.ffmuc.net", nil)
		}
	})
}
