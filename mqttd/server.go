// Package mqttd is the broker's embedded MQTT server (mochi-mqtt v2): its TCP and TLS listeners, who may connect
// (per-worker passwords and client certificates, the reference's shared password, read-only monitors), what each
// client may publish and subscribe to, the limits that keep one client from hurting the others, persistence of
// retained messages, and the inline client through which the broker publishes and subscribes. It is the only
// package that imports mochi, and every workaround for mochi's behaviour lives here.
package mqttd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"
)

// RetainStore keeps retained messages across restarts. The messages are opaque to it.
type RetainStore interface {
	PutRetained(topic string, msg []byte) error
	DeleteRetained(topic string) error
	Retained(fn func(topic string, msg []byte) error) error
}

// Listener is one TCP listener of the embedded server, with TLS when CertFile and KeyFile are given.
type Listener struct {
	Address           string
	CertFile, KeyFile string
	// ClientCAFile, on a TLS listener, is a PEM bundle that client certificates are verified against. A client
	// certificate is optional (tls.VerifyClientCertIfGiven) so that password-authenticated workers can share the
	// listener; one that does not verify ends the handshake.
	ClientCAFile string
}

// Account is a worker's or monitor's own credential.
type Account struct {
	// PasswordHash is a bcrypt hash of the password; empty means no password of its own.
	PasswordHash string
}

// Limits bound what one client can cost the server. Zero values take the defaults of DefaultLimits.
type Limits struct {
	// MaxPacketSize is the largest packet accepted, checked from the fixed header before the packet is read.
	MaxPacketSize uint32
	// MaxClients bounds the open connections, counting those that have not sent CONNECT yet.
	MaxClients int
	// MaxUnauthenticatedPerAddress bounds the open connections from one address (IPv6: one /64) that have not
	// authenticated with a credential: those before or during CONNECT and those of anonymous clients. It keeps
	// one address from taking the MaxClients slots of every gateway.
	MaxUnauthenticatedPerAddress int
	// ConnectTimeout is how long a new connection has for its TLS handshake and CONNECT packet.
	ConnectTimeout time.Duration
	// MaxSessionExpiry bounds how long a disconnected client's session is kept.
	MaxSessionExpiry time.Duration
	// MaxPending bounds a client's queued outbound packets and its unacknowledged QoS 1/2 messages; a client
	// whose queue is full is disconnected as a slow consumer.
	MaxPending int
}

// DefaultLimits returns the limits used for zero fields of Options.Limits.
func DefaultLimits() Limits {
	return Limits{MaxPacketSize: 64 << 10, MaxClients: 4096, MaxUnauthenticatedPerAddress: 32,
		ConnectTimeout: 10 * time.Second, MaxSessionExpiry: time.Hour, MaxPending: 8192}
}

// Options configure a Server.
type Options struct {
	Listeners []Listener
	// Domains are the domains every worker serves: they name the topics a worker may use.
	Domains []string
	// Accounts are the credentials accepted at start (SetAccounts replaces them).
	Accounts
	// AllowAnonymous accepts clients without credentials on every listener. Without it they are accepted only
	// when no credential is configured at all, and only on loopback listeners; New refuses a non-loopback
	// listener then.
	AllowAnonymous bool
	Limits         Limits
	// Retained persists retained messages; nil keeps them in memory only.
	Retained RetainStore
	// Metrics, when not nil, registers wgkex_mqtt_clients and wgkex_mqtt_refused_total{reason}.
	Metrics prometheus.Registerer
}

