// Package mqttc connects the broker to an existing MQTT server (Mosquitto) as an MQTT 5 client, with the same
// library as the worker (eclipse paho autopaho). It offers what the embedded server (mqttd) offers the broker:
// Handle, Publish, Serve, Close, Addrs. It reconnects forever and subscribes again after every connect.
package mqttc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/tlsfiles"
)

// publishTimeout bounds a publish; a QoS 1 publish waits for the server's acknowledgement.
const publishTimeout = 5 * time.Second

// closeTimeout bounds the farewell and the disconnect at Close.
const closeTimeout = 2 * time.Second

// maxPacket is the maximum packet size the client announces: ten times the largest message wgkex sends (a
// catch-up batch of 1000 keys). The server drops larger messages instead of sending them.
const maxPacket = 1 << 20

// maxQueued bounds the QoS 1 messages kept while the connection is down.
const maxQueued = 100_000

// ErrNotConnected is returned by Publish while the connection is down.
var ErrNotConnected = errors.New("not connected to the mqtt server")

// Message is a last will or a message published on every connect.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Options configure a Client.
type Options struct {
	// Server is where to connect and how to log in. Server.ClientID must be set.
	Server config.MQTTServer
	// Will is published by the server when the connection breaks.
	Will *Message
	// Hello is published after every connect, once the subscriptions are in place (e.g. a retained "online").
	Hello *Message
	// OnUp runs after every connect, after Hello, on its own goroutine.
	OnUp func()
	// OnDown runs when an established connection is lost.
	OnDown func()
	// SyncTopic is a topic only this client publishes to, for Sync. Empty: Sync waits for nothing.
	SyncTopic string
}

type handler struct {
	filter  string
	pattern []string // filter levels without $share/<group>/
	fn      func(topic string, payload []byte)
	echo    bool // also the client's own messages (no No Local)
}

// Client is a connection to an external MQTT server. It is safe for concurrent use.
type Client struct {
	log      *slog.Logger
	opts     Options
	url      *url.URL
	cfg      autopaho.ClientConfig
	handlers []handler

	mu     sync.Mutex
	cm     *autopaho.ConnectionManager
	cancel context.CancelFunc
	up     bool
	queue  []Message // QoS 1 messages published while the connection was down, oldest first

	sync syncer
}

