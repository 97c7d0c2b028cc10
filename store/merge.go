package store

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// mergeChunk is how many registrations one merge transaction writes into the keys buckets. A merge is split into
// transactions over consecutive key ranges (so the pages they rewrite do not overlap and the total work stays the
// same), with a pause between them, so that a large merge does not hold a core for long while registrations wait.
// The size also bounds how much of the file a transaction maps (see releaseMapped): with 1 M keys stored, when
// the index entries were still written with their keys, 1,024 random registrations mapped ~100 MB, 512 ~70 MB,
// 256 ~45 MB; but 256 cost a fifth of v2's throughput (more commits, each rewriting most branch pages and syncing
// twice), 512 a few per cent (BENCHMARKS.md). Without the index 512 map ~30 MB.
const (
	mergeChunk = 512
	mergePause = 5 * time.Millisecond
)

// indexChunk is how many time-index entries one merge transaction writes after the keys. They go in time order,
// mostly to the end of the index, so a transaction of them rewrites few pages whatever the file holds.
const indexChunk = 8192

// indexFill is how full bbolt packs the pages of the time index when it splits them. New entries go to its end
// (registrations are recent), where bbolt's default of one half would leave every page half empty.
const indexFill = 0.95

// indexEntry is the time-index entry of a merged registration, as mergeKeys leaves it for putIndex.
type indexEntry struct {
	domain, key string
	last, first int64 // Unix ns: the key's last and first seen as merged into the keys bucket
}

// mergeTx merges registrations (sorted by sortEntries) in one transaction: the keys, then their time-index entries
// in time order.
func mergeTx(tx *bolt.Tx, entries []mergeEntry) error {
	ies, err := mergeKeys(tx, entries, nil)
	if err != nil {
		return err
	}
	sortIndexEntries(ies)
	return putIndex(tx, ies)
}

// mergeKeys writes registrations into the keys buckets, combining each with what the bucket holds, deletes the
// key's old entry in the time index and appends the new one to ies, for putIndex. Its cost follows the
// registrations: one lookup, one put and, for a key stored before, one index deletion each.
//
// The new entry may be written in a later transaction: a key whose index entry is missing is still in the overlay
// until putIndex has run (reads and the sweep take it from there; a revocation in between putIndex checks again),
// and a merge that stops between the two is merged again whole. That repeat is right because the old entry goes
// in the same transaction as the put that overwrites the last-seen time it is found by: the repeat finds the
// merged value, combines it with the same registration into the same value, deletes an entry that is not there
// and puts the new one.
func mergeKeys(tx *bolt.Tx, entries []mergeEntry, ies []indexEntry) ([]indexEntry, error) {
	var b, idx, revoked *bolt.Bucket
	domain := ""
	added := map[string]int{}
	vals := valueSlab(entries)
	var k, ik []byte
	for _, e := range entries {
		if b == nil || e.domain != domain {
			var err error
			if b, err = tx.Bucket(bucketKeys).CreateBucketIfNotExists([]byte(e.domain)); err != nil {
				return ies, fmt.Errorf("domain bucket %q: %w", e.domain, err)
			}
			idx = tx.Bucket(bucketByTime).Bucket([]byte(e.domain))
			revoked = tx.Bucket(bucketRevoked).Bucket([]byte(e.domain))
			domain = e.domain
		}
		if at := revokedAt(revoked, e.key); at != 0 && e.p.last <= at {
			continue // registered before its revocation (RevokeKey)
		}
		p := e.p
		k = append(k[:0], e.key...) // bbolt copies the keys it stores
		if old := b.Get(k); old != nil {
			if idx != nil {
				ik = appendIndexKey(ik[:0], lastSeenOf(old), e.key)
				if err := idx.Delete(ik); err != nil {
					return ies, err
				}
			}
			p = combinePending(old, p)
		} else {
			added[e.domain]++
		}
		var v []byte
		vals, v = appendKeyValue(vals, p)
		if err := b.Put(k, v); err != nil {
			return ies, err
		}
		ies = append(ies, indexEntry{domain: e.domain, key: e.key, last: p.last, first: p.first})
	}
	return ies, addCounts(tx, added)
}

