package worker

import "github.com/eclipse/paho.golang/paho"

// pinger is the MQTT keepalive: paho's DefaultPinger, except that after a PINGREQ any packet from the server shows
// the link alive, not only the PINGRESP. The server writes its PINGRESP behind everything it queued for the worker
// before, so a worker still reading a burst of keys one keepalive after its PINGREQ (20,000 registrations on a
// busy gateway) would drop a working connection, and with it every key still queued for it on the server. A link
// on which nothing arrives for a keepalive after a PINGREQ is dead, as before.
type pinger struct{ *paho.DefaultPinger }

func newPinger() pinger { return pinger{paho.NewDefaultPinger()} }

// PacketReceived implements paho.Pinger; paho calls it for every packet, the PINGRESP included.
func (p pinger) PacketReceived() {
	p.DefaultPinger.PacketReceived()
	p.DefaultPinger.PingResp()
}

// PingResp implements paho.Pinger: PacketReceived has counted it already.
func (p pinger) PingResp() {}
