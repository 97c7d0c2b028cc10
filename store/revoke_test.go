package store

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// TestRevokeKey: a revoked key is gone from reads, replays and counts; a registration of it from before the
// revocation, merged later (a write-ahead log recovered, another broker's catch-up), does not bring it back; one
// after it does; the tombstone is listed for replays and swept with old keys.
func TestRevokeKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	t0 := time.Unix(1_700_000_000, 0)
	put := func(k string, at time.Time) {
		t.Helper()
		if err := s.PutKey(broker.KeyRecord{Key: k, Domain: "d", FirstSeen: at, LastSeen: at}); err != nil {
			t.Fatal(err)
		}
	}
	put("a", t0)
	put("b", t0)
	found, err := s.RevokeKey("d", "a", t0.Add(time.Minute))
	if err != nil || !found {
		t.Fatalf("RevokeKey = %v, %v", found, err)
	}
	if found, err := s.RevokeKey("d", "never", t0.Add(time.Minute)); err != nil || found {
		t.Errorf("RevokeKey of a key never stored = %v, %v", found, err)
	}
	if _, err := s.Key("d", "a"); err != ErrNotFound {
		t.Errorf("Key after revocation: %v", err)
	}
	if diff := cmp.Diff([]string{"b"}, allKeys(t, s, "d", t0)); diff != "" {
		t.Errorf("keys after revocation (-want +got):\n%s", diff)
	}
	put("a", t0.Add(30*time.Second)) // late, from before the revocation
	if err := s.Import([]broker.KeyRecord{{Key: "a", Domain: "d", FirstSeen: t0, LastSeen: t0}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"b"}, allKeys(t, s, "d", t0)); diff != "" {
		t.Errorf("a registration from before the revocation brought the key back (-want +got):\n%s", diff)
	}
	if c, _ := s.KeyCounts(); c["d"] != 1 {
		t.Errorf("count %d, want 1", c["d"])
	}
	rev, err := s.Revoked("d", t0)
	if diff := cmp.Diff(map[string]time.Time{"a": t0.Add(time.Minute), "never": t0.Add(time.Minute)}, rev); err != nil || diff != "" {
		t.Errorf("Revoked (-want +got):\n%s %v", diff, err)
	}
	put("a", t0.Add(2*time.Minute)) // registered again after the revocation
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"b", "a"}, allKeys(t, s, "d", t0)); diff != "" { // by last seen
		t.Errorf("a registration after the revocation (-want +got):\n%s", diff)
	}
	if _, err := s.Sweep(t.Context(), t0.Add(90*time.Second)); err != nil {
		t.Fatal(err)
	}
	if rev, _ := s.Revoked("d", time.Unix(0, 0)); len(rev) != 0 {
		t.Errorf("tombstones after the sweep: %v", rev)
	}
	s.Close()
}
