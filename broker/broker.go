// Package broker is the domain core of wgkex-broker: it checks key registrations, records them, publishes them to
// the workers, keeps the state the workers report, chooses a gateway for each node and replays keys to returning
// workers. It imports no HTTP, MQTT or database package: it declares the store and publisher it needs.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex-go/broker/selection"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// Errors of a key exchange. The web package maps them to HTTP status codes.
var (
	// ErrBadRequest covers every invalid registration: malformed body, invalid key, unknown domain.
	ErrBadRequest = errors.New("bad request")
	// ErrNoGateway means no online gateway serves the domain.
	ErrNoGateway = errors.New("no gateway online for this domain")
	// ErrNoGatewayData means the chosen gateway has not published its endpoint for the domain.
	ErrNoGatewayData = errors.New("could not get gateway data")
	// ErrStore means a registration could not be made durable.
	ErrStore = errors.New("state store failed")
	// ErrNotFound reports a key that is not stored (store.ErrNotFound is this error).
	ErrNotFound = errors.New("not found")
)

// KeyRecord is one registered key.
type KeyRecord struct {
	Key       string
	Domain    string
	FirstSeen time.Time
	LastSeen  time.Time
	// Gateway is the worker last assigned by API v2, empty after v1.
	Gateway string
}

// WorkerState is what the broker knows of one worker, rebuilt from MQTT and kept in the store.
type WorkerState struct {
	Name   string `json:"-"`
	Online bool   `json:"online"`
	// Peers maps a domain to the worker's connected_peers metric (-1: domain offline).
	Peers map[string]int `json:"peers"`
	// Data maps a domain to the worker's endpoint there.
	Data map[string]wire.WorkerData `json:"data"`
	// Changed is when the worker last reported anything.
	Changed time.Time `json:"changed"`
	// Since is when the worker last went online or offline.
	Since time.Time `json:"since,omitzero"`
}

// Store is the durable state the broker needs. Writes must be on disk when they return.
type Store interface {
	PutKey(KeyRecord) error
	// KeysPage returns up to limit keys of domain last seen at or after since, starting after the cursor of the
	// previous page ("" for the first); the cursor it returns is "" after the last page. Each page is read in one
	// short read, so the caller may publish between pages.
	// The records carry key, domain, first and last seen (not the gateway).
	KeysPage(domain string, since time.Time, after KeyCursor, limit int) (keys []KeyRecord, next KeyCursor, err error)
	PutWorker(WorkerState) error
	Workers() ([]WorkerState, error)
	// Key returns the record of key in domain, or ErrNotFound.
	Key(domain, key string) (KeyRecord, error)
	// RevokeKey removes key from domain if it was last seen at or before at, and keeps a tombstone that voids
	// every registration of it up to at, however late it arrives; it reports whether the key was removed.
	RevokeKey(domain, key string, at time.Time) (bool, error)
	// Revoked returns the keys of domain revoked at or after since, with the time of each revocation.
	Revoked(domain string, since time.Time) (map[string]time.Time, error)
	// RevokedAt returns when key was last revoked in domain, while the tombstone is kept.
	RevokedAt(domain, key string) (time.Time, bool, error)
}

// KeyCursor marks where a page of Store.KeysPage ended; it is opaque to the broker.
type KeyCursor string

// Publisher sends MQTT messages (the embedded server's inline client).
type Publisher interface {
	Publish(topic string, payload []byte, retain bool, qos byte) error
}

// KeyFilter refuses keys the operator has listed (broker/keylist: blocklist and allowlist).
type KeyFilter interface {
	// Refuse reports whether key may not register for domain, and why. The reason is only logged.
	Refuse(domain, key string) (reason string, refused bool)
}

// Gateway is a configured gateway (workers.<name> in wgkex.yaml), as the gateway choice weighs it.
type Gateway struct {
	// Weight is the gateway's share of new peers relative to the other gateways.
	Weight int
	// Location is an optional free-form place (e.g. MUC) a node may ask for.
	Location string
}

