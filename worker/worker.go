// Package worker is the gateway agent: it takes keys from MQTT (live and replayed), applies them through a
// Dataplane in batches, reports endpoint data, liveness and connected-peer counts, and removes peers that stopped
// handshaking. It links no MQTT server, HTTP framework or database.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// Defaults of the reference (SPEC §4.5, §4.6, §4.9).
const (
	// ConnectedWindow is how recent a handshake must be for a peer to count as connected.
	ConnectedWindow = 3 * time.Minute
	// maxAttempts bounds how often one key is tried before it is dropped (and left to the next replay).
	maxAttempts = 5
)

// Options configure an Agent.
type Options struct {
	// Name is the worker's MQTT client id and topic name.
	Name string
	// Domains maps each configured domain to its stripped name (wg-{name}, vx-{name}).
	Domains map[string]string
	// ExternalName is the address nodes use to reach this gateway.
	ExternalName string
	// StaleTimeout: a peer whose last handshake is this old or older is removed.
	StaleTimeout time.Duration
	// Grace: a peer that never handshaked is kept this long after it was provisioned (or the worker started).
	Grace time.Duration
	// Whitelist holds keys the cleanup never removes.
	Whitelist []string
	// RetryDelay is the wait before the first retry of a failed key; it doubles each time (default 1 s).
	RetryDelay time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Agent applies keys to a gateway.
type Agent struct {
	dp      dataplane.Dataplane
	log     *slog.Logger
	opts    Options
	started time.Time
	white   map[string]bool
	q       *queue

	// locks serialise provisioning and cleanup per domain, so that a peer re-registered during a sweep survives.
	locks map[string]*sync.Mutex
	// provisioned records when each fresh key was last applied, per domain (for the handshake grace period).
	provMu      sync.Mutex
	provisioned map[string]map[string]time.Time

	statsMu sync.Mutex
	stats   Stats
	dropped map[string]bool // domains that gave up on a key since the last replay request
}

// Stats counts what the agent did, for logs, health and tests.
type Stats struct {
	Applied, Failed, Dropped, Removed int
}

// New creates an Agent. Domains must have been validated (config.Validate).
func New(dp dataplane.Dataplane, log *slog.Logger, opts Options) *Agent {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = time.Second
	}
	a := &Agent{dp: dp, log: log, opts: opts, started: opts.Now(), white: map[string]bool{}, q: newQueue(),
		locks: map[string]*sync.Mutex{}, provisioned: map[string]map[string]time.Time{}, dropped: map[string]bool{}}
	for _, k := range opts.Whitelist {
		a.white[k] = true
	}
	for d := range opts.Domains {
		a.locks[d] = &sync.Mutex{}
		a.provisioned[d] = map[string]time.Time{}
	}
	return a
}

// Domains returns the configured domains, sorted.
func (a *Agent) Domains() []string {
	out := make([]string, 0, len(a.opts.Domains))
	for d := range a.opts.Domains {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

func (a *Agent) link(domain string) dataplane.Link { return dataplane.LinkFor(a.opts.Domains[domain]) }

// Stats returns the counters.
func (a *Agent) Stats() Stats {
	a.statsMu.Lock()
	defer a.statsMu.Unlock()
	return a.stats
}

// takeDropped returns (and forgets) the domains where a key was given up since the last call: the worker asks
// the broker to replay them, so a key that failed while, say, an interface was broken is applied once it works.
func (a *Agent) takeDropped() []string {
	a.statsMu.Lock()
	defer a.statsMu.Unlock()
	var out []string
	for d := range a.dropped {
		out = append(out, d)
	}
	sort.Strings(out)
	a.dropped = map[string]bool{}
	return out
}

// ErrUnknownDomain reports a key for a domain this worker does not serve.
var ErrUnknownDomain = errors.New("domain not served by this worker")

// Enqueue checks a key registered for domain and queues it. It never blocks.
func (a *Agent) Enqueue(domain, key string) error {
	if _, ok := a.opts.Domains[domain]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknownDomain, domain)
	}
	if err := wire.ValidateKey(key); err != nil {
		return err
	}
	a.q.add(domain, item{key: key, fresh: true})
	return nil
}

