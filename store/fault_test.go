package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// TestCloseKeepsLogWhenMergeFails: when the last merge at Close cannot write the state file (here its descriptor
// turned read-only underneath, as a full disk fails a write), Close says so and removes no segment; the next Open
// merges them and every registration acknowledged is there. The old code removed the log.
func TestCloseKeepsLogWhenMergeFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	t0 := time.Unix(1_700_000_000, 0)
	var want []string
	for i := range 20 {
		k := fmt.Sprintf("key%02d", i)
		if err := s.PutKey(broker.KeyRecord{Key: k, Domain: "d", FirstSeen: t0, LastSeen: t0}); err != nil {
			t.Fatal(err)
		}
		want = append(want, k)
	}
	fd := fdOf(t, path)
	ro, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup2(int(ro.Fd()), fd); err != nil {
		t.Fatal(err)
	}
	ro.Close()
	err = s.Close()
	if err == nil || !strings.Contains(err.Error(), "20 registrations not merged") || !strings.Contains(err.Error(), path+".wal") {
		t.Fatalf("Close = %v, want an error that names the 20 registrations kept in %s.wal.*", err, path)
	}
	if segs, _ := segments(path + ".wal"); len(segs) == 0 {
		t.Fatal("the write-ahead log was removed although its merge failed")
	}
	s2 := open(t, path)
	defer s2.Close()
	if got := allKeys(t, s2, "d", t0); len(got) != len(want) {
		t.Errorf("after the next start %d keys, want %d: %v", len(got), len(want), got)
	}
}

// TestOpenInUse: a second Open of a state file that a running store holds is refused at once, with an error that
// says another process uses it (the old code waited 5 s and said "timeout").
func TestOpenInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	defer s.Close()
	_, err := Open(path, testenv.Logger(t))
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), path) {
		t.Fatalf("second Open = %v, want ErrInUse naming %s", err, path)
	}
}

// TestOpenDamagedFile: a truncated state file, one with its pages garbled and a file that is not a state file at
// all are each refused with a *DamagedError that names the file and what to do, never with a panic (bbolt panics
// on the truncated one).
func TestOpenDamagedFile(t *testing.T) {
	full := filepath.Join(t.TempDir(), "full.db")
	s := open(t, full)
	t0 := time.Unix(1_700_000_000, 0)
	var recs []broker.KeyRecord
	for i := range 30000 {
		recs = append(recs, broker.KeyRecord{Key: fmt.Sprintf("%043d=", i), Domain: "d", FirstSeen: t0, LastSeen: t0})
	}
	if err := s.Import(recs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	garbled := append([]byte(nil), good...)
	for i := 4096 * 2; i < len(garbled); i += 4096 { // every page but the two meta pages
		garbled[i+10] ^= 0xff
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"truncated to half", good[:len(good)/2]},
		{"truncated to the meta pages", good[:2*4096]},
		{"pages garbled", garbled},
		{"not a state file", []byte(strings.Repeat("this is a text file, not bbolt\n", 400))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path, testenv.Logger(t))
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			var de *DamagedError
			if !errors.As(err, &de) || de.File != path || !strings.Contains(err.Error(), "restore the last backup") {
				t.Fatalf("Open = %v, want a DamagedError naming %s and what to do", err, path)
			}
		})
	}
}

// fdOf returns the descriptor of this process that has path open (the store's bbolt file).
func fdOf(t *testing.T, path string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if target, _ := os.Readlink("/proc/self/fd/" + e.Name()); target == path {
			var fd int
			fmt.Sscan(e.Name(), &fd)
			return fd
		}
	}
	t.Fatalf("%s is not open", path)
	return -1
}
