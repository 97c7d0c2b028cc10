package worker

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// MQTT is how the worker reaches the MQTT server (the mqtt.* configuration keys).
type MQTT struct {
	// BrokerURL is a host ("mqtt.example.org") or a URL ("mqtt://broker", "tls://broker:8883").
	BrokerURL  string
	BrokerPort int
	Username   string
	Password   string
	// Keepalive is the MQTT keepalive in seconds.
	Keepalive int
	TLS       bool
	// CAFile is a PEM bundle to verify the server with; empty means the system roots.
	CAFile string
	// ServerName overrides the name verified in the server certificate.
	ServerName string
	// CertFile and KeyFile are the worker's TLS client certificate (its CN or a DNS SAN is the worker name).
	CertFile, KeyFile string
}

// RunOptions are the MQTT and timing side of a running worker.
type RunOptions struct {
	MQTT            MQTT
	MetricsInterval time.Duration
	CleanupInterval time.Duration
	// HealthPort, when not 0, serves the gateway health check on [LinkAddress%wg-X]:HealthPort.
	HealthPort int
	// ReadyInterval is how often every domain is probed (default 5 s).
	ReadyInterval time.Duration
}

// clientOptions maps the worker's MQTT settings to its MQTT client: the will (status 0) also fires at a clean
// stop, a password of the worker's own logs in as its name, any packet after a PINGREQ proves the link, and the
// server drops messages over 1 MiB instead of sending them.
func (a *Agent) clientOptions(m MQTT) mqttclient.Options {
	user := m.Username
	if user == "" && m.Password != "" {
		user = a.opts.Name // a password of the worker's own: its username is its name
	}
	return mqttclient.Options{
		Server: mqttclient.Server{
			Addr: m.BrokerURL, Port: m.BrokerPort, TLS: m.TLS,
			Files: tlsfiles.Client{Keys: "mqtt.", CAFile: m.CAFile, ServerName: m.ServerName, CertFile: m.CertFile,
				KeyFile: m.KeyFile},
			Username: user, Password: m.Password,
			ClientID:  a.opts.Name,
			Keepalive: m.Keepalive,
			MaxPacket: mqttclient.MaxPacket,
		},
		Backoff: mqttclient.Backoff{Min: time.Second, Max: 60 * time.Second, Jitter: 2 * time.Second},
		// A PINGRESP queued behind a burst of keys does not end a connection that delivers them.
		Pinger:       newPinger(),
		Will:         &mqttclient.Message{Topic: wire.StatusTopic(a.opts.Name), Payload: []byte("0"), QoS: 1, Retain: true},
		WillOnClose:  true,
		CloseTimeout: 3 * time.Second,
		Echo:         true,
		OnConnectError: func(error) {
			a.count(func(s *Stats) { s.ConnectErrors++ })
			a.m.connectErrors.Inc()
		},
	}
}

// HandleMessage takes one MQTT message: a key on wireguard/{domain}/+, a revocation on wgkex/revoke/{domain} or
// a replay batch on wgkex/replay/{worker}/keys (whose last batch carries the revocations of the window).
// Anything malformed is logged and dropped.
func (a *Agent) HandleMessage(topic string, payload []byte) {
	if domain, err := wire.ParseRevokeTopic(topic); err == nil {
		r, err := wire.ParseRevocation(payload)
		if err == nil {
			err = a.Revoke(domain, r.Key)
		}
		if err != nil {
			a.log.Warn("dropped revocation", "topic", topic, "err", err)
			return
		}
		a.log.Info("key revoked", "domain", domain, "key", r.Key)
		return
	}
	if topic == wire.ReplayKeysTopic(a.opts.Name) {
		b, err := wire.ParseReplayBatch(payload)
		if err != nil {
			a.log.Warn("dropped replay batch", "err", err)
			return
		}
		bad := 0
		for _, k := range b.Keys {
			if err := a.enqueue(b.Domain, k, true); err != nil {
				bad++
			}
		}
		for _, k := range b.Revoked {
			if err := a.Revoke(b.Domain, k); err != nil {
				bad++
			}
		}
		if bad > 0 {
			a.log.Warn("dropped invalid keys from replay", "domain", b.Domain, "count", bad)
		}
		a.log.Debug("replay batch", "domain", b.Domain, "seq", b.Seq, "keys", len(b.Keys), "last", b.Last)
		a.replays.batch(b.Domain, b.Last)
		if b.Last {
			a.log.Info("replay received", "domain", b.Domain, "batches", b.Seq+1)
		}
		return
	}
	domain, err := wire.ParseKeyTopic(topic)
	if err != nil {
		a.log.Warn("dropped message", "topic", topic, "err", err)
		return
	}
	if err := a.Enqueue(domain, string(payload)); err != nil {
		a.log.Warn("dropped key", "topic", topic, "err", err)
		return
	}
	a.log.Debug("key queued", "domain", domain, "key", string(payload))
}

