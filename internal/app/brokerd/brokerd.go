// Package brokerd assembles wgkex-broker from its parts: the bbolt store, the embedded MQTT server, the broker
// core and the REST API. main runs it; the end-to-end tests start it in-process.
package brokerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/broker/cluster"
	"github.com/freifunkMUC/wgkex-go/broker/keylist"
	"github.com/freifunkMUC/wgkex-go/internal/app/admin"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/mqttd"
	"github.com/freifunkMUC/wgkex-go/store"
	"github.com/freifunkMUC/wgkex-go/web"
)

// bus is the broker's MQTT side: the embedded server (mqttd) or a client of an existing server (mqttclient).
type bus interface {
	// Handle subscribes fn to filter; call it before Serve.
	Handle(filter string, fn func(topic string, payload []byte)) error
	Publish(topic string, payload []byte, retain bool, qos byte) error
	Serve() error
	Close() error
	Addrs() []string
}

var (
	_ bus = (*mqttd.Server)(nil)
	_ bus = (*mqttclient.Client)(nil)
)

// Daemon is a running broker.
type Daemon struct {
	Broker *broker.Broker
	Store  *store.Store
	// MQTT is the embedded server; nil when the broker uses broker.mqtt_server.
	MQTT *mqttd.Server
	// Client is the connection to broker.mqtt_server; nil with the embedded server.
	Client *mqttclient.Client
	// Cluster is this broker's part among the others on broker.mqtt_server; nil with the embedded server.
	Cluster *cluster.Cluster
	bus     bus
	// Metrics is the registry GET /metrics serves.
	Metrics *prometheus.Registry

	http   *http.Server
	httpLn net.Listener
	log    *slog.Logger
	cancel context.CancelFunc
	served chan error
	ran    chan struct{}

	admin     *http.Server // the administration socket (internal/admin)
	https     *http.Server // nil without broker_listen.tls_port
	httpsLn   net.Listener
	httpsCert *tlsfiles.Certificate // nil without broker_listen.tls_port
	storeOnce sync.Once
	storeErr  error

	web     *web.Server
	started time.Time
	sampled chan struct{}

	reloadMu sync.Mutex
	cfg      *config.Config // the configuration in effect (Reload)

	running sync.WaitGroup // every goroutine Start launched; Shutdown waits for them
}

