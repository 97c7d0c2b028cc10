package mqttd

import (
	"context"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/store"
)

// start runs a server on 127.0.0.1:0 unless opts names listeners.
func start(t *testing.T, opts Options, handlers map[string]func(string, []byte)) *Server {
	t.Helper()
	s, _ := startCounting(t, opts, handlers, "")
	return s
}

// startCounting is start that also counts the log records with message msg.
func startCounting(t *testing.T, opts Options, handlers map[string]func(string, []byte), msg string) (*Server, *atomic.Int64) {
	t.Helper()
	if len(opts.Listeners) == 0 {
		opts.Listeners = []Listener{{Address: "127.0.0.1:0"}}
	}
	if opts.Domains == nil {
		opts.Domains = []string{"ffmuc_welt"}
	}
	base, quiet := quietLogger(t)
	n := new(atomic.Int64)
	s, err := New(slog.New(countHandler{base.Handler(), msg, n}), opts)
	if err != nil {
		t.Fatal(err)
	}
	s.loginDelay = 10 * time.Millisecond
	for f, h := range handlers {
		if err := s.Handle(f, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); quiet() })
	return s, n
}

// quietLogger is the test's logger until quiet is called: mochi's goroutines may still log after Close returns,
// which must not reach a finished test.
func quietLogger(t testing.TB) (_ *slog.Logger, quiet func()) {
	h := &quietHandler{Handler: testenv.Logger(t).Handler(), mu: &sync.RWMutex{}, done: new(bool)}
	return slog.New(h), func() { h.mu.Lock(); *h.done = true; h.mu.Unlock() }
}

type quietHandler struct {
	slog.Handler
	mu   *sync.RWMutex
	done *bool
}

func (h *quietHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if *h.done {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h *quietHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return &quietHandler{Handler: h.Handler.WithAttrs(a), mu: h.mu, done: h.done}
}

func (h *quietHandler) WithGroup(name string) slog.Handler {
	return &quietHandler{Handler: h.Handler.WithGroup(name), mu: h.mu, done: h.done}
}

func openStore(t *testing.T, path string) *store.Store {
	t.Helper()
	st, err := store.Open(path, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestRetainedSurviveRestartAndNeverExpire stores a retained message created two days ago, as a worker's
// endpoint data would be after two days of uptime, and checks that it is still served after the server's expiry
// sweep has run (mochi's default would delete it after 24 h).
func TestRetainedSurviveRestartAndNeverExpire(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st := openStore(t, path)
	old := storage.Message{ID: "wireguard-worker/gw04/ffmuc_welt/data", T: storage.RetainedKey,
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		TopicName:   "wireguard-worker/gw04/ffmuc_welt/data", Payload: []byte(`{"old": true}`),
		Created: time.Now().Add(-48 * time.Hour).Unix()}
	b, _ := old.MarshalBinary()
	if err := st.PutRetained(old.TopicName, b); err != nil {
		t.Fatal(err)
	}
	s := start(t, Options{Retained: st}, nil)
	pub := testenv.Connect(t, s.Addrs()[0], "gw05", testenv.ClientOptions{})
	pub.Publish(t, "wireguard-worker/gw05/status", "1", 1, true)
	gw06 := testenv.Connect(t, s.Addrs()[0], "gw06", testenv.ClientOptions{})
	gw06.Publish(t, "wireguard-worker/gw06/status", "1", 1, true)
	gw06.Publish(t, "wireguard-worker/gw06/status", "", 1, true) // clears it
	// A canary that expires after a second: once mochi's sweep has removed it from the store, the sweep has run
	// and had its chance at the two-day-old message.
	canary := "wireguard-worker/gw07/ffmuc_welt/data"
	host, port, _ := strings.Cut(s.Addrs()[0], ":")
	if out, err := exec.Command(testenv.Tool(t, "mosquitto_pub"), "-h", host, "-p", port, "-i", "gw07", "-V", "mqttv5",
		"-t", canary, "-m", "canary", "-r", "-q", "1", "-D", "publish", "message-expiry-interval", "1").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, out)
	}
	if !hasRetained(st, canary) {
		t.Fatal("canary not stored")
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return !hasRetained(st, canary) }, "canary never expired")
	s.Close()

	s = start(t, Options{Retained: st}, nil)
	sub := testenv.Connect(t, s.Addrs()[0], "observer", testenv.ClientOptions{})
	sub.Subscribe(t, "wireguard-worker/#")
	if m := sub.WaitFor(t, old.TopicName); m.Payload != `{"old": true}` || !m.Retain {
		t.Errorf("two-day-old retained message: %+v", m)
	}
	if m := sub.WaitFor(t, "wireguard-worker/gw05/status"); m.Payload != "1" {
		t.Errorf("retained status after restart: %+v", m)
	}
	for _, m := range sub.Messages() {
		if strings.Contains(m.Topic, "gw06") {
			t.Errorf("cleared retained message came back: %+v", m)
		}
	}
}

