// Package filewatch tells when files change: inotify (fsnotify) on their directories for a prompt answer, and a
// periodic stat as the fallback for what inotify misses (network file systems, a watch that could not be set up).
// Watching the directory rather than the file catches editors that replace the file and certbot, which swaps the
// symbolic links in live/ to new files in archive/.
package filewatch

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// settle is how long the watcher waits after an inotify event before it looks, so that a file written in several
// steps (truncate, write, rename) is read once it is complete rather than half-written.
const settle = 100 * time.Millisecond

// Options configure a Watcher.
type Options struct {
	// Paths are the files to watch. Symbolic links are followed.
	Paths []string
	// Interval is the period of the stat fallback; 0 means 10 seconds.
	Interval time.Duration
	// Log receives a warning when inotify cannot be used.
	Log *slog.Logger
}

// Watcher watches files. New takes the first look; Run reports every change after it.
type Watcher struct {
	opts   Options
	last   []fileStat
	notify *fsnotify.Watcher // nil: stat only
	// targets are the files the paths' symbolic links pointed to at the start.
	targets map[string]bool
}

// New looks at the files and sets up change notification. Take the look before reading the files, so that a
// change while they are read is seen as one. Call Run to watch and to release the watcher.
func New(opts Options) *Watcher {
	if opts.Interval <= 0 {
		opts.Interval = 10 * time.Second
	}
	w := &Watcher{opts: opts, targets: map[string]bool{}}
	for _, p := range opts.Paths {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			w.targets[filepath.Clean(real)] = true
		}
	}
	n, err := watch(opts.Paths)
	if err != nil {
		opts.Log.Warn("file change notification unavailable, checking periodically", "interval", opts.Interval, "err", err)
	} else {
		w.notify = n
	}
	w.last = stats(opts.Paths)
	return w
}

// Run calls onChange whenever the size, modification time, inode, mode, owner or existence of one of the files
// differs from what it was at the previous look, until ctx ends. onChange runs on Run's goroutine, one call at a time.
func (w *Watcher) Run(ctx context.Context, onChange func()) {
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w.notify != nil {
		defer w.notify.Close()
		events, errs = w.notify.Events, w.notify.Errors
	}
	tick := time.NewTicker(w.opts.Interval)
	defer tick.Stop()
	settleTimer := time.NewTimer(settle)
	settleTimer.Stop()
	pending := false // a look is scheduled; later events do not push it back (a busy directory would starve it)
	look := func() {
		if now := stats(w.opts.Paths); !slices.Equal(now, w.last) {
			w.last = now
			onChange()
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if !pending && w.concerns(ev.Name) {
				settleTimer.Reset(settle)
				pending = true
			}
		case err := <-errs:
			w.opts.Log.Warn("file change notification failed", "err", err)
		case <-settleTimer.C:
			pending = false
			look()
		case <-tick.C:
			look()
		}
	}
}

// concerns reports whether an event on name may change one of the files: the file itself, or where its symbolic
// link pointed when the watch began (certbot changes the link, then the event names the link).
func (w *Watcher) concerns(name string) bool {
	name = filepath.Clean(name)
	for _, p := range w.opts.Paths {
		if filepath.Clean(p) == name {
			return true
		}
	}
	return w.targets[name]
}

// Close releases the change notification of a Watcher that is not Run.
func (w *Watcher) Close() {
	if w.notify != nil {
		w.notify.Close()
	}
}

// watch sets up inotify on the directory of every path.
func watch(paths []string) (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, p := range paths {
		dir := filepath.Dir(p)
		if seen[dir] {
			continue
		}
		seen[dir] = true
		if err := w.Add(dir); err != nil {
			w.Close()
			return nil, err
		}
		// certbot's live/ links point into another directory: watch where the file really is too.
		if real, err := filepath.EvalSymlinks(p); err == nil && !seen[filepath.Dir(real)] {
			seen[filepath.Dir(real)] = true
			if err := w.Add(filepath.Dir(real)); err != nil {
				w.Close()
				return nil, err
			}
		}
	}
	return w, nil
}

// fileStat is what tells one version of a file from the next; the zero value stands for a file that cannot be
// read. Its mode and owner count too: a file made readable is a change, as a load that failed on it can now work.
type fileStat struct {
	exists     bool
	size       int64
	mtime      int64
	dev, inode uint64
	mode       os.FileMode
	uid, gid   uint32
}

func stats(paths []string) []fileStat {
	s := make([]fileStat, len(paths))
	for i, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		s[i] = fileStat{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano(), mode: fi.Mode()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			s[i].dev, s[i].inode, s[i].uid, s[i].gid = uint64(st.Dev), st.Ino, st.Uid, st.Gid
		}
	}
	return s
}
