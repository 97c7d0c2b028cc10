package mqttd

import (
	"fmt"
	"sync"
	"testing"

	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// BenchmarkConnect200 connects 200 workers at once, each with its own password hashed at passwd.DefaultCost, as
// after a broker restart: one op is all 200 connected (CONNACK received). "cold" is a fresh server (every password
// checked with bcrypt), "reconnect" the same server again (each password remembered after its first check).
func BenchmarkConnect200(b *testing.B) {
	const n = 200
	workers := map[string]Account{}
	for i := range n {
		h, err := passwd.Hash(fmt.Appendf(nil, "secret-%d", i), 0)
		if err != nil {
			b.Fatal(err)
		}
		workers[fmt.Sprintf("gw%03d", i)] = Account{PasswordHash: h}
	}
	newServer := func() *Server {
		log, quiet := quietLogger(b)
		b.Cleanup(quiet)
		s, err := New(log, Options{Listeners: []Listener{{Address: "127.0.0.1:0"}},
			Domains: []string{welt}, Accounts: Accounts{Workers: workers}, Limits: Limits{MaxUnauthenticatedPerAddress: n}})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Serve(); err != nil {
			b.Fatal(err)
		}
		return s
	}
	connectAll := func(b *testing.B, addr string) {
		var wg sync.WaitGroup
		clients := make([]*testenv.Client, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := testenv.Dial(addr, fmt.Sprintf("gw%03d", i), testenv.ClientOptions{
					Username: fmt.Sprintf("gw%03d", i), Password: fmt.Sprintf("secret-%d", i)})
				if err != nil {
					b.Error(err)
					return
				}
				clients[i] = c
			}()
		}
		wg.Wait()
		b.StopTimer()
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
		b.StartTimer()
	}
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			b.StopTimer()
			s := newServer()
			b.StartTimer()
			connectAll(b, s.Addrs()[0])
			b.StopTimer()
			s.Close()
			b.StartTimer()
		}
	})
	b.Run("reconnect", func(b *testing.B) {
		s := newServer()
		defer s.Close()
		connectAll(b, s.Addrs()[0])
		for b.Loop() {
			connectAll(b, s.Addrs()[0])
		}
	})
}