// Server is the embedded MQTT server.
type Server struct {
	srv       *mqtt.Server
	log       *slog.Logger
	quiet     *logGate // shut by Close: the server logs nothing more (logging.go)
	opts      Options
	listeners []*listener
	subID     int
	// acc is the accounts in effect (SetAccounts); accMu serialises their replacement.
	acc   atomic.Pointer[accountSet]
	accMu sync.Mutex
	// certCredentials: a listener verifies client certificates (then anonymous clients are refused).
	certCredentials bool
	// maxSubscriptions bounds the subscriptions one client holds.
	maxSubscriptions int
	failures         failures
	passwords        *passwd.Checker
	// loginWait bounds how long a login waits for its password check (a bcrypt slot): the connect timeout, and
	// never beyond Close (stop), so that shutdown does not wait for a queue of logins.
	loginWait time.Duration
	stopped   context.Context
	stop      context.CancelFunc
	// loginDelay is how long a failed login waits for its refusal (tests shorten it).
	loginDelay time.Duration
	refusedVec *prometheus.CounterVec
	done       chan struct{}
	// certs are the TLS listeners' certificates, reloaded while the server runs (certRuns).
	certs    []*tlsfiles.Certificate
	certOnce sync.Once // Serve runs the certificates' watchers, or Close releases them unrun
	certRuns sync.WaitGroup
	// closing is set before the server disconnects its clients on shutdown, so that their last wills, fired by
	// our own shutdown, do not mark every worker offline in the broker's state.
	closing atomic.Bool
}

// New creates the server and opens its listeners; Serve starts accepting clients.
func New(log *slog.Logger, opts Options) (_ *Server, err error) {
	// mochi logs whole packets, passwords included; and its event loop logs its end after Close has returned
	// (Close cannot wait for it): the server's log ends with Close.
	quiet := &logGate{}
	log = slog.New(closingHandler{redactingLogger(log).Handler(), quiet})
	opts.Limits = withDefaults(opts.Limits)
	if err := opts.validate(); err != nil {
		return nil, err
	}
	lim := opts.Limits
	caps := mqtt.NewDefaultServerCapabilities()
	// mochi deletes retained messages older than this (default 24 h), which would drop every worker's endpoint
	// a day after it connected. 0 means never.
	caps.MaximumMessageExpiryInterval = 0
	// mochi checks the remaining length against this in ReadFixedHeader, before it allocates the packet, also
	// for CONNECT.
	caps.MaximumPacketSize = lim.MaxPacketSize
	caps.MaximumClients = int64(lim.MaxClients)
	caps.MaximumSessionExpiryInterval = uint32(lim.MaxSessionExpiry / time.Second)
	caps.MaximumClientWritesPending = int32(lim.MaxPending)
	caps.MaximumInflight = uint16(min(lim.MaxPending, 65535))
	caps.ReceiveMaximum = 64
	caps.TopicAliasMaximum = 0
	caps.SharedSubAvailable = 0
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: log, Capabilities: caps})
	s := &Server{srv: srv, log: log, quiet: quiet, opts: opts, done: make(chan struct{}), loginDelay: loginDelay,
		passwords: passwd.New(runtime.GOMAXPROCS(0), nil), loginWait: lim.ConnectTimeout,
		failures: failures{m: map[netip.Prefix]*failure{}}}
	s.stopped, s.stop = context.WithCancel(context.Background())
	set := newAccountSet(opts.Accounts, opts.Domains)
	s.acc.Store(set)
	// A worker needs one subscription per domain and one for its replays; the rest is room for monitors.
	s.maxSubscriptions = 2*len(opts.Domains) + 64
	defer func() {
		if err != nil {
			s.closeListeners()
			for _, c := range s.certs {
				c.Close()
			}
		}
	}()
	slots := make(chan struct{}, lim.MaxClients)
	uncredited := &addrCounts{max: lim.MaxUnauthenticatedPerAddress, m: map[netip.Prefix]*addrCount{}, now: time.Now}
	for i, lc := range opts.Listeners {
		l := &listener{id: "tcp" + strconv.Itoa(i), address: lc.Address, slots: slots, uncredited: uncredited,
			connectTimeout: lim.ConnectTimeout, refused: s.refused, disconnect: s.closeClients, log: log}
		if lc.CertFile != "" {
			var cert *tlsfiles.Certificate
			if l.tls, cert, err = serverTLS(lc, log); err != nil {
				return nil, fmt.Errorf("mqtt listener %s: %w", lc.Address, err)
			}
			s.certs = append(s.certs, cert)
			s.certCredentials = s.certCredentials || lc.ClientCAFile != ""
		}
		if err := l.listen(); err != nil {
			return nil, fmt.Errorf("mqtt listener %s: %w", lc.Address, err)
		}
		s.listeners = append(s.listeners, l)
	}
	if err := s.needsCredentials(set); err != nil {
		return nil, err
	}
	for _, l := range s.listeners {
		switch {
		case (set.credentials || s.certCredentials) && !opts.AllowAnonymous:
		case opts.AllowAnonymous:
			log.Warn("mqtt accepts clients without credentials (allow_anonymous)", "listener", l.Address())
		default:
			log.Warn("mqtt accepts clients without credentials on loopback: configure credentials for production",
				"listener", l.Address())
		}
		if err := srv.AddListener(l); err != nil {
			return nil, fmt.Errorf("mqtt listener %s: %w", l.Address(), err)
		}
	}
	if err := s.metrics(opts.Metrics); err != nil {
		return nil, err
	}
	if err := srv.AddHook(&authHook{s: s}, nil); err != nil {
		return nil, fmt.Errorf("add auth hook: %w", err)
	}
	if opts.Retained != nil {
		if err := srv.AddHook(&retainHook{st: opts.Retained, s: s}, nil); err != nil {
			return nil, fmt.Errorf("add retain hook: %w", err)
		}
	}
	return s, nil
}

