package store

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// A merge writes the keys first and their time-index entries in later transactions (merge.go). These tests stop a
// merge between the two: killed there, failed there, and with a revocation and the retention sweep running there.

// mergeT0 is the time the registrations of these tests are made at.
var mergeT0 = time.Unix(1_700_000_000, 0)

// windowFile makes a state file with ten keys last seen two days before mergeT0 (o0 … o9) and one revoked key
// (rev, registered two days before mergeT0 and revoked an hour before it).
func windowFile(t *testing.T, path string) {
	t.Helper()
	s := open(t, path)
	old := mergeT0.Add(-48 * time.Hour)
	var recs []broker.KeyRecord
	for i := range 10 {
		recs = append(recs, broker.KeyRecord{Key: fmt.Sprint("o", i), Domain: "d", FirstSeen: old, LastSeen: old})
	}
	recs = append(recs, broker.KeyRecord{Key: "rev", Domain: "d", FirstSeen: old, LastSeen: old})
	if err := s.Import(recs); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeKey("d", "rev", mergeT0.Add(-time.Hour)); err != nil { // a tombstone the sweeps keep
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// windowRegistrations registers ten new keys (n0 … n9, at mergeT0 + i s), o0 … o4 again (at mergeT0 + 100 s)
// and rev late, from before its revocation (which the merge must drop).
func windowRegistrations(s *Store) error {
	var recs []broker.KeyRecord
	for i := range 10 {
		at := mergeT0.Add(time.Duration(i) * time.Second)
		recs = append(recs, broker.KeyRecord{Key: fmt.Sprint("n", i), Domain: "d", FirstSeen: at, LastSeen: at, Gateway: "gw1"})
	}
	for i := range 5 {
		at := mergeT0.Add(100 * time.Second)
		recs = append(recs, broker.KeyRecord{Key: fmt.Sprint("o", i), Domain: "d", FirstSeen: at, LastSeen: at})
	}
	before := mergeT0.Add(-48*time.Hour + time.Minute)
	recs = append(recs, broker.KeyRecord{Key: "rev", Domain: "d", FirstSeen: before, LastSeen: before})
	for _, r := range recs {
		if err := s.PutKey(r); err != nil {
			return err
		}
	}
	return nil
}

// windowRecent lists the keys last seen from mergeT0 on after windowRegistrations, in last-seen order, but skip.
func windowRecent(skip ...string) []string {
	var out []string
	for _, k := range []string{"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "o0", "o1", "o2", "o3", "o4"} {
		if !slices.Contains(skip, k) {
			out = append(out, k)
		}
	}
	return out
}

// checkMerged checks the store after the registrations are merged, with skip revoked in the window: the records,
// the time index against the keys, the stored counts, and a sweep that deletes exactly o5 … o9.
func checkMerged(t *testing.T, s *Store, skip ...string) {
	t.Helper()
	want := 20 - len(skip)
	if got := countKeys(t, s); got["d"] != want {
		t.Errorf("keys in bbolt (and in the index): %v, want %d", got, want)
	}
	if c, err := s.KeyCounts(); err != nil || c["d"] != want {
		t.Errorf("KeyCounts = %v, %v, want %d", c, err, want)
	}
	if diff := cmp.Diff(windowRecent(skip...), allKeys(t, s, "d", mergeT0)); diff != "" {
		t.Errorf("KeysPage from mergeT0 (-want +got):\n%s", diff)
	}
	r, err := s.Key("d", "o0")
	wantR := broker.KeyRecord{Key: "o0", Domain: "d", FirstSeen: mergeT0.Add(-48 * time.Hour), LastSeen: mergeT0.Add(100 * time.Second)}
	if diff := cmp.Diff(wantR, r); err != nil || diff != "" {
		t.Errorf("Key(o0) = %v (-want +got):\n%s", err, diff)
	}
	if _, err := s.Key("d", "rev"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Key(rev) = %v, want ErrNotFound: a registration from before its revocation came back", err)
	}
	n, err := s.Sweep(t.Context(), mergeT0.Add(-24*time.Hour))
	if err != nil || n != 5 {
		t.Errorf("Sweep = %d, %v, want o5 … o9 deleted", n, err)
	}
	if got := countKeys(t, s); got["d"] != want-5 {
		t.Errorf("keys after the sweep: %v, want %d", got, want-5)
	}
	if c, _ := s.KeyCounts(); c["d"] != want-5 {
		t.Errorf("KeyCounts after the sweep = %v, want %d", c, want-5)
	}
	if diff := cmp.Diff(windowRecent(skip...), allKeys(t, s, "d", time.Unix(0, 0))); diff != "" {
		t.Errorf("every key after the sweep (-want +got):\n%s", diff)
	}
}

// TestMergeKilledBeforeIndex: a broker killed after a merge wrote the keys but none of their index entries
// merges its log again at the next start, and keys, index, counts and the sweep are right.
func TestMergeKilledBeforeIndex(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	windowFile(t, path)
	cmd, line := startChild(t, "WGKEX_STORE_MERGE_CHILD", path)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if line != "keys merged\n" {
		t.Fatalf("the child said %q, want it to stop between the keys and the index", line)
	}
	// The kill came in the window: keys without their index entries.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = checkIndex(db)
	db.Close()
	if err == nil {
		t.Fatal("after the kill the index matches the keys: the child did not stop between the two")
	}
	t.Logf("after the kill: %v", err)
	s := open(t, path)
	defer s.Close()
	checkMerged(t, s)
}

// mergeChild is the child process of TestMergeKilledBeforeIndex: it registers windowRegistrations and merges
// them, and waits to be killed between the keys and the index.
func mergeChild(path string) {
	s, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintln(os.Stderr, "merge child:", err)
		os.Exit(2)
	}
	s.indexHook = func() error {
		fmt.Println("keys merged")
		select {}
	}
	if err := windowRegistrations(s); err != nil {
		fmt.Fprintln(os.Stderr, "merge child:", err)
		os.Exit(2)
	}
	s.Flush()
	fmt.Fprintln(os.Stderr, "merge child: the merge did not stop before the index")
	os.Exit(2)
}

// TestMergeWindow: while a merge stands between its keys and its index, reads, counts, the retention sweep and a
// revocation (RevokeKey's transaction, which can land there when a merge starts after its Flush) see a consistent
// store, and the merge ends consistent; a merge that fails there is merged again whole.
func TestMergeWindow(t *testing.T) {
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprint("fail=", fail), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			windowFile(t, path)
			s := open(t, path)
			defer s.Close()
			inWindow, release := make(chan struct{}), make(chan error)
			calls := 0
			s.indexHook = func() error { // set before any merge; the merges run one at a time
				if calls++; calls > 1 {
					return nil
				}
				close(inWindow)
				return <-release
			}
			if err := windowRegistrations(s); err != nil {
				t.Fatal(err)
			}
			flushed := make(chan error, 1)
			go func() { flushed <- s.Flush() }()
			<-inWindow

			r, err := s.Key("d", "o0")
			wantR := broker.KeyRecord{Key: "o0", Domain: "d", FirstSeen: mergeT0.Add(-48 * time.Hour), LastSeen: mergeT0.Add(100 * time.Second)}
			if diff := cmp.Diff(wantR, r); err != nil || diff != "" {
				t.Errorf("in the window: Key(o0) = %v (-want +got):\n%s", err, diff)
			}
			if diff := cmp.Diff(windowRecent(), allKeys(t, s, "d", mergeT0)); diff != "" {
				t.Errorf("in the window: KeysPage from mergeT0 (-want +got):\n%s", diff)
			}
			if c, err := s.KeyCounts(); err != nil || c["d"] != 20 {
				t.Errorf("in the window: KeyCounts = %v, %v, want 20", c, err)
			}
			// The sweep deletes the keys not registered again, and leaves those waiting for their index entry.
			if n, err := s.Sweep(t.Context(), mergeT0.Add(-24*time.Hour)); err != nil || n != 5 {
				t.Errorf("in the window: Sweep = %d, %v, want o5 … o9 deleted", n, err)
			}
			// n3 revoked as of its registration (removed), n4 as of before it (kept).
			var revoked [2]bool
			if err := s.update(func(tx *bolt.Tx) error {
				var err error
				if revoked[0], err = revokeTx(tx, "d", "n3", mergeT0.Add(3*time.Second)); err != nil {
					return err
				}
				revoked[1], err = revokeTx(tx, "d", "n4", mergeT0)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if revoked != [2]bool{true, false} {
				t.Errorf("in the window: revoked n3, n4: %v, want true, false", revoked)
			}

			if fail {
				release <- errors.New("index transaction failed")
				if err := <-flushed; err == nil {
					t.Fatal("Flush succeeded, want the merge's failure")
				}
				if _, err := s.Key("d", "n3"); !errors.Is(err, ErrNotFound) {
					t.Errorf("after the failed merge: Key(n3) = %v, want ErrNotFound", err)
				}
				if err := s.Flush(); err != nil { // merges again
					t.Fatal(err)
				}
			} else {
				release <- nil
				if err := <-flushed; err != nil {
					t.Fatal(err)
				}
			}
			if got := countKeys(t, s); got["d"] != 14 {
				t.Errorf("keys after the merge: %v, want 14", got)
			}
			if c, _ := s.KeyCounts(); c["d"] != 14 {
				t.Errorf("KeyCounts after the merge = %v, want 14", c)
			}
			if diff := cmp.Diff(windowRecent("n3"), allKeys(t, s, "d", time.Unix(0, 0))); diff != "" {
				t.Errorf("every key after the merge (-want +got):\n%s", diff)
			}
			s.Close()
			s = open(t, path)
			if diff := cmp.Diff(windowRecent("n3"), allKeys(t, s, "d", time.Unix(0, 0))); diff != "" {
				t.Errorf("every key after a restart (-want +got):\n%s", diff)
			}
		})
	}
}
