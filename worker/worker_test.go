package worker

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

const (
	keyA = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	keyB = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
	keyC = "PcKkakZcTEx3LKh+G06Opb8/esg08aWK33A5/Ff1YXE="
	keyD = "4WAyZBpHcyRE5+L4ApV+jjWgj4q1o3CrCQ3NjclXfV4="
)

var welt = dataplane.LinkFor("welt")

// lines is the Fake's String() of the given lines: sorted, one per line.
func lines(l ...string) string {
	sort.Strings(l)
	return strings.Join(l, "\n")
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newAgent(t *testing.T, fake *dataplane.Fake) (*Agent, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	a := New(fake, testenv.Logger(t), Options{
		Name:         "gw04",
		Domains:      map[string]string{"ffmuc_welt": "welt", "ffmuc_nord": "nord"},
		ExternalName: "gw04.ext.ffmuc.net",
		StaleTimeout: 3 * time.Hour,
		Grace:        10 * time.Minute,
		Whitelist:    []string{keyD},
		RetryDelay:   time.Millisecond,
		Now:          c.now,
	})
	return a, c
}

func TestEnqueueDedupeAndBatch(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, _ := newAgent(t, fake)
	for _, k := range []string{keyA, keyB, keyA, keyC, keyB} {
		if err := a.Enqueue("ffmuc_welt", k); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.Pending(); n != 3 {
		t.Errorf("pending %d, want 3 (duplicates dropped while pending)", n)
	}
	for _, bad := range [][2]string{{"ffmuc_welt", keyA + "\n"}, {"ffmuc_welt", "PUB_KEY"}, {"ffmuc_sued", keyA}} {
		if err := a.Enqueue(bad[0], bad[1]); err == nil {
			t.Errorf("Enqueue(%q, %q): want error", bad[0], bad[1])
		}
	}
	a.ApplyPending()
	if diff := cmp.Diff([]string{"add wg-welt 3"}, fake.Log); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	want := lines("wg-welt "+keyC+" peer route fdb", "wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb")
	if diff := cmp.Diff(want, fake.String()); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	// Once applied, the same key may be queued again.
	a.Enqueue("ffmuc_welt", keyA)
	if a.Pending() != 1 {
		t.Errorf("re-registration after apply not queued")
	}
}

// TestRetries: a key failing twice is applied on the third try; a key failing always is dropped after
// maxAttempts; neither holds up the other keys; a missing interface fails only its domain.
func TestRetries(t *testing.T) {
	fake := dataplane.NewFake(welt)
	var mu sync.Mutex
	fails := map[string]int{}
	fake.Fail = func(step, key string) error {
		mu.Lock()
		defer mu.Unlock()
		if step == "fdb" && key == keyB && fails[keyB] < 2 {
			fails[keyB]++
			return errors.New("EBUSY")
		}
		if step == "route" && key == keyC {
			fails[keyC]++
			return errors.New("broken")
		}
		return nil
	}
	a, _ := newAgent(t, fake)
	for _, k := range []string{keyA, keyB, keyC} {
		a.Enqueue("ffmuc_welt", k)
	}
	a.Enqueue("ffmuc_nord", keyA) // wg-nord does not exist
	testenv.Eventually(t, 10*time.Second, func() bool {
		a.ApplyPending()
		s := a.Stats()
		return s.Dropped == 2 && s.Applied >= 2
	}, "retries did not settle: %+v", a.Stats())
	want := lines("wg-welt "+keyC+" peer fdb", "wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb")
	if diff := cmp.Diff(want, fake.String()); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	mu.Lock()
	defer mu.Unlock()
	if fails[keyC] != maxAttempts {
		t.Errorf("keyC tried %d times, want %d", fails[keyC], maxAttempts)
	}
}

func TestConnectedPeersVector(t *testing.T) {
	// SPEC §9: 10 peers with handshakes i minutes + 5 s ago (i = 0…9) → 3 connected.
	now := time.Unix(1_700_000_000, 0)
	var peers []dataplane.Peer
	for i := 0; i < 10; i++ {
		peers = append(peers, dataplane.Peer{PublicKey: fmt.Sprint(i), LastHandshake: now.Add(-time.Duration(i)*time.Minute - 5*time.Second)})
	}
	peers = append(peers, dataplane.Peer{PublicKey: "never"})
	if got := countConnected(peers, now); got != 3 {
		t.Errorf("countConnected = %d, want 3", got)
	}
}

func TestSweep(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake)
	for _, k := range []string{keyA, keyB, keyC, keyD} {
		a.Enqueue("ffmuc_welt", k)
	}
	a.ApplyPending()
	c.advance(4 * time.Hour)
	now := c.now()
	fake.SetHandshake(welt, keyA, now.Add(-3*time.Hour+time.Second)) // 10799 s: keep
	fake.SetHandshake(welt, keyB, now.Add(-3*time.Hour))             // 10800 s: stale (inclusive)
	fake.SetHandshake(welt, keyD, now.Add(-5*time.Hour))             // whitelisted
	// keyC never handshaked, provisioned 4 h ago: past grace.
	res, err := a.Sweep("ffmuc_welt")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(SweepResult{Peers: 4, Stale: 1, Never: 1, Kept: 1}, res); diff != "" {
		t.Errorf("sweep (-want +got):\n%s", diff)
	}
	want := lines("wg-welt "+keyD+" peer route fdb", "wg-welt "+keyA+" peer route fdb")
	if diff := cmp.Diff(want, fake.String()); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
}

func TestSweepGrace(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake)
	// A peer found on the device at start (never handshaked, untracked) gets one grace period from start.
	fake.AddPeers(welt, []string{keyB})
	c.advance(5 * time.Minute)
	a.Enqueue("ffmuc_welt", keyA)
	a.ApplyPending() // keyA provisioned at start+5m
	c.advance(4*time.Minute + 59*time.Second)
	if res, _ := a.Sweep("ffmuc_welt"); res.Deferred != 2 || res.Never != 0 {
		t.Errorf("at start+9m59s: %+v", res)
	}
	c.advance(time.Second) // start+10m: keyB's grace from start is over; keyA has 5 more minutes
	if res, _ := a.Sweep("ffmuc_welt"); res.Never != 1 || res.Deferred != 1 {
		t.Errorf("at start+10m: %+v", res)
	}
	// Re-provisioning refreshes the grace: at 599 s after it the peer stays, at 600 s it goes.
	c.advance(4 * time.Minute)
	a.Enqueue("ffmuc_welt", keyA)
	a.ApplyPending()
	c.advance(599 * time.Second)
	if res, _ := a.Sweep("ffmuc_welt"); res.Deferred != 1 {
		t.Errorf("599 s after re-provisioning: %+v", res)
	}
	c.advance(time.Second)
	if res, _ := a.Sweep("ffmuc_welt"); res.Never != 1 {
		t.Errorf("600 s after re-provisioning: %+v", res)
	}
	if s := fake.String(); s != "" {
		t.Errorf("left %q", s)
	}
}

