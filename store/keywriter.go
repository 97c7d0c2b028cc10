package store

import (
	"cmp"
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

// lazySyncDelay bounds how long registrations held by PutKeyLazy wait to be written when no PutKey comes.
var lazySyncDelay = time.Second

type keyWrite struct {
	r    broker.KeyRecord
	err  chan error
	lazy bool // PutKeyLazy: held, written with the next group
}

// PutKey records a registration. It returns once the registration is on disk: appended to the write-ahead log
// together with every registration that arrived meanwhile, with one fdatasync.
func (s *Store) PutKey(r broker.KeyRecord) error {
	w := keyWrite{r: r, err: make(chan error, 1)}
	return request(s, s.keys, w, w.err)
}

// PutKeyLazy records a registration that another broker already holds on disk (a key it registered and
// published). Reads see it at once, but it is not written on its own: it goes into the write-ahead log with the
// next group of PutKey's, which is synced anyway, or as a group of its own lazySyncDelay later, or into the
// state file with the next merge, whichever comes first. A crash of the process or of the machine may lose the
// last second of them here, which the catch-up after the restart fetches again from the other brokers. Every
// group on disk is still written and synced as one, so the log's recovery rules hold (wal.go). Under load, this
// spares most of the fdatasyncs of the keys other brokers send (BENCHMARKS.md, issue 18).
func (s *Store) PutKeyLazy(r broker.KeyRecord) error {
	if err := checkRecord(r); err != nil { // refused now: it is written later, with no one to tell
		return err
	}
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
	lazyRecs := make([]broker.KeyRecord, 0, maxBatch) // held by PutKeyLazy, not yet written
	lazy := time.NewTimer(time.Hour)                  // armed while lazyRecs waits
	lazy.Stop()
	armed := false
	disarm := func() { // nothing held any more
		if armed {
			lazy.Stop()
			armed = false
		}
	}
	for {
		select {
		case <-lazy.C:
			armed = false
			lazyRecs = s.writeLazy(lazyRecs)
		case w, ok := <-s.keys:
			if !ok {
				s.writeLazy(lazyRecs)
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
			if !anySync(batch) {
				// Registrations of other brokers only: held, visible to reads at once, and written with the
				// next group that has to be synced anyway, or lazySyncDelay from now.
				lazyRecs = append(s.makeRoom(lazyRecs, len(recs)), recs...)
				full := s.hold(recs)
				for _, w := range batch {
					w.err <- nil
				}
				if len(lazyRecs) >= maxBatch {
					lazyRecs = s.writeLazy(lazyRecs)
					disarm()
				} else if !armed {
					lazy.Reset(lazySyncDelay)
					armed = true
				}
				if full && !busy {
					busy = s.startMerge(merged)
				}
				continue
			}
			lazyRecs = s.makeRoom(lazyRecs, len(recs))
			held := len(lazyRecs)
			lazyRecs = append(lazyRecs, recs...)
			errs := s.appendLog(lazyRecs)
			s.lazyWritten(errs[:held])
			lazyRecs, errs = lazyRecs[:0], errs[held:]
			disarm()
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
func (s *Store) appendLog(recs []broker.KeyRecord) []error {
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
	errs := s.wal.append(recs)
	s.observeFsync(s.wal.lastSync)
	if s.wal.broken {
		s.logf("write-ahead log segment %s failed, continuing in a new one: %v", segmentName(s.walBase, s.wal.seg), errs[len(errs)-1])
	}
	return errs
}

// anySync reports whether a group holds a registration that must be on disk before its answer (PutKey's).
func anySync(batch []keyWrite) bool {
	for _, w := range batch {
		if !w.lazy {
			return true
		}
	}
	return false
}

// hold adds registrations to the records waiting for the merge and reports whether enough wait to start one.
func (s *Store) hold(recs []broker.KeyRecord) (full bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		s.pending.add(r)
		s.pendingN++
	}
	return s.pendingN >= mergeThreshold
}

// writeLazy writes the registrations PutKeyLazy held as one group, with its fdatasync, and returns the emptied
// slice. They are in the records waiting for the merge already: a failure loses none of them unless the process
// ends before the merge.
func (s *Store) writeLazy(recs []broker.KeyRecord) []broker.KeyRecord {
	if len(recs) == 0 {
		return recs
	}
	s.lazyWritten(s.appendLog(recs))
	return recs[:0]
}

// makeRoom writes the held registrations first if n more would not fit in one group with them: a group holds at
// most maxBatch (readGroup refuses more than maxGroup bytes).
func (s *Store) makeRoom(held []broker.KeyRecord, n int) []broker.KeyRecord {
	if len(held)+n > maxBatch {
		return s.writeLazy(held)
	}
	return held
}

// lazyWritten logs the registrations held by PutKeyLazy that could not be written.
func (s *Store) lazyWritten(errs []error) {
	n, first := 0, error(nil)
	for _, err := range errs {
		if err != nil {
			n, first = n+1, cmp.Or(first, err)
		}
	}
	if n > 0 {
		s.logf("%d registrations of other brokers not written to the write-ahead log (they are merged into the state file with the others): %v", n, first)
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
