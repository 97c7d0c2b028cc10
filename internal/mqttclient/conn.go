package mqttclient

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"sync"
	"time"

	"golang.org/x/net/proxy"
)

// readBuffer is the size of a connection's read buffer: many small packets (acknowledgements, keys, choices)
// are read with one system call.
const readBuffer = 32 << 10

// dialServer connects to the server at u ("mqtt" or "tls", as ServerURL makes it) the way autopaho would, through
// $all_proxy if set, and returns the connection batched (batchConn).
func dialServer(ctx context.Context, u *url.URL, tlsCfg *tls.Config) (net.Conn, error) {
	conn, err := proxy.Dial(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	if u.Scheme == "tls" {
		if tlsCfg.ServerName == "" { // verify the URL's host, as autopaho's tls.Dialer did
			tlsCfg = tlsCfg.Clone()
			tlsCfg.ServerName = u.Hostname()
		}
		t := tls.Client(conn, tlsCfg)
		if err := t.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, err
		}
		conn = t
	}
	return newBatchConn(conn), nil
}

// closeFlush bounds how long Close waits for the write under way, which carries what paho wrote last (a
// DISCONNECT) before it closes the connection.
const closeFlush = time.Second

// maxPending bounds what a batchConn holds unwritten: a Write beyond it waits for the write under way, so that a
// slow server slows the publishers down as the socket would.
const maxPending = 1 << 20

// batchConn is a connection that reads through a buffer and writes the packets that several goroutines send at
// the same time with one system call. paho reads from one goroutine and writes every packet between Lock and
// Unlock (packets.ControlPacket.WriteTo, which all of paho's writes go through), in one or more Writes; batchConn
// appends them to a buffer, and the Unlock that finds no write under way writes the buffer, and keeps writing
// what other packets appended meanwhile until the buffer is empty. The others return at once: their packets go
// out in the order they were appended, with the next system call. A failed write closes the connection, so that
// paho's reader fails and the connection is renewed; later Writes return the error. The packet whose write
// failed is not told (its Write returned before): a QoS 1 message is then never acknowledged and is sent again on
// the new connection, a QoS 0 message is lost with the connection, as MQTT allows. Close waits for the write
// under way.
type batchConn struct {
	net.Conn
	r *bufio.Reader

	packet sync.Mutex // held by paho while it writes one packet

	mu       sync.Mutex
	drained  sync.Cond // signalled after each write
	buf      []byte    // appended, not yet written
	spare    []byte    // the buffer last written, reused
	flushing bool      // a goroutine writes buf
	err      error     // the first failed write
}

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{Conn: c, r: bufio.NewReaderSize(c, readBuffer)}
	b.drained.L = &b.mu
	return b
}

// Read reads through the buffer. Once a failed write has closed the connection, it returns that write's error.
func (c *batchConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if errors.Is(err, net.ErrClosed) {
		c.mu.Lock()
		if c.err != nil {
			err = c.err
		}
		c.mu.Unlock()
	}
	return n, err
}

// Close closes the connection once the write under way, and what was appended meanwhile, is written (at most
// closeFlush later): paho writes a DISCONNECT and closes the connection at once, and a server that does not get
// the DISCONNECT publishes the client's will.
func (c *batchConn) Close() error {
	c.mu.Lock()
	if c.flushing {
		c.Conn.SetWriteDeadline(time.Now().Add(closeFlush))
		for c.flushing {
			c.drained.Wait()
		}
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// Lock starts a packet (sync.Locker, as packets.ControlPacket.WriteTo uses it).
func (c *batchConn) Lock() { c.packet.Lock() }

// Unlock ends a packet and writes it unless a write is under way, which then writes it next.
func (c *batchConn) Unlock() {
	c.packet.Unlock()
	c.flush()
}

// Write appends p to the packet; Unlock writes it. While maxPending bytes wait, it waits for the write under way.
func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.err == nil && c.flushing && len(c.buf) >= maxPending {
		c.drained.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// flush writes the buffer, and what is appended while it writes, unless another goroutine does so already.
func (c *batchConn) flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.flushing {
		return
	}
	c.flushing = true
	for len(c.buf) > 0 && c.err == nil {
		b := c.buf
		c.buf = c.spare[:0]
		c.mu.Unlock()
		_, err := c.Conn.Write(b)
		c.mu.Lock()
		c.spare = b[:0]
		if err != nil {
			c.err = err
			c.Conn.Close()
		}
		c.drained.Broadcast()
	}
	c.buf = c.buf[:0]
	c.flushing = false
	c.drained.Broadcast()
}
