package mqttd

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// listener is a TCP (optionally TLS) listener for mochi that, unlike mochi's own, survives accept errors such as
// EMFILE: it logs them and retries with a growing pause, as net/http does. It also bounds the number of open
// connections (counting those that have not sent CONNECT yet) and gives every connection a deadline for its TLS
// handshake and CONNECT packet.
type listener struct {
	id       string
	address  string
	tls      *tls.Config
	loopback bool
	// slots holds one token per open connection, shared by all listeners of a server.
	slots          chan struct{}
	connectTimeout time.Duration
	refused        func(reason string)
	log            *slog.Logger

	ln     net.Listener
	closed atomic.Bool
	once   sync.Once
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
		select {
		case l.slots <- struct{}{}:
		default:
			l.refused(reasonMaxConnections)
			l.log.Warn("mqtt connection refused: too many connections", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		cc := &conn{Conn: c, slots: l.slots}
		_ = cc.SetDeadline(time.Now().Add(l.connectTimeout)) // mochi replaces it with the keepalive after CONNECT
		var nc net.Conn = cc
		if l.tls != nil {
			nc = tls.Server(cc, l.tls)
		}
		go func() {
			if err := establish(l.id, nc); err != nil {
				l.connectionEnded(nc, err)
			}
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

// Close stops accepting and disconnects the listener's clients.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.once.Do(func() {
		l.closed.Store(true)
		l.ln.Close()
		closeClients(l.id)
	})
}

// conn is an accepted connection. It gives its slot back when closed and carries the client's identity once
// authenticated, so that the ACL hooks need no map of their own.
type conn struct {
	net.Conn
	slots    chan struct{}
	released atomic.Bool
	dropped  atomic.Bool // disconnected as a slow consumer
	id       atomic.Pointer[identity]
}

// Close closes the connection and frees its slot.
func (c *conn) Close() error {
	if c.released.CompareAndSwap(false, true) {
		<-c.slots
	}
	return c.Conn.Close()
}

// connOf returns the connection under nc (through TLS), or nil for the inline client.
func connOf(nc net.Conn) *conn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*conn)
	return c
}
