// Package worker is the gateway agent: it takes keys from MQTT (live and replayed) into a desired state per
// domain, and one loop makes the device match it: Diff compares the desired state with what the device reports
// and yields a plan (peers, routes and FDB entries to add, stale peers to remove), the loop applies the plan
// through a Dataplane in batches and leaves whatever failed to the next pass. It reports endpoint data, liveness
// and connected-peer counts over MQTT, and its own metrics to Prometheus. It links no MQTT server, HTTP framework
// or database.
package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// ConnectedWindow is how recent a handshake must be for a peer to count as connected (SPEC §4.6).
const ConnectedWindow = 3 * time.Minute

// maxRetryDelay caps the doubling wait before a failing key is tried again.
const maxRetryDelay = 5 * time.Minute

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
	// Grace: a peer provisioned less than this long ago (or found on the device less than this long ago) is
	// never removed.
	Grace time.Duration
	// Whitelist holds keys the cleanup never removes.
	Whitelist []string
	// RetryDelay is the wait before the first retry of a failed key; it doubles with every failure up to five
	// minutes (default 1 s).
	RetryDelay time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Metrics, when set, receives the worker's Prometheus collectors (wgkex_worker_*).
	Metrics prometheus.Registerer
}

// Agent applies keys to a gateway.
type Agent struct {
	dp      dataplane.Dataplane
	log     *slog.Logger
	opts    Options
	started time.Time
	white   map[string]bool
	m       *metrics

	in *inbox

	replays replayWait // replay requests not answered yet
	ready   readiness  // which domains the worker can serve (CheckReady)

	// Owned by the loop (pass); tests call pass directly instead of running the loop.
	domains map[string]*domainState

	statsMu sync.Mutex
	stats   Stats
}

// domainState is the loop's view of one domain.
type domainState struct {
	name string
	link dataplane.Link
	want map[string]Want
	have map[string]Have
	// received holds the MQTT receipt time of keys not yet in place, for the apply latency.
	received map[string]time.Time
	failures map[string]int
	// revoked holds keys the broker revoked whose removal from the device is still to be done (or failed and
	// waits for a retry); a device read does not adopt them.
	revoked map[string]bool
	// read: have was read from the device at least once (until then, peers on the device are unknown).
	read bool
	// blocked: the last probe found the domain not ready; its keys wait in want, untried, until it is.
	blocked bool
	// needRead and needSweep are the pending sync request; a failed read is tried again at readRetry.
	needRead, needSweep bool
	readFailures        int
	readRetry           time.Time
	// nextRetry is when the earliest failed key is due again.
	nextRetry time.Time
}

// Stats counts what the agent did, for logs, health and tests.
type Stats struct {
	// Applied counts keys whose peer, route and FDB entry were put in place; Failed, failed attempts (each
	// retried by a later pass); Removed, peers removed by the cleanup; ConnectErrors, failed MQTT connection
	// attempts.
	Applied, Failed, Removed, ConnectErrors int
}

// New creates an Agent. Domains must have been validated (config.Validate). It fails only when opts.Metrics
// refuses the collectors.
func New(dp dataplane.Dataplane, log *slog.Logger, opts Options) (*Agent, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = time.Second
	}
	a := &Agent{dp: dp, log: log, opts: opts, started: opts.Now(), white: map[string]bool{},
		domains: map[string]*domainState{}, in: newInbox()}
	for _, k := range opts.Whitelist {
		a.white[k] = true
	}
	for d, stripped := range opts.Domains {
		a.domains[d] = &domainState{name: d, link: dataplane.LinkFor(stripped), want: map[string]Want{},
			have: map[string]Have{}, received: map[string]time.Time{}, failures: map[string]int{},
			revoked: map[string]bool{}}
	}
	m, err := newMetrics(opts.Metrics, a.in.len)
	if err != nil {
		return nil, err
	}
	a.m = m
	for d := range opts.Domains {
		m.ready.WithLabelValues(d).Set(0)
		m.revoked.WithLabelValues(d) // 0 until the first revocation
	}
	return a, nil
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

func (a *Agent) count(f func(*Stats)) {
	a.statsMu.Lock()
	f(&a.stats)
	a.statsMu.Unlock()
}

// ErrUnknownDomain reports a key for a domain this worker does not serve.
var ErrUnknownDomain = errors.New("domain not served by this worker")

// Enqueue checks a key registered live for domain and hands it to the loop. It never blocks.
func (a *Agent) Enqueue(domain, key string) error { return a.enqueue(domain, key, false) }

func (a *Agent) enqueue(domain, key string, replay bool) error {
	if _, ok := a.opts.Domains[domain]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknownDomain, domain)
	}
	if err := wire.ValidateKey(key); err != nil {
		return err
	}
	a.m.received(replay)
	a.in.add(message{domain: domain, key: key, replay: replay, at: a.opts.Now()})
	return nil
}

// Revoke hands the loop a key the broker revoked in domain: it leaves the desired state, and its peer, route and
// FDB entry are removed from the device, also where the worker found the peer there itself. A later registration
// of the key (live or replayed) adds it again. It never blocks.
func (a *Agent) Revoke(domain, key string) error {
	if _, ok := a.opts.Domains[domain]; !ok {
		return fmt.Errorf("%w: %q", ErrUnknownDomain, domain)
	}
	if err := wire.ValidateKey(key); err != nil {
		return err
	}
	a.in.add(message{domain: domain, key: key, revoke: true, at: a.opts.Now()})
	return nil
}

// Pending returns the number of keys received and not yet taken by the loop.
func (a *Agent) Pending() int { return a.in.len() }

// ConnectedPeers counts the domain's peers with a handshake within ConnectedWindow, and sets the peer gauges.
func (a *Agent) ConnectedPeers(domain string) (int, error) {
	dev, err := a.dp.Device(a.link(domain))
	if err != nil {
		return 0, err
	}
	n := countConnected(dev.Peers, a.opts.Now())
	a.m.peers.WithLabelValues(domain).Set(float64(len(dev.Peers)))
	a.m.connected.WithLabelValues(domain).Set(float64(n))
	return n, nil
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
