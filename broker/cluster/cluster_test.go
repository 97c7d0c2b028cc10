package cluster

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/broker/brokertest"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/store"
)

const (
	key1   = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	gwKey4 = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
	gwKey7 = "PcKkakZcTEx3LKh+G06Opb8/esg08aWK33A5/Ff1YXE="
)

// recorder is a Publisher that keeps what was published, and a Syncer that counts its rounds.
type recorder struct {
	mu  sync.Mutex
	msg []string
	// deliver, if set, gets every message after it is recorded.
	deliver func(topic string, payload []byte)
	syncs   atomic.Int32
}

func (r *recorder) Sync(context.Context) error {
	r.syncs.Add(1)
	return nil
}

func (r *recorder) Publish(topic string, payload []byte, retain bool, qos byte) error {
	r.mu.Lock()
	r.msg = append(r.msg, fmt.Sprintf("%s %s retain=%v qos=%d", topic, payload, retain, qos))
	r.mu.Unlock()
	if r.deliver != nil {
		r.deliver(topic, payload)
	}
	return nil
}

// msgs returns what was published so far and keeps it.
func (r *recorder) msgs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msg...)
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.msg
	r.msg = nil
	return m
}

// env is broker-a among others: a broker core and its cluster side on one state file, publishing into pub.
type env struct {
	b   *broker.Broker
	c   *Cluster
	st  *store.Store
	pub *recorder
	now time.Time
}