// session is the MQTT side of a running worker. Connection state changes are sequenced by a generation: every
// connection and every loss of the link starts a new one, and the setup run for a connection may change the state
// (ready domains, up) only while its generation is still the current one. So a setup that outlived its connection
// cannot mark a dead link up or clear the ready domains of a newer one.
type session struct {
	a    *Agent
	opts RunOptions
	c    *mqttclient.Client

	mu     sync.Mutex
	gen    uint64
	conn   context.Context // the setup context of the current generation's connection; nil after a loss
	up     bool
	ready  map[string]bool // domains whose endpoint data was published in the current generation
	status string          // the status last published in the current generation ("" none yet)

	// pub orders what tells the broker which domains this gateway serves (endpoint data, connected-peer counts,
	// withdrawals, status): the setup, the readiness round and the metrics round take it, so that a count can
	// never follow a withdrawal of its domain. A round that finds it held skips its turn: the setup holding it
	// publishes the current state, and the round's goroutine must not wait on a publish the shutdown would end
	// only after waiting for that goroutine.
	pub sync.Mutex

	draining atomic.Bool // the worker is stopping: the health check answers 503
}

func newSession(a *Agent, opts RunOptions) *session {
	return &session{a: a, opts: opts, ready: map[string]bool{}}
}

// begin returns the generation of the connection whose setup context is ctx (mqttclient runs the setup again
// with the same context when it failed), starting a new generation for a new connection. It reports false once
// ctx has ended: the client ends it before it reports the loss, so a setup that begins late cannot take a
// generation after the loss.
func (s *session) begin(ctx context.Context) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil {
		return 0, false
	}
	if s.conn != ctx {
		s.conn = ctx
		s.a.m.connects.Inc()
		s.reset()
	}
	return s.gen, true
}

// next starts a new generation without a connection (a lost link, the farewell): nothing is up or ready.
func (s *session) next() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn = nil
	s.reset()
}

// reset starts a new generation. Callers hold s.mu.
func (s *session) reset() {
	s.gen++
	s.a.replays.reset()
	s.up, s.ready, s.status = false, map[string]bool{}, ""
	s.a.m.mqttUp.Set(0)
}

// markReady records that domain's endpoint data was published, if gen is still current.
func (s *session) markReady(gen uint64, domain string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != s.gen {
		return false
	}
	s.ready[domain] = true
	return true
}

// unmarkReady records that domain was withdrawn, if gen is still current.
func (s *session) unmarkReady(gen uint64, domain string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen == s.gen {
		delete(s.ready, domain)
	}
}

// markUp records that the status was published, if gen is still current.
func (s *session) markUp(gen uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != s.gen {
		return false
	}
	s.up = true
	s.a.m.mqttUp.Set(1)
	return true
}

// state returns whether the session is up and the ready domains of the current generation.
func (s *session) state() (uint64, bool, map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := make(map[string]bool, len(s.ready))
	for d := range s.ready {
		r[d] = true
	}
	return s.gen, s.up, r
}

