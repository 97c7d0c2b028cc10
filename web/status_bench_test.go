package web

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/store"
)

// BenchmarkStatus measures GET /api/v1/status with 50 gateways and a full day of peer samples (1440 per
// gateway): "no-history" is the page's usual poll (?history=0), "cached" a full answer within the history
// cache's 5 s, "uncached" a full answer that reads the samples from bbolt.
func BenchmarkStatus(b *testing.B) {
	s, br, _ := newServer(b)
	st, err := store.Open(filepath.Join(b.TempDir(), "samples.db"), testenv.Logger(b))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	t0 := time.Now().Add(-24 * time.Hour)
	for i := range store.SampleSlots {
		peers := map[string]int{}
		for w := range 50 {
			peers[fmt.Sprintf("gw%02d", w)] = i + w
		}
		if err := st.PutPeerSamples(t0.Add(time.Duration(i)*time.Minute), time.Minute, peers); err != nil {
			b.Fatal(err)
		}
	}
	for w := range 50 {
		name := fmt.Sprintf("gw%02d", w)
		br.HandleStatus(wire.StatusTopic(name), []byte("1"))
		br.HandleMetric(wire.MetricTopic("ffmuc_welt", name), []byte("100"))
	}
	s.SetDashboard(Dashboard{PeerHistory: func(since time.Time) (map[string][]Sample, error) {
		ss, err := st.PeerSamples(since)
		out := map[string][]Sample{}
		for w, l := range ss {
			for _, x := range l {
				out[w] = append(out[w], Sample{x.Time, x.Peers})
			}
		}
		return out, err
	}})
	for _, name := range []string{"no-history", "cached", "uncached"} {
		path := "/api/v1/status"
		if name == "no-history" {
			path += "?history=0"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if name == "uncached" {
					s.dash.mu.Lock()
					s.dash.at = time.Time{}
					s.dash.mu.Unlock()
				}
				if rec := get(s, "GET", path, nil); rec.Code != 200 {
					b.Fatal(rec.Code)
				}
			}
		})
	}
}