// Pending returns the number of keys waiting to be applied.
func (a *Agent) Pending() int { return a.q.len() }

// RunQueue applies queued keys until ctx ends. It waits on the queue, not on a timer.
func (a *Agent) RunQueue(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.q.wake:
		}
		a.ApplyPending()
	}
}

// ApplyPending applies everything queued now, one batch per domain.
func (a *Agent) ApplyPending() {
	domains, batches := a.q.take()
	for _, d := range domains {
		a.apply(d, batches[d])
	}
}

// apply adds one domain's batch in a single Dataplane call and schedules retries for the keys that failed.
func (a *Agent) apply(domain string, items []item) {
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = it.key
	}
	lock := a.locks[domain]
	lock.Lock()
	err := a.dp.AddPeers(a.link(domain), keys)
	failed := map[string]bool{}
	for _, k := range dataplane.FailedKeys(err) {
		failed[k] = true
	}
	now := a.opts.Now()
	a.provMu.Lock()
	for _, it := range items {
		if it.fresh && !failed[it.key] {
			a.provisioned[domain][it.key] = now
		}
	}
	a.provMu.Unlock()
	lock.Unlock()

	a.statsMu.Lock()
	a.stats.Applied += len(items) - len(failed)
	a.stats.Failed += len(failed)
	a.statsMu.Unlock()
	if len(items) > len(failed) {
		a.log.Debug("peers applied", "domain", domain, "count", len(items)-len(failed))
	}
	if err != nil && len(failed) == 0 {
		a.log.Error("apply peers", "domain", domain, "err", err)
		return
	}
	for _, it := range items {
		if !failed[it.key] {
			continue
		}
		it.attempt++
		if it.attempt >= maxAttempts {
			a.statsMu.Lock()
			a.stats.Dropped++
			a.dropped[domain] = true
			a.statsMu.Unlock()
			a.log.Error("giving up on key until the next replay", "domain", domain, "key", it.key, "attempts", it.attempt, "err", keyErr(err, it.key))
			continue
		}
		a.log.Warn("apply key failed, will retry", "domain", domain, "key", it.key, "attempt", it.attempt, "err", keyErr(err, it.key))
		delay := a.opts.RetryDelay << (it.attempt - 1)
		time.AfterFunc(delay, func() { a.q.add(domain, it) })
	}
}

// keyErr picks the errors about key out of a joined AddPeers error.
func keyErr(err error, key string) error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		var pe *dataplane.PeerError
		if errors.As(e, &pe) && pe.Key == key {
			out = append(out, pe)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
		}
	}
	walk(err)
	return errors.Join(out...)
}

// Reconcile queues every peer already on the domain's device again (not fresh), so that routes and FDB entries
// a crash left missing are restored. It returns the number of peers found.
func (a *Agent) Reconcile(domain string) (int, error) {
	dev, err := a.dp.Device(a.link(domain))
	if err != nil {
		return 0, err
	}
	for _, p := range dev.Peers {
		a.q.add(domain, item{key: p.PublicKey})
	}
	return len(dev.Peers), nil
}

// ConnectedPeers counts the domain's peers with a handshake within ConnectedWindow.
func (a *Agent) ConnectedPeers(domain string) (int, error) {
	dev, err := a.dp.Device(a.link(domain))
	if err != nil {
		return 0, err
	}
	return countConnected(dev.Peers, a.opts.Now()), nil
}

func countConnected(peers []dataplane.Peer, now time.Time) int {
	n := 0
	for _, p := range peers {
		if !p.LastHandshake.IsZero() && now.Sub(p.LastHandshake) < ConnectedWindow {
			n++
		}
	}
	return n
}

// Endpoint reads the domain's device and returns the data to publish for it.
func (a *Agent) Endpoint(domain string) (wire.WorkerData, error) {
	dev, err := a.dp.Device(a.link(domain))
	if err != nil {
		return wire.WorkerData{}, err
	}
	return wire.WorkerData{ExternalAddress: a.opts.ExternalName, Port: dev.ListenPort, PublicKey: dev.PublicKey, LinkAddress: dev.LinkAddress}, nil
}
