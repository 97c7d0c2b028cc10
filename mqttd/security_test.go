package mqttd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/go-cmp/cmp"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	dto "github.com/prometheus/client_model/go"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// The attacks of issue 7, each against the real server with real clients: every one is refused, and neither what
// the broker's handlers saw nor the retained messages change.

const (
	welt = "ffmuc_welt"
	nord = "ffmuc_nord"
)

// fleet is a server configured as in production: gw-a and gw-b with their own passwords, gw-c on the shared
// password, a monitor, and handlers recording what the broker would see.
type fleet struct {
	s    *Server
	st   RetainStore
	addr string
	mu   sync.Mutex
	seen []string
	// logged counts the log records with the message given to newFleetCounting.
	logged *atomic.Int64
}

func newFleet(t *testing.T, mod func(*Options)) *fleet {
	t.Helper()
	return newFleetCounting(t, mod, "")
}

// newFleetCounting is newFleet counting the log records with message msg in fleet.logged.
func newFleetCounting(t *testing.T, mod func(*Options), msg string) *fleet {
	t.Helper()
	f := &fleet{st: openStore(t, filepath.Join(t.TempDir(), "state.db"))}
	opts := Options{
		Domains: []string{welt, nord},
		Accounts: Accounts{
			Workers: map[string]Account{
				"gw-a": {PasswordHash: testenv.BcryptHash(t, "pa")}, "gw-b": {PasswordHash: testenv.BcryptHash(t, "pb")}, "gw-c": {}, "gw-d": {},
			},
			Monitors:       map[string]Account{"mon": {PasswordHash: testenv.BcryptHash(t, "pm")}},
			SharedUsername: "wgkex", SharedPassword: "shared",
		},
		Retained: f.st,
	}
	if mod != nil {
		mod(&opts)
	}
	record := func(topic string, p []byte) {
		f.mu.Lock()
		f.seen = append(f.seen, topic+"="+string(p))
		f.mu.Unlock()
	}
	f.s, f.logged = startCounting(t, opts, map[string]func(string, []byte){
		wire.MetricsFilter: record, wire.StatusFilter: record, wire.DataFilter: record, wire.ReplayRequestFilter: record,
	}, msg)
	f.addr = f.s.Addrs()[0]
	return f
}

func (f *fleet) handled() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

func (f *fleet) retained() []string {
	var out []string
	f.st.Retained(func(topic string, _ []byte) error { out = append(out, topic); return nil })
	return out
}

func (f *fleet) refusedN(reason string) int {
	var m dto.Metric
	f.s.refusedVec.WithLabelValues(reason).Write(&m)
	return int(m.GetCounter().GetValue())
}

func (f *fleet) connect(t *testing.T, id, user, pass string) *testenv.Client {
	t.Helper()
	return testenv.Connect(t, f.addr, id, testenv.ClientOptions{Username: user, Password: pass})
}

// unchanged checks at the end of the test that no handler ran beyond want and no retained message appeared.
func (f *fleet) unchanged(t *testing.T, want ...string) {
	t.Helper()
	if diff := cmp.Diff(want, f.handled()); diff != "" {
		t.Errorf("the broker saw (-want +got):\n%s", diff)
	}
	var wantRet []string
	for _, w := range want {
		topic, _, _ := strings.Cut(w, "=")
		wantRet = append(wantRet, topic)
	}
	if diff := cmp.Diff(wantRet, f.retained()); diff != "" {
		t.Errorf("retained messages (-want +got):\n%s", diff)
	}
}

