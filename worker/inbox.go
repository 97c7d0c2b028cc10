package worker

import (
	"sync"
	"time"
)

// message is one key received over MQTT, live or replayed.
type message struct {
	domain, key string
	replay      bool
	// revoke: the broker revoked key; the loop removes it from the desired state and from the device.
	revoke bool
	at     time.Time
}

// inbox hands received keys and sync requests from the MQTT side to the loop. Adding never blocks; the loop takes
// everything at once, so a burst becomes one batch.
type inbox struct {
	mu    sync.Mutex
	msgs  []message
	syncs map[string]bool // domain → read the device on the next pass (true: and sweep)
	wake  chan struct{}
}

func newInbox() *inbox { return &inbox{syncs: map[string]bool{}, wake: make(chan struct{}, 1)} }

func (in *inbox) add(m message) {
	in.mu.Lock()
	in.msgs = append(in.msgs, m)
	in.mu.Unlock()
	in.signal()
}

// sync asks for a device read of domain on the next pass; sweep asks for a selection of stale peers too.
func (in *inbox) sync(domain string, sweep bool) {
	in.mu.Lock()
	in.syncs[domain] = in.syncs[domain] || sweep
	in.mu.Unlock()
	in.signal()
}

func (in *inbox) signal() {
	select {
	case in.wake <- struct{}{}:
	default:
	}
}

// take removes and returns everything waiting.
func (in *inbox) take() ([]message, map[string]bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	msgs, syncs := in.msgs, in.syncs
	in.msgs, in.syncs = nil, map[string]bool{}
	return msgs, syncs
}

func (in *inbox) len() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.msgs)
}
