package mqttd

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// readPacketType reads one whole packet from r and returns its type.
func readPacketType(r *bufio.Reader) (byte, error) {
	b, err := r.ReadByte()
	if err != nil {
		return 0, err
	}
	var fh packets.FixedHeader
	if err := fh.Decode(b); err != nil {
		return 0, err
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return 0, err
	}
	_, err = io.CopyN(io.Discard, r, int64(n))
	return fh.Type, err
}

// encodings are the forms in which a log line may carry a secret: as text, as fmt prints a []byte ("112 97"), as
// encoding/json does (base64) and in hex.
func encodings(secret string) []string {
	dec := strings.Trim(fmt.Sprint([]byte(secret)), "[]")
	return []string{secret, dec, base64.StdEncoding.EncodeToString([]byte(secret)), hex.EncodeToString([]byte(secret))}
}

// TestSecondConnectLogsNoSecret: a worker that logs in and then sends a second CONNECT on the same connection (a
// protocol violation mochi logs with the whole packet) must not put either password into any log line, at debug
// level, as text or as JSON. The connection is closed.
func TestSecondConnectLogsNoSecret(t *testing.T) {
	const first, second = "first-Pa55w0rd-xyzzy", "second-S3cr3t-plugh"
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			var text, js testenv.Logs
			opts := &slog.HandlerOptions{Level: slog.LevelDebug}
			// Not to t.Output(): mochi's event loop logs its end after Close has returned, when the test may be over.
			log := slog.New(slog.NewMultiHandler(slog.NewTextHandler(&text, opts), slog.NewJSONHandler(&js, opts)))
			s, err := New(log, Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Domains: []string{welt},
				Accounts: Accounts{Workers: map[string]Account{"gw-a": {PasswordHash: testenv.BcryptHash(t, first)}}}})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Serve(); err != nil {
				t.Fatal(err)
			}
			defer s.Close()

			c := rawConnect(t, s.Addrs()[0], testenv.ConnectPacket(t, v, "gw-a", "gw-a", first))
			r := bufio.NewReader(c)
			if typ, err := readPacketType(r); err != nil || typ != packets.Connack {
				t.Fatalf("first CONNECT answered with %d: %v", typ, err)
			}
			testenv.Eventually(t, 5*time.Second, func() bool { return s.Clients() == 1 }, "the worker is not connected")
			if _, err := c.Write(testenv.ConnectPacket(t, v, "gw-a", "gw-a", second)); err != nil {
				t.Fatal(err)
			}
			for { // a v5 client is told why (DISCONNECT) before the close
				if _, err := readPacketType(r); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Fatal("the connection stayed open after a second CONNECT")
					}
					break
				}
			}
			testenv.Eventually(t, 5*time.Second, func() bool {
				return strings.Contains(text.String(), "second connect packet") && s.Clients() == 0
			}, "the second CONNECT was not logged as a protocol violation: %s", testenv.Lazy(text.String))
			s.Close() // every goroutine that logs a packet has ended
			for name, logs := range map[string]string{"text": text.String(), "json": js.String()} {
				for _, pw := range []string{first, second} {
					for _, enc := range encodings(pw) {
						if i := strings.Index(logs, enc); i >= 0 {
							line := logs[strings.LastIndex(logs[:i], "\n")+1:]
							line, _, _ = strings.Cut(line, "\n")
							t.Errorf("%s log carries the password %q as %q:\n%s", name, pw, enc, line)
						}
					}
				}
			}
		})
	}
}

type packetValuer struct{ pk packets.Packet }

func (v packetValuer) LogValue() slog.Value { return slog.AnyValue(v.pk) }

// TestRedact: every way a packet can reach a log record (an attribute, a pointer, a group, a LogValuer, an
// attribute added with With) comes out as its type, id and topic; everything else is untouched.
func TestRedact(t *testing.T) {
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{ClientIdentifier: "gw-a", Password: []byte("hunter2"), PasswordFlag: true}}
	publish := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, PacketID: 7, TopicName: "t/1",
		Payload: []byte("hunter2")}
	auth := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Auth},
		Properties: packets.Properties{AuthenticationData: []byte("hunter2")}}
	for _, c := range []struct {
		name string
		with []any
		args []any
		want string
	}{
		{"connect", nil, []any{"pk", connect}, `pk.type=Connect pk.client=gw-a`},
		{"pointer", nil, []any{"packet", &publish}, `packet.type=Publish packet.id=7 packet.topic=t/1`},
		{"nil pointer", nil, []any{"packet", (*packets.Packet)(nil)}, `packet=<nil>`},
		{"auth", nil, []any{"pk", auth}, `pk.type=Auth`},
		{"connect parameters", nil, []any{"c", connect.Connect}, `c=[redacted]`},
		{"group", nil, []any{slog.Group("g", "n", 1, "pk", connect)}, `g.n=1 g.pk.type=Connect g.pk.client=gw-a`},
		{"log valuer", nil, []any{"pk", packetValuer{publish}}, `pk.type=Publish pk.id=7 pk.topic=t/1`},
		{"with", []any{"pk", connect}, []any{"n", 2}, `pk.type=Connect pk.client=gw-a n=2`},
		{"no packet", nil, []any{"topic", "t/1", "payload", []byte("ok")}, `topic=t/1 payload="ok"`},
	} {
		var logs testenv.Logs
		log := redactingLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey {
					return slog.Attr{}
				}
				return a
			}})))
		log.With(c.with...).Info("m", c.args...)
		if got := strings.TrimSpace(logs.String()); got != c.want {
			t.Errorf("%s: logged %q, want %q", c.name, got, c.want)
		}
	}
}

