package brokerd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// catchupMargin is how long before a lost connection was noticed a reconnected broker asks for keys: the loss is
// noticed up to 1.5 keepalives late, and the brokers' clocks may differ a little.
const catchupMargin = 2 * time.Minute

// dialServer prepares the client of broker.mqtt_server. The broker's name among the others is its client id,
// wgkex-broker-<hostname> unless configured. Its liveness is a retained 1 on wgkex/broker/{id}/status, 0 as its
// will. After every connect it sends catchUp the time from which keys may have been missed: zero (the whole
// replay window) after the start, shortly before the connection was lost after a reconnect. It tells the broker
// *b (set before the client serves) when the connection comes up and goes down.
func dialServer(s config.MQTTServer, log *slog.Logger, catchUp chan<- time.Time, b **broker.Broker) (*mqttclient.Client, string, error) {
	if s.ClientID == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, "", fmt.Errorf("hostname for broker.mqtt_server.client_id: %w", err)
		}
		s.ClientID = "wgkex-broker-" + host
	}
	id := s.ClientID
	var down atomic.Int64 // Unix nanoseconds of the last lost connection, 0 before any
	c, err := mqttclient.New(log, mqttclient.Options{
		Server:    serverOptions(s),
		Will:      &mqttclient.Message{Topic: wire.BrokerStatusTopic(id), Payload: []byte("0"), QoS: 1, Retain: true},
		Hello:     &mqttclient.Message{Topic: wire.BrokerStatusTopic(id), Payload: []byte("1"), QoS: 1, Retain: true},
		SyncTopic: wire.BrokerSyncTopic(id),
		OnUp: func() {
			(*b).MQTTUp()
			var since time.Time
			if n := down.Load(); n != 0 {
				since = time.Unix(0, n).Add(-catchupMargin)
			}
			select {
			case catchUp <- since:
			default:
			}
		},
		OnDown: func() {
			down.Store(time.Now().UnixNano())
			(*b).MQTTDown()
		},
	})
	return c, id, err
}

// clusterHandlers are the subscriptions of a broker among others on one MQTT server: replay requests shared so
// that exactly one broker answers each, every key any broker publishes, the other brokers' choices and liveness,
// and the catch-up requests and answers meant for this one.
func clusterHandlers(b *broker.Broker, id string) map[string]func(string, []byte) {
	return map[string]func(string, []byte){
		wire.SharedGroup + wire.ReplayRequestFilter: b.HandleClusterReplayRequest,
		wire.KeyAllFilter:            b.HandlePeerKey,
		wire.ChoiceFilter:            b.HandlePeerChoice,
		wire.BrokerStatusFilter:      b.HandleBrokerStatus,
		wire.CatchupRequestTopic(id): b.HandleCatchupRequest,
		wire.CatchupKeysTopic(id):    b.HandleCatchupBatch,
	}
}

// catchUpLoop runs a catch-up after every connect to the MQTT server, one at a time.
func catchUpLoop(ctx context.Context, b *broker.Broker, connected <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case since := <-connected:
			b.CatchUp(ctx, since)
		}
	}
}
