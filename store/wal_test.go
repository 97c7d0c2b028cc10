package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
func segmentBytes(t testing.TB, groups ...[]broker.KeyRecord) ([]byte, []int) {
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

// TestReadSegment: a torn last group is dropped, whatever part of it reached the disk; from a bad stretch with
// data after it (damage) every record whose own checksum holds is still read, and the segment is reported damaged
// with the number of unreadable stretches.
func TestReadSegment(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	whole, offs := segmentBytes(t, recs(t0, "a", "b"), recs(t0, "c"), recs(t0, "d", "e"))
	zeros := make([]byte, 4096) // a preallocated tail
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	flip := func(b []byte, at int) []byte { b = bytes.Clone(b); b[at] ^= 0x40; return b }
	zero := func(b []byte, from, to int) []byte { b = bytes.Clone(b); clear(b[from:to]); return b }
	last := offs[2]
	rec := len(whole[offs[1]+8:]) - (len(whole) - offs[2]) // the length of record c
	all := []string{"a", "b", "c", "d", "e"}
	tests := []struct {
		name    string
		data    []byte
		want    []string
		damaged bool
		lost    int
	}{
		{"whole", whole, all, false, 0},
		{"whole, preallocated", cat(whole, zeros), all, false, 0},
		{"empty", nil, nil, false, 0},
		{"magic only", cat(segmentMagic, zeros), nil, false, 0},
		{"zeros only (crash before the magic)", zeros, nil, false, 0},
		{"magic cut short", segmentMagic[:5], nil, false, 0},
		{"last group cut short", whole[:len(whole)-5], []string{"a", "b", "c", "d"}, false, 0},
		{"last group header cut short", whole[:last+5], []string{"a", "b", "c"}, false, 0},
		{"last group's end not on disk", cat(zero(whole, len(whole)-10, len(whole)), zeros), []string{"a", "b", "c", "d"}, false, 0},
		{"last group's header not on disk", cat(zero(whole, last, last+8), zeros), all, false, 0},
		{"last group garbled", cat(flip(whole, len(whole)-3), zeros), []string{"a", "b", "c", "d"}, false, 0},
		{"magic garbled", flip(whole, 2), all, true, 0},
		{"magic garbled, preallocated", cat(flip(whole, 0), zeros), all, true, 0},
		{"middle group's record garbled", cat(flip(whole, offs[1]+12), zeros), []string{"a", "b", "d", "e"}, true, 1},
		{"first group's first record garbled", flip(whole, 20), []string{"b", "c", "d", "e"}, true, 1},
		{"middle group's header garbled", flip(whole, offs[1]+1), all, false, 0},
		{"middle group zeroed", zero(whole, offs[1], offs[1]+8+rec), []string{"a", "b", "d", "e"}, true, 1},
		{"data far after a zero header", cat(whole[:last], make([]byte, maxGroup+8), whole[last:]), all, true, 1},
	}
	// An older segment was closed after its last append returned: a bad end is damage, not a torn write.
	older := map[string]bool{"older: last group garbled": true, "older: last group cut short": true}
	tests = append(tests, []struct {
		name    string
		data    []byte
		want    []string
		damaged bool
		lost    int
	}{
		{"older: last group garbled", cat(flip(whole, len(whole)-3), zeros), []string{"a", "b", "c", "d"}, true, 1},
		{"older: last group cut short", whole[:len(whole)-5], []string{"a", "b", "c", "d"}, true, 1},
	}...)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "seg")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := readSegment(path, !older[tc.name])
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, r := range got.recs {
				keys = append(keys, r.Key)
			}
			if diff := cmp.Diff(tc.want, keys); diff != "" {
				t.Errorf("records (-want +got):\n%s", diff)
			}
			if got.damaged != tc.damaged || got.lost != tc.lost {
				t.Errorf("damaged %v, lost %d; want %v, %d", got.damaged, got.lost, tc.damaged, tc.lost)
			}
		})
	}
}

