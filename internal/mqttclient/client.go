// Package mqttclient is the one MQTT 5 client of wgkex, over eclipse paho's autopaho: the worker's connection
// to its MQTT server and the broker's connection to an existing server (Mosquitto) instead of the embedded one.
// A Client reconnects forever with a backoff, subscribes its handlers again after every connect and runs the
// user's setup (retried while the connection lasts), dispatches messages to its handlers by topic filter,
// publishes with a timeout, and says goodbye at Close. For the broker it offers what the embedded server (mqttd)
// offers: Handle, Publish, Serve, Close, Addrs.
package mqttclient

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
)

// publishTimeout bounds a publish; a QoS 1 publish waits for the server's acknowledgement.
const publishTimeout = 5 * time.Second

// closeTimeout bounds the farewell and the disconnect at Close unless Options.CloseTimeout says otherwise.
const closeTimeout = 2 * time.Second

// maxSetupDelay caps the doubling wait before the connection setup is tried again.
const maxSetupDelay = 30 * time.Second

// MaxPacket is the maximum packet size wgkex's clients announce (Server.MaxPacket): ten times the largest message
// wgkex sends (a replay batch of 1000 keys). The server drops larger messages instead of sending them, so that
// nobody who may publish on a topic the client reads can make it read megabytes.
const MaxPacket = 1 << 20

// maxQueued bounds the QoS 1 messages kept while the connection is down.
const maxQueued = 100_000

// ErrNotConnected is returned by Publish and Send while the connection is down.
var ErrNotConnected = errors.New("not connected to the mqtt server")

// Message is a last will, a message published on every connect or a farewell.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Server is where a Client connects and what its CONNECT says.
type Server struct {
	// Addr, Port and TLS name the server as ServerURL reads them.
	Addr string
	Port int
	TLS  bool
	// Files are the CA, the server name and the client certificate of a TLS connection.
	Files tlsfiles.Client
	// Username and Password log in; an empty Username sends neither.
	Username, Password string
	// ClientID must be set.
	ClientID string
	// Keepalive is the MQTT keepalive in seconds.
	Keepalive int
	// SessionExpiry keeps the session on the server for so long after the connection ends; 0 ends it with the
	// connection.
	SessionExpiry time.Duration
	// MaxPacket is the maximum packet size announced to the server, which drops larger messages instead of
	// sending them; 0 announces none.
	MaxPacket uint32
}

// Backoff is how long a Client waits between attempts to connect: from Min (with up to Jitter more at first)
// doubling up to Max.
type Backoff struct{ Min, Max, Jitter time.Duration }

// Options configure a Client.
type Options struct {
	Server Server
	// Backoff defaults to 0.5 s doubling to 30 s with up to 1 s of jitter.
	Backoff Backoff
	// Pinger replaces paho's keepalive (paho.DefaultPinger).
	Pinger paho.Pinger
	// Will is published by the server when the connection breaks; Close publishes it itself.
	Will *Message
	// WillOnClose disconnects at Close with reason 0x04 (disconnect with will message), so that the server
	// publishes the will after a clean stop too.
	WillOnClose bool
	// Farewell returns what Close publishes before the will's payload.
	Farewell func() []Message
	// CloseTimeout bounds the farewell and the disconnect (default 2 s).
	CloseTimeout time.Duration
	// Echo lets every subscription receive the client's own messages too. Without it only shared subscriptions
	// (where the protocol forbids No Local) and the sync topic do (MQTT 5 No Local).
	Echo bool
	// Hello is published after every connect, once the subscriptions are in place (e.g. a retained "online").
	Hello *Message
	// Setup runs after every connect, once the subscriptions are in place and Hello is sent, on a goroutine of
	// its own that Close waits for. If it (or a subscription) fails, the subscriptions, Hello and Setup are tried
	// again after a doubling delay (1 s to 30 s), each being idempotent, for as long as the connection lasts.
	// ctx is the same for every try on one connection and ends when that connection is lost or the client
	// closes.
	Setup func(ctx context.Context) error
	// OnUp runs after every connect once it is set up and the messages queued meanwhile are sent.
	OnUp func()
	// OnDown runs when an established connection is lost.
	OnDown func()
	// OnConnectError runs when an attempt to connect fails; the client logs it too.
	OnConnectError func(error)
	// SyncTopic is a topic only this client publishes to, for Sync. Empty: Sync waits for nothing.
	SyncTopic string
}

type handler struct {
	filter  string
	pattern []string // filter levels without $share/<group>/
	fn      func(topic string, payload []byte)
	echo    bool // also the client's own messages (no No Local)
}

