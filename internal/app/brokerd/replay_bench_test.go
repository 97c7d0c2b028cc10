package brokerd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// BenchmarkReplay100kTo20Workers: a broker with 100,000 keys registered in one domain; 20 workers reconnect at
// once and each asks for the replay. Measured: the time until every worker has all 100,000 keys, and the latency
// of v2 registrations made meanwhile (the broker must not stall).
func BenchmarkReplay100kTo20Workers(b *testing.B) {
	const nKeys, nWorkers = 100000, 20
	quiet := slog.New(slog.DiscardHandler)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		state := filepath.Join(b.TempDir(), "state.db")
		fillState(b, state, nKeys)

		d, err := Start(replayConfig(b, state, nWorkers), quiet)
		if err != nil {
			b.Fatal(err)
		}
		gw := testenv.Connect(b, d.MQTTAddr(), "gw04.in.ffmuc.net", testenv.ClientOptions{Username: "wgkex", Password: "shared"})
		gw.Publish(b, wire.DataTopic("gw04.in.ffmuc.net", "ffmuc_welt"), string(wire.WorkerData{ExternalAddress: "gw04", Port: 51820, PublicKey: gwKey, LinkAddress: "fe80::1"}.Marshal()), 1, true)
		gw.Publish(b, wire.StatusTopic("gw04.in.ffmuc.net"), "1", 1, true)
		gw.Publish(b, wire.MetricTopic("ffmuc_welt", "gw04.in.ffmuc.net"), "0", 1, true)
		workers := make([]*testenv.Client, nWorkers)
		for j := range workers {
			name := fmt.Sprintf("gw%02d", j)
			workers[j] = testenv.Connect(b, d.MQTTAddr(), name, testenv.ClientOptions{Username: "wgkex", Password: "shared"})
			workers[j].Subscribe(b, wire.ReplayKeysTopic(name))
		}

		// v2 latency probe while the replays run.
		stop := make(chan struct{})
		var lat []time.Duration
		probeDone := make(chan struct{})
		go func() {
			defer close(probeDone)
			c := &http.Client{}
			for {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"domain":"ffmuc_welt","public_key":%q}`, testenv.NewKey(b).PublicKey().String())
				t0 := time.Now()
				resp, err := c.Post("http://"+d.HTTPAddr()+"/api/v2/wg/key/exchange", "application/json", bytes.NewBufferString(body))
				if err != nil {
					b.Error(err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Errorf("v2 during replay: %d", resp.StatusCode)
					return
				}
				lat = append(lat, time.Since(t0))
			}
		}()

		b.StartTimer()
		start := time.Now()
		for j, w := range workers {
			w.Publish(b, wire.ReplayRequestTopic(fmt.Sprintf("gw%02d", j)), `{"domains":["ffmuc_welt"]}`, 1, false)
		}
		for j, w := range workers {
			testenv.Eventually(b, 120*time.Second, func() bool {
				for _, m := range w.Messages() {
					var rb wire.ReplayBatch
					if json.Unmarshal([]byte(m.Payload), &rb) == nil && rb.Last {
						return true
					}
				}
				return false
			}, "worker %d: replay not finished", j)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		close(stop)
		<-probeDone
		for j, w := range workers {
			n := 0
			for _, m := range w.Messages() {
				var rb wire.ReplayBatch
				json.Unmarshal([]byte(m.Payload), &rb)
				n += len(rb.Keys)
			}
			if n < nKeys {
				b.Errorf("worker %d got %d keys, want %d", j, n, nKeys)
			}
		}
		sort.Slice(lat, func(x, y int) bool { return lat[x] < lat[y] })
		b.ReportMetric(elapsed.Seconds(), "replay-s")
		if len(lat) > 0 {
			b.ReportMetric(float64(len(lat)), "v2-during")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "v2-p99-ms")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "v2-max-ms")
		}
		d.Shutdown(context.Background())
	}
}

// replayConfig is testConfig with the workers gw00 … gw{n-1} configured too, so that they may log in with the
// shared credentials and ask for replays, and without the rate limit, which the probe from one address exceeds.
func replayConfig(b *testing.B, state string, n int) *config.Config {
	b.Helper()
	workers := "  gw04.in.ffmuc.net: {weight: 30, location: MUC}\n"
	for j := range n {
		workers += fmt.Sprintf("  gw%02d: {weight: 1}\n", j)
	}
	cfg, err := config.Parse(fmt.Appendf(nil, `
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers:
%s
mqtt: {username: wgkex, password: shared}
broker_listen: {host: 127.0.0.1, port: 0, rate_limit: 0}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
  reconnect_grace: 1h
`, workers, state), nil)
	if err != nil {
		b.Fatal(err)
	}
	return cfg
}
