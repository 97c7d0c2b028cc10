package logbuf

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// countingFile counts the writes that reach a real file and the longest one.
type countingFile struct {
	f       *os.File
	mu      sync.Mutex
	writes  int
	longest int
}

func (c *countingFile) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes++
	c.longest = max(c.longest, len(p))
	c.mu.Unlock()
	return c.f.Write(p)
}

// TestConcurrentLinesKeepOrder: lines from many goroutines all arrive, whole, each goroutine's in its order, in
// fewer writes than lines.
func TestConcurrentLinesKeepOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := &countingFile{f: f}
	w := New(out)
	const writers, lines = 16, 2000
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range lines {
				fmt.Fprintf(w, "writer=%d line=%d %s\n", g, i, strings.Repeat("x", i%50))
			}
		})
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rf, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	next := make([]int, writers)
	n := 0
	sc := bufio.NewScanner(rf)
	for sc.Scan() {
		var g, i int
		if _, err := fmt.Sscanf(sc.Text(), "writer=%d line=%d", &g, &i); err != nil ||
			sc.Text() != fmt.Sprintf("writer=%d line=%d %s", g, i, strings.Repeat("x", i%50)) {
			t.Fatalf("line %d garbled: %q", n, sc.Text())
		}
		if i != next[g] {
			t.Fatalf("writer %d: line %d after line %d", g, i, next[g]-1)
		}
		next[g]++
		n++
	}
	if n != writers*lines {
		t.Fatalf("%d lines written, want %d", n, writers*lines)
	}
	t.Logf("%d lines in %d writes", n, out.writes)
	if out.writes >= n {
		t.Errorf("%d writes for %d lines: nothing batched", out.writes, n)
	}
}

// TestSlowOutputBounded: while nobody reads the pipe the log goes to, the buffer stops at maxBuffered and
// writers wait, instead of the broker's memory growing; once the reader comes back, every line arrives in order.
func TestSlowOutputBounded(t *testing.T) {
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out := &countingFile{f: pw}
	w := New(out)
	const lines = 40000 // 40,000 lines of 100 bytes: 4 MB, four times the bound
	line := strings.Repeat("y", 99) + "\n"
	done := make(chan error, 1)
	go func() {
		for range lines {
			if _, err := io.WriteString(w, line); err != nil {
				done <- err
				return
			}
		}
		done <- w.Close()
		pw.Close()
	}()
	got, err := io.ReadAll(r) // starts reading only now: the pipe's 64 KiB filled long ago
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(got) != lines*len(line) || strings.Count(string(got), line) != lines {
		t.Fatalf("read %d bytes, want %d whole lines", len(got), lines)
	}
	if out.longest > maxBuffered {
		t.Errorf("a write of %d bytes: the buffer outgrew its bound of %d", out.longest, maxBuffered)
	}
}

// TestCloseReportsOutputError: a log that cannot be written is reported by Close, and lines after Close go
// straight to the output.
func TestCloseReportsOutputError(t *testing.T) {
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close() // writes to the pipe fail with EPIPE
	w := New(pw)
	io.WriteString(w, "lost\n")
	if err := w.Close(); err == nil {
		t.Fatal("Close: no error for a pipe without reader")
	}
	pw.Close()

	path := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w = New(f)
	io.WriteString(w, "before\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "after\n"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "before\nafter\n" {
		t.Fatalf("file holds %q", b)
	}
}