func newEnv(t *testing.T, mod func(*Options), wrap ...func(*store.Store) Store) *env {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &env{st: st, pub: &recorder{}, now: time.Unix(1_700_000_000, 0)}
	now := func() time.Time { return e.now }
	domains := []string{"ffmuc_welt", "ffwert_city"}
	opts := Options{ID: "broker-a", Domains: domains, ReplayWindow: 3 * time.Hour, Now: now}
	if mod != nil {
		mod(&opts)
	}
	var cst Store = st
	for _, w := range wrap {
		cst = w(st)
	}
	e.c = New(cst, e.pub, testenv.Logger(t), opts)
	e.b, err = broker.New(st, e.pub, testenv.Logger(t), broker.Options{
		Domains: domains,
		Gateways: map[string]broker.Gateway{
			"gw04.in.ffmuc.net": {Weight: 30, Location: "MUC"},
			"gw07.in.ffmuc.net": {Weight: 20},
		},
		ReplayWindow: 3 * time.Hour, ReconnectGrace: time.Hour, ReplayBatch: 2, Now: now, Peers: e.c,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.c.Handlers(e.b)
	t.Cleanup(func() {
		e.c.Stop(context.Background())
		e.b.StopReplays(context.Background())
	})
	return e
}

// worker plays a reference worker's messages (SPEC §2.1).
func (e *env) worker(name, domain, key string, peers int) {
	brokertest.Worker(e.b, name, domain, key, peers)
}

// TestPeerMessages: among several brokers, keys and choices of the others are taken, and anything forged or
// malformed on those topics (a key with a newline, a key of an unknown domain, a choice for an unknown worker or
// domain, a catch-up batch with bad keys) changes nothing.
func TestPeerMessages(t *testing.T) {
	e := newEnv(t, nil)
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 10)
	e.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 10)

	e.c.handleKey(wire.KeyTopic("ffmuc_welt"), []byte(key1))
	for _, bad := range []struct{ topic, payload string }{
		{wire.KeyTopic("ffmuc_welt"), key1[:43] + "B"},
		{wire.KeyTopic("ffmuc_welt"), gwKey4 + "\n"},
		{wire.KeyTopic("ffdon_x"), gwKey4},
		{"wireguard/ffmuc_welt/gw04", gwKey4},
	} {
		e.c.handleKey(bad.topic, []byte(bad.payload))
	}
	e.c.handleCatchupBatch(CatchupKeysTopic("broker-a"), mustJSON(t, CatchupBatch{Last: true, Keys: []CatchupKey{
		{Domain: "ffwert_city", Key: gwKey7, FirstSeen: 1, LastSeen: 2},
		{Domain: "ffwert_city", Key: "junk", FirstSeen: 1, LastSeen: 2},
		{Domain: "nowhere", Key: gwKey4, FirstSeen: 1, LastSeen: 2},
		{Domain: "ffmuc_welt", Key: gwKey4, FirstSeen: 5, LastSeen: 2},
	}}))
	if err := e.c.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Key("ffmuc_welt", key1); err != nil {
		t.Errorf("key of another broker not recorded: %v", err)
	}
	if r, err := e.st.Key("ffwert_city", gwKey7); err != nil || r.LastSeen.Unix() != 2 {
		t.Errorf("caught-up key: %+v %v", r, err)
	}
	if _, err := e.st.Key("ffmuc_welt", gwKey4); err == nil {
		t.Error("a forged key was recorded")
	}
	if got := e.c.Recorded(); got != 2 {
		t.Errorf("recorded %d keys from peers, want 2", got)
	}

	// Another broker's choice counts like our own; forged ones do not.
	e.c.handleChoice(ChoiceTopic("broker-b"), FormatChoice("gw04.in.ffmuc.net", "ffmuc_welt"))
	for _, p := range []string{"gw99/ffmuc_welt", "gw04.in.ffmuc.net/ffdon_x", "gw04.in.ffmuc.net", "/", "a/b/c"} {
		e.c.handleChoice(ChoiceTopic("broker-b"), []byte(p))
	}
	e.c.handleChoice(ChoiceTopic("broker-a"), FormatChoice("gw04.in.ffmuc.net", "ffmuc_welt")) // our own echo
	// Choices made at the same time come one a line; a bad line drops only itself.
	e.c.handleChoice(ChoiceTopic("broker-b"), []byte("gw04.in.ffmuc.net/ffmuc_welt\ngw99/x/y\ngw07.in.ffmuc.net/ffmuc_welt"))
	// A choice arriving after the worker went offline in the domain does not bring the domain back.
	e.b.HandleMetric(wire.MetricTopic("ffwert_city", "gw07.in.ffmuc.net"), []byte("-1"))
	e.c.handleChoice(ChoiceTopic("broker-b"), FormatChoice("gw07.in.ffmuc.net", "ffwert_city"))
	e.c.handleChoice(ChoiceTopic("broker-b"), FormatChoice("gw04.in.ffmuc.net", "ffwert_city"))
	for _, w := range e.b.Workers() {
		if n, ok := w.Peers["ffwert_city"]; w.Name == "gw07.in.ffmuc.net" && n != -1 || w.Name == "gw04.in.ffmuc.net" && ok {
			t.Errorf("%s ffwert_city after a choice: %d, %v", w.Name, n, ok)
		}
	}
	peers := map[string]int{}
	for _, w := range e.b.Workers() {
		peers[w.Name] = w.Peers["ffmuc_welt"]
	}
	if diff := cmp.Diff(map[string]int{"gw04.in.ffmuc.net": 12, "gw07.in.ffmuc.net": 11}, peers); diff != "" {
		t.Errorf("peers after choices (-want +got):\n%s", diff)
	}
}

// TestChoiceAnnounced: a v2 answer among several brokers announces the choice and publishes the key, both at QoS
// 1: a choice sent at QoS 0 may be dropped by a server whose queue for a busy broker is full.
func TestChoiceAnnounced(t *testing.T) {
	e := newEnv(t, nil)
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 0)
	e.pub.take()
	if _, err := e.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"wgkex/broker/broker-a/choice gw04.in.ffmuc.net/ffmuc_welt retain=false qos=1",
		"wireguard/ffmuc_welt/all " + key1 + " retain=false qos=1",
	}
	got := e.pub.take()
	slices.Sort(got) // the choice goes out while the key is stored
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
}

