package web

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// serve runs s on a real TCP listener on 127.0.0.1 through Listener, as brokerd does, and returns its address.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := s.HTTPServer(ln.Addr().String())
	go hs.Serve(Listener(ln))
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// clientFrom returns an HTTP client whose connections come from the loopback address from (127.0.0.2 …).
func clientFrom(from string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

type answer struct {
	code             int
	body, retryAfter string
	contentType      string
}

func send(t *testing.T, c *http.Client, method, url, body string, header map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b), resp.Header.Get("Retry-After"), resp.Header.Get("Content-Type")}
}

// limited builds a server with a burst of 3 and a stopped clock, so that no token comes back during the test.
func limited(t *testing.T, opts Options, log *slog.Logger) string {
	t.Helper()
	s, _, _ := newServer(t)
	opts.RateLimit, opts.RateBurst, opts.RateLimitClients = 1, 3, 100
	s = New(s.b, log, opts)
	frozen := time.Now()
	s.limit.now = func() time.Time { return frozen }
	return "http://" + serve(t, s) + "/api/v1/wg/key/exchange"
}

const tooMany = `{"error":{"message":"Too Many Requests"}}` + "\n"

func flood(t *testing.T, c *http.Client, url string, header map[string]string) {
	t.Helper()
	good := `{"domain":"ffmuc_welt","public_key":"` + key1 + `"}`
	for i := 0; i < 3; i++ {
		if a := send(t, c, "POST", url, good, header); a.code != 200 {
			t.Fatalf("request %d of the burst: %+v", i, a)
		}
	}
	a := send(t, c, "POST", url, good, header)
	if a.code != 429 || a.body != tooMany || a.retryAfter != "1" || a.contentType != "application/json" {
		t.Fatalf("after the burst: %+v, want 429 %q with Retry-After 1", a, tooMany)
	}
}

func TestRateLimitPerPeer(t *testing.T) {
	log, logs := testenv.CaptureLogger(t)
	url := limited(t, Options{LogNodeAddresses: true}, log)
	a, b := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")
	flood(t, a, url, nil)
	if got := send(t, b, "POST", url, `{"domain":"ffmuc_welt","public_key":"`+key1+`"}`, nil); got.code != 200 {
		t.Errorf("another address after the flood: %+v, want 200", got)
	}
	// Headers from a peer that is not a trusted proxy change nothing, neither the bucket nor the logged address.
	for _, h := range []map[string]string{
		{"X-Forwarded-For": "198.51.100.7"},
		{"X-Real-IP": "198.51.100.7"},
		{"X-Forwarded-For": "127.0.0.3"}, // the address that still has tokens
	} {
		if got := send(t, a, "POST", url, "{}", h); got.code != 429 {
			t.Errorf("flooded peer with %v: %+v, want 429", h, got)
		}
	}
	logs.Reset()
	send(t, b, "POST", url, `{"domain":"nope","public_key":"`+key1+`"}`, map[string]string{"X-Forwarded-For": "198.51.100.7"})
	if l := logs.String(); !strings.Contains(l, "remote=127.0.0.3") || strings.Contains(l, "198.51.100.7") {
		t.Errorf("refusal logged with the wrong address:\n%s", l)
	}
}

