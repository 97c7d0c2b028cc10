package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/store"
)

// serve runs the administration interface of b on a socket in dir and returns the socket's path.
func serve(t *testing.T, dir string, b Backend) string {
	t.Helper()
	path := filepath.Join(dir, "state.db.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(b, nil, testenv.Logger(t))}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return path
}

// TestBackupThroughSocket: a backup taken through the socket of a store in use holds every key registered before
// it, and is a state file that checks; the socket can be opened by its owner only.
func TestBackupThroughSocket(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "state.db"), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	t0 := time.Unix(1_700_000_000, 0)
	for _, k := range []string{"a", "b", "c"} {
		if err := st.PutKey(broker.KeyRecord{Key: k, Domain: "d", FirstSeen: t0, LastSeen: t0}); err != nil {
			t.Fatal(err)
		}
	}
	sock := serve(t, dir, st)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	out := filepath.Join(t.TempDir(), "backup.db")
	n, err := Dial(sock).Backup(context.Background(), out)
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := store.Check(out); err != nil || keys != 3 {
		t.Fatalf("backup of %d bytes: %d keys, %v; want 3 and no error", n, keys, err)
	}
	if _, err := os.Stat(out + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
}

// failing is a Backend whose backup fails after writing written bytes.
type failing struct{ written int }

func (f failing) Backup(w io.Writer) (int64, error) {
	if f.written == 0 {
		return 0, errors.New("disk on fire")
	}
	n, _ := w.Write(make([]byte, f.written))
	return int64(n), errors.New("disk on fire")
}

// TestBackupFailure: a backup that fails before or during the copy leaves no file behind and says why; a copy
// cut short is never taken for a whole one.
func TestBackupFailure(t *testing.T) {
	for _, written := range []int{0, 1 << 20} {
		sock := serve(t, t.TempDir(), failing{written})
		out := filepath.Join(t.TempDir(), "backup.db")
		_, err := Dial(sock).Backup(context.Background(), out)
		if err == nil {
			t.Fatalf("backup failing after %d bytes succeeded", written)
		}
		if written == 0 && !strings.Contains(err.Error(), "disk on fire") {
			t.Errorf("error %v, want the broker's reason", err)
		}
		for _, p := range []string{out, out + ".tmp"} {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s left after a failed backup", p)
			}
		}
	}
}

// TestListen: a stale socket (its broker gone) is replaced, one that answers is refused, and a path longer than a
// socket address holds works.
func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close() // stale: nobody listens
	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	defer ln.Close()
	go http.Serve(ln, http.NotFoundHandler())
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another broker") {
		t.Errorf("second Listen = %v, want refused", err)
	}
	long := filepath.Join(dir, strings.Repeat("d", 60), strings.Repeat("e", 60))
	if err := os.MkdirAll(long, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(long, "state.db"), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sock := serve(t, long, st)
	if _, err := Dial(sock).Backup(context.Background(), filepath.Join(dir, "b.db")); err != nil {
		t.Fatalf("backup through a %d-byte socket path: %v", len(sock), err)
	}
}

// TestListenKeepsOtherFiles: a file at the socket's path that is not a socket (a mistyped broker.admin_socket
// naming the state file, say) or a symlink is not deleted: Listen refuses.
func TestListenKeepsOtherFiles(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "state.db")
	if err := os.WriteFile(file, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{file, link} {
		if ln, err := Listen(path); err == nil {
			ln.Close()
			t.Errorf("Listen(%s) over a file that is not a socket succeeded", path)
		}
		if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket != 0 {
			t.Errorf("%s after Listen: %v, %v; want it left as it was", path, fi, err)
		}
	}
	if b, err := os.ReadFile(file); string(b) != "precious" {
		t.Errorf("file after Listen: %q, %v", b, err)
	}
}

// TestBackupStalledReader: a client that asks for a backup and never reads does not hold the state file's read
// transaction for ever (which would block every remap of the file, and Close): the copy is abandoned once the
// client has taken nothing for backupStall.
func TestBackupStalledReader(t *testing.T) {
	defer func(d time.Duration) { backupStall = d }(backupStall)
	backupStall = 200 * time.Millisecond
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "state.db"), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	var wg sync.WaitGroup
	for g := range 16 { // a state file of some MB, more than the socket's buffers take
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1500 {
				if err := st.PutKey(broker.KeyRecord{Key: fmt.Sprintf("%02d%042d", g, i), Domain: "d", FirstSeen: t0, LastSeen: t0}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	sock := serve(t, dir, st)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /v1/backup HTTP/1.1\r\nHost: wgkex-broker\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil { // the copy has begun
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- st.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close still waits for a backup whose client does not read")
	}
}