// TestAloneAnnouncesNothing: a broker alone on the server neither announces its choices nor waits for a sync
// round (nobody would count them); once another broker is alive it does both, and after that one is gone it stops.
func TestAloneAnnouncesNothing(t *testing.T) {
	e := newEnv(t, nil)
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 0)
	e.pub.take()
	register := func(key string) {
		t.Helper()
		if _, err := e.b.ExchangeV2(broker.Request{PublicKey: key, Domain: "ffmuc_welt"}); err != nil {
			t.Fatal(err)
		}
	}
	announced := func() (n int) {
		for _, m := range e.pub.take() {
			if strings.HasPrefix(m, ChoiceTopic("broker-a")+" ") {
				n++
			}
		}
		return n
	}
	register(key1)
	if n, s := announced(), e.pub.syncs.Load(); n != 0 || s != 0 {
		t.Errorf("alone: %d announcements, %d sync rounds, want none", n, s)
	}
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	register(gwKey7)
	if n, s := announced(), e.pub.syncs.Load(); n != 1 || s != 1 {
		t.Errorf("with broker-b alive: %d announcements, %d sync rounds, want 1 and 1", n, s)
	}
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("0"))
	register(key1)
	if n, s := announced(), e.pub.syncs.Load(); n != 0 || s != 1 {
		t.Errorf("after broker-b is gone: %d announcements, %d sync rounds in all, want 0 and 1", n, s)
	}
}

// TestChoicesShareAnnouncement: while a choice's announcement is under way, other registrations store and publish
// their keys, and their choices go together in the next announcement; no node gets its answer before its
// choice is published.
func TestChoicesShareAnnouncement(t *testing.T) {
	e := newEnv(t, nil)
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 0)
	e.pub.take()
	release, once := make(chan struct{}), sync.Once{}
	open := sync.OnceFunc(func() { close(release) })
	defer open() // a failed test does not leave the announcement hanging for Stop
	e.pub.deliver = func(topic string, _ []byte) {
		if topic == ChoiceTopic("broker-a") {
			once.Do(func() { <-release }) // the first announcement hangs
		}
	}
	const n = 8
	var answered atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{byte(i + 1)}, 32))
			if _, err := e.b.ExchangeV2(broker.Request{PublicKey: key, Domain: "ffmuc_welt"}); err != nil {
				t.Error(err)
			}
			answered.Add(1)
		}()
	}
	count := func(prefix string) (msgs, lines int) {
		for _, m := range e.pub.msgs() {
			if strings.HasPrefix(m, prefix) {
				msgs++
				lines += strings.Count(m, "\n") + 1
			}
		}
		return msgs, lines
	}
	testenv.Eventually(t, 10*time.Second, func() bool { _, keys := count("wireguard/ffmuc_welt/all "); return keys == n },
		"keys not published while a choice is announced")
	if a := answered.Load(); a != 0 {
		t.Errorf("%d nodes answered before their choice was published", a)
	}
	open()
	wg.Wait()
	// The first announcement takes the choices made before its goroutine ran (one, or all of them), the second
	// the rest.
	if msgs, choices := count("wgkex/broker/broker-a/choice "); msgs < 1 || msgs > 2 || choices != n {
		t.Errorf("%d choices in %d announcements, want %d in one or two", choices, msgs, n)
	}
}

// TestBrokersAlive: liveness of the others comes from their retained status; this broker is always listed.
func TestBrokersAlive(t *testing.T) {
	e := newEnv(t, nil)
	e.c.handleStatus(BrokerStatusTopic("broker-c"), []byte("1"))
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	e.c.handleStatus(BrokerStatusTopic("broker-c"), []byte("0"))
	e.c.handleStatus(BrokerStatusTopic("broker-d"), []byte("x"))
	e.c.handleStatus("wgkex/broker/broker-e/other", []byte("1"))
	if diff := cmp.Diff([]string{"broker-a", "broker-b"}, e.c.Alive()); diff != "" {
		t.Errorf("Brokers (-want +got):\n%s", diff)
	}
}

