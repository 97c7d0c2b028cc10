package store

import (
	"bytes"
	"math"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// Key returns the record of key in domain, or ErrNotFound. A registration still in the write-ahead log from
// before a revocation of the key, which its merge will drop, is not found either.
func (s *Store) Key(domain, key string) (broker.KeyRecord, error) {
	o, inLog := s.overlayKey(domain, key)
	var r broker.KeyRecord
	found := false
	var revoked int64
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketKeys).Bucket([]byte(domain)); b != nil {
			if v := b.Get([]byte(key)); v != nil {
				r, found = decodeKey(domain, key, v), true
			}
		}
		revoked = revokedAt(tx.Bucket(bucketRevoked).Bucket([]byte(domain)), key)
		return nil
	})
	if inLog && revoked != 0 && o.LastSeen.UnixNano() <= revoked {
		inLog = false
	}
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

// KeysPage returns up to limit keys of domain last seen at or after since, in order of last-seen time (then key),
// starting after the cursor a previous page returned ("" for the first page); next is "" after the last page.
// The records carry key, domain, first and last seen, not the gateway.
//
// It reads only the time index from since on (and the registrations still in the write-ahead log) in one short
// read transaction, so a caller publishes each page outside any transaction. The order is the same whether a
// registration is still in the log or already merged, so pages stay consistent while merges run; a key
// registered again between two pages may come twice.
func (s *Store) KeysPage(domain string, since time.Time, after broker.KeyCursor, limit int) ([]broker.KeyRecord, broker.KeyCursor, error) {
	if limit <= 0 {
		limit = 1
	}
	start := indexKey(since.UnixNano(), "")
	if after != "" && bytes.Compare([]byte(after), start) >= 0 {
		start = append([]byte(after), 0) // the smallest index key after the cursor
	}
	page, err := s.indexEntries(domain, s.overlayPage(domain, start, limit+1), start, limit+1, false) // one more: a next page?
	if err != nil {
		return nil, "", err
	}
	slices.SortFunc(page, func(a, b pageEntry) int { return strings.Compare(a.ik, b.ik) })
	// A merge that ended between overlayPage and the transaction shows a key twice.
	page = slices.CompactFunc(page, func(a, b pageEntry) bool { return a.ik == b.ik })
	more := len(page) > limit
	if more {
		page = page[:limit]
	}
	var next broker.KeyCursor
	if more {
		next = broker.KeyCursor(page[len(page)-1].ik)
	}
	return records(domain, page), next, nil
}

// indexEntries appends to page up to n entries of the time index of domain that are not in the write-ahead log
// (the log's own come from overlayPage), from start on, or with backwards from the end down, in one read
// transaction.
func (s *Store) indexEntries(domain string, page []pageEntry, start []byte, n int, backwards bool) ([]pageEntry, error) {
	err := s.db.View(func(tx *bolt.Tx) error {
		idx := tx.Bucket(bucketByTime).Bucket([]byte(domain))
		if idx == nil {
			return nil
		}
		s.mu.RLock()
		defer s.mu.RUnlock()
		c := idx.Cursor()
		ik, v := c.Seek(start)
		step := c.Next
		if backwards {
			ik, v = c.Last()
			step = c.Prev
		}
		for read := 0; ik != nil && read < n; ik, v = step() {
			s.visited.Add(1)
			if s.inOverlay(domain, string(ik[8:])) {
				continue // the log's record is newer: it comes from overlayPage, at its own time
			}
			page = append(page, pageEntry{ik: string(ik), firstSeen: firstSeenOf(v)})
			read++
		}
		return nil
	})
	return page, err
}

// records turns index entries into key records (key, domain, first and last seen).
func records(domain string, page []pageEntry) []broker.KeyRecord {
	recs := make([]broker.KeyRecord, len(page))
	for i, e := range page {
		recs[i] = broker.KeyRecord{Key: e.ik[8:], Domain: domain, FirstSeen: time.Unix(0, e.firstSeen),
			LastSeen: time.Unix(0, indexTime([]byte(e.ik)))}
	}
	return recs
}

// pageEntry is one key of a page: its index key and first-seen time (Unix ns).
type pageEntry struct {
	ik        string
	firstSeen int64
}

// overlayPage returns the first limit registrations of domain still in the write-ahead log whose index keys are
// at or after start.
func (s *Store) overlayPage(domain string, start []byte, limit int) []pageEntry {
	var out []pageEntry
	for k, r := range s.overlayOf(domain) {
		if ik := indexKey(r.LastSeen.UnixNano(), k); bytes.Compare(ik, start) >= 0 {
			out = append(out, pageEntry{ik: string(ik), firstSeen: r.FirstSeen.UnixNano()})
		}
	}
	slices.SortFunc(out, func(a, b pageEntry) int { return strings.Compare(a.ik, b.ik) })
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}

// LatestKeys returns up to limit keys of domain, the most recently seen first, with key, domain, first and last
// seen (not the gateway; for a registration still in the write-ahead log, its own first seen, as KeysPage). It
// walks the time index backwards from its end in one read transaction, together with the registrations still in
// the write-ahead log.
func (s *Store) LatestKeys(domain string, limit int) ([]broker.KeyRecord, error) {
	if limit <= 0 {
		limit = 1
	}
	page := s.overlayPage(domain, indexKey(0, ""), math.MaxInt)
	if len(page) > limit {
		page = page[len(page)-limit:]
	}
	page, err := s.indexEntries(domain, page, nil, limit, true)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(page, func(a, b pageEntry) int { return strings.Compare(b.ik, a.ik) })
	page = slices.CompactFunc(page, func(a, b pageEntry) bool { return a.ik == b.ik })
	if len(page) > limit {
		page = page[:limit]
	}
	return records(domain, page), nil
}
