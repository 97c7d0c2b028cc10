package e2e

import (
	"sync"
	"testing"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// burst registers fresh keys from several goroutines until stopped, as nodes keep doing while a broker dies.
type burst struct {
	mu       sync.Mutex
	answered map[string][]string
	stop     chan struct{}
	wg       sync.WaitGroup
}

// startBurst starts n goroutines that each post fresh keys through post until the burst is stopped. post(w, key)
// returns who answered the key with 200 ("" if nobody did) and whether goroutine w is to end (its broker is gone).
func startBurst(t *testing.T, n int, post func(w int, key string) (by string, gone bool)) *burst {
	b := &burst{answered: map[string][]string{}, stop: make(chan struct{})}
	for w := range n {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for {
				select {
				case <-b.stop:
					return
				default:
				}
				k := testenv.NewKey(t).PublicKey().String()
				by, gone := post(w, k)
				if gone {
					return
				}
				if by != "" {
					b.mu.Lock()
					b.answered[by] = append(b.answered[by], k)
					b.mu.Unlock()
				}
			}
		}()
	}
	return b
}

// count returns how many keys by answered so far.
func (b *burst) count(by string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.answered[by])
}

// keys returns the keys answered so far by each of by, in that order.
func (b *burst) keys(by ...string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var k []string
	for _, x := range by {
		k = append(k, b.answered[x]...)
	}
	return k
}

// end stops the burst and waits for its goroutines.
func (b *burst) end() {
	close(b.stop)
	b.wg.Wait()
}
