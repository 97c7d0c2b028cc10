package mqttd

import (
	"fmt"
	"maps"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	dto "github.com/prometheus/client_model/go"

	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

const revokedLog = "mqtt client disconnected: its credential was removed or changed"

// TestSetAccounts: new accounts on a running server. Clients whose credential changed (the shared login, a worker
// given its own password) are disconnected, logged once each; the others keep their connections; the new
// credentials work at once and the old ones no longer do. Accounts that do not validate, or that would leave a
// non-loopback listener without credentials, change nothing.
func TestSetAccounts(t *testing.T) {
	f := newFleetCounting(t, nil, revokedLog)
	a := f.connect(t, "gw-a", "gw-a", "pa")
	f.connect(t, "gw-c", "wgkex", "shared")
	f.connect(t, "gw-d", "wgkex", "shared")
	f.connect(t, "mon", "mon", "pm")
	next := f.s.acc.Load().Accounts
	next.Workers = maps.Clone(next.Workers)
	next.Workers["gw-d"] = Account{PasswordHash: testenv.BcryptHash(t, "pd")}
	next.Workers["gw-e"] = Account{PasswordHash: testenv.BcryptHash(t, "pe")}
	next.SharedPassword = "shared2"
	if err := f.s.SetAccounts(next); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return f.s.Clients() == 2 },
		"%d clients, want gw-a and mon still connected", f.s.Clients())
	a.Publish(t, "wireguard-worker/gw-a/status", "1", 1, false) // the same connection
	if n, r := f.logged.Load(), f.refusedN(reasonRevoked); n != 2 || r != 2 {
		t.Errorf("%d log lines, %d counted, want 2 each (gw-c, gw-d)", n, r)
	}
	for _, c := range [][3]string{{"gw-c", "wgkex", "shared"}, {"gw-d", "wgkex", "shared2"}, {"gw-d", "gw-d", "pa"}} {
		if cl, err := testenv.Dial(f.addr, c[0], testenv.ClientOptions{Username: c[1], Password: c[2]}); err == nil {
			cl.Close()
			t.Errorf("%s as %s/%s accepted", c[0], c[1], c[2])
		}
	}
	f.connect(t, "gw-c", "wgkex", "shared2")
	f.connect(t, "gw-d", "gw-d", "pd")
	f.connect(t, "gw-e", "gw-e", "pe").Publish(t, "wireguard-worker/gw-e/status", "1", 1, false)

	bad := next
	bad.Workers = map[string]Account{"gw-a": {PasswordHash: "not bcrypt"}}
	if err := f.s.SetAccounts(bad); err == nil {
		t.Error("accounts with a bad hash accepted")
	}
	f.connect(t, "gw-b", "gw-b", "pb") // unchanged

	// Without credentials on loopback, anonymous clients act as workers; once a worker gets a password, the
	// anonymous client using its name is disconnected, and so is every other anonymous client.
	s := start(t, Options{Accounts: Accounts{Workers: map[string]Account{"gw-x": {}, "gw-y": {}}}}, nil)
	testenv.Connect(t, s.Addrs()[0], "gw-x", testenv.ClientOptions{})
	testenv.Connect(t, s.Addrs()[0], "gw-y", testenv.ClientOptions{})
	if err := s.SetAccounts(Accounts{Workers: map[string]Account{"gw-x": {PasswordHash: testenv.BcryptHash(t, "px")}, "gw-y": {}}}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return s.Clients() == 0 }, "anonymous clients kept")

	// A non-loopback listener needs credentials.
	s = start(t, Options{Listeners: []Listener{{Address: "0.0.0.0:0"}}, Accounts: Accounts{Workers: map[string]Account{"gw-x": {PasswordHash: testenv.BcryptHash(t, "px")}}}}, nil)
	if err := s.SetAccounts(Accounts{Workers: map[string]Account{"gw-x": {}}}); err == nil {
		t.Error("accounts without credentials accepted for a non-loopback listener")
	}
}

// staleClients returns the connected clients whose identity the accounts in effect no longer give them.
func staleClients(s *Server) []string {
	set := s.acc.Load()
	var out []string
	for _, cl := range s.srv.Clients.GetAll() {
		c := connOf(cl.Net.Conn)
		if c == nil || cl.Closed() {
			continue
		}
		if id := c.id.Load(); id != nil && !s.holds(id, set, cl.Net.Listener) {
			out = append(out, cl.ID+" via "+id.via)
		}
	}
	return out
}

