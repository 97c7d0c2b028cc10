package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// The write-ahead log makes a registration durable with one append and one fdatasync shared by every registration
// that arrived meanwhile, instead of a B+tree update per key. Its records are merged into the bbolt file in large
// batches in the background, and the segments merged are deleted. Segments are files <state>.wal.<n>.
//
// Segment: magic "WGKXWAL\x02" | group | group | … (then zeros, where the segment is preallocated)
// Group (one append, one fdatasync): length of the records (4 bytes) | CRC-32C of the records (4) | records
// Record: length (4 bytes) | CRC-32C of the payload (4 bytes) | payload
// Payload: last seen (8, Unix ns) | first seen (8) | len+domain | len+key | len+gateway (one length byte each)
//
// A group is written only after the previous one is on disk, so a crash can tear only the last group of a segment,
// and nothing but zeros follows it. A bad group followed by data is damage (a disk, or a hand): readSegment takes
// every record whose own checksum holds from it and reads on, and the store keeps the segment aside. Segments of
// the first version (records without magic and groups) are still read, up to their first bad record.

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// maxField is the longest domain, key or gateway name a record holds.
const maxField = 255

// maxPayload is the longest payload of a record: two times and three fields with their lengths.
const maxPayload = 16 + 3*(1+maxField)

// checkRecord refuses a registration that a record cannot hold.
func checkRecord(r broker.KeyRecord) error {
	if len(r.Domain) > maxField || len(r.Key) > maxField || len(r.Gateway) > maxField {
		return fmt.Errorf("record field longer than %d bytes", maxField)
	}
	return nil
}