// TestDamagedSegmentKeptAside: a segment with a garbled group in the middle does not stop Open and is not
// deleted: every registration that can be read from it is recovered, the segment is renamed to .damaged, an ERROR
// line names it with the counts, and so do Damaged and the metrics.
func TestDamagedSegmentKeptAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	t0 := time.Unix(1_700_000_000, 0)
	data, offs := segmentBytes(t, recs(t0, "a"), recs(t0, "b"), recs(t0, "c"))
	data[offs[1]+12] ^= 1
	seg := segmentName(path+".wal", 4)
	if err := os.WriteFile(seg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	log, logs := testenv.CaptureLogger(t)
	s, err := Open(path, log)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if diff := cmp.Diff([]string{"a", "c"}, allKeys(t, s, "d", t0)); diff != "" {
		t.Errorf("keys recovered (-want +got):\n%s", diff)
	}
	aside := seg + ".damaged"
	if b, err := os.ReadFile(aside); err != nil || !bytes.Equal(b, data) {
		t.Errorf("damaged segment not kept aside unchanged as %s: %v", aside, err)
	}
	want := []DamagedSegment{{File: aside, Recovered: 2, Lost: 1}}
	if diff := cmp.Diff(want, s.Damaged()); diff != "" {
		t.Errorf("Damaged (-want +got):\n%s", diff)
	}
	if line := lineWith(logs.String(), "damaged write-ahead log segment"); !strings.Contains(line, "level=ERROR") || !strings.Contains(line, aside) {
		t.Errorf("log line %q, want an ERROR naming %s", line, aside)
	}
	reg := prometheus.NewRegistry()
	if err := s.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	wantMetric := fmt.Sprintf(`
# HELP wgkex_wal_damaged_segment_records Per write-ahead log segment found damaged at start and kept aside (file): registrations recovered from it (state=recovered) and unreadable stretches, each at least one registration (state=lost).
# TYPE wgkex_wal_damaged_segment_records gauge
wgkex_wal_damaged_segment_records{file=%q,state="lost"} 1
wgkex_wal_damaged_segment_records{file=%q,state="recovered"} 2
`, aside, aside)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(wantMetric), "wgkex_wal_damaged_segment_records"); err != nil {
		t.Error(err)
	}
	// The next start finds nothing to recover and leaves the kept segment alone.
	s.Close()
	s2 := open(t, path)
	defer s2.Close()
	if len(s2.Damaged()) != 0 || !fileExists(aside) {
		t.Errorf("second start: damaged %v, kept segment exists %v", s2.Damaged(), fileExists(aside))
	}
	if diff := cmp.Diff([]string{"a", "c"}, allKeys(t, s2, "d", t0)); diff != "" {
		t.Errorf("keys after the second start (-want +got):\n%s", diff)
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
		rs, err := readSegment(segmentName(path+".wal", n), n == segs[len(segs)-1])
		if err != nil || rs.damaged {
			t.Fatal(err, rs.damaged)
		}
		for _, r := range rs.recs {
			got = append(got, fmt.Sprintf("%d:%s", n, r.Key))
		}
	}
	if diff := cmp.Diff([]string{"0:before", "1:after1", "1:after2"}, got); diff != "" {
		t.Errorf("segment:key on disk (-want +got):\n%s", diff)
	}
}

// lineWith returns the first line of s that contains sub.
func lineWith(s, sub string) string {
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			return line
		}
	}
	return ""
}

