package broker

import (
	"sync"

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
	if online {
		// Wait for a grace expiry of this worker in progress (see expire). Only a 1 waits: the expiry's own 0
		// comes back here on the expiry's goroutine.
		defer b.lockStatus(worker)()
	}
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
		w.Since = b.opts.Now()
		b.log.Info("worker status changed", "worker", worker, "online", online)
		return true
	})
}

// HandleData takes wireguard-worker/{worker}/{domain}/data, the worker's endpoint in a domain. An empty payload
// (the retained message cleared) withdraws it: the worker no longer serves the domain and is not offered there.
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
	if len(payload) == 0 {
		b.mu.Lock()
		_, known := b.workers[worker]
		b.mu.Unlock()
		if !known {
			return
		}
		b.change(worker, func(w *WorkerState) bool {
			if _, ok := w.Data[domain]; !ok {
				return false
			}
			delete(w.Data, domain)
			b.log.Info("worker endpoint withdrawn", "worker", worker, "domain", domain)
			return true
		})
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

// record orders what happens to one worker. Its status lock orders the reconnect-grace expiry against the status
// 1 reports the broker takes: a 1 is either seen by the expiry (which then publishes nothing) or taken after the
// expiry's 0. Its writes are ordered too: every change takes the next seq, and a write stores the state as it is
// when the write starts, so the last write to finish carries the newest state.
type record struct {
	status sync.Mutex // held by expire and by a status 1 being taken
	write  sync.Mutex // held while the state is written
	seq    uint64     // changes made, under Broker.mu
	stored uint64     // changes on disk, under Broker.mu
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
	var r *record
	if changed {
		w.Changed = b.opts.Now()
		b.dirty = true
		r = b.recordOf(worker)
		r.seq++
	}
	b.mu.Unlock()
	if changed {
		b.persist(worker, r)
	}
}

// recordOf returns the record of worker, creating it. Callers hold mu.
func (b *Broker) recordOf(worker string) *record {
	r, ok := b.records[worker]
	if !ok {
		r = &record{}
		b.records[worker] = r
	}
	return r
}

// persist writes the worker's current state unless a concurrent write has already stored every change made so
// far. One write per worker runs at a time, and it snapshots the state only once it holds the write lock, so an
// older snapshot can never reach the disk after a newer one.
func (b *Broker) persist(worker string, r *record) {
	r.write.Lock()
	defer r.write.Unlock()
	b.mu.Lock()
	seq := r.seq
	if r.stored >= seq {
		b.mu.Unlock()
		return
	}
	snapshot := copyState(b.workers[worker])
	b.mu.Unlock()
	if err := b.st.PutWorker(snapshot); err != nil {
		b.log.Error("store worker state", "worker", worker, "err", err)
		return
	}
	b.mu.Lock()
	r.stored = seq
	b.mu.Unlock()
}
