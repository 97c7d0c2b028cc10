package brokerd

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// BenchmarkCatchup100k: broker a holds 100,000 keys that broker b, starting with an empty state file, missed. It
// times b's start until it has asked a, received every key in batches of 1,000 over Mosquitto and made them
// durable.
func BenchmarkCatchup100k(b *testing.B) {
	const n = 100_000
	addr := testenv.Mosquitto(b, testenv.MosquittoOptions{Users: clusterUsers, ACL: testenv.DeployedACL(b)}).Addr
	dir := b.TempDir()
	aCfg := clusterConfig(b, filepath.Join(dir, "a.db"), addr, "broker-a")
	fillState(b, aCfg.Broker.StateFile, n)
	quiet := slog.New(slog.DiscardHandler)
	a, err := Start(aCfg, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Shutdown(context.Background())
	testenv.Eventually(b, 10*time.Second, func() bool { return len(a.Cluster.Alive()) == 1 && a.Client.Connected() }, "a not connected")
	b.ResetTimer()
	for i := range b.N {
		bCfg := clusterConfig(b, filepath.Join(dir, fmt.Sprintf("b%d.db", i)), addr, "broker-b")
		start := time.Now()
		d, err := Start(bCfg, quiet)
		if err != nil {
			b.Fatal(err)
		}
		select {
		case <-d.Cluster.CaughtUp():
		case <-time.After(60 * time.Second):
			b.Fatal("no catch-up")
		}
		took := time.Since(start)
		b.StopTimer()
		if got := d.Cluster.Recorded(); got != n {
			b.Fatalf("recorded %d keys, want %d", got, n)
		}
		b.ReportMetric(float64(n)/took.Seconds(), "keys/s")
		d.Shutdown(context.Background())
		b.StartTimer()
	}
}
