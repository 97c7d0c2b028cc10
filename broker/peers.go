package broker

import (
	"context"
	"time"
)

// Peers is what a broker shares with the other brokers on its MQTT server (broker/cluster implements it). A broker
// alone on its embedded server has none: Options.Peers nil.
type Peers interface {
	// KeyQoS is the QoS at which a registered key is published.
	KeyQoS() byte
	// Sync returns once the choices the other brokers announced so far are counted (CountChoice), or gives up.
	Sync(ctx context.Context)
	// Announce tells the other brokers that this one sent a node to worker in domain; wait returns once the
	// announcement is on the MQTT server (or failed), before the node gets its answer.
	Announce(worker, domain string) (wait func())
	// Brokers returns every broker the status page lists, and how many are alive, this one included.
	Brokers() (all []BrokerState, alive int)
}

// alone is the Peers of a broker alone on its embedded server: it publishes keys at QoS 0 as the reference,
// announces nothing, and lists no broker on the status page while counting itself alive.
type alone struct{}

func (alone) KeyQoS() byte                   { return 0 }
func (alone) Sync(context.Context)           {}
func (alone) Announce(string, string) func() { return func() {} }
func (alone) Brokers() ([]BrokerState, int)  { return []BrokerState{}, 1 }

// BrokerState is a broker on the MQTT server as this one last heard of it.
type BrokerState struct {
	ID string `json:"id"`
	// Alive is true while its last status is 1; this broker is always alive to itself.
	Alive bool `json:"alive"`
	// Self marks this broker.
	Self bool `json:"self"`
	// Since is when this broker learnt that the other came or went (for a status retained on the server: when
	// this broker connected); zero for this broker itself.
	Since time.Time `json:"since,omitzero"`
}

// CheckKey refuses a key that may not register for domain (invalid, unknown domain, listed), as a registration
// is checked; the cluster checks the keys of other brokers with it.
func (b *Broker) CheckKey(domain, key string) error {
	return b.validate(Request{PublicKey: key, Domain: domain})
}

// CountChoice counts a node another broker sent to worker in domain, as if this broker had chosen it. A worker
// or domain not known here, or a domain the worker reported offline (-1), stays as it is.
func (b *Broker) CountChoice(worker, domain string) {
	if !b.domain[domain] {
		b.log.Warn("dropped choice for unknown domain", "domain", domain)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	w, ok := b.workers[worker]
	if !ok {
		return
	}
	// A domain the worker reported offline (-1) or never reported stays so: the choice was made before.
	if n, ok := w.Peers[domain]; ok && n >= 0 {
		w.Peers[domain] = n + 1
	}
}
