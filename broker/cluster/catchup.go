package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// handleReplayRequest serves a worker's replay request once the catch-up is done, so that a replay does not miss
// the keys registered at other brokers while this one was down. Until then requests are held (identical ones
// once, at most maxHeldReplays) and one goroutine serves them when the catch-up ends or replayWaitMax has passed.
func (c *Cluster) handleReplayRequest(topic string, payload []byte) {
	select {
	case <-c.caughtUp:
		c.local.HandleReplayRequest(topic, payload)
		return
	default:
	}
	r := heldReplay{topic, string(payload)}
	c.mu.Lock()
	_, again := c.held[r]
	switch {
	case c.stopped || again:
		c.mu.Unlock()
		return
	case len(c.held) >= maxHeldReplays:
		c.mu.Unlock()
		c.log.Warn("too many replay requests waiting for the catch-up, dropped", "topic", topic)
		return
	}
	c.held[r] = true
	start := !c.holding
	if start {
		c.holding = true
		c.answers.Add(1)
	}
	c.mu.Unlock()
	if start {
		go c.releaseHeld()
	}
}

// heldReplay is a replay request held back until the catch-up is done.
type heldReplay struct{ topic, payload string }

// releaseHeld serves the replay requests held back once the catch-up is done or replayWaitMax has passed, and
// drops them when the cluster stops.
func (c *Cluster) releaseHeld() {
	defer c.answers.Done()
	t := time.NewTimer(replayWaitMax)
	defer t.Stop()
	stopped := false
	select {
	case <-c.caughtUp:
	case <-c.stop:
		stopped = true
	case <-t.C:
		c.log.Warn("replaying before catch-up finished")
	}
	c.mu.Lock()
	held := c.held
	c.held, c.holding = map[heldReplay]bool{}, false
	c.mu.Unlock()
	if stopped {
		return
	}
	for _, r := range slices.SortedFunc(maps.Keys(held), func(a, b heldReplay) int {
		return cmp.Or(strings.Compare(a.topic, b.topic), strings.Compare(a.payload, b.payload))
	}) {
		c.local.HandleReplayRequest(r.topic, []byte(r.payload))
	}
}

// catchUp asks one live peer after the other for the keys registered since the given time (zero or earlier: the
// whole replay window) until one has sent them all, with every key recorded. Run calls it after every Up.
func (c *Cluster) catchUp(ctx context.Context, since time.Time) {
	start := time.Now()
	if window := c.opts.Now().Add(-c.opts.ReplayWindow); since.Before(window) {
		since = window
	}
	peers := c.waitPeers(ctx)
	if len(peers) == 0 {
		c.log.Info("no other broker alive, nothing to catch up")
		c.markCaughtUp()
		return
	}
	defer func() {
		c.mu.Lock()
		c.asked = "" // the last round is over: no batch ends it any more
		c.mu.Unlock()
	}()
	for _, peer := range peers {
		before := c.recorded.Load()
		req, _ := json.Marshal(CatchupRequest{From: c.opts.ID, Since: since.Unix(), Round: c.await(peer)})
		if err := c.pub.Publish(CatchupRequestTopic(peer), req, false, 1); err != nil {
			c.log.Warn("ask for catch-up", "broker", peer, "err", err)
			continue
		}
		if c.awaitCatchup(ctx) {
			c.log.Info("caught up", "from", peer, "keys", c.recorded.Load()-before, "took", time.Since(start).Round(time.Millisecond))
			c.markCaughtUp()
			return
		}
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("catch-up stalled, asking the next broker", "broker", peer)
	}
	c.log.Warn("no broker completed the catch-up; replays go on with the keys at hand")
	c.markCaughtUp()
}

// await starts a new round: a request to peer, whose answer only peer's batches of the round end. It returns
// the round's number.
func (c *Cluster) await(peer string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.round++
	c.asked = peer
	c.finished.Store(false)
	return c.round
}

// waitPeers returns the other live brokers, waiting up to peerWait for the retained statuses to arrive.
func (c *Cluster) waitPeers(ctx context.Context) []string {
	deadline := time.NewTimer(peerWait)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var peers []string
		for _, id := range c.Alive() {
			if id != c.opts.ID {
				peers = append(peers, id)
			}
		}
		if len(peers) > 0 {
			return peers
		}
		select {
		case <-ctx.Done():
			return nil
		case <-deadline.C:
			return nil
		case <-tick.C:
		}
	}
}

// awaitCatchup waits for the last batch; it fails when no batch comes for Options.Stall.
func (c *Cluster) awaitCatchup(ctx context.Context) bool {
	t := time.NewTimer(c.opts.Stall)
	defer t.Stop()
	for !c.finished.Load() {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		case <-c.progress:
			t.Reset(c.opts.Stall)
		}
	}
	return true
}

