package store

import (
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketSamples holds the peer samples of the status page's chart: samples/<worker>/<slot>.
var bucketSamples = []byte("samples")

// SampleSlots bounds the peer samples kept per worker: a ring of this many slots, so that at one sample a minute
// the chart covers 24 hours and the file never grows with time.
const SampleSlots = 1440

// PeerSample is a worker's connected peers (summed over its domains) at a time.
type PeerSample struct {
	Time  time.Time
	Peers int
}

// PutPeerSamples records the connected peers of each worker at t. A worker's sample goes into slot
// (t / interval) mod SampleSlots of its ring, replacing whatever was there.
func (s *Store) PutPeerSamples(t time.Time, interval time.Duration, peers map[string]int) error {
	if interval <= 0 {
		return fmt.Errorf("sample interval %v is not positive", interval)
	}
	var slot [2]byte
	binary.BigEndian.PutUint16(slot[:], uint16(t.UnixNano()/int64(interval)%SampleSlots))
	err := s.update(func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(bucketSamples)
		if err != nil {
			return err
		}
		for w, n := range peers {
			b, err := root.CreateBucketIfNotExists([]byte(w))
			if err != nil {
				return fmt.Errorf("worker %s: %w", w, err)
			}
			v := make([]byte, 12) // bbolt keeps the slice until the transaction commits
			binary.BigEndian.PutUint64(v[:8], uint64(t.UnixNano()))
			binary.BigEndian.PutUint32(v[8:], uint32(max(n, 0)))
			if err := b.Put(slot[:], v); err != nil {
				return fmt.Errorf("worker %s: %w", w, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store peer samples: %w", err)
	}
	return nil
}

// PeerSamples returns every worker's samples taken at or after since, oldest first.
func (s *Store) PeerSamples(since time.Time) (map[string][]PeerSample, error) {
	out := map[string][]PeerSample{}
	err := s.db.View(func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketSamples)
		if root == nil {
			return nil
		}
		return root.ForEachBucket(func(name []byte) error {
			var ss []PeerSample
			err := root.Bucket(name).ForEach(func(_, v []byte) error {
				if len(v) != 12 {
					return nil // not ours; skip rather than fail the page
				}
				t := time.Unix(0, int64(binary.BigEndian.Uint64(v[:8])))
				if !t.Before(since) {
					ss = append(ss, PeerSample{Time: t, Peers: int(binary.BigEndian.Uint32(v[8:]))})
				}
				return nil
			})
			sort.Slice(ss, func(i, j int) bool { return ss[i].Time.Before(ss[j].Time) })
			if len(ss) > 0 {
				out[string(name)] = ss
			}
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read peer samples: %w", err)
	}
	return out, nil
}
