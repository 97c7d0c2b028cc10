package admin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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
	srv := &http.Server{Handler: Handler(b, testenv.Logger(t))}
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
	if err := os.WriteFile(path, nil, 0o600); err != nil { // stale: nobody listens
		t.Fatal(err)
	}
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
