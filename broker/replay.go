package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// maxConcurrentReplays bounds how many replays read the store and publish at once, so that a fleet reconnecting
// after a broker restart queues up instead of stalling registrations.
const maxConcurrentReplays = 2

// replayer runs replay jobs, at most maxConcurrentReplays at a time, and coalesces repeated requests for the same
// worker and domain while one is still waiting.
type replayer struct {
	b       *Broker
	sem     chan struct{}
	mu      sync.Mutex
	waiting map[[2]string]bool
	stopped bool
	wg      sync.WaitGroup
}

func (r *replayer) init(b *Broker) {
	r.b = b
	r.sem = make(chan struct{}, maxConcurrentReplays)
	r.waiting = map[[2]string]bool{}
}

// HandleReplayRequest takes wgkex/replay/{worker}/request and, for each configured domain it names, sends the
// worker every key registered there within the replay window, in batches on wgkex/replay/{worker}/keys (QoS 1).
// Reference workers never send it and never see the answers.
func (b *Broker) HandleReplayRequest(topic string, payload []byte) {
	worker, err := wire.ParseReplayRequestTopic(topic)
	if err != nil {
		b.log.Warn("dropped replay request", "topic", topic, "err", err)
		return
	}
	req, err := wire.ParseReplayRequest(payload)
	if err != nil {
		b.log.Warn("dropped replay request", "topic", topic, "err", err)
		return
	}
	for _, d := range req.Domains {
		if !b.domain[d] {
			b.log.Warn("replay requested for unknown domain", "worker", worker, "domain", d)
			continue
		}
		b.replay.enqueue(worker, d)
	}
}

func (r *replayer) enqueue(worker, domain string) {
	k := [2]string{worker, domain}
	r.mu.Lock()
	if r.waiting[k] || r.stopped {
		r.mu.Unlock()
		return
	}
	r.waiting[k] = true
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		r.sem <- struct{}{}
		defer func() { <-r.sem }()
		r.mu.Lock()
		delete(r.waiting, k)
		r.mu.Unlock()
		r.b.sendReplay(worker, domain)
	}()
}

// WaitReplays waits for every queued replay to finish (for tests).
func (b *Broker) WaitReplays() { b.replay.wg.Wait() }

// StopReplays stops taking replay requests and waits for the queued and running replays to finish, or returns an
// error when ctx ends first. Call it before the MQTT server and the store are closed.
func (b *Broker) StopReplays(ctx context.Context) error {
	r := &b.replay
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("replays still running: %w", ctx.Err())
	}
}

// sendReplay publishes the domain's keys to the worker in batches; the last batch has Last set.
func (b *Broker) sendReplay(worker, domain string) {
	since := b.opts.Now().Add(-b.opts.ReplayWindow)
	topic := wire.ReplayKeysTopic(worker)
	batch := wire.ReplayBatch{Domain: domain, Keys: make([]string, 0, b.opts.ReplayBatch)}
	sent := 0
	flush := func(last bool) error {
		batch.Last = last
		p, err := json.Marshal(batch)
		if err != nil {
			return err
		}
		if err := b.pub.Publish(topic, p, false, 1); err != nil {
			return err
		}
		sent += len(batch.Keys)
		batch.Seq++
		batch.Keys = batch.Keys[:0]
		return nil
	}
	err := b.st.Keys(domain, since, func(k KeyRecord) error {
		batch.Keys = append(batch.Keys, k.Key)
		if len(batch.Keys) == b.opts.ReplayBatch {
			return flush(false)
		}
		return nil
	})
	if err == nil {
		err = flush(true)
	}
	if err != nil {
		b.log.Error("replay failed", "worker", worker, "domain", domain, "sent", sent, "err", err)
		return
	}
	b.log.Info("replayed keys", "worker", worker, "domain", domain, "keys", sent, "batches", batch.Seq)
}