// TestReloadRacesLogins: workers log in with their passwords while a reload replaces every password. A login
// checked against the old accounts (bcrypt) while SetAccounts swaps them must not stay connected afterwards,
// a password remembered for an old hash must never let the old password in under the new one, and no password
// stays remembered for a hash no account has any more (a check finishing after the swap used to leave one).
func TestReloadRacesLogins(t *testing.T) {
	const workers, rounds = 6, 25
	names := make([]string, workers)
	for i := range names {
		names[i] = "gw-" + string(rune('a'+i))
	}
	accounts := func(round int) (Accounts, map[string]string) {
		acc := Accounts{Workers: map[string]Account{}}
		pw := map[string]string{}
		for _, n := range names {
			pw[n] = n + "-" + string(rune('A'+round%26)) + string(rune('A'+round/26))
			acc.Workers[n] = Account{PasswordHash: testenv.BcryptHash(t, pw[n])}
		}
		return acc, pw
	}
	acc, pw := accounts(0)
	s := start(t, Options{Accounts: Accounts{Workers: acc.Workers}, Limits: Limits{MaxUnauthenticatedPerAddress: 1000}}, nil)
	var connected, late atomic.Int64
	for round := 1; round <= rounds; round++ {
		next, nextPW := accounts(round)
		// Failed logins lock an address out for a while: every round logs in from addresses of its own.
		dial := dialFrom(fmt.Sprintf("127.0.%d.1", round))
		var swapped atomic.Bool
		stop, done := make(chan struct{}), make(chan struct{})
		for _, n := range names {
			go func() {
				defer func() { done <- struct{}{} }()
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := testenv.Dial(s.Addrs()[0], n, testenv.ClientOptions{Username: n, Password: pw[n], Dial: dial})
					if err == nil {
						connected.Add(1)
						if swapped.Load() {
							late.Add(1)
						}
						t.Cleanup(c.Close)
					}
				}
			}()
		}
		testenv.Eventually(t, 10*time.Second, func() bool { return connected.Load() >= int64(round*workers) },
			"round %d: logins do not get through", round)
		if err := s.SetAccounts(next); err != nil {
			t.Fatal(err)
		}
		swapped.Store(true)
		close(stop)
		for range names {
			<-done
		}
		testenv.Eventually(t, 10*time.Second, func() bool { return len(staleClients(s)) == 0 },
			"round %d: clients connected with removed passwords: %v", round, staleClients(s))
		// The old passwords, remembered for the old hashes, do not open the new ones.
		c, err := testenv.Dial(s.Addrs()[0], names[0], testenv.ClientOptions{Username: names[0], Password: pw[names[0]],
			Dial: dialFrom(fmt.Sprintf("127.0.%d.2", round))})
		if err == nil {
			c.Close()
			t.Fatalf("round %d: the old password accepted after the reload", round)
		}
		pw = nextPW
	}
	t.Logf("%d logins, %d of them with a password a reload had removed while they were checked", connected.Load(), late.Load())
}

