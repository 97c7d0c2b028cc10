package mqttclient

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"
)

// ErrSyncFailing is returned by Sync while its tokens do not come back.
var ErrSyncFailing = errors.New("mqtt sync tokens do not come back")

// syncTimeout bounds one round trip of Sync; after it the waiters go on without the guarantee.
const syncTimeout = time.Second

// syncer implements Sync: it publishes a token on the client's own sync topic, subscribed without No Local, and
// waits for it to come back. The server forwards messages to a client in order and the client handles them in
// order, so once the token is back every message the server sent this client before it has been handled.
// Concurrent callers share round trips: a caller waits for the first round published after it arrived.
type syncer struct {
	mu       sync.Mutex
	token    uint64
	cur      chan struct{} // closed when the round in flight is back
	next     chan struct{} // for callers that arrived while a round was in flight
	wanted   bool          // someone waits on next
	inflight bool
	timer    *time.Timer
	// failing is set when a token did not come back in time (the ACL may not let the client publish or read its
	// sync topic): Sync then returns at once, while rounds go on in the background until a token comes back.
	failing bool
}

// Sync returns once every message the server had sent this client when Sync was called has been handled, or
// after a second, or when ctx ends. It needs Options.SyncTopic. While tokens do not come back, it returns
// ErrSyncFailing at once.
func (c *Client) Sync(ctx context.Context) error {
	if c.opts.SyncTopic == "" {
		return nil
	}
	s := &c.sync
	s.mu.Lock()
	if s.failing {
		if !s.inflight {
			c.startRound()
		}
		s.mu.Unlock()
		return ErrSyncFailing
	}
	var ch chan struct{}
	if s.inflight {
		if s.next == nil {
			s.next = make(chan struct{})
		}
		s.wanted = true
		ch = s.next
	} else {
		ch = c.startRound()
	}
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startRound publishes the next token. Callers hold s.mu.
func (c *Client) startRound() chan struct{} {
	s := &c.sync
	s.inflight = true
	s.token++
	if s.next != nil {
		s.cur, s.next = s.next, nil
	} else {
		s.cur = make(chan struct{})
	}
	s.wanted = false
	tok, cur := s.token, s.cur
	// The client owns the round's goroutines, its publish and its timer's callback: Close waits for them. They are
	// counted under c.mu, where Close sets closing, so that none is added while Close waits.
	c.mu.Lock()
	closing := c.closing
	if !closing {
		c.rounds.Add(2)
	}
	c.mu.Unlock()
	if closing { // nothing more is published: release the waiters at once
		s.inflight = false
		close(s.cur)
		return cur
	}
	s.timer = time.AfterFunc(syncTimeout, func() { defer c.rounds.Done(); c.endRound(tok, false, true) })
	go func() {
		defer c.rounds.Done()
		if err := c.Publish(c.opts.SyncTopic, strconv.AppendUint(nil, tok, 10), false, 0); err != nil {
			c.endRound(tok, false, false) // not connected: nothing to wait for
		}
	}()
	return cur
}

// stopSync releases every waiter of Sync and stops the timer of the round in flight; Close calls it once closing
// is set, so that no round starts after it.
func (c *Client) stopSync() {
	s := &c.sync
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.inflight {
		return
	}
	if s.timer.Stop() {
		c.rounds.Done() // its callback will not run
	}
	close(s.cur)
	if s.next != nil {
		close(s.next)
		s.next = nil
	}
	s.inflight, s.wanted = false, false
}

// endRound releases the waiters of round tok and starts the next round if anyone waits for one. echoed: its
// token came back; timedOut: it did not within syncTimeout.
func (c *Client) endRound(tok uint64, echoed, timedOut bool) {
	s := &c.sync
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.inflight || tok != s.token {
		return
	}
	switch {
	case echoed && s.failing:
		s.failing = false
		c.log.Info("mqtt sync tokens come back again", "topic", c.opts.SyncTopic)
	case timedOut && !s.failing:
		s.failing = true
		c.log.Warn("mqtt sync token did not come back: gateway choices of other brokers may be counted late; check that the ACL lets this client write and read its sync topic", "topic", c.opts.SyncTopic)
	}
	if s.timer.Stop() {
		c.rounds.Done() // its callback will not run
	}
	close(s.cur)
	s.inflight = false
	if s.wanted {
		c.startRound()
	}
}

// handleSync takes the echo of a sync token.
func (c *Client) handleSync(_ string, payload []byte) {
	tok, err := strconv.ParseUint(string(payload), 10, 64)
	if err != nil {
		return
	}
	c.endRound(tok, true, false)
}
