package mqttd

import (
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// uncounted reports whether no connection is counted without a credential, and no slot is held, on s.
func uncounted(s *Server) (counted, entries, slots int) {
	u := s.listeners[0].uncredited
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, e := range u.m {
		counted += e.n
	}
	return counted, len(u.m), len(s.listeners[0].slots)
}

// TestUnauthenticatedCountReleased ends connections from one address in every way a connection can end before,
// during or after CONNECT, with max_unauthenticated_per_address 1: a count left behind by any of them would lock
// the address out for good. After each, the address connects again, and the per-address count, its map entry
// and the global slot are all given back.
func TestUnauthenticatedCountReleased(t *testing.T) {
	root, other := testenv.NewCA(t, "wgkex test CA"), testenv.NewCA(t, "someone else's CA")
	tlsListener := tlsListenerOf(t, root)
	const from = "127.0.0.2"
	dial := dialFrom(from)
	tlsFrom := func(cert *tls.Certificate) func(string, string) (net.Conn, error) {
		cfg := &tls.Config{RootCAs: root.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		}
		return func(n, a string) (net.Conn, error) {
			c, err := dial(n, a)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(c, cfg)
			if err := tc.Handshake(); err != nil {
				c.Close()
				return nil, err
			}
			return tc, nil
		}
	}
	// rawFrom opens a TCP connection from the address, writes b and waits until the server closes it.
	rawFrom := func(t *testing.T, addr string, b []byte) {
		t.Helper()
		c, err := dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if !closedByServer(c) {
			t.Fatal("the server kept the connection")
		}
	}
	refused := func(t *testing.T, f *fleet, addr, id, user, pass string, d func(string, string) (net.Conn, error)) {
		t.Helper()
		if d == nil {
			d = dial
		}
		if c, err := testenv.Dial(addr, id, testenv.ClientOptions{Username: user, Password: pass, Dial: d}); err == nil {
			c.Close()
			t.Fatalf("%s as %s accepted", id, user)
		}
	}
	foreign, gwD := other.Client(t, "gw-d"), root.Client(t, "gw-d")
	for _, c := range []struct {
		name string
		mod  func(*Options)
		// end makes one connection from the address end; addr is the plain listener, tlsAddr the TLS one.
		end func(t *testing.T, f *fleet, addr, tlsAddr string)
		// again is who connects afterwards (id, username, password); default gw-b with its password.
		again [3]string
	}{
		{name: "normal disconnect, anonymous", end: func(t *testing.T, f *fleet, addr, _ string) {
			testenv.Connect(t, addr, "reader", testenv.ClientOptions{Dial: dial}).Close()
		}},
		{name: "dropped without DISCONNECT, anonymous", end: func(t *testing.T, f *fleet, addr, _ string) {
			testenv.Connect(t, addr, "reader", testenv.ClientOptions{Dial: dial}).Drop()
		}},
		{name: "TLS handshake garbage", end: func(t *testing.T, f *fleet, _, tlsAddr string) {
			rawFrom(t, tlsAddr, []byte("GET / HTTP/1.0\r\n\r\n"))
		}},
		{name: "TLS certificate of another CA", end: func(t *testing.T, f *fleet, _, tlsAddr string) {
			refused(t, f, tlsAddr, "gw-d", "", "", tlsFrom(&foreign))
		}},
		{name: "TLS handshake timeout", end: func(t *testing.T, f *fleet, _, tlsAddr string) {
			rawFrom(t, tlsAddr, nil)
		}},
		{name: "TLS certificate, then the client id of another", end: func(t *testing.T, f *fleet, _, tlsAddr string) {
			refused(t, f, tlsAddr, "gw-a", "", "", tlsFrom(&gwD))
		}},
		{name: "bad password", end: func(t *testing.T, f *fleet, addr, _ string) {
			refused(t, f, addr, "gw-a", "gw-a", "wrong", nil)
		}},
		{name: "client id mismatch", end: func(t *testing.T, f *fleet, addr, _ string) {
			refused(t, f, addr, "gw-b", "gw-a", "pa", nil)
		}},
		{name: "unknown worker on the shared password", end: func(t *testing.T, f *fleet, addr, _ string) {
			refused(t, f, addr, "rogue", "wgkex", "shared", nil)
		}},
		{name: "takeover refused", end: func(t *testing.T, f *fleet, addr, _ string) {
			f.connect(t, "gw-a", "gw-a", "pa")
			refused(t, f, addr, "gw-a", "wgkex", "shared", nil)
		}},
		{name: "session taken over, anonymous", end: func(t *testing.T, f *fleet, addr, _ string) {
			testenv.Connect(t, addr, "reader", testenv.ClientOptions{Dial: dial})
			testenv.Connect(t, addr, "reader", testenv.ClientOptions{Dial: dialFrom("127.0.0.3")}).Close()
		}},
		{name: "packet too large before CONNECT", end: func(t *testing.T, f *fleet, addr, _ string) {
			rawFrom(t, addr, []byte{0x10, 0xff, 0xff, 0xff, 0x7f})
		}},
		{name: "first packet not CONNECT", end: func(t *testing.T, f *fleet, addr, _ string) {
			rawFrom(t, addr, []byte{0xc0, 0x00}) // PINGREQ
		}},
		{name: "connect timeout", end: func(t *testing.T, f *fleet, addr, _ string) {
			rawFrom(t, addr, nil)
		}},
		{name: "refused for max_clients", mod: func(o *Options) { o.Limits.MaxClients = 1 },
			end: func(t *testing.T, f *fleet, addr, _ string) {
				holder := f.connect(t, "gw-a", "gw-a", "pa")
				rawFrom(t, addr, nil)
				if f.refusedN(reasonMaxConnections) != 1 {
					t.Fatal("not refused for max_clients")
				}
				holder.Close()
			}},
		{name: "slow consumer, anonymous", mod: func(o *Options) { o.Limits.MaxPending = 8 },
			end: func(t *testing.T, f *fleet, addr, _ string) {
				sc := &stallConn{closed: make(chan struct{})}
				r := testenv.Connect(t, addr, "reader", testenv.ClientOptions{Dial: func(n, a string) (net.Conn, error) {
					c, err := dial(n, a)
					sc.Conn = c
					return sc, err
				}})
				r.Subscribe(t, wire.StatusTopic("gw-a"))
				f.stallUntilDropped(t, sc, wire.StatusTopic("gw-a"))
			}},
		{name: "revoked on reload, anonymous",
			mod: func(o *Options) {
				o.Listeners, o.AllowAnonymous = o.Listeners[:1], false
				o.Accounts = Accounts{Workers: map[string]Account{"gw-x": {}}}
			},
			end: func(t *testing.T, f *fleet, addr, _ string) {
				testenv.Connect(t, addr, "gw-x", testenv.ClientOptions{Dial: dial})
				if err := f.s.SetAccounts(Accounts{Workers: map[string]Account{"gw-x": {PasswordHash: testenv.BcryptHash(t, "px")}}}); err != nil {
					t.Fatal(err)
				}
				testenv.Eventually(t, 10*time.Second, func() bool { return f.refusedN(reasonRevoked) == 1 }, "not revoked")
			},
			again: [3]string{"gw-x", "gw-x", "px"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFleet(t, func(o *Options) {
				o.AllowAnonymous = true
				o.Listeners = []Listener{{Address: "127.0.0.1:0"}, tlsListener}
				o.Limits.MaxUnauthenticatedPerAddress, o.Limits.ConnectTimeout = 1, time.Second
				if c.mod != nil {
					c.mod(o)
				}
			})
			tlsAddr := ""
			if len(f.s.Addrs()) > 1 {
				tlsAddr = f.s.Addrs()[1]
			}
			c.end(t, f, f.addr, tlsAddr)
			again := c.again
			if again[0] == "" {
				again = [3]string{"gw-b", "gw-b", "pb"}
			}
			testenv.Eventually(t, 20*time.Second, func() bool {
				cl, err := testenv.Dial(f.addr, again[0], testenv.ClientOptions{Username: again[1], Password: again[2], Dial: dial})
				if err == nil {
					cl.Close()
				}
				return err == nil
			}, "the address cannot connect again (counted %v)", fmtCounts(f.s))
			testenv.Eventually(t, 20*time.Second, func() bool {
				n, e, _ := uncounted(f.s)
				return n == 0 && e == 0
			}, "counts left: %v", fmtCounts(f.s))
			f.s.Close()
			if n, e, s := uncounted(f.s); n+e+s != 0 {
				t.Errorf("after shutdown: %v", fmtCounts(f.s))
			}
		})
	}
}

func fmtCounts(s *Server) []int {
	n, e, sl := uncounted(s)
	return []int{n, e, sl}
}

// TestAddrKey: IPv4 clients are counted by address, whether they reach an IPv4 or a dual-stack listener (which
// sees ::ffff:a.b.c.d), and IPv6 clients by /64.
func TestAddrKey(t *testing.T) {
	for _, c := range []struct{ remote, want string }{
		{"1.2.3.4:5", "1.2.3.4/32"},
		{"[::ffff:1.2.3.4]:5", "1.2.3.4/32"},
		{"[2001:db8:1:2:3:4:5:6]:7", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:ffff::1]:7", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:7", "fe80::/64"},
	} {
		if got := addrKey(c.remote); got != netip.MustParsePrefix(c.want) {
			t.Errorf("addrKey(%s) = %s, want %s", c.remote, got, c.want)
		}
	}
}