// FuzzParseSegment: whatever a segment file holds, reading it ends without a panic, returns only records the
// broker could have written, and one byte changed in an undamaged older segment costs at most one record and never
// silently.
func FuzzParseSegment(f *testing.F) {
	t0 := time.Unix(1_700_000_000, 0)
	whole, _ := segmentBytes(f, recs(t0, "a", "b"), recs(t0, "c"))
	f.Add(whole, -1, byte(0))
	f.Add(whole, 3, byte(0x40))
	f.Add(whole, 20, byte(1))
	f.Add(append(bytes.Clone(whole), make([]byte, 64)...), 40, byte(0xff))
	f.Fuzz(func(t *testing.T, data []byte, at int, x byte) {
		base := parseSegment(data, false)
		for _, r := range base.recs {
			if !plausible(r) {
				t.Fatalf("implausible record %+v", r)
			}
		}
		if at < 0 || at >= len(data) || x == 0 {
			return
		}
		changed := bytes.Clone(data)
		changed[at] ^= x
		got := parseSegment(changed, false)
		lost := len(base.recs) - len(got.recs)
		if bytes.HasPrefix(data, segmentMagic) && !base.damaged && (lost > 1 || lost > 0 && !got.damaged) {
			t.Fatalf("one changed byte at %d lost %d of %d records, damaged %v", at, lost, len(base.recs), got.damaged)
		}
	})
}

// TestPutKeyLazy: a key another broker holds is visible at once but written only with the next PutKey's group
// (one write, one fdatasync for both), or on its own lazySyncDelay later, or once maxBatch wait; Close loses none.
func TestPutKeyLazy(t *testing.T) {
	defer func(d time.Duration) { lazySyncDelay = d }(lazySyncDelay)
	lazySyncDelay = time.Hour
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	reg := prometheus.NewRegistry()
	if err := s.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	syncs := func() uint64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "wgkex_wal_fsync_seconds" {
				return mf.GetMetric()[0].GetHistogram().GetSampleCount()
			}
		}
		return 0
	}
	// onDisk returns the groups and records of the current segment.
	onDisk := func() (groups, records int) {
		t.Helper()
		s.mu.RLock()
		name := segmentName(path+".wal", s.wal.seg)
		s.mu.RUnlock()
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for b = b[len(segmentMagic):]; ; {
			recs, n, ok := readGroup(b)
			if !ok {
				return groups, records
			}
			groups, records, b = groups+1, records+len(recs), b[n:]
		}
	}
	t0 := time.Unix(1_700_000_000, 0)
	lazy := func(k string) {
		t.Helper()
		if err := s.PutKeyLazy(broker.KeyRecord{Key: k, Domain: "d", FirstSeen: t0, LastSeen: t0}); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"lazy1", "lazy2", "lazy3"} {
		lazy(k)
	}
	if n := syncs(); n != 0 {
		t.Errorf("%d fdatasyncs after three lazy keys, want 0", n)
	}
	if g, r := onDisk(); g != 0 || r != 0 {
		t.Errorf("%d groups, %d records on disk after three lazy keys, want none yet", g, r)
	}
	if got, err := s.Key("d", "lazy2"); err != nil || got.Key != "lazy2" {
		t.Errorf("Key(lazy2) = %+v, %v", got, err)
	}
	put(t, s, "d", "synced", t0)
	if n := syncs(); n != 1 {
		t.Errorf("%d fdatasyncs after a PutKey, want 1", n)
	}
	if g, r := onDisk(); g != 1 || r != 4 {
		t.Errorf("%d groups, %d records on disk after a PutKey, want the three lazy keys in its group: 1, 4", g, r)
	}

	// Without a PutKey, held keys are written lazySyncDelay after the first of them (lazy5 may come after that).
	lazySyncDelay = time.Millisecond
	lazy("lazy4")
	lazy("lazy5")
	testenv.Eventually(t, 10*time.Second, func() bool { _, r := onDisk(); return r == 6 }, "lazy keys not written 10 s after")
	if g, _ := onDisk(); uint64(g) != syncs() || g < 2 || g > 3 {
		t.Errorf("%d groups on disk after %d fdatasyncs, want 2 or 3 of each", g, syncs())
	}

	// maxBatch held keys are written at once, whatever the delay.
	lazySyncDelay = time.Hour
	before := syncs()
	for i := range maxBatch {
		lazy(fmt.Sprintf("many%05d", i))
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return syncs() == before+1 }, "maxBatch lazy keys not written at once")
	lazy("lazy6") // held at Close
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	got := allKeys(t, s, "d", t0)
	if len(got) != 7+maxBatch || !slices.Contains(got, "lazy6") || !slices.Contains(got, "many04095") {
		t.Errorf("after reopen: %d keys, want %d with lazy6 and many04095", len(got), 7+maxBatch)
	}
	s.Close() // before lazySyncDelay is set back
}

