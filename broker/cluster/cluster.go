// Package cluster lets several brokers share one MQTT server (broker.mqtt_server). It implements broker.Peers,
// the little the broker core needs to know about the others; a broker alone on its embedded server uses none of
// it. What the brokers share:
//
//   - keys: every broker records every key published on wireguard/+/all, whoever published it, so that any of
//     them can replay it (handleKey);
//   - gateway choices: each broker announces the gateway it chose on wgkex/broker/{id}/choice (Announce) and
//     counts the others' choices like its own (handleChoice), so that the spread by weight stays exact; before it
//     chooses, it waits until the announcements the server sent it so far are counted (Sync); choices made at
//     the same time share one announcement, acknowledged before their nodes get their answers;
//   - liveness: wgkex/broker/{id}/status, retained 1 while connected and 0 as its will (handleStatus);
//   - catch-up: after every connect (Up) a broker asks one live peer for the keys of the replay window and
//     records them (catchUp, handleCatchupRequest, handleCatchupBatch). It answers v2 meanwhile, since the answer
//     depends on the workers' state, which the server's retained messages give at once, and not on the keys;
//     replays, which do depend on them, wait until the catch-up is done (handleReplayRequest).
//
// Replay requests reach exactly one broker through a shared subscription (Handlers).
package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

const (
	// maxRecording bounds the keys of other brokers being handed to the store at once.
	maxRecording = 64
	// catchupBatch is the number of keys per catch-up message.
	catchupBatch = 1000
	// defaultStall is Options.Stall when unset.
	defaultStall = 10 * time.Second
	// peerWait is how long a broker that just connected waits to learn of a live peer before it assumes it is
	// alone.
	peerWait = 2 * time.Second
	// replayWaitMax bounds how long a replay waits for the catch-up.
	replayWaitMax = time.Minute
	// maxHeldReplays bounds the replay requests held back until the catch-up is done (the broker's own queue
	// holds as many).
	maxHeldReplays = 4096
	// maxCatchupWaiting bounds the brokers whose catch-up answer waits for its turn.
	maxCatchupWaiting = 64
	// maxBrokers bounds the other brokers this one keeps track of, and maxBrokerID the length of a broker's id:
	// any client the MQTT server lets publish on wgkex/broker/+/status could otherwise make up ids without end,
	// each a metric series, a row on the status page and a peer to ask for the catch-up.
	maxBrokers  = 64
	maxBrokerID = 128
	// maxChoices bounds the choices in one announcement (some 60 bytes each).
	maxChoices = 1000
	// catchupMargin is how long before a lost connection was noticed a reconnected broker asks for keys: the
	// loss is noticed up to 1.5 keepalives late, and the brokers' clocks may differ a little.
	catchupMargin = 2 * time.Minute
)

// Publisher sends MQTT messages on the connection to the shared server.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// Syncer is implemented by a Publisher whose Sync returns once every message the server had sent when it was
// called has been handled (mqttc.Client).
type Syncer interface {
	Sync(ctx context.Context) error
}

// Store is the part of the state file the cluster reads and writes.
type Store interface {
	PutKeyLazy(broker.KeyRecord) error
	KeysPage(domain string, since time.Time, after broker.KeyCursor, limit int) ([]broker.KeyRecord, broker.KeyCursor, error)
	// Revoked returns the keys of domain revoked at or after since, with the time of each revocation.
	Revoked(domain string, since time.Time) (map[string]time.Time, error)
}

// Local is the broker this one speaks for (*broker.Broker).
type Local interface {
	// CheckKey refuses a key that could not register for domain at this broker.
	CheckKey(domain, key string) error
	// CountChoice counts a node another broker sent to worker in domain.
	CountChoice(worker, domain string)
	// HandleReplayRequest serves a worker's replay request.
	HandleReplayRequest(topic string, payload []byte)
	// ApplyRevocation records a revocation another broker made; live is false for one from a catch-up.
	ApplyRevocation(domain, key string, at time.Time, live bool)
}

// Options configure a Cluster.
type Options struct {
	// ID names this broker among the others: its MQTT client id.
	ID string
	// Domains are the configured domains, whose keys a catch-up answer sends.
	Domains []string
	// ReplayWindow is how far back a catch-up reaches.
	ReplayWindow time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Stall is how long a catch-up may go without a batch before the next peer is asked (default 10 s).
	Stall time.Duration
}

