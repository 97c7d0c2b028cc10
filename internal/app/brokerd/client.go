package brokerd

import (
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
)

// serverOptions maps broker.mqtt_server to the connection of the broker's MQTT client. Config.Validate has read
// its URL already. The server drops messages over mqttclient.MaxPacket (a gateway may publish megabytes on its own
// topics, which the broker subscribes to) instead of sending them.
func serverOptions(s config.MQTTServer) mqttclient.Server {
	return mqttclient.Server{
		Addr: s.URL,
		Files: tlsfiles.Client{Keys: "broker.mqtt_server.", CAFile: s.CAFile, ServerName: s.ServerName,
			CertFile: s.CertFile, KeyFile: s.KeyFile},
		Username: s.Username, Password: s.Password,
		ClientID:  s.ClientID,
		Keepalive: s.Keepalive,
		MaxPacket: mqttclient.MaxPacket,
	}
}
