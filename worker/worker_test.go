package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

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

func newAgent(t *testing.T, fake *dataplane.Fake, reg prometheus.Registerer) (*Agent, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	a, err := New(fake, testenv.Logger(t), Options{
		Name:         "gw04",
		Domains:      map[string]string{"ffmuc_welt": "welt", "ffmuc_nord": "nord"},
		ExternalName: "gw04.ext.ffmuc.net",
		StaleTimeout: 3 * time.Hour,
		Grace:        10 * time.Minute,
		Whitelist:    []string{keyD},
		RetryDelay:   time.Second,
		Now:          c.now,
		Metrics:      reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, c
}

func enqueue(t *testing.T, a *Agent, domain string, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if err := a.Enqueue(domain, k); err != nil {
			t.Fatal(err)
		}
	}
}

func checkState(t *testing.T, fake *dataplane.Fake, want string) {
	t.Helper()
	if diff := cmp.Diff(want, fake.String()); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
}

// TestBatch: keys arriving together are applied in one Dataplane call; duplicates collapse; bad input is refused.
func TestBatch(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, _ := newAgent(t, fake, nil)
	enqueue(t, a, "ffmuc_welt", keyA, keyB, keyA, keyC, keyB)
	for _, bad := range [][2]string{{"ffmuc_welt", keyA + "\n"}, {"ffmuc_welt", "PUB_KEY"}, {"ffmuc_sued", keyA}} {
		if err := a.Enqueue(bad[0], bad[1]); err == nil {
			t.Errorf("Enqueue(%q, %q): want error", bad[0], bad[1])
		}
	}
	a.pass()
	if diff := cmp.Diff([]string{"add wg-welt 3"}, fake.Log); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	checkState(t, fake, lines("wg-welt "+keyC+" peer route fdb", "wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb"))
	// A pass with nothing new does nothing; a key registered again is applied again (idempotent).
	a.pass()
	enqueue(t, a, "ffmuc_welt", keyA)
	a.pass()
	if diff := cmp.Diff([]string{"add wg-welt 3"}, fake.Log); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

// TestRetries: a failing key is retried by later passes after a doubling delay, without a replay, while the
// other keys of its batch are in place at once; a missing interface fails only its domain.
func TestRetries(t *testing.T) {
	fake := dataplane.NewFake(welt)
	var mu sync.Mutex
	tries := map[string]int{}
	fake.Fail = func(step, key string) error {
		mu.Lock()
		defer mu.Unlock()
		if step == "fdb" && key == keyB {
			tries[keyB]++
			if tries[keyB] <= 2 {
				return errors.New("EBUSY")
			}
		}
		if step == "route" && key == keyC {
			tries[keyC]++
			return errors.New("broken")
		}
		return nil
	}
	a, c := newAgent(t, fake, nil)
	enqueue(t, a, "ffmuc_welt", keyA, keyB, keyC)
	enqueue(t, a, "ffmuc_nord", keyA) // wg-nord does not exist
	next := a.pass()
	checkState(t, fake, lines("wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route", "wg-welt "+keyC+" peer fdb"))
	if want := c.now().Add(time.Second); !next.Equal(want) {
		t.Errorf("next retry %v, want %v", next, want)
	}
	a.pass() // not due yet: nothing tried
	c.advance(time.Second)
	a.pass() // keyB fails again (2nd), keyC again; both wait 2 s now
	c.advance(time.Second)
	a.pass()
	c.advance(time.Second)
	a.pass() // keyB succeeds
	checkState(t, fake, lines("wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb", "wg-welt "+keyC+" peer fdb"))
	mu.Lock()
	if tries[keyB] != 3 || tries[keyC] != 3 {
		t.Errorf("tries %v, want keyB 3 and keyC 3", tries)
	}
	mu.Unlock()
	// keyC keeps failing: retried at growing intervals, capped, until StaleTimeout after its registration.
	for i := 0; i < 100; i++ {
		c.advance(time.Minute)
		a.pass()
	}
	mu.Lock()
	if tries[keyC] < 20 || tries[keyC] > 50 {
		t.Errorf("keyC tried %d times in 100 minutes, want a capped backoff (20…50)", tries[keyC])
	}
	mu.Unlock()
	if s := a.Stats(); s.Applied != 2 {
		t.Errorf("stats %+v", s)
	}
}

// TestFailedKeyFoundInPlace: a failed key that a device read finds in place (the operator, or a step that failed
// after taking effect) is done: no retry stays due. (It used to stay failed with its retry time in the past, so
// every pass asked for the next one 1 ms later: the loop spun until the process ended.)
func TestFailedKeyFoundInPlace(t *testing.T) {
	fake := dataplane.NewFake(welt)
	broken := true
	fake.Fail = func(step, key string) error {
		if broken && step == "route" && key == keyA {
			return errors.New("netlink: no buffer space")
		}
		return nil
	}
	a, c := newAgent(t, fake, nil)
	enqueue(t, a, "ffmuc_welt", keyA)
	if next := a.pass(); next.IsZero() {
		t.Fatal("no retry scheduled for the failed key")
	}
	broken = false
	if err := fake.AddPeers(welt, []string{keyA}); err != nil { // the route is there after all
		t.Fatal(err)
	}
	a.Sync("ffmuc_welt", false)
	a.pass()
	c.advance(time.Minute)
	for i := 0; i < 3; i++ {
		if next := a.pass(); !next.IsZero() {
			t.Fatalf("pass %d: next pass due at %v (now %v) with nothing to do", i, next, c.now())
		}
	}
	if diff := cmp.Diff([]string{"add wg-welt 1", "add wg-welt 1"}, fake.Log); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

// TestWholeCallFailure: an AddPeers failure that names no key fails every key of the call; they are retried.
func TestWholeCallFailure(t *testing.T) {
	fake := dataplane.NewFake(welt)
	broken := true
	fake.Fail = func(step, key string) error {
		if step == "add" && broken {
			return errors.New("netlink socket closed")
		}
		return nil
	}
	a, c := newAgent(t, fake, nil)
	enqueue(t, a, "ffmuc_welt", keyA, keyB)
	a.pass()
	if s := a.Stats(); s.Applied != 0 || s.Failed != 2 {
		t.Errorf("stats %+v", s)
	}
	broken = false
	c.advance(time.Second)
	a.pass()
	checkState(t, fake, lines("wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb"))
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
	a, c := newAgent(t, fake, nil)
	enqueue(t, a, "ffmuc_welt", keyA, keyB, keyC, keyD)
	a.pass()
	c.advance(4 * time.Hour)
	now := c.now()
	fake.SetHandshake(welt, keyA, now.Add(-3*time.Hour+time.Second)) // 10799 s: keep
	fake.SetHandshake(welt, keyB, now.Add(-3*time.Hour))             // 10800 s: stale (inclusive)
	fake.SetHandshake(welt, keyD, now.Add(-5*time.Hour))             // whitelisted
	// keyC never handshaked, provisioned 4 h ago: past grace.
	a.Sync("ffmuc_welt", true)
	a.pass()
	checkState(t, fake, lines("wg-welt "+keyD+" peer route fdb", "wg-welt "+keyA+" peer route fdb"))
	if s := a.Stats(); s.Removed != 2 {
		t.Errorf("stats %+v", s)
	}
}

// TestSweepGrace: peers found at start get one grace period from start; a registered peer gets one from its
// registration; SPEC §4.9(3): the grace protects every recently provisioned peer, not only never-handshaked ones.
func TestSweepGrace(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake, nil)
	fake.AddPeers(welt, []string{keyB, keyC})
	fake.SetHandshake(welt, keyC, c.now().Add(-5*time.Hour)) // stale already
	a.Sync("ffmuc_welt", false)
	a.pass() // start: found keyB and keyC
	c.advance(5 * time.Minute)
	enqueue(t, a, "ffmuc_welt", keyA, keyC) // keyC registers again: its old handshake does not matter for 10 min
	a.pass()
	c.advance(4*time.Minute + 59*time.Second)
	sweep := func() { a.Sync("ffmuc_welt", true); a.pass() }
	sweep()
	checkState(t, fake, lines("wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb", "wg-welt "+keyC+" peer route fdb"))
	c.advance(time.Second) // start+10m: keyB's grace from start is over; keyA and keyC have 5 more minutes
	sweep()
	checkState(t, fake, lines("wg-welt "+keyA+" peer route fdb", "wg-welt "+keyC+" peer route fdb"))
	c.advance(5 * time.Minute)
	sweep()
	checkState(t, fake, "")
}

// TestReplayNotFresh: a replayed key that is already wanted keeps its provisioning time, so repeated replays do
// not keep a never-handshaked peer alive; a live registration does refresh it.
func TestReplayNotFresh(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake, nil)
	replay := func() {
		a.HandleMessage("wgkex/replay/gw04/keys", []byte(`{"domain":"ffmuc_welt","seq":0,"last":true,"keys":["`+keyA+`","`+keyB+`"]}`))
		a.pass()
	}
	replay()
	for i := 0; i < 3; i++ {
		c.advance(4 * time.Minute)
		replay()
	}
	enqueue(t, a, "ffmuc_welt", keyB)
	a.pass()
	a.Sync("ffmuc_welt", true)
	a.pass() // 12 min after the first replay: keyA is past its grace, keyB registered live just now
	checkState(t, fake, "wg-welt "+keyB+" peer route fdb")
}

// TestSyncRestores: routes and FDB entries lost behind the worker's back come back on the next device read;
// peers found on the device are adopted.
func TestSyncRestores(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, _ := newAgent(t, fake, nil)
	fake.AddPeers(welt, []string{keyA, keyB})
	fake.Lose(welt, keyA)
	a.Sync("ffmuc_welt", false)
	a.pass()
	checkState(t, fake, lines("wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb"))
	if diff := cmp.Diff([]string{"add wg-welt 2", "add wg-welt 1"}, fake.Log); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	a.Sync("ffmuc_nord", false) // missing interfaces: a warning and a later retry, nothing else
	if next := a.pass(); next.IsZero() {
		t.Error("no retry scheduled for the missing device")
	}
}

// TestWhitelistedPeerNotAdopted: a whitelisted peer the operator put on the device (a supernode, say) is left as
// the operator made it: no link-local address, route or FDB entry is added to it, and the sweep keeps it. The
// same key registered through MQTT is then managed like any other.
func TestWhitelistedPeerNotAdopted(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake, nil)
	fake.AddPeers(welt, []string{keyD, keyA})
	fake.Lose(welt, keyD)
	fake.Lose(welt, keyA)
	fake.Log = nil
	a.Sync("ffmuc_welt", true)
	a.pass()
	c.advance(4 * time.Hour)
	a.Sync("ffmuc_welt", true)
	a.pass()
	checkState(t, fake, "wg-welt "+keyD+" peer")
	if diff := cmp.Diff([]string{"add wg-welt 1", "remove wg-welt " + keyA}, fake.Log); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
	enqueue(t, a, "ffmuc_welt", keyD)
	a.pass()
	checkState(t, fake, "wg-welt "+keyD+" peer route fdb")
}