// Options configure a Broker.
type Options struct {
	// Domains are the domains nodes may register for (already checked against the prefixes).
	Domains []string
	// Gateways are the configured gateways by worker name. A worker not named here weighs 1 against the
	// configured total and has no location. SetGateways replaces them at run time.
	Gateways map[string]Gateway
	// ReplayWindow is how far back keys are replayed to a returning worker.
	ReplayWindow time.Duration
	// ReconnectGrace is how long workers that were online before a restart, or before the connection to an
	// external MQTT server broke, have to reconnect (outage.go).
	ReconnectGrace time.Duration
	// External is set when the broker reaches the workers through a connection to an MQTT server that can break
	// (broker.mqtt_server); the MQTT side then reports it with MQTTUp and MQTTDown, and the reconnect grace after
	// a start counts from the first MQTTUp. See outage.go.
	External bool
	// OfflineDelay is how long a worker's status 0 waits before it takes effect when External (default 5 s):
	// when the server goes down cleanly it sends every worker's last will just before it closes the broker's
	// connection, and those wills are dropped.
	OfflineDelay time.Duration
	// Clock times the reconnect grace and the offline delay (default time.Now); Now stamps what is recorded.
	Clock func() time.Time
	// ReplayBatch is the number of keys per replay message (default 1000).
	ReplayBatch int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Keys refuses listed keys before they are stored or published; nil accepts every valid key.
	Keys KeyFilter
	// Peers are the other brokers on the MQTT server (broker/cluster); nil: the broker is alone.
	Peers Peers
	// Metrics registers the broker's Prometheus collectors; nil means none.
	Metrics prometheus.Registerer
	// ID is this broker's MQTT client id among several on one MQTT server (the by of its revocations); empty
	// with the embedded server.
	ID string
	// LogNodeAddresses adds the node's address to the INFO line of each registration (broker.log_node_addresses).
	LogNodeAddresses bool
}

// Broker is the key exchange and gateway choice. It is safe for concurrent use.
type Broker struct {
	st     Store
	pub    Publisher
	log    *slog.Logger
	opts   Options
	domain map[string]bool

	mu        sync.Mutex
	gateways  map[string]Gateway
	total     int      // sum of the gateways' weights
	locations []string // sorted, unique, non-empty locations of the gateways
	workers   map[string]*WorkerState
	records   map[string]*record  // status and write order of each worker
	gws       []selection.Gateway // sorted by name, rebuilt when dirty; shares the Peers maps of workers
	dirty     bool
	link      link // the connection to the MQTT server, the reconnect grace and the offline delay (outage.go)

	replay replayer
	meters *meters
}

// New creates a Broker and loads the worker state from st.
func New(st Store, pub Publisher, log *slog.Logger, opts Options) (*Broker, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.ReplayBatch <= 0 {
		opts.ReplayBatch = 1000
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.OfflineDelay <= 0 {
		opts.OfflineDelay = defaultOfflineDelay
	}
	if opts.Peers == nil {
		opts.Peers = alone{}
	}
	b := &Broker{
		st: st, pub: pub, log: log, opts: opts,
		domain:  map[string]bool{},
		workers: map[string]*WorkerState{},
		records: map[string]*record{},
		dirty:   true,
		meters:  newMeters(),
	}
	b.link.init(opts)
	if err := b.registerMetrics(opts.Metrics); err != nil {
		return nil, err
	}
	for _, d := range opts.Domains {
		b.domain[d] = true
		for _, src := range []string{RevokeAdmin, RevokeBlocklist, RevokePeer} {
			b.meters.revocations.WithLabelValues(d, src) // a series from the start, 0 until the first
		}
	}
	b.setGateways(opts.Gateways)
	opts.Gateways = nil // b.gateways holds them
	stored, err := st.Workers()
	if err != nil {
		return nil, fmt.Errorf("load worker state: %w", err)
	}
	for i := range stored {
		w := stored[i]
		if w.Peers == nil {
			w.Peers = map[string]int{}
		}
		if w.Data == nil {
			w.Data = map[string]wire.WorkerData{}
		}
		b.workers[w.Name] = &w
		if w.Online {
			b.link.awaiting[w.Name] = sinceStart
		}
	}
	if !opts.External {
		for name := range b.link.awaiting {
			b.link.deadline[name] = opts.Clock().Add(opts.ReconnectGrace)
		}
	}
	b.replay.init(b)
	log.Info("worker state loaded", "workers", len(stored), "online", len(b.link.awaiting))
	return b, nil
}

// SetGateways replaces the configured gateways, their weights and locations; the next choice uses them.
func (b *Broker) SetGateways(gateways map[string]Gateway) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.setGateways(gateways)
}