// Start opens the state file, starts the MQTT server and the REST API, and returns once both accept connections.
func Start(cfg *config.Config, log *slog.Logger) (_ *Daemon, err error) {
	if p := cfg.BrokerProblems(); len(p) > 0 {
		return nil, &config.Error{Problems: p}
	}
	started := time.Now()
	reg := newRegistry()
	st, err := store.Open(cfg.Broker.StateFile, log.With("component", "store"))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if err := st.RegisterMetrics(reg, cfg.Domains...); err != nil {
		return nil, fmt.Errorf("register store metrics: %w", err)
	}
	st.StartRetention(store.Retention{Keep: cfg.Broker.KeyRetention.D()})
	var (
		mq        bus
		embedded  *mqttd.Server
		client    *mqttclient.Client
		peers     *cluster.Cluster
		id        string
		up        link // the MQTT client's callbacks need the broker; they run only after Serve
		clusterOn = cfg.Broker.MQTTServer.URL != ""
	)
	if clusterOn {
		client, id, err = dialServer(cfg.Broker.MQTTServer, log.With("component", "mqtt"), &up)
		mq = client
	} else {
		opts := mqttOptions(cfg, st)
		opts.Metrics = reg
		embedded, err = mqttd.New(log.With("component", "mqtt"), opts)
		mq = embedded
	}
	if err != nil {
		return nil, err
	}
	keys, err := keylist.Open(keylist.Options{
		BlocklistFile: cfg.Broker.BlocklistFile,
		AllowlistFile: cfg.Broker.AllowlistFile,
		Domains:       cfg.Domains,
	}, log.With("component", "keylist"))
	if err != nil {
		mq.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			keys.Close()
		}
	}()
	bopts := broker.Options{
		Domains:        cfg.Domains,
		Gateways:       Gateways(cfg.Workers),
		ReplayWindow:   cfg.Broker.ReplayWindow.D(),
		ReconnectGrace: cfg.Broker.ReconnectGrace.D(),
		External:       clusterOn,
		Keys:           keys,
		Metrics:        reg,
		ID:             id,

		LogNodeAddresses: cfg.Broker.LogNodeAddresses,
	}
	if clusterOn {
		peers = cluster.New(st, client, log.With("component", "cluster"), cluster.Options{
			ID: id, Domains: cfg.Domains, ReplayWindow: cfg.Broker.ReplayWindow.D()})
		bopts.Peers = peers
	}
	b, err := broker.New(st, mq, log.With("component", "broker"), bopts)
	if err != nil {
		mq.Close()
		return nil, err
	}
	handlers := map[string]func(string, []byte){
		wire.MetricsFilter:       b.HandleMetric,
		wire.StatusFilter:        b.HandleStatus,
		wire.DataFilter:          b.HandleData,
		wire.ReplayRequestFilter: b.HandleReplayRequest,
	}
	if clusterOn {
		up.b, up.c = b, peers
		delete(handlers, wire.ReplayRequestFilter) // shared among the brokers instead
		for filter, h := range peers.Handlers(b) {
			handlers[filter] = h
		}
	}
	for filter, h := range handlers {
		if err := mq.Handle(filter, h); err != nil {
			mq.Close()
			return nil, err
		}
	}
	if err := mq.Serve(); err != nil {
		mq.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.BrokerListen.Addr())
	if err != nil {
		mq.Close()
		return nil, fmt.Errorf("listen for http: %w", err)
	}
	ws := web.New(b, log.With("component", "web"), web.Options{
		TrustedProxies:   cfg.BrokerListen.Proxies(),
		RateLimit:        cfg.BrokerListen.RateLimit,
		RateBurst:        cfg.BrokerListen.RateBurst,
		RateLimitClients: cfg.BrokerListen.RateLimitClients,
		LogNodeAddresses: cfg.Broker.LogNodeAddresses,
	})
	d := &Daemon{Broker: b, Store: st, MQTT: embedded, Client: client, Cluster: peers, bus: mq, http: ws.HTTPServer(ln.Addr().String()), httpLn: ln, log: log,
		served: make(chan error, 2), ran: make(chan struct{}),
		Metrics: reg, web: ws, started: started, sampled: make(chan struct{}), cfg: cfg}
	ws.SetDashboard(d.dashboard(cfg))
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	if err := d.listenTLS(ctx, cfg.BrokerListen, ws); err != nil {
		cancel()
		ln.Close()
		mq.Close()
		return nil, err
	}
	adminLn, err := admin.Listen(cfg.Broker.AdminSocketPath())
	if err != nil {
		cancel()
		if d.https != nil {
			d.https.Close() // and its listener; cert.Run ends with ctx
		}
		d.running.Wait()
		ln.Close()
		mq.Close()
		return nil, err
	}
	d.admin = &http.Server{Handler: admin.Handler(st, keyAdmin{st: st, b: b, domains: cfg.Domains}, log.With("component", "admin")),
		ReadHeaderTimeout: 10 * time.Second}
	// Keys the blocklist blocks are revoked where they are stored: those listed while the broker was down now,
	// those added later whenever the list is reloaded.
	b.RevokeBlocked(keys.Blocked())
	keys.OnBlocked(b.RevokeBlocked)
	d.running.Go(func() {
		if err := d.admin.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
			log.Error("administration socket", "err", err)
		}
	})
	d.running.Go(func() { keys.Run(ctx) })
	d.running.Go(func() { d.sample(ctx, cfg.Broker.Dashboard.SampleInterval.D()); close(d.sampled) })
	d.running.Go(func() { d.served <- d.http.Serve(web.Listener(ln)) })
	d.running.Go(func() { b.Run(ctx); close(d.ran) })
	if clusterOn {
		d.running.Go(func() { peers.Run(ctx) })
	}
	log.Info("broker started", "http", ln.Addr().String(), "https", d.HTTPSAddr(), "mqtt", mq.Addrs(), "state", cfg.Broker.StateFile,
		"admin", cfg.Broker.AdminSocketPath())
	return d, nil
}