// TestSweepPartialFailure: a removal failing at the route leaves the peer for the next sweep, which finishes it;
// the failure does not stop the sweep of the other peers.
func TestSweepPartialFailure(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake, nil)
	enqueue(t, a, "ffmuc_welt", keyA, keyB)
	a.pass()
	c.advance(time.Hour)
	broken := true
	fake.Fail = func(step, key string) error {
		if broken && step == "remove-route" && key == keyB {
			return errors.New("netlink: device busy")
		}
		return nil
	}
	a.Sync("ffmuc_welt", true)
	a.pass()
	checkState(t, fake, "wg-welt "+keyB+" peer route")
	broken = false
	a.Sync("ffmuc_welt", true)
	a.pass()
	checkState(t, fake, "")
}

// TestReregisteredBeforeSweep: a key registered again before the sweep's pass is within its grace and stays.
func TestReregisteredBeforeSweep(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake, nil)
	enqueue(t, a, "ffmuc_welt", keyA)
	a.pass()
	c.advance(time.Hour)
	a.Sync("ffmuc_welt", true)
	enqueue(t, a, "ffmuc_welt", keyA)
	a.pass()
	checkState(t, fake, "wg-welt "+keyA+" peer route fdb")
}

func TestHandleMessage(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, _ := newAgent(t, fake, nil)
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
	a.pass()
	checkState(t, fake, lines("wg-welt "+keyC+" peer route fdb", "wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb"))
}