func TestAttackSpoofOtherWorkers(t *testing.T) {
	f := newFleet(t, nil)
	data := `{"ExternalAddress":"attacker.example","Port":51820,"PublicKey":"x","LinkAddress":"fe80::1"}`
	shared := f.connect(t, "gw-c", "wgkex", "shared")
	own := f.connect(t, "gw-a", "gw-a", "pa")
	for _, c := range []*testenv.Client{shared, own} {
		for _, topic := range []string{
			wire.DataTopic("gw-b", welt), wire.StatusTopic("gw-b"), wire.MetricTopic(welt, "gw-b"),
			wire.StatusTopic("rogue"), wire.DataTopic("rogue", welt), wire.MetricTopic(welt, "rogue"),
			wire.KeyTopic(welt), wire.ReplayKeysTopic("gw-b"), wire.ReplayRequestTopic("gw-b"),
			wire.DataTopic("gw-a", "ffmuc_other"), "wireguard-worker/gw-a", "anything",
		} {
			if err := c.TryPublish(topic, data, 1, true); err == nil {
				t.Errorf("publish on %s accepted", topic)
			}
		}
	}
	// A person with the shared password and mosquitto_pub (MQTT 3.1.1: acknowledged, dropped, not retained).
	host, port, _ := strings.Cut(f.addr, ":")
	exec.Command(testenv.Tool(t, "mosquitto_pub"), "-h", host, "-p", port, "-u", "wgkex", "-P", "shared", "-i", "gw-c",
		"-t", wire.DataTopic("gw-b", welt), "-m", data, "-r", "-q", "1").Run()
	// The shared password cannot act as a worker that has its own, nor as an unconfigured one.
	for _, id := range []string{"gw-b", "rogue", "inline", ""} {
		if _, err := testenv.Dial(f.addr, id, testenv.ClientOptions{Username: "wgkex", Password: "shared"}); err == nil {
			t.Errorf("shared password accepted as %q", id)
		}
	}
	// Own password, another client id; a will on another worker's topic.
	if _, err := testenv.Dial(f.addr, "gw-b", testenv.ClientOptions{Username: "gw-a", Password: "pa"}); err == nil {
		t.Error("gw-a's password accepted for client id gw-b")
	}
	will := &paho.WillMessage{Topic: wire.StatusTopic("gw-b"), Payload: []byte("0"), QoS: 1, Retain: true}
	if _, err := testenv.Dial(f.addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "pa", Will: will}); err == nil {
		t.Error("a will on gw-b's status accepted from gw-a")
	}
	// What a worker may do still works.
	own = f.connect(t, "gw-a", "gw-a", "pa")
	own.Publish(t, wire.StatusTopic("gw-a"), "1", 1, true)
	testenv.Eventually(t, 5*time.Second, func() bool { return len(f.handled()) == 1 }, "own status not handled")
	f.unchanged(t, wire.StatusTopic("gw-a")+"=1")
	if n := f.refusedN(reasonPublish); n != 25 { // 2 clients × 12 topics, and mosquitto_pub
		t.Errorf("refused publishes counted: %d, want 25", n)
	}
	for _, r := range []string{reasonUnknownWorker, reasonClientID, reasonWill} {
		if f.refusedN(r) == 0 {
			t.Errorf("no refusal counted for %s", r)
		}
	}
}

func TestAttackReadKeysAndReplays(t *testing.T) {
	f := newFleet(t, nil)
	a := f.connect(t, "gw-a", "gw-a", "pa")
	for _, filter := range []string{"#", "wgkex/replay/#", "wgkex/replay/+/keys", wire.ReplayKeysTopic("gw-b"),
		"wireguard/#", "wireguard/+/all", wire.KeyFilter("ffmuc_other"), "wireguard-worker/#", "$SYS/#", "+/+/+"} {
		if err := a.TrySubscribe(filter); err == nil {
			t.Errorf("gw-a subscribed to %s", filter)
		}
	}
	if n := f.refusedN(reasonSubscribe); n != 10 {
		t.Errorf("refused subscriptions counted: %d, want 10", n)
	}
	a.Subscribe(t, wire.KeyFilter(welt), wire.KeyFilter(nord), wire.ReplayKeysTopic("gw-a"))
	mon := testenv.Connect(t, f.addr, "mon", testenv.ClientOptions{Username: "mon", Password: "pm"})
	mon.Subscribe(t, "#")
	if err := mon.TryPublish(wire.StatusTopic("gw-a"), "0", 1, true); err == nil {
		t.Error("monitor published")
	}
	// A person with mosquitto_sub and the monitor's password asking for the replays.
	host, port, _ := strings.Cut(f.addr, ":")
	out, _ := exec.Command(testenv.Tool(t, "mosquitto_sub"), "-h", host, "-p", port, "-u", "mon", "-P", "pm",
		"-i", "mon2", "-t", "wgkex/replay/+/keys", "-W", "3").CombinedOutput()
	if !strings.Contains(string(out), "not authori") && !strings.Contains(string(out), "denied") {
		t.Errorf("mosquitto_sub with an unknown monitor: %q", out)
	}
	f.s.Publish(wire.ReplayKeysTopic("gw-a"), []byte("replay"), false, 1)
	f.s.Publish(wire.KeyTopic(welt), []byte("key"), false, 1)
	f.connect(t, "gw-b", "gw-b", "pb").Publish(t, wire.StatusTopic("gw-b"), "1", 1, false)
	a.WaitFor(t, wire.ReplayKeysTopic("gw-a"))
	a.WaitFor(t, wire.KeyTopic(welt))
	mon.WaitOnly(t, wire.StatusTopic("gw-b")) // the monitor received neither the keys nor the replay
}