func hasRetained(st RetainStore, topic string) bool {
	found := false
	st.Retained(func(tp string, _ []byte) error {
		found = found || tp == topic
		return nil
	})
	return found
}

func TestAuth(t *testing.T) {
	s := start(t, Options{Accounts: Accounts{SharedUsername: "wgkex", SharedPassword: "s3cret", Workers: map[string]Account{"good": {}}}}, nil)
	if _, err := testenv.Dial(s.Addrs()[0], "bad", testenv.ClientOptions{Username: "wgkex", Password: "wrong"}); err == nil {
		t.Error("wrong password accepted")
	}
	if _, err := testenv.Dial(s.Addrs()[0], "anon", testenv.ClientOptions{}); err == nil {
		t.Error("anonymous client accepted")
	}
	testenv.Connect(t, s.Addrs()[0], "good", testenv.ClientOptions{Username: "wgkex", Password: "s3cret"})
}

// TestHandlersAndShutdown checks that inline handlers see client publishes, that a panicking handler does not
// take the server down, and that last wills fired by our own shutdown reach neither handlers nor the store.
func TestHandlersAndShutdown(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "state.db"))
	var mu sync.Mutex
	var got []string
	s := start(t, Options{Retained: st}, map[string]func(string, []byte){
		"wireguard-worker/+/status": func(topic string, p []byte) {
			mu.Lock()
			got = append(got, topic+"="+string(p))
			mu.Unlock()
		},
		"wireguard-worker/+/+/data": func(string, []byte) { panic("handler bug") },
	})
	c := testenv.Connect(t, s.Addrs()[0], "gw04", testenv.ClientOptions{
		Will: &paho.WillMessage{Topic: "wireguard-worker/gw04/status", Payload: []byte("0"), QoS: 1, Retain: true}})
	c.Publish(t, "wireguard-worker/gw04/ffmuc_welt/data", "1", 1, false)
	c.Publish(t, "wireguard-worker/gw04/status", "1", 1, true)
	testenv.Eventually(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 }, "status not handled")
	if n := s.Clients(); n != 1 {
		t.Errorf("Clients() = %d, want 1", n)
	}
	s.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != "wireguard-worker/gw04/status=1" {
		t.Errorf("handled %q; the will fired by our shutdown must not be handled", got)
	}
	var stored []string
	st.Retained(func(topic string, b []byte) error {
		var m storage.Message
		m.UnmarshalBinary(b)
		stored = append(stored, topic+"="+string(m.Payload))
		return nil
	})
	if len(stored) != 1 || stored[0] != "wireguard-worker/gw04/status=1" {
		t.Errorf("stored retained %q", stored)
	}
}

// TestWillOnDrop checks that a client that vanishes has its will published (the broker's liveness signal).
func TestWillOnDrop(t *testing.T) {
	var mu sync.Mutex
	var got []string
	s := start(t, Options{}, map[string]func(string, []byte){
		"wireguard-worker/+/status": func(topic string, p []byte) { mu.Lock(); got = append(got, string(p)); mu.Unlock() },
	})
	c := testenv.Connect(t, s.Addrs()[0], "gw04", testenv.ClientOptions{
		Will: &paho.WillMessage{Topic: "wireguard-worker/gw04/status", Payload: []byte("0"), QoS: 1, Retain: true}})
	c.Drop()
	testenv.Eventually(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 && got[0] == "0" }, "will not delivered")
}

// TestMosquittoClients checks interoperability with Debian's mosquitto_pub and mosquitto_sub (MQTT 3.1.1).
func TestMosquittoClients(t *testing.T) {
	pubBin, subBin := testenv.Tool(t, "mosquitto_pub"), testenv.Tool(t, "mosquitto_sub")
	s := start(t, Options{}, nil)
	host, port, _ := strings.Cut(s.Addrs()[0], ":")
	if out, err := exec.Command(pubBin, "-h", host, "-p", port, "-i", "gw04", "-t", "wireguard-metrics/ffmuc_welt/gw04/connected_peers", "-m", "20", "-r", "-q", "1").CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, out)
	}
	out, err := exec.Command(subBin, "-h", host, "-p", port, "-t", "wireguard-metrics/#", "-C", "1", "-W", "5", "-v").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "wireguard-metrics/ffmuc_welt/gw04/connected_peers 20" {
		t.Errorf("mosquitto_sub: %v %q", err, out)
	}
}
