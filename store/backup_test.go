package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// backupTo writes a backup of s to a new file and returns its path.
func backupTo(t *testing.T, s *Store) string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := s.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "backup.db")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func putKeys(t *testing.T, s *Store, t0 time.Time, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if err := s.PutKey(broker.KeyRecord{Key: k, Domain: "d", FirstSeen: t0, LastSeen: t0}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBackupRestore: a backup holds what was registered before it; the segments merged after it are archived
// (cut to their data) instead of deleted; Restore of the backup over a lost state file gives back every key, those
// merged after the backup included; a second backup prunes the archive it no longer needs.
func TestBackupRestore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	t0 := time.Unix(1_700_000_000, 0)
	s := open(t, path)
	putKeys(t, s, t0, "a", "b")
	backup := backupTo(t, s)
	putKeys(t, s, t0, "c")
	if err := s.Flush(); err != nil { // c is merged into the state file and its segment archived
		t.Fatal(err)
	}
	putKeys(t, s, t0, "d")
	if err := s.Close(); err != nil { // d likewise
		t.Fatal(err)
	}
	arch, err := archived(path + ".wal")
	if err != nil || len(arch) != 2 {
		t.Fatalf("archive %v, %v; want the two segments merged after the backup", arch, err)
	}
	for _, seg := range arch {
		fi, err := os.Stat(filepath.Join(archiveDir(path+".wal"), filepath.Base(segmentName(path+".wal", seg))))
		if err != nil || fi.Size() >= segmentPrealloc {
			t.Errorf("archived segment %d: %v, size %d; want it cut to its data", seg, err, fi.Size())
		}
	}
	s = open(t, path)
	putKeys(t, s, t0, "e") // merged at Close, archived too
	s.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	r, err := Restore(backup, path, false)
	if err != nil {
		t.Fatal(err)
	}
	if r.Keys != 2 || r.Segments != 3 || r.Previous != "" {
		t.Errorf("Restore = %+v, want 2 keys, 3 segments, nothing replaced", r)
	}
	s = open(t, path)
	if diff := cmp.Diff([]string{"a", "b", "c", "d", "e"}, allKeys(t, s, "d", t0)); diff != "" {
		t.Errorf("keys after restore (-want +got):\n%s", diff)
	}
	backupTo(t, s)
	if arch, _ := archived(path + ".wal"); len(arch) != 0 {
		t.Errorf("archive after a new backup: %v, want it pruned", arch)
	}
	s.Close()
}

// TestRestoreKeepsReplaced: Restore keeps the state file it replaces, refuses a backup that does not check
// without touching anything, and refuses while a store holds the file.
func TestRestoreKeepsReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	s := open(t, path)
	putKeys(t, s, time.Unix(1_700_000_000, 0), "a")
	backup := backupTo(t, s)
	if _, err := Restore(backup, path, false); !errors.Is(err, ErrInUse) {
		t.Errorf("Restore under an open store = %v, want ErrInUse", err)
	}
	s.Close()
	bad := filepath.Join(dir, "bad.db")
	os.WriteFile(bad, []byte("not a backup"), 0o600)
	if _, err := Restore(bad, path, false); err == nil {
		t.Error("Restore of a file that is not a backup succeeded")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("state file gone after a refused restore: %v", err)
	}
	for i, want := range []string{path + ".before-restore", path + ".before-restore.1"} {
		r, err := Restore(backup, path, false)
		if err != nil || r.Previous != want {
			t.Fatalf("restore %d: %+v, %v; want the old file kept as %s", i, r, err, want)
		}
	}
}

// TestArchivePrunedByAge: archived segments older than archiveKeep go, with a warning, whatever the backups.
func TestArchivePrunedByAge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	defer s.Close()
	backupTo(t, s)
	for i := range 3 {
		putKeys(t, s, time.Unix(1_700_000_000, 0), fmt.Sprint(i))
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	arch, _ := archived(path + ".wal")
	if len(arch) != 3 {
		t.Fatalf("archive %v, want 3 segments", arch)
	}
	old := time.Now().Add(-archiveKeep - time.Hour)
	oldest := filepath.Join(archiveDir(path+".wal"), filepath.Base(segmentName(path+".wal", arch[0])))
	if err := os.Chtimes(oldest, old, old); err != nil {
		t.Fatal(err)
	}
	s.pruneArchive(true)
	if got, _ := archived(path + ".wal"); !cmp.Equal(got, arch[1:]) {
		t.Errorf("archive after pruning %v, want %v", got, arch[1:])
	}
}

