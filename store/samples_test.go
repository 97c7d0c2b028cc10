package store

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
)

// TestPeerSamplesRing: samples come back per worker in time order, survive a reopen, and a worker's ring never
// holds more than SampleSlots of them however long the broker runs.
func TestPeerSamplesRing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range SampleSlots + 100 {
		at := t0.Add(time.Duration(i) * time.Minute)
		if err := s.PutPeerSamples(at, time.Minute, map[string]int{"gw04": i, "gw05": -1}); err != nil {
			t.Fatal(err)
		}
	}
	last := t0.Add(time.Duration(SampleSlots+99) * time.Minute)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	defer s.Close()
	err := s.db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket(bucketSamples).Bucket([]byte("gw04")).Stats().KeyN; n != SampleSlots {
			t.Errorf("ring holds %d samples, want %d", n, SampleSlots)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.PeerSamples(last.Add(-2 * time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]PeerSample{
		"gw04": {{last.Add(-2 * time.Minute), SampleSlots + 97}, {last.Add(-time.Minute), SampleSlots + 98}, {last, SampleSlots + 99}},
		"gw05": {{last.Add(-2 * time.Minute), 0}, {last.Add(-time.Minute), 0}, {last, 0}},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("samples (-want +got):\n%s", d)
	}
	all, err := s.PeerSamples(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(all["gw04"]); n != SampleSlots || !all["gw04"][0].Time.Equal(t0.Add(100*time.Minute)) {
		t.Errorf("%d samples from %v, want %d from %v", n, all["gw04"][0].Time, SampleSlots, t0.Add(100*time.Minute))
	}
}
