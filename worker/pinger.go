package worker

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho/log"
)

// errPingTimeout ends a connection on which nothing arrived for a keepalive interval after a PINGREQ.
var errPingTimeout = errors.New("mqtt: no packet from the server within one keepalive after PINGREQ")

// pinger is the MQTT keepalive: paho's DefaultPinger with one change. After a PINGREQ, any packet from the server
// shows the link alive, not only the PINGRESP. The server writes its PINGRESP behind everything it queued for the
// worker before, so a worker still reading a burst of keys one keepalive after its PINGREQ (20,000 registrations
// on a busy gateway) would drop a working connection, and with it every key still queued for it on the server.
// A link on which nothing arrives for a keepalive after a PINGREQ is dead, as before.
type pinger struct {
	mu                     sync.Mutex
	lastSent, lastReceived time.Time
}

// Run sends a PINGREQ whenever nothing was sent or nothing received for keepAlive seconds, until ctx ends or the
// link is found dead (the error). It may run again for the next connection.
func (p *pinger) Run(ctx context.Context, conn net.Conn, keepAlive uint16) error {
	if keepAlive == 0 {
		return nil
	}
	if conn == nil {
		return errors.New("mqtt pinger: no connection")
	}
	interval := time.Duration(keepAlive) * time.Second
	timer := time.NewTimer(0)
	defer timer.Stop()
	var pingSent time.Time
	errCh := make(chan error, 1)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errCh:
			return err
		case now := <-timer.C:
			p.mu.Lock()
			sent, received := p.lastSent, p.lastReceived
			p.mu.Unlock()
			if !pingSent.IsZero() && !received.After(pingSent) {
				return errPingTimeout
			}
			due := received.Add(interval)
			if sent.Before(received) {
				due = sent.Add(interval)
			}
			if now.Before(due) {
				timer.Reset(due.Sub(now))
				continue
			}
			pingSent = time.Now()
			go func() {
				if _, err := packets.NewControlPacket(packets.PINGREQ).WriteTo(conn); err != nil {
					select {
					case errCh <- err:
					default:
					}
				}
			}()
			timer.Reset(interval)
		}
	}
}

// PacketSent implements paho.Pinger.
func (p *pinger) PacketSent() {
	p.mu.Lock()
	p.lastSent = time.Now()
	p.mu.Unlock()
}

// PacketReceived implements paho.Pinger; paho calls it for every packet, the PINGRESP included.
func (p *pinger) PacketReceived() {
	p.mu.Lock()
	p.lastReceived = time.Now()
	p.mu.Unlock()
}

// PingResp implements paho.Pinger: PacketReceived has counted it already.
func (p *pinger) PingResp() {}

// SetDebug implements paho.Pinger.
func (p *pinger) SetDebug(log.Logger) {}