func TestAnonymousRule(t *testing.T) {
	f := newFleet(t, nil)
	if _, err := testenv.Dial(f.addr, "gw-c", testenv.ClientOptions{}); err == nil {
		t.Error("anonymous client accepted although credentials are configured")
	}
	_, err := New(testenv.Logger(t), Options{Listeners: []Listener{{Address: "0.0.0.0:0"}}})
	if err == nil || !strings.Contains(err.Error(), "allow_anonymous") {
		t.Errorf("non-loopback listener without credentials: %v", err)
	}
	// A username without a password is no login: an error, not an open server.
	if _, err := New(testenv.Logger(t), Options{Listeners: []Listener{{Address: "0.0.0.0:0"}}, Accounts: Accounts{SharedUsername: "x"}}); err == nil {
		t.Error("mqtt.username without mqtt.password accepted")
	}
	// A password without a username (one wgkex.yaml for broker and worker, WGKEX_MQTT_PASSWORD alone) is the
	// shared password of every configured worker logging in with its name, as the worker does; the server is
	// not open.
	shared := start(t, Options{Listeners: []Listener{{Address: "0.0.0.0:0"}},
		Accounts: Accounts{SharedPassword: "x", Workers: map[string]Account{"gw-s": {}, "gw-own": {PasswordHash: testenv.BcryptHash(t, "own")}}}}, nil)
	_, sport, _ := net.SplitHostPort(shared.Addrs()[0])
	saddr := "127.0.0.1:" + sport
	testenv.Connect(t, saddr, "gw-s", testenv.ClientOptions{Username: "gw-s", Password: "x"}).Publish(t, wire.StatusTopic("gw-s"), "1", 1, false)
	for _, c := range []struct{ id, user, pass string }{
		{"gw-s", "gw-s", "y"},     // wrong password
		{"gw-s", "gw-t", "x"},     // username not the client id
		{"gw-u", "gw-u", "x"},     // not a configured worker
		{"gw-own", "gw-own", "x"}, // a worker with a password of its own
		{"gw-s", "", ""},          // anonymous
	} {
		if _, err := testenv.Dial(saddr, c.id, testenv.ClientOptions{Username: c.user, Password: c.pass}); err == nil {
			t.Errorf("shared password alone: %s as %q with %q accepted", c.id, c.user, c.pass)
		}
	}
	s := start(t, Options{Listeners: []Listener{{Address: "0.0.0.0:0"}}, AllowAnonymous: true}, nil)
	_, port, _ := net.SplitHostPort(s.Addrs()[0])
	testenv.Connect(t, "127.0.0.1:"+port, "gw-x", testenv.ClientOptions{})

	// No credentials, loopback: anonymous clients act as the configured worker their client id names.
	s = start(t, Options{Accounts: Accounts{Workers: map[string]Account{"gw-x": {}}}}, nil)
	c := testenv.Connect(t, s.Addrs()[0], "gw-x", testenv.ClientOptions{})
	c.Publish(t, wire.StatusTopic("gw-x"), "1", 1, false)
	rogue := testenv.Connect(t, s.Addrs()[0], "rogue", testenv.ClientOptions{})
	if err := rogue.TryPublish(wire.StatusTopic("rogue"), "1", 1, true); err == nil {
		t.Error("anonymous client published as the unconfigured worker rogue")
	}
}

