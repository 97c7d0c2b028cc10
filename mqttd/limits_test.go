package mqttd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/go-cmp/cmp"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// countHandler counts the log records with a given message.
type countHandler struct {
	slog.Handler
	msg string
	n   *atomic.Int64
}

func (h countHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h countHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return countHandler{h.Handler.WithAttrs(a), h.msg, h.n}
}

const emfileChild = "WGKEX_MQTTD_EMFILE_CHILD"

// TestAcceptSurvivesFileLimit fills the open-file limit (lowered with setrlimit) so that accept fails with
// EMFILE, then frees the descriptors: the listener must accept again. mochi's own listener returned on the first
// accept error and the port stopped accepting for good. The limit is process-wide, so the test runs in a child
// process of its own.
func TestAcceptSurvivesFileLimit(t *testing.T) {
	if os.Getenv(emfileChild) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptSurvivesFileLimit$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), emfileChild+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestAcceptSurvivesFileLimit") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	var fails atomic.Int64
	base, quiet := quietLogger(t)
	log := slog.New(countHandler{base.Handler(), "mqtt accept failed, retrying", &fails})
	s, err := New(log, Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); quiet() })

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	fds, _ := os.ReadDir("/proc/self/fd")
	low := old
	low.Cur = uint64(len(fds) + 16)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)

	// Each connection costs a descriptor here and one in the server's accept, until there are none left: the
	// last connections wait in the backlog while accept fails.
	var held []net.Conn
	for fails.Load() == 0 {
		c, err := net.Dial("tcp", s.Addrs()[0])
		if errors.Is(err, syscall.EMFILE) {
			// No descriptor for the client side: give the accept loop a chance to hit the limit too.
			testenv.Eventually(t, 5*time.Second, func() bool { return fails.Load() > 0 }, "accept never failed")
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if len(held) > 1000 {
			t.Fatal("the file limit was never reached")
		}
	}
	for _, c := range held {
		c.Close()
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		c, err := testenv.Dial(s.Addrs()[0], "gw04", testenv.ClientOptions{})
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "the listener did not accept again after descriptors were freed")
}

