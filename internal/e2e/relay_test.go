package e2e

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// relay is a TCP proxy that delivers every byte delay after it arrived, in both directions, like a slow link.
// It reports (once per connection number) when the client sends a chunk containing watch that is not a CONNECT.
type relay struct {
	ln       net.Listener
	upstream string
	delay    time.Duration
	watch    []byte
	mu       sync.Mutex
	conns    []net.Conn
	n        int
	seen     chan int // connection number (1, 2, …) whose client sent watch
	closed   chan int // connection number whose server side closed (it has processed everything before)
}

func newRelay(t *testing.T, upstream string, delay time.Duration, watch string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, upstream: upstream, delay: delay, watch: []byte(watch), seen: make(chan int, 16), closed: make(chan int, 16)}
	t.Cleanup(func() { ln.Close(); r.cut() })
	go r.serve()
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", r.upstream)
		if err != nil {
			c.Close()
			continue
		}
		r.mu.Lock()
		r.n++
		n := r.n
		r.conns = append(r.conns, c, up)
		r.mu.Unlock()
		go r.pipe(c, up, n, true)
		go r.pipe(up, c, n, false)
	}
}

// pipe copies src to dst, each chunk delay after it was read; at EOF it delivers what is in flight, then closes.
func (r *relay) pipe(src, dst net.Conn, n int, fromClient bool) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	ch := make(chan chunk, 1024)
	go func() {
		defer close(ch)
		buf := make([]byte, 32<<10)
		reported := false
		for {
			k, err := src.Read(buf)
			if k > 0 {
				b := append([]byte(nil), buf[:k]...)
				// The CONNECT packet names the will's topic too; only a PUBLISH counts.
				if fromClient && !reported && bytes.Contains(b, r.watch) && !bytes.Contains(b, []byte("\x00\x04MQTT")) {
					reported = true
					r.seen <- n
				}
				ch <- chunk{b, time.Now().Add(r.delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		time.Sleep(time.Until(c.at)) // the link's latency, not a wait for an event
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	for range ch {
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	} else {
		dst.Close()
	}
	io.Copy(io.Discard, src)
	if !fromClient {
		r.closed <- n
	}
}

// cut drops every connection at once, as a broken link would.
func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// TestStopWhileStatusUnacknowledged: after a reconnect over a slow link (400 ms each way), the worker is stopped
// while its `status 1` is still unacknowledged. It must leave the broker believing it is offline: the farewell is
// published regardless, and the disconnect carries reason 0x04 so that the will (status 0) fires as well. (Before,
// the worker skipped the farewell because it was not yet "up" and disconnected cleanly, so the will was discarded
// and the gateway stayed online.)
func TestStopWhileStatusUnacknowledged(t *testing.T) {
	d := startBroker(t, brokerConfig(t, filepath.Join(t.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", ""))
	r := newRelay(t, d.MQTTAddr(), 400*time.Millisecond, "wireguard-worker/gw-slow/status")
	_, stop := startAgent(t, dataplane.NewFake(dataplane.LinkFor("welt")), "gw-slow", map[string]string{"ffmuc_welt": "welt"}, mqttOpts(r.addr()))
	if n := <-r.seen; n != 1 {
		t.Fatalf("status first seen on connection %d", n)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return online(d, "gw-slow") }, "worker not online")
	r.cut()
	testenv.Eventually(t, 10*time.Second, func() bool { return !online(d, "gw-slow") }, "the will did not mark the dropped worker offline")
	select {
	case n := <-r.seen: // the reconnected worker sent status 1; its acknowledgement is 800 ms away
		if n != 2 {
			t.Fatalf("status seen on connection %d, want 2", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not reconnect")
	}
	stop()
	// Once the server has closed connection 2 it has processed everything the worker sent on it.
	for n := range r.closed {
		if n == 2 {
			break
		}
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, w := range d.Broker.Workers() {
			if w.Name == "gw-slow" && w.Online {
				return false
			}
		}
		return true
	}, "a stopped worker is still online at the broker")
	// And it stays offline: nothing delayed arrives afterwards to turn it back on.
	r.cut()
	if online(d, "gw-slow") {
		t.Error("worker online again")
	}
}

// dropFirst is a TCP proxy in front of upstream that passes every MQTT packet but the client's first of type
// typ (its fixed header's high nibble): that one the server never sees, as if lost on the way.
func dropFirst(t *testing.T, upstream string, typ byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	var dropped atomic.Bool
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			go func() { io.Copy(c, up); c.Close() }()
			go func() {
				defer up.Close()
				br := bufio.NewReader(c)
				for {
					// Fixed header: the type byte, then the remaining length in base-128 digits, low first.
					first, err := br.ReadByte()
					if err != nil {
						return
					}
					pk, n := []byte{first}, 0
					for shift := 0; ; shift += 7 {
						d, err := br.ReadByte()
						if err != nil {
							return
						}
						pk, n = append(pk, d), n|int(d&0x7f)<<shift
						if d < 0x80 {
							break
						}
					}
					body := make([]byte, n)
					if _, err := io.ReadFull(br, body); err != nil {
						return
					}
					if first>>4 == typ && dropped.CompareAndSwap(false, true) {
						continue
					}
					if _, err := up.Write(append(pk, body...)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestSetupRetried: the worker's SUBSCRIBE after connecting is lost (or answered too late). The worker tries its
// setup again on the same connection, and comes online with its subscriptions. (It used to give up the setup for
// as long as the connection lasted: connected, never subscribed, never online, no keys.)
func TestSetupRetried(t *testing.T) {
	d := startBroker(t, brokerConfig(t, filepath.Join(t.TempDir(), "state.db"), "127.0.0.1:0", "127.0.0.1:0", ""))
	fake := dataplane.NewFake(dataplane.LinkFor("welt"))
	startAgent(t, fake, "gw-lost", map[string]string{"ffmuc_welt": "welt"}, mqttOpts(dropFirst(t, d.MQTTAddr(), 8)))
	testenv.Eventually(t, 60*time.Second, func() bool { return online(d, "gw-lost") }, "worker not online after its SUBSCRIBE was lost")
	post(t, d.HTTPAddr(), "v1", "ffmuc_welt", nodeKey)
	testenv.Eventually(t, 20*time.Second, func() bool { return strings.Contains(fake.String(), nodeKey+" peer route fdb") }, "key not applied")
}
