package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// ErrBackupRunning refuses a backup while another one is being written.
var ErrBackupRunning = errors.New("another backup is being written")

// Backup writes a consistent copy of the whole state to w while the store is in use: it merges the write-ahead
// log first, so that the copy holds every registration acknowledged before the call, then writes one read
// transaction's view of the file (bbolt's Tx.WriteTo; registrations go on meanwhile). It returns the bytes
// written. From then on the log segments the copy does not hold are archived after their merge (archive.go), so
// that Restore of the copy loses nothing acknowledged after it either. One backup runs at a time.
func (s *Store) Backup(w io.Writer) (int64, error) {
	if !s.backupMu.TryLock() {
		return 0, ErrBackupRunning
	}
	defer s.backupMu.Unlock()
	seg, err := s.flushUpTo()
	if err != nil {
		return 0, fmt.Errorf("merge the write-ahead log before the backup: %w", err)
	}
	// Every segment before seg is merged; seg and later ones must be archived from now on. The first backup
	// starts the archive here; later ones archive from the backup before the last good one already.
	s.archiveFrom.CompareAndSwap(-1, int64(seg))
	if err := s.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta.Get(metaArchiveFrom) == nil {
			if err := meta.Put(metaArchiveFrom, fmt.Append(nil, seg)); err != nil {
				return err
			}
		}
		return meta.Put(metaBackupSegment, fmt.Append(nil, seg)) // for the copy
	}); err != nil {
		return 0, fmt.Errorf("record the backup: %w", err)
	}
	var n int64
	err = s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		return n, fmt.Errorf("write backup: %w", err) // a copy cut short is no backup: the archive stays
	}
	// The copy is good: archive from the last good backup before it on (the one a restore falls back on if this
	// copy is lost on its way), and record this one.
	var from int64
	if err := s.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		from = int64(readSegmentMeta(tx, metaLastBackup))
		if from < 0 {
			from = int64(seg)
		}
		if err := meta.Put(metaArchiveFrom, fmt.Append(nil, from)); err != nil {
			return err
		}
		return meta.Put(metaLastBackup, fmt.Append(nil, seg))
	}); err != nil {
		return n, fmt.Errorf("record the backup: %w", err)
	}
	s.archiveFrom.Store(from)
	s.pruneArchive(true)
	return n, nil
}

// Check reads every page of the state file at path, which no broker may hold (a backup just written, say), and
// reports what is wrong with it, and how many keys it holds.
func Check(path string) (keys int, err error) {
	err = guard(path, func() error {
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockWait})
		if err != nil {
			return &DamagedError{File: path, Err: err}
		}
		defer db.Close()
		return db.View(func(tx *bolt.Tx) error {
			var errs []error
			for err := range tx.Check() {
				errs = append(errs, err)
			}
			if len(errs) > 0 {
				return &DamagedError{File: path, Err: errors.Join(errs...)}
			}
			if tx.Bucket(bucketMeta) == nil {
				return &DamagedError{File: path, Err: errors.New("no meta bucket")}
			}
			kb := tx.Bucket(bucketKeys)
			if kb == nil {
				return &DamagedError{File: path, Err: errors.New("no keys bucket")}
			}
			return kb.ForEachBucket(func(d []byte) error {
				keys += kb.Bucket(d).Stats().KeyN
				return nil
			})
		})
	})
	return keys, err
}

// Restored is what Restore did.
type Restored struct {
	Keys     int    // keys in the backup
	Previous string // where the state file that was replaced is now ("": there was none)
	Segments int    // archived write-ahead log segments put back for the next start to merge
}

// ErrNewerBackup refuses to restore a backup when a newer one was taken and the log archived between the two was
// pruned: what was registered between them would be lost.
var ErrNewerBackup = errors.New("a newer backup was taken since, and the log between the two is no longer " +
	"archived: restoring this one would lose the keys registered between them; restore the newest backup, or " +
	"pass --force to restore this one anyway")

// Restore puts the backup at backupPath in place of the state file at path, for a stopped broker: the backup is
// checked first, the file it replaces is kept as <path>.before-restore[.N], and the archived write-ahead log
// segments written after the backup are put back beside it, so that the next start merges every registration
// acknowledged after the backup too. A broker holding path is refused with ErrInUse.
//
// When the state file it replaces can still be read and records a newer backup whose archive no longer reaches
// back to this one, Restore refuses with ErrNewerBackup unless force is set.
func Restore(backupPath, path string, force bool) (Restored, error) {
	var out Restored
	keys, err := Check(backupPath)
	if err != nil {
		return out, fmt.Errorf("backup %s: %w", backupPath, err)
	}
	out.Keys = keys
	from, _, err := segmentMarks(backupPath)
	if err != nil {
		return out, fmt.Errorf("backup %s: %w", backupPath, err)
	}
	// Read before the lock below, which would keep bbolt's own (shared) lock from being taken. A file that
	// cannot be read (the reason for many a restore) is not checked.
	_, archiveFrom, marksErr := segmentMarks(path)
	if cur, err := os.OpenFile(path, os.O_RDWR, 0); err == nil {
		defer cur.Close()
		if err := unix.Flock(int(cur.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return out, fmt.Errorf("state file %s: %w", path, ErrInUse)
		}
		if marksErr == nil && !force && from >= 0 && archiveFrom > from {
			return out, ErrNewerBackup
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return out, fmt.Errorf("state file %s: %w", path, err)
	}
	tmp := path + ".restore"
	if err := copyFile(backupPath, tmp); err != nil {
		os.Remove(tmp)
		return out, fmt.Errorf("restore %s: %w", path, err)
	}
	if fileExists(path) {
		// A second name for the old file first, then the backup renamed over it: at no moment is there no state
		// file (a start in between would create an empty one).
		out.Previous = path + ".before-restore"
		for i := 1; fileExists(out.Previous); i++ {
			out.Previous = fmt.Sprintf("%s.before-restore.%d", path, i)
		}
		if err := os.Link(path, out.Previous); err != nil {
			return out, fmt.Errorf("keep %s aside: %w", path, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return out, fmt.Errorf("restore %s: %w", path, err)
	}
	walBase := path + ".wal"
	if from >= 0 {
		segs, err := archived(walBase)
		if err != nil {
			return out, err
		}
		for _, seg := range segs {
			if seg < from {
				continue
			}
			name := segmentName(walBase, seg)
			if err := os.Rename(filepath.Join(archiveDir(walBase), filepath.Base(name)), name); err != nil {
				return out, fmt.Errorf("put archived write-ahead log segment back: %w", err)
			}
			out.Segments++
		}
	}
	return out, syncDir(filepath.Dir(path))
}

// segmentMarks reads the backup segment (in a backup: the first segment it does not hold) and the first archived
// segment (in a live file) that the state file at path records, each -1 where none.
func segmentMarks(path string) (backup, archiveFrom int, err error) {
	backup, archiveFrom = -1, -1
	err = guard(path, func() error {
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockWait})
		if err != nil {
			return err
		}
		defer db.Close()
		return db.View(func(tx *bolt.Tx) error {
			backup, archiveFrom = readSegmentMeta(tx, metaBackupSegment), readSegmentMeta(tx, metaArchiveFrom)
			return nil
		})
	})
	return backup, archiveFrom, err
}

// copyFile copies src to dst and syncs it.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
