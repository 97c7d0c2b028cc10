package broker

import (
	"sort"
	"time"
)

// A broker on an external MQTT server (Options.External) learns that a worker went away from its status 0: its
// last will, which the server publishes when the worker's connection breaks, or its farewell. But a server that
// is stopped cleanly (Mosquitto and SIGTERM) publishes every worker's will before it closes the broker's own
// connection, and a server that persists retained messages hands those wills to the broker again after its
// restart. Taken as they come, they would mark every gateway offline for the whole outage, and API v2 would
// answer "no gateway online" although no gateway went anywhere. So:
//
//   - a status 0 takes effect only after Options.OfflineDelay, and is dropped if the broker's connection breaks
//     meanwhile (MQTTDown): then it came with the server's shutdown, not with the worker's;
//   - while the connection is down, the workers' states stay as last known and API v2 keeps choosing among
//     them; keys are stored before the answer as always, and reach the gateways by the replay they ask for
//     after they reconnect;
//   - every worker online when the connection broke must confirm it is still there once the connection is back
//     (MQTTUp): a status 1, which workers publish after every connect, or its retained 1. A status 0 does not
//     end its wait. A worker that has not confirmed within Options.ReconnectGrace is marked offline (expire),
//     so a gateway that really went away during the outage is still noticed.
//
// The same wait serves the broker's own restart: workers stored online must reconnect within the grace, which
// counts from New (embedded server) or from the first MQTTUp (external server). A status 0 ends that wait, though:
// after a restart of the broker alone, a retained 0 on a server that kept running is the worker's own.

// defaultOfflineDelay is Options.OfflineDelay when unset: a server sends the wills and closes the broker's
// connection within milliseconds of each other.
const defaultOfflineDelay = 5 * time.Second

// cause is why the broker waits for a worker to reconnect.
type cause int

const (
	sinceStart  cause = iota // the worker was online when the broker stopped
	sinceOutage              // the worker was online when the broker's connection to the MQTT server broke
)

func (c cause) String() string {
	if c == sinceOutage {
		return "mqtt outage"
	}
	return "broker start"
}

// link is the state of the broker's connection to the MQTT server and of the workers whose status waits on it.
// Its fields are guarded by Broker.mu.
type link struct {
	down     bool                 // the connection to an external server is down (or not up yet)
	since    time.Time            // when down last changed (zero: never)
	awaiting map[string]cause     // workers online before, not yet reconnected
	deadline map[string]time.Time // with the connection up: when each awaiting worker is marked offline
	// left is, while the connection is down, the grace an awaiting worker had left when it broke: the next
	// reconnect gives it that much, not a whole grace again, so that a connection flapping faster than the
	// grace does not keep a gateway that is gone counted online for ever. A worker awaited for the first time
	// gets the whole grace.
	left    map[string]time.Duration
	offline map[string]time.Time // status 0 taken, not yet in effect: when it takes effect
	wake    chan struct{}        // tells Run that a deadline changed
}

func (l *link) init(opts Options) {
	l.down = opts.External
	l.awaiting = map[string]cause{}
	l.deadline = map[string]time.Time{}
	l.left = map[string]time.Duration{}
	l.offline = map[string]time.Time{}
	l.wake = make(chan struct{}, 1)
}

// kick wakes Run to look at the deadlines again.
func (l *link) kick() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// MQTTDown tells the broker that its connection to the external MQTT server broke. It freezes the workers' states
// as they are, drops every status 0 still waiting for the offline delay, and makes every worker online now wait
// to reconnect after MQTTUp. Calling it while down is harmless.
func (b *Broker) MQTTDown() {
	b.mu.Lock()
	if b.link.down {
		b.mu.Unlock()
		return
	}
	l := &b.link
	now := b.opts.Clock()
	for name, dl := range l.deadline {
		l.left[name] = max(dl.Sub(now), 0)
	}
	clear(l.deadline)
	l.down, l.since = true, b.opts.Now()
	dropped := make([]string, 0, len(l.offline))
	for name := range l.offline {
		dropped = append(dropped, name)
	}
	clear(l.offline)
	for name, w := range b.workers {
		if w.Online {
			l.awaiting[name] = sinceOutage
		}
	}
	online := len(l.awaiting)
	b.mu.Unlock()
	l.kick()
	sort.Strings(dropped)
	b.log.Info("mqtt connection down: worker states frozen, v2 keeps choosing among the workers online", "online", online)
	if len(dropped) > 0 {
		b.log.Info("offline status dropped: it came with the loss of the mqtt connection", "workers", dropped)
	}
}

