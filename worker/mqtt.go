package worker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// RunOptions are the MQTT and timing side of a running worker.
type RunOptions struct {
	MQTT            config.MQTT
	MetricsInterval time.Duration
	CleanupInterval time.Duration
	// HealthPort, when not 0, serves the gateway health check on [LinkAddress%wg-X]:HealthPort.
	HealthPort int
}

// ServerURL turns mqtt.broker_url and mqtt.broker_port into the URL the client dials. broker_url may be a host
// ("mqtt.example.org") or a URL ("mqtt://broker", "tls://broker:8883"); mqtt.tls switches to TLS.
func ServerURL(m config.MQTT) (*url.URL, error) {
	host, port := m.BrokerURL, strconv.Itoa(m.BrokerPort)
	if strings.Contains(host, "://") {
		u, err := url.Parse(host)
		if err != nil {
			return nil, fmt.Errorf("mqtt.broker_url %q: %w", m.BrokerURL, err)
		}
		switch u.Scheme {
		case "mqtt", "tcp":
		case "tls", "ssl", "mqtts":
			m.TLS = true
		default:
			return nil, fmt.Errorf("mqtt.broker_url %q: scheme %q is not mqtt or tls", m.BrokerURL, u.Scheme)
		}
		host = u.Hostname()
		if u.Port() != "" {
			port = u.Port()
		}
	}
	if host == "" {
		return nil, errors.New("mqtt.broker_url is empty")
	}
	scheme := "mqtt"
	if m.TLS {
		scheme = "tls"
	}
	return &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, port)}, nil
}

// TLSConfig builds the client TLS configuration from mqtt.ca_file and mqtt.server_name.
func TLSConfig(m config.MQTT) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: m.ServerName}
	if m.CAFile != "" {
		pem, err := os.ReadFile(m.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt.ca_file %s: no certificate found", m.CAFile)
		}
		c.RootCAs = pool
	}
	return c, nil
}

// HandleMessage takes one MQTT message: a key on wireguard/{domain}/+ or a replay batch on
// wgkex/replay/{worker}/keys. Anything malformed is logged and dropped.
func (a *Agent) HandleMessage(topic string, payload []byte) {
	if topic == wire.ReplayKeysTopic(a.opts.Name) {
		b, err := wire.ParseReplayBatch(payload)
		if err != nil {
			a.log.Warn("dropped replay batch", "err", err)
			return
		}
		bad := 0
		for _, k := range b.Keys {
			if err := a.Enqueue(b.Domain, k); err != nil {
				bad++
			}
		}
		if bad > 0 {
			a.log.Warn("dropped invalid keys from replay", "domain", b.Domain, "count", bad)
		}
		a.log.Debug("replay batch", "domain", b.Domain, "seq", b.Seq, "keys", len(b.Keys), "last", b.Last)
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

// session is the MQTT side of a running worker.
type session struct {
	a    *Agent
	opts RunOptions
	cm   atomic.Pointer[autopaho.ConnectionManager] // set by the first OnConnectionUp or by Run, whichever is first
	up   atomic.Bool
	// ready records the domains whose endpoint data was published on the current connection.
	mu    sync.Mutex
	ready map[string]bool
}

// Run connects to MQTT and serves until ctx ends: it applies keys, publishes endpoint data, status and metrics,
// sweeps stale peers and, if configured, answers health checks. On the way out it publishes -1 for every domain
// and status 0, then disconnects.
func (a *Agent) Run(ctx context.Context, opts RunOptions) error {
	u, err := ServerURL(opts.MQTT)
	if err != nil {
		return err
	}
	s := &session{a: a, opts: opts, ready: map[string]bool{}}
	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     uint16(opts.MQTT.Keepalive),
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                10 * time.Second,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(time.Second, 60*time.Second, 2*time.Second, 2),
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			s.cm.Store(cm)
			go s.connected(ctx, cm)
		},
		OnConnectionDown: func() bool {
			s.up.Store(false)
			a.log.Warn("mqtt connection lost, reconnecting")
			return true
		},
		OnConnectError: func(err error) { a.log.Warn("mqtt connect failed, retrying", "server", u.String(), "err", err) },
		ClientConfig: paho.ClientConfig{
			ClientID: a.opts.Name,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				a.HandleMessage(pr.Packet.Topic, pr.Packet.Payload)
				return true, nil
			}},
			OnClientError: func(err error) { a.log.Warn("mqtt client error", "err", err) },
		},
	}
	if u.Scheme == "tls" {
		if cfg.TlsCfg, err = TLSConfig(opts.MQTT); err != nil {
			return err
		}
	}
	if opts.MQTT.Username != "" {
		cfg.ConnectUsername, cfg.ConnectPassword = opts.MQTT.Username, []byte(opts.MQTT.Password)
	}
	cfg.WillMessage = &paho.WillMessage{Topic: wire.StatusTopic(a.opts.Name), Payload: []byte("0"), QoS: 1, Retain: true}

	// The connection outlives ctx by the few seconds the farewell messages need.
	connCtx, cancelConn := context.WithCancel(context.Background())
	defer cancelConn()
	cm, err := autopaho.NewConnection(connCtx, cfg)
	if err != nil {
		return fmt.Errorf("mqtt: %w", err)
	}
	s.cm.Store(cm)
	a.log.Info("worker starting", "name", a.opts.Name, "server", u.String(), "domains", a.Domains())

	for _, d := range a.Domains() {
		if n, err := a.Reconcile(d); err != nil {
			a.log.Error("domain interfaces not usable, retrying every metrics interval", "domain", d, "err", err)
		} else if n > 0 {
			a.log.Info("peers found on device, checking their routes and fdb entries", "domain", d, "peers", n)
		}
	}

	done := make(chan struct{})
	var wg sync.WaitGroup
	qctx, cancelQ := context.WithCancel(context.Background())
	wg.Add(3)
	go func() { defer wg.Done(); a.RunQueue(qctx) }()
	go func() { defer wg.Done(); s.metricsLoop(done) }()
	go func() { defer wg.Done(); a.sweepEvery(opts.CleanupInterval, done) }()
	var hs *healthServer
	if opts.HealthPort != 0 {
		hs = newHealthServer(a, opts.HealthPort, s.up.Load)
	}

	<-ctx.Done()
	a.log.Info("worker stopping")
	close(done)
	cancelQ()
	wg.Wait()
	if hs != nil {
		hs.close()
	}
	s.farewell()
	return nil
}