// TestSessionAndKeepaliveBounded: a worker's raw MQTT 5 CONNECT asking for a session kept forever and no keepalive gets
// both bounded in its CONNACK; the refusal metrics and the client gauge are registered.
func TestSessionAndKeepaliveBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := start(t, Options{Metrics: reg, Limits: Limits{MaxSessionExpiry: 90 * time.Second},
		Accounts: Accounts{Workers: map[string]Account{"gw04": {PasswordHash: testenv.BcryptHash(t, "pw")}}}}, nil)
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 0, ClientIdentifier: "gw04",
			UsernameFlag: true, Username: []byte("gw04"), PasswordFlag: true, Password: []byte("pw")},
		Properties: packets.Properties{SessionExpiryInterval: math.MaxUint32, SessionExpiryIntervalFlag: true}}
	var buf bytes.Buffer
	if err := connect.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	c := rawConnect(t, s.Addrs()[0], buf.Bytes())
	r := bufio.NewReader(c)
	var fh packets.FixedHeader
	b, err := r.ReadByte()
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Decode(b); err != nil || fh.Type != packets.Connack {
		t.Fatalf("first packet %+v: %v", fh, err)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	ack := packets.Packet{FixedHeader: fh, ProtocolVersion: 5}
	if err := ack.ConnackDecode(body); err != nil {
		t.Fatal(err)
	}
	if ack.ReasonCode != 0 || ack.Properties.SessionExpiryInterval != 90 || ack.Properties.ServerKeepAlive != maxKeepalive {
		t.Errorf("CONNACK: reason %d, session expiry %d (want 90), server keepalive %d (want %d)", ack.ReasonCode,
			ack.Properties.SessionExpiryInterval, ack.Properties.ServerKeepAlive, maxKeepalive)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if diff := cmp.Diff([]string{"wgkex_mqtt_clients", "wgkex_mqtt_refused_total"}, names); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
}

// dialFrom returns a dial function for testenv.ClientOptions that connects from the loopback address ip.
func dialFrom(ip string) func(network, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return d.Dial
}

const perAddressLog = "mqtt connections refused: too many without a credential from one address"

// TestConnectionFloodFromOneAddress: one address opens many connections that never send CONNECT. It used to take
// every slot (max_clients) and lock every gateway out until the flood stopped; now it holds at most
// max_unauthenticated_per_address of them, the rest are refused (counted, logged once), and a gateway from
// another address still connects. Once the flood closes, the address can connect again.
func TestConnectionFloodFromOneAddress(t *testing.T) {
	f := newFleetCounting(t, func(o *Options) {
		o.Limits.MaxClients, o.Limits.ConnectTimeout = 40, time.Minute
	}, perAddressLog)
	flood := dialFrom("127.0.0.2")
	var idle []net.Conn
	for range 100 {
		c, err := flood("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	testenv.Eventually(t, 10*time.Second, func() bool { return f.refusedN(reasonPerAddress) == 100-32 },
		"the flood was not refused per address (refused for max_connections: %d)", f.refusedN(reasonMaxConnections))
	a := f.connect(t, "gw-a", "gw-a", "pa")
	a.Publish(t, wire.StatusTopic("gw-a"), "1", 1, false)
	if n := f.logged.Load(); n != 1 {
		t.Errorf("%d log lines for the flood, want 1", n)
	}
	if n := f.refusedN(reasonMaxConnections); n != 0 {
		t.Errorf("%d connections refused for max_connections", n)
	}
	for _, c := range idle {
		c.Close()
	}
	idle = nil
	testenv.Eventually(t, 10*time.Second, func() bool {
		c, err := testenv.Dial(f.addr, "gw-b", testenv.ClientOptions{Username: "gw-b", Password: "pb", Dial: flood})
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "the address cannot connect after its flood closed")
}

// TestUnauthenticatedSlotsReleased: a connection stops counting against its address when it authenticates with
// a credential, so one address (a NAT in front of several gateways) can hold more gateways than the limit;
// anonymous clients count for as long as they are connected, and their slots come back when they leave.
func TestUnauthenticatedSlotsReleased(t *testing.T) {
	f := newFleet(t, func(o *Options) { o.Limits.MaxUnauthenticatedPerAddress, o.AllowAnonymous = 3, true })
	nat := dialFrom("127.0.0.3")
	for _, who := range [][3]string{{"gw-a", "gw-a", "pa"}, {"gw-b", "gw-b", "pb"}, {"gw-c", "wgkex", "shared"},
		{"mon", "mon", "pm"}} {
		testenv.Connect(t, f.addr, who[0], testenv.ClientOptions{Username: who[1], Password: who[2], Dial: nat})
	}
	anon := dialFrom("127.0.0.4")
	var readers []*testenv.Client
	for _, id := range []string{"r1", "r2", ""} {
		readers = append(readers, testenv.Connect(t, f.addr, id, testenv.ClientOptions{Dial: anon}))
	}
	if _, err := testenv.Dial(f.addr, "r4", testenv.ClientOptions{Dial: anon}); err == nil {
		t.Fatal("a fourth anonymous client from one address accepted")
	}
	if n := f.refusedN(reasonPerAddress); n != 1 {
		t.Errorf("%d refusals per address, want 1", n)
	}
	readers[0].Close()
	testenv.Eventually(t, 10*time.Second, func() bool {
		c, err := testenv.Dial(f.addr, "r4", testenv.ClientOptions{Dial: anon})
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "the slot of a disconnected anonymous client did not come back")
	if n := f.s.Clients(); n < 4 {
		t.Errorf("%d clients connected, want the 4 from 127.0.0.3 still there", n)
	}
}

// keepSession connects as id asking for its session to be kept for an hour after it leaves (MQTT 5: clean
// start off and a session expiry; MQTT 3.1.1: clean session off), subscribes to a key filter and disconnects.
func keepSession(t *testing.T, addr, id, user, pass string, v5 bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !v5 {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id}}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		c.Write(buf.Bytes())
		ack := make([]byte, 4)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
			t.Fatalf("MQTT 3.1.1 connect as %s: %x %v", id, ack, err)
		}
		c.Write([]byte{0xe0, 0}) // DISCONNECT
		return
	}
	expiry := uint32(3600)
	pc := paho.NewClient(paho.ClientConfig{Conn: c})
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}}
	if user != "" {
		cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = user, true, []byte(pass), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := pc.Connect(ctx, cp); err != nil {
		t.Fatalf("connect as %s: %v", id, err)
	}
	if _, err := pc.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: wire.KeyFilter(welt), QoS: 1}}}); err != nil {
		t.Fatalf("subscribe as %s: %v", id, err)
	}
	pc.Disconnect(&paho.Disconnect{})
}

// sessions returns the client ids whose sessions the server holds, connected or not, without its own.
func sessions(s *Server) []string {
	var ids []string
	for id, cl := range s.srv.Clients.GetAll() {
		if !cl.Net.Inline {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// TestAnonymousSessionsEnd: an anonymous client can pick any client id; had it its session kept after it leaves,
// one client could leave any number of sessions in memory for max_session_expiry. Anonymous sessions end when
// the client disconnects; those of clients with a credential are kept, one per configured name.
func TestAnonymousSessionsEnd(t *testing.T) {
	s := start(t, Options{Domains: []string{welt}}, nil) // no credentials: anonymous on loopback
	for i := range 40 {
		keepSession(t, s.Addrs()[0], fmt.Sprintf("x%d", i), "", "", i%2 == 0)
	}
	keepSession(t, s.Addrs()[0], "", "", "", true) // an id assigned by the server
	testenv.Eventually(t, 10*time.Second, func() bool { return len(sessions(s)) == 0 },
		"anonymous sessions kept after disconnect: %d", len(sessions(s)))

	f := newFleet(t, func(o *Options) { o.AllowAnonymous = true })
	for range 3 {
		keepSession(t, f.addr, "gw-a", "gw-a", "pa", true)
		keepSession(t, f.addr, "gw-c", "wgkex", "shared", true)
	}
	for i := range 10 {
		keepSession(t, f.addr, fmt.Sprintf("reader%d", i), "", "", true)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return slices.Equal(sessions(f.s), []string{"gw-a", "gw-c"}) },
		"sessions %v, want those of gw-a and gw-c", sessions(f.s))
}
