package mqttclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// inbox records what a handler received.
type inbox struct {
	mu   sync.Mutex
	msgs []string
}

func (b *inbox) handle(topic string, payload []byte) {
	b.mu.Lock()
	b.msgs = append(b.msgs, topic+" "+string(payload))
	b.mu.Unlock()
}

func (b *inbox) list() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.msgs...)
}

func dial(t *testing.T, addr, id, pass string, handlers map[string]*inbox) *Client {
	t.Helper()
	c, err := New(testenv.Logger(t), Options{
		Server:    Server{Addr: "mqtt://" + addr, Username: id, Password: pass, ClientID: id, Keepalive: 5, MaxPacket: 1 << 20},
		Will:      &Message{Topic: "test/" + id + "/status", Payload: []byte("0"), QoS: 1, Retain: true},
		Hello:     &Message{Topic: "test/" + id + "/status", Payload: []byte("1"), QoS: 1, Retain: true},
		SyncTopic: "test/" + id + "/sync",
	})
	if err != nil {
		t.Fatal(err)
	}
	for f, in := range handlers {
		if err := c.Handle(f, in.handle); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	testenv.Eventually(t, 10*time.Second, c.Connected, "%s did not connect", id)
	return c
}

// TestClientAgainstMosquitto: with Debian's Mosquitto, a password file and an ACL, two clients see each other's
// messages but not their own, a shared subscription hands each message to exactly one of them, Sync waits for
// what was sent before, and a wrong password never connects.
func TestClientAgainstMosquitto(t *testing.T) {
	users := map[string]string{"a": "pa", "b": "pb", "observer": "po"}
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Users: users, ACL: "pattern readwrite test/#\n"}).Addr
	inA, inB, shA, shB := &inbox{}, &inbox{}, &inbox{}, &inbox{}
	a := dial(t, addr, "a", "pa", map[string]*inbox{"test/+/msg": inA, "$share/g/test/work": shA})
	b := dial(t, addr, "b", "pb", map[string]*inbox{"test/+/msg": inB, "$share/g/test/work": shB})

	if err := a.Publish("test/a/msg", []byte("hi"), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := inB.list(); len(got) != 1 || got[0] != "test/a/msg hi" {
		t.Fatalf("b after Sync: %q, want the message of a", got)
	}
	if err := a.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := inA.list(); len(got) != 0 {
		t.Errorf("a received its own message: %q", got)
	}

	const n = 40
	obs := testenv.Connect(t, addr, "observer", testenv.ClientOptions{Username: "observer", Password: "po"})
	for i := range n {
		obs.Publish(t, "test/work", fmt.Sprint(i), 1, false)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return len(shA.list())+len(shB.list()) >= n }, "shared messages missing")
	a.Sync(context.Background())
	b.Sync(context.Background())
	if got := len(shA.list()) + len(shB.list()); got != n {
		t.Errorf("shared subscription delivered %d messages, want each of %d once", got, n)
	}
	if len(shA.list()) == 0 || len(shB.list()) == 0 {
		t.Errorf("shared subscription: a got %d, b got %d; want both to take a share", len(shA.list()), len(shB.list()))
	}

	// Concurrent Syncs share round trips and all return.
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := a.Sync(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()

	bad, err := New(testenv.Logger(t), Options{Server: Server{Addr: "mqtt://" + addr, Username: "a", Password: "guess", ClientID: "intruder", Keepalive: 5}})
	if err != nil {
		t.Fatal(err)
	}
	bad.Serve()
	defer bad.Close()
	if err := bad.Publish("test/a/msg", []byte("x"), false, 0); err == nil {
		t.Error("publish without a connection succeeded")
	}
	if bad.Connected() {
		t.Error("wrong password connected")
	}
}

// TestClientReconnects: after the server restarts on the same address the client subscribes again and says hello.
func TestClientReconnects(t *testing.T) {
	m := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	addr := m.Addr
	in := &inbox{}
	a := dial(t, addr, "a", "", map[string]*inbox{"test/+/msg": in})
	m.Stop()
	testenv.Eventually(t, 10*time.Second, func() bool { return !a.Connected() }, "no disconnect noticed")
	// While down, QoS 1 messages are kept for the next connection, QoS 0 ones refused.
	for i := range 3 {
		if err := a.Publish("test/kept", []byte(fmt.Sprint(i)), true, 1); err != nil {
			t.Fatalf("QoS 1 publish while down: %v", err)
		}
	}
	if err := a.Publish("test/lost", []byte("x"), true, 0); !errors.Is(err, ErrNotConnected) {
		t.Errorf("QoS 0 publish while down: %v, want ErrNotConnected", err)
	}
	testenv.Mosquitto(t, testenv.MosquittoOptions{Addr: addr})
	testenv.Eventually(t, 20*time.Second, a.Connected, "no reconnect")
	obs := testenv.Connect(t, addr, "observer", testenv.ClientOptions{})
	obs.Subscribe(t, "test/kept", "test/lost")
	if got := obs.WaitFor(t, "test/kept"); got.Payload != "2" {
		t.Errorf("retained after the queue was sent: %q, want the last of three", got.Payload)
	}
	obs.Publish(t, "test/x/msg", "again", 1, false)
	testenv.Eventually(t, 10*time.Second, func() bool { return len(in.list()) == 1 }, "not subscribed after reconnect: %q", in.list())
	for _, m := range obs.Messages() {
		if m.Topic == "test/lost" {
			t.Error("a QoS 0 message published while down arrived")
		}
	}
}

// TestSyncDeniedByACL: when the ACL does not let the client use its sync topic, Sync waits once, then says so at
// once instead of stalling every caller.
func TestSyncDeniedByACL(t *testing.T) {
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Users: map[string]string{"a": "pa"}, ACL: "pattern readwrite test/+/msg\n"}).Addr
	a := dial(t, addr, "a", "pa", nil)
	if err := a.Sync(context.Background()); err != nil {
		t.Fatalf("first Sync: %v", err)
	}
	if err := a.Sync(context.Background()); !errors.Is(err, ErrSyncFailing) {
		t.Errorf("Sync with a denied topic: %v, want ErrSyncFailing", err)
	}
}

// TestOversizedDropped: a message far beyond anything wgkex sends (a gateway may publish megabytes on its own
// topics, which the broker subscribes to) never reaches the broker: it announces a maximum packet size, and
// Mosquitto drops larger messages for it.
func TestOversizedDropped(t *testing.T) {
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{})
	in := &inbox{}
	dial(t, mq.Addr, "broker-a", "", map[string]*inbox{"t/#": in})
	gw := testenv.Connect(t, mq.Addr, "gw", testenv.ClientOptions{})
	gw.Publish(t, "t/big", strings.Repeat("x", 2<<20), 1, false)
	gw.Publish(t, "t/small", "ok", 1, false)
	testenv.Eventually(t, 10*time.Second, func() bool { return len(in.list()) > 0 && in.list()[len(in.list())-1] == "t/small ok" }, "small message not received")
	for _, m := range in.list() {
		if strings.HasPrefix(m, "t/big") {
			t.Errorf("received a message of %d bytes", len(m))
		}
	}
}