// Run connects to MQTT and serves until ctx ends: the reconcile loop applies keys, the session publishes endpoint
// data, status and metrics, sweeps are requested every cleanup interval and, if configured, health checks are
// answered. On the way out it publishes -1 for every domain and status 0 whatever the state of the connection,
// then disconnects with reason 0x04 so that the server publishes the will (status 0) too: a stopped worker always
// leaves the broker believing it is offline.
func (a *Agent) Run(ctx context.Context, opts RunOptions) error {
	s := newSession(a, opts)
	copts := a.clientOptions(opts.MQTT)
	copts.Setup = s.setup
	copts.OnDown = s.next
	copts.Farewell = s.farewell
	c, err := mqttclient.New(a.log, copts)
	if err != nil {
		return err
	}
	s.c = c
	for _, f := range append([]string{wire.ReplayKeysTopic(a.opts.Name)}, keyFilters(a.Domains())...) {
		if err := c.Handle(f, a.HandleMessage); err != nil {
			return err
		}
	}

	// The first setup publishes what the first probe found.
	a.CheckReady()

	if err := c.Serve(); err != nil {
		return err
	}
	a.log.Info("worker starting", "name", a.opts.Name, "server", c.Addrs()[0], "domains", a.Domains())

	// The first pass reads every device: peers already there join the desired state, missing routes and FDB
	// entries are restored.
	a.SyncAll(false)
	var wg sync.WaitGroup
	// loopCtx ends the loop and the rounds, a publish under way included: the farewell says what they would have.
	loopCtx, cancelLoop := context.WithCancel(context.Background())
	wg.Add(4)
	go func() { defer wg.Done(); a.RunLoop(loopCtx) }()
	done := loopCtx.Done()
	go func() {
		defer wg.Done()
		every(cmp.Or(opts.ReadyInterval, readyInterval), done, func() { s.readyRound(loopCtx) })
	}()
	go func() { defer wg.Done(); every(opts.MetricsInterval, done, func() { s.metricsRound(loopCtx) }) }()
	go func() { defer wg.Done(); every(opts.CleanupInterval, done, func() { a.SyncAll(true) }) }()
	var hs *healthServer
	if opts.HealthPort != 0 {
		hs = newHealthServer(a, opts.HealthPort, s.draining.Load)
	}

	<-ctx.Done()
	a.log.Info("worker stopping")
	s.draining.Store(true)
	cancelLoop()
	wg.Wait()
	// The farewell marks every domain offline (-1) and the worker offline (0), whether or not the session is up
	// (a status 1 may be on its way unacknowledged), then disconnects with reason 0x04 so that the will fires too.
	if err := c.Close(); err != nil {
		a.log.Warn("mqtt disconnect", "err", err)
	}
	if hs != nil {
		hs.close()
	}
	a.log.Info("worker stopped")
	return nil
}

// every calls fn each interval until done is closed.
func every(interval time.Duration, done <-chan struct{}, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			fn()
		}
	}
}

// keyFilters returns the key filter and the revocation topic of every domain.
func keyFilters(domains []string) []string {
	out := make([]string, 0, 2*len(domains))
	for _, d := range domains {
		out = append(out, wire.KeyFilter(d), wire.RevokeTopic(d))
	}
	return out
}

// setup runs after every (re)connect, once the client has subscribed to the keys of every domain and to the
// replays: publish endpoint data per ready domain and -1 for the others, the status (1 while at least one domain
// is ready, else 0), metrics, and ask the broker to replay the keys of the ready domains. A step that fails (a
// PUBLISH lost, or its acknowledgement later than paho waits) fails the setup, which the client tries again,
// subscriptions included, after a doubling delay, each step being idempotent, for as long as the connection
// lasts: a connection is never left without subscriptions or status. It changes the session state only while
// its generation is current; ctx ends with the connection.
func (s *session) setup(ctx context.Context) error {
	a := s.a
	gen, ok := s.begin(ctx)
	if !ok {
		return ctx.Err()
	}
	s.pub.Lock()
	defer s.pub.Unlock()
	var ready []string
	for _, d := range a.Domains() {
		if !a.Ready(d) {
			s.withdraw(ctx, gen, d)
		} else if s.publishData(ctx, gen, d) {
			ready = append(ready, d)
		}
	}
	if err := s.publishStatus(ctx, gen); err != nil {
		return fmt.Errorf("publish status: %w", err)
	}
	if !s.markUp(gen) {
		a.log.Debug("connection setup outlived its connection", "generation", gen)
		return nil
	}
	a.log.Info("mqtt session up", "ready_domains", ready)
	s.publishMetrics(ctx)
	s.requestReplay(ctx, ready)
	return nil
}

