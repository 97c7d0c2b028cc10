package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

const (
	// replayWorkers is how many replays read the store and publish at once, so that a fleet reconnecting after a
	// broker restart queues up instead of stalling registrations.
	replayWorkers = 2
	// maxQueuedReplays bounds the queue of replays waiting for a worker; requests beyond it are dropped.
	maxQueuedReplays = 4096
)

// replayJob is one domain to replay to one worker.
type replayJob struct{ worker, domain string }

// replayer runs replays on a fixed pool of goroutines that take jobs from a queue. A job already waiting in the
// queue is not queued again (a repeated request is coalesced with it); a request for a job that is running
// queues it again, since the worker may have lost the replay it is getting.
type replayer struct {
	b      *Broker
	ctx    context.Context // ends when the replays are stopped: a running replay stops after its current batch
	cancel context.CancelFunc

	mu      sync.Mutex
	cond    *sync.Cond // signalled when a job is queued, a job ends, or the replays are stopped
	queue   []replayJob
	queued  map[replayJob]bool
	running int
	stopped bool
	exited  chan struct{} // closed when every replay goroutine has returned
	alive   int
	started bool // the pool runs (start)
}

func (r *replayer) init(b *Broker) {
	r.b = b
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.cond = sync.NewCond(&r.mu)
	r.queued = map[replayJob]bool{}
	r.exited = make(chan struct{})
}

// start starts the pool with the first request: New starts no goroutine. StopReplays waits for them. r.mu is held.
func (r *replayer) start() {
	if r.started {
		return
	}
	r.started = true
	r.alive = replayWorkers
	for range replayWorkers {
		go r.work()
	}
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
		b.meters.replayRequests.Inc()
		b.replay.enqueue(replayJob{worker, d})
	}
}

func (r *replayer) enqueue(j replayJob) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.stopped || r.queued[j]:
		return
	case len(r.queue) >= maxQueuedReplays:
		r.b.log.Warn("replay queue full, request dropped", "worker", j.worker, "domain", j.domain)
		return
	}
	r.start()
	r.queued[j] = true
	r.queue = append(r.queue, j)
	r.cond.Signal()
}

// work runs queued replays one after the other until the replays are stopped.
func (r *replayer) work() {
	defer func() {
		r.mu.Lock()
		r.alive--
		if r.alive == 0 {
			close(r.exited)
		}
		r.mu.Unlock()
	}()
	for {
		r.mu.Lock()
		for len(r.queue) == 0 && !r.stopped {
			r.cond.Wait()
		}
		if r.stopped {
			r.mu.Unlock()
			return
		}
		j := r.queue[0]
		r.queue = r.queue[1:]
		delete(r.queued, j)
		r.running++
		r.mu.Unlock()

		r.b.sendReplay(r.ctx, j.worker, j.domain)

		r.mu.Lock()
		r.running--
		r.cond.Broadcast()
		r.mu.Unlock()
	}
}

// WaitReplays waits until no replay is queued or running (for tests), or until the replays are stopped.
func (b *Broker) WaitReplays() {
	r := &b.replay
	r.mu.Lock()
	defer r.mu.Unlock()
	for (len(r.queue) > 0 || r.running > 0) && !r.stopped {
		r.cond.Wait()
	}
}

// StopReplays stops the replays for shutdown: queued ones are dropped, running ones stop after the batch they are
// publishing, and no new request is taken. It returns once no replay reads the store or publishes any more, or
// with an error when ctx ends first. Call it before the MQTT server and the store are closed. Calling it again
// is harmless.
func (b *Broker) StopReplays(ctx context.Context) error {
	r := &b.replay
	r.mu.Lock()
	if !r.started {
		r.started = true // no pool: nothing to wait for
		close(r.exited)
	}
	r.stopped = true
	r.queue, r.queued = nil, map[replayJob]bool{}
	r.cond.Broadcast()
	r.mu.Unlock()
	r.cancel()
	select {
	case <-r.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("replays still running: %w", ctx.Err())
	}
}

// errReplayStopped ends a replay cut short by StopReplays.
var errReplayStopped = errors.New("replays stopped")

// sendReplay publishes the domain's keys to the worker in batches; the last batch has Last set and carries the
// keys revoked within the window and not registered again since (wire.ReplayBatch.Revoked). Each batch is read
// from the store in one short read and published after it. A key whose registration predates its revocation
// (still in the write-ahead log, which drops it at its merge) is not sent; the revocations are read again for the
// last batch, so that one made while the replay ran reaches the worker after the key it voids.
func (b *Broker) sendReplay(ctx context.Context, worker, domain string) {
	since := b.opts.Now().Add(-b.opts.ReplayWindow)
	topic := wire.ReplayKeysTopic(worker)
	batch := wire.ReplayBatch{Domain: domain, Keys: make([]string, 0, b.opts.ReplayBatch)}
	sent := 0
	var cursor KeyCursor
	err := func() error {
		tombs, err := b.st.Revoked(domain, since)
		if err != nil {
			return fmt.Errorf("read revocations: %w", err)
		}
		again := map[string]time.Time{} // revoked keys sent as registered again since, with their last seen
		for {
			if ctx.Err() != nil {
				return errReplayStopped
			}
			keys, next, err := b.st.KeysPage(domain, since, cursor, b.opts.ReplayBatch)
			if err != nil {
				return fmt.Errorf("read keys: %w", err)
			}
			batch.Keys, batch.Last = batch.Keys[:0], next == ""
			for _, k := range keys {
				if at, ok := tombs[k.Key]; ok {
					if !k.LastSeen.After(at) {
						continue
					}
					again[k.Key] = k.LastSeen
				}
				batch.Keys = append(batch.Keys, k.Key)
			}
			if batch.Last {
				if batch.Revoked, err = b.revokedSince(domain, since, again); err != nil {
					return err
				}
			}
			p, err := json.Marshal(batch)
			if err != nil {
				return err
			}
			if err := b.pub.Publish(topic, p, false, 1); err != nil {
				return err
			}
			sent += len(batch.Keys)
			b.meters.replayedKeys.Add(float64(len(batch.Keys)))
			batch.Seq++
			if batch.Last {
				return nil
			}
			cursor = next
		}
	}()
	switch {
	case errors.Is(err, errReplayStopped):
		b.log.Info("replay stopped", "worker", worker, "domain", domain, "sent", sent)
	case err != nil:
		b.log.Error("replay failed", "worker", worker, "domain", domain, "sent", sent, "err", err)
	default:
		b.log.Info("replayed keys", "worker", worker, "domain", domain, "keys", sent, "batches", batch.Seq,
			"revoked", len(batch.Revoked))
	}
}

// revokedSince returns the keys of domain revoked since, sorted, except those in again registered after their
// revocation.
func (b *Broker) revokedSince(domain string, since time.Time, again map[string]time.Time) ([]string, error) {
	tombs, err := b.st.Revoked(domain, since)
	if err != nil {
		return nil, fmt.Errorf("read revocations: %w", err)
	}
	var out []string
	for k, at := range tombs {
		if seen, ok := again[k]; ok && seen.After(at) {
			continue
		}
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}
