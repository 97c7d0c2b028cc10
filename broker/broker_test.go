package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/broker/brokertest"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/store"
)

// recorder is a Publisher that keeps what was published, for tests of the core alone. The MQTT path is tested
// with the real server in mqttd and brokerd.
type recorder struct {
	mu  sync.Mutex
	msg []string
	// deliver, if set, gets every message after it is recorded, as the embedded server hands the broker's own
	// publishes to its handlers on the publishing goroutine.
	deliver func(topic string, payload []byte)
}

func (r *recorder) Publish(topic string, payload []byte, retain bool, qos byte) error {
	r.note(fmt.Sprintf("%s %s retain=%v qos=%d", topic, payload, retain, qos))
	if r.deliver != nil {
		r.deliver(topic, payload)
	}
	return nil
}

func (r *recorder) note(m string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msg = append(r.msg, m)
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.msg
	r.msg = nil
	return m
}

const (
	key1   = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	gwKey4 = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
	gwKey7 = "PcKkakZcTEx3LKh+G06Opb8/esg08aWK33A5/Ff1YXE="
)

type env struct {
	b   *broker.Broker
	st  *store.Store
	pub *recorder
	now time.Time
}

func newEnv(t *testing.T, path string, mod func(*broker.Options)) *env {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "state.db")
	}
	st, err := store.Open(path, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &env{st: st, pub: &recorder{}, now: time.Unix(1_700_000_000, 0)}
	opts := broker.Options{
		Domains: []string{"ffmuc_welt", "ffwert_city"},
		Gateways: map[string]broker.Gateway{
			"gw04.in.ffmuc.net": {Weight: 30, Location: "MUC"},
			"gw07.in.ffmuc.net": {Weight: 20},
		},
		ReplayWindow:   3 * time.Hour,
		ReconnectGrace: time.Hour,
		ReplayBatch:    2,
		Now:            func() time.Time { return e.now },
	}
	if mod != nil {
		mod(&opts)
	}
	e.b, err = broker.New(st, e.pub, testenv.Logger(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.b.StopReplays(context.Background()) })
	return e
}

// worker plays a reference worker's messages (SPEC §2.1).
func (e *env) worker(name, domain, key string, peers int) {
	brokertest.Worker(e.b, name, domain, key, peers)
}

func TestExchangeV1(t *testing.T) {
	e := newEnv(t, "", nil)
	if err := e.b.ExchangeV1(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"wireguard/ffmuc_welt/all " + key1 + " retain=false qos=0"}
	if diff := cmp.Diff(want, e.pub.take()); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
	rec, err := e.st.Key("ffmuc_welt", key1)
	if err != nil || !rec.LastSeen.Equal(e.now) {
		t.Errorf("stored %+v, %v", rec, err)
	}
	for _, r := range []broker.Request{
		{PublicKey: key1 + "\n", Domain: "ffmuc_welt"},
		{PublicKey: "invalid", Domain: "ffmuc_welt"},
		{PublicKey: key1, Domain: "welt"},
		{PublicKey: key1, Domain: "ffdon_x"},
		{PublicKey: key1},
	} {
		if err := e.b.ExchangeV1(r); !errors.Is(err, broker.ErrBadRequest) {
			t.Errorf("ExchangeV1(%q) = %v, want ErrBadRequest", r, err)
		}
	}
	if got := e.pub.take(); len(got) != 0 {
		t.Errorf("invalid requests published %q", got)
	}
}