// putIndex writes the time-index entries that mergeKeys left, best in time order (sortIndexEntries): then they
// go to few pages, mostly at the end of the index. A key revoked since its put (RevokeKey between the two
// transactions; it has deleted the key) gets no entry: the same test that mergeKeys makes, on the merged time.
func putIndex(tx *bolt.Tx, ies []indexEntry) error {
	var idx, revoked *bolt.Bucket
	domain := ""
	vals := make([]byte, 0, 8*len(ies)) // bbolt keeps the values until the commit; keys it copies
	var ik []byte
	for _, e := range ies {
		if idx == nil || e.domain != domain {
			var err error
			if idx, err = tx.Bucket(bucketByTime).CreateBucketIfNotExists([]byte(e.domain)); err != nil {
				return fmt.Errorf("index bucket %q: %w", e.domain, err)
			}
			idx.FillPercent = indexFill
			revoked = tx.Bucket(bucketRevoked).Bucket([]byte(e.domain))
			domain = e.domain
		}
		if at := revokedAt(revoked, e.key); at != 0 && e.last <= at {
			continue
		}
		ik = appendIndexKey(ik[:0], e.last, e.key)
		vals = binary.BigEndian.AppendUint64(vals, uint64(e.first))
		if err := idx.Put(ik, vals[len(vals)-8:]); err != nil {
			return err
		}
	}
	return nil
}

// sortIndexEntries orders index entries by domain and index key: time, then key.
func sortIndexEntries(ies []indexEntry) {
	slices.SortFunc(ies, func(a, b indexEntry) int {
		return cmp.Or(strings.Compare(a.domain, b.domain), cmp.Compare(a.last, b.last), strings.Compare(a.key, b.key))
	})
}

// buildIndex fills the time index from the keys buckets (the migration from schema 1).
func buildIndex(tx *bolt.Tx) (int, error) {
	n := 0
	keys := tx.Bucket(bucketKeys)
	err := keys.ForEachBucket(func(domain []byte) error {
		idx, err := tx.Bucket(bucketByTime).CreateBucketIfNotExists(domain)
		if err != nil {
			return err
		}
		return keys.Bucket(domain).ForEach(func(k, v []byte) error {
			n++
			return idx.Put(indexKey(lastSeenOf(v), string(k)), indexValue(decodeKey("", "", v).FirstSeen.UnixNano()))
		})
	})
	return n, err
}

// merge writes the overlay into bbolt through the group-commit writer: the keys, mergeChunk registrations a
// transaction in key order, then their time-index entries, indexChunk a transaction in time order. Merging is
// idempotent: after a failure or a crash half-way (also between the keys and the index) the whole overlay is
// merged again.
func (s *Store) merge(o overlay) error {
	entries := o.sorted()
	ies := make([]indexEntry, 0, len(entries))
	for i := 0; i < len(entries); i += mergeChunk {
		if i > 0 {
			time.Sleep(mergePause)
		}
		chunk := entries[i:min(i+mergeChunk, len(entries))]
		n := len(ies)
		if err := s.updateInternal(func(tx *bolt.Tx) error {
			var err error
			ies, err = mergeKeys(tx, chunk, ies[:n]) // [:n]: a failed try and a retry alone start again
			return err
		}); err != nil {
			return err
		}
		s.releaseMapped()
	}
	if s.indexHook != nil {
		if err := s.indexHook(); err != nil {
			return err
		}
	}
	sortIndexEntries(ies)
	for i := 0; i < len(ies); i += indexChunk {
		time.Sleep(mergePause)
		chunk := ies[i:min(i+indexChunk, len(ies))]
		if err := s.updateInternal(func(tx *bolt.Tx) error { return putIndex(tx, chunk) }); err != nil {
			return err
		}
	}
	s.releaseMapped()
	return nil
}

