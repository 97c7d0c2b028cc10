package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// workerRecord is the value of workers/<name>: the store's own encoding of broker.WorkerState, so that a change
// in the core cannot change the file. Its layout belongs to the schema in meta: change it only with a new schema
// and a migration in initialise.
type workerRecord struct {
	Online  bool                      `json:"online"`
	Peers   map[string]int            `json:"peers"`
	Data    map[string]endpointRecord `json:"data"`
	Changed time.Time                 `json:"changed"`
	// Since is when the worker last went online or offline; absent in records written before it was kept.
	Since time.Time `json:"since,omitzero"`
}

// endpointRecord is a worker's endpoint in one domain.
type endpointRecord struct {
	ExternalAddress string `json:"ExternalAddress"`
	Port            int    `json:"Port"`
	PublicKey       string `json:"PublicKey"`
	LinkAddress     string `json:"LinkAddress"`
}

func toRecord(w broker.WorkerState) workerRecord {
	r := workerRecord{Online: w.Online, Peers: w.Peers, Changed: w.Changed, Since: w.Since}
	if w.Data != nil {
		r.Data = make(map[string]endpointRecord, len(w.Data))
		for d, e := range w.Data {
			r.Data[d] = endpointRecord{ExternalAddress: e.ExternalAddress, Port: e.Port, PublicKey: e.PublicKey, LinkAddress: e.LinkAddress}
		}
	}
	return r
}

func (r workerRecord) state(name string) broker.WorkerState {
	w := broker.WorkerState{Name: name, Online: r.Online, Peers: r.Peers, Changed: r.Changed, Since: r.Since}
	if r.Data != nil {
		w.Data = make(map[string]wire.WorkerData, len(r.Data))
		for d, e := range r.Data {
			w.Data[d] = wire.WorkerData{ExternalAddress: e.ExternalAddress, Port: e.Port, PublicKey: e.PublicKey, LinkAddress: e.LinkAddress}
		}
	}
	return w
}

// PutWorker stores the state of one worker.
func (s *Store) PutWorker(w broker.WorkerState) error {
	v, err := json.Marshal(toRecord(w))
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
			var r workerRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode worker %s: %w", k, err)
			}
			out = append(out, r.state(string(k)))
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
