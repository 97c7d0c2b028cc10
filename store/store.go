package store

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// ErrNotFound reports a record that is not in the store. It is broker.ErrNotFound, which the broker core checks
// without importing the store.
var ErrNotFound = broker.ErrNotFound

// ErrClosed reports a write after Close.
var ErrClosed = errors.New("store closed")

var (
	bucketMeta     = []byte("meta")
	bucketKeys     = []byte("keys")
	bucketByTime   = []byte("bytime")
	bucketWorkers  = []byte("workers")
	bucketRetained = []byte("retained")
	metaSchema     = []byte("schema")
)

// schemaVersion is the layout this version writes (doc.go); Open migrates older files.
const schemaVersion = 3

// maxBatch bounds how many writes share one transaction.
const maxBatch = 4096

// Store is the broker's bbolt database.
type Store struct {
	db     *bolt.DB
	path   string
	log    *slog.Logger
	writes chan write
	done   chan struct{}

	// Registrations: the write-ahead log and what of it is not yet merged into db.
	walBase     string
	wal         *wal // owned by keyWriter
	keys        chan keyWrite
	keysDone    chan struct{}
	flush       chan flushRequest
	mergeUpTo   int              // newest segment in the running merge; keyWriter only
	finishErr   error            // the last merge at Close; set before keysDone closes
	archiveFrom atomic.Int64     // the first segment archived after its merge; -1: none (archive.go)
	backupMu    sync.Mutex       // held while a backup is written
	nextSeg     int              // the lowest number a new segment may have (recoverLog)
	pruneMu     sync.Mutex       // held while the archive is pruned
	lastPrune   time.Time        // under pruneMu
	recovered   int              // records merged from the log at Open
	damaged     []DamagedSegment // segments Open kept aside
	mu          sync.RWMutex
	pending     overlay // in the current segment
	merging     overlay // in older segments, being merged
	pendingN    int

	// fsyncObserver is the wgkex_wal_fsync_seconds histogram once RegisterMetrics was called.
	fsyncObserver atomic.Pointer[prometheus.Histogram]

	// visited counts the index entries replays have read (tests check that a replay reads only its window).
	visited atomic.Int64

	// indexHook, set by tests before any merge, runs in a merge between the keys and the time index; an error
	// fails the merge there.
	indexHook func() error

	// closeMu guards closed and writesShut. A sender on keys or flush checks closed, a sender on writes checks
	// writesShut, each holding closeMu for reading until its send is done; Close sets them before it closes the
	// channels, so that no send can meet a closed channel.
	closeMu    sync.RWMutex
	closed     bool           // Close has begun: registrations and flushes are refused
	writesShut bool           // the writer is stopping: every write is refused
	stopBG     chan struct{}  // closed by Close: background jobs (the retention sweep) stop
	bg         sync.WaitGroup // background jobs
	closeOnce  sync.Once
	closeErr   error
}

type write struct {
	fn  func(*bolt.Tx) error
	err chan error
}

var _ broker.Store = (*Store)(nil)

// Open opens (creating if needed) the database at path, migrates an older layout, merges what a previous run left
// in its write-ahead log (path.wal.*) and starts the writers. A file another process holds open is refused at once
// with ErrInUse; a file that is damaged, truncated or not a state file at all with a *DamagedError, never a panic.
// A damaged log segment is salvaged: its readable registrations are merged and it is kept aside (see recoverLog).
func Open(path string, log *slog.Logger) (*Store, error) {
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, path: path, log: log, writes: make(chan write, maxBatch), done: make(chan struct{}),
		walBase: path + ".wal", keys: make(chan keyWrite, maxBatch), keysDone: make(chan struct{}),
		flush: make(chan flushRequest), pending: overlay{}, stopBG: make(chan struct{})}
	if err := guard(path, func() error {
		if err := db.Update(func(tx *bolt.Tx) error { return initialise(tx, log) }); err != nil {
			return fmt.Errorf("initialise state file %s: %w", path, err)
		}
		db.View(func(tx *bolt.Tx) error {
			s.archiveFrom.Store(int64(readSegmentMeta(tx, metaArchiveFrom)))
			s.nextSeg = max(readSegmentMeta(tx, metaLastBackup), readSegmentMeta(tx, metaBackupSegment), 0)
			return nil
		})
		if err := s.recoverLog(); err != nil {
			return fmt.Errorf("recover %s: %w", path, err)
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, err
	}
	if s.recovered > 0 {
		log.Info("registrations recovered from the write-ahead log", "count", s.recovered)
	}
	go s.writer()
	go s.keyWriter()
	return s, nil
}

// lockWait is how long Open waits for another process to release the state file: long enough for a broker that
// is being restarted to let go of it, short enough to say at once that another one runs.
const lockWait = 100 * time.Millisecond

// ErrInUse reports a state file that another process (a running broker) holds open.
var ErrInUse = errors.New("in use by another process (is another wgkex-broker running on it?)")

// DamagedError reports a state file that cannot be read: truncated, damaged, or not a state file at all.
type DamagedError struct {
	File string
	Err  error
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("state file %s is damaged or not a wgkex state file (%v): move it aside and restore the "+
		"last backup (wgkex-broker backup; README \"Backup and restore\"), keeping the write-ahead log files "+
		"%s.wal.* beside it, or move it aside alone to start with an empty state", e.File, e.Err, e.File)
}

func (e *DamagedError) Unwrap() error { return e.Err }

// openDB opens the bbolt file and checks what its opening cannot: that the file holds every page its meta page
// names. bbolt trusts its file: on a truncated or damaged one it panics, or faults on a page beyond the end of the
// mapping, and both are turned into a *DamagedError here.
func openDB(path string) (db *bolt.DB, err error) {
	err = guard(path, func() error {
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: lockWait, FreelistType: bolt.FreelistMapType})
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return fmt.Errorf("state file %s: %w", path, ErrInUse)
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
			return &DamagedError{File: path, Err: err}
		case err != nil:
			return fmt.Errorf("open state file %s: %w", path, err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			db.Close()
			return fmt.Errorf("state file %s: %w", path, err)
		}
		var need int64
		db.View(func(tx *bolt.Tx) error { need = tx.Size(); return nil })
		if need > fi.Size() {
			db.Close()
			return &DamagedError{File: path, Err: fmt.Errorf("truncated: %d bytes, its pages need %d", fi.Size(), need)}
		}
		return nil
	})
	return db, err
}