// Cluster is this broker's part among several on one MQTT server. Its methods are safe for concurrent use.
type Cluster struct {
	st    Store
	pub   Publisher
	log   *slog.Logger
	opts  Options
	local Local // set by Handlers

	sem        chan struct{}
	answering  chan struct{}  // one catch-up answer at a time
	recording  sync.WaitGroup // every key being recorded; only Stop waits for it, after begin refuses new ones
	answers    sync.WaitGroup
	announcing sync.WaitGroup // the goroutine publishing choices (Announce)

	announce struct {
		mu      sync.Mutex
		pending []Choice      // not yet published
		done    chan struct{} // closed once pending is acknowledged
		busy    bool          // a goroutine publishes (announceAll)
	}

	mu      sync.Mutex
	brokers map[string]broker.BrokerState // by id, as their last status said
	stopped bool                          // set by Stop: no new background work
	waiting map[string]pending            // asking broker → its request, while the answer waits for its turn
	round   uint64                        // the number of the last catch-up request this broker sent
	asked   string                        // the peer whose answer to request round is awaited; "" between catch-ups
	held    map[heldReplay]bool           // replay requests waiting for the catch-up (handleReplayRequest)
	holding bool                          // a releaseHeld goroutine waits to serve held

	caughtUp     chan struct{} // closed after the first catch-up
	caughtUpOnce sync.Once
	stop         chan struct{} // closed by Stop
	stopOnce     sync.Once
	progress     chan struct{} // a catch-up batch arrived
	finished     atomic.Bool   // the last batch of the current catch-up arrived
	recorded     atomic.Int64  // keys recorded from other brokers (live and catch-up)
	others       atomic.Int32  // other brokers alive, as their last status said (set under mu)
	connected    chan time.Time
	down         atomic.Int64 // Unix nanoseconds of the last lost connection, 0 before any
	up           atomic.Bool  // between Up and Down
}

var _ broker.Peers = (*Cluster)(nil)

// New creates the cluster side of broker opts.ID, which publishes through pub and records keys in st. Wire
// Handlers on the MQTT side, call Up and Down as the connection comes and goes, and run Run.
func New(st Store, pub Publisher, log *slog.Logger, opts Options) *Cluster {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Stall <= 0 {
		opts.Stall = defaultStall
	}
	return &Cluster{
		st: st, pub: pub, log: log, opts: opts,
		sem:       make(chan struct{}, maxRecording),
		answering: make(chan struct{}, 1),
		brokers:   map[string]broker.BrokerState{},
		waiting:   map[string]pending{},
		held:      map[heldReplay]bool{},
		caughtUp:  make(chan struct{}),
		stop:      make(chan struct{}),
		progress:  make(chan struct{}, 1),
		connected: make(chan time.Time, 1),
	}
}

// Handlers returns the subscriptions of this broker among others, for local: replay requests shared so that
// exactly one broker answers each, every key any broker publishes, the other brokers' choices and liveness, and
// the catch-up requests and answers meant for this one. Call it once, before the MQTT side serves.
func (c *Cluster) Handlers(local Local) map[string]func(topic string, payload []byte) {
	c.local = local
	id := c.opts.ID
	return map[string]func(string, []byte){
		SharedGroup + wire.ReplayRequestFilter: c.handleReplayRequest,
		KeyAllFilter:                           c.handleKey,
		wire.RevokeFilter:                      c.handleRevocation,
		ChoiceFilter:                           c.handleChoice,
		BrokerStatusFilter:                     c.handleStatus,
		CatchupRequestTopic(id):                c.handleCatchupRequest,
		CatchupKeysTopic(id):                   c.handleCatchupBatch,
	}
}

// ID returns this broker's name among the others.
func (c *Cluster) ID() string { return c.opts.ID }

// KeyQoS is 1 among several brokers, so that a key is on the server (and on its way to the other brokers) before
// the node gets its answer, even if this broker dies then.
func (c *Cluster) KeyQoS() byte { return 1 }

// Sync waits (at most two seconds) until the choices other brokers announced so far are counted. Alone on the
// server there are none: it returns at once.
func (c *Cluster) Sync(ctx context.Context) {
	s, ok := c.pub.(Syncer)
	if !ok || c.others.Load() == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.Sync(ctx); err != nil {
		c.log.Debug("choices of other brokers not synchronised", "err", err)
	}
}

// Announce tells the other brokers that this one sent a node to worker in domain, at QoS 1: a server whose queue
// for a busy broker is full drops QoS 0 messages first, so a choice at QoS 0 could be lost under load and the
// spread drift. It returns at once; wait returns once the server has acknowledged the choice (or the publish
// failed), so that the caller waits for it only before it answers the node, while it stores and publishes the key.
// Choices announced while an announcement is under way go together in the next one, one a line.
//
// Alone on the server, a broker announces nothing: nobody would count it, and a broker that starts later learns
// the peers from the workers' metrics, as it would learn those of choices announced before it subscribed. A
// choice made in the instant before this broker sees a newcomer's status is not announced to it; the workers'
// next metrics correct that.
func (c *Cluster) Announce(worker, domain string) (wait func()) {
	if c.others.Load() == 0 {
		return func() {}
	}
	a := &c.announce
	a.mu.Lock()
	if a.done == nil {
		a.done = make(chan struct{})
	}
	a.pending = append(a.pending, Choice{Worker: worker, Domain: domain})
	done := a.done
	start := !a.busy
	a.busy = true
	a.mu.Unlock()
	if start {
		if c.begin(&c.announcing) {
			go func() {
				defer c.announcing.Done()
				c.announceAll()
			}()
		} else {
			c.announceAll() // stopping: no new goroutines; the caller publishes
		}
	}
	return func() { <-done }
}

