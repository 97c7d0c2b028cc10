package brokerd

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/mqttc"
)

// dialServer prepares the client of broker.mqtt_server. The broker's name among the others is its client id,
// wgkex-broker-<hostname> unless configured. Its liveness is a retained 1 on wgkex/broker/{id}/status, 0 as its
// will. After every connect it signals catchUp.
func dialServer(s config.MQTTServer, log *slog.Logger, catchUp chan<- struct{}) (*mqttc.Client, string, error) {
	if s.ClientID == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, "", fmt.Errorf("hostname for broker.mqtt_server.client_id: %w", err)
		}
		s.ClientID = "wgkex-broker-" + host
	}
	id := s.ClientID
	c, err := mqttc.New(log, mqttc.Options{
		Server:    s,
		Will:      &mqttc.Message{Topic: wire.BrokerStatusTopic(id), Payload: []byte("0"), QoS: 1, Retain: true},
		Hello:     &mqttc.Message{Topic: wire.BrokerStatusTopic(id), Payload: []byte("1"), QoS: 1, Retain: true},
		SyncTopic: wire.BrokerSyncTopic(id),
		OnUp: func() {
			select {
			case catchUp <- struct{}{}:
			default:
			}
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
func catchUpLoop(ctx context.Context, b *broker.Broker, connected <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-connected:
			b.CatchUp(ctx)
		}
	}
}
