package store

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() }) // the test owns the store's writers; closing twice is harmless
	return s
}

const key1 = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="

func TestKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	t0 := time.Unix(1000, 0)
	if err := s.PutKey(broker.KeyRecord{Key: key1, Domain: "ffmuc_welt", FirstSeen: t0, LastSeen: t0}); err != nil {
		t.Fatal(err)
	}
	t1 := t0.Add(time.Hour)
	if err := s.PutKey(broker.KeyRecord{Key: key1, Domain: "ffmuc_welt", FirstSeen: t1, LastSeen: t1, Gateway: "gw04"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Key("ffmuc_welt", key1)
	if err != nil {
		t.Fatal(err)
	}
	want := broker.KeyRecord{Key: key1, Domain: "ffmuc_welt", FirstSeen: t0, LastSeen: t1, Gateway: "gw04"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after re-registration (-want +got):\n%s", diff)
	}
	if _, err := s.Key("ffmuc_welt", "other"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Key(other) = %v, want ErrNotFound", err)
	}
	if _, err := s.Key("nodomain", key1); !errors.Is(err, ErrNotFound) {
		t.Errorf("Key(nodomain) = %v, want ErrNotFound", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.PutKey(want); !errors.Is(err, ErrClosed) {
		t.Errorf("PutKey after Close = %v, want ErrClosed", err)
	}

	s = open(t, path)
	defer s.Close()
	var since []string
	for _, cut := range []time.Time{t1, t1.Add(time.Nanosecond)} {
		since = append(since, fmt.Sprint(len(allKeys(t, s, "ffmuc_welt", cut))))
	}
	if diff := cmp.Diff([]string{"1", "0"}, since); diff != "" {
		t.Errorf("keys since last seen, and 1ns later (-want +got):\n%s", diff)
	}
	if got := countKeys(t, s); got["ffmuc_welt"] != 1 {
		t.Errorf("stored keys %v", got)
	}
}

// allKeys pages through KeysPage, 3 keys a page.
func allKeys(t *testing.T, s *Store, domain string, since time.Time) []string {
	t.Helper()
	var out []string
	var cur broker.KeyCursor
	for {
		keys, next, err := s.KeysPage(domain, since, cur, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range keys {
			out = append(out, r.Key)
		}
		if next == "" {
			return out
		}
		cur = next
	}
}

// countKeys merges the log and counts the keys per domain in bbolt, checking the time index against them.
func countKeys(t *testing.T, s *Store) map[string]int {
	t.Helper()
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	out, err := checkIndex(s.db)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkIndex checks that the keys buckets and the time index hold the same keys at the same times, and counts the
// keys per domain.
func checkIndex(db *bolt.DB) (map[string]int, error) {
	out := map[string]int{}
	err := db.View(func(tx *bolt.Tx) error {
		keys, byTime := tx.Bucket(bucketKeys), tx.Bucket(bucketByTime)
		return keys.ForEachBucket(func(d []byte) error {
			idx := byTime.Bucket(d)
			n := 0
			err := keys.Bucket(d).ForEach(func(k, v []byte) error {
				n++
				if idx == nil || idx.Get(indexKey(lastSeenOf(v), string(k))) == nil {
					return fmt.Errorf("%s/%s: no index entry", d, k)
				}
				return nil
			})
			if err != nil {
				return err
			}
			out[string(d)] = n
			if idx == nil {
				return nil
			}
			if in := idx.Stats().KeyN; in != n {
				return fmt.Errorf("domain %s: %d keys, %d index entries", d, n, in)
			}
			return nil
		})
	})
	return out, err
}

// TestConcurrentPutKey checks that group commit loses no write and keeps them apart.
func TestConcurrentPutKey(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	var wg sync.WaitGroup
	now := time.Now()
	for g := 0; g < 50; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				k := fmt.Sprintf("%042d%02dA=", g, i)[2:]
				if err := s.PutKey(broker.KeyRecord{Key: k, Domain: fmt.Sprint("d", g%3), FirstSeen: now, LastSeen: now}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	counts := countKeys(t, s)
	if total := counts["d0"] + counts["d1"] + counts["d2"]; total != 2000 {
		t.Errorf("stored %d keys (%v), want 2000", total, counts)
	}
}

func TestWorkersAndRetained(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	w := broker.WorkerState{Name: "gw04.in.ffmuc.net", Online: true, Peers: map[string]int{"ffmuc_welt": 20},
		Data:    map[string]wire.WorkerData{"ffmuc_welt": {ExternalAddress: "gw04.ext", Port: 51820, PublicKey: key1, LinkAddress: "fe80::1"}},
		Changed: time.Unix(5, 0).UTC(), Since: time.Unix(4, 0).UTC()}
	if err := s.PutWorker(w); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRetained("a/b", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRetained("a/c", []byte("two")); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRetained("a/c"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRetained("never/there"); err != nil {
		t.Errorf("DeleteRetained(missing) = %v", err)
	}
	s.Close()

	s = open(t, path)
	defer s.Close()
	ws, err := s.Workers()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]broker.WorkerState{w}, ws); diff != "" {
		t.Errorf("workers after reopen (-want +got):\n%s", diff)
	}
	got := map[string]string{}
	if err := s.Retained(func(topic string, msg []byte) error { got[topic] = string(msg); return nil }); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"a/b": "one"}, got); diff != "" {
		t.Errorf("retained after reopen (-want +got):\n%s", diff)
	}
}

func BenchmarkPutKeyParallel(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "state.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	var n sync.Mutex
	i := 0
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n.Lock()
			i++
			k := fmt.Sprintf("%043dA=", i)[1:]
			n.Unlock()
			if err := s.PutKey(broker.KeyRecord{Key: k, Domain: "ffmuc_welt", FirstSeen: now, LastSeen: now}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestMetrics: the store's metrics, read back from a real registry after a registration.
func TestMetrics(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	reg := prometheus.NewRegistry()
	if err := s.RegisterMetrics(reg); err != nil {
		t.Fatal(err)
	}
	put(t, s, "d", key1, time.Unix(1_700_000_000, 0))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		switch mf.GetName() {
		case "wgkex_wal_fsync_seconds":
			got[mf.GetName()] = m.GetHistogram().GetSampleCount() == 1
		case "wgkex_state_file_bytes":
			got[mf.GetName()] = m.GetGauge().GetValue() > 0
		}
	}
	if diff := cmp.Diff(map[string]bool{"wgkex_wal_fsync_seconds": true, "wgkex_state_file_bytes": true}, got); diff != "" {
		t.Errorf("metrics with a value (-want +got):\n%s", diff)
	}
}

// TestKeyCounts: the count of keys per domain follows registrations (new keys only, once merged), imports and the
// retention sweep, and a count read from a state file whose counts bucket was lost (an older schema) is rebuilt.
func TestKeyCounts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	t0 := time.Unix(1_700_000_000, 0)
	for i, k := range []string{"a", "b", "a", "c"} {
		d := "d1"
		if i == 3 {
			d = "d2"
		}
		if err := s.PutKey(broker.KeyRecord{Key: k, Domain: d, FirstSeen: t0, LastSeen: t0.Add(time.Duration(i) * time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Import([]broker.KeyRecord{{Key: "old", Domain: "d1", FirstSeen: t0.Add(-48 * time.Hour), LastSeen: t0.Add(-48 * time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	counts := func() map[string]int {
		c, err := s.KeyCounts()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if diff := cmp.Diff(map[string]int{"d1": 3, "d2": 1}, counts()); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if n, err := s.Sweep(t.Context(), t0.Add(-time.Hour)); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v", n, err)
	}
	if diff := cmp.Diff(map[string]int{"d1": 2, "d2": 1}, counts()); diff != "" {
		t.Errorf("counts after the sweep (-want +got):\n%s", diff)
	}
	// As a file of schema 2 would be: no counts. Open counts them once.
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketCounts); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(metaSchema, []byte("2"))
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, path)
	defer s.Close()
	if diff := cmp.Diff(map[string]int{"d1": 2, "d2": 1}, counts()); diff != "" {
		t.Errorf("counts after the migration (-want +got):\n%s", diff)
	}
}