// TestClusterBrokers: the status lists every broker heard of with when it came or went; a repeated status keeps
// that time, this broker's own status changes nothing, and a deleted retained status (empty payload) forgets one.
func TestClusterBrokers(t *testing.T) {
	e := newEnv(t, nil)
	t0 := e.now
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	e.c.handleStatus(BrokerStatusTopic("broker-c"), []byte("1"))
	e.c.handleStatus(BrokerStatusTopic("broker-d"), []byte("0"))
	e.now = t0.Add(time.Minute)
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	e.c.handleStatus(BrokerStatusTopic("broker-c"), []byte("0"))
	e.c.handleStatus(BrokerStatusTopic("broker-a"), []byte("0"))
	e.c.handleStatus(BrokerStatusTopic("broker-d"), nil)
	want := []broker.BrokerState{
		{ID: "broker-a", Alive: true, Self: true},
		{ID: "broker-b", Alive: true, Since: t0},
		{ID: "broker-c", Since: t0.Add(time.Minute)},
	}
	if diff := cmp.Diff(want, e.b.Status().Brokers); diff != "" {
		t.Errorf("brokers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"broker-a", "broker-b"}, e.c.Alive()); diff != "" {
		t.Errorf("Brokers (-want +got):\n%s", diff)
	}
}

// TestClusterBrokersBounded: made-up broker ids cannot grow the list without end: a new broker takes the place
// of the one gone longest, none is added while all are alive, and an id longer than any name is dropped.
func TestClusterBrokersBounded(t *testing.T) {
	e := newEnv(t, nil)
	t0 := e.now
	for i := range 200 {
		e.now = t0.Add(time.Duration(i) * time.Second)
		e.c.handleStatus(BrokerStatusTopic(fmt.Sprintf("gone-%03d", i)), []byte("0"))
	}
	e.c.handleStatus(BrokerStatusTopic(strings.Repeat("x", 200)), []byte("1"))
	for i := range 100 {
		e.c.handleStatus(BrokerStatusTopic(fmt.Sprintf("live-%03d", i)), []byte("1"))
	}
	var gone, live int
	all, _ := e.c.Brokers()
	for _, s := range all {
		switch {
		case s.Self:
		case strings.HasPrefix(s.ID, "live-") && s.Alive:
			live++
		case strings.HasPrefix(s.ID, "gone-") && !s.Alive:
			gone++
		default:
			t.Errorf("unexpected broker %q", s.ID)
		}
	}
	// The 64 places: the newest gone ones made room for live ones until none was left.
	if gone != 0 || live != 64 {
		t.Errorf("%d gone and %d live brokers kept, want 0 and 64", gone, live)
	}
}

// TestReplayWaitsForCatchup: a replay request reaching a broker that is still catching up is served once the
// catch-up is done, with the keys it brought.
func TestReplayWaitsForCatchup(t *testing.T) {
	e := newEnv(t, nil)
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	e.c.handleReplayRequest(wire.ReplayRequestTopic("gw04.in.ffmuc.net"), []byte(`{"domains":["ffmuc_welt"]}`))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { e.c.catchUp(ctx, time.Time{}); close(done) }()
	// The catch-up asks broker-b; nothing is replayed before its answer.
	var asked []string
	testenv.Eventually(t, 5*time.Second, func() bool { asked = append(asked, e.pub.take()...); return len(asked) > 0 }, "no catch-up request")
	if diff := cmp.Diff([]string{`wgkex/broker/broker-b/catchup {"from":"broker-a","since":1699989200,"round":1} retain=false qos=1`}, asked); diff != "" {
		t.Fatalf("catch-up request (-want +got):\n%s", diff)
	}
	e.c.handleCatchupBatch(CatchupKeysTopic("broker-a"), mustJSON(t, CatchupBatch{Last: true, Keys: []CatchupKey{
		{Domain: "ffmuc_welt", Key: key1, FirstSeen: e.now.Unix(), LastSeen: e.now.Unix()},
	}}))
	<-done
	// The held request is served by a goroutine woken by the catch-up: wait for its replay, not for the queue,
	// which may still be empty when the catch-up returns.
	var got []string
	testenv.Eventually(t, 5*time.Second, func() bool { got = append(got, e.pub.take()...); return len(got) > 0 }, "no replay after the catch-up")
	if err := e.c.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e.b.StopReplays(context.Background()); err != nil {
		t.Fatal(err)
	}
	got = append(got, e.pub.take()...)
	want := []string{`wgkex/replay/gw04.in.ffmuc.net/keys {"domain":"ffmuc_welt","seq":0,"last":true,"keys":["` + key1 + `"]} retain=false qos=1`}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("replay after catch-up (-want +got):\n%s", diff)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCatchupSince: after a reconnect only the keys since shortly before the loss are asked for; never more than
// the replay window.
func TestCatchupSince(t *testing.T) {
	e := newEnv(t, nil)
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	for i, tc := range []struct {
		since time.Time
		want  int64
	}{
		{e.now.Add(-10 * time.Minute), e.now.Add(-10 * time.Minute).Unix()},
		{e.now.Add(-30 * time.Hour), e.now.Add(-3 * time.Hour).Unix()},
	} {
		done := make(chan struct{})
		go func() { e.c.catchUp(context.Background(), tc.since); close(done) }()
		var asked []string
		testenv.Eventually(t, 5*time.Second, func() bool { asked = append(asked, e.pub.take()...); return len(asked) > 0 }, "no catch-up request")
		want := []string{`wgkex/broker/broker-b/catchup {"from":"broker-a","since":` + fmt.Sprint(tc.want) + `,"round":` + fmt.Sprint(i+1) + `} retain=false qos=1`}
		if diff := cmp.Diff(want, asked); diff != "" {
			t.Errorf("since %v (-want +got):\n%s", tc.since, diff)
		}
		e.c.handleCatchupBatch(CatchupKeysTopic("broker-a"), []byte(`{"seq":0,"last":true,"keys":[]}`))
		<-done
	}
}

// TestCatchupRequestsCoalesced: a peer that asks again and again (a buggy or crash-looping broker) while its
// answer waits gets one more answer, from the earliest time it asked for, not one full dump per request.
func TestCatchupRequestsCoalesced(t *testing.T) {
	e := newEnv(t, nil)
	release := make(chan struct{})
	var once sync.Once
	e.pub.deliver = func(topic string, _ []byte) {
		if topic == CatchupKeysTopic("broker-b") {
			once.Do(func() { <-release }) // the first answer is being sent
		}
	}
	ask := func(from string, since int64) {
		e.c.handleCatchupRequest(CatchupRequestTopic("broker-a"), mustJSON(t, CatchupRequest{From: from, Since: since}))
	}
	ask("broker-b", 100)
	testenv.Eventually(t, 5*time.Second, func() bool { return len(e.pub.msgs()) > 0 }, "first answer not started")
	for i := range 50 {
		ask("broker-b", int64(200-i))
	}
	ask("broker-c", 300)
	close(release)
	answers := map[string]int{}
	count := func() {
		clear(answers)
		for _, m := range e.pub.msgs() {
			answers[strings.Fields(m)[0]]++
		}
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		count()
		return answers[CatchupKeysTopic("broker-b")] >= 2 && answers[CatchupKeysTopic("broker-c")] >= 1
	}, "answers missing: %v", answers)
	if err := e.c.Stop(context.Background()); err != nil { // drops answers still queued
		t.Fatal(err)
	}
	count()
	want := map[string]int{CatchupKeysTopic("broker-b"): 2, CatchupKeysTopic("broker-c"): 1}
	if diff := cmp.Diff(want, answers); diff != "" {
		t.Errorf("catch-up answers (-want +got):\n%s", diff)
	}
}

// gated holds back the write of one key until its gate is closed.
type gated struct {
	*store.Store
	key  string
	gate chan struct{}
}

func (g *gated) PutKeyLazy(r broker.KeyRecord) error {
	if r.Key == g.key {
		<-g.gate
	}
	return g.Store.PutKeyLazy(r)
}

// TestCatchupWhileKeysArrive: a catch-up ends once its own keys are recorded, even while the write of a key
// another broker published live is still pending. It used to wait on the WaitGroup of every key being recorded,
// which live keys kept adding to while it waited (Wait racing Add), so under a steady stream it could wait
// without end.
func TestCatchupWhileKeysArrive(t *testing.T) {
	g := &gated{key: key1, gate: make(chan struct{})}
	e := newEnv(t, nil, func(st *store.Store) Store { g.Store = st; return g })
	defer close(g.gate)
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	e.c.handleKey(wire.KeyTopic("ffmuc_welt"), []byte(key1)) // its write hangs
	done := make(chan struct{})
	go func() { e.c.catchUp(context.Background(), time.Time{}); close(done) }()
	testenv.Eventually(t, 5*time.Second, func() bool { return len(e.pub.take()) > 0 }, "no catch-up request")
	e.c.handleCatchupBatch(CatchupKeysTopic("broker-a"), mustJSON(t, CatchupBatch{Last: true, Keys: []CatchupKey{
		{Domain: "ffwert_city", Key: gwKey7, FirstSeen: 1, LastSeen: 2},
	}}))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the catch-up waits for the write of a live key")
	}
	if _, err := e.st.Key("ffwert_city", gwKey7); err != nil {
		t.Fatalf("catch-up ended before its key was recorded: %v", err)
	}
}

