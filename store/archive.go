package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Once a backup has been taken, the write-ahead log segments written since are kept after their merge, in the
// archive <state>.wal.archive/, so that restoring that backup loses nothing answered after it: Restore puts the
// backup in place and the archived segments back into the log, and the next start merges them. Each backup
// records in its copy the first segment the copy does not hold (metaBackupSegment). The live file records from
// which segment on merged segments are archived (metaArchiveFrom): the marker of the backup before the last good
// one, so that the one before stays restorable too (in case the last copy did not reach its disk). Archived
// segments are cut to their data (segments are preallocated) and deleted after archiveKeep whatever happens, so
// that a broker whose backups stopped does not fill its disk.

var (
	// metaBackupSegment is, in a backup, the first write-ahead log segment it does not hold.
	metaBackupSegment = []byte("backup_segment")
	// metaLastBackup is, in the live file, the backup segment of the last good backup.
	metaLastBackup = []byte("last_backup_segment")
	// metaArchiveFrom is, in the live file, the first segment archived after its merge.
	metaArchiveFrom = []byte("archive_from")
)

// archiveKeep is how long an archived segment is kept at most: a restore of an older backup loses the
// registrations merged before that (nodes register again when they next set up their tunnel).
const archiveKeep = 7 * 24 * time.Hour

// archivePruneEvery is how often the archive is checked for segments older than archiveKeep.
const archivePruneEvery = time.Hour

func archiveDir(walBase string) string { return walBase + ".archive" }

// readSegmentMeta returns the segment number the file records under key, or -1.
func readSegmentMeta(tx *bolt.Tx, key []byte) int {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return -1
	}
	n, err := strconv.Atoi(string(meta.Get(key)))
	if err != nil {
		return -1
	}
	return n
}

// retire removes a segment whose records are all in bbolt, or moves it to the archive if a backup does not hold
// it. Only the key writer and Open call it.
func (s *Store) retire(seg int) error {
	name := segmentName(s.walBase, seg)
	if from := s.archiveFrom.Load(); from < 0 || int64(seg) < from {
		if err := os.Remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove merged write-ahead log segment: %w", err)
		}
		return nil
	}
	dir := archiveDir(s.walBase)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write-ahead log archive: %w", err)
	}
	if empty, err := cutToData(name); err != nil {
		return fmt.Errorf("archive write-ahead log segment: %w", err)
	} else if empty {
		return os.Remove(name)
	}
	if err := os.Rename(name, filepath.Join(dir, filepath.Base(name))); err != nil {
		return fmt.Errorf("archive write-ahead log segment: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("archive write-ahead log segment: %w", err)
	}
	s.pruneArchive(false)
	return nil
}

// cutToData truncates a closed segment after its last byte that is not zero, giving back its preallocated end,
// and reports whether it holds no group at all.
func cutToData(name string) (empty bool, err error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return false, err
	}
	n := len(bytes.TrimRight(b, "\x00"))
	if n <= len(segmentMagic) {
		return true, nil
	}
	// A record's last field may end in zero bytes: keep the whole group that the trimmed end falls in.
	end := len(segmentMagic)
	for end < n {
		_, m, ok := readGroup(b[end:])
		if !ok {
			end = n
			break
		}
		end += m
	}
	return false, os.Truncate(name, int64(end))
}

// archived lists the segment numbers in the archive of walBase, oldest first.
func archived(walBase string) ([]int, error) {
	ents, err := os.ReadDir(archiveDir(walBase))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	prefix := filepath.Base(walBase) + "."
	var out []int
	for _, e := range ents {
		if len(e.Name()) <= len(prefix) || e.Name()[:len(prefix)] != prefix {
			continue
		}
		if n, err := strconv.Atoi(e.Name()[len(prefix):]); err == nil && n >= 0 {
			out = append(out, n)
		}
	}
	sort.Ints(out)
	return out, nil
}

// pruneArchive deletes archived segments that the last backup holds, and those older than archiveKeep; unless
// now is set, at most once every archivePruneEvery.
func (s *Store) pruneArchive(now bool) {
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	if !now && time.Since(s.lastPrune) < archivePruneEvery {
		return
	}
	s.lastPrune = time.Now()
	segs, err := archived(s.walBase)
	if err != nil {
		s.log.Error("read the write-ahead log archive", "err", err)
		return
	}
	old := 0
	for _, seg := range segs {
		name := filepath.Join(archiveDir(s.walBase), filepath.Base(segmentName(s.walBase, seg)))
		fi, err := os.Stat(name)
		expired := err == nil && time.Since(fi.ModTime()) > archiveKeep
		kept := int64(seg) >= s.archiveFrom.Load()
		if kept && !expired {
			continue
		}
		if expired && kept {
			old++
		}
		if err := os.Remove(name); err != nil {
			s.log.Error("prune the write-ahead log archive", "err", err)
		}
	}
	if old > 0 {
		s.log.Warn("write-ahead log segments older than 7 days deleted from the archive: the last backup is older, "+
			"and restoring it would lose what they held; take backups more often (wgkex-broker backup)",
			"segments", old)
	}
}
