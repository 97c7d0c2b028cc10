package mqttclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// gated is a TCP connection whose writes wait until open is closed and are counted; fail makes a write fail.
type gated struct {
	net.Conn
	open   chan struct{}
	mu     sync.Mutex
	writes int
	fail   error
	// deadline is set by SetWriteDeadline.
	deadline atomic.Bool
}

func (g *gated) SetWriteDeadline(t time.Time) error {
	g.deadline.Store(true)
	return g.Conn.SetWriteDeadline(t)
}

func (g *gated) Write(p []byte) (int, error) {
	<-g.open
	g.mu.Lock()
	g.writes++
	err := g.fail
	g.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return g.Conn.Write(p)
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// packet writes one packet in two Writes between Lock and Unlock, as packets.ControlPacket.WriteTo does.
func packet(c *batchConn, s string) {
	c.Lock()
	defer c.Unlock()
	c.Write([]byte(s[:1]))
	c.Write([]byte(s[1:]))
}

// TestBatchConnCoalesces: while one write is under way, the packets of other goroutines do not wait for it; they
// go out whole, in the order they were appended, with one more system call.
func TestBatchConnCoalesces(t *testing.T) {
	client, server := tcpPair(t)
	g := &gated{Conn: client, open: make(chan struct{})}
	c := newBatchConn(g)
	first := make(chan struct{})
	go func() { packet(c, "<first>"); close(first) }()
	testenv.Eventually(t, 5*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.flushing
	}, "the first packet is not being written")
	const n = 100
	var want string
	for i := range n { // one goroutine after the other, so that the order is known; none waits for the gate
		p := fmt.Sprintf("<%03d>", i)
		want += p
		done := make(chan struct{})
		go func() { packet(c, p); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %d waited for the write under way", i)
		}
	}
	close(g.open)
	<-first
	want = "<first>" + want
	got := make([]byte, len(want))
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("stream (-want +got):\n%s", diff)
	}
	if g.writes != 2 {
		t.Errorf("%d system calls for %d packets, want 2", g.writes, n+1)
	}
}

// TestBatchConnWriteFails: a failed write closes the connection; the reader, and every later Write, get the
// write's error.
func TestBatchConnWriteFails(t *testing.T) {
	client, _ := tcpPair(t)
	g := &gated{Conn: client, open: make(chan struct{}), fail: syscall.ECONNRESET}
	close(g.open)
	c := newBatchConn(g)
	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		read <- err
	}()
	packet(c, "<x>")
	select {
	case err := <-read:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("Read after a failed write: %v, want %v", err, syscall.ECONNRESET)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after a failed write")
	}
	if _, err := c.Write([]byte("y")); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("Write after a failed write: %v", err)
	}
}

// TestBatchConnCloseWrites: Close waits for the write under way, so that a packet appended to it (paho's
// DISCONNECT before it closes the connection) reaches the server.
func TestBatchConnCloseWrites(t *testing.T) {
	client, server := tcpPair(t)
	g := &gated{Conn: client, open: make(chan struct{})}
	c := newBatchConn(g)
	go packet(c, "<first>")
	testenv.Eventually(t, 5*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.flushing
	}, "the first packet is not being written")
	packet(c, "<disconnect>")
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	testenv.Eventually(t, 5*time.Second, g.deadline.Load, "Close does not wait for the write under way")
	close(g.open)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatal(err)
	}
	if want := "<first><disconnect>"; string(got) != want {
		t.Errorf("server read %q, want %q", got, want)
	}
}

// TestPublishConcurrent: many goroutines publishing at QoS 1 at once through one connection to Mosquitto all get
// their acknowledgements, and a subscriber receives every message, each goroutine's in its order.
func TestPublishConcurrent(t *testing.T) {
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{}).Addr
	in := &inbox{}
	sub := dial(t, addr, "sub", "", map[string]*inbox{"test/+/n": in})
	pub := dial(t, addr, "pub", "", nil)
	const goroutines, each = 16, 200
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := pub.Publish(fmt.Sprintf("test/%d/n", g), fmt.Appendf(nil, "%d", i), false, 1); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := sub.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return len(in.list()) >= goroutines*each }, "messages missing")
	next := map[string]int{}
	for _, m := range in.list() {
		var g, i int
		if _, err := fmt.Sscanf(m, "test/%d/n %d", &g, &i); err != nil {
			t.Fatalf("message %q: %v", m, err)
		}
		k := fmt.Sprint(g)
		if i != next[k] {
			t.Fatalf("goroutine %d: message %d after %d", g, i, next[k]-1)
		}
		next[k]++
	}
	if len(in.list()) != goroutines*each {
		t.Errorf("received %d messages, want %d", len(in.list()), goroutines*each)
	}
}