// TestLazyGroupsBounded: however the held keys and the next batch add up, no group on disk holds more than
// maxBatch registrations, the most readGroup takes (maxGroup). Merges started by Flush and held in indexHook
// park the key writer while whole batches queue up behind it.
func TestLazyGroupsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	release := make(chan struct{})
	s.indexHook = func() error { <-release; return nil }
	t0 := time.Unix(1_700_000_000, 0)
	put(t, s, "d", "first", t0) // something for the first merge
	wave := func(name string, n int) {
		t.Helper()
		flushed := make(chan error, 1)
		go func() { flushed <- s.Flush() }()
		testenv.Eventually(t, 10*time.Second, func() bool {
			s.mu.RLock()
			defer s.mu.RUnlock()
			return s.merging != nil
		}, "merge not started")
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if err := s.PutKeyLazy(broker.KeyRecord{Key: fmt.Sprintf("%s%05d", name, i), Domain: "d", FirstSeen: t0, LastSeen: t0}); err != nil {
					t.Error(err)
				}
			})
		}
		testenv.Eventually(t, 10*time.Second, func() bool { return len(s.keys) == n }, "%d lazy keys not queued", n)
		release <- struct{}{} // the key writer, back from the merge, takes them as one batch
		if err := <-flushed; err != nil {
			t.Fatal(err)
		}
		wg.Wait()
	}
	wave("a", maxBatch-1) // held
	wave("b", maxBatch)   // with them, 2·maxBatch−1
	close(release)
	put(t, s, "d", "last", t0)
	segs, err := segments(path + ".wal")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, seg := range segs {
		b, err := os.ReadFile(segmentName(path+".wal", seg))
		if err != nil {
			t.Fatal(err)
		}
		for b = b[len(segmentMagic):]; len(b) >= 8; {
			n := int(binary.BigEndian.Uint32(b))
			if n == 0 {
				break
			}
			recs, size, ok := readGroup(b)
			if !ok || len(recs) > maxBatch {
				t.Fatalf("segment %d: a group of %d bytes, %d registrations (readable %v), want at most %d", seg, n, len(recs), ok, maxBatch)
			}
			total, b = total+len(recs), b[size:]
		}
	}
	if total < 2*maxBatch { // wave b and "last" at least; the first merge may have taken wave a's segment
		t.Errorf("%d registrations in the segments, want at least %d", total, 2*maxBatch)
	}
}

// TestPutKeyLazyRefusesLongFields: a registration a record cannot hold is refused at once, not when it is
// written a second later with no one to tell.
func TestPutKeyLazyRefusesLongFields(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	if err := s.PutKeyLazy(broker.KeyRecord{Key: strings.Repeat("k", maxField+1), Domain: "d"}); err == nil {
		t.Error("PutKeyLazy took a key longer than a record holds")
	}
}

// TestAnySync: a group is synced when any of its registrations is PutKey's, wherever it is in the group.
func TestAnySync(t *testing.T) {
	l, p := keyWrite{lazy: true}, keyWrite{}
	for _, tt := range []struct {
		batch []keyWrite
		want  bool
	}{
		{[]keyWrite{l}, false},
		{[]keyWrite{l, l, l}, false},
		{[]keyWrite{p}, true},
		{[]keyWrite{l, l, p}, true},
		{[]keyWrite{p, l}, true},
	} {
		if got := anySync(tt.batch); got != tt.want {
			t.Errorf("anySync(%v) = %v, want %v", tt.batch, got, tt.want)
		}
	}
}
