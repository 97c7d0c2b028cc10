package mqttc

import (
	"context"
	"strconv"
	"sync"
	"time"
)

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
}

// Sync returns once every message the server had sent this client when Sync was called has been handled, or
// after a second, or when ctx ends. It needs Options.SyncTopic.
func (c *Client) Sync(ctx context.Context) error {
	if c.opts.SyncTopic == "" {
		return nil
	}
	s := &c.sync
	s.mu.Lock()
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
	s.timer = time.AfterFunc(syncTimeout, func() { c.endRound(tok) })
	go func() {
		if err := c.Publish(c.opts.SyncTopic, strconv.AppendUint(nil, tok, 10), false, 0); err != nil {
			c.endRound(tok)
		}
	}()
	return cur
}

// endRound releases the waiters of round tok (its echo came back, or it failed) and starts the next round if
// anyone waits for one.
func (c *Client) endRound(tok uint64) {
	s := &c.sync
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.inflight || tok != s.token {
		return
	}
	s.timer.Stop()
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
	c.endRound(tok)
}
