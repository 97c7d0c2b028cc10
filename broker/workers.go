package broker

import (
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// The handlers below take the messages workers publish (SPEC §2.1). A malformed topic or payload is logged and
// dropped; nothing in them can stop the MQTT server.

// HandleMetric takes wireguard-metrics/{domain}/{worker}/{metric}.
func (b *Broker) HandleMetric(topic string, payload []byte) {
	domain, worker, metric, err := wire.ParseMetricTopic(topic)
	if err != nil {
		b.log.Warn("dropped metric", "topic", topic, "err", err)
		return
	}
	if !b.domain[domain] {
		b.log.Warn("dropped metric for unknown domain", "topic", topic)
		return
	}
	if metric != wire.ConnectedPeersMetric {
		b.log.Debug("ignored metric", "topic", topic)
		return
	}
	n, err := wire.ParseInt(payload)
	if err != nil {
		b.log.Warn("dropped metric", "topic", topic, "err", err)
		return
	}
	b.change(worker, func(w *WorkerState) bool {
		old, had := w.Peers[domain]
		w.Peers[domain] = n
		return !had || old != n
	})
}

// HandleStatus takes wireguard-worker/{worker}/status: ≥ 1 online, < 1 offline.
func (b *Broker) HandleStatus(topic string, payload []byte) {
	worker, err := wire.ParseStatusTopic(topic)
	if err != nil {
		b.log.Warn("dropped status", "topic", topic, "err", err)
		return
	}
	n, err := wire.ParseInt(payload)
	if err != nil {
		b.log.Warn("dropped status", "topic", topic, "err", err)
		return
	}
	b.setStatus(worker, n)
}

func (b *Broker) setStatus(worker string, n int) {
	online := n >= 1
	b.mu.Lock()
	if online {
		delete(b.awaiting, worker)
	}
	_, known := b.workers[worker]
	b.mu.Unlock()
	if !online && !known {
		b.log.Debug("offline status of unknown worker ignored", "worker", worker)
		return
	}
	b.change(worker, func(w *WorkerState) bool {
		if w.Online == online {
			return false
		}
		w.Online = online
		b.log.Info("worker status changed", "worker", worker, "online", online)
		return true
	})
}

// HandleData takes wireguard-worker/{worker}/{domain}/data, the worker's endpoint in a domain.
func (b *Broker) HandleData(topic string, payload []byte) {
	worker, domain, err := wire.ParseDataTopic(topic)
	if err != nil {
		b.log.Warn("dropped worker data", "topic", topic, "err", err)
		return
	}
	if !b.domain[domain] {
		b.log.Warn("dropped worker data for unknown domain", "topic", topic)
		return
	}
	d, err := wire.ParseWorkerData(payload)
	if err != nil {
		b.log.Warn("dropped worker data", "topic", topic, "err", err)
		return
	}
	b.change(worker, func(w *WorkerState) bool {
		if old, ok := w.Data[domain]; ok && old == d {
			return false
		}
		w.Data[domain] = d
		b.log.Info("worker endpoint", "worker", worker, "domain", domain, "address", d.ExternalAddress, "port", d.Port)
		return true
	})
}

// change applies fn to the state of worker (creating it) and stores the result if fn reports a change.
func (b *Broker) change(worker string, fn func(*WorkerState) bool) {
	b.mu.Lock()
	w, ok := b.workers[worker]
	if !ok {
		w = &WorkerState{Name: worker, Peers: map[string]int{}, Data: map[string]wire.WorkerData{}}
		b.workers[worker] = w
		b.dirty = true
	}
	changed := fn(w)
	if changed {
		w.Changed = b.opts.Now()
		b.dirty = true
	}
	snapshot := copyState(w)
	b.mu.Unlock()
	if !changed {
		return
	}
	if err := b.st.PutWorker(snapshot); err != nil {
		b.log.Error("store worker state", "worker", worker, "err", err)
	}
}
