package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
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
	writes chan write
	done   chan struct{}

	closeOnce sync.Once
	closeErr  error
}

type write struct {
	fn  func(*bolt.Tx) error
	err chan error
}

var _ broker.Store = (*Store)(nil)

// Open opens (creating if needed) the database at path and starts its writer.
func Open(path string) (*Store, error) {
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
	s := &Store{db: db, writes: make(chan write, maxBatch), done: make(chan struct{})}
	go s.writer()
	return s, nil
}

// Close stops the writer and closes the file. Writes still queued are committed first. Closing twice is harmless.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
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

// PutKey records a registration: it keeps the first-seen time of a known key and updates the rest.
func (s *Store) PutKey(r broker.KeyRecord) error {
	return s.update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketKeys).CreateBucketIfNotExists([]byte(r.Domain))
		if err != nil {
			return fmt.Errorf("domain bucket %q: %w", r.Domain, err)
		}
		first := r.FirstSeen
		if old := b.Get([]byte(r.Key)); len(old) >= 16 {
			first = time.Unix(0, int64(binary.BigEndian.Uint64(old)))
		}
		v := make([]byte, 16+len(r.Gateway))
		binary.BigEndian.PutUint64(v, uint64(first.UnixNano()))
		binary.BigEndian.PutUint64(v[8:], uint64(r.LastSeen.UnixNano()))
		copy(v[16:], r.Gateway)
		return b.Put([]byte(r.Key), v)
	})
}

// Key returns the record of key in domain, or ErrNotFound.
func (s *Store) Key(domain, key string) (broker.KeyRecord, error) {
	var r broker.KeyRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketKeys).Bucket([]byte(domain))
		if b == nil {
			return ErrNotFound
		}
		v := b.Get([]byte(key))
		if v == nil {
			return ErrNotFound
		}
		r = decodeKey(domain, key, v)
		return nil
	})
	return r, err
}

func decodeKey(domain, key string, v []byte) broker.KeyRecord {
	r := broker.KeyRecord{Domain: domain, Key: key}
	if len(v) >= 16 {
		r.FirstSeen = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		r.LastSeen = time.Unix(0, int64(binary.BigEndian.Uint64(v[8:])))
		r.Gateway = string(v[16:])
	}
	return r
}

// Keys calls fn, in key order, inside one read transaction, for every key of domain last seen at or after since.
func (s *Store) Keys(domain string, since time.Time, fn func(rec broker.KeyRecord) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketKeys).Bucket([]byte(domain))
		if b == nil {
			return nil
		}
		cut := since.UnixNano()
		return b.ForEach(func(k, v []byte) error {
			if len(v) < 16 || int64(binary.BigEndian.Uint64(v[8:])) < cut {
				return nil
			}
			return fn(decodeKey(domain, string(k), v))
		})
	})
}

// KeyCounts returns the number of registered keys per domain.
func (s *Store) KeyCounts() (map[string]int, error) {
	out := map[string]int{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketKeys).ForEachBucket(func(name []byte) error {
			out[string(name)] = tx.Bucket(bucketKeys).Bucket(name).Stats().KeyN
			return nil
		})
	})
	return out, err
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
