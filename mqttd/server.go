// Package mqttd is the broker's embedded MQTT server (mochi-mqtt v2): its TCP and TLS listeners, the password
// check, persistence of retained messages, and the inline client through which the broker publishes and
// subscribes. It is the only package that imports mochi.
package mqttd

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/freifunkMUC/wgkex-go/internal/config"
)

// RetainStore keeps retained messages across restarts. The messages are opaque to it.
type RetainStore interface {
	PutRetained(topic string, msg []byte) error
	DeleteRetained(topic string) error
	Retained(fn func(topic string, msg []byte) error) error
}

// Options configure a Server.
type Options struct {
	Listeners []config.MQTTListener
	// Username and Password, when Username is not empty, are the only credentials accepted.
	Username, Password string
	// Retained persists retained messages; nil keeps them in memory only.
	Retained RetainStore
}

// Server is the embedded MQTT server.
type Server struct {
	srv       *mqtt.Server
	log       *slog.Logger
	listeners []*listeners.TCP
	subID     int
	// closing is set before the server disconnects its clients on shutdown, so that their last wills, fired by
	// our own shutdown, do not mark every worker offline in the broker's state.
	closing atomic.Bool
}

// New creates the server and opens its listeners; Serve starts accepting clients.
func New(log *slog.Logger, opts Options) (*Server, error) {
	caps := mqtt.NewDefaultServerCapabilities()
	// mochi deletes retained messages older than this (default 24 h), which would drop every worker's endpoint
	// a day after it connected. 0 means never.
	caps.MaximumMessageExpiryInterval = 0
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: log, Capabilities: caps})
	s := &Server{srv: srv, log: log}
	if err := srv.AddHook(&authHook{user: opts.Username, pass: opts.Password}, nil); err != nil {
		return nil, fmt.Errorf("add auth hook: %w", err)
	}
	if opts.Retained != nil {
		if err := srv.AddHook(&retainHook{st: opts.Retained, s: s}, nil); err != nil {
			return nil, fmt.Errorf("add retain hook: %w", err)
		}
	}
	if opts.Username == "" {
		log.Warn("mqtt accepts clients without password: set mqtt.username and mqtt.password for production")
	}
	for i, lc := range opts.Listeners {
		var tc *tls.Config
		if lc.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(lc.CertFile, lc.KeyFile)
			if err != nil {
				s.closeListeners()
				return nil, fmt.Errorf("mqtt listener %s: load certificate: %w", lc.Address, err)
			}
			tc = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		l := listeners.NewTCP(listeners.Config{ID: "tcp" + strconv.Itoa(i), Address: lc.Address, TLSConfig: tc})
		if err := srv.AddListener(l); err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("mqtt listener %s: %w", lc.Address, err)
		}
		s.listeners = append(s.listeners, l)
	}
	return s, nil
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.Close(func(string) {})
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

// Publish sends a message from the inline client.
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
	return s.srv.Close()
}

// authHook accepts the configured username and password, or anyone when no username is configured.
type authHook struct {
	mqtt.HookBase
	user, pass string
}

func (h *authHook) ID() string { return "wgkex-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	if h.user == "" {
		return true
	}
	u := subtle.ConstantTimeCompare(pk.Connect.Username, []byte(h.user))
	p := subtle.ConstantTimeCompare(pk.Connect.Password, []byte(h.pass))
	if u&p != 1 {
		h.Log.Warn("mqtt client refused: wrong username or password", "client", cl.ID, "remote", cl.Net.Remote)
		return false
	}
	return true
}

func (h *authHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

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

func (h *retainHook) StoredRetainedMessages() ([]storage.Message, error) {
	var out []storage.Message
	err := h.st.Retained(func(topic string, b []byte) error {
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
	return out, nil
}
