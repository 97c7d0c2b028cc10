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

// Backup writes a consistent copy of the whole state to w while the store is in use: it merges the write-ahead
// log first, so that the copy holds every registration acknowledged before the call, then writes one read
// transaction's view of the file (bbolt's Tx.WriteTo; registrations go on meanwhile). It returns the bytes
// written. From then on the log segments the copy does not hold are archived after their merge (archive.go), so
// that Restore of the copy loses nothing acknowledged after it either.
func (s *Store) Backup(w io.Writer) (int64, error) {
	seg, err := s.flushUpTo()
	if err != nil {
		return 0, fmt.Errorf("merge the write-ahead log before the backup: %w", err)
	}
	// Every segment before seg is merged. The copy records seg, and the live store archives seg and after; a
	// segment merged meanwhile may be in the copy too, which a restore merges again harmlessly.
	prev := s.backupSeg.Swap(int64(seg))
	if err := s.setBackupSegment(-1, int64(seg)); err != nil {
		s.backupSeg.CompareAndSwap(int64(seg), prev)
		return 0, fmt.Errorf("record the backup: %w", err)
	}
	var n int64
	err = s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	if err != nil {
		// A copy cut short is no backup: the archive stays what the last good one needs.
		if s.backupSeg.CompareAndSwap(int64(seg), prev) {
			if rerr := s.setBackupSegment(int64(seg), prev); rerr != nil {
				err = errors.Join(err, fmt.Errorf("restore the marker of the last backup: %w", rerr))
			}
		}
		return n, fmt.Errorf("write backup: %w", err)
	}
	s.pruneArchive(true)
	return n, nil
}

// setBackupSegment records seg as the backup segment in the file (-1: none), unless the file records another one
// than from (-1: whatever it records).
func (s *Store) setBackupSegment(from, seg int64) error {
	return s.update(func(tx *bolt.Tx) error {
		if from >= 0 && int64(readBackupSegment(tx)) != from {
			return nil
		}
		if seg < 0 {
			return tx.Bucket(bucketMeta).Delete(metaBackupSegment)
		}
		return tx.Bucket(bucketMeta).Put(metaBackupSegment, fmt.Append(nil, seg))
	})
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

// Restore puts the backup at backupPath in place of the state file at path, for a stopped broker: the backup is
// checked first, the file it replaces is kept as <path>.before-restore[.N], and the archived write-ahead log
// segments written after the backup are put back beside it, so that the next start merges every registration
// acknowledged after the backup too. A broker holding path is refused with ErrInUse.
func Restore(backupPath, path string) (Restored, error) {
	var out Restored
	keys, err := Check(backupPath)
	if err != nil {
		return out, fmt.Errorf("backup %s: %w", backupPath, err)
	}
	out.Keys = keys
	from := -1
	if db, err := bolt.Open(backupPath, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockWait}); err == nil {
		db.View(func(tx *bolt.Tx) error { from = readBackupSegment(tx); return nil })
		db.Close()
	}
	if cur, err := os.OpenFile(path, os.O_RDWR, 0); err == nil {
		defer cur.Close()
		if err := unix.Flock(int(cur.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return out, fmt.Errorf("state file %s: %w", path, ErrInUse)
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
		out.Previous = path + ".before-restore"
		for i := 1; fileExists(out.Previous); i++ {
			out.Previous = fmt.Sprintf("%s.before-restore.%d", path, i)
		}
		if err := os.Rename(path, out.Previous); err != nil {
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
