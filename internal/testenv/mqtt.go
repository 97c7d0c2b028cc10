package testenv

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mpackets "github.com/mochi-mqtt/server/v2/packets"
)

// Message is one MQTT message a test client received.
type Message struct {
	Topic   string
	Payload string
	Retain  bool
}

// Client is a plain MQTT v5 client (eclipse paho) for tests, recording what it receives.
type Client struct {
	id   string
	c    *paho.Client
	mu   sync.Mutex
	msgs []Message
}

// ClientOptions are the optional parts of a test connection.
type ClientOptions struct {
	Username, Password string
	Will               *paho.WillMessage
	KeepAlive          uint16
	// Dial opens the connection (default: net.Dial from the test's own namespace).
	Dial func(network, addr string) (net.Conn, error)
}

// Connect dials addr and connects as id, failing the test on error. The client disconnects at cleanup.
func Connect(t testing.TB, addr, id string, o ClientOptions) *Client {
	t.Helper()
	c, err := Dial(addr, id, o)
	if err != nil {
		t.Fatalf("mqtt connect %s as %s: %v", addr, id, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Dial is Connect returning the error.
func Dial(addr, id string, o ClientOptions) (*Client, error) {
	dial := o.Dial
	if dial == nil {
		dial = func(network, addr string) (net.Conn, error) { return net.DialTimeout(network, addr, 5*time.Second) }
	}
	conn, err := dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := &Client{id: id}
	tc.c = paho.NewClient(paho.ClientConfig{
		// paho writes a packet in several writes, and its pinger writes from a goroutine of its own: over TLS
		// (no writev) a PINGREQ could land inside a PUBLISH without the lock (autopaho's dialer adds it too).
		Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			tc.mu.Lock()
			tc.msgs = append(tc.msgs, Message{Topic: pr.Packet.Topic, Payload: string(pr.Packet.Payload), Retain: pr.Packet.Retain})
			tc.mu.Unlock()
			return true, nil
		}},
	})
	ka := o.KeepAlive
	if ka == 0 {
		ka = 30
	}
	cp := &paho.Connect{ClientID: id, KeepAlive: ka, CleanStart: true, WillMessage: o.Will}
	if o.Username != "" {
		cp.Username, cp.UsernameFlag = o.Username, true
		cp.Password, cp.PasswordFlag = []byte(o.Password), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := tc.c.Connect(ctx, cp); err != nil {
		conn.Close()
		return nil, err
	}
	return tc, nil
}

// Subscribe subscribes at QoS 1.
func (c *Client) Subscribe(t testing.TB, filters ...string) {
	t.Helper()
	if err := c.TrySubscribe(filters...); err != nil {
		t.Fatalf("subscribe %v: %v", filters, err)
	}
}

// TrySubscribe subscribes at QoS 1 and returns the error, also a refusal by the server.
func (c *Client) TrySubscribe(filters ...string) error {
	s := &paho.Subscribe{}
	for _, f := range filters {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{Topic: f, QoS: 1, RetainAsPublished: true})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.c.Subscribe(ctx, s)
	return err
}

// Publish publishes and waits for the acknowledgement at QoS 1.
func (c *Client) Publish(t testing.TB, topic, payload string, qos byte, retain bool) {
	t.Helper()
	if err := c.TryPublish(topic, payload, qos, retain); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// TryPublish publishes, waits for the acknowledgement at QoS 1 and returns the error, also a refusal.
func (c *Client) TryPublish(topic, payload string, qos byte, retain bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.c.Publish(ctx, &paho.Publish{Topic: topic, Payload: []byte(payload), QoS: qos, Retain: retain})
	return err
}

// Messages returns what the client has received so far.
func (c *Client) Messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Message(nil), c.msgs...)
}

// WaitFor polls until a message on topic has arrived and returns the last one.
func (c *Client) WaitFor(t testing.TB, topic string) Message {
	t.Helper()
	var m Message
	Eventually(t, 10*time.Second, func() bool {
		for _, x := range c.Messages() {
			if x.Topic == topic {
				m = x
			}
		}
		return m.Topic != ""
	}, "no message on %s", topic)
	return m
}

// WaitOnly waits for a message on topic like WaitFor, then fails the test for every message the client has
// received on another topic.
func (c *Client) WaitOnly(t testing.TB, topic string) {
	t.Helper()
	c.WaitFor(t, topic)
	for _, m := range c.Messages() {
		if m.Topic != topic {
			t.Errorf("%s received a message on %s, want only %s", c.id, m.Topic, topic)
		}
	}
}

// Close disconnects cleanly (the will is not sent).
func (c *Client) Close() {
	_ = c.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
}

// Drop sends DISCONNECT with reason 0x04 (disconnect with will message), so that the server sends the will.
func (c *Client) Drop() {
	_ = c.c.Disconnect(&paho.Disconnect{ReasonCode: 4})
}

// ConnectPacket encodes a CONNECT of MQTT version v (4: 3.1.1, 5) with a username and password, for tests that
// speak MQTT on a raw connection.
func ConnectPacket(t testing.TB, v byte, id, user, pass string) []byte {
	t.Helper()
	pk := mpackets.Packet{FixedHeader: mpackets.FixedHeader{Type: mpackets.Connect}, ProtocolVersion: v,
		Connect: mpackets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(pass)}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