func TestPasswordGuessing(t *testing.T) {
	f := newFleet(t, nil)
	f.s.loginDelay = 400 * time.Millisecond
	host, port, _ := strings.Cut(f.addr, ":")
	for i := range 3 {
		out, err := exec.Command(testenv.Tool(t, "mosquitto_pub"), "-h", host, "-p", port, "-u", "gw-a", "-P",
			fmt.Sprint("guess", i), "-i", "gw-a", "-t", wire.StatusTopic("gw-a"), "-m", "1").CombinedOutput()
		if err == nil {
			t.Fatalf("guess %d accepted: %s", i, out)
		}
	}
	// Locked out: even the right password is not looked at.
	if _, err := testenv.Dial(f.addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "pa"}); err == nil {
		t.Error("login accepted during the lockout")
	}
	if f.refusedN(reasonBadLogin) != 3 || f.refusedN(reasonLoginBackoff) != 1 {
		t.Errorf("bad logins %d, backoffs %d; want 3, 1", f.refusedN(reasonBadLogin), f.refusedN(reasonLoginBackoff))
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		c, err := testenv.Dial(f.addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "pa"})
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "the right password never worked after the lockout")
	f.unchanged(t)
}

func TestFailuresBounded(t *testing.T) {
	f := failures{m: map[netip.Prefix]*failure{}}
	now := time.Now()
	for i := range maxFailureEntries + 100 {
		f.fail(addrKey(fmt.Sprintf("10.%d.%d.%d:1", i>>16&255, i>>8&255, i&255)), now, time.Second)
	}
	if len(f.m) > maxFailureEntries {
		t.Errorf("%d addresses remembered, at most %d", len(f.m), maxFailureEntries)
	}
	// IPv6 counts per /64.
	if addrKey("[2001:db8::1]:5") != addrKey("[2001:db8::2]:6") || addrKey("[2001:db8:0:1::1]:5") == addrKey("[2001:db8::1]:5") {
		t.Error("IPv6 addresses not grouped by /64")
	}
}

// rawConnect opens a TCP connection and writes b; it returns the connection with a read deadline set.
func rawConnect(t *testing.T, addr string, b []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c
}

// closedByServer reports whether the server closed c (as opposed to the read deadline expiring).
func closedByServer(c net.Conn) bool {
	_, err := io.ReadAll(c)
	var ne net.Error
	return !(err != nil && errors.As(err, &ne) && ne.Timeout())
}

func TestOversizedPackets(t *testing.T) {
	f := newFleet(t, func(o *Options) { o.AllowAnonymous = true })
	// A CONNECT announcing 256 MB, before authentication. The server must close the connection after the
	// five-byte header: had it started to read (and allocate) the body, it would wait for it.
	for range 4 {
		if c := rawConnect(t, f.addr, []byte{0x10, 0xff, 0xff, 0xff, 0x7f}); !closedByServer(c) {
			t.Fatal("server waited for a 256 MB CONNECT")
		}
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return f.refusedN(reasonPacketTooLarge) == 4 }, "oversized CONNECTs not counted")
	// A worker's 100 KiB retained data (limit 64 KiB) ends its connection and is not stored.
	a := f.connect(t, "gw-a", "gw-a", "pa")
	if err := a.TryPublish(wire.DataTopic("gw-a", welt), strings.Repeat("x", 100<<10), 1, true); err == nil {
		t.Error("100 KiB publish accepted")
	}
	f.unchanged(t)
}

func TestConnectDeadlineAndMaxConnections(t *testing.T) {
	f := newFleet(t, func(o *Options) { o.Limits.ConnectTimeout, o.Limits.MaxClients = 300*time.Millisecond, 3 })
	var idle []net.Conn
	for range 3 {
		idle = append(idle, rawConnect(t, f.addr, nil))
	}
	// The slots are taken by connections that never send CONNECT: the next is closed at once…
	testenv.Eventually(t, 5*time.Second, func() bool {
		c := rawConnect(t, f.addr, nil)
		return closedByServer(c) && f.refusedN(reasonMaxConnections) > 0
	}, "no connection refused for the limit")
	// …and the idle ones are closed at the CONNECT deadline, freeing the slots.
	for _, c := range idle {
		if !closedByServer(c) {
			t.Error("a connection without CONNECT was kept")
		}
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return f.refusedN(reasonConnectTimeout) == 3 }, "timeouts not counted")
	testenv.Eventually(t, 5*time.Second, func() bool {
		c, err := testenv.Dial(f.addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "pa"})
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "no connection possible once the idle ones were dropped")
}