// TestUsernamesNotEnumerable: an unknown username was refused without bcrypt (about 1 ms) and a wrong password
// for a real one after a bcrypt comparison (60 ms at cost 10), so that the time of a refusal told which usernames
// exist. Every refusal of a login with a password now costs the same bcrypt comparison, whatever the username
// (unknown, a worker without a password of its own, the shared username with a wrong password), and counts
// towards the address's lockout the same way.
func TestUsernamesNotEnumerable(t *testing.T) {
	f := newFleet(t, nil)
	var calls atomic.Int64
	f.s.passwords = passwd.New(2, func(h, pw []byte) error { calls.Add(1); return bcrypt.CompareHashAndPassword(h, pw) })
	attempt := func(ip, user, pass string) (bcrypts int64, failures int) {
		t.Helper()
		before, badBefore := calls.Load(), f.refusedN(reasonBadLogin)
		for range 2 {
			if c, err := testenv.Dial(f.addr, user, testenv.ClientOptions{Username: user, Password: pass,
				Dial: dialFrom(ip)}); err == nil {
				c.Close()
				t.Fatalf("%s with %q accepted", user, pass)
			}
		}
		if n := f.refusedN(reasonBadLogin) - badBefore; n != 2 {
			t.Errorf("%s: %d refusals as bad_login, want 2", user, n)
		}
		f.s.failures.mu.Lock()
		defer f.s.failures.mu.Unlock()
		if e := f.s.failures.m[addrKey(ip+":1")]; e != nil {
			failures = e.count
		}
		return calls.Load() - before, failures
	}
	wantCalls, wantFailures := attempt("127.0.0.20", "gw-a", "wrong")
	if wantCalls != 2 || wantFailures != 2 {
		t.Fatalf("a wrong password, twice: %d bcrypt comparisons, %d failures remembered; want 2, 2", wantCalls, wantFailures)
	}
	for i, c := range []struct{ name, user, pass string }{
		{"unknown username", "nobody", "wrong"},
		{"unknown username with a real password", "nobody", "pa"},
		{"a worker without a password of its own", "gw-c", "wrong"},
		{"the shared username with a wrong password", "wgkex", "wrong"},
	} {
		calls, failures := attempt(fmt.Sprintf("127.0.0.%d", 21+i), c.user, c.pass)
		if calls != wantCalls || failures != wantFailures {
			t.Errorf("%s, twice: %d bcrypt comparisons, %d failures remembered; a wrong password: %d, %d",
				c.name, calls, failures, wantCalls, wantFailures)
		}
	}
	f.unchanged(t)
}

// TestRoutineWarningsLowered: mochi's warnings of a keepalive of 5 s and of a DISCONNECT that asks for the will
// reach the log at debug level, other warnings as they are.
func TestRoutineWarningsLowered(t *testing.T) {
	var buf bytes.Buffer
	log := redactingLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	log.Warn(mqtt.ErrMinimumKeepalive.Error(), "client", "gw1", "keepalive", 5, "recommended", 5)
	log.Warn("error processing packet", "error", packets.CodeDisconnectWillMessage, "client", "gw1")
	log.Warn("error processing packet", "error", packets.ErrProtocolViolationSecondConnect, "client", "gw2")
	log.Warn("something else", "client", "gw3")
	var levels []string
	for line := range strings.Lines(buf.String()) {
		f := strings.Fields(line)
		levels = append(levels, f[1])
	}
	want := []string{"level=DEBUG", "level=DEBUG", "level=WARN", "level=WARN"}
	if diff := cmp.Diff(want, levels); diff != "" {
		t.Errorf("levels (-want +got):\n%s\n%s", diff, buf.String())
	}
	buf.Reset()
	quiet := redactingLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	quiet.Warn("error processing packet", "error", packets.CodeDisconnectWillMessage, "client", "gw1")
	if buf.Len() != 0 {
		t.Errorf("a routine warning reached an info log: %s", buf.String())
	}
}
