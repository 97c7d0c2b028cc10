package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// Several brokers on one MQTT server (Options.ID set) share what one broker keeps to itself:
//
//   - keys: every broker records every key published on wireguard/+/all, whoever published it, so that any of
//     them can replay it (HandlePeerKey);
//   - gateway choices: each broker announces the gateway it chose on wgkex/broker/{id}/choice and counts the
//     others' choices like its own (HandlePeerChoice), so that the spread by weight stays exact; before it
//     chooses, it waits until the announcements the server sent it so far are counted (Syncer);
//   - liveness: wgkex/broker/{id}/status, retained 1 while connected and 0 as its will (HandleBrokerStatus);
//   - catch-up: after every connect a broker asks one live peer for the keys of the replay window and records
//     them (CatchUp, HandleCatchupRequest, HandleCatchupBatch). It answers v2 meanwhile, since the answer
//     depends on the workers' state, which the server's retained messages give at once, and not on the keys;
//     replays, which do depend on them, wait until the catch-up is done (HandleClusterReplayRequest).
//
// Replay requests reach exactly one broker through a shared subscription, set up by the MQTT side.

const (
	// maxRecording bounds the keys of other brokers being written at once; the store commits them together.
	maxRecording = 64
	// catchupBatch is the number of keys per catch-up message.
	catchupBatch = 1000
	// catchupStall is how long a catch-up may go without a batch before the next peer is asked.
	catchupStall = 10 * time.Second
	// peerWait is how long a broker that just connected waits to learn of a live peer before it assumes it is
	// alone.
	peerWait = 2 * time.Second
	// replayWaitMax bounds how long a replay waits for the catch-up.
	replayWaitMax = time.Minute
	// maxCatchupWaiting bounds the brokers whose catch-up answer waits for its turn.
	maxCatchupWaiting = 64
	// maxBrokers bounds the other brokers this one keeps track of, and maxBrokerID the length of a broker's id:
	// any client the MQTT server lets publish on wgkex/broker/+/status could otherwise make up ids without end,
	// each a metric series, a row on the status page and a peer to ask for the catch-up.
	maxBrokers  = 64
	maxBrokerID = 128
)

// Syncer is implemented by an MQTT side on which other brokers may publish: Sync returns once every message the
// server had sent when it was called has been handled.
type Syncer interface {
	Sync(ctx context.Context) error
}

// cluster is the state shared with the other brokers.
type cluster struct {
	b         *Broker
	sem       chan struct{}
	answering chan struct{} // one catch-up answer at a time
	recording sync.WaitGroup
	answers   sync.WaitGroup

	mu      sync.Mutex
	brokers map[string]BrokerState // by id, as their last status said
	stopped bool                   // set by StopCluster: no new background work
	waiting map[string]int64       // asking broker → earliest time asked for, while its answer waits for its turn

	caughtUp     chan struct{} // closed after the first catch-up
	caughtUpOnce sync.Once
	stop         chan struct{} // closed by StopCluster
	stopOnce     sync.Once
	progress     chan struct{} // a catch-up batch arrived
	finished     atomic.Bool   // the last batch of the current catch-up arrived
	recorded     atomic.Int64  // keys recorded from other brokers (live and catch-up)
}

func (c *cluster) init(b *Broker) {
	c.b = b
	c.sem = make(chan struct{}, maxRecording)
	c.answering = make(chan struct{}, 1)
	c.brokers = map[string]BrokerState{}
	c.waiting = map[string]int64{}
	c.caughtUp = make(chan struct{})
	c.stop = make(chan struct{})
	c.progress = make(chan struct{}, 1)
	if b.opts.ID == "" {
		c.markCaughtUp()
	}
}

func (c *cluster) markCaughtUp() { c.caughtUpOnce.Do(func() { close(c.caughtUp) }) }

// begin counts a piece of background work on wg unless StopCluster was called.
func (c *cluster) begin(wg *sync.WaitGroup) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	wg.Add(1)
	return true
}

// record stores a key another broker registered, concurrently with others so that the store commits them
// together; it blocks while maxRecording writes are pending.
func (c *cluster) record(r KeyRecord) {
	if !c.begin(&c.recording) {
		return // stopping: the next start catches up
	}
	c.sem <- struct{}{}
	go func() {
		defer c.recording.Done()
		defer func() { <-c.sem }()
		if err := c.b.st.PutKey(r); err != nil {
			c.b.log.Error("record key of another broker", "domain", r.Domain, "err", err)
			return
		}
		c.recorded.Add(1)
	}()
}

// keyQoS is the QoS of a published key: 0 as in the reference, 1 among several brokers, so that a key is on the
// server (and on its way to the other brokers) before the node gets its answer, even if this broker dies then.
func (b *Broker) keyQoS() byte {
	if b.opts.ID == "" {
		return 0
	}
	return 1
}