func TestExchangeV2(t *testing.T) {
	e := newEnv(t, "", nil)
	r := broker.Request{PublicKey: key1, Domain: "ffmuc_welt"}
	if _, err := e.b.ExchangeV2(r); !errors.Is(err, broker.ErrNoGateway) {
		t.Fatalf("no workers: err = %v, want ErrNoGateway", err)
	}
	if got := e.pub.take(); len(got) != 1 {
		t.Errorf("key must be published before the gateway check, got %q", got)
	}
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 100)
	e.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 50)
	// total 150, targets 90/60 → gw04 +10, gw07 −10.
	d, err := e.b.ExchangeV2(r)
	if err != nil {
		t.Fatal(err)
	}
	want := wire.WorkerData{ExternalAddress: "gw07.ext.ffmuc.net", Port: 40011, PublicKey: gwKey7, LinkAddress: "fe80::23b:d2ff:fe95:967f"}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("endpoint (-want +got):\n%s", diff)
	}
	rec, _ := e.st.Key("ffmuc_welt", key1)
	if rec.Gateway != "gw07.in.ffmuc.net" {
		t.Errorf("recorded gateway %q", rec.Gateway)
	}
	// The location asks for gw04 although it is above its share.
	d, err = e.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt", Location: "MUC"})
	if err != nil || d.PublicKey != gwKey4 {
		t.Errorf("location MUC gave %+v, %v", d, err)
	}
	// A worker that goes offline is no longer chosen; its domain metric −1 likewise.
	e.b.HandleStatus(wire.StatusTopic("gw07.in.ffmuc.net"), []byte("0"))
	d, _ = e.b.ExchangeV2(r)
	if d.PublicKey != gwKey4 {
		t.Errorf("with gw07 offline got %s", d.PublicKey)
	}
	e.b.HandleMetric(wire.MetricTopic("ffmuc_welt", "gw04.in.ffmuc.net"), []byte("-1"))
	if _, err := e.b.ExchangeV2(r); !errors.Is(err, broker.ErrNoGateway) {
		t.Errorf("all offline: err = %v", err)
	}
	// An online worker with metrics but no data for the domain is not offered: the reference chose it and
	// answered 500 "could not get gateway data"; a node is better off with a gateway that can take it, or a 400.
	e.b.HandleStatus(wire.StatusTopic("gw09"), []byte("1"))
	e.b.HandleMetric(wire.MetricTopic("ffwert_city", "gw09"), []byte("0"))
	if _, err := e.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffwert_city"}); !errors.Is(err, broker.ErrNoGateway) {
		t.Errorf("no data: err = %v", err)
	}
}

// TestEndpointWithdrawn: an empty payload on a worker's data topic (its retained data cleared) withdraws its
// endpoint: the gateway is not offered for that domain until it publishes its data again, and the status page
// no longer lists it as serving the domain.
func TestEndpointWithdrawn(t *testing.T) {
	e := newEnv(t, "", nil)
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 5)
	e.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 0)
	r := broker.Request{PublicKey: key1, Domain: "ffmuc_welt"}
	if d, err := e.b.ExchangeV2(r); err != nil || d.PublicKey != gwKey7 {
		t.Fatalf("before: %+v, %v", d, err)
	}
	e.b.HandleData(wire.DataTopic("gw07.in.ffmuc.net", "ffmuc_welt"), nil)
	for range 3 {
		if d, err := e.b.ExchangeV2(r); err != nil || d.PublicKey != gwKey4 {
			t.Fatalf("gw07 withdrawn: %+v, %v", d, err)
		}
	}
	st := e.b.Status()
	serving := map[string][]string{}
	for _, g := range st.Gateways {
		serving[g.Name] = g.Serving
	}
	want := map[string][]string{"gw04.in.ffmuc.net": {"ffmuc_welt"}, "gw07.in.ffmuc.net": {}}
	if diff := cmp.Diff(want, serving); diff != "" {
		t.Errorf("serving (-want +got):\n%s", diff)
	}
	e.b.HandleData(wire.DataTopic("gw04.in.ffmuc.net", "ffmuc_welt"), nil)
	if _, err := e.b.ExchangeV2(r); !errors.Is(err, broker.ErrNoGateway) {
		t.Errorf("both withdrawn: err = %v", err)
	}
	e.b.HandleData(wire.DataTopic("gw-unknown", "ffmuc_welt"), nil)
	if len(e.b.Workers()) != 2 {
		t.Errorf("a withdrawal by an unknown worker created it: %+v", e.b.Workers())
	}
}

