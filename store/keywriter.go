package store

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
)

const (
	// mergeInterval is how often registrations are moved from the write-ahead log into the bbolt file.
	mergeInterval = 30 * time.Second
	// mergeThreshold starts a merge early when this many registrations are waiting.
	mergeThreshold = 50000
	// maxYields bounds how often the key writer lets other goroutines run before it writes a group.
	maxYields = 4
)

// lazySyncDelay bounds how long records written by PutKeyLazy stay without an fdatasync when no PutKey comes.
var lazySyncDelay = time.Second

type keyWrite struct {
	r    broker.KeyRecord
	err  chan error
	lazy bool // PutKeyLazy: no fdatasync of its own
}

// PutKey records a registration. It returns once the registration is on disk: appended to the write-ahead log
// together with every registration that arrived meanwhile, with one fdatasync.
func (s *Store) PutKey(r broker.KeyRecord) error {
	w := keyWrite{r: r, err: make(chan error, 1)}
	return request(s, s.keys, w, w.err)
}

// PutKeyLazy records a registration that another broker already holds on disk (a key it registered and
// published). It is appended to the write-ahead log like PutKey's, but returns without waiting for an fdatasync:
// a group of such records alone is not synced. The next PutKey's fdatasync, a merge, or at the latest a sync
// lazySyncDelay later makes it durable. A crash of the process loses nothing (the kernel holds what was written);
// a power cut may lose the last second of them here, which the catch-up after the restart fetches again from
// the other brokers. Under load, this spares most of the fdatasyncs of the keys other brokers send
// (BENCHMARKS.md, issue 18).
func (s *Store) PutKeyLazy(r broker.KeyRecord) error {
	w := keyWrite{r: r, err: make(chan error, 1), lazy: true}
	return request(s, s.keys, w, w.err)
}

// Flush merges every registration waiting in the write-ahead log into the bbolt file now (before a backup, say).
func (s *Store) Flush() error {
	_, err := s.flushUpTo()
	return err
}

// flushUpTo is Flush, and returns the segment the log went on in: every segment before it is merged.
func (s *Store) flushUpTo() (int, error) {
	f := flushRequest{seg: make(chan int, 1), err: make(chan error, 1)}
	if err := request(s, s.flush, f, f.err); err != nil {
		return 0, err
	}
	return <-f.seg, nil
}

type flushRequest struct {
	seg chan int
	err chan error
}

// request hands v to the key writer on ch, unless the store is closed, and waits for the answer on reply.
func request[T any](s *Store, ch chan<- T, v T, reply <-chan error) error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	ch <- v
	s.closeMu.RUnlock()
	return <-reply
}

// keyWriter owns the write-ahead log: it appends registrations in groups and hands the log to a merge every
// mergeInterval, without waiting for the merge.
func (s *Store) keyWriter() {
	defer close(s.keysDone)
	t := time.NewTicker(mergeInterval)
	defer t.Stop()
	batch := make([]keyWrite, 0, maxBatch)
	recs := make([]broker.KeyRecord, 0, maxBatch)
	merged := make(chan error, 1)
	busy := false
	lazy := time.NewTimer(time.Hour) // armed by the first lazy group
	lazy.Stop()
	for {
		select {
		case <-lazy.C:
			s.syncLog()
		case w, ok := <-s.keys:
			if !ok {
				s.finishErr = s.finish(busy, merged)
				return
			}
			batch, recs = append(batch[:0], w), append(recs[:0], w.r)
			seen, yields := 0, 0
		drain:
			for len(batch) < maxBatch {
				select {
				case w, ok := <-s.keys:
					if !ok {
						break drain
					}
					batch, recs = append(batch, w), append(recs, w.r)
				default:
					// Let the registrations that are being handled right now join the group: an fdatasync costs
					// ~80 µs of CPU here whatever it writes, so larger groups cost less a registration (BENCHMARKS.md).
					// Yield while that brings more, a few times at most, so that a steady stream cannot hold
					// the group back.
					if len(batch) > seen && yields < maxYields {
						seen, yields = len(batch), yields+1
						runtime.Gosched()
						continue
					}
					break drain
				}
			}
			sync := false
			for _, w := range batch {
				sync = sync || !w.lazy
			}
			unsynced := s.wal.unsynced
			errs := s.appendLog(recs, sync)
			if !unsynced && s.wal.unsynced {
				lazy.Reset(lazySyncDelay)
			}
			s.mu.Lock()
			for i, r := range recs {
				if errs[i] == nil {
					s.pending.add(r)
					s.pendingN++
				}
			}
			full := s.pendingN >= mergeThreshold
			s.mu.Unlock()
			for i, w := range batch {
				w.err <- errs[i]
			}
			if full && !busy {
				busy = s.startMerge(merged)
			}
		case <-t.C:
			if !busy {
				busy = s.startMerge(merged)
			}
		case f := <-s.flush:
			if busy {
				s.mergeDone(<-merged)
				busy = false
			}
			var err error
			if s.startMerge(merged) {
				err = <-merged
				s.mergeDone(err)
			} else if s.pendingN > 0 { // no new segment could be started: nothing was merged
				err = errors.New("write-ahead log merge could not start a new segment")
			}
			f.seg <- s.wal.seg
			f.err <- err
		case err := <-merged:
			s.mergeDone(err)
			busy = false
		}
	}
}