// TestSweepPartialFailure: a removal failing at the route leaves the peer for the next sweep, which finishes it;
// the failure does not stop the sweep of the other peers.
func TestSweepPartialFailure(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake)
	a.Enqueue("ffmuc_welt", keyA)
	a.Enqueue("ffmuc_welt", keyB)
	a.ApplyPending()
	c.advance(time.Hour)
	broken := true
	fake.Fail = func(step, key string) error {
		if broken && step == "remove-route" && key == keyB {
			return errors.New("netlink: device busy")
		}
		return nil
	}
	res, err := a.Sweep("ffmuc_welt")
	if err == nil || res.Failed != 1 || res.Never != 2 {
		t.Errorf("first sweep: %+v, %v", res, err)
	}
	if diff := cmp.Diff("wg-welt "+keyB+" peer route", fake.String()); diff != "" {
		t.Errorf("after partial failure (-want +got):\n%s", diff)
	}
	broken = false
	if res, err := a.Sweep("ffmuc_welt"); err != nil || res.Never != 1 {
		t.Errorf("second sweep: %+v, %v", res, err)
	}
	if s := fake.String(); s != "" {
		t.Errorf("left %q", s)
	}
}

// TestSweepRace: a key re-registered while the sweep removes it is applied after the removal and survives.
func TestSweepRace(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake)
	a.Enqueue("ffmuc_welt", keyA)
	a.ApplyPending()
	c.advance(time.Hour)
	applied := make(chan struct{})
	var once sync.Once
	fake.Fail = func(step, key string) error {
		if step == "remove-fdb" {
			once.Do(func() {
				a.Enqueue("ffmuc_welt", keyA) // the node registers again, mid-sweep
				go func() { a.ApplyPending(); close(applied) }()
			})
		}
		return nil
	}
	if res, err := a.Sweep("ffmuc_welt"); err != nil || res.Never != 1 {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
	<-applied
	if diff := cmp.Diff("wg-welt "+keyA+" peer route fdb", fake.String()); diff != "" {
		t.Errorf("re-registered peer (-want +got):\n%s", diff)
	}
	// And it is within its grace now.
	if res, _ := a.Sweep("ffmuc_welt"); res.Deferred != 1 {
		t.Errorf("next sweep: %+v", res)
	}
}