// needsCredentials refuses accounts that leave no credential at all while a listener other than loopback would
// then accept anonymous clients (Mosquitto 2.0's rule), unless AllowAnonymous.
func (s *Server) needsCredentials(set *accountSet) error {
	if set.credentials || s.certCredentials || s.opts.AllowAnonymous {
		return nil
	}
	for _, l := range s.listeners {
		if !l.loopback {
			return fmt.Errorf("mqtt listener %s: no credentials are configured, so only loopback listeners "+
				"are allowed (set workers.<name>.password_hash, mqtt.username/password or client_ca_file, or "+
				"broker.allow_anonymous: true)", l.Address())
		}
	}
	return nil
}

func withDefaults(l Limits) Limits {
	d := DefaultLimits()
	if l.MaxPacketSize == 0 {
		l.MaxPacketSize = d.MaxPacketSize
	}
	if l.MaxClients == 0 {
		l.MaxClients = d.MaxClients
	}
	if l.MaxUnauthenticatedPerAddress <= 0 { // negative would refuse everyone and keep an entry per address
		l.MaxUnauthenticatedPerAddress = d.MaxUnauthenticatedPerAddress
	}
	if l.ConnectTimeout == 0 {
		l.ConnectTimeout = d.ConnectTimeout
	}
	if l.MaxSessionExpiry == 0 {
		l.MaxSessionExpiry = d.MaxSessionExpiry
	}
	if l.MaxPending == 0 {
		l.MaxPending = d.MaxPending
	}
	return l
}

// validate checks the accounts and listeners, all problems at once.
func (o *Options) validate() error {
	errs := []error{o.Accounts.validate()}
	for _, l := range o.Listeners {
		if l.ClientCAFile != "" && l.CertFile == "" {
			errs = append(errs, fmt.Errorf("mqtt listener %s: client_ca_file needs cert_file and key_file", l.Address))
		}
	}
	return errors.Join(errs...)
}

// serverTLS loads a listener's certificate, which Serve reloads whenever its files change and
// ReloadCertificates on request, and, if given, the CA its clients' certificates are verified with.
func serverTLS(lc Listener, log *slog.Logger) (*tls.Config, *tlsfiles.Certificate, error) {
	var pool *x509.CertPool
	if lc.ClientCAFile != "" {
		var err error
		if pool, err = tlsfiles.Pool(lc.ClientCAFile); err != nil {
			return nil, nil, fmt.Errorf("client CA: %w", err)
		}
	}
	cert, err := tlsfiles.LoadCertificate(lc.CertFile, lc.KeyFile, 0, log.With("listener", lc.Address))
	if err != nil {
		return nil, nil, err
	}
	tc := &tls.Config{GetCertificate: cert.GetCertificate, MinVersion: tls.VersionTLS12}
	if pool != nil {
		tc.ClientCAs, tc.ClientAuth = pool, tls.VerifyClientCertIfGiven
	}
	return tc, cert, nil
}

