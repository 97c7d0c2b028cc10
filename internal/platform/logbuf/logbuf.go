// Package logbuf batches log lines into fewer writes. Under load the broker logs a line for every registration
// (thousands a second): writing each with its own write(2) cost 2 % of its CPU, and journald, reading them on the
// same host, is woken as often. A Writer takes each line into a buffer at once and a goroutine of its own writes
// whatever has gathered meanwhile with one write: one line at a time when the broker is idle, many together under
// load, always in order. Written by hand because bufio.Writer only flushes when full or when told, and a log
// must not hold lines back while the broker waits.
package logbuf

import (
	"io"
	"sync"
)

// maxBuffered bounds what the buffer holds while the output is slow (a blocked pipe, a slow terminal): past it a
// line is written by its caller, after what is buffered, so that logging slows the broker down rather than
// growing its memory.
const maxBuffered = 1 << 20

// Writer is an io.Writer that batches writes to its output. Its Write never fails while it runs; errors of the
// output are returned by Close (the first one), as nothing can be done about a log that cannot be written.
type Writer struct {
	out io.Writer

	wmu sync.Mutex // held while writing to out, so that writes never interleave or reorder

	mu      sync.Mutex
	buf     []byte // lines not yet handed to out
	spare   []byte // the buffer of the previous write, for reuse
	closed  bool
	err     error
	kick    chan struct{}
	stopped chan struct{}
}

// New starts a Writer that writes to out. Close it to write what is left and stop its goroutine.
func New(out io.Writer) *Writer {
	w := &Writer{out: out, kick: make(chan struct{}, 1), stopped: make(chan struct{})}
	go w.run()
	return w
}

// Write takes p into the buffer and returns; the writer's goroutine writes it soon after. After Close, or when
// the buffer is full, it writes p itself, after everything taken before it.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	if w.closed || len(w.buf)+len(p) > maxBuffered {
		w.mu.Unlock()
		w.wmu.Lock()
		defer w.wmu.Unlock()
		w.flushLocked()
		return w.out.Write(p)
	}
	w.buf = append(w.buf, p...)
	select { // under mu, where Close closes kick
	case w.kick <- struct{}{}:
	default: // a write is due already and will take p with it
	}
	w.mu.Unlock()
	return len(p), nil
}

// run writes the buffer each time a line arrives, with every line that arrived while it was writing the last.
func (w *Writer) run() {
	defer close(w.stopped)
	for range w.kick {
		w.wmu.Lock()
		w.flushLocked()
		w.wmu.Unlock()
	}
}

// flushLocked writes what is buffered. Callers hold wmu.
func (w *Writer) flushLocked() {
	w.mu.Lock()
	b := w.buf
	w.buf, w.spare = w.spare[:0], nil
	w.mu.Unlock()
	if len(b) == 0 {
		return
	}
	_, err := w.out.Write(b)
	w.mu.Lock()
	if err != nil && w.err == nil {
		w.err = err
	}
	if cap(b) <= maxBuffered { // keep one buffer of the usual size, not one a burst grew
		w.spare = b
	}
	w.mu.Unlock()
}

// Close writes what is buffered and stops the goroutine; later writes go straight to the output. It returns the
// first error the output gave.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		err := w.err
		w.mu.Unlock()
		return err
	}
	w.closed = true
	close(w.kick)
	w.mu.Unlock()
	<-w.stopped
	w.wmu.Lock()
	w.flushLocked()
	w.wmu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}
