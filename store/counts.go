package store

import (
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// The counts bucket holds how many keys each domain has in the keys bucket, kept in the same transactions that
// add and delete keys (merges, imports, the retention sweep), so that reading them costs one bucket read however
// many keys there are.

var bucketCounts = []byte("counts")

// addCounts adds delta to the stored count of each domain.
func addCounts(tx *bolt.Tx, delta map[string]int) error {
	b := tx.Bucket(bucketCounts)
	for d, n := range delta {
		if n == 0 {
			continue
		}
		cur := int64(0)
		if v := b.Get([]byte(d)); len(v) == 8 {
			cur = int64(binary.BigEndian.Uint64(v))
		}
		if err := b.Put([]byte(d), binary.BigEndian.AppendUint64(nil, uint64(max(cur+int64(n), 0)))); err != nil {
			return err
		}
	}
	return nil
}

// buildCounts counts the keys of every domain (the migration to schema 3).
func buildCounts(tx *bolt.Tx) error {
	keys := tx.Bucket(bucketKeys)
	delta := map[string]int{}
	err := keys.ForEachBucket(func(d []byte) error {
		delta[string(d)] = keys.Bucket(d).Stats().KeyN
		return nil
	})
	if err != nil {
		return err
	}
	return addCounts(tx, delta)
}

// KeyCounts returns how many keys each domain has in the state file. Registrations still in the write-ahead log
// are counted once merged (within 30 s).
func (s *Store) KeyCounts() (map[string]int, error) {
	out := map[string]int{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCounts).ForEach(func(d, v []byte) error {
			if len(v) == 8 {
				out[string(d)] = int(binary.BigEndian.Uint64(v))
			}
			return nil
		})
	})
	return out, err
}
