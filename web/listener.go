package web

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
)

// Listener wraps ln so that the few answers net/http writes by itself, before any handler runs, are JSON in the
// reference's error shape too: 431 for headers over MaxHeaderBytes, 400 for a malformed request, 501 for an
// unknown transfer encoding, 505. net/http writes each of them as text in one Write to the connection, ending its
// header with "Content-Type: text/plain; charset=utf-8", "Connection: close" and a blank line, then closes the
// connection; nothing else is written in that form (a handler's headers come sorted, Connection before
// Content-Type). The wrapper recognises that Write and writes the same status with a JSON body instead; likewise
// net/http's empty 417 for an unknown Expect header. The alternative, a larger MaxHeaderBytes plus a middleware
// that counts header bytes, still leaves net/http's text 431 above the larger limit, and its 400s untouched.
// TestServerErrorsAreJSON pins the form against the Go in use.
//
// The wrapper also watches the requests' header sections for one with both Content-Length and
// Transfer-Encoding (framing), which net/http reads by Transfer-Encoding after dropping Content-Length, so that
// the server can refuse it and close the connection (Server.refuseAmbiguousLength).
func Listener(ln net.Listener) net.Listener { return jsonErrorListener{ln} }

type jsonErrorListener struct{ net.Listener }

func (l jsonErrorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &jsonErrorConn{Conn: c}, nil
}

// jsonErrorConn rewrites net/http's own text error answers and watches the header sections read; see Listener.
type jsonErrorConn struct {
	net.Conn
	framing framing
}

// Read reads from the connection and watches the header sections in what it read.
func (c *jsonErrorConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.framing.scan(p[:n])
	return n, err
}

// connKey is the context key of a request's *jsonErrorConn (HTTPServer's ConnContext).
type connKey struct{}

// withConn puts the connection into the context of its requests, where refuseAmbiguousLength looks.
func withConn(ctx context.Context, c net.Conn) context.Context {
	if jc, ok := c.(*jsonErrorConn); ok {
		return context.WithValue(ctx, connKey{}, jc)
	}
	return ctx
}

// ambiguousLength reports whether a header section read on the connection of r so far had both Content-Length
// and Transfer-Encoding.
func ambiguousLength(r *http.Request) bool {
	jc, ok := r.Context().Value(connKey{}).(*jsonErrorConn)
	return ok && jc.framing.both.Load()
}

// framing watches the bytes read on a connection for a header section with both a Content-Length and a
// Transfer-Encoding field: a request smuggled past a proxy that takes the length from the other one (RFC 9112
// §6.3 says to close the connection after answering it). It does not know where a body ends, so it takes every
// run of lines up to an empty one for a header section; a body that looks like one (no request of this API's
// does) at worst closes its connection. Reads of one connection never overlap; both may be read concurrently.
type framing struct {
	line   [len("transfer-encoding:")]byte // the start of the current line, in lower case
	n      int                             // the length of the current line so far
	cl, te bool                            // the current section has Content-Length, Transfer-Encoding
	both   atomic.Bool                     // a section had both
}

// scan reads p, which continues what scan read before.
func (f *framing) scan(p []byte) {
	for _, b := range p {
		if b == '\n' {
			f.endLine()
			continue
		}
		if f.n < len(f.line) {
			if 'A' <= b && b <= 'Z' {
				b += 'a' - 'A'
			}
			f.line[f.n] = b
		}
		f.n++
	}
}

// endLine takes the line read: a field of the section, or the empty line that ends it.
func (f *framing) endLine() {
	line := f.line[:min(f.n, len(f.line))]
	switch {
	case f.n == 0 || f.n == 1 && line[0] == '\r':
		f.cl, f.te = false, false
	case bytes.HasPrefix(line, []byte("content-length:")):
		f.cl = true
	case bytes.HasPrefix(line, []byte("transfer-encoding:")):
		f.te = true
	}
	if f.cl && f.te {
		f.both.Store(true)
	}
	f.n = 0
}

// textErrorHeaders ends the header of every answer net/http writes by itself (net/http/server.go, errorHeaders).
const textErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

func (c *jsonErrorConn) Write(p []byte) (int, error) {
	if len(p) > 12 && bytes.HasPrefix(p, []byte("HTTP/1.1 ")) && (p[9] == '4' || p[9] == '5') {
		if code, ok := textError(p); ok {
			if _, err := c.Conn.Write(jsonError(code)); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

// CloseWrite lets net/http half-close the connection after a 431, as it does with a bare TCP connection.
func (c *jsonErrorConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// textError reports whether p is a whole answer written by net/http itself, and its status code. Besides the text
// answers, that is 417 for an Expect header other than 100-continue, which net/http sends with an empty body
// before any handler runs; no handler answers 417.
func textError(p []byte) (int, bool) {
	if bytes.HasPrefix(p, []byte("HTTP/1.1 417 ")) {
		return http.StatusExpectationFailed, true
	}
	end := bytes.Index(p, []byte(textErrorHeaders))
	if end < 0 || bytes.Contains(p[:end], []byte("\r\n")) {
		return 0, false
	}
	code, err := strconv.Atoi(string(p[9:12]))
	if err != nil || http.StatusText(code) == "" {
		return 0, false
	}
	return code, true
}

// jsonError is a whole HTTP/1.1 answer with code and {"error":{"message":<status text>}}.
func jsonError(code int) []byte {
	body := appendError(nil, http.StatusText(code))
	out := make([]byte, 0, 128+len(body))
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(code), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(code)...)
	out = append(out, "\r\nContent-Type: application/json\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(body)), 10)
	out = append(out, "\r\nConnection: close\r\n\r\n"...)
	return append(out, body...)
}
