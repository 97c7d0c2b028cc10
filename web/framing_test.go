package web

import (
	"bytes"
	"testing"
)

// refFraming is framing's rule written plainly: split into lines, a section ends at an empty one.
func refFraming(in []byte) bool {
	lines := bytes.Split(in, []byte("\n"))
	lines = lines[:len(lines)-1] // the last has no end yet
	cl, te := false, false
	for _, l := range lines {
		l = bytes.ToLower(l)
		switch {
		case len(bytes.TrimSuffix(l, []byte("\r"))) == 0 && len(l) <= 1:
			cl, te = false, false
		case bytes.HasPrefix(l, []byte("content-length:")):
			cl = true
		case bytes.HasPrefix(l, []byte("transfer-encoding:")):
			te = true
		}
		if cl && te {
			return true
		}
	}
	return false
}

// scanSplit feeds in to a new framing in two reads, split at i, and returns what it found.
func scanSplit(in []byte, i int) bool {
	var f framing
	f.scan(in[:i])
	f.scan(in[i:])
	return f.both.Load()
}

func TestFraming(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		want     bool
	}{
		{"both", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"both, other order and case", "POST / HTTP/1.1\r\ntransfer-ENCODING: chunked\r\nCONTENT-length:4\r\n\r\n", true},
		{"both, bare LF", "POST / HTTP/1.1\nContent-Length: 4\nTransfer-Encoding: chunked\n\n", true},
		{"Content-Length alone", "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd", false},
		{"Transfer-Encoding alone", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"one each in two requests", "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"second request has both", "GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", true},
		{"not at the start of a line", "POST / HTTP/1.1\r\nX-Content-Length: 4\r\nX-Transfer-Encoding: chunked\r\n\r\n", false},
		{"line not ended yet", "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chun", false},
		{"no colon", "POST / HTTP/1.1\r\nContent-Length 4\r\nTransfer-Encoding chunked\r\n\r\n", false},
		{"empty", "", false},
		{"a long line between", "POST / HTTP/1.1\r\nContent-Length: 4\r\nX: " + string(bytes.Repeat([]byte("a"), 5000)) + "\r\nTransfer-Encoding: chunked\r\n\r\n", true},
	} {
		in := []byte(tt.in)
		if got := refFraming(in); got != tt.want {
			t.Errorf("%s: the reference says %v, want %v", tt.name, got, tt.want)
		}
		for i := range len(in) + 1 {
			if got := scanSplit(in, i); got != tt.want {
				t.Errorf("%s, read split at %d: %v, want %v", tt.name, i, got, tt.want)
				break
			}
		}
		var f framing
		for _, b := range in {
			f.scan([]byte{b})
		}
		if f.both.Load() != tt.want {
			t.Errorf("%s, read byte by byte: %v, want %v", tt.name, f.both.Load(), tt.want)
		}
	}
}

// FuzzFraming: however the bytes arrive, framing finds what the plain rule finds.
func FuzzFraming(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 20)
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"), 3)
	f.Add([]byte("POST / HTTP/1.1\nCONTENT-LENGTH:1\n\nTransfer-Encoding: x\n"), 0)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		if split < 0 || split > len(in) {
			split = len(in) / 2
		}
		if got, want := scanSplit(in, split), refFraming(in); got != want {
			t.Errorf("framing %v, the plain rule %v, for %q split at %d", got, want, in, split)
		}
	})
}