// listenTLS starts the HTTPS listener when broker_listen.tls_port is set; its certificate is reloaded until ctx
// ends.
func (d *Daemon) listenTLS(ctx context.Context, l config.Listen, ws *web.Server) error {
	if l.TLSPort == 0 {
		return nil
	}
	cert, err := tlsfiles.LoadCertificate(l.CertFile, l.KeyFile, 0, d.log.With("component", "web"))
	if err != nil {
		return err
	}
	addr := net.JoinHostPort(l.Host, strconv.Itoa(l.TLSPort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		cert.Close()
		return fmt.Errorf("listen for https: %w", err)
	}
	d.https, d.httpsLn, d.httpsCert = ws.HTTPServer(ln.Addr().String()), ln, cert
	d.running.Go(func() { cert.Run(ctx) })
	d.running.Go(func() { d.served <- d.https.Serve(web.TLSListener(ln, cert)) })
	return nil
}

// HTTPSAddr is the address of the HTTPS listener, empty without one.
func (d *Daemon) HTTPSAddr() string {
	if d.httpsLn == nil {
		return ""
	}
	return d.httpsLn.Addr().String()
}

// Gateways maps the configured workers onto the broker's gateways; a worker without a weight weighs 1.
func Gateways(workers map[string]config.Worker) map[string]broker.Gateway {
	out := make(map[string]broker.Gateway, len(workers))
	for name, w := range workers {
		g := broker.Gateway{Weight: 1, Location: w.Location}
		if w.Weight != nil {
			g.Weight = *w.Weight
		}
		out[name] = g
	}
	return out
}

// mqttOptions maps the configuration onto the embedded MQTT server's options.
func mqttOptions(cfg *config.Config, st *store.Store) mqttd.Options {
	o := mqttd.Options{
		Domains:        cfg.Domains,
		Accounts:       mqttAccounts(cfg),
		AllowAnonymous: cfg.Broker.AllowAnonymous,
		Limits: mqttd.Limits{
			MaxPacketSize:                uint32(cfg.Broker.MQTTLimits.MaxPacketSize),
			MaxClients:                   cfg.Broker.MQTTLimits.MaxClients,
			MaxUnauthenticatedPerAddress: cfg.Broker.MQTTLimits.MaxUnauthenticatedPerAddress,
			ConnectTimeout:               cfg.Broker.MQTTLimits.ConnectTimeout.D(),
			MaxSessionExpiry:             cfg.Broker.MQTTLimits.MaxSessionExpiry.D(),
			MaxPending:                   cfg.Broker.MQTTLimits.MaxPending,
		},
		Retained: st,
	}
	for _, l := range cfg.Broker.MQTTListeners {
		o.Listeners = append(o.Listeners, mqttd.Listener{Address: l.Address, CertFile: l.CertFile,
			KeyFile: l.KeyFile, ClientCAFile: l.ClientCAFile})
	}
	return o
}

// mqttAccounts maps the configuration onto the credentials the embedded MQTT server accepts, which a reload
// replaces.
func mqttAccounts(cfg *config.Config) mqttd.Accounts {
	a := mqttd.Accounts{Workers: map[string]mqttd.Account{}, Monitors: map[string]mqttd.Account{},
		SharedUsername: cfg.MQTT.Username, SharedPassword: cfg.MQTT.Password}
	for name, w := range cfg.Workers {
		a.Workers[name] = mqttd.Account{PasswordHash: w.PasswordHash}
	}
	for name, m := range cfg.Broker.MQTTMonitors {
		a.Monitors[name] = mqttd.Account{PasswordHash: m.PasswordHash}
	}
	return a
}

// HTTPAddr is the address the REST API listens on.
func (d *Daemon) HTTPAddr() string { return d.httpLn.Addr().String() }

// MQTTAddr is the address of the first MQTT listener.
func (d *Daemon) MQTTAddr() string { return d.bus.Addrs()[0] }

// Wait returns when the HTTP server fails.
func (d *Daemon) Wait() <-chan error { return d.served }

// Shutdown stops the parts in the order in which they depend on each other: it drains HTTP requests, stops taking
// replay requests and stops the replays, ends the broker's background work, closes the MQTT server, and closes the
// state file last. If the replays have not stopped when ctx ends, the state file is left open, since a replay
// still reads it, and Shutdown says so; a later call closes it once they have stopped.
func (d *Daemon) Shutdown(ctx context.Context) error {
	var errs []error
	if err := d.http.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	if err := d.admin.Shutdown(ctx); err != nil {
		d.admin.Close() // a backup still running holds a read transaction, which Close of the state file waits for
		errs = append(errs, fmt.Errorf("administration socket shutdown: %w", err))
	}
	if d.https != nil {
		if err := d.https.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("https shutdown: %w", err))
		}
	}
	if d.Cluster != nil {
		if err := d.Cluster.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	replays := d.Broker.StopReplays(ctx)
	d.cancel()
	<-d.ran
	<-d.sampled
	if err := d.bus.Close(); err != nil {
		errs = append(errs, fmt.Errorf("mqtt shutdown: %w", err))
	}
	if err := d.wait(ctx); err != nil {
		errs = append(errs, err)
	}
	if replays != nil {
		errs = append(errs, fmt.Errorf("state file left open: %w", replays))
		d.log.Error("broker stopped with replays running", "err", replays)
		return errors.Join(errs...)
	}
	d.storeOnce.Do(func() { d.storeErr = d.Store.Close() })
	if d.storeErr != nil {
		errs = append(errs, fmt.Errorf("close state: %w", d.storeErr))
	}
	d.log.Info("broker stopped")
	return errors.Join(errs...)
}

// wait waits for the goroutines Start launched, which end once their servers are shut down and the context
// Start made is cancelled, or returns an error when ctx ends first.
func (d *Daemon) wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { d.running.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("goroutines of the broker still running: %w", ctx.Err())
	}
}

// Reloads tell Run when and how to re-read the configuration.
type Reloads struct {
	// Signals asks for a reload with each value (SIGHUP); nil: never.
	Signals <-chan os.Signal
	// Load reads the configuration again.
	Load func() (*config.Config, error)
}

// Run starts the broker and serves until ctx ends, then shuts down within 10 seconds. On each of
// reloads.Signals it re-reads the configuration and applies it (Reload); a file that does not load, or a change
// that needs a restart, is logged and the configuration in effect stays. It also re-reads the TLS certificates
// (ReloadCertificates), whatever became of the configuration.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger, reloads Reloads) error {
	d, err := Start(cfg, log)
	if err != nil {
		return err
	}
	var serveErr error
wait:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			break wait
		case serveErr = <-d.Wait():
			serveErr = fmt.Errorf("http server: %w", serveErr)
			break wait
		case <-reloads.Signals:
			d.reload(reloads.Load)
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(serveErr, d.Shutdown(sctx))
}