// DamagedSegment is a write-ahead log segment that Open found damaged and kept aside.
type DamagedSegment struct {
	File      string // where it is now: the segment's name with .damaged appended
	Recovered int    // registrations read from it and merged
	Lost      int    // unreadable stretches in it, each at least one registration
}

// recoverLog merges what earlier runs left in the write-ahead log into the bbolt file, deletes those segments
// and starts a new one. A damaged segment is not deleted: every registration that can be read from it is merged,
// and it is renamed to <segment>.damaged and reported (an ERROR line, Damaged and the store's metrics), since it
// held data that could not be read.
func (s *Store) recoverLog() error {
	segs, err := segments(s.walBase)
	if err != nil {
		return err
	}
	o := overlay{}
	n := 0
	damaged := map[int]segmentRead{}
	for i, seg := range segs {
		rd, err := readSegment(segmentName(s.walBase, seg), i == len(segs)-1)
		if err != nil {
			return fmt.Errorf("read write-ahead log: %w", err)
		}
		for _, r := range rd.recs {
			o.add(r)
		}
		n += len(rd.recs)
		if rd.damaged {
			damaged[seg] = rd
		}
	}
	if n > 0 {
		if err := s.db.Update(func(tx *bolt.Tx) error { return mergeTx(tx, o.sorted()) }); err != nil {
			return fmt.Errorf("merge write-ahead log: %w", err)
		}
		s.releaseMapped() // a large log touches most of the file: do not keep it mapped until the first merge
	}
	next := 0
	for _, seg := range segs {
		name := segmentName(s.walBase, seg)
		next = seg + 1
		rd, bad := damaged[seg]
		if !bad {
			if err := s.retire(seg); err != nil {
				return err
			}
			continue
		}
		aside := name + ".damaged"
		for i := 1; fileExists(aside); i++ {
			aside = fmt.Sprintf("%s.damaged.%d", name, i)
		}
		if err := os.Rename(name, aside); err != nil {
			return fmt.Errorf("keep damaged write-ahead log segment aside: %w", err)
		}
		s.damaged = append(s.damaged, DamagedSegment{File: aside, Recovered: len(rd.recs), Lost: rd.lost})
		s.log.Error("damaged write-ahead log segment kept aside; the registrations that could be read were recovered",
			"file", aside, "recovered", len(rd.recs), "lost at least", rd.lost, "unreadable bytes", rd.unreadable)
	}
	if len(damaged) > 0 {
		if err := syncDir(filepath.Dir(s.walBase)); err != nil {
			return err
		}
	}
	// Segment numbers never go back: the archive and the last backup name segments by number.
	arch, err := archived(s.walBase)
	if err != nil {
		return fmt.Errorf("read the write-ahead log archive: %w", err)
	}
	if len(arch) > 0 {
		next = max(next, arch[len(arch)-1]+1)
	}
	next = max(next, s.nextSeg)
	s.recovered = n
	s.wal, err = openSegment(s.walBase, next)
	return err
}

// Damaged lists the write-ahead log segments that Open found damaged and kept aside.
func (s *Store) Damaged() []DamagedSegment { return s.damaged }

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// releaseMapped unmaps the state file's pages from the process (madvise MADV_DONTNEED on bbolt's read-only shared
// mapping). Merges and sweeps read leaf pages all over the file, and their commits read the old page of every leaf
// they rewrite again (to free it); the mapping keeps every page touched until the next remap, and the kernel maps
// up to 64 KB around each faulting page, so the broker's RSS would grow to the size of the file
// (220 MB after 15 s of full load with 1 M keys stored): clean
// page-cache pages, but counted as the process's memory (BENCHMARKS.md). The pages stay in the page cache, and the
// next read maps them again with a minor fault. The read transaction holds off a remap meanwhile. A failure
// (there is none on Linux for a valid range) only leaves pages mapped.
func (s *Store) releaseMapped() {
	_ = s.db.View(func(tx *bolt.Tx) error { return dontNeed(s.db.Info().Data, tx.Size()) })
}