// publishStatus publishes 1 while at least one domain's endpoint is published, else 0 (QoS 1, retained), unless
// that is the status already published on this connection.
func (s *session) publishStatus(ctx context.Context, gen uint64) error {
	_, _, ready := s.state()
	st := "0"
	if len(ready) > 0 {
		st = "1"
	}
	s.mu.Lock()
	same := s.gen == gen && s.status == st
	s.mu.Unlock()
	if same {
		return nil
	}
	if err := s.publish(ctx, wire.StatusTopic(s.a.opts.Name), []byte(st), 1, true); err != nil {
		return err
	}
	s.mu.Lock()
	if s.gen == gen {
		s.status = st
	}
	s.mu.Unlock()
	return nil
}

// withdraw tells the broker that this gateway does not serve domain: its connected-peer count -1 (QoS 1,
// retained), which the reference broker honours too. The endpoint data stays as it was: an empty data message
// would clear it, but a reference broker cannot parse one. A domain whose withdrawal could not be published stays
// marked, so that the next round tries again.
func (s *session) withdraw(ctx context.Context, gen uint64, domain string) {
	if err := s.publish(ctx, wire.MetricTopic(domain, s.a.opts.Name), []byte("-1"), 1, true); err != nil {
		s.a.log.Warn("publish domain withdrawal", "domain", domain, "err", err)
		return
	}
	s.unmarkReady(gen, domain)
}

// publishData publishes the domain's endpoint data (QoS 1, retained) and reports success.
func (s *session) publishData(ctx context.Context, gen uint64, domain string) bool {
	a := s.a
	d, err := a.Endpoint(domain)
	if err != nil {
		a.log.Error("domain interfaces not usable", "domain", domain, "err", err)
		return false
	}
	if err := s.publish(ctx, wire.DataTopic(a.opts.Name, domain), d.Marshal(), 1, true); err != nil {
		a.log.Warn("publish endpoint data", "domain", domain, "err", err)
		return false
	}
	return s.markReady(gen, domain)
}

func (s *session) requestReplay(ctx context.Context, domains []string) {
	if len(domains) == 0 {
		return
	}
	s.a.replays.asked(domains)
	p, _ := json.Marshal(wire.ReplayRequest{Domains: domains})
	if err := s.publish(ctx, wire.ReplayRequestTopic(s.a.opts.Name), p, 1, false); err != nil {
		s.a.log.Warn("request replay", "err", err)
	}
}

func (s *session) publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	return s.c.Send(ctx, mqttclient.Message{Topic: topic, Payload: payload, QoS: qos, Retain: retain})
}

// maxReplayAsks bounds the replay requests per domain and connection: a broker without replays (the reference)
// never answers.
const maxReplayAsks = 5

// replayWait counts, per domain, the replay requests of the current connection that no last batch answered yet.
// A request can be lost: MQTT drops it while no broker is subscribed (brokers reconnecting after a restart of
// the server), and on Mosquitto any client may join the brokers' shared subscription, whose share of the
// requests it then swallows (Mosquitto does not check subscriptions against its ACL).
type replayWait struct {
	mu   sync.Mutex
	open map[string]int
	busy map[string]bool // a batch arrived since the last unanswered: the answer is under way
}

func (r *replayWait) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.open, r.busy = nil, nil
}