// syncPeers waits (at most a second) until the choices other brokers announced so far are counted.
func (b *Broker) syncPeers() {
	if b.opts.ID == "" {
		return
	}
	s, ok := b.pub.(Syncer)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.Sync(ctx); err != nil {
		b.log.Debug("choices of other brokers not synchronised", "err", err)
	}
}

// announceChoice tells the other brokers that this one sent a node to worker in domain. It goes out at QoS 0
// before the key, which follows at QoS 1: the server handles a client's messages in order, so once it has
// acknowledged the key it has passed the choice on too, before the node gets its answer.
func (b *Broker) announceChoice(worker, domain string) {
	if b.opts.ID == "" || worker == "" {
		return
	}
	if err := b.pub.Publish(wire.ChoiceTopic(b.opts.ID), wire.FormatChoice(worker, domain), false, 0); err != nil {
		b.publishFailed("announce choice", "worker", worker, "domain", domain, "err", err)
	}
}

// HandlePeerKey takes a key another broker published on wireguard/{domain}/all and records it.
func (b *Broker) HandlePeerKey(topic string, payload []byte) {
	domain, err := wire.ParseKeyTopic(topic)
	if err != nil || topic != wire.KeyTopic(domain) {
		b.log.Warn("dropped key of another broker", "topic", topic, "err", err)
		return
	}
	r := Request{PublicKey: string(payload), Domain: domain}
	if err := b.validate(r); err != nil {
		b.log.Warn("dropped key of another broker", "topic", topic, "err", err)
		return
	}
	now := b.opts.Now()
	b.cluster.record(KeyRecord{Key: r.PublicKey, Domain: domain, FirstSeen: now, LastSeen: now})
}

