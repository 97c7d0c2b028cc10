package store

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
)

func TestRecordRoundTrip(t *testing.T) {
	r := broker.KeyRecord{Key: key1, Domain: "ffmuc_welt", FirstSeen: time.Unix(1, 2), LastSeen: time.Unix(3, 4), Gateway: "gw04"}
	b, err := appendRecord(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	got, n, err := readRecord(b)
	if err != nil || n != len(b) {
		t.Fatalf("readRecord: %v, %d of %d", err, n, len(b))
	}
	if diff := cmp.Diff(r, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for cut := 0; cut < len(b); cut++ {
		if _, _, err := readRecord(b[:cut]); err == nil {
			t.Errorf("record cut at %d read without error", cut)
		}
	}
	b[20] ^= 1
	if _, _, err := readRecord(b); err == nil {
		t.Error("corrupted record read without error")
	}
	if _, err := appendRecord(nil, broker.KeyRecord{Domain: string(make([]byte, 256))}); err == nil {
		t.Error("overlong domain accepted")
	}
}

// TestRecoverTornLog: what a killed broker left in the log (whole records, then a torn one) is merged at Open.
func TestRecoverTornLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	t0 := time.Unix(1_700_000_000, 0)
	var buf []byte
	for i, k := range []string{key1, key1, "other"} {
		ts := t0.Add(time.Duration(i) * time.Minute)
		buf, _ = appendRecord(buf, broker.KeyRecord{Key: k, Domain: "ffmuc_welt", FirstSeen: ts, LastSeen: ts, Gateway: []string{"gw1", "", "gw2"}[i]})
	}
	whole := len(buf)
	buf, _ = appendRecord(buf, broker.KeyRecord{Key: "torn", Domain: "ffmuc_welt", FirstSeen: t0, LastSeen: t0})
	buf = buf[:whole+10]
	if err := os.WriteFile(segmentName(path+".wal", 7), buf, 0o600); err != nil {
		t.Fatal(err)
	}
	s := open(t, path)
	defer s.Close()
	got, err := s.Key("ffmuc_welt", key1)
	want := broker.KeyRecord{Key: key1, Domain: "ffmuc_welt", FirstSeen: t0, LastSeen: t0.Add(time.Minute), Gateway: "gw1"}
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("recovered (-want +got):\n%s", diff)
	}
	if _, err := s.Key("ffmuc_welt", "torn"); err == nil {
		t.Error("torn record recovered")
	}
	if segs, _ := segments(path + ".wal"); len(segs) != 1 || segs[0] != 8 {
		t.Errorf("segments after recovery: %v, want just the new one (8)", segs)
	}
}

// TestBackgroundMerge: registrations move from the log into bbolt; reads see them before, during and after.
func TestBackgroundMerge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	defer s.Close()
	t0 := time.Unix(1_700_000_000, 0)
	s.PutKey(broker.KeyRecord{Key: key1, Domain: "d", FirstSeen: t0, LastSeen: t0, Gateway: "gw1"})
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	s.mu.RLock()
	if s.pendingN != 0 || s.merging != nil || len(s.pending) != 0 {
		t.Errorf("after Flush: %d pending, merging %v", s.pendingN, s.merging)
	}
	s.mu.RUnlock()
	var inBolt int
	s.db.View(func(tx *bolt.Tx) error { inBolt = tx.Bucket(bucketKeys).Bucket([]byte("d")).Stats().KeyN; return nil })
	if inBolt != 1 {
		t.Errorf("%d keys in bbolt after Flush, want 1", inBolt)
	}
	t1 := t0.Add(time.Hour)
	s.PutKey(broker.KeyRecord{Key: key1, Domain: "d", FirstSeen: t1, LastSeen: t1}) // in the log, over bbolt
	want := broker.KeyRecord{Key: key1, Domain: "d", FirstSeen: t0, LastSeen: t1, Gateway: "gw1"}
	got, _ := s.Key("d", key1)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("log over bbolt (-want +got):\n%s", diff)
	}
	var seen []broker.KeyRecord
	s.Keys("d", t1, func(r broker.KeyRecord) error { seen = append(seen, r); return nil })
	if diff := cmp.Diff([]broker.KeyRecord{want}, seen); diff != "" {
		t.Errorf("Keys (-want +got):\n%s", diff)
	}
	s.Close()
	if segs, _ := segments(path + ".wal"); len(segs) != 0 {
		t.Errorf("segments after Close: %v", segs)
	}
	s = open(t, path)
	got, _ = s.Key("d", key1)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after reopen (-want +got):\n%s", diff)
	}
}

// TestPreallocatedSegment: a segment preallocated (and grown past its first allocation) reads back up to the
// zeroed tail, as after a crash.
func TestPreallocatedSegment(t *testing.T) {
	defer func(n int64) { segmentPrealloc = n }(segmentPrealloc)
	segmentPrealloc = 300
	path := filepath.Join(t.TempDir(), "state.db")
	w, err := openSegment(path+".wal", 3)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for b := 0; b < 3; b++ {
		var recs []broker.KeyRecord
		for i := 0; i < 4; i++ {
			k := fmt.Sprintf("key-%d-%d", b, i)
			want = append(want, k)
			recs = append(recs, broker.KeyRecord{Key: k, Domain: "d", FirstSeen: time.Unix(1, 0), LastSeen: time.Unix(2, 0)})
		}
		for _, err := range w.append(recs) {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	w.close()
	if fi, _ := os.Stat(segmentName(path+".wal", 3)); fi.Size() < w.off || w.size == 0 {
		t.Logf("no preallocation on this file system (size %d)", fi.Size())
	}
	s := open(t, path) // a crash left the segment behind: Open merges it
	defer s.Close()
	var got []string
	s.Keys("d", time.Unix(0, 0), func(r broker.KeyRecord) error { got = append(got, r.Key); return nil })
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("recovered keys (-want +got):\n%s", diff)
	}
}
