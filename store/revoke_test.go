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

// TestRevokeKeyKeepsNewer: a revocation older than the key's last registration (another broker's, from a
// catch-up) leaves the key stored, and a revocation never moves a tombstone back in time; RevokedAt reports it.
func TestRevokeKeyKeepsNewer(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	t0 := time.Unix(1_700_000_000, 0)
	if err := s.PutKey(broker.KeyRecord{Key: "a", Domain: "d", FirstSeen: t0, LastSeen: t0}); err != nil {
		t.Fatal(err)
	}
	if found, err := s.RevokeKey("d", "a", t0.Add(-time.Second)); err != nil || found {
		t.Fatalf("RevokeKey before the registration = %v, %v; want kept", found, err)
	}
	if _, err := s.Key("d", "a"); err != nil {
		t.Errorf("key registered after the revocation is gone: %v", err)
	}
	if found, err := s.RevokeKey("d", "a", t0.Add(time.Minute)); err != nil || !found {
		t.Fatalf("RevokeKey = %v, %v", found, err)
	}
	if _, err := s.RevokeKey("d", "a", t0); err != nil {
		t.Fatal(err)
	}
	at, ok, err := s.RevokedAt("d", "a")
	if err != nil || !ok || !at.Equal(t0.Add(time.Minute)) {
		t.Errorf("RevokedAt = %v, %v, %v; want the later revocation", at, ok, err)
	}
	if _, ok, _ := s.RevokedAt("d", "b"); ok {
		t.Error("RevokedAt of a key never revoked")
	}
}

// TestKeyHidesVoidRegistration: a registration from before a revocation, still in the write-ahead log, is not
// found (its merge drops it).
func TestKeyHidesVoidRegistration(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	t0 := time.Unix(1_700_000_000, 0)
	if _, err := s.RevokeKey("d", "a", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.PutKey(broker.KeyRecord{Key: "a", Domain: "d", FirstSeen: t0.Add(-time.Hour), LastSeen: t0}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Key("d", "a"); err == nil {
		t.Errorf("Key found the void registration %+v", r)
	}
	if err := s.PutKey(broker.KeyRecord{Key: "a", Domain: "d", FirstSeen: t0.Add(time.Second), LastSeen: t0.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Key("d", "a"); err != nil {
		t.Errorf("a registration after the revocation is not found: %v", err)
	}
}

// TestLatestKeys: the most recently seen keys first, from the bbolt file and the write-ahead log together.
func TestLatestKeys(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	t0 := time.Unix(1_700_000_000, 0)
	for i, k := range []string{"a", "b", "c"} {
		at := t0.Add(time.Duration(i) * time.Second)
		s.PutKey(broker.KeyRecord{Key: k, Domain: "d", FirstSeen: at, LastSeen: at})
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	for i, k := range []string{"d", "a"} { // in the log; a seen again, last
		at := t0.Add(time.Duration(10+i) * time.Second)
		s.PutKey(broker.KeyRecord{Key: k, Domain: "d", FirstSeen: at, LastSeen: at})
	}
	keys := func(limit int) []string {
		recs, err := s.LatestKeys("d", limit)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range recs {
			out = append(out, r.Key)
		}
		return out
	}
	if diff := cmp.Diff([]string{"a", "d", "c", "b"}, keys(10)); diff != "" {
		t.Errorf("LatestKeys(10) (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"a", "d"}, keys(2)); diff != "" {
		t.Errorf("LatestKeys(2) (-want +got):\n%s", diff)
	}
	recs, _ := s.LatestKeys("d", 1)
	if len(recs) != 1 || !recs[0].LastSeen.Equal(t0.Add(11*time.Second)) {
		t.Errorf("LatestKeys(1) = %+v: want a last seen at t0+11s", recs)
	}
	if recs, err := s.LatestKeys("none", 5); err != nil || len(recs) != 0 {
		t.Errorf("LatestKeys of an empty domain = %v, %v", recs, err)
	}
}