// Client is a connection to an MQTT server. It is safe for concurrent use.
type Client struct {
	log      *slog.Logger
	opts     Options
	url      *url.URL
	cfg      autopaho.ClientConfig
	handlers []handler

	mu      sync.Mutex
	cm      *autopaho.ConnectionManager
	cancel  context.CancelFunc // stops the connection manager
	conn    context.CancelFunc // ends the current connection's setup
	closing bool
	up      bool
	queue   []Message // QoS 1 messages published while the connection was down, oldest first
	setups  sync.WaitGroup
	rounds  sync.WaitGroup // the goroutines of Sync's rounds

	sync syncer
}

// New checks the options and prepares the connection; Serve connects.
func New(log *slog.Logger, opts Options) (*Client, error) {
	s := opts.Server
	u, err := ServerURL(s.Addr, s.Port, s.TLS)
	if err != nil {
		return nil, fmt.Errorf("mqtt server: %w", err)
	}
	if s.ClientID == "" {
		return nil, errors.New("mqtt server: empty client id")
	}
	c := &Client{log: log, opts: opts, url: u}
	if opts.SyncTopic != "" {
		p, err := parseFilter(opts.SyncTopic)
		if err != nil {
			return nil, err
		}
		c.handlers = append(c.handlers, handler{filter: opts.SyncTopic, pattern: p, fn: c.handleSync, echo: true})
	}
	b := opts.Backoff
	if b == (Backoff{}) {
		b = Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second, Jitter: time.Second}
	}
	c.cfg = autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{c.url},
		KeepAlive:                     uint16(s.Keepalive),
		CleanStartOnInitialConnection: true,
		SessionExpiryInterval:         uint32(s.SessionExpiry / time.Second),
		ConnectTimeout:                10 * time.Second,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(b.Min, b.Max, b.Jitter, 2),
		OnConnectionUp:                func(cm *autopaho.ConnectionManager, _ *paho.Connack) { c.connected(cm) },
		OnConnectionDown: func() bool {
			c.mu.Lock()
			c.up = false
			if c.conn != nil {
				c.conn()
				c.conn = nil
			}
			c.mu.Unlock()
			if opts.OnDown != nil {
				opts.OnDown()
			}
			c.log.Warn("mqtt connection lost, reconnecting", "server", c.url.String())
			return true
		},
		OnConnectError: func(err error) {
			if opts.OnConnectError != nil {
				opts.OnConnectError(err)
			}
			c.log.Warn("mqtt connect failed, retrying", "server", c.url.String(), "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID:    s.ClientID,
			PingHandler: opts.Pinger,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				c.dispatch(pr.Packet.Topic, pr.Packet.Payload)
				return true, nil
			}},
			OnClientError: func(err error) { c.log.Warn("mqtt client error", "err", err) },
		},
	}
	// Reads through a buffer; packets written at the same time go out together (batchConn).
	c.cfg.AttemptConnection = func(ctx context.Context, cfg autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
		defer cancel()
		return dialServer(ctx, u, cfg.TlsCfg)
	}
	if s.MaxPacket > 0 {
		c.cfg.ConnectPacketBuilder = func(p *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if p.Properties == nil {
				p.Properties = &paho.ConnectProperties{}
			}
			p.Properties.MaximumPacketSize = new(s.MaxPacket)
			return p, nil
		}
	}
	if opts.WillOnClose {
		c.cfg.DisconnectPacketBuilder = func() *paho.Disconnect { return &paho.Disconnect{ReasonCode: 0x04} }
	}
	if u.Scheme == "tls" {
		if c.cfg.TlsCfg, err = s.Files.Config(); err != nil {
			return nil, err
		}
	}
	if s.Username != "" {
		c.cfg.ConnectUsername, c.cfg.ConnectPassword = s.Username, []byte(s.Password)
	}
	if w := opts.Will; w != nil {
		c.cfg.WillMessage = &paho.WillMessage{Topic: w.Topic, Payload: w.Payload, QoS: w.QoS, Retain: w.Retain}
	}
	return c, nil
}

// Handle subscribes fn to filter (QoS 1) on every connection. A filter may be a shared subscription
// ($share/<group>/<filter>): the server then hands each message to one member of the group. Unless Options.Echo
// is set, the client never receives its own publications (MQTT 5 No Local), except on shared subscriptions,
// where the protocol forbids No Local. Handlers run one at a time, in the order the messages arrive; a message
// goes to every handler whose filter matches it. Call Handle before Serve.
func (c *Client) Handle(filter string, fn func(topic string, payload []byte)) error {
	p, err := parseFilter(filter)
	if err != nil {
		return err
	}
	c.handlers = append(c.handlers, handler{filter: filter, pattern: p, fn: fn, echo: c.opts.Echo})
	return nil
}

