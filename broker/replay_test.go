package broker_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// gated is a Publisher whose replay publishes wait until the test opens the gate; entered reports each one that
// is waiting.
type gated struct {
	recorder
	gate    chan struct{}
	entered chan string
}

func (g *gated) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if strings.HasPrefix(topic, "wgkex/replay/") {
		g.entered <- topic
		<-g.gate
	}
	return g.recorder.Publish(topic, payload, retain, qos)
}

func newGatedEnv(t *testing.T) (*env, *gated) {
	t.Helper()
	e := newEnv(t, "", nil)
	g := &gated{gate: make(chan struct{}), entered: make(chan string, 10000)}
	b, err := broker.New(e.st, g, testenv.Logger(t), broker.Options{
		Domains: []string{"ffmuc_welt", "ffwert_city"}, ReplayWindow: 3 * time.Hour, ReplayBatch: 2,
		Now: func() time.Time { return e.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	e.b = b
	for i := range 5 {
		k := fmt.Sprintf("%042dA=", i)
		e.st.PutKey(broker.KeyRecord{Key: k[len(k)-44:], Domain: "ffmuc_welt", FirstSeen: e.now, LastSeen: e.now})
	}
	return e, g
}

func request(b *broker.Broker, worker string) {
	b.HandleReplayRequest(wire.ReplayRequestTopic(worker), []byte(`{"domains":["ffmuc_welt"]}`))
}

// TestReplayQueue: a fixed pool runs the replays: thousands of requests start no goroutine each, and repeated
// requests for a worker and domain still waiting are answered once.
func TestReplayQueue(t *testing.T) {
	e, g := newGatedEnv(t)
	request(e.b, "busy1")
	request(e.b, "busy2")
	<-g.entered // both pool goroutines wait in Publish
	<-g.entered
	before := runtime.NumGoroutine()
	for i := range 2000 {
		request(e.b, fmt.Sprint("w", i%1000))
	}
	if n := runtime.NumGoroutine() - before; n > 5 {
		t.Errorf("2000 replay requests started %d goroutines", n)
	}
	close(g.gate)
	e.b.WaitReplays()
	first := map[string]int{} // worker → replays started (batches with seq 0)
	for _, m := range g.take() {
		topic, _, _ := strings.Cut(m, " ")
		if strings.Contains(m, `"seq":0,`) {
			first[strings.TrimSuffix(strings.TrimPrefix(topic, "wgkex/replay/"), "/keys")]++
		}
	}
	if len(first) != 1002 {
		t.Errorf("%d workers got a replay, want 1002", len(first))
	}
	for w, n := range first {
		if n != 1 {
			t.Errorf("worker %s got %d replays, want 1 (its second request was queued with the first)", w, n)
		}
	}
}

// TestStopReplays: StopReplays waits for the running replays, which stop after their current batch, drops the
// queued ones and refuses new requests; nothing is published after it returned.
func TestStopReplays(t *testing.T) {
	e, g := newGatedEnv(t)
	request(e.b, "run1")
	request(e.b, "run2")
	request(e.b, "queued")
	<-g.entered
	<-g.entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := e.b.StopReplays(ctx); err == nil {
		t.Fatal("StopReplays returned while two replays were publishing")
	}
	close(g.gate)
	if err := e.b.StopReplays(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := g.take()
	if len(got) != 2 {
		t.Errorf("published %d messages, want the 2 batches in flight:\n%s", len(got), strings.Join(got, "\n"))
	}
	request(e.b, "late")
	e.b.WaitReplays()
	if got := g.take(); len(got) != 0 {
		t.Errorf("published after StopReplays: %q", got)
	}
}