// ReloadCertificates reads the TLS listeners' certificates again now (SIGHUP); Serve also reloads each whenever
// its files change. Only new TLS handshakes get a new certificate: connected clients stay connected. A pair that
// does not load is logged as an error naming the files, and the listener keeps the certificate in force.
func (s *Server) ReloadCertificates() {
	for _, c := range s.certs {
		c.Reload()
	}
}

// metrics creates the collectors and registers them with reg when it is not nil.
func (s *Server) metrics(reg prometheus.Registerer) error {
	s.refusedVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wgkex_mqtt_refused_total",
		Help: "MQTT connections, packets and subscriptions refused, by reason.",
	}, []string{"reason"})
	for _, r := range allReasons {
		s.refusedVec.WithLabelValues(r)
	}
	clients := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wgkex_mqtt_clients",
		Help: "Connected MQTT clients, without the broker's own.",
	}, func() float64 { return float64(s.Clients()) })
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{s.refusedVec, clients} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register mqtt metrics: %w", err)
		}
	}
	return nil
}

func (s *Server) refused(reason string) { s.refusedVec.WithLabelValues(reason).Inc() }

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.Close(nil)
	}
}

// closeClients disconnects the clients of a listener at shutdown. mochi's own (Clients.GetByListener) takes the
// clients' read lock twice, which deadlocks Close when a client ending at that moment waits for the write lock
// in between.
func (s *Server) closeClients(listenerID string) {
	for _, cl := range s.srv.Clients.GetAll() {
		if cl.Net.Listener == listenerID && !cl.Closed() {
			_ = s.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// Addrs returns the listeners' actual addresses (useful with port 0).
func (s *Server) Addrs() []string {
	out := make([]string, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Address()
	}
	return out
}

// Handle subscribes the inline client to filter. fn runs on the publishing client's goroutine; a panic in it is
// logged and does not reach the server. Call Handle before Serve: state comes from the store, not from retained
// messages replayed at subscription.
//
// The topic ACL guarantees that a message on a worker's topic (wireguard-worker/{name}/...,
// wireguard-metrics/{domain}/{name}/..., wgkex/replay/{name}/request) was published by a client authenticated as
// that worker, or is that client's last will, checked at CONNECT. fn may trust the name in the topic.
func (s *Server) Handle(filter string, fn func(topic string, payload []byte)) error {
	s.subID++
	err := s.srv.Subscribe(filter, s.subID, func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
		if s.closing.Load() {
			return
		}
		defer func() {
			if r := recover(); r != nil {
				s.log.Error("mqtt handler panicked", "topic", pk.TopicName, "panic", r)
			}
		}()
		fn(pk.TopicName, pk.Payload)
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	return nil
}

// Publish sends a message from the inline client. It never waits for a subscriber: one whose queue is full is
// disconnected.
func (s *Server) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if err := s.srv.Publish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Serve restores the retained messages and starts accepting clients.
func (s *Server) Serve() error {
	if err := s.srv.Serve(); err != nil {
		return fmt.Errorf("start mqtt server: %w", err)
	}
	s.certOnce.Do(func() {
		for _, c := range s.certs {
			s.certRuns.Go(func() { c.Run(s.stopped) })
		}
	})
	for _, a := range s.Addrs() {
		s.log.Info("mqtt listening", "address", a)
	}
	return nil
}

// Clients returns the number of connected clients.
func (s *Server) Clients() int {
	n := 0
	for _, cl := range s.srv.Clients.GetAll() {
		if !cl.Net.Inline && !cl.Closed() {
			n++
		}
	}
	return n
}

// Close disconnects every client and stops the listeners. Last wills fired by this are not handed to the broker.
// Closing twice is harmless.
func (s *Server) Close() error {
	if !s.closing.CompareAndSwap(false, true) {
		return nil
	}
	close(s.done)
	s.stop()
	err := s.srv.Close()
	s.certOnce.Do(func() {
		for _, c := range s.certs {
			c.Close()
		}
	})
	s.certRuns.Wait()
	s.quiet.shut()
	return err
}

// authHook authenticates clients (auth.go) and enforces the topic rules (acl.go) and the per-client limits.
type authHook struct {
	mqtt.HookBase
	s *Server
}

func (h *authHook) ID() string { return "wgkex-auth" }

func (h *authHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnSubscribe, mqtt.OnPublishDropped,
		mqtt.OnQosPublish, mqtt.OnPublish, mqtt.OnWill, mqtt.OnSessionEstablished:
		return true
	}
	return false
}

// OnConnect bounds the keepalive, so that a client asking for none (0) is still dropped when it goes silent.
func (h *authHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if cl.State.Keepalive == 0 || cl.State.Keepalive > maxKeepalive {
		cl.State.Keepalive, cl.State.ServerKeepalive = maxKeepalive, true
	}
	return nil
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	s := h.s
	c := connOf(cl.Net.Conn)
	if c == nil {
		return false
	}
	key, now := addrKey(cl.Net.Remote), time.Now()
	refuse := func(reason string) bool {
		s.refused(reason)
		s.log.Warn("mqtt client refused", "client", cl.ID, "remote", cl.Net.Remote, "username",
			string(pk.Connect.Username), "reason", reason)
		if reason == reasonBadLogin || reason == reasonLoginBackoff || reason == reasonAnonymous {
			if reason != reasonLoginBackoff { // retrying during a lockout does not prolong it
				s.failures.fail(key, now, s.loginDelay)
			}
			t := time.NewTimer(s.loginDelay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-s.done:
			}
		}
		return false
	}
	if s.failures.locked(key, now) {
		return refuse(reasonLoginBackoff)
	}
	id, reason := s.authenticate(cl, pk)
	if id == nil {
		return refuse(reason)
	}
	// A reload may have replaced the accounts while the password was checked (bcrypt, perhaps queued behind a
	// reconnecting fleet): those in effect now decide, before the client is acknowledged or takes a session over.
	if !s.holds(id, s.acc.Load(), cl.Net.Listener) { // holds is quick when the accounts did not change
		return refuse(reasonRevoked)
	}
	if w := cl.Properties.Will; w.Flag == 1 && !id.canPublish(w.TopicName) {
		return refuse(reasonWill)
	}
	if old, ok := s.srv.Clients.Get(id.name); ok {
		if oc := connOf(old.Net.Conn); oc != nil && !old.Closed() {
			if oid := oc.id.Load(); oid != nil && oid.own && !id.own {
				return refuse(reasonTakeover)
			}
			// The same worker reconnects before its old session timed out: mochi disconnects the old one,
			// whose will ("offline") must not follow the new session's "online" (OnWill). The old client's
			// own fields are mochi's to write while it disconnects.
			oc.superseded.Store(true)
		}
	}
	s.failures.succeed(key)
	if id.via == viaAnonymous {
		// An anonymous client picks any client id: were its session kept after it leaves, one client could
		// leave any number of sessions in memory for MaxSessionExpiry. It ends at disconnect (a reconnecting
		// client sees "session present" unset and subscribes again).
		cl.Properties.Clean = true
		cl.Properties.Props.SessionExpiryInterval, cl.Properties.Props.SessionExpiryIntervalFlag = 0, true
	} else {
		c.credited()
	}
	c.id.Store(id)
	s.log.Info("mqtt client authenticated", "client", id.name, "remote", cl.Net.Remote, "via", id.via,
		"worker", id.worker, "monitor", id.monitor)
	return true
}

// OnSessionEstablished checks a client authenticated by accounts that SetAccounts replaced after
// OnConnectAuthenticate's last look but before mochi listed it among its clients, where SetAccounts looks.
func (h *authHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if set := h.s.acc.Load(); identityOf(cl).set != set {
		h.s.recheck(cl, set)
	}
}

// voidTopic is where the will of a superseded session goes: mochi has no way to cancel a will from a hook, and
// no client can subscribe to it (a monitor may subscribe to worker topics only, and "#" never matches "$").
const voidTopic = "$wgkex/superseded-will"

// OnWill drops the will of a session its own worker has taken over by reconnecting.
func (h *authHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if c := connOf(cl.Net.Conn); c != nil && c.superseded.Load() {
		return mqtt.Will{TopicName: voidTopic}, nil
	}
	return will, nil
}

// identityOf returns a connected client's identity; for the inline client (and a client not yet authenticated) an
// empty one, which may do nothing.
func identityOf(cl *mqtt.Client) *identity {
	if c := connOf(cl.Net.Conn); c != nil {
		if id := c.id.Load(); id != nil {
			return id
		}
	}
	return &identity{}
}

// OnACLCheck decides publishes (write) and, silently, subscriptions and deliveries (read).
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	id := identityOf(cl)
	if !write {
		if len(topic) > h.s.acc.Load().maxFilterLen {
			return false // no topic this long is ever published: a filter to hold memory
		}
		if hasWildcard(topic) {
			return id.canSubscribe(topic) // a subscription; deliveries are checked topic by topic
		}
		return id.canRead(topic) // a delivery, or a subscription to a single topic
	}
	if cl.Properties.ProtocolVersion < 5 {
		return true // decided in OnPublish, see there
	}
	return h.allowPublish(cl, id, topic)
}

// OnPublish drops the refused publishes of MQTT 3 clients. MQTT 3 has no negative acknowledgement, so mochi
// would disconnect a client refused in OnACLCheck; like Mosquitto, the server acknowledges and drops the message
// instead (neither delivered nor retained), so that a reference worker publishing for a domain the broker does
// not serve stays connected.
func (h *authHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || cl.Properties.ProtocolVersion >= 5 || h.allowPublish(cl, identityOf(cl), pk.TopicName) {
		return pk, nil
	}
	return pk, packets.CodeSuccessIgnore
}

func (h *authHook) allowPublish(cl *mqtt.Client, id *identity, topic string) bool {
	if id.canPublish(topic) {
		return true
	}
	h.s.refused(reasonPublish)
	h.s.log.Warn("mqtt publish refused", "client", cl.ID, "topic", topic, "reason", reasonPublish)
	return false
}

// OnSubscribe logs and counts the subscriptions OnACLCheck is about to refuse, and refuses those over the
// per-client limit (mochi has none: 400,000 filters of one client took 1.1 GB) by making them invalid filters,
// which mochi answers with "topic filter invalid".
func (h *authHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk
	}
	pk.Filters = slices.Clone(pk.Filters)
	held := cl.State.Subscriptions.Len()
	added := map[string]bool{}
	for i, f := range pk.Filters {
		reason := ""
		if !h.OnACLCheck(cl, f.Filter, false) {
			reason = reasonSubscribe
		} else if _, ok := cl.State.Subscriptions.Get(f.Filter); !ok && !added[f.Filter] {
			if held >= h.s.maxSubscriptions {
				reason = reasonSubscriptions
				pk.Filters[i].Filter = ""
			} else {
				held++
				added[f.Filter] = true
			}
		}
		if reason != "" {
			h.s.refused(reason)
			h.s.log.Warn("mqtt subscription refused", "client", cl.ID, "topic", f.Filter, "reason", reason)
		}
	}
	return pk
}

// OnQosPublish disconnects a client whose unacknowledged QoS 1/2 messages reached the limit: mochi would drop
// the next ones without telling anyone.
func (h *authHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if cl.State.Inflight.Len() >= h.s.opts.Limits.MaxPending {
		h.OnPublishDropped(cl, pk)
	}
}

// OnPublishDropped disconnects a client whose outbound queue is full: it stopped reading. Closing its
// connection never blocks the publisher.
func (h *authHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	c := connOf(cl.Net.Conn)
	if c == nil || !c.dropped.CompareAndSwap(false, true) {
		return
	}
	h.s.refused(reasonSlowConsumer)
	h.s.log.Warn("mqtt client disconnected: not reading", "client", cl.ID, "topic", pk.TopicName,
		"reason", reasonSlowConsumer)
	cl.Stop(packets.ErrPendingClientWritesExceeded)
}

// establishReason maps the error that ended a connection before or during CONNECT to a refusal reason, or ""
// when the hooks have counted it already or it is an ordinary end.
func establishReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, packets.ErrPacketTooLarge):
		return reasonPacketTooLarge
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return reasonConnectTimeout
	case errors.Is(err, packets.ErrServerBusy):
		return reasonMaxClients
	case errors.Is(err, packets.ErrProtocolViolationRequireFirstConnect):
		return reasonProtocol
	}
	var re tls.RecordHeaderError
	var ae tls.AlertError
	var ce *tls.CertificateVerificationError
	if errors.As(err, &re) || errors.As(err, &ae) || errors.As(err, &ce) {
		return reasonProtocol
	}
	return ""
}