// Serve starts connecting in the background and returns at once: the caller goes on while the server is
// unreachable, and the client keeps trying.
func (c *Client) Serve() error {
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.cancel = cancel
	c.mu.Unlock()
	cm, err := autopaho.NewConnection(ctx, c.cfg)
	if err != nil {
		cancel()
		return fmt.Errorf("mqtt: %w", err)
	}
	c.mu.Lock()
	c.cm = cm
	c.mu.Unlock()
	c.log.Info("connecting to mqtt server", "server", c.url.String(), "client_id", c.opts.Server.ClientID)
	return nil
}

// connected is autopaho's OnConnectionUp: the connection's setup runs on a goroutine of its own, with a
// context that ends with the connection.
func (c *Client) connected(cm *autopaho.ConnectionManager) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return // a reconnect during Close: nothing more is set up or said
	}
	c.cm = cm
	if c.conn != nil {
		c.conn()
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.conn = cancel
	c.setups.Add(1)
	go func() {
		defer c.setups.Done()
		defer cancel()
		c.setup(ctx, cm)
	}()
}

// setup subscribes every handler, publishes Hello, runs Options.Setup and sends the queued messages, starting
// over after a doubling delay when a step fails, for as long as the connection lasts. Then it marks the
// connection up and runs OnUp.
func (c *Client) setup(ctx context.Context, cm *autopaho.ConnectionManager) {
	for delay := time.Second; ; delay = min(2*delay, maxSetupDelay) {
		err := c.try(ctx, cm)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			break
		}
		c.log.Warn("mqtt connection setup failed, retrying", "in", delay, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
	c.log.Info("mqtt connected", "server", c.url.String())
	if c.opts.OnUp != nil {
		c.opts.OnUp()
	}
}

// try runs the steps of setup once.
func (c *Client) try(ctx context.Context, cm *autopaho.ConnectionManager) error {
	if err := c.subscribe(ctx, cm); err != nil {
		return err
	}
	if h := c.opts.Hello; h != nil {
		if err := c.send(ctx, cm, *h, true); err != nil {
			c.log.Warn("mqtt hello publish failed", "topic", h.Topic, "err", err)
		}
	}
	if c.opts.Setup != nil {
		if err := c.opts.Setup(ctx); err != nil {
			return err
		}
	}
	return c.flush(ctx, cm)
}

// subscribe subscribes every handler.
func (c *Client) subscribe(ctx context.Context, cm *autopaho.ConnectionManager) error {
	sub := &paho.Subscribe{}
	for _, h := range c.handlers {
		shared := strings.HasPrefix(h.filter, "$share/")
		sub.Subscriptions = append(sub.Subscriptions, paho.SubscribeOptions{Topic: h.filter, QoS: 1, NoLocal: !shared && !h.echo})
	}
	if len(sub.Subscriptions) == 0 {
		return nil
	}
	ack, err := cm.Subscribe(ctx, sub) // paho gives up after 10 s

	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	for i, rc := range ack.Reasons {
		if rc >= 0x80 {
			err = errors.Join(err, fmt.Errorf("subscription %s refused (reason %#x)", sub.Subscriptions[i].Topic, rc))
		}
	}
	return err
}

// flush publishes the messages queued while the connection was down, then marks the connection up; messages
// published meanwhile join the queue, so none is left behind.
func (c *Client) flush(ctx context.Context, cm *autopaho.ConnectionManager) error {
	sent := 0
	for {
		c.mu.Lock()
		q := c.queue
		c.queue = nil
		if len(q) == 0 {
			if ctx.Err() == nil {
				c.up = true
			}
			c.mu.Unlock()
			if sent > 0 {
				c.log.Info("mqtt messages queued while disconnected sent", "count", sent)
			}
			return nil
		}
		c.mu.Unlock()
		for i, m := range q {
			if err := c.send(ctx, cm, m, true); err != nil {
				c.mu.Lock()
				c.queue = append(q[i:], c.queue...)
				c.mu.Unlock()
				return fmt.Errorf("queued messages not sent, keeping %d: %w", len(q)-i, err)
			}
			sent++
		}
	}
}

// send publishes m on cm, waiting until ctx ends (paho gives up after 10 s), or at most publishTimeout if bounded.
func (c *Client) send(ctx context.Context, cm *autopaho.ConnectionManager, m Message, bounded bool) error {
	if bounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, publishTimeout)
		defer cancel()
	}
	_, err := cm.Publish(ctx, &paho.Publish{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain})
	return err
}