// TestInterpolationSpreads checks the +1 after each choice: 300 registrations at weights 30:20 with equal
// starting counts end 3:2, and concurrent requests lose no count (run with -race).
func TestInterpolationSpreads(t *testing.T) {
	e := newEnv(t, "", nil)
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 0)
	e.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 0)
	count := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g := 0; g < 10; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				d, err := e.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				count[d.PublicKey]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if count[gwKey4] != 180 || count[gwKey7] != 120 {
		t.Errorf("spread %d:%d, want 180:120", count[gwKey4], count[gwKey7])
	}
}

// TestSetGateways checks that weights and locations replaced at run time take effect at the next choice, also
// while registrations run concurrently (run with -race).
func TestSetGateways(t *testing.T) {
	e := newEnv(t, "", nil)
	if diff := cmp.Diff([]string{"MUC"}, e.b.Locations()); diff != "" {
		t.Errorf("Locations (-want +got):\n%s", diff)
	}
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 0)
	e.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 0)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := e.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < 50; i++ {
		e.b.SetGateways(map[string]broker.Gateway{"gw04.in.ffmuc.net": {Weight: i % 3, Location: "Vienna"}})
		_ = e.b.Locations()
	}
	close(stop)
	wg.Wait()
	// Now only gw07 is configured, in Vienna: nodes asking for Vienna get it.
	e.b.SetGateways(map[string]broker.Gateway{"gw07.in.ffmuc.net": {Weight: 1, Location: "Vienna"}})
	if diff := cmp.Diff([]string{"Vienna"}, e.b.Locations()); diff != "" {
		t.Errorf("Locations after SetGateways (-want +got):\n%s", diff)
	}
	for i := 0; i < 5; i++ {
		d, err := e.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt", Location: "Vienna"})
		if err != nil || d.PublicKey != gwKey7 {
			t.Fatalf("location Vienna after SetGateways gave %+v, %v; want gw07", d, err)
		}
	}
}

func TestMalformedMessagesDropped(t *testing.T) {
	e := newEnv(t, "", nil)
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 5)
	before := e.b.Workers()
	for _, m := range [][2]string{
		{wire.MetricTopic("ffmuc_welt", "gw04.in.ffmuc.net"), ""},
		{wire.MetricTopic("ffmuc_welt", "gw04.in.ffmuc.net"), "abc"},
		{wire.MetricTopic("unknown", "gw04.in.ffmuc.net"), "7"},
		{"wireguard-metrics/ffmuc_welt", "7"},
		{wire.StatusTopic("gw04.in.ffmuc.net"), ""},
		{wire.StatusTopic("gw04.in.ffmuc.net"), "online"},
		{wire.DataTopic("gw04.in.ffmuc.net", "ffmuc_welt"), "{not json"},
		{wire.DataTopic("gw04.in.ffmuc.net", "ffmuc_welt"), `{"Port": 1}`},
		{wire.DataTopic("gw04.in.ffmuc.net", "unknown"), string(wire.WorkerData{ExternalAddress: "x", Port: 1, PublicKey: gwKey4, LinkAddress: "fe80::1"}.Marshal())},
		{"wireguard-worker/x", "1"},
	} {
		e.b.HandleMetric(m[0], []byte(m[1]))
		e.b.HandleStatus(m[0], []byte(m[1]))
		e.b.HandleData(m[0], []byte(m[1]))
		e.b.HandleReplayRequest(m[0], []byte(m[1]))
	}
	if diff := cmp.Diff(before, e.b.Workers()); diff != "" {
		t.Errorf("state changed by garbage (-before +after):\n%s", diff)
	}
}

