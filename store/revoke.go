package store

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A revocation removes a key from a domain and leaves a tombstone (revoked/<domain>/<key>: the time of the
// revocation, 8 bytes, big-endian Unix nanoseconds). Every registration of the key last seen at or before that
// time is dropped when it is merged, however late it arrives (from the write-ahead log, an import, another
// broker's catch-up); a registration after it stores the key again. Tombstones go with the retention sweep.

var bucketRevoked = []byte("revoked")

// RevokeKey removes key from domain as of at and records the revocation. It reports whether the key was stored
// and removed. A stored registration last seen after at (the node registered again since) stays, and a tombstone
// later than at stays as it is: applying a revocation twice, or one another broker made, changes nothing more.
// Registrations still in the write-ahead log are merged first, so that none of them brings the key back.
func (s *Store) RevokeKey(domain, key string, at time.Time) (bool, error) {
	if err := s.Flush(); err != nil {
		return false, fmt.Errorf("merge the write-ahead log before the revocation: %w", err)
	}
	found := false
	err := s.update(func(tx *bolt.Tx) error {
		var err error
		found, err = revokeTx(tx, domain, key, at)
		return err
	})
	return found, err
}

// revokeTx is RevokeKey's transaction, after its merge of the write-ahead log. It reports whether the key was
// stored and removed.
func revokeTx(tx *bolt.Tx, domain, key string, at time.Time) (bool, error) {
	found := false
	if b := tx.Bucket(bucketKeys).Bucket([]byte(domain)); b != nil {
		if v := b.Get([]byte(key)); v != nil && lastSeenOf(v) <= at.UnixNano() {
			found = true
			if idx := tx.Bucket(bucketByTime).Bucket([]byte(domain)); idx != nil {
				if err := idx.Delete(indexKey(lastSeenOf(v), key)); err != nil {
					return false, err
				}
			}
			if err := b.Delete([]byte(key)); err != nil {
				return false, err
			}
			if err := addCounts(tx, map[string]int{domain: -1}); err != nil {
				return false, err
			}
		}
	}
	rb, err := tx.Bucket(bucketRevoked).CreateBucketIfNotExists([]byte(domain))
	if err != nil {
		return false, err
	}
	if revokedAt(rb, key) >= at.UnixNano() {
		return found, nil
	}
	return found, rb.Put([]byte(key), binary.BigEndian.AppendUint64(nil, uint64(at.UnixNano())))
}

// RevokedAt returns when key was last revoked in domain, if its tombstone is still kept.
func (s *Store) RevokedAt(domain, key string) (at time.Time, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if n := revokedAt(tx.Bucket(bucketRevoked).Bucket([]byte(domain)), key); n != 0 {
			at, ok = time.Unix(0, n), true
		}
		return nil
	})
	return at, ok, err
}

// Revoked returns the keys of domain revoked at or after since, with the time of each revocation.
func (s *Store) Revoked(domain string, since time.Time) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := s.db.View(func(tx *bolt.Tx) error {
		rb := tx.Bucket(bucketRevoked).Bucket([]byte(domain))
		if rb == nil {
			return nil
		}
		return rb.ForEach(func(k, v []byte) error {
			if t := time.Unix(0, int64(binary.BigEndian.Uint64(v))); !t.Before(since) {
				out[string(k)] = t
			}
			return nil
		})
	})
	return out, err
}

// revokedAt returns the time key was revoked in domain (bucket rb, may be nil), or 0.
func revokedAt(rb *bolt.Bucket, key string) int64 {
	if rb == nil {
		return 0
	}
	if v := rb.Get([]byte(key)); len(v) == 8 {
		return int64(binary.BigEndian.Uint64(v))
	}
	return 0
}

// sweepRevoked deletes the tombstones of revocations before cut, in one transaction.
func (s *Store) sweepRevoked(cut time.Time) (int, error) {
	n := 0
	err := s.updateInternal(func(tx *bolt.Tx) error {
		n = 0
		return tx.Bucket(bucketRevoked).ForEachBucket(func(d []byte) error {
			rb := tx.Bucket(bucketRevoked).Bucket(d)
			var old [][]byte
			rb.ForEach(func(k, v []byte) error {
				if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) < cut.UnixNano() {
					old = append(old, append([]byte(nil), k...))
				}
				return nil
			})
			for _, k := range old {
				if err := rb.Delete(k); err != nil {
					return err
				}
				n++
			}
			return nil
		})
	})
	return n, err
}
