package mqttd

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// listener is a TCP (optionally TLS) listener for mochi that, unlike mochi's own, survives accept errors such as
// EMFILE: it logs them and retries with a growing pause, as net/http does. It also bounds the number of open
// connections (counting those that have not sent CONNECT yet) and those without a credential per address, and
// gives every connection a deadline for its TLS handshake and CONNECT packet.
type listener struct {
	id       string
	address  string
	tls      *tls.Config
	loopback bool
	// slots holds one token per open connection, shared by all listeners of a server.
	slots chan struct{}
	// uncredited counts the connections without a credential per address, shared by all listeners.
	uncredited     *addrCounts
	connectTimeout time.Duration
	refused        func(reason string)
	// disconnect disconnects the clients of a listener (Server.closeClients).
	disconnect func(listenerID string)
	log        *slog.Logger

	ln     net.Listener
	closed atomic.Bool
	once   sync.Once
	// mu guards open; establishing counts the goroutines handing connections to mochi. Close waits for them, so
	// that mochi's wait for its clients (Listeners.CloseAll) never runs while one of them is still starting: mochi
	// counts a client (WaitGroup.Add) only once its goroutine runs, which would race with that wait.
	mu           sync.Mutex
	open         map[*conn]struct{}
	establishing sync.WaitGroup
}

var _ listeners.Listener = (*listener)(nil)

// listen opens the socket at once so that New fails on a busy port and Addrs knows the port.
func (l *listener) listen() error {
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	l.ln = ln
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		l.loopback = a.IP.IsLoopback()
	}
	return nil
}

// Init is called by mochi when the listener is added; the socket is already open.
func (l *listener) Init(*slog.Logger) error { return nil }

// ID returns the listener's id.
func (l *listener) ID() string { return l.id }

// Address returns the address the listener is bound to.
func (l *listener) Address() string { return l.ln.Addr().String() }

// Protocol returns "tcp".
func (l *listener) Protocol() string { return "tcp" }

// Serve accepts connections until Close and hands each to establish on its own goroutine.
func (l *listener) Serve(establish listeners.EstablishFn) {
	var pause time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE, ENFILE, ECONNABORTED and the like: nothing is wrong with the listener itself.
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			l.log.Warn("mqtt accept failed, retrying", "listener", l.address, "err", err, "pause", pause)
			time.Sleep(pause)
			continue
		}
		pause = 0
		remote := c.RemoteAddr().String()
		key := addrKey(remote)
		if ok, n := l.uncredited.take(key); !ok {
			l.refused(reasonPerAddress)
			if n > 0 {
				l.log.Warn("mqtt connections refused: too many without a credential from one address",
					"remote", remote, "address", key.String(), "limit", l.uncredited.max, "refused", n)
			}
			c.Close()
			continue
		}
		select {
		case l.slots <- struct{}{}:
		default:
			l.uncredited.release(key)
			l.refused(reasonMaxConnections)
			l.log.Warn("mqtt connection refused: too many connections", "remote", remote)
			c.Close()
			continue
		}
		cc := &conn{Conn: c, slots: l.slots, uncredited: l.uncredited, addr: key}
		cc.counted.Store(true)
		_ = cc.SetDeadline(time.Now().Add(l.connectTimeout)) // mochi replaces it with the keepalive after CONNECT
		var nc net.Conn = cc
		if l.tls != nil {
			nc = tls.Server(cc, l.tls)
		}
		l.mu.Lock()
		if l.closed.Load() {
			l.mu.Unlock()
			nc.Close()
			return
		}
		if l.open == nil {
			l.open = make(map[*conn]struct{})
		}
		l.open[cc] = struct{}{}
		l.establishing.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.establishing.Done()
			if err := establish(l.id, nc); err != nil {
				l.connectionEnded(nc, err)
			}
			l.mu.Lock()
			delete(l.open, cc)
			l.mu.Unlock()
		}()
	}
}

