package store

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// mergeChunk is how many registrations one merge transaction writes. A merge is split into transactions over
// consecutive key ranges (so the pages they rewrite do not overlap and the total work stays the same), with a
// pause between them, so that a large merge does not hold a core for long while registrations wait. The size
// also bounds how much of the file a transaction maps (see releaseMapped): with 1 M keys stored, 1,024 random
// registrations mapped ~100 MB, 512 ~70 MB, 256 ~45 MB; but 256 cost a fifth of v2's throughput (more commits,
// each rewriting most branch pages and syncing twice), 512 a few per cent (BENCHMARKS.md).
const (
	mergeChunk = 512
	mergePause = 5 * time.Millisecond
)

// indexFill is how full bbolt packs the pages of the time index when it splits them. New entries go to its end
// (registrations are recent), where bbolt's default of one half would leave every page half empty.
const indexFill = 0.95

// mergeTx writes registrations into the keys buckets, combining each with what the bucket holds, and moves its
// entry in the time index. Its cost follows the registrations: one lookup, one put and one index move each.
func mergeTx(tx *bolt.Tx, entries []mergeEntry) error {
	var b, idx, revoked *bolt.Bucket
	domain := ""
	added := map[string]int{}
	for _, e := range entries {
		if b == nil || e.domain != domain {
			var err error
			if b, err = tx.Bucket(bucketKeys).CreateBucketIfNotExists([]byte(e.domain)); err != nil {
				return fmt.Errorf("domain bucket %q: %w", e.domain, err)
			}
			if idx, err = tx.Bucket(bucketByTime).CreateBucketIfNotExists([]byte(e.domain)); err != nil {
				return fmt.Errorf("index bucket %q: %w", e.domain, err)
			}
			idx.FillPercent = indexFill
			revoked = tx.Bucket(bucketRevoked).Bucket([]byte(e.domain))
			domain = e.domain
		}
		r := e.p.record(e.domain, e.key)
		if at := revokedAt(revoked, r.Key); at != 0 && r.LastSeen.UnixNano() <= at {
			continue // registered before its revocation (RevokeKey)
		}
		if old := b.Get([]byte(r.Key)); old != nil {
			if err := idx.Delete(indexKey(lastSeenOf(old), r.Key)); err != nil {
				return err
			}
			r = combine(decodeKey(domain, r.Key, old), r)
		} else {
			added[e.domain]++
		}
		if err := b.Put([]byte(r.Key), encodeKey(r)); err != nil {
			return err
		}
		if err := idx.Put(indexKey(r.LastSeen.UnixNano(), r.Key), indexValue(r.FirstSeen.UnixNano())); err != nil {
			return err
		}
	}
	return addCounts(tx, added)
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

// merge writes the overlay into bbolt through the group-commit writer, mergeChunk registrations a transaction.
// Merging is idempotent: after a failure or a crash half-way the whole overlay is merged again.
func (s *Store) merge(o overlay) error {
	entries := o.sorted()
	for i := 0; i < len(entries); i += mergeChunk {
		if i > 0 {
			time.Sleep(mergePause)
		}
		chunk := entries[i:min(i+mergeChunk, len(entries))]
		if err := s.updateInternal(func(tx *bolt.Tx) error { return mergeTx(tx, chunk) }); err != nil {
			return err
		}
		s.releaseMapped()
	}
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
