package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
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
// Record: length (4 bytes) | CRC-32C of the payload (4 bytes) | payload
// Payload: last seen (8, Unix ns) | first seen (8) | len+domain | len+key | len+gateway (one length byte each)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// maxField is the longest domain, key or gateway name a record holds.
const maxField = 255

func appendRecord(buf []byte, r broker.KeyRecord) ([]byte, error) {
	if len(r.Domain) > maxField || len(r.Key) > maxField || len(r.Gateway) > maxField {
		return buf, fmt.Errorf("record field longer than %d bytes", maxField)
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
	if n < 19 || len(b) < 8+n {
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

// readSegment returns the records of one segment up to the first torn one.
func readSegment(path string) ([]broker.KeyRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	var out []broker.KeyRecord
	for len(b) > 0 {
		r, n, err := readRecord(b)
		if err != nil {
			break
		}
		out = append(out, r)
		b = b[n:]
	}
	return out, nil
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

// append writes the records with one write and one fdatasync.
func (w *wal) append(recs []broker.KeyRecord) []error {
	w.buf = w.buf[:0]
	errs := make([]error, len(recs))
	for i, r := range recs {
		var err error
		if w.buf, err = appendRecord(w.buf, r); err != nil {
			errs[i] = err
		}
	}
	var err error
	if w.size > 0 && w.off+int64(len(w.buf)) > w.size {
		grow := max(segmentPrealloc, int64(len(w.buf)))
		if preallocate(w.f, w.size, grow) == nil {
			w.size += grow
		}
	}
	if _, err = w.f.WriteAt(w.buf, w.off); err == nil {
		w.off += int64(len(w.buf))
		err = fdatasync(w.f)
	}
	if err != nil {
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