// retainHook writes retained messages through to the RetainStore and gives them back at start.
type retainHook struct {
	mqtt.HookBase
	st RetainStore
	s  *Server
}

func (h *retainHook) ID() string { return "wgkex-retained" }

func (h *retainHook) Provides(b byte) bool {
	return b == mqtt.OnRetainMessage || b == mqtt.StoredRetainedMessages || b == mqtt.OnRetainedExpired
}

func (h *retainHook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	if h.s.closing.Load() {
		return
	}
	if len(pk.Payload) == 0 {
		if err := h.st.DeleteRetained(pk.TopicName); err != nil {
			h.Log.Error("delete retained message", "topic", pk.TopicName, "err", err)
		}
		return
	}
	m := storage.Message{
		ID: pk.TopicName, T: storage.RetainedKey, FixedHeader: pk.FixedHeader, TopicName: pk.TopicName,
		Payload: pk.Payload, Created: pk.Created, Client: cl.ID, Origin: pk.Origin,
	}
	b, err := m.MarshalBinary()
	if err == nil {
		err = h.st.PutRetained(pk.TopicName, b)
	}
	if err != nil {
		h.Log.Error("store retained message", "topic", pk.TopicName, "err", err)
	}
}

func (h *retainHook) OnRetainedExpired(topic string) {
	if err := h.st.DeleteRetained(topic); err != nil {
		h.Log.Error("delete expired retained message", "topic", topic, "err", err)
	}
}

