package store

import (
	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// importChunk is how many records one Import transaction writes.
const importChunk = 50000

// Import writes records straight into the bbolt file, bypassing the write-ahead log, in large sorted
// transactions (bench/fillstate fills a state file with it). Records of a key already stored are combined with it
// as a merge does.
func (s *Store) Import(recs []broker.KeyRecord) error {
	entries := make([]mergeEntry, len(recs))
	for i, r := range recs {
		entries[i] = mergeEntry{r.Domain, r.Key, pendingOf(r)}
	}
	sortEntries(entries)
	for i := 0; i < len(entries); i += importChunk {
		chunk := entries[i:min(i+importChunk, len(entries))]
		if err := s.update(func(tx *bolt.Tx) error { return mergeTx(tx, chunk) }); err != nil {
			return err
		}
	}
	return nil
}