// announceAll publishes the pending choices, maxChoices a message, and releases their waiters, until none are
// pending. The goroutine that set announce.busy runs it.
func (c *Cluster) announceAll() {
	a := &c.announce
	for {
		a.mu.Lock()
		batch, done := a.pending, a.done
		a.pending, a.done = nil, nil
		if len(batch) == 0 {
			a.busy = false
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
		for len(batch) > 0 {
			n := min(len(batch), maxChoices)
			var payload []byte
			for i, ch := range batch[:n] {
				if i > 0 {
					payload = append(payload, '\n')
				}
				payload = append(payload, FormatChoice(ch.Worker, ch.Domain)...)
			}
			if err := c.pub.Publish(ChoiceTopic(c.opts.ID), payload, false, 1); err != nil {
				c.publishFailed("announce choices", "choices", n, "err", err)
			}
			batch = batch[n:]
		}
		close(done)
	}
}

// Brokers returns every broker known on the MQTT server, this one included, by id: the live ones and those whose
// last status is 0 (until their retained status is deleted); and how many are alive.
func (c *Cluster) Brokers() (all []broker.BrokerState, alive int) {
	c.mu.Lock()
	all = []broker.BrokerState{{ID: c.opts.ID, Alive: true, Self: true}}
	for _, s := range c.brokers {
		all = append(all, s)
	}
	c.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	for _, s := range all {
		if s.Alive {
			alive++
		}
	}
	return all, alive
}

// Alive returns the ids of the brokers alive on the MQTT server, this one included, in order.
func (c *Cluster) Alive() []string {
	all, _ := c.Brokers()
	var out []string
	for _, s := range all {
		if s.Alive {
			out = append(out, s.ID)
		}
	}
	return out
}

// CaughtUp is closed once the broker has the keys it missed while it was down.
func (c *Cluster) CaughtUp() <-chan struct{} { return c.caughtUp }

// Recorded returns how many keys of other brokers this one has recorded.
func (c *Cluster) Recorded() int64 { return c.recorded.Load() }

// Up tells the cluster that the connection to the MQTT server is up and subscribed: Run catches up on the keys
// registered since shortly before the connection was lost (after the start: the whole replay window).
func (c *Cluster) Up() {
	var since time.Time
	if n := c.down.Load(); n != 0 {
		since = time.Unix(0, n).Add(-catchupMargin)
	}
	c.up.Store(true)
	select {
	case c.connected <- since:
	default:
	}
}

// Down tells the cluster that the connection to the MQTT server broke.
func (c *Cluster) Down() {
	c.up.Store(false)
	c.down.Store(c.opts.Now().UnixNano())
}

// publishFailed logs a publish that failed: a warning, or a debug line while the connection is down.
func (c *Cluster) publishFailed(msg string, args ...any) {
	if c.up.Load() {
		c.log.Warn(msg, args...)
		return
	}
	c.log.Debug(msg, args...)
}

// Run runs a catch-up after every Up, one at a time, until ctx ends.
func (c *Cluster) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case since := <-c.connected:
			c.catchUp(ctx, since)
		}
	}
}

func (c *Cluster) markCaughtUp() { c.caughtUpOnce.Do(func() { close(c.caughtUp) }) }

// begin counts a piece of background work on wg unless Stop was called.
func (c *Cluster) begin(wg *sync.WaitGroup) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return false
	}
	wg.Add(1)
	return true
}

// record stores a key another broker registered (Store.PutKeyLazy: held and written with the next group),
// concurrently with others, so that the MQTT handler does not wait while the store's key writer is in an
// fdatasync; it blocks while maxRecording are pending. A catch-up batch passes its own WaitGroup to learn when
// its keys are recorded (readable); live keys pass nil.
func (c *Cluster) record(r broker.KeyRecord, batch *sync.WaitGroup) {
	if !c.begin(&c.recording) {
		return // stopping: the next start catches up
	}
	c.sem <- struct{}{}
	if batch != nil {
		batch.Add(1)
	}
	go func() {
		defer c.recording.Done()
		defer func() { <-c.sem }()
		if batch != nil {
			defer batch.Done()
		}
		if err := c.st.PutKeyLazy(r); err != nil {
			c.log.Error("record key of another broker", "domain", r.Domain, "err", err)
			return
		}
		c.recorded.Add(1)
	}()
}