// TestSecondFloodLogged: an address floods (logged once), keeps one connection open so that its count never
// drops to zero, and floods again much later. The second flood used to go unlogged for as long as the address
// held a connection (an anonymous reader, or one connection renewed before each CONNECT deadline).
func TestSecondFloodLogged(t *testing.T) {
	f := newFleetCounting(t, func(o *Options) {
		o.Limits.MaxUnauthenticatedPerAddress, o.Limits.ConnectTimeout = 3, time.Minute
	}, perAddressLog)
	u := f.s.listeners[0].uncredited
	var mu sync.Mutex
	now := time.Now()
	u.mu.Lock()
	u.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	u.mu.Unlock()
	dial := dialFrom("127.0.0.6")
	flood := func(n int) []net.Conn {
		var cs []net.Conn
		for range n {
			c, err := dial("tcp", f.addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			cs = append(cs, c)
		}
		return cs
	}
	first := flood(10)
	testenv.Eventually(t, 10*time.Second, func() bool { return f.refusedN(reasonPerAddress) == 7 }, "first flood not refused")
	if n := f.logged.Load(); n != 1 {
		t.Fatalf("%d log lines for the first flood, want 1", n)
	}
	for _, c := range first[1:] {
		c.Close()
	}
	testenv.Eventually(t, 10*time.Second, func() bool { n, _, _ := uncounted(f.s); return n == 1 }, "connections not closed")
	mu.Lock()
	now = now.Add(2 * floodLogEvery)
	mu.Unlock()
	flood(10)
	testenv.Eventually(t, 10*time.Second, func() bool { return f.refusedN(reasonPerAddress) == 7+8 }, "second flood not refused")
	if n := f.logged.Load(); n != 2 {
		t.Errorf("%d log lines for two floods a while apart, want 2", n)
	}
}
