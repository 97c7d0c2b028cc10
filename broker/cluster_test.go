package broker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

func clustered(o *broker.Options) { o.ID = "broker-a" }

// TestPeerMessages: among several brokers, keys and choices of the others are taken, and anything forged or
// malformed on those topics (a key with a newline, a key of an unknown domain, a choice for an unknown worker or
// domain, a catch-up batch with bad keys) changes nothing.
func TestPeerMessages(t *testing.T) {
	e := newEnv(t, "", clustered)
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 10)
	e.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 10)

	e.b.HandlePeerKey(wire.KeyTopic("ffmuc_welt"), []byte(key1))
	for _, bad := range []struct{ topic, payload string }{
		{wire.KeyTopic("ffmuc_welt"), key1[:43] + "B"},
		{wire.KeyTopic("ffmuc_welt"), gwKey4 + "\n"},
		{wire.KeyTopic("ffdon_x"), gwKey4},
		{"wireguard/ffmuc_welt/gw04", gwKey4},
	} {
		e.b.HandlePeerKey(bad.topic, []byte(bad.payload))
	}
	e.b.HandleCatchupBatch(wire.CatchupKeysTopic("broker-a"), mustJSON(t, wire.CatchupBatch{Last: true, Keys: []wire.CatchupKey{
		{Domain: "ffwert_city", Key: gwKey7, FirstSeen: 1, LastSeen: 2},
		{Domain: "ffwert_city", Key: "junk", FirstSeen: 1, LastSeen: 2},
		{Domain: "nowhere", Key: gwKey4, FirstSeen: 1, LastSeen: 2},
		{Domain: "ffmuc_welt", Key: gwKey4, FirstSeen: 5, LastSeen: 2},
	}}))
	if err := e.b.StopCluster(context.Background()); err != nil {
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
	if got := e.b.RecordedFromPeers(); got != 2 {
		t.Errorf("recorded %d keys from peers, want 2", got)
	}

	// Another broker's choice counts like our own; forged ones do not.
	e.b.HandlePeerChoice(wire.ChoiceTopic("broker-b"), wire.FormatChoice("gw04.in.ffmuc.net", "ffmuc_welt"))
	for _, p := range []string{"gw99/ffmuc_welt", "gw04.in.ffmuc.net/ffdon_x", "gw04.in.ffmuc.net", "/", "a/b/c"} {
		e.b.HandlePeerChoice(wire.ChoiceTopic("broker-b"), []byte(p))
	}
	e.b.HandlePeerChoice(wire.ChoiceTopic("broker-a"), wire.FormatChoice("gw04.in.ffmuc.net", "ffmuc_welt")) // our own echo
	// A choice arriving after the worker went offline in the domain does not bring the domain back.
	e.b.HandleMetric(wire.MetricTopic("ffwert_city", "gw07.in.ffmuc.net"), []byte("-1"))
	e.b.HandlePeerChoice(wire.ChoiceTopic("broker-b"), wire.FormatChoice("gw07.in.ffmuc.net", "ffwert_city"))
	e.b.HandlePeerChoice(wire.ChoiceTopic("broker-b"), wire.FormatChoice("gw04.in.ffmuc.net", "ffwert_city"))
	for _, w := range e.b.Workers() {
		if n, ok := w.Peers["ffwert_city"]; w.Name == "gw07.in.ffmuc.net" && n != -1 || w.Name == "gw04.in.ffmuc.net" && ok {
			t.Errorf("%s ffwert_city after a choice: %d, %v", w.Name, n, ok)
		}
	}
	peers := map[string]int{}
	for _, w := range e.b.Workers() {
		peers[w.Name] = w.Peers["ffmuc_welt"]
	}
	if diff := cmp.Diff(map[string]int{"gw04.in.ffmuc.net": 11, "gw07.in.ffmuc.net": 10}, peers); diff != "" {
		t.Errorf("peers after choices (-want +got):\n%s", diff)
	}
}

// TestChoiceAnnounced: a v2 answer among several brokers announces the choice before the key, which goes out at
// QoS 1; alone, the broker publishes exactly as the reference.
func TestChoiceAnnounced(t *testing.T) {
	e := newEnv(t, "", clustered)
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 0)
	e.pub.take()
	if _, err := e.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"wgkex/broker/broker-a/choice gw04.in.ffmuc.net/ffmuc_welt retain=false qos=0",
		"wireguard/ffmuc_welt/all " + key1 + " retain=false qos=1",
	}
	if diff := cmp.Diff(want, e.pub.take()); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
}

// TestBrokersAlive: liveness of the others comes from their retained status; this broker is always listed.
func TestBrokersAlive(t *testing.T) {
	e := newEnv(t, "", clustered)
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-c"), []byte("1"))
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-b"), []byte("1"))
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-c"), []byte("0"))
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-d"), []byte("x"))
	e.b.HandleBrokerStatus("wgkex/broker/broker-e/other", []byte("1"))
	if diff := cmp.Diff([]string{"broker-a", "broker-b"}, e.b.Brokers()); diff != "" {
		t.Errorf("Brokers (-want +got):\n%s", diff)
	}
	if got := newEnv(t, "", nil).b.Brokers(); got != nil {
		t.Errorf("Brokers of a broker alone: %q", got)
	}
}