// setGateways copies gateways and derives the weight total and the locations. Callers hold mu (or own b).
func (b *Broker) setGateways(gateways map[string]Gateway) {
	b.gateways = make(map[string]Gateway, len(gateways))
	b.total = 0
	set := map[string]bool{}
	for name, g := range gateways {
		b.gateways[name] = g
		b.total += g.Weight
		if g.Location != "" {
			set[g.Location] = true
		}
	}
	b.locations = make([]string, 0, len(set))
	for l := range set {
		b.locations = append(b.locations, l)
	}
	sort.Strings(b.locations)
	b.dirty = true
}

// Run marks workers offline whose status 0 has waited out the offline delay and workers that were online before
// the restart or the MQTT outage and have not reconnected within the grace period (outage.go), until ctx ends.
func (b *Broker) Run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		var fire <-chan time.Time
		if next, ok := b.tick(b.opts.Clock()); ok {
			t.Reset(max(next.Sub(b.opts.Clock()), 0))
			fire = t.C
		}
		select {
		case <-ctx.Done():
			return
		case <-fire:
		case <-b.link.wake:
		}
	}
}

// lockStatus takes worker name's status lock, which orders a grace expiry or a delayed status 0 against the
// worker's own status 1 (see expire), and returns its unlock.
func (b *Broker) lockStatus(name string) (unlock func()) {
	b.mu.Lock()
	r := b.recordOf(name)
	b.mu.Unlock()
	r.status.Lock()
	return r.status.Unlock
}

// expire marks a worker that was online before the restart or the MQTT outage offline unless it has reported
// status 1 since (or the connection is down again), and publishes what its last will would have: retained status
// 0. It holds the worker's status lock from the check to the end of the publish, so that no 1 the broker takes in
// between is overwritten.
func (b *Broker) expire(name string) {
	defer b.lockStatus(name)()
	b.mu.Lock()
	c, waiting := b.link.awaiting[name]
	if b.link.down {
		waiting = false // frozen; the grace starts again with the next MQTTUp
	} else {
		delete(b.link.awaiting, name)
	}
	b.mu.Unlock()
	if !waiting {
		return
	}
	b.log.Warn("worker did not reconnect within the grace, marking offline", "worker", name, "after", c.String(), "grace", b.opts.ReconnectGrace)
	if err := b.pub.Publish(wire.StatusTopic(name), []byte("0"), true, 1); err != nil {
		b.log.Error("publish offline status", "worker", name, "err", err)
	}
	// The embedded server hands the 0 to HandleStatus as well; this covers a publisher that does not.
	b.setOnline(name, false)
}

// Request is a key registration as a node posts it.
type Request struct {
	PublicKey string
	Domain    string
	Location  string
	// Node is the address the registration came from (the web package fills it in); it is logged only with
	// Options.LogNodeAddresses.
	Node string
}

// validate checks a registration in the reference's order: key, then domain, then the key lists.
func (b *Broker) validate(r Request) error {
	if err := wire.ValidateKey(r.PublicKey); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	if !b.domain[r.Domain] {
		return fmt.Errorf("%w: unknown domain %q", ErrBadRequest, r.Domain)
	}
	if b.opts.Keys != nil {
		if reason, refused := b.opts.Keys.Refuse(r.Domain, r.PublicKey); refused {
			return fmt.Errorf("%w: key %s %s", ErrBadRequest, r.PublicKey, reason)
		}
	}
	return nil
}

// ExchangeV1 records the key and publishes it to the domain's workers.
func (b *Broker) ExchangeV1(r Request) (err error) {
	defer func() { b.observeExchange(APIv1, r, "", err) }()
	if err := b.validate(r); err != nil {
		return err
	}
	return b.register(r, "", APIv1)
}

// ExchangeV2 records and publishes the key like ExchangeV1, then chooses the gateway for the node and returns its
// endpoint. Like the reference, the key is published even when no gateway can be chosen.
func (b *Broker) ExchangeV2(r Request) (_ wire.WorkerData, err error) {
	var name string
	defer func() { b.observeExchange(APIv2, r, name, err) }()
	if err := b.validate(r); err != nil {
		return wire.WorkerData{}, err
	}
	b.opts.Peers.Sync(context.Background())
	name, data, chooseErr := b.choose(r.Domain, r.Location)
	if name != "" {
		// The announcement goes out while the key is stored and published; the answer waits for both.
		announced := b.opts.Peers.Announce(name, r.Domain)
		defer announced()
	}
	if err := b.register(r, name, APIv2); err != nil {
		return wire.WorkerData{}, err
	}
	if chooseErr != nil {
		return wire.WorkerData{}, chooseErr
	}
	return data, nil
}

