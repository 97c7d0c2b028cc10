// Package store keeps the broker's state in one bbolt file: every registered key, the state of every worker, and
// the retained MQTT messages of the embedded server. Every write has reached the disk when its call returns.
//
// Registrations, the hot path, go first to a write-ahead log beside the file (<state>.wal.<n>): concurrent
// registrations share one append and one fdatasync. Every 30 s, or once 50,000 registrations wait, the log is handed to a background merge into the
// bbolt file in one sorted transaction, and the merged segments are deleted; reads see log and file together. Open
// merges whatever a killed process left in the log (a torn last record was never acknowledged and is dropped).
// Worker state and retained messages are written to bbolt directly, group-committed the same way.
//
// Bucket layout (schema 1):
//
//	meta                      "schema" → "1"
//	keys/<domain>/<key>       key: the 44-character public key; value: first seen (8 bytes, big-endian Unix
//	                          nanoseconds), last seen (8 bytes, same), then the name of the gateway last assigned
//	                          (the rest, may be empty)
//	workers/<name>            JSON of broker.WorkerState
//	retained/<topic>          an opaque retained MQTT message, as the mqttd package encodes it
package store
