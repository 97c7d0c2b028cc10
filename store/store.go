package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// ErrNotFound reports a record that is not in the store.
var ErrNotFound = errors.New("not found")

// ErrClosed reports a write after Close.
var ErrClosed = errors.New("store closed")

var (
	bucketMeta     = []byte("meta")
	bucketKeys     = []byte("keys")
	bucketWorkers  = []byte("workers")
	bucketRetained = []byte("retained")
	schemaVersion  = []byte("1")
)

// maxBatch bounds how many writes share one transaction.
const maxBatch = 4096

// Store is the broker's bbolt database.
type Store struct {
	db     *bolt.DB
	log    *slog.Logger
	writes chan write
	done   chan struct{}

	// Registrations: the write-ahead log and what of it is not yet merged into db.
	walBase   string
	wal       *wal // owned by keyWriter
	keys      chan keyWrite
	keysDone  chan struct{}
	flush     chan chan error
	mergeUpTo int // newest segment in the running merge; keyWriter only
	recovered int // records merged from the log at Open
	mu        sync.RWMutex
	pending   overlay // in the current segment
	merging   overlay // in older segments, being merged
	pendingN  int

	closeOnce sync.Once
	closeErr  error
}

type write struct {
	fn  func(*bolt.Tx) error
	err chan error
}

var _ broker.Store = (*Store)(nil)

// Open opens (creating if needed) the database at path, merges what a previous run left in its write-ahead log
// (path.wal.*) and starts the writers.
func Open(path string, log *slog.Logger) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get([]byte("schema")); v != nil && string(v) != string(schemaVersion) {
			return fmt.Errorf("schema %s, this version reads %s", v, schemaVersion)
		}
		if err := meta.Put([]byte("schema"), schemaVersion); err != nil {
			return err
		}
		for _, b := range [][]byte{bucketKeys, bucketWorkers, bucketRetained} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise state file %s: %w", path, err)
	}
	s := &Store{db: db, log: log, writes: make(chan write, maxBatch), done: make(chan struct{}),
		walBase: path + ".wal", keys: make(chan keyWrite, maxBatch), keysDone: make(chan struct{}), flush: make(chan chan error),
		pending: overlay{}}
	if err := s.recoverLog(); err != nil {
		db.Close()
		return nil, fmt.Errorf("recover %s: %w", path, err)
	}
	if s.recovered > 0 {
		log.Info("registrations recovered from the write-ahead log", "count", s.recovered)
	}
	go s.writer()
	go s.keyWriter()
	return s, nil
}

func (s *Store) logf(format string, args ...any) { s.log.Error(fmt.Sprintf(format, args...)) }

// Close merges the write-ahead log, stops the writers and closes the file. Writes still queued are committed
// first. Closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.keys)
		<-s.keysDone
		close(s.writes)
		<-s.done
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

// update runs fn in a write transaction shared with concurrent callers and returns once it is on disk.
func (s *Store) update(fn func(*bolt.Tx) error) (err error) {
	defer func() {
		if recover() != nil { // send on the closed channel
			err = ErrClosed
		}
	}()
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

// PutWorker stores the state of one worker.
func (s *Store) PutWorker(w broker.WorkerState) error {
	v, err := json.Marshal(w)
	if err != nil {
		return fmt.Errorf("encode worker %s: %w", w.Name, err)
	}
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketWorkers).Put([]byte(w.Name), v)
	})
}

// Workers returns the stored state of every worker, in name order.
func (s *Store) Workers() ([]broker.WorkerState, error) {
	var out []broker.WorkerState
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketWorkers).ForEach(func(k, v []byte) error {
			var w broker.WorkerState
			if err := json.Unmarshal(v, &w); err != nil {
				return fmt.Errorf("decode worker %s: %w", k, err)
			}
			w.Name = string(k)
			out = append(out, w)
			return nil
		})
	})
	return out, err
}

// PutRetained stores a retained MQTT message under its topic.
func (s *Store) PutRetained(topic string, msg []byte) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRetained).Put([]byte(topic), msg)
	})
}

// DeleteRetained removes the retained message of topic; a missing one is not an error.
func (s *Store) DeleteRetained(topic string) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRetained).Delete([]byte(topic))
	})
}

// Retained calls fn for every stored retained message.
func (s *Store) Retained(fn func(topic string, msg []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRetained).ForEach(func(k, v []byte) error {
			return fn(string(k), append([]byte(nil), v...))
		})
	})
}