// connectionEnded counts and logs the end of a connection that never got past CONNECT for a reason of its own.
func (l *listener) connectionEnded(c net.Conn, err error) {
	remote := c.RemoteAddr().String()
	switch reason := establishReason(err); reason {
	case "":
		l.log.Debug("mqtt connection ended", "remote", remote, "err", err)
	default:
		l.refused(reason)
		l.log.Warn("mqtt connection refused", "remote", remote, "reason", reason, "err", err)
	}
}

// Close stops accepting, disconnects the listener's clients (with Server.closeClients instead of mochi's
// function), closes the connections still before CONNECT and waits until every connection has ended.
func (l *listener) Close(listeners.CloseFn) {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed.Store(true)
		l.mu.Unlock()
		l.ln.Close()
		l.disconnect(l.id)
		l.mu.Lock()
		for c := range l.open {
			c.Close()
		}
		l.mu.Unlock()
		l.establishing.Wait()
	})
}

// conn is an accepted connection. It gives its slot back when closed and carries the client's identity once
// authenticated, so that the ACL hooks need no map of their own.
type conn struct {
	net.Conn
	slots    chan struct{}
	released atomic.Bool
	// uncredited counts the connection under addr until it authenticates with a credential or closes.
	uncredited *addrCounts
	addr       netip.Prefix
	counted    atomic.Bool
	dropped    atomic.Bool // disconnected as a slow consumer
	// superseded: the same client reconnected and takes the session over; its will is not sent.
	superseded atomic.Bool
	revoked    atomic.Bool // disconnected because a reload removed or changed its credential
	id         atomic.Pointer[identity]
}

// Close closes the connection and frees its slots.
func (c *conn) Close() error {
	if c.released.CompareAndSwap(false, true) {
		<-c.slots
	}
	c.credited()
	return c.Conn.Close()
}

// credited stops counting the connection among those without a credential from its address.
func (c *conn) credited() {
	if c.counted.CompareAndSwap(true, false) {
		c.uncredited.release(c.addr)
	}
}

// addrCounts counts open connections without a credential per address (IPv4 address or IPv6 /64, as addrKey):
// from accept until the client authenticates with a credential, and for the whole connection of an anonymous
// client. One address can so hold at most max of them, however many connections the server takes in all. An
// entry lives only while its address has a connection counted, so the map holds at most one per open connection.
type addrCounts struct {
	max int
	mu  sync.Mutex
	m   map[netip.Prefix]*addrCount
	now func() time.Time // time.Now; tests set a clock of their own
}

// floodLogEvery is how often the refusals of one address are logged: once when a flood starts, then at most once
// in this time with the number refused since, also while the address keeps a connection open in between.
const floodLogEvery = time.Minute

type addrCount struct {
	n int
	// loggedAt is when a refusal was last logged, refused the refusals since then not logged.
	loggedAt time.Time
	refused  int
}

// take counts a connection from key. It returns false when key has max connections counted already; then
// refused > 0 asks the caller to log that many refusals (this one included).
func (a *addrCounts) take(key netip.Prefix) (ok bool, refused int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.m[key]
	if e == nil {
		e = &addrCount{}
		a.m[key] = e
	}
	if e.n < a.max {
		e.n++
		return true, 0
	}
	e.refused++
	if now := a.now(); e.loggedAt.IsZero() || now.Sub(e.loggedAt) >= floodLogEvery {
		refused, e.loggedAt, e.refused = e.refused, now, 0
	}
	return false, refused
}

// release uncounts a connection from key.
func (a *addrCounts) release(key netip.Prefix) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e := a.m[key]; e != nil {
		if e.n--; e.n <= 0 {
			delete(a.m, key)
		}
	}
}

// connOf returns the connection under nc (through TLS), or nil for the inline client.
func connOf(nc net.Conn) *conn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*conn)
	return c
}