func TestReconcileNotFresh(t *testing.T) {
	fake := dataplane.NewFake(welt)
	fake.AddPeers(welt, []string{keyA})
	a, c := newAgent(t, fake)
	if n, err := a.Reconcile("ffmuc_welt"); n != 1 || err != nil {
		t.Fatalf("Reconcile = %d, %v", n, err)
	}
	a.ApplyPending()
	c.advance(10 * time.Minute) // grace counts from start, not from the reconcile
	if res, _ := a.Sweep("ffmuc_welt"); res.Never != 1 {
		t.Errorf("sweep after reconcile: %+v", res)
	}
	if _, err := a.Reconcile("ffmuc_nord"); err == nil {
		t.Error("Reconcile of a missing interface: want error")
	}
}

func TestHandleMessage(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, _ := newAgent(t, fake)
	for _, m := range [][2]string{
		{"wireguard/ffmuc_welt/all", keyA},
		{"wireguard/ffmuc_welt/gateway", keyB},
		{"wgkex/replay/gw04/keys", `{"domain":"ffmuc_welt","seq":0,"last":true,"keys":["` + keyC + `","bogus"]}`},
		{"wgkex/replay/gw05/keys", `{"domain":"ffmuc_welt","seq":0,"last":true,"keys":["` + keyD + `"]}`}, // not ours
		{"wgkex/replay/gw04/keys", `{broken`},
		{"wireguard/ffmuc_welt/all", keyD + "\n"},
		{"wireguard/ffmuc_welt/all", ""},
		{"wireguard/ffmuc_sued/all", keyD},
		{"wireguard/ffmuc_welt", keyD},
		{"something/else", keyD},
	} {
		a.HandleMessage(m[0], []byte(m[1]))
	}
	a.ApplyPending()
	want := lines("wg-welt "+keyC+" peer route fdb", "wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb")
	if diff := cmp.Diff(want, fake.String()); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
}

func FuzzHandleMessage(f *testing.F) {
	f.Add("wireguard/ffmuc_welt/all", []byte(keyA))
	f.Add("wgkex/replay/gw04/keys", []byte(`{"domain":"ffmuc_welt","seq":0,"last":true,"keys":["`+keyA+`"]}`))
	f.Add("wireguard//", []byte{})
	fake := dataplane.NewFake(welt)
	a := New(fake, testenv.Logger(f), Options{Name: "gw04", Domains: map[string]string{"ffmuc_welt": "welt"}, StaleTimeout: time.Hour})
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		a.HandleMessage(topic, payload)
		_, batches := a.q.take()
		for d, items := range batches {
			for _, it := range items {
				if d != "ffmuc_welt" || !strings.HasSuffix(it.key, "=") || len(it.key) != 44 {
					t.Fatalf("queued %q for %q from %q", it.key, d, topic)
				}
			}
		}
	})
}

func TestServerURL(t *testing.T) {
	tests := []struct {
		m    config.MQTT
		want string
		ok   bool
	}{
		{config.MQTT{BrokerURL: "127.0.0.1", BrokerPort: 1883}, "mqtt://127.0.0.1:1883", true},
		{config.MQTT{BrokerURL: "broker.example", BrokerPort: 8883, TLS: true}, "tls://broker.example:8883", true},
		{config.MQTT{BrokerURL: "mqtt://broker", BrokerPort: 1883}, "mqtt://broker:1883", true},
		{config.MQTT{BrokerURL: "tls://broker:8884", BrokerPort: 1883}, "tls://broker:8884", true},
		{config.MQTT{BrokerURL: "::1", BrokerPort: 1883}, "mqtt://[::1]:1883", true},
		{config.MQTT{BrokerURL: "ws://broker", BrokerPort: 1883}, "", false},
		{config.MQTT{BrokerURL: "", BrokerPort: 1883}, "", false},
	}
	for _, tt := range tests {
		u, err := ServerURL(tt.m)
		if (err == nil) != tt.ok || (err == nil && u.String() != tt.want) {
			t.Errorf("ServerURL(%+v) = %v, %v; want %s", tt.m, u, err, tt.want)
		}
	}
}