func (r *replayWait) asked(domains []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.open == nil {
		r.open = map[string]int{}
	}
	for _, d := range domains {
		r.open[d]++
	}
}

func (r *replayWait) batch(domain string, last bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.busy == nil {
		r.busy = map[string]bool{}
	}
	r.busy[domain] = true
	if _, ok := r.open[domain]; ok && last {
		r.open[domain] = maxReplayAsks // answered: never asked again on this connection
	}
}

// unanswered returns the ready domains, other than skip, to ask again.
func (r *replayWait) unanswered(ready map[string]bool, skip []string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for d, n := range r.open {
		if ready[d] && n < maxReplayAsks && !r.busy[d] && !slices.Contains(skip, d) {
			out = append(out, d)
		}
	}
	r.busy = nil
	sort.Strings(out)
	return out
}

// readyRound runs every ReadyInterval: it probes every domain and, while the session is up, brings what the
// broker knows in line. A domain that became ready gets its endpoint data and its connected-peer count published,
// its device read and its keys replayed; a domain that can no longer be served is withdrawn; the status follows.
// Its publishes end with ctx (the worker stopping) or after 30 s.
func (s *session) readyRound(ctx context.Context) {
	s.a.CheckReady()
	if !s.pub.TryLock() {
		return // a setup publishes the state now; waiting for it could hold up the worker's shutdown
	}
	defer s.pub.Unlock()
	gen, up, published := s.state()
	if !up {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var late []string
	for _, d := range s.a.Domains() {
		switch ready := s.a.Ready(d); {
		case ready && !published[d]:
			if s.publishData(ctx, gen, d) {
				late = append(late, d)
				s.a.Sync(d, false)
			}
		case !ready && published[d]:
			s.withdraw(ctx, gen, d)
		}
	}
	if err := s.publishStatus(ctx, gen); err != nil {
		s.a.log.Warn("publish status", "err", err)
	}
	if len(late) > 0 {
		s.publishMetrics(ctx, late...)
		s.requestReplay(ctx, late)
	}
}

// metricsRound runs every metrics interval while the session is up: it publishes the connected-peer counts and
// asks again for replays not answered yet. Its publishes end with ctx (the worker stopping) or after 30 s.
func (s *session) metricsRound(ctx context.Context) {
	if !s.pub.TryLock() {
		return // a setup publishes the counts now
	}
	defer s.pub.Unlock()
	_, up, ready := s.state()
	if !up {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s.requestReplay(ctx, s.a.replays.unanswered(ready, nil))
	s.publishMetrics(ctx)
}

// publishMetrics publishes the connected-peer count (retained) of each domain whose endpoint is published and
// that is still ready, or of only the domains given. A device that cannot be read skips this round for that
// domain. Callers hold pub.
func (s *session) publishMetrics(ctx context.Context, only ...string) {
	_, _, ready := s.state()
	for _, d := range s.a.Domains() {
		if !ready[d] || !s.a.Ready(d) || len(only) > 0 && !slices.Contains(only, d) {
			continue
		}
		n, err := s.a.ConnectedPeers(d)
		if err != nil {
			s.a.log.Warn("read peers for metrics, skipping this round", "domain", d, "err", err)
			continue
		}
		if err := s.publish(ctx, wire.MetricTopic(d, s.a.opts.Name), wire.FormatInt(n), 0, true); err != nil {
			s.a.log.Warn("publish metrics", "domain", d, "err", err)
		}
	}
}

// farewell is what the client publishes at Close before the will's payload (status 0): -1 for every domain. The
// session's generation ends first, so that a setup still running can no longer mark anything.
func (s *session) farewell() []mqttclient.Message {
	s.next()
	var bye []mqttclient.Message
	for _, d := range s.a.Domains() {
		bye = append(bye, mqttclient.Message{Topic: wire.MetricTopic(d, s.a.opts.Name), Payload: []byte("-1"), QoS: 1, Retain: true})
	}
	return bye
}