// TestClusterBrokers: the status lists every broker heard of with when it came or went; a repeated status keeps
// that time, this broker's own status changes nothing, and a deleted retained status (empty payload) forgets one.
func TestClusterBrokers(t *testing.T) {
	e := newEnv(t, "", clustered)
	t0 := e.now
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-b"), []byte("1"))
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-c"), []byte("1"))
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-d"), []byte("0"))
	e.now = t0.Add(time.Minute)
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-b"), []byte("1"))
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-c"), []byte("0"))
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-a"), []byte("0"))
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-d"), nil)
	want := []broker.BrokerState{
		{ID: "broker-a", Alive: true, Self: true},
		{ID: "broker-b", Alive: true, Since: t0},
		{ID: "broker-c", Since: t0.Add(time.Minute)},
	}
	if diff := cmp.Diff(want, e.b.Status().Brokers); diff != "" {
		t.Errorf("brokers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"broker-a", "broker-b"}, e.b.Brokers()); diff != "" {
		t.Errorf("Brokers (-want +got):\n%s", diff)
	}
	if got := newEnv(t, "", nil).b.Status().Brokers; got == nil || len(got) != 0 {
		t.Errorf("brokers of a broker alone: %#v, want []", got)
	}
}

// TestClusterBrokersBounded: made-up broker ids cannot grow the list without end: a new broker takes the place
// of the one gone longest, none is added while all are alive, and an id longer than any name is dropped.
func TestClusterBrokersBounded(t *testing.T) {
	e := newEnv(t, "", clustered)
	t0 := e.now
	for i := range 200 {
		e.now = t0.Add(time.Duration(i) * time.Second)
		e.b.HandleBrokerStatus(wire.BrokerStatusTopic(fmt.Sprintf("gone-%03d", i)), []byte("0"))
	}
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic(strings.Repeat("x", 200)), []byte("1"))
	for i := range 100 {
		e.b.HandleBrokerStatus(wire.BrokerStatusTopic(fmt.Sprintf("live-%03d", i)), []byte("1"))
	}
	var gone, live int
	for _, s := range e.b.ClusterBrokers() {
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
	e := newEnv(t, "", clustered)
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-b"), []byte("1"))
	e.b.HandleClusterReplayRequest(wire.ReplayRequestTopic("gw04.in.ffmuc.net"), []byte(`{"domains":["ffmuc_welt"]}`))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { e.b.CatchUp(ctx, time.Time{}); close(done) }()
	// The catch-up asks broker-b; nothing is replayed before its answer.
	var asked []string
	testenv.Eventually(t, 5*time.Second, func() bool { asked = append(asked, e.pub.take()...); return len(asked) > 0 }, "no catch-up request")
	if diff := cmp.Diff([]string{`wgkex/broker/broker-b/catchup {"from":"broker-a","since":1699989200} retain=false qos=1`}, asked); diff != "" {
		t.Fatalf("catch-up request (-want +got):\n%s", diff)
	}
	e.b.HandleCatchupBatch(wire.CatchupKeysTopic("broker-a"), mustJSON(t, wire.CatchupBatch{Last: true, Keys: []wire.CatchupKey{
		{Domain: "ffmuc_welt", Key: key1, FirstSeen: e.now.Unix(), LastSeen: e.now.Unix()},
	}}))
	<-done
	// The held request is served by a goroutine woken by the catch-up: wait for its replay, not for the queue,
	// which may still be empty when the catch-up returns.
	var got []string
	testenv.Eventually(t, 5*time.Second, func() bool { got = append(got, e.pub.take()...); return len(got) > 0 }, "no replay after the catch-up")
	if err := e.b.StopCluster(context.Background()); err != nil {
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
	e := newEnv(t, "", clustered)
	e.b.HandleBrokerStatus(wire.BrokerStatusTopic("broker-b"), []byte("1"))
	for _, tc := range []struct {
		since time.Time
		want  int64
	}{
		{e.now.Add(-10 * time.Minute), e.now.Add(-10 * time.Minute).Unix()},
		{e.now.Add(-30 * time.Hour), e.now.Add(-3 * time.Hour).Unix()},
	} {
		done := make(chan struct{})
		go func() { e.b.CatchUp(context.Background(), tc.since); close(done) }()
		var asked []string
		testenv.Eventually(t, 5*time.Second, func() bool { asked = append(asked, e.pub.take()...); return len(asked) > 0 }, "no catch-up request")
		want := []string{`wgkex/broker/broker-b/catchup {"from":"broker-a","since":` + fmt.Sprint(tc.want) + `} retain=false qos=1`}
		if diff := cmp.Diff(want, asked); diff != "" {
			t.Errorf("since %v (-want +got):\n%s", tc.since, diff)
		}
		e.b.HandleCatchupBatch(wire.CatchupKeysTopic("broker-a"), []byte(`{"seq":0,"last":true,"keys":[]}`))
		<-done
	}
}

// TestCatchupRequestsCoalesced: a peer that asks again and again (a buggy or crash-looping broker) while its
// answer waits gets one more answer, from the earliest time it asked for, not one full dump per request.
func TestCatchupRequestsCoalesced(t *testing.T) {
	e := newEnv(t, "", clustered)
	release := make(chan struct{})
	var once sync.Once
	e.pub.deliver = func(topic string, _ []byte) {
		if topic == wire.CatchupKeysTopic("broker-b") {
			once.Do(func() { <-release }) // the first answer is being sent
		}
	}
	ask := func(from string, since int64) {
		e.b.HandleCatchupRequest(wire.CatchupRequestTopic("broker-a"), mustJSON(t, wire.CatchupRequest{From: from, Since: since}))
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
		return answers[wire.CatchupKeysTopic("broker-b")] >= 2 && answers[wire.CatchupKeysTopic("broker-c")] >= 1
	}, "answers missing: %v", answers)
	if err := e.b.StopCluster(context.Background()); err != nil { // drops answers still queued
		t.Fatal(err)
	}
	count()
	want := map[string]int{wire.CatchupKeysTopic("broker-b"): 2, wire.CatchupKeysTopic("broker-c"): 1}
	if diff := cmp.Diff(want, answers); diff != "" {
		t.Errorf("catch-up answers (-want +got):\n%s", diff)
	}
}