// TestReloadDuringPasswordCheck: a login whose password is checked against the old accounts (bcrypt, which may
// queue behind a reconnecting fleet for seconds) finishes after a reload changed that password, while the
// worker has already logged in with its new one. The login must be refused before it is acknowledged and before
// it takes over the worker's session; it used to be acknowledged, take the session over (disconnecting the
// real worker and receiving its queued messages) and only then be disconnected.
func TestReloadDuringPasswordCheck(t *testing.T) {
	log, quiet := quietLogger(t)
	s, err := New(log, Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Domains: []string{welt},
		Accounts: Accounts{Workers: map[string]Account{"gw-a": {PasswordHash: testenv.BcryptHash(t, "old")}}}})
	if err != nil {
		t.Fatal(err)
	}
	// The test sees the check of the old password start and decides when it ends; the worker's own login has a
	// slot of its own.
	started, finish := make(chan struct{}), make(chan struct{})
	s.passwords = passwd.New(2, func(hash, pw []byte) error {
		if string(pw) == "old" {
			started <- struct{}{}
			<-finish
		}
		return bcrypt.CompareHashAndPassword(hash, pw)
	})
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); quiet() })
	addr := s.Addrs()[0]
	stale := make(chan error, 1)
	go func() {
		c, err := testenv.Dial(addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "old", Dial: dialFrom("127.0.0.5")})
		if err == nil {
			defer c.Close()
		}
		stale <- err
	}()
	<-started // the old password is being checked against the old hash
	newHash := testenv.BcryptHash(t, "new")
	if err := s.SetAccounts(Accounts{Workers: map[string]Account{"gw-a": {PasswordHash: newHash}}}); err != nil {
		t.Fatal(err)
	}
	gw := testenv.Connect(t, addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "new"})
	gw.Subscribe(t, wire.KeyFilter(welt))
	close(finish) // the check ends: the old password matched the old hash
	if err := <-stale; err == nil {
		t.Error("a login checked against a password the reload had replaced was acknowledged")
	}
	if err := gw.TryPublish(wire.StatusTopic("gw-a"), "1", 1, false); err != nil {
		t.Errorf("the worker logged in with its new password lost its connection: %v", err)
	}
}

// TestSetAccountsRemovesMonitor: a monitor removed by a reload is disconnected and cannot log in again with its
// password, remembered or not; the workers keep their connections.
func TestSetAccountsRemovesMonitor(t *testing.T) {
	f := newFleet(t, nil)
	f.connect(t, "mon", "mon", "pm")
	a := f.connect(t, "gw-a", "gw-a", "pa")
	next := f.s.acc.Load().Accounts
	next.Monitors = nil
	if err := f.s.SetAccounts(next); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return f.s.Clients() == 1 }, "the removed monitor is still connected")
	a.Publish(t, wire.StatusTopic("gw-a"), "1", 1, false)
	if c, err := testenv.Dial(f.addr, "mon", testenv.ClientOptions{Username: "mon", Password: "pm"}); err == nil {
		c.Close()
		t.Error("the removed monitor logged in again")
	}
}

// TestLoginWaitBounded: a login that waits for a bcrypt slot longer than the connect timeout (a reconnecting fleet
// queued behind slow checks) is refused as a timeout, not as a wrong password, so its address is not locked out.
// (It used to wait for as long as the queue took, also at shutdown, where Close waits for every login.)
func TestLoginWaitBounded(t *testing.T) {
	log, quiet := quietLogger(t)
	s, err := New(log, Options{Listeners: []Listener{{Address: "127.0.0.1:0"}}, Domains: []string{welt},
		Limits:   Limits{ConnectTimeout: 500 * time.Millisecond},
		Accounts: Accounts{Workers: map[string]Account{"gw-a": {PasswordHash: testenv.BcryptHash(t, "pa")}, "gw-b": {PasswordHash: testenv.BcryptHash(t, "pb")}}}})
	if err != nil {
		t.Fatal(err)
	}
	started, finish := make(chan struct{}), make(chan struct{})
	s.passwords = passwd.New(1, func(hash, pw []byte) error {
		if string(pw) == "pa" {
			close(started)
			<-finish
		}
		return bcrypt.CompareHashAndPassword(hash, pw)
	})
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(quiet)
	addr := s.Addrs()[0]
	go func() {
		if c, err := testenv.Dial(addr, "gw-a", testenv.ClientOptions{Username: "gw-a", Password: "pa", Dial: dialFrom("127.0.0.6")}); err == nil {
			c.Close()
		}
	}()
	<-started // gw-a holds the only slot
	if c, err := testenv.Dial(addr, "gw-b", testenv.ClientOptions{Username: "gw-b", Password: "pb"}); err == nil {
		c.Close()
		t.Fatal("gw-b logged in without a bcrypt slot")
	}
	var m dto.Metric
	for reason, want := range map[string]float64{reasonConnectTimeout: 1, reasonBadLogin: 0} {
		_ = s.refusedVec.WithLabelValues(reason).Write(&m)
		if got := m.GetCounter().GetValue(); got != want {
			t.Errorf("refusals for %s: %v, want %v", reason, got, want)
		}
	}
	close(finish)
	s.Close()
}
