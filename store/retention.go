package store

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	// sweepChunk bounds the deletions of one sweep transaction, so that registrations and merges never wait
	// long behind a sweep.
	sweepChunk = 1000
	// sweepPause is the pause between two sweep transactions.
	sweepPause = 5 * time.Millisecond
)

// Retention configures the background deletion of keys not registered again for a while.
type Retention struct {
	// Keep is how long a key is kept after it was last registered; 0 keeps keys forever.
	Keep time.Duration
	// Every is how often the sweep runs (default: an hour).
	Every time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// StartRetention starts the sweep in the background: at once and then every r.Every, it deletes the keys last
// seen before r.Now() - r.Keep. Close stops it. Call it at most once.
func (s *Store) StartRetention(r Retention) {
	if r.Keep <= 0 {
		return
	}
	if r.Every <= 0 {
		r.Every = time.Hour
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if !s.startJob() {
		return
	}
	go func() {
		defer s.bg.Done()
		// The sweep owns the goroutine that ends its context at Close, and waits for it.
		ctx, cancel := context.WithCancel(context.Background())
		var stopper sync.WaitGroup
		defer stopper.Wait()
		defer cancel()
		stopper.Go(func() {
			select {
			case <-s.stopBG:
				cancel()
			case <-ctx.Done():
			}
		})
		t := time.NewTicker(r.Every)
		defer t.Stop()
		for {
			before := r.Now().Add(-r.Keep)
			n, err := s.Sweep(ctx, before)
			switch {
			case ctx.Err() != nil || err == ErrClosed:
				return
			case err != nil:
				s.logf("key retention sweep: %v", err)
			case n > 0:
				s.log.Info("expired keys deleted", "count", n, "last seen before", before)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// startJob counts a background job that Close must wait for, unless Close has begun.
func (s *Store) startJob() bool {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return false
	}
	s.bg.Add(1)
	return true
}

// Sweep deletes every key last seen before the given time, with its index entry, at most sweepChunk keys a
// transaction with a pause between them, until none is left or ctx ends. It reads only the expired part of the
// time index. Keys waiting in the write-ahead log were registered again: they stay. Revocations before the same
// time are forgotten. It returns how many keys it deleted.
func (s *Store) Sweep(ctx context.Context, before time.Time) (int, error) {
	if !s.startJob() {
		return 0, ErrClosed
	}
	defer s.bg.Done()
	var domains [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketByTime).ForEachBucket(func(d []byte) error {
			domains = append(domains, append([]byte(nil), d...))
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	cut := indexKey(before.UnixNano(), "")
	total := 0
	for _, d := range domains {
		var from []byte // resume after this index key (an entry kept because it waits in the log)
		for {
			if err := ctx.Err(); err != nil {
				return total, err
			}
			n, last, err := s.sweepChunk(string(d), from, cut)
			s.releaseMapped()
			total += n
			if err != nil {
				return total, fmt.Errorf("sweep domain %s: %w", d, err)
			}
			if last == nil {
				break
			}
			from = last
			select {
			case <-ctx.Done():
				return total, ctx.Err()
			case <-s.stopBG:
				return total, ErrClosed
			case <-time.After(sweepPause):
			}
		}
	}
	// Tombstones of revocations as old as the keys swept have nothing left to hold back (RevokeKey).
	if _, err := s.sweepRevoked(before); err != nil {
		return total, fmt.Errorf("sweep revocations: %w", err)
	}
	return total, nil
}

// sweepChunk deletes up to sweepChunk expired keys of domain in one transaction, from the index key after from.
// It returns the index key it stopped at, or nil when the domain has no more expired keys.
func (s *Store) sweepChunk(domain string, from, cut []byte) (deleted int, last []byte, err error) {
	err = s.updateInternal(func(tx *bolt.Tx) error {
		deleted, last = 0, nil
		idx := tx.Bucket(bucketByTime).Bucket([]byte(domain))
		keys := tx.Bucket(bucketKeys).Bucket([]byte(domain))
		if idx == nil {
			return nil
		}
		var expired [][]byte
		c := idx.Cursor()
		ik, _ := c.First()
		if from != nil {
			ik, _ = c.Seek(from)
			if ik != nil && bytes.Equal(ik, from) {
				ik, _ = c.Next()
			}
		}
		for ; ik != nil && bytes.Compare(ik, cut) < 0 && len(expired) < sweepChunk; ik, _ = c.Next() {
			expired = append(expired, append([]byte(nil), ik...))
		}
		if len(expired) == sweepChunk {
			last = expired[len(expired)-1]
		}
		s.mu.RLock()
		defer s.mu.RUnlock()
		for _, ik := range expired {
			key := ik[8:]
			if s.inOverlay(domain, string(key)) {
				continue // registered again: the merge moves its entry
			}
			if err := idx.Delete(ik); err != nil {
				return err
			}
			if keys == nil {
				continue
			}
			if v := keys.Get(key); v != nil && lastSeenOf(v) == indexTime(ik) {
				if err := keys.Delete(key); err != nil {
					return err
				}
				deleted++
			}
		}
		return addCounts(tx, map[string]int{domain: -deleted})
	})
	return deleted, last, err
}
