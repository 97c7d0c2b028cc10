package worker

import (
	"sort"
	"sync"
)

// item is one key waiting to be applied to a domain.
type item struct {
	key string
	// fresh marks a registration (live or replayed): applying it starts the peer's handshake grace period.
	// Re-applying the peers found on the device at start is not fresh.
	fresh   bool
	attempt int
}

// queue holds the keys waiting to be applied, per domain, in arrival order. A key already waiting is not added
// twice (a fresh addition marks the waiting one fresh). Adding never blocks.
type queue struct {
	mu      sync.Mutex
	pending map[string][]item         // domain → items in arrival order
	index   map[string]map[string]int // domain → key → position in pending
	wake    chan struct{}
}

func newQueue() *queue {
	return &queue{pending: map[string][]item{}, index: map[string]map[string]int{}, wake: make(chan struct{}, 1)}
}

// add queues it for domain and reports whether it was new.
func (q *queue) add(domain string, it item) bool {
	q.mu.Lock()
	idx := q.index[domain]
	if idx == nil {
		idx = map[string]int{}
		q.index[domain] = idx
	}
	if i, ok := idx[it.key]; ok {
		if it.fresh {
			q.pending[domain][i].fresh = true
		}
		q.mu.Unlock()
		return false
	}
	idx[it.key] = len(q.pending[domain])
	q.pending[domain] = append(q.pending[domain], it)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

// take removes and returns everything waiting, per domain, with the domains sorted.
func (q *queue) take() ([]string, map[string][]item) {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.pending
	q.pending = map[string][]item{}
	q.index = map[string]map[string]int{}
	domains := make([]string, 0, len(out))
	for d := range out {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	return domains, out
}

// len returns the number of waiting keys.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, p := range q.pending {
		n += len(p)
	}
	return n
}