// TestLateBatchOfEarlierRound: the last batch of a peer asked before, arriving late after the catch-up has moved
// on to the next peer, does not end the round with that peer: replays held back for the catch-up wait for the
// keys the peer asked now sends.
func TestLateBatchOfEarlierRound(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Stall = 200 * time.Millisecond })
	e.c.handleStatus(BrokerStatusTopic("broker-b"), []byte("1"))
	e.c.handleStatus(BrokerStatusTopic("broker-c"), []byte("1"))
	e.c.handleReplayRequest(wire.ReplayRequestTopic("gw04.in.ffmuc.net"), []byte(`{"domains":["ffmuc_welt"]}`))
	done := make(chan struct{})
	go func() { e.c.catchUp(context.Background(), time.Time{}); close(done) }()
	// broker-b is asked first and stalls; then broker-c is asked.
	asked := map[string]CatchupRequest{}
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, m := range e.pub.take() {
			topic, payload, _ := strings.Cut(m, " ")
			id, _, _ := ParseBrokerTopic(topic)
			var r CatchupRequest
			json.Unmarshal([]byte(strings.Fields(payload)[0]), &r)
			asked[id] = r
		}
		return len(asked) == 2
	}, "asked %v", asked)
	late := fmt.Sprintf(`{"from":"broker-b","round":%d,"seq":0,"last":true,"keys":[]}`, asked["broker-b"].Round)
	e.c.handleCatchupBatch(CatchupKeysTopic("broker-a"), []byte(late))
	answer := mustJSON(t, CatchupBatch{From: "broker-c", Round: asked["broker-c"].Round, Last: true, Keys: []CatchupKey{
		{Domain: "ffmuc_welt", Key: key1, FirstSeen: e.now.Unix(), LastSeen: e.now.Unix()},
	}})
	e.c.handleCatchupBatch(CatchupKeysTopic("broker-a"), answer)
	<-done
	var got []string
	testenv.Eventually(t, 5*time.Second, func() bool { got = append(got, e.pub.take()...); return len(got) > 0 }, "no replay after the catch-up")
	e.b.WaitReplays()
	got = append(got, e.pub.take()...)
	want := []string{`wgkex/replay/gw04.in.ffmuc.net/keys {"domain":"ffmuc_welt","seq":0,"last":true,"keys":["` + key1 + `"]} retain=false qos=1`}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("replay after catch-up (-want +got):\n%s", diff)
	}
}