// stallConn stops delivering reads once stalled, like a client that stopped reading.
type stallConn struct {
	net.Conn
	mu      sync.Mutex
	stalled bool
	closed  chan struct{}
	once    sync.Once
}

func (c *stallConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	s := c.stalled
	c.mu.Unlock()
	if s {
		<-c.closed
		return 0, net.ErrClosed
	}
	return c.Conn.Read(b)
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// stallUntilDropped makes the client on sc stop reading and publishes on topic from the inline client until the
// server disconnects a slow consumer.
func (f *fleet) stallUntilDropped(t *testing.T, sc *stallConn, topic string) {
	t.Helper()
	sc.mu.Lock()
	sc.stalled = true
	sc.mu.Unlock()
	batch := make([]byte, 8<<10)
	for i := 0; f.refusedN(reasonSlowConsumer) == 0; i++ {
		if i > 100000 {
			t.Fatal("a client that stopped reading was never disconnected")
		}
		if err := f.s.Publish(topic, batch, false, 1); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSlowConsumer(t *testing.T) {
	f := newFleet(t, func(o *Options) { o.Limits.MaxPending = 8 })
	sc := &stallConn{closed: make(chan struct{})}
	slow := testenv.Connect(t, f.addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "pa",
		Dial: func(n, a string) (net.Conn, error) {
			c, err := net.Dial(n, a)
			sc.Conn = c
			return sc, err
		}})
	slow.Subscribe(t, wire.ReplayKeysTopic("gw-a"))
	b := f.connect(t, "gw-b", "gw-b", "pb")
	b.Subscribe(t, wire.ReplayKeysTopic("gw-b"))
	// The inline client keeps publishing; none of its publishes may wait for gw-a.
	f.stallUntilDropped(t, sc, wire.ReplayKeysTopic("gw-a"))
	f.s.Publish(wire.ReplayKeysTopic("gw-b"), []byte("batch"), false, 1)
	b.WaitFor(t, wire.ReplayKeysTopic("gw-b"))
	testenv.Eventually(t, 5*time.Second, func() bool { return f.s.Clients() == 1 }, "slow client still connected")
}

func TestTakeover(t *testing.T) {
	f := newFleet(t, nil)
	will := &paho.WillMessage{Topic: wire.StatusTopic("gw-a"), Payload: []byte("0"), QoS: 1, Retain: true}
	testenv.Connect(t, f.addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "pa", Will: will})
	// The same worker reconnects before its old session timed out: allowed, and the old session's will does
	// not mark it offline.
	again := testenv.Connect(t, f.addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "pa", Will: will})
	testenv.Eventually(t, 5*time.Second, func() bool { return atomic.LoadInt64(&f.s.srv.Info.ClientsConnected) == 1 }, "old session not ended")
	again.Publish(t, wire.StatusTopic("gw-a"), "1", 1, true)
	testenv.Eventually(t, 5*time.Second, func() bool { return len(f.handled()) == 1 }, "status not handled")
	f.unchanged(t, wire.StatusTopic("gw-a")+"=1")
}

// TestStaleRetainedDeleted: retained messages left by a version without ACLs (an unconfigured "rogue", another
// worker's data published by an attacker under a removed name) are deleted at start and never served.
func TestStaleRetainedDeleted(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "state.db"))
	for _, topic := range []string{wire.StatusTopic("rogue"), wire.DataTopic("x1", welt), wire.StatusTopic("gw-a")} {
		m := storage.Message{ID: topic, T: storage.RetainedKey, TopicName: topic, Payload: []byte("1"),
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true}}
		b, _ := m.MarshalBinary()
		if err := st.PutRetained(topic, b); err != nil {
			t.Fatal(err)
		}
	}
	f := newFleet(t, func(o *Options) { o.Retained = st })
	f.st = st
	if diff := cmp.Diff([]string{wire.StatusTopic("gw-a")}, f.retained()); diff != "" {
		t.Errorf("retained after start (-want +got):\n%s", diff)
	}
	mon := testenv.Connect(t, f.addr, "mon", testenv.ClientOptions{Username: "mon", Password: "pm"})
	mon.Subscribe(t, "#")
	mon.WaitOnly(t, wire.StatusTopic("gw-a")) // no stale retained message is served
}