// guard runs fn, turning a panic or a memory fault of bbolt reading a damaged file into a *DamagedError of path.
func guard(path string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = &DamagedError{File: path, Err: fmt.Errorf("%v", r)}
		}
	}()
	return fn()
}

// initialise creates the buckets of a new file, or migrates an older schema to the current one.
func initialise(tx *bolt.Tx, log *slog.Logger) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	schema := schemaVersion
	if v := meta.Get(metaSchema); v != nil {
		if _, err := fmt.Sscan(string(v), &schema); err != nil {
			return fmt.Errorf("schema %q: %w", v, err)
		}
	}
	if schema > schemaVersion {
		return fmt.Errorf("schema %d, this version reads up to %d", schema, schemaVersion)
	}
	for _, b := range [][]byte{bucketKeys, bucketByTime, bucketWorkers, bucketRetained, bucketCounts, bucketRevoked} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	if schema == 1 {
		// Schema 2 adds the time index. The worker records of schema 1 already have the layout of workerRecord.
		n, err := buildIndex(tx)
		if err != nil {
			return fmt.Errorf("migrate schema 1: %w", err)
		}
		log.Info("state file migrated to schema 2", "keys indexed", n)
	}
	if schema < 3 {
		// Schema 3 adds the key counts per domain.
		if err := buildCounts(tx); err != nil {
			return fmt.Errorf("migrate to schema 3: %w", err)
		}
		log.Info("state file migrated to schema 3: keys counted per domain")
	}
	return meta.Put(metaSchema, fmt.Append(nil, schemaVersion))
}

func (s *Store) logf(format string, args ...any) { s.log.Error(fmt.Sprintf(format, args...)) }

// Close stops the retention sweep, merges the write-ahead log, stops the writers and closes the file. Writes
// still queued are committed first; later ones fail with ErrClosed. If the log cannot be merged, its segments stay
// for the next Open and Close says so. Closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeMu.Lock()
		s.closed = true // from now on PutKey and Flush refuse, so nothing sends on keys or flush
		s.closeMu.Unlock()
		close(s.stopBG)
		s.bg.Wait()
		close(s.keys)
		<-s.keysDone // the last merge writes through s.writes
		s.closeMu.Lock()
		s.writesShut = true
		s.closeMu.Unlock()
		close(s.writes)
		<-s.done
		s.closeErr = errors.Join(s.finishErr, s.db.Close())
	})
	return s.closeErr
}

// update runs fn in a write transaction shared with concurrent callers and returns once it is on disk, or fails
// with ErrClosed once Close has stopped the writer.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	w := write{fn: fn, err: make(chan error, 1)}
	s.closeMu.RLock()
	if s.writesShut {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	s.writes <- w // the writer drains writes until it is closed, which waits for closeMu
	s.closeMu.RUnlock()
	return <-w.err
}

// updateInternal is update for the store's own jobs (merges and the sweep). Close waits for them before it
// closes s.writes, so they need no lock, and must take none: a Flush holds closeMu while it waits for the key
// writer, which may wait for a merge.
func (s *Store) updateInternal(fn func(*bolt.Tx) error) error {
	w := write{fn: fn, err: make(chan error, 1)}
	s.writes <- w
	return <-w.err
}

// writer commits queued writes in groups: it takes whatever has queued up while the last commit ran.
func (s *Store) writer() {
	defer close(s.done)
	batch := make([]write, 0, maxBatch)
	for w := range s.writes {
		batch = append(batch[:0], w)
	drain:
		for len(batch) < maxBatch {
			select {
			case w, ok := <-s.writes:
				if !ok {
					break drain
				}
				batch = append(batch, w)
			default:
				break drain
			}
		}
		s.commit(batch)
	}
}

// commit runs the batch in one transaction; if that fails, each write runs alone so that one bad write fails
// only itself.
func (s *Store) commit(batch []write) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, w := range batch {
			if err := w.fn(tx); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || len(batch) == 1 {
		for _, w := range batch {
			w.err <- err
		}
		return
	}
	for _, w := range batch {
		w.err <- s.db.Update(w.fn)
	}
}
