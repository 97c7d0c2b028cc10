package store

import (
	"encoding/binary"
	"fmt"
	"os"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
)

const (
	// mergeInterval is how often registrations are moved from the write-ahead log into the bbolt file.
	mergeInterval = 30 * time.Second
	// mergeThreshold starts a merge early when this many registrations are waiting. A merge of random keys
	// touches most pages of the keys bucket, so fewer, larger merges cost less in all.
	mergeThreshold = 50000
)

// overlay holds registrations that are durable in the write-ahead log but not yet merged: domain → key → record.
type overlay map[string]map[string]broker.KeyRecord

func (o overlay) add(r broker.KeyRecord) {
	m := o[r.Domain]
	if m == nil {
		m = map[string]broker.KeyRecord{}
		o[r.Domain] = m
	}
	if old, ok := m[r.Key]; ok {
		r = combine(old, r)
	}
	m[r.Key] = r
}

// combine folds a newer registration of a key into what is known of it: the earliest first-seen time, the latest
// last-seen time, and the last gateway assigned (v1 assigns none).
func combine(old, r broker.KeyRecord) broker.KeyRecord {
	if old.FirstSeen.Before(r.FirstSeen) {
		r.FirstSeen = old.FirstSeen
	}
	if old.LastSeen.After(r.LastSeen) {
		r.LastSeen = old.LastSeen
	}
	if r.Gateway == "" {
		r.Gateway = old.Gateway
	}
	return r
}

func encodeKey(r broker.KeyRecord) []byte {
	v := make([]byte, 16+len(r.Gateway))
	binary.BigEndian.PutUint64(v, uint64(r.FirstSeen.UnixNano()))
	binary.BigEndian.PutUint64(v[8:], uint64(r.LastSeen.UnixNano()))
	copy(v[16:], r.Gateway)
	return v
}

func decodeKey(domain, key string, v []byte) broker.KeyRecord {
	r := broker.KeyRecord{Domain: domain, Key: key}
	if len(v) >= 16 {
		r.FirstSeen = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		r.LastSeen = time.Unix(0, int64(binary.BigEndian.Uint64(v[8:])))
		r.Gateway = string(v[16:])
	}
	return r
}

// mergeChunk is how many registrations one merge transaction writes. A merge is split into transactions over
// consecutive key ranges (so the pages they rewrite do not overlap and the total work stays the same), with a
// pause between them, so that a large merge does not hold a core for long while registrations wait.
const (
	mergeChunk = 1024
	mergePause = 10 * time.Millisecond
)

// mergeEntry is one registration to merge.
type mergeEntry struct {
	domain string
	r      broker.KeyRecord
}

// sorted returns the overlay's registrations ordered by domain and key.
func (o overlay) sorted() []mergeEntry {
	var out []mergeEntry
	for d, m := range o {
		for _, r := range m {
			out = append(out, mergeEntry{d, r})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].domain != out[j].domain {
			return out[i].domain < out[j].domain
		}
		return out[i].r.Key < out[j].r.Key
	})
	return out
}

// mergeTx writes registrations into the keys buckets, combining each with what the bucket holds.
func mergeTx(tx *bolt.Tx, entries []mergeEntry) error {
	var b *bolt.Bucket
	domain := ""
	for _, e := range entries {
		if b == nil || e.domain != domain {
			var err error
			if b, err = tx.Bucket(bucketKeys).CreateBucketIfNotExists([]byte(e.domain)); err != nil {
				return fmt.Errorf("domain bucket %q: %w", e.domain, err)
			}
			domain = e.domain
		}
		r := e.r
		if old := b.Get([]byte(r.Key)); old != nil {
			r = combine(decodeKey(domain, r.Key, old), r)
		}
		if err := b.Put([]byte(r.Key), encodeKey(r)); err != nil {
			return err
		}
	}
	return nil
}

// merge writes the overlay into bbolt through the group-commit writer, mergeChunk registrations a transaction.
// Merging is idempotent: after a failure or a crash half-way the whole overlay is merged again.
func (s *Store) merge(o overlay) error {
	entries := o.sorted()
	for i := 0; i < len(entries); i += mergeChunk {
		if i > 0 {
			time.Sleep(mergePause)
		}
		chunk := entries[i:min(i+mergeChunk, len(entries))]
		if err := s.update(func(tx *bolt.Tx) error { return mergeTx(tx, chunk) }); err != nil {
			return err
		}
	}
	return nil
}

// recoverLog merges what earlier runs left in the write-ahead log into the bbolt file, deletes those segments
// and starts a new one.
func (s *Store) recoverLog() error {
	segs, err := segments(s.walBase)
	if err != nil {
		return err
	}
	o := overlay{}
	n := 0
	for _, seg := range segs {
		recs, err := readSegment(segmentName(s.walBase, seg))
		if err != nil {
			return fmt.Errorf("read write-ahead log: %w", err)
		}
		for _, r := range recs {
			o.add(r)
		}
		n += len(recs)
	}
	if n > 0 {
		if err := s.db.Update(func(tx *bolt.Tx) error { return mergeTx(tx, o.sorted()) }); err != nil {
			return fmt.Errorf("merge write-ahead log: %w", err)
		}
	}
	next := 0
	for _, seg := range segs {
		if err := os.Remove(segmentName(s.walBase, seg)); err != nil {
			return err
		}
		next = seg + 1
	}
	s.recovered = n
	s.wal, err = openSegment(s.walBase, next)
	return err
}