// connected runs after every (re)connect: subscribe, publish endpoint data per domain, status 1, metrics, and ask
// the broker to replay the keys of the ready domains.
func (s *session) connected(ctx context.Context, cm *autopaho.ConnectionManager) {
	a := s.a
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	sub := &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: wire.ReplayKeysTopic(a.opts.Name), QoS: 1}}}
	for _, d := range a.Domains() {
		sub.Subscriptions = append(sub.Subscriptions, paho.SubscribeOptions{Topic: wire.KeyFilter(d), QoS: 1})
	}
	if _, err := cm.Subscribe(pctx, sub); err != nil {
		a.log.Error("mqtt subscribe failed", "err", err)
		return
	}
	s.mu.Lock()
	s.ready = map[string]bool{}
	s.mu.Unlock()
	var ready []string
	for _, d := range a.Domains() {
		if s.publishData(pctx, d) {
			ready = append(ready, d)
		}
	}
	if err := s.publish(pctx, wire.StatusTopic(a.opts.Name), []byte("1"), 1, true); err != nil {
		a.log.Error("publish status", "err", err)
		return
	}
	s.up.Store(true)
	a.log.Info("mqtt connected", "ready_domains", ready)
	s.publishMetrics(pctx)
	s.requestReplay(pctx, ready)
}

// publishData publishes the domain's endpoint data (QoS 1, retained) and reports success.
func (s *session) publishData(ctx context.Context, domain string) bool {
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
	s.mu.Lock()
	s.ready[domain] = true
	s.mu.Unlock()
	return true
}

func (s *session) requestReplay(ctx context.Context, domains []string) {
	if len(domains) == 0 {
		return
	}
	p, _ := json.Marshal(wire.ReplayRequest{Domains: domains})
	if err := s.publish(ctx, wire.ReplayRequestTopic(s.a.opts.Name), p, 1, false); err != nil {
		s.a.log.Warn("request replay", "err", err)
	}
}

func (s *session) publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	_, err := s.cm.Load().Publish(ctx, &paho.Publish{Topic: topic, Payload: payload, QoS: qos, Retain: retain})
	return err
}

// metricsLoop publishes the connected-peer counts every interval, retries domains whose interfaces were missing
// (once one works, its data is published and its keys replayed), and asks for a replay of domains where keys were
// given up after their retries.
func (s *session) metricsLoop(done <-chan struct{}) {
	t := time.NewTicker(s.opts.MetricsInterval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if !s.up.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var late []string
		for _, d := range s.a.Domains() {
			s.mu.Lock()
			ok := s.ready[d]
			s.mu.Unlock()
			if !ok && s.publishData(ctx, d) {
				late = append(late, d)
				if _, err := s.a.Reconcile(d); err != nil {
					s.a.log.Warn("reconcile", "domain", d, "err", err)
				}
			}
		}
		s.requestReplay(ctx, late)
		s.requestReplay(ctx, s.a.takeDropped())
		s.publishMetrics(ctx)
		cancel()
	}
}

// publishMetrics publishes each ready domain's connected-peer count (retained). A device that cannot be read
// skips this round for that domain.
func (s *session) publishMetrics(ctx context.Context) {
	for _, d := range s.a.Domains() {
		s.mu.Lock()
		ok := s.ready[d]
		s.mu.Unlock()
		if !ok {
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

// farewell marks every domain offline (-1) and the worker offline (0), then disconnects cleanly.
func (s *session) farewell() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if s.up.Load() {
		for _, d := range s.a.Domains() {
			if err := s.publish(ctx, wire.MetricTopic(d, s.a.opts.Name), []byte("-1"), 1, true); err != nil {
				s.a.log.Warn("publish offline metric", "domain", d, "err", err)
			}
		}
		if err := s.publish(ctx, wire.StatusTopic(s.a.opts.Name), []byte("0"), 1, true); err != nil {
			s.a.log.Warn("publish offline status", "err", err)
		}
	}
	if err := s.cm.Load().Disconnect(ctx); err != nil {
		s.a.log.Warn("mqtt disconnect", "err", err)
	}
	s.a.log.Info("worker stopped")
}
