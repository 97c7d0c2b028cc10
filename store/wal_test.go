package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
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

// TestRecoverTornLog: what a killed broker of the first version left in the log (records without groups, then a
// torn one) is merged at Open.
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
	if diff := cmp.Diff([]string{key1}, allKeys(t, s, "d", t1)); diff != "" {
		t.Errorf("KeysPage (-want +got):\n%s", diff)
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
	got := allKeys(t, s, "d", time.Unix(0, 0))
	sort.Strings(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("recovered keys (-want +got):\n%s", diff)
	}
}

// segmentBytes renders groups of records as a segment of the current format, with the offset of each group.
func segmentBytes(t *testing.T, groups ...[]broker.KeyRecord) ([]byte, []int) {
	t.Helper()
	b := append([]byte(nil), segmentMagic...)
	var offs []int
	for _, g := range groups {
		offs = append(offs, len(b))
		var recs []byte
		for _, r := range g {
			var err error
			if recs, err = appendRecord(recs, r); err != nil {
				t.Fatal(err)
			}
		}
		b = binary.BigEndian.AppendUint32(b, uint32(len(recs)))
		b = binary.BigEndian.AppendUint32(b, crc32.Checksum(recs, crcTable))
		b = append(b, recs...)
	}
	return b, offs
}

func recs(t0 time.Time, keys ...string) []broker.KeyRecord {
	var out []broker.KeyRecord
	for _, k := range keys {
		out = append(out, broker.KeyRecord{Key: k, Domain: "d", FirstSeen: t0, LastSeen: t0})
	}
	return out
}

// TestReadSegment: a torn last group is dropped, whatever part of it reached the disk; a bad group with data
// after it is corruption.
func TestReadSegment(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	whole, offs := segmentBytes(t, recs(t0, "a", "b"), recs(t0, "c"), recs(t0, "d", "e"))
	zeros := make([]byte, 4096) // a preallocated tail
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	flip := func(b []byte, at int) []byte { b = bytes.Clone(b); b[at] ^= 0x40; return b }
	zero := func(b []byte, from, to int) []byte { b = bytes.Clone(b); clear(b[from:to]); return b }
	last := offs[2]
	tests := []struct {
		name    string
		data    []byte
		want    []string
		corrupt int // offset of the error, -1 none
	}{
		{"whole", whole, []string{"a", "b", "c", "d", "e"}, -1},
		{"whole, preallocated", cat(whole, zeros), []string{"a", "b", "c", "d", "e"}, -1},
		{"empty", nil, nil, -1},
		{"magic only", cat(segmentMagic, zeros), nil, -1},
		{"zeros only (crash before the magic)", zeros, nil, -1},
		{"last group cut short", whole[:len(whole)-5], []string{"a", "b", "c"}, -1},
		{"last group header cut short", whole[:last+5], []string{"a", "b", "c"}, -1},
		{"last group's end not on disk", cat(zero(whole, len(whole)-10, len(whole)), zeros), []string{"a", "b", "c"}, -1},
		{"last group's header not on disk", cat(zero(whole, last, last+8), zeros), []string{"a", "b", "c"}, -1},
		{"last group garbled", cat(flip(whole, len(whole)-3), zeros), []string{"a", "b", "c"}, -1},
		{"middle group garbled", cat(flip(whole, offs[1]+12), zeros), []string{"a", "b"}, offs[1]},
		{"first group garbled", flip(whole, 20), nil, offs[0]},
		{"middle group's header garbled", flip(whole, offs[1]+1), []string{"a", "b"}, offs[1]},
		{"middle group zeroed", zero(whole, offs[1], offs[2]), []string{"a", "b"}, offs[1]},
		{"data far after a zero header", cat(whole[:last], make([]byte, maxGroup+8), whole[last:]), []string{"a", "b", "c"}, last},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "seg")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := readSegment(path)
			var keys []string
			for _, r := range got {
				keys = append(keys, r.Key)
			}
			if diff := cmp.Diff(tc.want, keys); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
			var ce *CorruptError
			switch {
			case tc.corrupt < 0 && err != nil:
				t.Errorf("error %v, want none", err)
			case tc.corrupt >= 0 && !errors.As(err, &ce):
				t.Errorf("error %v, want a CorruptError", err)
			case tc.corrupt >= 0 && (ce.Offset != int64(tc.corrupt) || ce.File != path):
				t.Errorf("corrupt at %s:%d, want offset %d", ce.File, ce.Offset, tc.corrupt)
			}
		})
	}
}

// TestCorruptLogRefusedThenSalvaged: a log with a bad group in the middle stops Open with a message naming the
// file, the offset and the truncate command that README documents; after that command the store opens with the
// records before the bad group.
func TestCorruptLogRefusedThenSalvaged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	t0 := time.Unix(1_700_000_000, 0)
	data, offs := segmentBytes(t, recs(t0, "a"), recs(t0, "b"), recs(t0, "c"))
	data[offs[1]+12] ^= 1
	seg := segmentName(path+".wal", 4)
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path, testenv.Logger(t))
	want := fmt.Sprintf("truncate -s %d %s", offs[1], seg)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open = %v, want an error that says %q", err, want)
	}
	if err := exec.Command("truncate", "-s", fmt.Sprint(offs[1]), seg).Run(); err != nil {
		t.Fatal(err)
	}
	s := open(t, path)
	defer s.Close()
	if diff := cmp.Diff([]string{"a"}, allKeys(t, s, "d", t0)); diff != "" {
		t.Errorf("keys after salvage (-want +got):\n%s", diff)
	}
}

// TestWriteFailureStartsNewSegment: when a write to the log fails (here its descriptor turned read-only
// underneath), that group fails and the registrations after it go to a new segment, which works.
func TestWriteFailureStartsNewSegment(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	defer s.Close()
	t0 := time.Unix(1_700_000_000, 0)
	put := func(k string) error {
		return s.PutKey(broker.KeyRecord{Key: k, Domain: "d", FirstSeen: t0, LastSeen: t0})
	}
	if err := put("before"); err != nil {
		t.Fatal(err)
	}
	seg := segmentName(path+".wal", s.wal.seg) // keyWriter is idle: PutKey returned after its append
	ro, err := os.Open(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup2(int(ro.Fd()), int(s.wal.f.Fd())); err != nil {
		t.Fatal(err)
	}
	ro.Close()
	if err := put("failed"); err == nil {
		t.Fatal("PutKey succeeded on a read-only log")
	}
	for _, k := range []string{"after1", "after2"} {
		if err := put(k); err != nil {
			t.Fatalf("PutKey(%s) after a failed write: %v", k, err)
		}
	}
	// What a crash now would leave: every acknowledged registration readable, nothing corrupt.
	segs, _ := segments(path + ".wal")
	var got []string
	for _, n := range segs {
		rs, err := readSegment(segmentName(path+".wal", n))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			got = append(got, fmt.Sprintf("%d:%s", n, r.Key))
		}
	}
	if diff := cmp.Diff([]string{"0:before", "1:after1", "1:after2"}, got); diff != "" {
		t.Errorf("segment:key on disk (-want +got):\n%s", diff)
	}
}