// appendLog appends a group of registrations to the current segment. A segment whose write or fdatasync failed
// is not written again: what the failure left in it may be garbage, and records after it would then follow
// garbage. Its group failed (the callers get the error), its earlier records stay in it until they are merged,
// and the log goes on in a new segment.
func (s *Store) appendLog(recs []broker.KeyRecord, sync bool) []error {
	if s.wal.broken {
		next, err := openSegment(s.walBase, s.wal.seg+1)
		if err != nil {
			errs := make([]error, len(recs))
			for i := range errs {
				errs[i] = err
			}
			return errs
		}
		s.wal.close()
		s.mu.Lock() // startMerge reads s.wal under mu
		s.wal = next
		s.mu.Unlock()
	}
	errs := s.wal.append(recs, sync)
	if sync {
		s.observeFsync(s.wal.lastSync)
	}
	if s.wal.broken {
		s.logf("write-ahead log segment %s failed, continuing in a new one: %v", segmentName(s.walBase, s.wal.seg), errs[len(errs)-1])
	}
	return errs
}

// syncLog makes the records PutKeyLazy appended to the current segment durable, if no fdatasync has since.
func (s *Store) syncLog() {
	if !s.wal.unsynced || s.wal.broken {
		return
	}
	err := s.wal.sync()
	s.observeFsync(s.wal.lastSync)
	if err != nil {
		s.logf("write-ahead log segment %s failed, continuing in a new one (registrations of other brokers since the last sync may be lost on a power cut; the next start catches up on them): %v",
			segmentName(s.walBase, s.wal.seg), err)
	}
}

// finish ends the key writer at Close: it merges every registration left into bbolt and then removes the log. A
// segment is removed only once its records are in bbolt: when the merge fails (a full disk, say), every segment
// stays for the next start to merge, and the error says so.
func (s *Store) finish(busy bool, merged chan error) error {
	if busy {
		s.mergeDone(<-merged)
	}
	s.wal.close()
	s.mu.Lock()
	o, n := s.pending, s.pendingN
	s.mu.Unlock()
	if n > 0 {
		if err := s.merge(o); err != nil {
			return fmt.Errorf("%d registrations not merged into the state file, kept in its write-ahead log %s.* "+
				"for the next start (free space, then start the broker again): %w", n, s.walBase, err)
		}
	}
	segs, err := segments(s.walBase)
	if err != nil {
		return err
	}
	for _, seg := range segs {
		if err := s.retire(seg); err != nil {
			return err
		}
	}
	return nil
}

// startMerge starts a new log segment and merges the records of the older ones into bbolt in the background; the
// result arrives on done. It reports whether a merge started.
func (s *Store) startMerge(done chan<- error) bool {
	s.mu.Lock()
	if s.pendingN == 0 {
		s.mu.Unlock()
		return false
	}
	next, err := openSegment(s.walBase, s.wal.seg+1)
	if err != nil {
		s.mu.Unlock()
		s.logf("start write-ahead log segment: %v", err)
		return false
	}
	old := s.wal
	s.wal = next
	s.merging, s.pending, s.pendingN = s.pending, overlay{}, 0
	o := s.merging
	s.mu.Unlock()
	old.close()
	s.mergeUpTo = old.seg
	go func() { done <- s.merge(o) }()
	return true
}

// mergeDone deletes the merged segments, or keeps the records waiting if the merge failed.
func (s *Store) mergeDone(err error) {
	s.mu.Lock()
	if err != nil {
		for d, m := range s.merging {
			for k, p := range m {
				s.pending.add(p.record(d, k))
				s.pendingN++
			}
		}
	}
	s.merging = nil
	s.mu.Unlock()
	if err != nil {
		s.logf("merge write-ahead log into the state file (will retry): %v", err)
		return
	}
	segs, _ := segments(s.walBase)
	for _, seg := range segs {
		if seg <= s.mergeUpTo {
			if err := s.retire(seg); err != nil {
				s.logf("%v", err)
			}
		}
	}
}