// enqueue keeps a QoS 1 message for the next connection; it reports false when the queue is full.
func (c *Client) enqueue(m Message) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) >= maxQueued {
		return false
	}
	c.queue = append(c.queue, m)
	return true
}

// Connected reports whether the connection is up and set up.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.up
}

// dispatch hands a message to every handler whose filter matches; a panic in one is logged.
func (c *Client) dispatch(topic string, payload []byte) {
	levels := strings.Split(topic, "/")
	for _, h := range c.handlers {
		if !match(h.pattern, levels) {
			continue
		}
		func() {
			defer func() {
				if r := recover(); r != nil {
					c.log.Error("mqtt handler panicked", "topic", topic, "panic", r)
				}
			}()
			h.fn(topic, payload)
		}()
	}
}

// Send publishes m on the current connection, set up or not, and at QoS 1 waits for the server's
// acknowledgement, until ctx ends or at most 10 s. Without a connection it fails with ErrNotConnected. Nothing is
// kept for a later connection.
func (c *Client) Send(ctx context.Context, m Message) error {
	c.mu.Lock()
	cm := c.cm
	c.mu.Unlock()
	if cm == nil {
		return fmt.Errorf("publish %s: %w", m.Topic, ErrNotConnected)
	}
	if err := c.send(ctx, cm, m, false); err != nil {
		if errors.Is(err, autopaho.ConnectionDownError) {
			err = ErrNotConnected
		}
		return fmt.Errorf("publish %s: %w", m.Topic, err)
	}
	return nil
}

// Publish sends a message; at QoS 1 it waits for the server's acknowledgement (at most 5 s). While the
// connection is down or not yet set up a QoS 1 message is kept (up to 100,000) and sent after the next connect,
// in order; a QoS 0 message fails with ErrNotConnected.
func (c *Client) Publish(topic string, payload []byte, retain bool, qos byte) error {
	m := Message{Topic: topic, Payload: payload, QoS: qos, Retain: retain}
	c.mu.Lock()
	cm, up := c.cm, c.up
	c.mu.Unlock()
	if cm == nil {
		return fmt.Errorf("publish %s: %w", topic, ErrNotConnected)
	}
	if !up {
		if qos > 0 && c.enqueue(m) {
			return nil
		}
		return fmt.Errorf("publish %s: %w", topic, ErrNotConnected)
	}
	if err := c.send(context.Background(), cm, m, true); err != nil {
		// Lost with the connection (not refused by the server): send it again after the next connect.
		if qos > 0 && !c.Connected() && c.enqueue(m) {
			return nil
		}
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Addrs returns the server's URL.
func (c *Client) Addrs() []string { return []string{c.url.String()} }

// Close says goodbye and stops: it ends the setup under way, publishes Options.Farewell and then the will's
// payload on its topic (so that the others see a clean shutdown at once), disconnects (reason 0x04 with
// Options.WillOnClose) and stops reconnecting, then waits for the setup, the rounds of Sync and the connection
// manager to return. Closing twice is harmless.
func (c *Client) Close() error {
	c.mu.Lock()
	cm, cancel, closing := c.cm, c.cancel, c.closing
	c.closing = true
	if c.conn != nil {
		c.conn()
		c.conn = nil
	}
	c.mu.Unlock()
	if closing {
		return nil
	}
	defer c.rounds.Wait()
	defer c.stopSync()
	if cancel == nil {
		return nil
	}
	defer c.setups.Wait()
	if cm != nil {
		defer func() { <-cm.Done() }()
	}
	defer cancel()
	if cm == nil {
		return nil // never connected: cancel stops the connecting
	}
	// Farewell and disconnect share a short deadline, so that a server gone at the same moment (both stopped
	// together) does not hold up the shutdown.
	ctx, stop := context.WithTimeout(context.Background(), cmp.Or(c.opts.CloseTimeout, closeTimeout))
	defer stop()
	var bye []Message
	if c.opts.Farewell != nil {
		bye = c.opts.Farewell()
	}
	if w := c.opts.Will; w != nil {
		bye = append(bye, *w)
	}
	for _, m := range bye {
		if _, err := cm.Publish(ctx, &paho.Publish{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain}); err != nil {
			if errors.Is(err, autopaho.ConnectionDownError) {
				break // nothing to say goodbye to
			}
			c.log.Warn("mqtt farewell publish failed", "topic", m.Topic, "err", err)
		}
	}
	c.mu.Lock()
	c.up = false
	c.mu.Unlock()
	if err := cm.Disconnect(ctx); err != nil && !errors.Is(err, autopaho.ConnectionDownError) {
		return fmt.Errorf("mqtt disconnect: %w", err)
	}
	return nil
}
