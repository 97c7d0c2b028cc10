// Package admin is the broker's administration interface for its operators: HTTP on a Unix socket beside the
// state file, which only the broker's own user can open (mode 0600), so that reaching it is the authentication.
// wgkex-broker's subcommands (backup, keys show|list|revoke) are its client.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/store"
)

// Backend is what the administration interface needs of the broker for backups.
type Backend interface {
	// Backup writes a consistent copy of the state to w.
	Backup(w io.Writer) (int64, error)
}

// Keys is what the administration interface needs of the broker to look up and revoke keys.
type Keys interface {
	// ShowKey returns what the broker knows of key in each domain where it is stored or was revoked.
	ShowKey(key string) ([]broker.KeyInfo, error)
	// ListKeys returns up to limit keys of domain ("": of every domain), the most recently seen first.
	ListKeys(domain string, limit int) ([]Key, error)
	// RevokeKey revokes key in domain ("": wherever it is stored) on behalf of the operator.
	RevokeKey(key, domain string) ([]broker.Revocation, error)
}

// Key is one stored key as `wgkex-broker keys list` shows it.
type Key struct {
	Key       string    `json:"key"`
	Domain    string    `json:"domain"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// Gateway is the gateway API v2 last chose for the node; empty after API v1.
	Gateway string `json:"gateway,omitempty"`
}

// RevokeRequest is the body of POST /v1/keys/revoke.
type RevokeRequest struct {
	Key    string `json:"key"`
	Domain string `json:"domain,omitempty"`
}

// Paths of the interface.
const (
	backupPath = "/v1/backup"
	// keyPath is GET /v1/key?key=KEY: what the broker knows of one key.
	keyPath = "/v1/key"
	// keysPath is GET /v1/keys?domain=D&limit=N: the most recently seen keys.
	keysPath = "/v1/keys"
	// revokePath is POST /v1/keys/revoke with a RevokeRequest.
	revokePath = "/v1/keys/revoke"
)

// defaultListLimit is the number of keys GET /v1/keys returns without a limit; maxListLimit the most it returns
// (one read transaction, one answer held in memory): a backup is the way to all keys.
const (
	defaultListLimit = 100
	maxListLimit     = 100_000
)

// backupStall is how long a backup waits for its client to take more of the copy before it gives up: the copy is one
// read transaction, which holds off every remap of the state file and its Close.
var backupStall = 30 * time.Second

// Handler serves the administration interface: backups from b and, unless keys is nil, the key administration.
func Handler(b Backend, keys Keys, log *slog.Logger) http.Handler {
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
	if keys == nil {
		return mux
	}
	mux.HandleFunc("GET "+keyPath, func(w http.ResponseWriter, r *http.Request) {
		info, err := keys.ShowKey(r.URL.Query().Get("key"))
		reply(w, log, info, err)
	})
	mux.HandleFunc("GET "+keysPath, func(w http.ResponseWriter, r *http.Request) {
		limit := defaultListLimit
		if l := r.URL.Query().Get("limit"); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil || n < 1 || n > maxListLimit {
				http.Error(w, fmt.Sprintf("limit %q is not a number from 1 to %d (wgkex-broker backup copies all keys)",
					l, maxListLimit), http.StatusBadRequest)
				return
			}
			limit = n
		}
		list, err := keys.ListKeys(r.URL.Query().Get("domain"), limit)
		reply(w, log, list, err)
	})
	mux.HandleFunc("POST "+revokePath, func(w http.ResponseWriter, r *http.Request) {
		var req RevokeRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
			http.Error(w, "revocation request: "+err.Error(), http.StatusBadRequest)
			return
		}
		revs, err := keys.RevokeKey(req.Key, req.Domain)
		reply(w, log, revs, err)
	})
	return mux
}

// reply writes v as JSON, or the error: 400 for a bad key or domain, else 500.
func reply(w http.ResponseWriter, log *slog.Logger, v any, err error) {
	switch {
	case errors.Is(err, broker.ErrBadRequest):
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	case err != nil:
		log.Error("administration request failed", "err", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
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

// ShowKey returns what the running broker knows of key.
func (c *Client) ShowKey(ctx context.Context, key string) ([]broker.KeyInfo, error) {
	var out []broker.KeyInfo
	err := c.call(ctx, http.MethodGet, keyPath+"?"+url.Values{"key": {key}}.Encode(), nil, &out)
	return out, err
}

// ListKeys returns up to limit of the most recently seen keys of domain ("": of every domain).
func (c *Client) ListKeys(ctx context.Context, domain string, limit int) ([]Key, error) {
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if domain != "" {
		q.Set("domain", domain)
	}
	var out []Key
	err := c.call(ctx, http.MethodGet, keysPath+"?"+q.Encode(), nil, &out)
	return out, err
}

// RevokeKey revokes key in domain ("": wherever the broker stores it).
func (c *Client) RevokeKey(ctx context.Context, key, domain string) ([]broker.Revocation, error) {
	body, _ := json.Marshal(RevokeRequest{Key: key, Domain: domain})
	var out []broker.Revocation
	err := c.call(ctx, http.MethodPost, revokePath, body, &out)
	return out, err
}

// call sends a request with a JSON body (nil: none) and decodes the JSON answer of a 200 into out.
func (c *Client) call(ctx context.Context, method, path string, body []byte, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("answer of the broker at %s: %w", c.socket, err)
	}
	return nil
}

// get requests path and returns the response of a 200, or an error with what the broker said.
func (c *Client) get(ctx context.Context, path string) (*http.Response, error) {
	return c.do(ctx, http.MethodGet, path, nil)
}

// do sends a request and returns the response of a 200, or an error with what the broker said.
func (c *Client) do(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://wgkex-broker"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the broker at %s (is it running, and are you its user?): %w", c.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("broker at %s: %s: %s", c.socket, resp.Status, bytes.TrimSpace(b))
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