// HandlePeerChoice takes wgkex/broker/{id}/choice and counts the new peer on the chosen worker, as if this broker
// had chosen it.
func (b *Broker) HandlePeerChoice(topic string, payload []byte) {
	id, _, err := wire.ParseBrokerTopic(topic)
	if err == nil && id == b.opts.ID {
		return
	}
	worker, domain, perr := wire.ParseChoice(payload)
	if err != nil || perr != nil {
		b.log.Warn("dropped choice of another broker", "topic", topic, "err", err, "payload_err", perr)
		return
	}
	if !b.domain[domain] {
		b.log.Warn("dropped choice for unknown domain", "topic", topic, "domain", domain)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	w, ok := b.workers[worker]
	if !ok {
		return
	}
	// A domain the worker reported offline (-1) or never reported stays so: the choice was made before.
	if n, ok := w.Peers[domain]; ok && n >= 0 {
		w.Peers[domain] = n + 1
	}
}

// BrokerState is a broker on the MQTT server as this one last heard of it.
type BrokerState struct {
	ID string `json:"id"`
	// Alive is true while its last status is 1; this broker is always alive to itself.
	Alive bool `json:"alive"`
	// Self marks this broker.
	Self bool `json:"self"`
	// Since is when this broker learnt that the other came or went (for a status retained on the server: when
	// this broker connected); zero for this broker itself.
	Since time.Time `json:"since,omitzero"`
}

// HandleBrokerStatus takes wgkex/broker/{id}/status: ≥ 1 alive, else gone; an empty payload (the retained status
// deleted on the server) forgets the broker.
func (b *Broker) HandleBrokerStatus(topic string, payload []byte) {
	id, kind, err := wire.ParseBrokerTopic(topic)
	if err != nil || kind != "status" {
		b.log.Warn("dropped broker status", "topic", topic, "err", err)
		return
	}
	if id == b.opts.ID {
		return // this broker is alive to itself
	}
	c := &b.cluster
	if len(payload) == 0 {
		c.mu.Lock()
		_, known := c.brokers[id]
		delete(c.brokers, id)
		c.mu.Unlock()
		if known {
			b.log.Info("broker forgotten", "broker", id)
		}
		return
	}
	n, err := wire.ParseInt(payload)
	if err != nil {
		b.log.Warn("dropped broker status", "topic", topic, "err", err)
		return
	}
	if len(id) > maxBrokerID {
		b.log.Warn("dropped broker status: id too long", "bytes", len(id))
		return
	}
	alive := n >= 1
	c.mu.Lock()
	was, known := c.brokers[id]
	changed := !known || was.Alive != alive
	full := !known && len(c.brokers) >= maxBrokers && !c.evictGone()
	if changed && !full {
		c.brokers[id] = BrokerState{ID: id, Alive: alive, Since: b.opts.Now()}
	}
	c.mu.Unlock()
	switch {
	case full:
		b.log.Warn("dropped broker status: too many brokers known", "broker", id, "max", maxBrokers)
	case changed:
		b.log.Info("broker status changed", "broker", id, "alive", alive)
	}
}

// evictGone forgets the broker that has been gone longest, to make room for another; false when every broker
// known is alive. c.mu is held.
func (c *cluster) evictGone() bool {
	oldest := ""
	for id, s := range c.brokers {
		if !s.Alive && (oldest == "" || s.Since.Before(c.brokers[oldest].Since)) {
			oldest = id
		}
	}
	if oldest == "" {
		return false
	}
	delete(c.brokers, oldest)
	return true
}

// ClusterBrokers returns every broker known on the MQTT server, this one included, by id: the live ones and those
// whose last status is 0 (until their retained status is deleted). A broker with its embedded server is alone and
// returns nil.
func (b *Broker) ClusterBrokers() []BrokerState {
	if b.opts.ID == "" {
		return nil
	}
	c := &b.cluster
	c.mu.Lock()
	out := []BrokerState{{ID: b.opts.ID, Alive: true, Self: true}}
	for _, s := range c.brokers {
		out = append(out, s)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Brokers returns the names of the brokers alive on the MQTT server, this one included, in order. A broker with
// its embedded server is alone and returns nil.
func (b *Broker) Brokers() []string {
	var out []string
	for _, s := range b.ClusterBrokers() {
		if s.Alive {
			out = append(out, s.ID)
		}
	}
	return out
}

// ID returns this broker's name among several on one MQTT server; empty when it is alone.
func (b *Broker) ID() string { return b.opts.ID }

// CaughtUp is closed once the broker has the keys it missed while it was down (at once for a broker alone).
func (b *Broker) CaughtUp() <-chan struct{} { return b.cluster.caughtUp }

// RecordedFromPeers returns how many keys of other brokers this one has recorded.
func (b *Broker) RecordedFromPeers() int64 { return b.cluster.recorded.Load() }

// HandleClusterReplayRequest is HandleReplayRequest for a broker among others: it serves the request once the
// catch-up is done, so that a replay does not miss the keys registered at other brokers while this one was down.
func (b *Broker) HandleClusterReplayRequest(topic string, payload []byte) {
	select {
	case <-b.cluster.caughtUp:
		b.HandleReplayRequest(topic, payload)
		return
	default:
	}
	if !b.cluster.begin(&b.cluster.answers) {
		return
	}
	go func() {
		defer b.cluster.answers.Done()
		t := time.NewTimer(replayWaitMax)
		defer t.Stop()
		select {
		case <-b.cluster.caughtUp:
		case <-b.cluster.stop:
			return
		case <-t.C:
			b.log.Warn("replaying before catch-up finished")
		}
		b.HandleReplayRequest(topic, payload)
	}()
}

// CatchUp asks one live peer after the other for the keys registered since the given time (zero or earlier: the
// whole replay window) until one has sent them all, then waits until they are recorded. Alone, it returns at
// once. The MQTT side calls it after every connect.
func (b *Broker) CatchUp(ctx context.Context, since time.Time) {
	if b.opts.ID == "" {
		return
	}
	start := time.Now()
	if window := b.opts.Now().Add(-b.opts.ReplayWindow); since.Before(window) {
		since = window
	}
	peers := b.waitPeers(ctx)
	if len(peers) == 0 {
		b.log.Info("no other broker alive, nothing to catch up")
		b.cluster.markCaughtUp()
		return
	}
	req, _ := json.Marshal(wire.CatchupRequest{From: b.opts.ID, Since: since.Unix()})
	for _, peer := range peers {
		before := b.cluster.recorded.Load()
		b.cluster.finished.Store(false)
		if err := b.pub.Publish(wire.CatchupRequestTopic(peer), req, false, 1); err != nil {
			b.log.Warn("ask for catch-up", "broker", peer, "err", err)
			continue
		}
		if b.awaitCatchup(ctx) {
			b.cluster.recording.Wait()
			b.log.Info("caught up", "from", peer, "keys", b.cluster.recorded.Load()-before, "took", time.Since(start).Round(time.Millisecond))
			b.cluster.markCaughtUp()
			return
		}
		if ctx.Err() != nil {
			return
		}
		b.log.Warn("catch-up stalled, asking the next broker", "broker", peer)
	}
	b.log.Warn("no broker completed the catch-up; replays go on with the keys at hand")
	b.cluster.markCaughtUp()
}

// waitPeers returns the other live brokers, waiting up to peerWait for the retained statuses to arrive.
func (b *Broker) waitPeers(ctx context.Context) []string {
	deadline := time.NewTimer(peerWait)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var peers []string
		for _, id := range b.Brokers() {
			if id != b.opts.ID {
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

// awaitCatchup waits for the last batch; it fails when no batch comes for catchupStall.
func (b *Broker) awaitCatchup(ctx context.Context) bool {
	t := time.NewTimer(catchupStall)
	defer t.Stop()
	for !b.cluster.finished.Load() {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return false
		case <-b.cluster.progress:
			t.Reset(catchupStall)
		}
	}
	return true
}

// HandleCatchupBatch takes a batch of the keys this broker asked for, on wgkex/broker/{id}/keys.
func (b *Broker) HandleCatchupBatch(topic string, payload []byte) {
	batch, err := wire.ParseCatchupBatch(payload)
	if err != nil {
		b.log.Warn("dropped catch-up batch", "topic", topic, "err", err)
		return
	}
	bad := 0
	for _, k := range batch.Keys {
		r := Request{PublicKey: k.Key, Domain: k.Domain}
		if b.validate(r) != nil || k.LastSeen < k.FirstSeen {
			bad++
			continue
		}
		b.cluster.record(KeyRecord{Key: k.Key, Domain: k.Domain, FirstSeen: time.Unix(k.FirstSeen, 0), LastSeen: time.Unix(k.LastSeen, 0)})
	}
	if bad > 0 {
		b.log.Warn("dropped invalid keys from catch-up", "count", bad)
	}
	if batch.Last {
		b.cluster.finished.Store(true)
	}
	select {
	case b.cluster.progress <- struct{}{}:
	default:
	}
}

// HandleCatchupRequest takes wgkex/broker/{id}/catchup and sends the asking broker every key seen since the time
// it names, in batches, one answer at a time. Requests of a broker whose answer still waits for its turn join it
// (from the earliest time asked for), so a peer asking again and again gets one more answer, not one each.
func (b *Broker) HandleCatchupRequest(topic string, payload []byte) {
	req, err := wire.ParseCatchupRequest(payload)
	if err != nil {
		b.log.Warn("dropped catch-up request", "topic", topic, "err", err)
		return
	}
	c := &b.cluster
	c.mu.Lock()
	since, ok := c.waiting[req.From]
	switch {
	case c.stopped:
		c.mu.Unlock()
		return
	case ok:
		c.waiting[req.From] = min(since, req.Since)
		c.mu.Unlock()
		return
	case len(c.waiting) >= maxCatchupWaiting:
		c.mu.Unlock()
		b.log.Warn("too many catch-up requests waiting, dropped", "broker", req.From)
		return
	}
	c.waiting[req.From] = req.Since
	c.answers.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.answers.Done()
		c.answering <- struct{}{}
		defer func() { <-c.answering }()
		c.mu.Lock()
		req.Since = c.waiting[req.From]
		delete(c.waiting, req.From)
		c.mu.Unlock()
		b.sendCatchup(req)
	}()
}

func (b *Broker) sendCatchup(req wire.CatchupRequest) {
	topic := wire.CatchupKeysTopic(req.From)
	batch := wire.CatchupBatch{Keys: make([]wire.CatchupKey, 0, catchupBatch)}
	sent := 0
	flush := func(last bool) error {
		select {
		case <-b.cluster.stop:
			return errors.New("broker stopping")
		default:
		}
		batch.Last = last
		p, err := json.Marshal(batch)
		if err != nil {
			return err
		}
		if err := b.pub.Publish(topic, p, false, 1); err != nil {
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
	for _, d := range b.opts.Domains {
		var cursor KeyCursor
		for {
			var keys []KeyRecord
			keys, cursor, err = b.st.KeysPage(d, since, cursor, catchupBatch-len(batch.Keys))
			if err != nil {
				break pages
			}
			for _, k := range keys {
				batch.Keys = append(batch.Keys, wire.CatchupKey{Domain: k.Domain, Key: k.Key, FirstSeen: k.FirstSeen.Unix(), LastSeen: k.LastSeen.Unix()})
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
		err = flush(true)
	}
	if err != nil {
		b.log.Error("catch-up answer failed", "broker", req.From, "sent", sent, "err", err)
		return
	}
	b.log.Info("sent catch-up", "broker", req.From, "keys", sent, "batches", batch.Seq)
}

// StopCluster drops the replays held back by the catch-up and waits for catch-up answers and for keys of other
// brokers being recorded, or returns an error when ctx ends first. Call it before StopReplays.
func (b *Broker) StopCluster(ctx context.Context) error {
	c := &b.cluster
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
	c.stopOnce.Do(func() { close(c.stop) })
	done := make(chan struct{})
	go func() { c.answers.Wait(); c.recording.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("catch-up answers or key records still running: %w", ctx.Err())
	}
}