func FuzzHandleMessage(f *testing.F) {
	f.Add("wireguard/ffmuc_welt/all", []byte(keyA))
	f.Add("wgkex/replay/gw04/keys", []byte(`{"domain":"ffmuc_welt","seq":0,"last":true,"keys":["`+keyA+`"]}`))
	f.Add("wireguard//", []byte{})
	fake := dataplane.NewFake(welt)
	a, err := New(fake, testenv.Logger(f), Options{Name: "gw04", Domains: map[string]string{"ffmuc_welt": "welt"}, StaleTimeout: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		a.HandleMessage(topic, payload)
		msgs, _ := a.in.take()
		for _, m := range msgs {
			if m.domain != "ffmuc_welt" || !strings.HasSuffix(m.key, "=") || len(m.key) != 44 {
				t.Fatalf("queued %q for %q from %q", m.key, m.domain, topic)
			}
		}
	})
}

// TestSessionGenerations: the setup started by one CONNACK cannot mark the session up or a domain ready once
// the link dropped or a newer CONNACK came (it used to be an untracked goroutine writing shared flags).
func TestSessionGenerations(t *testing.T) {
	a, _ := newAgent(t, dataplane.NewFake(welt), nil)
	s := newSession(a, RunOptions{})
	conn1, lost := context.WithCancel(t.Context())
	first, ok := s.begin(conn1) // connection 1
	if again, _ := s.begin(conn1); !ok || again != first {
		t.Errorf("a retried setup of one connection got generation %d, then %d", first, again)
	}
	lost() // the client ends the setup's context, then reports the loss
	s.next()
	if _, ok := s.begin(conn1); ok {
		t.Error("a setup of a lost connection began a generation")
	}
	if s.markReady(first, "ffmuc_welt") || s.markUp(first) {
		t.Error("a stale setup changed the state")
	}
	second, _ := s.begin(t.Context()) // connection 2
	if !s.markReady(second, "ffmuc_welt") || !s.markUp(second) {
		t.Error("the current setup could not change the state")
	}
	s.markReady(first, "ffmuc_nord")
	if _, up, ready := s.state(); !up || len(ready) != 1 || !ready["ffmuc_welt"] {
		t.Errorf("up %v, ready %v", up, ready)
	}
}

