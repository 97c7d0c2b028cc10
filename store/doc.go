// Package store keeps the broker's state in one bbolt file: every registered key, the state of every worker, and
// the retained MQTT messages of the embedded server. Every write has reached the disk when its call returns.
//
// Registrations, the hot path, go first to a write-ahead log beside the file (<state>.wal.<n>): concurrent
// registrations share one append (a group) and one fdatasync. Every 30 s, or once 50,000 registrations wait, the
// log is handed to a background merge into the bbolt file: the keys in transactions of 512 registrations in key
// order (each followed by unmapping the pages of the file it touched, so that they do not count in the broker's
// RSS), then their time-index entries in transactions of 8,192 in time order; and the merged segments are
// deleted (only once their records are in bbolt: a merge that fails at Close, on a full disk say, leaves them
// and Close says so); reads see log and file together. Open merges whatever a killed process left in the log: a
// torn last group (never acknowledged) is dropped; a segment damaged before its end gives up every record whose
// own checksum holds and is kept aside as <segment>.damaged, named in an ERROR line and in
// wgkex_wal_damaged_segment_records. A state file that is locked by another process is refused at once (ErrInUse);
// one that is truncated, damaged or foreign with a *DamagedError, never a panic.
// After a failed write or fdatasync the log goes on in a new segment. Worker state and retained messages are
// written to bbolt directly, group-committed the same way (BENCHMARKS.md compares this with bbolt's DB.Batch).
//
// Every key is also in a time index, so that a replay (KeysPage) reads only the keys of its window and the
// retention sweep (Sweep, StartRetention) only the expired ones, 1,000 deletions a transaction. Imports and the
// sweep keep it in the same transactions as the keys; a merge deletes a key's old entry with the key's put and
// writes the new one later, in time order (merge.go), and reads take the key from the log until then. A merge
// costs one lookup, one put and one index move per registration, whatever the file holds.
// bbolt never shrinks its file: Compact (wgkex-broker compact) rewrites a stopped broker's file.
//
// Bucket layout (schema 3; Open migrates schema 1, which had no bytime bucket, by building the index once, and
// schema 2, which had no counts bucket, by counting once):
//
//	meta                      "schema" → "3"; after a backup "backup_segment", "last_backup_segment",
//	                          "archive_from" (archive.go)
//	keys/<domain>/<key>       key: the 44-character public key; value: first seen (8 bytes, big-endian Unix
//	                          nanoseconds), last seen (8 bytes, same), then the name of the gateway last assigned
//	                          (the rest, may be empty)
//	bytime/<domain>/<t><key>  t: the key's last seen (8 bytes, big-endian Unix nanoseconds with the sign bit
//	                          flipped, so that byte order is time order); value: its first seen (8 bytes, as in
//	                          keys). Exactly one entry per key.
//	counts/<domain>           how many keys keys/<domain> holds (8 bytes, big-endian), kept in the transactions
//	                          that add and delete keys
//	revoked/<domain>/<key>    the time the key was revoked (8 bytes, big-endian Unix nanoseconds): merges drop
//	                          registrations of it last seen at or before then; swept with the keys (revoke.go)
//	workers/<name>            JSON of the store's workerRecord: {"online":…,"peers":{domain: n},"data":{domain:
//	                          {"ExternalAddress","Port","PublicKey","LinkAddress"}},"changed": RFC 3339 time,
//	                          "since": RFC 3339 time, optional}
//	retained/<topic>          an opaque retained MQTT message, as the mqttd package encodes it
//	samples/<worker>/<slot>   the status page's chart: a ring of SampleSlots slots (2 bytes, big-endian) per
//	                          worker; value: time (8 bytes, big-endian Unix nanoseconds), connected peers (4 bytes)
//
// The write-ahead log's format is in wal.go.
package store