// TestRestart checks that a broker on the same state file answers v2 before any worker speaks again, and marks
// workers that do not reconnect within the grace period offline.
func TestRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	e := newEnv(t, path, nil)
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 10)
	e.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 1)
	if err := e.b.ExchangeV1(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"}); err != nil {
		t.Fatal(err)
	}
	e.st.Close()

	e2 := newEnv(t, path, func(o *broker.Options) { o.ReconnectGrace = 50 * time.Millisecond })
	d, err := e2.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"})
	if err != nil || d.PublicKey != gwKey7 {
		t.Fatalf("after restart v2 = %+v, %v; want gw07", d, err)
	}
	if _, err := e2.st.Key("ffmuc_welt", key1); err != nil {
		t.Errorf("key lost over restart: %v", err)
	}
	// gw04 reconnects, gw07 does not.
	e2.b.HandleStatus(wire.StatusTopic("gw04.in.ffmuc.net"), []byte("1"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e2.b.Run(ctx); close(done) }()
	testenv.Eventually(t, 5*time.Second, func() bool {
		for _, w := range e2.b.Workers() {
			if w.Name == "gw07.in.ffmuc.net" {
				return !w.Online
			}
		}
		return false
	}, "gw07 still online after the reconnect grace")
	cancel()
	<-done
	if got := e2.pub.take(); !slices.Contains(got, "wireguard-worker/gw07.in.ffmuc.net/status 0 retain=true qos=1") || slices.Contains(got, "wireguard-worker/gw04.in.ffmuc.net/status 0 retain=true qos=1") {
		t.Errorf("published %q", got)
	}
	d, err = e2.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"})
	if err != nil || d.PublicKey != gwKey4 {
		t.Errorf("after grace v2 = %+v, %v; want gw04", d, err)
	}
}

func TestReplay(t *testing.T) {
	e := newEnv(t, "", nil)
	var keys []string
	for i := 0; i < 5; i++ {
		k := fmt.Sprintf("%042dA=", i)
		k = k[len(k)-44:]
		keys = append(keys, k)
		e.st.PutKey(broker.KeyRecord{Key: k, Domain: "ffmuc_welt", FirstSeen: e.now, LastSeen: e.now})
	}
	old := e.now.Add(-3*time.Hour - time.Second)
	e.st.PutKey(broker.KeyRecord{Key: key1, Domain: "ffmuc_welt", FirstSeen: old, LastSeen: old})
	e.b.HandleReplayRequest(wire.ReplayRequestTopic("gw04"), []byte(`{"domains":["ffmuc_welt","ffwert_city","nope"]}`))
	e.b.WaitReplays()
	var got []string
	batches := map[string][]wire.ReplayBatch{}
	for _, m := range e.pub.take() {
		topic, rest, _ := strings.Cut(m, " ")
		payload, _, _ := strings.Cut(rest, " retain=")
		if topic != "wgkex/replay/gw04/keys" || !strings.HasSuffix(m, "retain=false qos=1") {
			t.Errorf("replay published %q", m)
		}
		var b wire.ReplayBatch
		if err := json.Unmarshal([]byte(payload), &b); err != nil {
			t.Fatal(err)
		}
		batches[b.Domain] = append(batches[b.Domain], b)
		if b.Domain == "ffmuc_welt" {
			got = append(got, b.Keys...)
		}
	}
	sort.Strings(got)
	if diff := cmp.Diff(keys, got); diff != "" {
		t.Errorf("replayed keys (-want +got):\n%s", diff)
	}
	w := batches["ffmuc_welt"]
	if len(w) != 3 || !w[2].Last || w[0].Last || w[2].Seq != 2 {
		t.Errorf("ffmuc_welt batches %+v, want 3 with the last marked", w)
	}
	if c := batches["ffwert_city"]; len(c) != 1 || !c[0].Last || len(c[0].Keys) != 0 {
		t.Errorf("empty domain batches %+v", c)
	}
}

// TestAlone: a broker alone on its embedded server lists no broker on the status page.
func TestAlone(t *testing.T) {
	if got := newEnv(t, "", nil).b.Status().Brokers; got == nil || len(got) != 0 {
		t.Errorf("brokers of a broker alone: %#v, want []", got)
	}
}