// TestMetrics scrapes the worker's /metrics after known traffic and checks the values with the text parser.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	fake := dataplane.NewFake(welt)
	fake.Fail = func(step, key string) error {
		if step == "fdb" && key == keyC {
			return errors.New("broken")
		}
		return nil
	}
	a, c := newAgent(t, fake, reg)
	enqueue(t, a, "ffmuc_welt", keyA, keyB, keyC)
	a.HandleMessage("wgkex/replay/gw04/keys", []byte(`{"domain":"ffmuc_welt","seq":0,"last":true,"keys":["`+keyD+`"]}`))
	c.advance(20 * time.Millisecond)
	a.pass()
	c.advance(time.Hour)
	a.Sync("ffmuc_welt", true)
	a.pass() // keyA, keyB, keyC (its FDB entry failed): never handshaked, past grace → removed; keyD whitelisted
	if _, err := a.ConnectedPeers("ffmuc_welt"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	// Prometheus' own linter: base units, _total counters, help texts.
	problems, err := promlint.NewWithMetricFamilies(sortedFamilies(fams)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
	value := func(name string, labels ...string) string {
		f := fams[name]
		if f == nil {
			return "missing"
		}
	next:
		for _, m := range f.Metric {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return fmt.Sprint(m.Counter.GetValue())
			case m.Gauge != nil:
				return fmt.Sprint(m.Gauge.GetValue())
			case m.Histogram != nil:
				return fmt.Sprintf("count %d sum %.3f", m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum())
			}
		}
		return "missing"
	}
	got := map[string]string{
		"received live":   value("wgkex_worker_keys_received_total", "source", "live"),
		"received replay": value("wgkex_worker_keys_received_total", "source", "replay"),
		"applied":         value("wgkex_worker_keys_applied_total"),
		"latency":         value("wgkex_worker_apply_latency_seconds"),
		"desired":         value("wgkex_worker_desired_keys", "domain", "ffmuc_welt"),
		"pending":         value("wgkex_worker_pending_keys", "domain", "ffmuc_welt"),
		"peers":           value("wgkex_worker_peers", "domain", "ffmuc_welt"),
		"connected":       value("wgkex_worker_connected_peers", "domain", "ffmuc_welt"),
		"removed never":   value("wgkex_worker_cleanup_removals_total", "domain", "ffmuc_welt", "reason", "never-handshaked"),
		"fdb errors":      value("wgkex_worker_dataplane_errors_total", "step", "fdb"),
		"mqtt connected":  value("wgkex_worker_mqtt_connected"),
		"inbox":           value("wgkex_worker_inbox_keys"),
		"connects":        value("wgkex_worker_mqtt_connects_total"),
	}
	want := map[string]string{
		"received live": "3", "received replay": "1", "applied": "3", "latency": "count 3 sum 0.060",
		"desired": "1", "pending": "0", "peers": "1", "connected": "0", "removed never": "3", "fdb errors": "1",
		"mqtt connected": "0", "inbox": "0", "connects": "0",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
	// README.md lists every metric the worker serves, and no other.
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented, served []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(wgkex_worker_[a-z_]+)[`{]").FindAllStringSubmatch(string(readme), -1) {
		documented = append(documented, m[1])
	}
	for name := range fams {
		if strings.HasPrefix(name, "wgkex_") {
			served = append(served, name)
		}
	}
	if len(documented) < 10 {
		t.Fatalf("README.md lists %d worker metrics", len(documented))
	}
	sort.Strings(documented)
	sort.Strings(served)
	if diff := cmp.Diff(documented, served); diff != "" {
		t.Errorf("README.md's worker metrics (-) against /metrics (+):\n%s", diff)
	}
}

func sortedFamilies(fams map[string]*dto.MetricFamily) []*dto.MetricFamily {
	out := make([]*dto.MetricFamily, 0, len(fams))
	for _, f := range fams {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.Label {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// TestApplyLatencyReRegistration: a node registering again while its peer is in place is no apply, and its receipt
// time must not linger: when the device later loses the peer and a read puts it back, that repair is not an apply
// latency of an hour.
func TestApplyLatencyReRegistration(t *testing.T) {
	fake := dataplane.NewFake(welt)
	a, c := newAgent(t, fake, nil)
	enqueue(t, a, "ffmuc_welt", keyA)
	c.advance(20 * time.Millisecond)
	a.pass()
	enqueue(t, a, "ffmuc_welt", keyA) // registers again: already in place
	a.pass()
	c.advance(time.Hour)
	fake.Lose(welt, keyA)
	a.Sync("ffmuc_welt", false)
	a.pass() // the read finds route and FDB gone and puts them back
	var m dto.Metric
	if err := a.m.latency.Write(&m); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("count %d sum %.3f", m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum())
	if want := "count 1 sum 0.020"; got != want {
		t.Errorf("apply latency: %s, want %s", got, want)
	}
	if n := len(a.domains["ffmuc_welt"].received); n != 0 {
		t.Errorf("%d receipt times kept for keys in place", n)
	}
}
