// Package passwd checks passwords against bcrypt hashes for the broker's logins (the embedded MQTT server's
// accounts, the status page). A password that matched a hash is remembered as its SHA-256, so that a client that
// logs in again and again (a reconnecting gateway, a status page polling every 2 seconds) pays for bcrypt once;
// and only so many bcrypt checks run at once, so that a flood of wrong passwords cannot take every core.
package passwd

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"sync"

	"golang.org/x/crypto/bcrypt"
)

// Checker checks passwords against bcrypt hashes. Its methods may be called concurrently.
type Checker struct {
	slots   chan struct{}
	compare func(hash, password []byte) error
	mu      sync.Mutex
	known   map[string][sha256.Size]byte // hash → SHA-256 of the password that matched it
	gen     uint64                       // counts Forget calls: a check that began before one remembers nothing
}

// New returns a Checker that runs at most concurrent bcrypt checks at a time (at least one), comparing with
// compare, or with bcrypt.CompareHashAndPassword when compare is nil.
func New(concurrent int, compare func(hash, password []byte) error) *Checker {
	if compare == nil {
		compare = bcrypt.CompareHashAndPassword
	}
	return &Checker{slots: make(chan struct{}, max(concurrent, 1)), compare: compare, known: map[string][sha256.Size]byte{}}
}

// Check reports whether password matches hash. It waits for a free bcrypt slot first, unless the password is the
// one that last matched hash; it gives up (false) when ctx ends while it waits, so give it a deadline.
func (c *Checker) Check(ctx context.Context, hash, password []byte) bool {
	sum := sha256.Sum256(password)
	c.mu.Lock()
	known, ok := c.known[string(hash)]
	gen := c.gen
	c.mu.Unlock()
	if ok && subtle.ConstantTimeCompare(known[:], sum[:]) == 1 {
		return true
	}
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	err := c.compare(hash, password)
	<-c.slots
	if err != nil {
		return false
	}
	c.mu.Lock()
	if c.gen == gen { // a Forget since the check began may have dropped this hash: remember nothing then
		c.known[string(hash)] = sum
	}
	c.mu.Unlock()
	return true
}

// Forget drops what is remembered for every hash for which keep returns false (all of them when keep is nil):
// call it when the hashes in use change, so that a replaced hash's password is not kept. A check under way
// meanwhile does not remember its match.
func (c *Checker) Forget(keep func(hash string) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for h := range c.known {
		if keep == nil || !keep(h) {
			delete(c.known, h)
		}
	}
}
