package brokerd

import (
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
)

// maxPacket is the maximum packet size the broker's client of broker.mqtt_server announces: ten times the largest
// message wgkex sends (a catch-up batch of 1000 keys). The server drops larger messages (a gateway may publish
// megabytes on its own topics, which the broker subscribes to) instead of sending them.
const maxPacket = 1 << 20

// serverOptions maps broker.mqtt_server to the connection of the broker's MQTT client. Config.Validate has read
// its URL already.
func serverOptions(s config.MQTTServer) mqttclient.Server {
	return mqttclient.Server{
		Addr: s.URL,
		Files: tlsfiles.Client{Keys: "broker.mqtt_server.", CAFile: s.CAFile, ServerName: s.ServerName,
			CertFile: s.CertFile, KeyFile: s.KeyFile},
		Username: s.Username, Password: s.Password,
		ClientID:  s.ClientID,
		Keepalive: s.Keepalive,
		MaxPacket: maxPacket,
	}
}