type keyWrite struct {
	r   broker.KeyRecord
	err chan error
}

// PutKey records a registration. It returns once the registration is on disk: appended to the write-ahead log
// together with every registration that arrived meanwhile, with one fdatasync.
func (s *Store) PutKey(r broker.KeyRecord) (err error) {
	defer func() {
		if recover() != nil {
			err = ErrClosed
		}
	}()
	w := keyWrite{r: r, err: make(chan error, 1)}
	s.keys <- w
	return <-w.err
}

// Flush merges every registration waiting in the write-ahead log into the bbolt file now (before a backup, say).
func (s *Store) Flush() (err error) {
	defer func() {
		if recover() != nil {
			err = ErrClosed
		}
	}()
	reply := make(chan error, 1)
	select {
	case s.flush <- reply:
	case <-s.keysDone:
		return ErrClosed
	}
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
	for {
		select {
		case w, ok := <-s.keys:
			if !ok {
				if busy {
					s.mergeDone(<-merged)
				}
				clean := true
				if s.startMerge(merged) {
					err := <-merged
					s.mergeDone(err)
					clean = err == nil
				}
				s.wal.close()
				if clean { // everything is in bbolt: the last, empty segment goes too
					if err := os.Remove(segmentName(s.walBase, s.wal.seg)); err != nil {
						s.logf("remove write-ahead log: %v", err)
					}
				}
				return
			}
			batch, recs = append(batch[:0], w), append(recs[:0], w.r)
		drain:
			for len(batch) < maxBatch {
				select {
				case w, ok := <-s.keys:
					if !ok {
						break drain
					}
					batch, recs = append(batch, w), append(recs, w.r)
				default:
					break drain
				}
			}
			errs := s.wal.append(recs)
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
		case reply := <-s.flush:
			if busy {
				s.mergeDone(<-merged)
				busy = false
			}
			var err error
			if s.startMerge(merged) {
				err = <-merged
				s.mergeDone(err)
			}
			reply <- err
		case err := <-merged:
			s.mergeDone(err)
			busy = false
		}
	}
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
		for _, m := range s.merging {
			for _, r := range m {
				s.pending.add(r)
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
			if err := os.Remove(segmentName(s.walBase, seg)); err != nil {
				s.logf("remove merged write-ahead log segment: %v", err)
			}
		}
	}
}

// overlayOf copies the unmerged records of domain.
func (s *Store) overlayOf(domain string) map[string]broker.KeyRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]broker.KeyRecord{}
	for _, o := range []overlay{s.merging, s.pending} {
		for k, r := range o[domain] {
			if old, ok := out[k]; ok {
				r = combine(old, r)
			}
			out[k] = r
		}
	}
	return out
}

func (s *Store) overlayDomains() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	set := map[string]bool{}
	for _, o := range []overlay{s.merging, s.pending} {
		for d := range o {
			set[d] = true
		}
	}
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	return out
}

// Key returns the record of key in domain, or ErrNotFound.
func (s *Store) Key(domain, key string) (broker.KeyRecord, error) {
	o, inLog := s.overlayOf(domain)[key]
	var r broker.KeyRecord
	found := false
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketKeys).Bucket([]byte(domain)); b != nil {
			if v := b.Get([]byte(key)); v != nil {
				r, found = decodeKey(domain, key, v), true
			}
		}
		return nil
	})
	switch {
	case err != nil:
		return broker.KeyRecord{}, err
	case found && inLog:
		return combine(r, o), nil
	case inLog:
		return o, nil
	case found:
		return r, nil
	}
	return broker.KeyRecord{}, ErrNotFound
}

// Keys calls fn, in key order, for every key of domain last seen at or after since.
func (s *Store) Keys(domain string, since time.Time, fn func(rec broker.KeyRecord) error) error {
	o := s.overlayOf(domain)
	emit := func(r broker.KeyRecord) error {
		if r.LastSeen.Before(since) {
			return nil
		}
		return fn(r)
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketKeys).Bucket([]byte(domain))
		if b == nil {
			return nil
		}
		cut := since.UnixNano()
		return b.ForEach(func(k, v []byte) error {
			if r, ok := o[string(k)]; ok {
				delete(o, string(k))
				return emit(combine(decodeKey(domain, string(k), v), r))
			}
			if len(v) < 16 || int64(binary.BigEndian.Uint64(v[8:])) < cut {
				return nil
			}
			return fn(decodeKey(domain, string(k), v))
		})
	})
	if err != nil {
		return err
	}
	rest := make([]string, 0, len(o))
	for k := range o {
		rest = append(rest, k)
	}
	sort.Strings(rest)
	for _, k := range rest {
		if err := emit(o[k]); err != nil {
			return err
		}
	}
	return nil
}

// KeyCounts returns the number of registered keys per domain.
func (s *Store) KeyCounts() (map[string]int, error) {
	out := map[string]int{}
	domains := s.overlayDomains()
	err := s.db.View(func(tx *bolt.Tx) error {
		keys := tx.Bucket(bucketKeys)
		if err := keys.ForEachBucket(func(name []byte) error {
			out[string(name)] = keys.Bucket(name).Stats().KeyN
			return nil
		}); err != nil {
			return err
		}
		for _, d := range domains {
			b := keys.Bucket([]byte(d))
			for k := range s.overlayOf(d) {
				if b == nil || b.Get([]byte(k)) == nil {
					out[d]++
				}
			}
		}
		return nil
	})
	return out, err
}