// handleKey takes a key another broker published on wireguard/{domain}/all and records it.
func (c *Cluster) handleKey(topic string, payload []byte) {
	domain, err := wire.ParseKeyTopic(topic)
	if err != nil || topic != wire.KeyTopic(domain) {
		c.log.Warn("dropped key of another broker", "topic", topic, "err", err)
		return
	}
	key := string(payload)
	if err := c.local.CheckKey(domain, key); err != nil {
		c.log.Warn("dropped key of another broker", "topic", topic, "err", err)
		return
	}
	now := c.opts.Now()
	c.record(broker.KeyRecord{Key: key, Domain: domain, FirstSeen: now, LastSeen: now}, nil)
}

// handleRevocation takes a revocation another broker published on wgkex/revoke/{domain} and applies it to this
// broker's store as of now (broker.ApplyRevocation takes no time after now): every registration of the key this
// broker has recorded before it took the revocation is void, and none after, whatever the difference between the
// brokers' clocks.
func (c *Cluster) handleRevocation(topic string, payload []byte) {
	domain, err := wire.ParseRevokeTopic(topic)
	if err != nil {
		c.log.Warn("dropped revocation", "topic", topic, "err", err)
		return
	}
	r, err := wire.ParseRevocation(payload)
	if err != nil {
		c.log.Warn("dropped revocation", "topic", topic, "err", err)
		return
	}
	if r.By == c.opts.ID {
		return // this broker's own, applied when it was made
	}
	c.local.ApplyRevocation(domain, r.Key, c.opts.Now(), true)
}

// handleChoice takes wgkex/broker/{id}/choice and counts each new peer on the chosen worker, as if this broker
// had chosen it.
func (c *Cluster) handleChoice(topic string, payload []byte) {
	id, _, err := ParseBrokerTopic(topic)
	if err == nil && id == c.opts.ID {
		return
	}
	if err != nil {
		c.log.Warn("dropped choice of another broker", "topic", topic, "err", err)
		return
	}
	choices, err := ParseChoices(payload)
	if err != nil {
		c.log.Warn("dropped choice of another broker", "topic", topic, "payload_err", err)
	}
	for _, ch := range choices {
		c.local.CountChoice(ch.Worker, ch.Domain)
	}
}

// handleStatus takes wgkex/broker/{id}/status: ≥ 1 alive, else gone; an empty payload (the retained status
// deleted on the server) forgets the broker.
func (c *Cluster) handleStatus(topic string, payload []byte) {
	id, kind, err := ParseBrokerTopic(topic)
	if err != nil || kind != "status" {
		c.log.Warn("dropped broker status", "topic", topic, "err", err)
		return
	}
	if id == c.opts.ID {
		return // this broker is alive to itself
	}
	if len(payload) == 0 {
		c.mu.Lock()
		_, known := c.brokers[id]
		delete(c.brokers, id)
		c.countOthers()
		c.mu.Unlock()
		if known {
			c.log.Info("broker forgotten", "broker", id)
		}
		return
	}
	n, err := wire.ParseInt(payload)
	if err != nil {
		c.log.Warn("dropped broker status", "topic", topic, "err", err)
		return
	}
	if len(id) > maxBrokerID {
		c.log.Warn("dropped broker status: id too long", "bytes", len(id))
		return
	}
	alive := n >= 1
	c.mu.Lock()
	was, known := c.brokers[id]
	changed := !known || was.Alive != alive
	full := !known && len(c.brokers) >= maxBrokers && !c.evictGone()
	if changed && !full {
		c.brokers[id] = broker.BrokerState{ID: id, Alive: alive, Since: c.opts.Now()}
		c.countOthers()
	}
	c.mu.Unlock()
	switch {
	case full:
		c.log.Warn("dropped broker status: too many brokers known", "broker", id, "max", maxBrokers)
	case changed:
		c.log.Info("broker status changed", "broker", id, "alive", alive)
	}
}

// countOthers sets others from brokers. c.mu is held.
func (c *Cluster) countOthers() {
	n := int32(0)
	for _, s := range c.brokers {
		if s.Alive {
			n++
		}
	}
	c.others.Store(n)
}

// evictGone forgets the broker that has been gone longest, to make room for another; false when every broker
// known is alive. c.mu is held.
func (c *Cluster) evictGone() bool {
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

// Stop drops the replays held back by the catch-up and waits for catch-up answers, for keys of other brokers
// being recorded and for choices being announced, or returns an error when ctx ends first. Call it before broker.Broker.StopReplays.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
	c.stopOnce.Do(func() { close(c.stop) })
	done := make(chan struct{})
	go func() { c.answers.Wait(); c.recording.Wait(); c.announcing.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("catch-up answers or key records still running: %w", ctx.Err())
	}
}