// MQTTUp tells the broker that its connection to the external MQTT server is up and subscribed. The workers
// waiting to reconnect have Options.ReconnectGrace from now, or what they had left of it when the connection
// broke again before they were back. Calling it while up is harmless.
func (b *Broker) MQTTUp() {
	b.mu.Lock()
	if !b.link.down {
		b.mu.Unlock()
		return
	}
	l := &b.link
	l.down, l.since = false, b.opts.Now()
	waiting := len(l.awaiting)
	now := b.opts.Clock()
	for name := range l.awaiting {
		grace, ok := l.left[name]
		if !ok {
			grace = b.opts.ReconnectGrace
		}
		l.deadline[name] = now.Add(grace)
	}
	clear(l.left)
	b.mu.Unlock()
	l.kick()
	b.log.Info("mqtt connection up", "awaiting_workers", waiting, "grace", b.opts.ReconnectGrace)
}

// tick makes every status 0 whose offline delay has passed take effect and, once the grace has passed with the
// connection up, marks the workers still awaited offline. It returns when it has to run next (ok false: only
// when woken).
func (b *Broker) tick(now time.Time) (next time.Time, ok bool) {
	b.mu.Lock()
	l := &b.link
	var due, gone []string
	later := func(t time.Time) {
		if !ok || t.Before(next) {
			next, ok = t, true
		}
	}
	for name, at := range l.offline {
		if at.After(now) {
			later(at)
		} else {
			due = append(due, name)
		}
	}
	for name, dl := range l.deadline {
		if l.down {
			break // the grace stands still while the connection is down
		}
		if dl.After(now) {
			later(dl)
			continue
		}
		delete(l.deadline, name)
		if _, waiting := l.awaiting[name]; waiting {
			gone = append(gone, name)
		}
	}
	b.mu.Unlock()
	sort.Strings(due)
	sort.Strings(gone)
	for _, name := range due {
		b.takeOffline(name, now)
	}
	for _, name := range gone {
		b.expire(name)
	}
	return next, ok
}

// takeOffline marks the worker offline if its status 0 is still waiting and its delay has passed. It holds the
// worker's status lock, so that a 1 taken meanwhile either withdraws the 0 first or comes after it.
func (b *Broker) takeOffline(name string, now time.Time) {
	defer b.lockStatus(name)()
	b.mu.Lock()
	at, pending := b.link.offline[name]
	if !pending || at.After(now) {
		b.mu.Unlock()
		return
	}
	delete(b.link.offline, name)
	delete(b.link.awaiting, name)
	b.mu.Unlock()
	b.setOnline(name, false)
}

// MQTTState is the broker's connection to its MQTT server, as the status page shows it.
type MQTTState struct {
	// External is true with broker.mqtt_server; the embedded server is always connected.
	External bool `json:"external"`
	// Connected is false while the connection to the external server is down: worker states are then frozen.
	Connected bool `json:"connected"`
	// Since is when the connection last went down or came up (absent: never, since the start).
	Since time.Time `json:"since,omitzero"`
	// Awaiting lists the workers that were online before the broker's start or the last outage and have not
	// reconnected yet; they count as online until the grace ends.
	Awaiting []string `json:"awaiting"`
}

// mqttState returns the state of the broker's connection to its MQTT server.
func (b *Broker) mqttState() MQTTState {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := MQTTState{External: b.opts.External, Connected: !b.link.down, Since: b.link.since, Awaiting: make([]string, 0, len(b.link.awaiting))}
	for name := range b.link.awaiting {
		s.Awaiting = append(s.Awaiting, name)
	}
	sort.Strings(s.Awaiting)
	return s
}
