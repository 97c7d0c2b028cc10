package testenv

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Relay is a TCP listener on 127.0.0.1 whose port the system picked and which stays open for the whole test, so
// that no other process can take the port. Until Forward is called it closes every connection at once (a client
// sees its attempt fail); after that it relays connections to the target. It lets a test give a client an
// address before the server behind it exists, or put a TCP address in front of a Unix socket.
type Relay struct {
	ln      net.Listener
	target  atomic.Pointer[[2]string] // network, address
	refused atomic.Int64
	wg      sync.WaitGroup

	mu      sync.Mutex
	conns   map[net.Conn]bool // open connections, closed at cleanup
	closing bool
}

// NewRelay starts a relay; it stops at cleanup.
func NewRelay(t testing.TB) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Relay{ln: ln, conns: map[net.Conn]bool{}}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		r.closing = true
		for c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

// track records the connections of a relayed pair as open, or reports false when the relay is closing.
func (r *Relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return false
	}
	for _, c := range cs {
		r.conns[c] = true
	}
	return true
}

func (r *Relay) forget(cs ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		delete(r.conns, c)
	}
}

// Addr is the relay's host:port.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Refused returns how many connections were closed because no target was set yet.
func (r *Relay) Refused() int64 { return r.refused.Load() }

// Forward relays every later connection to addr on network ("tcp" or "unix").
func (r *Relay) Forward(network, addr string) { r.target.Store(&[2]string{network, addr}) }

func (r *Relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		to := r.target.Load()
		if to == nil {
			r.refused.Add(1)
			c.Close()
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer c.Close()
			up, err := net.Dial(to[0], to[1])
			if err != nil {
				return
			}
			defer up.Close()
			if !r.track(c, up) {
				return
			}
			defer r.forget(c, up)
			done := make(chan struct{})
			go func() { io.Copy(up, c); up.Close(); close(done) }()
			io.Copy(c, up)
			c.Close()
			<-done
		}()
	}
}