// New checks the options and prepares the connection; Serve connects.
func New(log *slog.Logger, opts Options) (*Client, error) {
	s := opts.Server
	u, err := url.Parse(s.URL)
	if err != nil {
		return nil, fmt.Errorf("mqtt server url: %w", err)
	}
	tlsOn := false
	switch u.Scheme {
	case "mqtt", "tcp":
		u.Scheme = "mqtt"
	case "tls", "ssl", "mqtts":
		u.Scheme, tlsOn = "tls", true
	default:
		return nil, fmt.Errorf("mqtt server url %q: scheme is not mqtt or tls", s.URL)
	}
	if u.Port() == "" {
		port := "1883"
		if tlsOn {
			port = "8883"
		}
		u.Host += ":" + port
	}
	if s.ClientID == "" {
		return nil, errors.New("mqtt server: empty client id")
	}
	c := &Client{log: log, opts: opts, url: &url.URL{Scheme: u.Scheme, Host: u.Host}}
	if opts.SyncTopic != "" {
		p, err := parseFilter(opts.SyncTopic)
		if err != nil {
			return nil, err
		}
		c.handlers = append(c.handlers, handler{filter: opts.SyncTopic, pattern: p, fn: c.handleSync, echo: true})
	}
	c.cfg = autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{c.url},
		KeepAlive:                     uint16(s.Keepalive),
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                10 * time.Second,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(500*time.Millisecond, 30*time.Second, time.Second, 2),
		OnConnectionUp:                func(cm *autopaho.ConnectionManager, _ *paho.Connack) { go c.connected(cm) },
		OnConnectionDown: func() bool {
			c.setUp(false)
			if opts.OnDown != nil {
				opts.OnDown()
			}
			c.log.Warn("mqtt connection lost, reconnecting", "server", c.url.String())
			return true
		},
		OnConnectError: func(err error) { c.log.Warn("mqtt connect failed, retrying", "server", c.url.String(), "err", err) },
		ConnectPacketBuilder: func(p *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if p.Properties == nil {
				p.Properties = &paho.ConnectProperties{}
			}
			p.Properties.MaximumPacketSize = new(uint32(maxPacket))
			return p, nil
		},
		ClientConfig: paho.ClientConfig{
			ClientID: s.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				c.dispatch(pr.Packet.Topic, pr.Packet.Payload)
				return true, nil
			}},
			OnClientError: func(err error) { c.log.Warn("mqtt client error", "err", err) },
		},
	}
	if tlsOn {
		files := tlsfiles.Client{Keys: "broker.mqtt_server.", CAFile: s.CAFile, ServerName: s.ServerName,
			CertFile: s.CertFile, KeyFile: s.KeyFile}
		if c.cfg.TlsCfg, err = files.Config(); err != nil {
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
// ($share/<group>/<filter>): the server then hands each message to one member of the group. The broker never
// receives its own publications (MQTT 5 No Local), except on shared subscriptions, where the protocol forbids
// No Local. Handlers run one at a time, in the order the messages arrive. Call Handle before Serve.
func (c *Client) Handle(filter string, fn func(topic string, payload []byte)) error {
	p, err := parseFilter(filter)
	if err != nil {
		return err
	}
	c.handlers = append(c.handlers, handler{filter: filter, pattern: p, fn: fn})
	return nil
}

// Serve starts connecting in the background and returns at once: the broker starts even while the server is
// unreachable, and keeps trying.
func (c *Client) Serve() error {
	ctx, cancel := context.WithCancel(context.Background())
	cm, err := autopaho.NewConnection(ctx, c.cfg)
	if err != nil {
		cancel()
		return fmt.Errorf("mqtt: %w", err)
	}
	c.mu.Lock()
	c.cm, c.cancel = cm, cancel
	c.mu.Unlock()
	c.log.Info("connecting to mqtt server", "server", c.url.String(), "client_id", c.opts.Server.ClientID)
	return nil
}

// connected subscribes every handler, then publishes Hello and runs OnUp.
func (c *Client) connected(cm *autopaho.ConnectionManager) {
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	sub := &paho.Subscribe{}
	for _, h := range c.handlers {
		shared := strings.HasPrefix(h.filter, "$share/")
		sub.Subscriptions = append(sub.Subscriptions, paho.SubscribeOptions{Topic: h.filter, QoS: 1, NoLocal: !shared && !h.echo})
	}
	if len(sub.Subscriptions) > 0 {
		ack, err := cm.Subscribe(ctx, sub)
		if err == nil {
			for i, rc := range ack.Reasons {
				if rc >= 0x80 {
					err = errors.Join(err, fmt.Errorf("subscription %s refused (reason %#x)", sub.Subscriptions[i].Topic, rc))
				}
			}
		}
		if err != nil {
			c.log.Error("mqtt subscribe failed, reconnecting", "err", err)
			_ = cm.Disconnect(ctx)
			return
		}
	}
	if h := c.opts.Hello; h != nil {
		if _, err := cm.Publish(ctx, &paho.Publish{Topic: h.Topic, Payload: h.Payload, QoS: h.QoS, Retain: h.Retain}); err != nil {
			c.log.Warn("mqtt hello publish failed", "topic", h.Topic, "err", err)
		}
	}
	if !c.flush(cm) {
		return
	}
	c.log.Info("mqtt connected", "server", c.url.String())
	if c.opts.OnUp != nil {
		c.opts.OnUp()
	}
}

// flush publishes the messages queued while the connection was down, then marks the connection up; messages
// published meanwhile join the queue, so none is left behind. It reports false if the connection broke again.
func (c *Client) flush(cm *autopaho.ConnectionManager) bool {
	sent := 0
	for {
		c.mu.Lock()
		q := c.queue
		c.queue = nil
		if len(q) == 0 {
			c.up = true
			c.mu.Unlock()
			if sent > 0 {
				c.log.Info("mqtt messages queued while disconnected sent", "count", sent)
			}
			return true
		}
		c.mu.Unlock()
		for i, m := range q {
			ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
			_, err := cm.Publish(ctx, &paho.Publish{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain})
			cancel()
			if err != nil {
				c.mu.Lock()
				c.queue = append(q[i:], c.queue...)
				c.mu.Unlock()
				c.log.Warn("mqtt queued messages not sent, keeping them", "left", len(q)-i, "err", err)
				return false
			}
			sent++
		}
	}
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

func (c *Client) setUp(up bool) {
	c.mu.Lock()
	c.up = up
	c.mu.Unlock()
}

// Connected reports whether the connection is up and subscribed.
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

// Publish sends a message; at QoS 1 it waits for the server's acknowledgement (at most 5 s). While the
// connection is down a QoS 1 message is kept (up to 100,000) and sent after the next connect, in order; a QoS 0
// message fails with ErrNotConnected.
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
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	if _, err := cm.Publish(ctx, &paho.Publish{Topic: topic, Payload: payload, QoS: qos, Retain: retain}); err != nil {
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

// Close publishes the will's payload on its topic (so that the others see a clean shutdown at once), disconnects
// and stops reconnecting. Closing twice is harmless.
func (c *Client) Close() error {
	c.mu.Lock()
	cm, cancel := c.cm, c.cancel
	c.cm, c.cancel = nil, nil
	c.mu.Unlock()
	if cm == nil {
		return nil
	}
	defer cancel()
	if !c.Connected() {
		return nil // nothing to say goodbye to; cancel stops the reconnecting
	}
	// Farewell and disconnect share a short deadline, so that a server gone at the same moment (both stopped
	// together) does not hold up the broker's shutdown.
	ctx, stop := context.WithTimeout(context.Background(), closeTimeout)
	defer stop()
	if w := c.opts.Will; w != nil {
		if _, err := cm.Publish(ctx, &paho.Publish{Topic: w.Topic, Payload: w.Payload, QoS: w.QoS, Retain: w.Retain}); err != nil {
			c.log.Warn("mqtt farewell publish failed", "topic", w.Topic, "err", err)
		}
	}
	c.setUp(false)
	if err := cm.Disconnect(ctx); err != nil && !errors.Is(err, autopaho.ConnectionDownError) {
		return fmt.Errorf("mqtt disconnect: %w", err)
	}
	return nil
}
