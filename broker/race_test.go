package broker_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// TestGraceExpiryLosesNoReconnect restarts a broker with many workers that were online, lets half of them report
// status 1 while the reconnect grace expires, and checks that none of those ends offline and that no status 0 is
// published for a worker after the broker has taken its 1. The publisher hands the broker's own messages back to
// its handler, as the embedded MQTT server does. Run with -race.
func TestGraceExpiryLosesNoReconnect(t *testing.T) {
	const n = 60
	path := filepath.Join(t.TempDir(), "state.db")
	e := newEnv(t, path, nil)
	var back, gone []string
	for i := 0; i < n; i++ {
		back = append(back, fmt.Sprintf("gw%02d", i))
		gone = append(gone, fmt.Sprintf("zz%02d", i)) // sorted after back: expired last
	}
	for _, name := range append(append([]string(nil), back...), gone...) {
		e.b.HandleStatus(wire.StatusTopic(name), []byte("1"))
	}
	e.st.Close()

	e2 := newEnv(t, path, func(o *broker.Options) { o.ReconnectGrace = 0 })
	e2.pub.deliver = func(topic string, payload []byte) {
		if strings.HasSuffix(topic, "/status") {
			e2.b.HandleStatus(topic, payload)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, name := range back {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			// The server retains the worker's 1, then hands it to the broker.
			e2.pub.note(wire.StatusTopic(name) + " 1 retain=true qos=1")
			e2.b.HandleStatus(wire.StatusTopic(name), []byte("1"))
			e2.pub.note("handled " + name)
		}()
	}
	go func() { e2.b.Run(ctx); close(ran) }()
	close(start)
	wg.Wait()
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, w := range e2.b.Workers() {
			if w.Name == gone[n-1] {
				return !w.Online
			}
		}
		return false
	}, "workers that did not reconnect are still online")
	cancel()
	<-ran

	online := map[string]bool{}
	for _, w := range e2.b.Workers() {
		online[w.Name] = w.Online
	}
	handled := map[string]bool{}
	for _, m := range e2.pub.take() {
		if name, ok := strings.CutPrefix(m, "handled "); ok {
			handled[name] = true
			continue
		}
		name, _ := wire.ParseStatusTopic(strings.Fields(m)[0])
		if strings.Contains(m, "/status 0 ") && handled[name] {
			t.Errorf("status 0 published for %s after the broker took its 1", name)
		}
	}
	for _, name := range back {
		if !online[name] {
			t.Errorf("%s reported 1 during the grace expiry but is offline", name)
		}
	}
	for _, name := range gone {
		if online[name] {
			t.Errorf("%s never reconnected but is online", name)
		}
	}
}

// TestWorkerRecordsInOrder changes one worker from many goroutines at once and checks after each round that the
// stored record is the state in memory: an older snapshot must never be written after a newer one. Run with -race.
func TestWorkerRecordsInOrder(t *testing.T) {
	e := newEnv(t, "", nil)
	const name = "gw04.in.ffmuc.net"
	topic := wire.MetricTopic("ffmuc_welt", name)
	for round := 0; round < 40; round++ {
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.b.HandleMetric(topic, []byte(fmt.Sprint(round*8+g)))
			}()
		}
		wg.Wait()
		stored, err := e.st.Workers()
		if err != nil {
			t.Fatal(err)
		}
		if len(stored) != 1 {
			t.Fatalf("stored %d workers, want 1", len(stored))
		}
		mem := e.b.Workers()[0]
		if diff := cmp.Diff(mem.Peers, stored[0].Peers); diff != "" {
			t.Fatalf("round %d: stored record is not the state in memory (-memory +stored):\n%s", round, diff)
		}
	}
}

// TestDelayedOfflineLosesNoReconnect: with an external server, many workers' status 0 reach the end of the offline
// delay while each worker reports 1 again at the same moment. Whichever comes first, a worker that reported 1
// must end online: the 1 either withdraws the 0 or is taken after it. Run with -race.
func TestDelayedOfflineLosesNoReconnect(t *testing.T) {
	const n = 60
	o := newOutageEnv(t, "", true)
	o.play(t, "at 0: up")
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("gw%02d", i))
		o.b.HandleStatus(wire.StatusTopic(names[i]), []byte("1"))
	}
	for _, name := range names {
		o.b.HandleStatus(wire.StatusTopic(name), []byte("0"))
	}
	due := o.clock.Add(5 * time.Second)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			o.b.HandleStatus(wire.StatusTopic(name), []byte("1"))
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-start
		o.b.Tick(due)
	}()
	close(start)
	wg.Wait()
	o.b.Tick(due.Add(time.Hour))
	for _, w := range o.b.Workers() {
		if !w.Online {
			t.Errorf("%s reported 1 while its 0 took effect but is offline", w.Name)
		}
	}
}