// TestSubscriptionFlood: one client cannot make the server keep an unbounded number of subscriptions, nor very
// long filters. Before the limit, a monitor's 400,000 distinct filters took the broker to 1.1 GB in 7 s, and a
// worker on the shared password could do the same with single topics under its wireguard/{domain}/+.
func TestSubscriptionFlood(t *testing.T) {
	f := newFleet(t, nil)
	limit := f.s.maxSubscriptions
	for _, c := range []struct{ id, user, pass, prefix string }{
		{"gw-c", "wgkex", "shared", "wireguard/" + welt + "/"},
		{"mon", "mon", "pm", "+/"},
	} {
		cl := f.connect(t, c.id, c.user, c.pass)
		accepted := 0
		for i := range limit + 20 {
			if cl.TrySubscribe(fmt.Sprintf("%sk%d", c.prefix, i)) == nil {
				accepted++
			}
		}
		if accepted != limit {
			t.Errorf("%s: %d subscriptions accepted, want the limit %d", c.id, accepted, limit)
		}
		// Subscribing again to a filter it has costs nothing and is allowed.
		if err := cl.TrySubscribe(c.prefix + "k0"); err != nil {
			t.Errorf("%s: repeated subscription refused: %v", c.id, err)
		}
		if err := cl.TrySubscribe(c.prefix + strings.Repeat("x", 4000)); err == nil {
			t.Errorf("%s: a 4000-byte filter accepted", c.id)
		}
		sc, ok := f.s.srv.Clients.Get(c.id)
		if !ok || sc.State.Subscriptions.Len() > limit {
			t.Errorf("%s: server holds %d subscriptions, limit %d", c.id, sc.State.Subscriptions.Len(), limit)
		}
	}
	if f.refusedN(reasonSubscriptions) != 40 || f.refusedN(reasonSubscribe) != 2 {
		t.Errorf("refusals counted: %d over the limit (want 40), %d too long (want 2)",
			f.refusedN(reasonSubscriptions), f.refusedN(reasonSubscribe))
	}
	// A worker still gets all its own filters.
	a := f.connect(t, "gw-a", "gw-a", "pa")
	a.Subscribe(t, wire.KeyFilter(welt), wire.KeyFilter(nord), wire.ReplayKeysTopic("gw-a"))
	f.unchanged(t)
}

// TestAnonymousNotAWorkerWithPassword: with allow_anonymous, a client without credentials cannot act as a worker
// that has a password of its own (the shared password cannot either), so it cannot announce that worker while
// it is offline.
func TestAnonymousNotAWorkerWithPassword(t *testing.T) {
	f := newFleet(t, func(o *Options) { o.AllowAnonymous = true })
	if c, err := testenv.Dial(f.addr, "gw-a", testenv.ClientOptions{}); err == nil {
		c.TryPublish(wire.StatusTopic("gw-a"), "0", 1, true)
		c.TryPublish(wire.DataTopic("gw-a", welt), `{"ExternalAddress":"attacker.example"}`, 1, true)
		c.Close()
		t.Error("anonymous client accepted as gw-a, which has its own password")
	}
	// A worker without a credential of its own still works anonymously, as the operator allowed.
	d := testenv.Connect(t, f.addr, "gw-d", testenv.ClientOptions{})
	d.Publish(t, wire.StatusTopic("gw-d"), "1", 1, true)
	testenv.Eventually(t, 5*time.Second, func() bool { return slices.Contains(f.handled(), wire.StatusTopic("gw-d")+"=1") },
		"gw-d's status not handled")
	f.unchanged(t, wire.StatusTopic("gw-d")+"=1")
}
