// Package passwd is the one home of passwords: it makes bcrypt hashes (hash-password), checks that a configured
// hash is one, and checks passwords against them for the broker's logins (the embedded MQTT server's
// accounts, the status page). A password that matched a hash is remembered as its SHA-256, so that a client that
// logs in again and again (a reconnecting gateway, a status page polling every 2 seconds) pays for bcrypt once;
// and only so many bcrypt checks run at once, so that a flood of wrong passwords cannot take every core. A
// username without a hash is refused in the time a wrong password takes (CheckUnknown), so that the time of a
// refusal does not tell which usernames exist.
package passwd

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
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
	dummies map[int][]byte               // cost → a hash of a random password (CheckUnknown)
}

// New returns a Checker that runs at most concurrent bcrypt checks at a time (at least one), comparing with
// compare, or with bcrypt.CompareHashAndPassword when compare is nil.
func New(concurrent int, compare func(hash, password []byte) error) *Checker {
	if compare == nil {
		compare = bcrypt.CompareHashAndPassword
	}
	return &Checker{slots: make(chan struct{}, max(concurrent, 1)), compare: compare, known: map[string][sha256.Size]byte{},
		dummies: map[int][]byte{}}
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

// CheckUnknown refuses a user who has no hash the way Check refuses a wrong password, and in the same time: it
// waits for a bcrypt slot, as Check does, and compares password with a hash of a random password at cost (see
// Cost), which nothing matches. Call it for an unknown username, so that the time of a refusal does not tell an
// attacker which usernames exist. It always returns false; when ctx ends while it waits, it returns at once, as
// Check does. With cost 0 (no hash in use, so no login pays for bcrypt) it compares nothing.
func (c *Checker) CheckUnknown(ctx context.Context, cost int, password []byte) bool {
	if cost == 0 {
		return false
	}
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return false
	}
	defer func() { <-c.slots }()
	dummy, err := c.dummy(cost)
	if err != nil {
		return false
	}
	_ = c.compare(dummy, password)
	return false
}

// dummy returns the hash CheckUnknown compares with at cost, making it on first use (which costs one bcrypt
// hash, once per cost).
func (c *Checker) dummy(cost int) ([]byte, error) {
	c.mu.Lock()
	h, ok := c.dummies[cost]
	c.mu.Unlock()
	if ok {
		return h, nil
	}
	h, err := bcrypt.GenerateFromPassword([]byte(rand.Text()), cost)
	if err != nil {
		return nil, fmt.Errorf("make a hash of cost %d: %w", cost, err)
	}
	c.mu.Lock()
	c.dummies[cost] = h
	c.mu.Unlock()
	return h, nil
}

// DefaultCost is the bcrypt cost of Hash: about 10 ms a check on one core, so that 200 gateways connecting at
// once after a broker restart are through in under 2 s on two cores (BENCHMARKS.md). Gateway passwords are
// machine-made and long; the cost does not have to make up for weak ones.
const DefaultCost = 7

// Hash returns the bcrypt hash of password (for workers.<name>.password_hash, a monitor or the status page);
// cost 0 means DefaultCost.
func Hash(password []byte, cost int) (string, error) {
	if cost == 0 {
		cost = DefaultCost
	}
	h, err := bcrypt.GenerateFromPassword(password, cost)
	if err != nil {
		return "", fmt.Errorf("hash password: %w", err)
	}
	return string(h), nil
}

// Valid reports why hash is not a bcrypt hash, or nil.
func Valid(hash string) error {
	_, err := bcrypt.Cost([]byte(hash))
	return err
}

// Cost returns the bcrypt cost that most of hashes have (the higher one on a tie), ignoring what is not a bcrypt
// hash; 0 when none is. It is the cost for CheckUnknown: a refusal of an unknown username then takes as long as
// that of most known ones.
func Cost(hashes ...string) int {
	n := map[int]int{}
	best := 0
	for _, h := range hashes {
		cost, err := bcrypt.Cost([]byte(h))
		if err != nil {
			continue
		}
		n[cost]++
		if n[cost] > n[best] || n[cost] == n[best] && cost > best {
			best = cost
		}
	}
	return best
}