// StoredRetainedMessages gives mochi the stored retained messages. Those on topics that no configured worker may
// publish (left by a version without ACLs, or by a worker since removed from the configuration) are deleted.
func (h *retainHook) StoredRetainedMessages() ([]storage.Message, error) {
	allowed := h.s.retainable()
	var out []storage.Message
	var stale []string
	err := h.st.Retained(func(topic string, b []byte) error {
		if allowed != nil && !allowed[topic] {
			stale = append(stale, topic)
			return nil
		}
		var m storage.Message
		if err := m.UnmarshalBinary(b); err != nil {
			h.Log.Warn("skipped unreadable retained message", "topic", topic, "err", err)
			return nil
		}
		out = append(out, m)
		return nil
	})
	if err != nil {
		return nil, errors.Join(errors.New("load retained messages"), err)
	}
	for _, topic := range stale {
		if err := h.st.DeleteRetained(topic); err != nil {
			return nil, fmt.Errorf("delete retained message %s: %w", topic, err)
		}
	}
	if len(stale) > 0 {
		h.Log.Warn("deleted retained messages no configured worker may publish", "count", len(stale))
	}
	return out, nil
}

// retainable returns the topics some configured worker may publish, or nil when no worker is configured (then
// anonymous clients on loopback may use any name).
func (s *Server) retainable() map[string]bool {
	workers := s.acc.Load().Workers
	if len(workers) == 0 {
		return nil
	}
	all := map[string]bool{}
	for name := range workers {
		id := &identity{name: name}
		id.workerRights(s.opts.Domains)
		for t := range id.pub {
			all[t] = true
		}
	}
	return all
}