func appendRecord(buf []byte, r broker.KeyRecord) ([]byte, error) {
	if err := checkRecord(r); err != nil {
		return buf, err
	}
	start := len(buf)
	buf = append(buf, make([]byte, 8)...)
	buf = binary.BigEndian.AppendUint64(buf, uint64(r.LastSeen.UnixNano()))
	buf = binary.BigEndian.AppendUint64(buf, uint64(r.FirstSeen.UnixNano()))
	for _, f := range []string{r.Domain, r.Key, r.Gateway} {
		buf = append(buf, byte(len(f)))
		buf = append(buf, f...)
	}
	payload := buf[start+8:]
	binary.BigEndian.PutUint32(buf[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(buf[start+4:], crc32.Checksum(payload, crcTable))
	return buf, nil
}

// errTorn marks the end of the usable log: a record cut short or corrupted by a crash during its write. Such a
// record was never acknowledged, since its fdatasync had not returned.
var errTorn = errors.New("torn record")

func readRecord(b []byte) (broker.KeyRecord, int, error) {
	if len(b) < 8 {
		return broker.KeyRecord{}, 0, errTorn
	}
	n := int(binary.BigEndian.Uint32(b))
	if n < 19 || n > maxPayload || len(b) < 8+n {
		return broker.KeyRecord{}, 0, errTorn
	}
	payload := b[8 : 8+n]
	if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(b[4:]) {
		return broker.KeyRecord{}, 0, errTorn
	}
	r := broker.KeyRecord{
		LastSeen:  time.Unix(0, int64(binary.BigEndian.Uint64(payload))),
		FirstSeen: time.Unix(0, int64(binary.BigEndian.Uint64(payload[8:]))),
	}
	p := payload[16:]
	var fields [3]string
	for i := range fields {
		if len(p) < 1 || len(p) < 1+int(p[0]) {
			return broker.KeyRecord{}, 0, errTorn
		}
		fields[i] = string(p[1 : 1+p[0]])
		p = p[1+p[0]:]
	}
	r.Domain, r.Key, r.Gateway = fields[0], fields[1], fields[2]
	return r, 8 + n, nil
}

// segmentPrealloc is how much of a segment is allocated ahead. Overwriting allocated blocks lets fdatasync skip
// the file-size update that an append needs: on ext4 here 115 µs instead of 190 µs a sync.
var segmentPrealloc int64 = 8 << 20

// wal is the current segment, written only by the store's key writer.
type wal struct {
	base      string // <state>.wal
	seg       int
	f         *os.File
	off, size int64 // next write offset; allocated size (0: the file system cannot preallocate)
	buf       []byte
	lastSync  time.Duration // of the last append's fdatasync
	// broken is set after a failed write or fdatasync: the segment is not written again.
	broken bool
}

func segmentName(base string, n int) string { return fmt.Sprintf("%s.%020d", base, n) }

// segments lists the existing segment numbers of base, oldest first.
func segments(base string) ([]int, error) {
	matches, err := filepath.Glob(base + ".*")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, m := range matches {
		n, err := strconv.Atoi(strings.TrimPrefix(m, base+"."))
		if err == nil && n >= 0 {
			out = append(out, n)
		}
	}
	sort.Ints(out)
	return out, nil
}

// segmentMagic starts every segment written by this version.
var segmentMagic = []byte("WGKXWAL\x02")

// maxGroup is the longest group an append writes: maxBatch records of the longest kind.
const maxGroup = maxBatch * (8 + 16 + 3 + 3*maxField)

// segmentRead is what readSegment found in one segment.
type segmentRead struct {
	recs []broker.KeyRecord
	// damaged: bytes that cannot be read lie before readable data (or the segment's magic is wrong), so
	// registrations that were acknowledged may be lost. A bad stretch at the end is a torn last group instead: a
	// crash during its write, never acknowledged.
	damaged bool
	// lost counts the unreadable stretches before the end; each cost at least one registration.
	lost int
	// unreadable counts the bytes in those stretches.
	unreadable int
}

// readSegment returns every registration that can be read from one segment. Groups are read whole where their
// checksum holds; where one does not, every record with a right checksum is still taken from the bad stretch, and
// reading goes on with the next whole group. A bad stretch at the end of the newest segment, followed by nothing
// but zeros, is a torn last group and not damage.
//
// Only the newest segment can end in a torn group: an older one was closed after its last append had returned
// (and a failed append is cut off), so a bad end there is damage too, unless newest is false.
func readSegment(path string, newest bool) (segmentRead, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return segmentRead{}, err
	}
	return parseSegment(b, newest), nil
}

// parseSegment is readSegment on the bytes of a segment.
func parseSegment(b []byte, newest bool) segmentRead {
	var out segmentRead
	switch {
	case allZero(b): // created, but the crash came before its magic reached the disk
		return out
	case bytes.HasPrefix(b, segmentMagic):
	case legacySegment(b):
		out.recs = readLegacySegment(b)
		return out
	case len(b) < len(segmentMagic):
		return out // a magic cut short: nothing followed it
	default: // a damaged magic: the groups after it are still read
		out.damaged = true
	}
	end := len(bytes.TrimRight(b, "\x00")) // the preallocated tail is zeros
	off := len(segmentMagic)
	for off < end {
		if recs, n, ok := readGroup(b[off:]); ok {
			out.recs = append(out.recs, recs...)
			off += n
			continue
		}
		// A bad group: take every valid record after its header until a whole group starts again. Bytes that
		// are neither are a bad stretch; the header alone is not one (its records tell what was lost).
		bad, p := 0, min(off+8, end)
		for p < end {
			// A group starts with a whole record: checking that first (at most maxPayload bytes to checksum) keeps
			// garbage from costing a checksum over up to maxGroup bytes at every position.
			if _, _, err := readRecord(b[min(p+8, len(b)):]); err == nil {
				if _, _, ok := readGroup(b[p:]); ok {
					break
				}
			}
			if r, n, err := readRecord(b[p:]); err == nil && plausible(r) {
				if bad > 0 {
					out.lost++
					out.unreadable += bad
					bad = 0
				}
				out.recs = append(out.recs, r)
				p += n
				continue
			}
			bad++
			p++
		}
		if bad > 0 && (p < end || !newest) { // readable data follows the last bad bytes, or it cannot be torn
			out.lost++
			out.unreadable += bad
		}
		off = p
	}
	out.damaged = out.damaged || out.lost > 0
	return out
}

// readGroup reads the group at the start of b: its records and its length, if it is whole and right.
func readGroup(b []byte) ([]broker.KeyRecord, int, bool) {
	if len(b) < 8 {
		return nil, 0, false
	}
	n := int(binary.BigEndian.Uint32(b))
	if n == 0 || n > maxGroup || 8+n > len(b) || crc32.Checksum(b[8:8+n], crcTable) != binary.BigEndian.Uint32(b[4:]) {
		return nil, 0, false
	}
	var out []broker.KeyRecord
	for p := b[8 : 8+n]; len(p) > 0; {
		r, m, err := readRecord(p)
		if err != nil { // a record alone has the shape of a group, but not its content
			return nil, 0, false
		}
		out = append(out, r)
		p = p[m:]
	}
	return out, 8 + n, true
}

// plausible reports whether a record found by scanning a bad stretch is one the broker wrote, not bytes that
// happen to carry a right checksum: the broker records only keys and domains that are not empty.
func plausible(r broker.KeyRecord) bool { return r.Key != "" && r.Domain != "" }

// legacySegment reports whether b is a segment of the first version: records from its first byte.
func legacySegment(b []byte) bool {
	r, _, err := readRecord(b)
	return err == nil && plausible(r)
}

// readLegacySegment reads a segment of the first version, whose records were not grouped: up to the first bad
// record.
func readLegacySegment(b []byte) []broker.KeyRecord {
	var out []broker.KeyRecord
	for len(b) > 0 {
		r, n, err := readRecord(b)
		if err != nil {
			break
		}
		out = append(out, r)
		b = b[n:]
	}
	return out
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// openSegment starts segment n, preallocated where the file system allows it.
func openSegment(base string, n int) (*wal, error) {
	f, err := os.OpenFile(segmentName(base, n), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open write-ahead log: %w", err)
	}
	w := &wal{base: base, seg: n, f: f}
	if preallocate(f, 0, segmentPrealloc) == nil {
		w.size = segmentPrealloc
	}
	if _, err := f.WriteAt(segmentMagic, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("write-ahead log: %w", err)
	}
	w.off = int64(len(segmentMagic))
	if err := fdatasync(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("write-ahead log: %w", err)
	}
	if err := syncDir(filepath.Dir(base)); err != nil {
		f.Close()
		return nil, err
	}
	return w, nil
}

// append writes the records as one group with one write and one fdatasync. After a failure the segment is
// broken and must not be written again.
func (w *wal) append(recs []broker.KeyRecord) []error {
	w.lastSync = 0 // until this append's fdatasync, if it makes one
	w.buf = append(w.buf[:0], make([]byte, 8)...)
	errs := make([]error, len(recs))
	for i, r := range recs {
		var err error
		if w.buf, err = appendRecord(w.buf, r); err != nil {
			errs[i] = err
		}
	}
	payload := w.buf[8:]
	if len(payload) == 0 {
		return errs
	}
	binary.BigEndian.PutUint32(w.buf, uint32(len(payload)))
	binary.BigEndian.PutUint32(w.buf[4:], crc32.Checksum(payload, crcTable))
	var err error
	if w.broken {
		err = errors.New("segment failed before")
	} else {
		if w.size > 0 && w.off+int64(len(w.buf)) > w.size {
			grow := max(segmentPrealloc, int64(len(w.buf)))
			if preallocate(w.f, w.size, grow) == nil {
				w.size += grow
			}
		}
		start := w.off
		if _, err = w.f.WriteAt(w.buf, w.off); err == nil {
			w.off += int64(len(w.buf))
			t0 := time.Now()
			err = fdatasync(w.f)
			w.lastSync = time.Since(t0)
		}
		if err != nil {
			// The group failed (its callers are told): cut it off, so that the segment ends with its last good
			// group and a later start does not take what is left of this one for damage. Shrinking needs no
			// space; if even that fails, the next start finds a bad end and keeps the segment aside.
			if terr := w.f.Truncate(start); terr == nil {
				fdatasync(w.f)
			}
		}
	}
	if err != nil {
		w.broken = true
		err = fmt.Errorf("write-ahead log: %w", err)
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	return errs
}

func (w *wal) close() error { return w.f.Close() }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