func TestRateLimitBehindTrustedProxy(t *testing.T) {
	log, logs := testenv.CaptureLogger(t)
	url := limited(t, Options{LogNodeAddresses: true, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.4/32")}}, log)
	proxy := clientFrom("127.0.0.4")
	flood(t, proxy, url, map[string]string{"X-Forwarded-For": "198.51.100.7"})
	ok := `{"domain":"ffmuc_welt","public_key":"` + key1 + `"}`
	tests := []struct {
		header map[string]string
		code   int
	}{
		{map[string]string{"X-Forwarded-For": "198.51.100.8"}, 200},                          // another client behind the proxy
		{map[string]string{"X-Real-IP": "198.51.100.9"}, 200},                                // the same by X-Real-IP
		{map[string]string{"X-Forwarded-For": "203.0.113.1, 198.51.100.7"}, 429},             // the client prepends a spoofed address
		{map[string]string{"X-Forwarded-For": "198.51.100.7", "X-Real-IP": "10.0.0.1"}, 429}, // X-Forwarded-For wins
		{map[string]string{"X-Forwarded-For": "198.51.100.7, 127.0.0.4"}, 429},               // a chain of the trusted proxy
	}
	for _, tt := range tests {
		if got := send(t, proxy, "POST", url, ok, tt.header); got.code != tt.code {
			t.Errorf("from the proxy with %v: %+v, want %d", tt.header, got, tt.code)
		}
	}
	// The proxy's own requests (no header) have their own bucket, still full.
	if got := send(t, proxy, "POST", url, ok, nil); got.code != 200 {
		t.Errorf("proxy without header: %+v", got)
	}
	logs.Reset()
	send(t, proxy, "POST", url, `{"domain":"nope","public_key":"`+key1+`"}`, map[string]string{"X-Forwarded-For": "198.51.100.20"})
	if l := logs.String(); !strings.Contains(l, "remote=198.51.100.20") {
		t.Errorf("refusal behind the proxy not logged with the client's address:\n%s", l)
	}
	// Without the proxy being trusted, its header is ignored: a client elsewhere cannot pose as 198.51.100.8.
	other := clientFrom("127.0.0.5")
	for i := 0; i < 3; i++ {
		send(t, other, "POST", url, ok, map[string]string{"X-Forwarded-For": "198.51.100.30"})
	}
	if got := send(t, other, "POST", url, ok, map[string]string{"X-Forwarded-For": "198.51.100.31"}); got.code != 429 {
		t.Errorf("untrusted peer chose its bucket by header: %+v", got)
	}
}

func TestLimiterBoundsClients(t *testing.T) {
	l := newLimiter(1, 2, 3, testenv.Logger(t))
	frozen := time.Now()
	l.now = func() time.Time { return frozen }
	for i := 1; i <= 10; i++ {
		l.allow(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
	}
	if n := l.clients.Len(); n != 3 {
		t.Errorf("tracking %d addresses, want at most 3", n)
	}
	// One bucket for a whole IPv6 /64, for the IPv4-mapped form of an address, and for its zone.
	a := netip.MustParseAddr("2001:db8:1:2::1")
	b := netip.MustParseAddr("2001:db8:1:2:ffff::9")
	if ok, _ := l.allow(a); !ok {
		t.Fatal("first request refused")
	}
	l.allow(b)
	if ok, wait := l.allow(a); ok || retryAfter(wait) != 1 {
		t.Errorf("third request of one /64: allowed %v, Retry-After %d", ok, retryAfter(wait))
	}
	if ok, _ := l.allow(netip.MustParseAddr("2001:db8:1:3::1")); !ok {
		t.Error("the next /64 shares the bucket")
	}
	l.allow(netip.MustParseAddr("::ffff:192.0.2.200"))
	l.allow(netip.MustParseAddr("192.0.2.200"))
	if ok, _ := l.allow(netip.MustParseAddr("192.0.2.200")); ok {
		t.Error("IPv4-mapped address has a bucket of its own")
	}
}

func TestRetryAfter(t *testing.T) {
	for _, tt := range []struct {
		wait time.Duration
		want int
	}{{0, 1}, {100 * time.Millisecond, 1}, {time.Second, 1}, {1001 * time.Millisecond, 2}, {10 * time.Second, 10}} {
		if got := retryAfter(tt.wait); got != tt.want {
			t.Errorf("retryAfter(%v) = %d, want %d", tt.wait, got, tt.want)
		}
	}
}

// raw sends bytes on a fresh connection and returns the whole answer.
func raw(t *testing.T, addr, request string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go c.Write([]byte(request)) // the server may answer before it has read everything
	b, _ := io.ReadAll(bufio.NewReader(c))
	return string(b)
}

// TestServerErrorsAreJSON sends what net/http refuses before any handler runs: headers over MaxHeaderBytes and
// malformed requests. It also pins the text net/http writes there (textErrorHeaders): if a Go release changes it,
// this test fails instead of the answers silently turning to text again.
func TestServerErrorsAreJSON(t *testing.T) {
	s, _, _ := newServer(t)
	addr := serve(t, s)
	big := "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n"
	tests := []struct{ name, request, want string }{
		{"headers too large", big, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\nContent-Length: 56\r\nConnection: close\r\n\r\n" +
			`{"error":{"message":"Request Header Fields Too Large"}}` + "\n"},
		{"malformed header", "GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 36\r\nConnection: close\r\n\r\n" +
			`{"error":{"message":"Bad Request"}}` + "\n"},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 36\r\nConnection: close\r\n\r\n" +
			`{"error":{"message":"Bad Request"}}` + "\n"},
		{"unknown transfer encoding", "POST /api/v1/wg/key/exchange HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
			"HTTP/1.1 501 Not Implemented\r\nContent-Type: application/json\r\nContent-Length: 40\r\nConnection: close\r\n\r\n" +
				`{"error":{"message":"Not Implemented"}}` + "\n"},
		{"unknown expectation", "POST /api/v1/wg/key/exchange HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}",
			"HTTP/1.1 417 Expectation Failed\r\nContent-Type: application/json\r\nContent-Length: 43\r\nConnection: close\r\n\r\n" +
				`{"error":{"message":"Expectation Failed"}}` + "\n"},
	}
	for _, tt := range tests {
		if got := raw(t, addr, tt.request); got != tt.want {
			t.Errorf("%s:\ngot  %q\nwant %q", tt.name, got, tt.want)
		}
	}
	// A handler's own error answer passes through untouched, also on a kept-alive connection after a 200.
	got := raw(t, addr, "GET /api/v1/locations HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.Contains(got, "HTTP/1.1 200 OK") || !strings.Contains(got, "HTTP/1.1 404 Not Found") || !strings.HasSuffix(got, `{"error":{"message":"Not Found"}}`+"\n") {
		t.Errorf("handler answers changed: %q", got)
	}
}

func TestHeadAndBOM(t *testing.T) {
	s, _, _ := newServer(t)
	base := "http://" + serve(t, s)
	c := &http.Client{}
	get := send(t, c, "GET", base+"/", "", nil)
	for _, tt := range []struct {
		path  string
		code  int
		ctype string
	}{{"/", 200, get.contentType}, {"/api/v1/locations", 200, "application/json"}, {"/nope", 404, "application/json"}, {"/api/v1/wg/key/exchange", 405, "application/json"}} {
		resp, err := c.Head(base + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code || len(b) != 0 || resp.Header.Get("Content-Type") != tt.ctype {
			t.Errorf("HEAD %s: %d %q %q, want %d, no body, %q", tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), b, tt.code, tt.ctype)
		}
		if tt.path == "/" && resp.ContentLength != int64(len(get.body)) {
			t.Errorf("HEAD /: Content-Length %d, GET body %d bytes", resp.ContentLength, len(get.body))
		}
	}
	body := `{"domain":"ffmuc_welt","public_key":"` + key1 + `"}`
	for _, tt := range []struct {
		name, body string
		code       int
	}{
		{"BOM", "\xef\xbb\xbf" + body, 200},
		{"two BOMs", "\xef\xbb\xbf\xef\xbb\xbf" + body, 400}, // Python's utf-8-sig strips one; json.loads refuses the next
		{"BOM after space", " \xef\xbb\xbf" + body, 400},
	} {
		if got := send(t, c, "POST", base+"/api/v1/wg/key/exchange", tt.body, nil); got.code != tt.code {
			t.Errorf("%s: %+v, want %d", tt.name, got, tt.code)
		}
	}
}

// TestBrokenBodyIs400 sends bodies that cannot be read to the end: the client's fault, answered 400 like net/http's
// own refusals, not 500 with an error logged for every such request.
func TestBrokenBodyIs400(t *testing.T) {
	log, logs := testenv.CaptureLogger(t)
	s, _, _ := newServer(t)
	s = New(s.b, log, Options{})
	addr := serve(t, s)
	for _, tt := range []struct{ name, request string }{
		{"malformed chunk", "POST /api/v1/wg/key/exchange HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"},
		{"chunk without its end", "POST /api/v2/wg/key/exchange HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX\r\n"},
	} {
		got := raw(t, addr, tt.request)
		if !strings.HasPrefix(got, "HTTP/1.1 400 Bad Request\r\n") || !strings.HasSuffix(got, `{"error":{"message":"Bad Request"}}`+"\n") {
			t.Errorf("%s: %q, want 400 with a JSON body", tt.name, got)
		}
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("a client's broken body logged as an error:\n%s", logs.String())
	}
}

// TestSmugglingClosesConnection: a request with both Content-Length and Transfer-Encoding is how a request is
// smuggled past a proxy that reads the other length: net/http reads it by Transfer-Encoding and served the
// request pipelined behind it on the same connection. It is refused with 400 and "Connection: close", and the
// connection is closed, so that nothing behind it is served. Requests with one of the two keep the connection.
func TestSmugglingClosesConnection(t *testing.T) {
	s, _, _ := newServer(t)
	addr := serve(t, s)
	exchange := `{"domain":"ffmuc_welt","public_key":"` + key1 + `"}`
	chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(exchange), exchange)
	next := "GET /api/v1/locations HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, tt := range []struct {
		name, request string
		codes         []int // the answers, in order
		closed        bool  // the server closes the connection after them
	}{
		{"smuggled GET behind an empty chunked body",
			"POST /api/v2/wg/key/exchange HTTP/1.1\r\nHost: x\r\nContent-Length: 47\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next,
			[]int{400}, true},
		{"Transfer-Encoding first, other spelling",
			"POST /api/v1/wg/key/exchange HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n" + chunked + next,
			[]int{400}, true},
		{"behind a good request",
			"GET /api/v1/locations HTTP/1.1\r\nHost: x\r\n\r\nPOST /api/v1/wg/key/exchange HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n" + chunked + next,
			[]int{200, 400}, true},
		{"HTTP/1.0 keeping the connection alive",
			"POST /api/v2/wg/key/exchange HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next,
			[]int{400}, true},
		{"OPTIONS *, which net/http answers itself",
			"OPTIONS * HTTP/1.1\r\nHost: x\r\nContent-Length: 47\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next,
			[]int{400}, true},
		{"chunked alone", "POST /api/v1/wg/key/exchange HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + next,
			[]int{200, 200}, false},
		{"Content-Length alone", fmt.Sprintf("POST /api/v1/wg/key/exchange HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(exchange), exchange) + next,
			[]int{200, 200}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte(tt.request)); err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(c)
			var codes []int
			for range tt.codes {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatalf("after %v: %v", codes, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				codes = append(codes, resp.StatusCode)
				if resp.StatusCode == 400 && (!resp.Close || resp.Header.Get("Content-Type") != "application/json") {
					t.Errorf("400 without Connection: close or JSON: %v", resp.Header)
				}
			}
			if diff := cmp.Diff(tt.codes, codes); diff != "" {
				t.Errorf("answers (-want +got):\n%s", diff)
			}
			// What follows: nothing, and the end of the connection at once; or, kept alive, the deadline.
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			rest, err := io.ReadAll(r)
			var ne net.Error
			timedOut := errors.As(err, &ne) && ne.Timeout()
			if len(rest) > 0 || timedOut == tt.closed {
				t.Errorf("after the answers: %q, %v; want the connection closed: %v", rest, err, tt.closed)
			}
		})
	}
}

// TestNodeAddressNotLogged: without broker.log_node_addresses, a refused registration is logged without the node's
// address (the operator chooses whether addresses are logged).
func TestNodeAddressNotLogged(t *testing.T) {
	log, logs := testenv.CaptureLogger(t)
	url := limited(t, Options{}, log)
	send(t, &http.Client{}, "POST", url, `{"domain":"nope","public_key":"`+key1+`"}`, nil)
	if l := logs.String(); !strings.Contains(l, "registration refused") || strings.Contains(l, "127.0.0.1") {
		t.Errorf("refusal logged with the node's address, or not at all:\n%s", l)
	}
}