// handleCatchupBatch takes a batch of the keys this broker asked for, on wgkex/broker/{id}/keys. It returns
// once the batch's keys are written, so that a catch-up that has seen its last batch has its keys.
func (c *Cluster) handleCatchupBatch(topic string, payload []byte) {
	batch, err := ParseCatchupBatch(payload)
	if err != nil {
		c.log.Warn("dropped catch-up batch", "topic", topic, "err", err)
		return
	}
	bad := 0
	var written sync.WaitGroup // Add and Wait on this goroutine only
	for _, k := range batch.Keys {
		if c.local.CheckKey(k.Domain, k.Key) != nil || k.LastSeen < k.FirstSeen {
			bad++
			continue
		}
		c.record(broker.KeyRecord{Key: k.Key, Domain: k.Domain, FirstSeen: time.Unix(k.FirstSeen, 0), LastSeen: time.Unix(k.LastSeen, 0)}, &written)
	}
	written.Wait()
	if bad > 0 {
		c.log.Warn("dropped invalid keys from catch-up", "count", bad)
	}
	// After the keys: a key registered again after its revocation stays (RevokeKey keeps what is newer).
	for _, r := range batch.Revoked {
		c.local.ApplyRevocation(r.Domain, r.Key, time.Unix(0, r.At), false)
	}
	if batch.From != "" { // from a broker of this version: it must answer the request awaited now
		c.mu.Lock()
		current := batch.From == c.asked && batch.Round == c.round
		c.mu.Unlock()
		if !current {
			c.log.Info("late catch-up batch of an earlier request: keys recorded, round goes on", "broker", batch.From, "round", batch.Round)
			return
		}
	}
	// A batch without From comes from a broker of an earlier version, which does not say which request it answers:
	// it is taken as the answer awaited, as that version took it.
	if batch.Last {
		c.finished.Store(true)
	}
	select {
	case c.progress <- struct{}{}:
	default:
	}
}

// handleCatchupRequest takes wgkex/broker/{id}/catchup and sends the asking broker every key seen since the time
// it names, in batches, one answer at a time. Requests of a broker whose answer still waits for its turn join it
// (from the earliest time asked for, as an answer to the latest request), so a peer asking again and again gets
// one more answer, not one each.
func (c *Cluster) handleCatchupRequest(topic string, payload []byte) {
	req, err := ParseCatchupRequest(payload)
	if err != nil {
		c.log.Warn("dropped catch-up request", "topic", topic, "err", err)
		return
	}
	c.mu.Lock()
	p, ok := c.waiting[req.From]
	switch {
	case c.stopped:
		c.mu.Unlock()
		return
	case ok:
		c.waiting[req.From] = pending{since: min(p.since, req.Since), round: max(p.round, req.Round)}
		c.mu.Unlock()
		return
	case len(c.waiting) >= maxCatchupWaiting:
		c.mu.Unlock()
		c.log.Warn("too many catch-up requests waiting, dropped", "broker", req.From)
		return
	}
	c.waiting[req.From] = pending{since: req.Since, round: req.Round}
	c.answers.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.answers.Done()
		c.answering <- struct{}{}
		defer func() { <-c.answering }()
		c.mu.Lock()
		p := c.waiting[req.From]
		req.Since, req.Round = p.since, p.round
		delete(c.waiting, req.From)
		c.mu.Unlock()
		c.sendCatchup(req)
	}()
}

// pending is a catch-up request waiting for its answer's turn.
type pending struct {
	since int64
	round uint64
}

func (c *Cluster) sendCatchup(req CatchupRequest) {
	topic := CatchupKeysTopic(req.From)
	batch := CatchupBatch{From: c.opts.ID, Round: req.Round, Keys: make([]CatchupKey, 0, catchupBatch)}
	sent := 0
	flush := func(last bool) error {
		select {
		case <-c.stop:
			return errors.New("broker stopping")
		default:
		}
		batch.Last = last
		p, err := json.Marshal(batch)
		if err != nil {
			return err
		}
		if err := c.pub.Publish(topic, p, false, 1); err != nil {
			return err
		}
		sent += len(batch.Keys)
		batch.Seq++
		batch.Keys = batch.Keys[:0]
		return nil
	}
	since := time.Unix(req.Since, 0)
	var err error
	// Each page is read in one short read transaction and published outside it.
pages:
	for _, d := range c.opts.Domains {
		var cursor broker.KeyCursor
		for {
			var keys []broker.KeyRecord
			keys, cursor, err = c.st.KeysPage(d, since, cursor, catchupBatch-len(batch.Keys))
			if err != nil {
				break pages
			}
			for _, k := range keys {
				batch.Keys = append(batch.Keys, CatchupKey{Domain: k.Domain, Key: k.Key, FirstSeen: k.FirstSeen.Unix(), LastSeen: k.LastSeen.Unix()})
			}
			if len(batch.Keys) == catchupBatch {
				if err = flush(false); err != nil {
					break pages
				}
			}
			if cursor == "" {
				break
			}
		}
	}
	if err == nil {
		batch.Revoked, err = c.revocations(since)
	}
	if err == nil {
		err = flush(true)
	}
	if err != nil {
		c.log.Error("catch-up answer failed", "broker", req.From, "sent", sent, "err", err)
		return
	}
	c.log.Info("sent catch-up", "broker", req.From, "keys", sent, "batches", batch.Seq, "revoked", len(batch.Revoked))
}

// revocations returns the revocations of every domain made since, for the last batch of a catch-up answer.
func (c *Cluster) revocations(since time.Time) ([]CatchupRevocation, error) {
	var out []CatchupRevocation
	for _, d := range c.opts.Domains {
		tombs, err := c.st.Revoked(d, since)
		if err != nil {
			return nil, err
		}
		for k, at := range tombs {
			out = append(out, CatchupRevocation{Domain: d, Key: k, At: at.UnixNano()})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Domain != out[j].Domain {
			return out[i].Domain < out[j].Domain
		}
		return out[i].Key < out[j].Key
	})
	return out, nil
}
