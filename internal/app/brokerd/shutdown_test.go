package brokerd

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/store"
)

// TestShutdownWithReplaysRunning asks for many replays and shuts down with a deadline that has already passed
// once the first batch has arrived. Whatever Shutdown finds, the state file must not be closed under a replay:
// if it reports replays still running, the store must still be readable, and a later Shutdown closes it.
func TestShutdownWithReplaysRunning(t *testing.T) {
	const nKeys, nWorkers = 5000, 10
	state := filepath.Join(t.TempDir(), "state.db")
	fillState(t, state, nKeys)

	// mochi's client goroutines may log after Shutdown has returned, so the daemon logs nowhere.
	cfg := testConfig(t, state)
	for i := 0; i < nWorkers; i++ {
		cfg.Workers[fmt.Sprintf("gw%02d", i)] = config.Worker{}
	}
	d, err := Start(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	var first *testenv.Client
	for i := 0; i < nWorkers; i++ {
		name := fmt.Sprintf("gw%02d", i)
		c := testenv.Connect(t, d.MQTTAddr(), name, testenv.ClientOptions{Username: "wgkex", Password: "shared"})
		c.Subscribe(t, wire.ReplayKeysTopic(name))
		c.Publish(t, wire.ReplayRequestTopic(name), `{"domains":["ffmuc_welt"]}`, 1, false)
		if first == nil {
			first = c
		}
	}
	first.WaitFor(t, wire.ReplayKeysTopic("gw00"))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = d.Shutdown(ctx)
	if _, readErr := d.Store.Workers(); err != nil {
		t.Logf("shutdown with replays running: %v", err)
		if readErr != nil {
			t.Fatalf("Shutdown closed the state file under running replays: %v", readErr)
		}
		if err := d.Shutdown(context.Background()); err != nil {
			t.Fatalf("second Shutdown: %v", err)
		}
	} else {
		t.Log("the replays had stopped in time")
	}
	if _, err := d.Store.Workers(); err == nil {
		t.Error("state file still open after Shutdown succeeded")
	}
}

// fillState writes n fresh keys of ffmuc_welt, all seen now, into a new state file at path, from 32 goroutines
// so that they share the log's groups, and closes it.
func fillState(tb testing.TB, path string, n int) {
	tb.Helper()
	st, err := store.Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Now()
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := w; i < n; i += 32 {
				if err := st.PutKey(broker.KeyRecord{Key: testenv.NewKey(tb).PublicKey().String(), Domain: "ffmuc_welt", FirstSeen: now, LastSeen: now}); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := st.Close(); err != nil {
		tb.Fatal(err)
	}
}
