package brokerd

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/broker/cluster"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
)

// link tells the broker and its cluster side when the connection to broker.mqtt_server comes up and goes down.
// Its fields are set before the client serves.
type link struct {
	b *broker.Broker
	c *cluster.Cluster
}

// dialServer prepares the client of broker.mqtt_server. The broker's name among the others is its client id,
// wgkex-broker-<hostname> unless configured. Its liveness is a retained 1 on wgkex/broker/{id}/status, 0 as its
// will.
func dialServer(s config.MQTTServer, log *slog.Logger, l *link) (*mqttclient.Client, string, error) {
	if s.ClientID == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, "", fmt.Errorf("hostname for broker.mqtt_server.client_id: %w", err)
		}
		s.ClientID = "wgkex-broker-" + host
	}
	id := s.ClientID
	c, err := mqttclient.New(log, mqttclient.Options{
		Server:    serverOptions(s),
		Will:      &mqttclient.Message{Topic: cluster.BrokerStatusTopic(id), Payload: []byte("0"), QoS: 1, Retain: true},
		Hello:     &mqttclient.Message{Topic: cluster.BrokerStatusTopic(id), Payload: []byte("1"), QoS: 1, Retain: true},
		SyncTopic: cluster.BrokerSyncTopic(id),
		OnUp: func() {
			l.b.MQTTUp()
			l.c.Up()
		},
		OnDown: func() {
			l.c.Down()
			l.b.MQTTDown()
		},
	})
	return c, id, err
}
