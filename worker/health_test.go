package worker

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// TestHealthAnswers: the answer comes from the gateway itself (no MQTT session here at all): 200 while the device
// is readable, 503 when it is not and while the worker drains. Every node on the gateway asks once a minute, so
// the device is read at most once per healthFresh, whatever the number of requests (a read lists every peer
// under the dataplane's lock; 20,000 nodes asking, each answer a read, kept the lock from the loop).
func TestHealthAnswers(t *testing.T) {
	fake := dataplane.NewFake(welt)
	var reads atomic.Int64
	var broken atomic.Bool
	fake.Fail = func(step, _ string) error {
		if step != "device" {
			return nil
		}
		reads.Add(1)
		if broken.Load() {
			return errors.New("netlink: no such device")
		}
		return nil
	}
	a, c := newAgent(t, fake, nil)
	var draining atomic.Bool
	h := &healthServer{a: a, draining: draining.Load}
	get := func() int {
		rec := httptest.NewRecorder()
		h.serve(rec, welt)
		return rec.Code
	}
	var got []int
	for range 1000 {
		got = append(got, get())
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d device reads for 1000 requests within %v, want 1", n, healthFresh)
	}
	broken.Store(true)
	c.advance(healthFresh)
	got = append(got[:1], get(), get())
	draining.Store(true)
	broken.Store(false)
	c.advance(healthFresh)
	got = append(got, get())
	want := []int{http.StatusOK, http.StatusServiceUnavailable, http.StatusServiceUnavailable, http.StatusServiceUnavailable}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	if n := reads.Load(); n != 2 {
		t.Errorf("%d device reads, want 2", n)
	}
}

// TestHealthConnectionsEnd: a node that keeps its connection open after an answer (keep-alive) or never finishes
// its request is disconnected; before, an idle keep-alive connection was held for ever, so the nodes of a link
// could pile up connections and goroutines without bound.
func TestHealthConnectionsEnd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := healthHTTP(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("OK\n")) }), 200*time.Millisecond)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second)) // only so that a failing test ends
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Then idle: the server must close the connection (EOF), long before the test's own deadline.
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("idle keep-alive connection: read %v, want EOF (closed by the server)", err)
	}
}

// TestHealthLoopCheap: the loop that keeps the listeners bound to their interfaces (every healthRetry, for the
// worker's whole life) looks at the interfaces only: it used to read every device with all its peers each time.
func TestHealthLoopCheap(t *testing.T) {
	fake := dataplane.NewFake(welt)
	var reads, looks atomic.Int64
	fake.Fail = func(step, _ string) error {
		switch step {
		case "device":
			reads.Add(1)
		case "interface":
			looks.Add(1)
		}
		return nil
	}
	a, _ := newAgent(t, fake, nil)
	h := &healthServer{a: a, port: 1, servers: map[string]listening{}}
	h.listenAll()
	h.listenAll()
	if reads.Load() != 0 || looks.Load() == 0 {
		t.Errorf("%d device reads and %d interface looks, want 0 and some", reads.Load(), looks.Load())
	}
}
