// Package keylist holds the operator's key lists (SPEC §6): a blocklist of keys that may never register, with a
// reason that is only logged, and an allowlist that restricts chosen domains to the keys listed for them. Both are
// YAML files, read at start and again whenever they change; a file that cannot be read or parsed on reload leaves
// the previous list in force. The broker consults the lists through Filter.Refuse on every registration: a load
// of an immutable map through an atomic pointer, no lock.
package keylist

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/platform/filewatch"
)

// Options name the list files. An empty name means no such list.
type Options struct {
	// BlocklistFile is broker.blocklist_file.
	BlocklistFile string
	// AllowlistFile is broker.allowlist_file.
	AllowlistFile string
	// Domains are the configured domains; the allowlist may name no other.
	Domains []string
	// Interval is the period of the stat fallback to file change notification; 0 means 10 seconds.
	Interval time.Duration
}

// Filter is the lists in force. It is safe for concurrent use.
type Filter struct {
	opts     Options
	log      *slog.Logger
	watchers []listWatcher
	block    atomic.Pointer[Blocklist]
	allow    atomic.Pointer[Allowlist] // nil: no allowlist
	blocked  func(keys []string)       // OnBlocked
}

// OnBlocked sets fn to be called, on Run's goroutine, with the keys a reload of the blocklist newly blocks, so that
// the broker revokes them where they are stored. Call it before Run.
func (f *Filter) OnBlocked(fn func(keys []string)) { f.blocked = fn }

// Blocked returns every key the blocklist in force blocks, sorted.
func (f *Filter) Blocked() []string {
	bl := *f.block.Load()
	out := make([]string, 0, len(bl))
	for k := range bl {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Open reads the configured lists. A file that is missing or invalid at start is an error: a typo in a path must
// not silently leave the broker without its lists.
func Open(opts Options, log *slog.Logger) (*Filter, error) {
	f := &Filter{opts: opts, log: log}
	f.block.Store(&Blocklist{})
	for _, l := range []listWatcher{
		{path: opts.BlocklistFile, load: f.loadBlocklist, name: "blocklist"},
		{path: opts.AllowlistFile, load: f.loadAllowlist, name: "allowlist"},
	} {
		if l.path == "" {
			continue
		}
		l.w = filewatch.New(filewatch.Options{Paths: []string{l.path}, Interval: opts.Interval, Log: log})
		f.watchers = append(f.watchers, l)
		if err := l.load(); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

// listWatcher reloads one list.
type listWatcher struct {
	path, name string
	load       func() error
	w          *filewatch.Watcher
}

// Refuse reports whether key may not register for domain, and why. It implements broker.KeyFilter.
func (f *Filter) Refuse(domain, key string) (reason string, refused bool) {
	if r, ok := (*f.block.Load())[key]; ok {
		if r == "" {
			return "is on the blocklist", true
		}
		return "is on the blocklist: " + r, true
	}
	if al := f.allow.Load(); al != nil {
		if keys, restricted := (*al)[domain]; restricted {
			if _, ok := keys[key]; !ok {
				return "is not on the allowlist of " + domain, true
			}
		}
	}
	return "", false
}

// Run reloads each list when its file changes, until ctx ends. Call it once.
func (f *Filter) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range f.watchers {
		wg.Go(func() {
			l.w.Run(ctx, func() {
				if err := l.load(); err != nil {
					f.log.Warn(l.name+" not reloaded, the previous one stays in force", "err", err)
				}
			})
		})
	}
	wg.Wait()
}

// Close releases the file watchers of a Filter that is not Run.
func (f *Filter) Close() {
	for _, l := range f.watchers {
		l.w.Close()
	}
}

func (f *Filter) loadBlocklist() error {
	data, err := os.ReadFile(f.opts.BlocklistFile)
	if err != nil {
		return fmt.Errorf("read blocklist: %w", err)
	}
	bl, err := ParseBlocklist(data)
	if err != nil {
		return fmt.Errorf("blocklist %s: %w", f.opts.BlocklistFile, err)
	}
	old := *f.block.Swap(&bl)
	f.log.Info("blocklist loaded", "file", f.opts.BlocklistFile, "keys", len(bl))
	var added []string
	for k := range bl {
		if _, ok := old[k]; !ok {
			added = append(added, k)
		}
	}
	if len(added) > 0 && f.blocked != nil {
		sort.Strings(added)
		f.blocked(added)
	}
	return nil
}

func (f *Filter) loadAllowlist() error {
	data, err := os.ReadFile(f.opts.AllowlistFile)
	if err != nil {
		return fmt.Errorf("read allowlist: %w", err)
	}
	al, err := ParseAllowlist(data, f.opts.Domains)
	if err != nil {
		return fmt.Errorf("allowlist %s: %w", f.opts.AllowlistFile, err)
	}
	f.allow.Store(&al)
	n := 0
	for _, keys := range al {
		n += len(keys)
	}
	f.log.Info("allowlist loaded", "file", f.opts.AllowlistFile, "domains", len(al), "keys", n)
	return nil
}