// TestHeldReplaysBounded: replay requests reaching a broker still catching up are held by one goroutine, each
// identical request once and at most maxHeldReplays of them, and served when the catch-up ends.
func TestHeldReplaysBounded(t *testing.T) {
	e := newEnv(t, nil)
	before := runtime.NumGoroutine()
	for i := range maxHeldReplays + 100 {
		topic := wire.ReplayRequestTopic(fmt.Sprintf("gw%d", i))
		e.c.handleReplayRequest(topic, []byte(`{"domains":["ffmuc_welt"]}`))
		e.c.handleReplayRequest(topic, []byte(`{"domains":["ffmuc_welt"]}`))
	}
	if n := runtime.NumGoroutine() - before; n > 1 {
		t.Errorf("%d goroutines more while replays wait for the catch-up, want at most 1", n)
	}
	e.c.mu.Lock()
	held := len(e.c.held)
	e.c.mu.Unlock()
	if held != maxHeldReplays {
		t.Errorf("%d replay requests held, want %d", held, maxHeldReplays)
	}
	e.c.markCaughtUp()
	sent := 0
	testenv.Eventually(t, 10*time.Second, func() bool { sent += len(e.pub.take()); return sent >= maxHeldReplays },
		"fewer than %d replays sent after the catch-up", maxHeldReplays)
	e.b.WaitReplays()
	if sent += len(e.pub.take()); sent != maxHeldReplays {
		t.Errorf("%d replays sent after the catch-up, want %d", sent, maxHeldReplays)
	}
}
