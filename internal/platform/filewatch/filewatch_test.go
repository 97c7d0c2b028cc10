package filewatch

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// run watches paths with a stat fallback too slow to matter, so that the test sees inotify at work, and returns a
// channel that gets a value on every change.
func run(t *testing.T, paths ...string) <-chan struct{} {
	t.Helper()
	w := New(Options{Paths: paths, Interval: time.Hour, Log: testenv.Logger(t)})
	changed := make(chan struct{}, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx, func() { changed <- struct{}{} }); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return changed
}

func wait(t *testing.T, changed <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatalf("no change reported after %s", what)
	}
}

func mustWrite(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBusyDirectory: a file beside the watched one that changes all the time (the broker's write-ahead log) does
// not delay the look at the watched file.
func TestBusyDirectory(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "list.yaml")
	mustWrite(t, f, "a")
	changed := run(t, f)
	stop := make(chan struct{})
	busy := make(chan struct{})
	go func() {
		defer close(busy)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
				os.WriteFile(filepath.Join(dir, "state.wal"), []byte{byte(i)}, 0o644)
			}
		}
	}()
	defer func() { close(stop); <-busy }()
	mustWrite(t, f, "bb")
	wait(t, changed, "writing the file")
	os.Remove(f)
	wait(t, changed, "removing the file")
	mustWrite(t, f, "c")
	wait(t, changed, "creating the file again")
}

// TestSymlinkSwap is what certbot does on renewal: live/cert.pem is a link into archive/, replaced by a link to a
// new file there.
func TestSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	live, archive := filepath.Join(dir, "live"), filepath.Join(dir, "archive")
	os.Mkdir(live, 0o755)
	os.Mkdir(archive, 0o755)
	mustWrite(t, filepath.Join(archive, "cert1.pem"), "one")
	link := filepath.Join(live, "cert.pem")
	if err := os.Symlink("../archive/cert1.pem", link); err != nil {
		t.Fatal(err)
	}
	changed := run(t, link)
	for i, name := range []string{"cert2.pem", "cert3.pem"} {
		mustWrite(t, filepath.Join(archive, name), "same size "+string(rune('a'+i)))
		if err := os.Symlink("../archive/"+name, link+".new"); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(link+".new", link); err != nil {
			t.Fatal(err)
		}
		wait(t, changed, "swapping the link to "+name)
	}
}

// TestStatFallback: without any event (here: a file on a path whose directory appears only later), the periodic
// look finds the change.
func TestStatFallback(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "later", "list.yaml")
	w := New(Options{Paths: []string{f}, Interval: 20 * time.Millisecond, Log: testenv.Logger(t)})
	if w.notify != nil {
		t.Fatal("inotify on a missing directory")
	}
	changed := make(chan struct{}, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx, func() { changed <- struct{}{} })
	os.Mkdir(filepath.Dir(f), 0o755)
	mustWrite(t, f, "x")
	wait(t, changed, "creating the file")
}

// TestPermissionChange: a file made readable (a renewed key written with the wrong mode, then chmod by the
// operator) is a change, though its contents, size and modification time stay: the load that failed on it before
// has to be tried again.
func TestPermissionChange(t *testing.T) {
	f := filepath.Join(t.TempDir(), "key.pem")
	mustWrite(t, f, "key")
	if err := os.Chmod(f, 0o000); err != nil {
		t.Fatal(err)
	}
	changed := run(t, f)
	if err := os.Chmod(f, 0o640); err != nil {
		t.Fatal(err)
	}
	wait(t, changed, "making the file readable")
}
