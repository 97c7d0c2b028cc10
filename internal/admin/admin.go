// Package admin is the broker's administration interface for its operators: HTTP on a Unix socket beside the
// state file, which only the broker's own user can open (mode 0600), so that reaching it is the authentication.
// wgkex-broker's subcommands (backup) are its client.
package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/freifunkMUC/wgkex-go/store"
)

// Backend is what the administration interface needs of the broker.
type Backend interface {
	// Backup writes a consistent copy of the state to w.
	Backup(w io.Writer) (int64, error)
}

// Paths of the interface.
const (
	backupPath = "/v1/backup"
)

// backupStall is how long a backup waits for its client to take more of the copy before it gives up: the copy is one
// read transaction, which holds off every remap of the state file and its Close.
var backupStall = 30 * time.Second

// Handler serves the administration interface.
func Handler(b Backend, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+backupPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		start := time.Now()
		n, err := b.Backup(stallWriter{w, http.NewResponseController(w)})
		if errors.Is(err, store.ErrBackupRunning) {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		if err != nil {
			log.Error("backup failed", "err", err)
			if n == 0 {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			// Part of the copy is out: end the connection without the final chunk, so the client sees a cut.
			panic(http.ErrAbortHandler)
		}
		log.Info("backup written", "bytes", n, "took", time.Since(start).Round(time.Millisecond))
	})
	return mux
}

// stallWriter is the response of a backup, which fails a write that the client has not taken within backupStall.
type stallWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (s stallWriter) Write(p []byte) (int, error) {
	if err := s.rc.SetWriteDeadline(time.Now().Add(backupStall)); err != nil {
		return 0, err
	}
	return s.w.Write(p)
}

// Listen opens the administration socket at path, readable and writable only by this process's user. A socket
// left there by a broker that is gone is replaced; one that answers belongs to a running broker and is refused, and
// so is anything else at path (a file, a symlink), which is left as it is.
func Listen(path string) (net.Listener, error) {
	if c, err := withShortPath(path, func(p string) (net.Conn, error) { return net.DialTimeout("unix", p, time.Second) }); err == nil {
		c.Close()
		return nil, fmt.Errorf("administration socket %s: another broker is listening on it", path)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != os.ModeSocket {
		return nil, fmt.Errorf("administration socket %s: not a socket (mode %v): move it away or set broker.admin_socket",
			path, fi.Mode())
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("administration socket %s: %w", path, err)
	}
	// The socket is made in a directory only this user can enter, given its mode there, and then renamed into
	// place, so that nobody can connect in between (without changing the umask, which is the whole process's).
	dir, err := os.MkdirTemp(filepath.Dir(path), ".admin-")
	if err != nil {
		return nil, fmt.Errorf("administration socket: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := withShortPath(tmp, func(p string) (net.Listener, error) { return net.Listen("unix", p) })
	if err != nil {
		return nil, fmt.Errorf("administration socket: %w", err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // it is unlinked under its final name (unlinking)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("administration socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("administration socket %s: %w", path, err)
	}
	return &unlinking{UnixListener: ul, path: path}, nil
}

// unlinking is the administration socket, which removes its file when it closes.
type unlinking struct {
	*net.UnixListener
	path string
}

func (u *unlinking) Close() error {
	err := u.UnixListener.Close()
	os.Remove(u.path)
	return err
}

// Client talks to a running broker's administration socket.
type Client struct {
	socket string
	http   *http.Client
}

// Dial returns a client of the broker listening on socket.
func Dial(socket string) *Client {
	return &Client{socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return withShortPath(socket, func(p string) (net.Conn, error) { return d.DialContext(ctx, "unix", p) })
		},
	}}}
}

// Backup writes a backup of the running broker's state to the file path: first to path.tmp, which is synced and
// then renamed, so that path is either the old file or a whole new copy. It returns the bytes written.
func (c *Client) Backup(ctx context.Context, path string) (int64, error) {
	resp, err := c.get(ctx, backupPath)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	n, err := io.Copy(f, resp.Body)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return 0, fmt.Errorf("backup to %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return n, nil
}

// get requests path and returns the response of a 200, or an error with what the broker said.
func (c *Client) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://wgkex-broker"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the broker at %s (is it running, and are you its user?): %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("broker at %s: %s: %s", c.socket, resp.Status, b)
	}
	return resp, nil
}

// maxSocketPath is the longest path a Unix socket address holds (sun_path, with its terminating NUL).
const maxSocketPath = 107

// withShortPath calls fn with path, or, where path is too long for a socket address, with a short name for it
// through the open directory (/proc/self/fd/N/name).
func withShortPath[T any](path string, fn func(string) (T, error)) (T, error) {
	if len(path) <= maxSocketPath {
		return fn(path)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		var zero T
		return zero, err
	}
	defer dir.Close()
	return fn(fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), filepath.Base(path)))
}