// failingWriter takes n bytes, then fails: a backup client that went away, or a full disk behind it.
type failingWriter struct{ n int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, errors.New("no space left on device")
	}
	w.n -= len(p)
	return len(p), nil
}

// TestFailedBackupKeepsArchive: a backup that fails half-way is not a backup: the archive that the last good
// backup needs stays, and restoring that backup still gives back every key registered after it.
func TestFailedBackupKeepsArchive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	t0 := time.Unix(1_700_000_000, 0)
	s := open(t, path)
	putKeys(t, s, t0, "a")
	good := backupTo(t, s)
	putKeys(t, s, t0, "b")
	if _, err := s.Backup(&failingWriter{n: 4096}); err == nil {
		t.Fatal("backup to a failing writer succeeded")
	}
	putKeys(t, s, t0, "c")
	s.pruneArchive(true) // the hourly prune
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path) // the marker in the file counts, not only the one in memory
	s.pruneArchive(true)
	s.Close()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(good, path, false); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	defer s.Close()
	if diff := cmp.Diff([]string{"a", "b", "c"}, allKeys(t, s, "d", t0)); diff != "" {
		t.Errorf("keys after restoring the last good backup (-want +got):\n%s", diff)
	}
}

// TestRestoreForeignFile: a bbolt file that is not a state file (a keys bucket, but no meta bucket) is refused with
// an error, not a panic, and nothing is replaced.
func TestRestoreForeignFile(t *testing.T) {
	dir := t.TempDir()
	foreign := filepath.Join(dir, "foreign.db")
	db, err := bolt.Open(foreign, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket(bucketKeys); return err }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	path := filepath.Join(dir, "state.db")
	s := open(t, path)
	putKeys(t, s, time.Unix(1_700_000_000, 0), "a")
	s.Close()
	if _, err := Restore(foreign, path, false); err == nil {
		t.Error("Restore of a file without a meta bucket succeeded")
	}
	if _, err := os.Stat(path + ".before-restore"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file replaced by a foreign file: %v", err)
	}
}

// blockingWriter blocks its first write until release is closed.
type blockingWriter struct {
	started chan struct{}
	release chan struct{}
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	select {
	case <-b.started:
	default:
		close(b.started)
	}
	<-b.release
	return len(p), nil
}

// TestBackupOneAtATime: a backup asked for while another is being written is refused with ErrBackupRunning (two
// at once would prune what the other one's restore needs).
func TestBackupOneAtATime(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	bw := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { _, err := s.Backup(bw); done <- err }()
	<-bw.started
	if _, err := s.Backup(&bytes.Buffer{}); !errors.Is(err, ErrBackupRunning) {
		t.Errorf("second backup = %v, want ErrBackupRunning", err)
	}
	close(bw.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backup(&bytes.Buffer{}); err != nil {
		t.Errorf("backup after the first one ended: %v", err)
	}
}

// TestRestoreGenerations: the archive reaches back to the backup before the last one, so that a last copy lost on
// its way (its client's disk full, say) still leaves the one before it whole; a backup older than that is refused
// unless forced, since the keys registered after it are no longer all archived.
func TestRestoreGenerations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	t0 := time.Unix(1_700_000_000, 0)
	s := open(t, path)
	var backups []string
	for i := range 3 {
		putKeys(t, s, t0, fmt.Sprintf("before%d", i))
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		backups = append(backups, backupTo(t, s))
	}
	putKeys(t, s, t0, "after")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	all := []string{"after", "before0", "before1", "before2"}
	if _, err := Restore(backups[0], path, false); !errors.Is(err, ErrNewerBackup) {
		t.Fatalf("restore of the oldest backup = %v, want ErrNewerBackup", err)
	}
	// The last copy is lost: the one before it gives back everything.
	if _, err := Restore(backups[1], path, false); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	if diff := cmp.Diff(all, allKeys(t, s, "d", t0)); diff != "" {
		t.Errorf("keys after restoring the backup before the last (-want +got):\n%s", diff)
	}
	s.Close()
	if _, err := Restore(backups[0], path, true); err != nil {
		t.Fatalf("forced restore of the oldest backup: %v", err)
	}
	s = open(t, path)
	defer s.Close()
	// What ErrNewerBackup warned of: before1, merged between the oldest backup and the next, is gone.
	if diff := cmp.Diff([]string{"after", "before0", "before2"}, allKeys(t, s, "d", t0)); diff != "" {
		t.Errorf("keys after the forced restore (-want +got):\n%s", diff)
	}
}
