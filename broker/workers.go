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
	if n >= 1 {
		b.confirm(worker)
		return
	}
	b.reportOffline(worker)
}

// confirm takes a worker's status 1: it ends its wait for a reconnect and withdraws a status 0 still waiting for
// the offline delay.
func (b *Broker) confirm(worker string) {
	// Wait for a grace expiry or a delayed 0 of this worker in progress (see expire). Only a 1 waits: the
	// expiry's own 0 comes back here on the expiry's goroutine.
	defer b.lockStatus(worker)()
	b.mu.Lock()
	c, waited := b.link.awaiting[worker]
	delete(b.link.awaiting, worker)
	_, withdrawn := b.link.offline[worker]
	delete(b.link.offline, worker)
	_, graced := b.link.deadline[worker]
	_, halted := b.link.left[worker]
	delete(b.link.deadline, worker)
	delete(b.link.left, worker)
	allBack := waited && len(b.link.awaiting) == 0 && (graced || halted)
	b.mu.Unlock()
	switch {
	case waited && c == sinceOutage:
		b.log.Info("worker confirmed online after the mqtt outage", "worker", worker)
	case withdrawn:
		b.log.Info("worker back before its offline status took effect", "worker", worker)
	}
	if allBack {
		b.log.Info("every worker online before has reconnected", "after", c.String())
	}
	b.setOnline(worker, true)
}

// reportOffline takes a worker's status 0 (its last will or its farewell). With an external MQTT server it
// takes effect only after the offline delay (outage.go); a worker waiting to reconnect after an MQTT outage
// ignores it, since the server may hand the broker a will it retained from its own shutdown.
func (b *Broker) reportOffline(worker string) {
	b.mu.Lock()
	w, known := b.workers[worker]
	c, waiting := b.link.awaiting[worker]
	switch {
	case !known:
		b.mu.Unlock()
		b.log.Debug("offline status of unknown worker ignored", "worker", worker)
		return
	case waiting && c == sinceOutage:
		b.mu.Unlock()
		b.log.Debug("offline status ignored: the worker has until the end of the grace to reconnect", "worker", worker)
		return
	case b.opts.External && w.Online:
		_, pending := b.link.offline[worker]
		if !pending {
			b.link.offline[worker] = b.opts.Clock().Add(b.opts.OfflineDelay)
			b.link.kick()
		}
		b.mu.Unlock()
		if !pending {
			b.log.Debug("offline status, taking effect after the delay", "worker", worker, "delay", b.opts.OfflineDelay)
		}
		return
	}
	delete(b.link.awaiting, worker)
	b.mu.Unlock()
	b.setOnline(worker, false)
}

// setOnline records the worker's status.
func (b *Broker) setOnline(worker string, online bool) {
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

// record orders what happens to one worker. Its status lock orders the reconnect-grace expiry and a delayed status
// 0 against the status 1 reports the broker takes: a 1 is either seen by the expiry (which then publishes nothing) or taken after the
// expiry's 0. Its writes are ordered too: every change takes the next seq, and a write stores the state as it is
// when the write starts, so the last write to finish carries the newest state.
type record struct {
	status sync.Mutex // held by expire, by a delayed status 0 taking effect and by a status 1 being taken
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
