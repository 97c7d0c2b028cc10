// Package store keeps the broker's state in one bbolt file: every registered key, the state of every worker, and
// the retained MQTT messages of the embedded server. Writes are group-committed: concurrent writers share one
// transaction and one fsync, and a write has reached the disk when its call returns.
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
