package store

import (
	"cmp"
	"encoding/binary"
	"slices"
	"strings"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// overlay holds registrations that are durable in the write-ahead log but not yet merged: domain → key → what is
// known of it. Under full load it holds up to mergeThreshold registrations, and as many more in the overlay being
// merged, so its values are kept small: a waiting registration costs its key, a map slot and 32 bytes.
type overlay map[string]map[string]pendingKey

// pendingKey is a registration in the overlay: first and last seen (Unix nanoseconds, as the log and the file keep
// them) and the gateway last assigned.
type pendingKey struct {
	first, last int64
	gateway     string
}

func (o overlay) add(r broker.KeyRecord) {
	m := o[r.Domain]
	if m == nil {
		m = map[string]pendingKey{}
		o[r.Domain] = m
	}
	if old, ok := m[r.Key]; ok {
		r = combine(old.record(r.Domain, r.Key), r)
	}
	m[r.Key] = pendingOf(r)
}

// pendingOf returns what the overlay keeps of r.
func pendingOf(r broker.KeyRecord) pendingKey {
	return pendingKey{first: r.FirstSeen.UnixNano(), last: r.LastSeen.UnixNano(), gateway: r.Gateway}
}

// record returns p as the record of key in domain.
func (p pendingKey) record(domain, key string) broker.KeyRecord {
	return broker.KeyRecord{Key: key, Domain: domain, FirstSeen: time.Unix(0, p.first), LastSeen: time.Unix(0, p.last),
		Gateway: p.gateway}
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

// combinePending is combine for a registration waiting in the overlay and the value a keys bucket holds for its
// key (see encodeKey), without decoding the value into a record.
func combinePending(old []byte, p pendingKey) pendingKey {
	if len(old) < 16 {
		return p
	}
	p.first = min(p.first, int64(binary.BigEndian.Uint64(old)))
	p.last = max(p.last, int64(binary.BigEndian.Uint64(old[8:])))
	if p.gateway == "" {
		p.gateway = string(old[16:])
	}
	return p
}

// mergeEntry is one registration to merge.
type mergeEntry struct {
	domain, key string
	p           pendingKey
}

// sorted returns the overlay's registrations ordered by domain and key.
func (o overlay) sorted() []mergeEntry {
	n := 0
	for _, m := range o {
		n += len(m)
	}
	out := make([]mergeEntry, 0, n)
	for d, m := range o {
		for k, p := range m {
			out = append(out, mergeEntry{d, k, p})
		}
	}
	sortEntries(out)
	return out
}

// sortEntries orders registrations by domain and key, the order of the keys buckets.
func sortEntries(es []mergeEntry) {
	slices.SortFunc(es, func(a, b mergeEntry) int {
		return cmp.Or(strings.Compare(a.domain, b.domain), strings.Compare(a.key, b.key))
	})
}

// inOverlay reports whether key of domain waits in the log. Callers hold s.mu for reading.
func (s *Store) inOverlay(domain, key string) bool {
	if _, ok := s.pending[domain][key]; ok {
		return true
	}
	_, ok := s.merging[domain][key]
	return ok
}

// overlayKey returns the unmerged record of key in domain, if the log holds one, without copying the overlays.
func (s *Store) overlayKey(domain, key string) (broker.KeyRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var r broker.KeyRecord
	found := false
	for _, o := range []overlay{s.merging, s.pending} {
		if p, ok := o[domain][key]; ok {
			if found {
				r = combine(r, p.record(domain, key))
			} else {
				r, found = p.record(domain, key), true
			}
		}
	}
	return r, found
}

// overlayOf copies the unmerged records of domain.
func (s *Store) overlayOf(domain string) map[string]broker.KeyRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]broker.KeyRecord{}
	for _, o := range []overlay{s.merging, s.pending} {
		for k, p := range o[domain] {
			r := p.record(domain, k)
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

// appendKeyValue appends the keys value of p (as encodeKey) to slab and returns it and the value: a merge
// transaction keeps all its values in one allocation, since bbolt refers to them until the commit.
func appendKeyValue(slab []byte, p pendingKey) (out, v []byte) {
	n := len(slab)
	slab = binary.BigEndian.AppendUint64(slab, uint64(p.first))
	slab = binary.BigEndian.AppendUint64(slab, uint64(p.last))
	slab = append(slab, p.gateway...)
	return slab, slab[n:len(slab):len(slab)]
}

// valueSlab returns room for the keys values of entries (appendKeyValue).
func valueSlab(entries []mergeEntry) []byte {
	n := 0
	for _, e := range entries {
		n += 16 + len(e.p.gateway)
	}
	return make([]byte, 0, n)
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
	return appendIndexKey(make([]byte, 0, 8+len(key)), lastSeen, key)
}

// appendIndexKey appends the index key of key last seen at lastSeen to dst.
func appendIndexKey(dst []byte, lastSeen int64, key string) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(lastSeen)^(1<<63))
	return append(dst, key...)
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