// register makes the key durable, logs it, then publishes it.
func (b *Broker) register(r Request, gateway, api string) error {
	now := b.opts.Now()
	if err := b.st.PutKey(KeyRecord{Key: r.PublicKey, Domain: r.Domain, FirstSeen: now, LastSeen: now, Gateway: gateway}); err != nil {
		return fmt.Errorf("%w: record key: %w", ErrStore, err)
	}
	b.logRegistered(r, gateway, api)
	// The key is durable: if this publish fails, the replay delivers it.
	if err := b.pub.Publish(wire.KeyTopic(r.Domain), []byte(r.PublicKey), false, b.opts.Peers.KeyQoS()); err != nil {
		b.publishFailed("publish key", "domain", r.Domain, "err", err)
	}
	return nil
}

// logRegistered writes the INFO line of a registration. It goes to the handler directly, as slog's documentation
// shows for wrappers: Logger.Info would also record the caller (runtime.Callers), which no handler here prints,
// and box every value; a line for every registration made that 1.7 % of the broker's CPU under load.
func (b *Broker) logRegistered(r Request, gateway, api string) {
	ctx := context.Background()
	h := b.log.Handler()
	if !h.Enabled(ctx, slog.LevelInfo) {
		return
	}
	rec := slog.NewRecord(time.Now(), slog.LevelInfo, "key registered", 0)
	rec.AddAttrs(slog.String("key", r.PublicKey), slog.String("domain", r.Domain), slog.String("gateway", gateway),
		slog.String("api", api))
	if b.opts.LogNodeAddresses {
		rec.AddAttrs(slog.String("node", r.Node))
	}
	_ = h.Handle(ctx, rec)
}

// publishFailed logs a publish that failed: a warning, or a debug line while the connection to the MQTT server is
// known to be down (MQTTDown said so once).
func (b *Broker) publishFailed(msg string, args ...any) {
	b.mu.Lock()
	down := b.link.down
	b.mu.Unlock()
	if down {
		b.log.Debug(msg, args...)
		return
	}
	b.log.Warn(msg, args...)
}

// choose picks the gateway and counts the new peer on it at once (the reference's interpolation), under the lock.
func (b *Broker) choose(domain, location string) (string, wire.WorkerData, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dirty {
		b.rebuild()
	}
	c, ok := selection.Choose(b.gws, b.total, domain, location)
	if !ok {
		return "", wire.WorkerData{}, ErrNoGateway
	}
	w := b.workers[c.Name]
	w.Peers[domain] = max(w.Peers[domain], 0) + 1
	data, ok := w.Data[domain]
	if !ok {
		return c.Name, wire.WorkerData{}, fmt.Errorf("%w: worker %s, domain %s", ErrNoGatewayData, c.Name, domain)
	}
	return c.Name, data, nil
}

// rebuild refreshes the selection input from the worker state. Callers hold mu.
func (b *Broker) rebuild() {
	b.gws = b.gws[:0]
	for name, w := range b.workers {
		g, configured := b.gateways[name]
		var noEndpoint map[string]bool
		for d := range w.Peers {
			if _, ok := w.Data[d]; !ok {
				if noEndpoint == nil {
					noEndpoint = map[string]bool{}
				}
				noEndpoint[d] = true
			}
		}
		b.gws = append(b.gws, selection.Gateway{
			Name: name, Weight: g.Weight, Configured: configured, Location: g.Location,
			Online: w.Online, Peers: w.Peers, NoEndpoint: noEndpoint,
		})
	}
	sort.Slice(b.gws, func(i, j int) bool { return b.gws[i].Name < b.gws[j].Name })
	b.dirty = false
}

// Locations returns the sorted, unique, non-empty locations of the configured gateways.
func (b *Broker) Locations() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.locations...)
}

// Workers returns a copy of every worker's state, in name order.
func (b *Broker) Workers() []WorkerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]WorkerState, 0, len(b.workers))
	for _, w := range b.workers {
		out = append(out, copyState(w))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func copyState(w *WorkerState) WorkerState {
	c := *w
	c.Peers = make(map[string]int, len(w.Peers))
	for k, v := range w.Peers {
		c.Peers[k] = v
	}
	c.Data = make(map[string]wire.WorkerData, len(w.Data))
	for k, v := range w.Data {
		c.Data[k] = v
	}
	return c
}
