package store

import (
	"encoding/binary"
	"sort"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
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

// inOverlay reports whether key of domain waits in the log. Callers hold s.mu for reading.
func (s *Store) inOverlay(domain, key string) bool {
	if _, ok := s.pending[domain][key]; ok {
		return true
	}
	_, ok := s.merging[domain][key]
	return ok
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

// The value of keys/<domain>/<key>: first seen (8 bytes, big-endian Unix nanoseconds), last seen (8, same), then
// the gateway last assigned.
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

// lastSeenOf returns the last-seen field of a keys value as Unix nanoseconds.
func lastSeenOf(v []byte) int64 {
	if len(v) < 16 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v[8:]))
}

// indexKey is the key of bytime/<domain>: the last-seen time (8 bytes, Unix nanoseconds with the sign bit flipped,
// so that byte order is time order) followed by the key.
func indexKey(lastSeen int64, key string) []byte {
	ik := make([]byte, 8+len(key))
	binary.BigEndian.PutUint64(ik, uint64(lastSeen)^(1<<63))
	copy(ik[8:], key)
	return ik
}

// indexValue is the value of an index entry: the key's first-seen time (8 bytes, Unix nanoseconds), so that a
// page of the index gives whole records without reading the keys bucket.
func indexValue(firstSeen int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(firstSeen)) }

// firstSeenOf returns the first-seen time of an index value as Unix nanoseconds.
func firstSeenOf(v []byte) int64 {
	if len(v) < 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// indexTime returns the last-seen time of an index key as Unix nanoseconds.
func indexTime(ik []byte) int64 { return int64(binary.BigEndian.Uint64(ik) ^ (1 << 63)) }
