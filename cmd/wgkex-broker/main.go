// Command wgkex-broker is the wgkex broker: the REST key exchange for Freifunk nodes, an embedded MQTT server for
// the gateways' workers, and the state in a bbolt file.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/app/admin"
	"github.com/freifunkMUC/wgkex-go/internal/app/brokerd"
	"github.com/freifunkMUC/wgkex-go/internal/app/cli"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/platform/logbuf"
	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"
	"github.com/freifunkMUC/wgkex-go/store"
)

// defaultMemoryLimit is the Go runtime's soft memory limit unless GOMEMLIMIT is set.
const defaultMemoryLimit = 64 << 20

func main() {
	// The broker's live heap is small while registrations allocate briskly: collecting less often halves its p99
	// latency under load (BENCHMARKS.md). GOGC in the environment still decides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	// With GC percent 400 the heap grows to five times the live heap, which under full load (registrations
	// waiting in the write-ahead log to be merged) is 15 – 40 MB: a soft limit makes the collector work harder
	// only near it, so that the broker stays under 150 MB of RSS with 1 M keys stored (BENCHMARKS.md).
	// GOMEMLIMIT in the environment still decides (GOMEMLIMIT=off: no limit).
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Log lines are batched into fewer writes (a line a registration under load); what is buffered is written
	// before the process exits, except on a crash, which loses at most the lines of the last instant.
	logOut := logbuf.New(os.Stderr)
	err := run(ctx, os.Args[1:], logOut)
	logOut.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "wgkex-broker:", err)
		os.Exit(1)
	}
}

// program is wgkex-broker's command line: serving, and the subcommands that do one job.
func program(logOut io.Writer) cli.Program {
	return cli.Program{
		Name:    "wgkex-broker",
		Summary: "the wgkex broker: key exchange for Freifunk nodes, MQTT for the gateways, state in a bbolt file",
		Commands: []cli.Command{
			{Args: "[--config FILE]", Summary: "serve the REST API and MQTT until SIGTERM; SIGHUP reloads the configuration",
				Run: func(ctx context.Context, args []string) error { return serve(ctx, args, logOut) }},
			{Name: "backup", Args: "[--config FILE] BACKUP_FILE", Summary: "write a checked copy of the running broker's state (as the broker's user)",
				Run: func(ctx context.Context, args []string) error { return backup(ctx, args, os.Stdout) }},
			{Name: "restore", Args: "[--config FILE] [--force] BACKUP_FILE", Summary: "put a backup in place of the stopped broker's state, with the log written since it",
				Run: func(_ context.Context, args []string) error { return restore(args, os.Stdout) }},
			{Name: "check-config", Args: "[--config FILE]", Summary: "print the configuration in effect (secrets masked), its warnings and problems",
				Run: func(_ context.Context, args []string) error { return checkConfig(args, os.Stdout) }},
			{Name: "keys", Args: "show KEY | list [--domain D] [--limit N] | revoke KEY [--domain D] [--config FILE]",
				Summary: "look up, list or revoke keys of the running broker (as the broker's user)",
				Run:     func(ctx context.Context, args []string) error { return keysCommand(ctx, args, os.Stdout) }},
			{Name: "compact", Args: "[--config FILE]", Summary: "shrink the stopped broker's state file",
				Run: func(_ context.Context, args []string) error { return compact(args, os.Stdout) }},
			{Name: "hash-password", Args: "[--cost N] < PASSWORD", Summary: "print the bcrypt hash of the password on standard input",
				Run: func(_ context.Context, args []string) error { return hashPassword(args, os.Stdin, os.Stdout) }},
		},
	}
}

// run runs the command args name, logging to logOut.
func run(ctx context.Context, args []string, logOut io.Writer) error {
	return program(logOut).Run(ctx, args, os.Stdout)
}

// serve serves until ctx ends, re-reading the configuration on SIGHUP.
func serve(ctx context.Context, args []string, logOut io.Writer) error {
	cfg, err := config.FromArgs("wgkex-broker", args)
	if err != nil {
		return err
	}
	if addr := os.Getenv("WGKEX_PPROF_LISTEN"); addr != "" {
		stop, err := servePprof(addr)
		if err != nil {
			return err
		}
		defer stop()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return brokerd.Run(ctx, cfg, cfg.Log.Logger(logOut), brokerd.Reloads{
		Signals: hup,
		Load:    func() (*config.Config, error) { return config.FromArgs("wgkex-broker", args) },
	})
}

// checkConfig is `wgkex-broker check-config [--config FILE]`: the configuration as the broker would run it, with
// the file and environment applied and secrets masked, then its warnings; it fails on anything that would stop
// the broker.
func checkConfig(args []string, out io.Writer) error {
	cfg, err := config.FromArgs("wgkex-broker check-config", args)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "# the configuration in effect (file, environment, defaults; secrets masked)")
	for _, l := range cfg.Effective() {
		fmt.Fprintln(out, l)
	}
	if w := cfg.BrokerWarnings(); len(w) > 0 {
		fmt.Fprintln(out, "# warnings")
		for _, l := range w {
			fmt.Fprintln(out, "warning: "+l)
		}
	}
	if p := cfg.BrokerProblems(); len(p) > 0 {
		return &config.Error{Problems: p}
	}
	fmt.Fprintln(out, "# the broker would start with this configuration")
	return nil
}

// compact is `wgkex-broker compact [--config FILE]`: it shrinks the stopped broker's state file.
func compact(args []string, out io.Writer) error {
	cfg, err := config.FromArgs("wgkex-broker compact", args)
	if err != nil {
		return err
	}
	before, after, err := store.Compact(cfg.Broker.StateFile)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: %d bytes, now %d\n", cfg.Broker.StateFile, before, after)
	return nil
}

// backup is `wgkex-broker backup [--config FILE] BACKUP`: the running broker writes a consistent copy of its state
// to BACKUP through its administration socket, and the copy is checked page by page.
func backup(ctx context.Context, args []string, out io.Writer) error {
	cfg, path, err := fileCommand("backup", args)
	if err != nil {
		return err
	}
	n, err := admin.Dial(cfg.Broker.AdminSocketPath()).Backup(ctx, path)
	if err != nil {
		return err
	}
	keys, err := store.Check(path)
	if err != nil {
		return fmt.Errorf("backup written to %s but it does not check: %w", path, err)
	}
	fmt.Fprintf(out, "%s: %d bytes, %d keys, checked\n", path, n, keys)
	return nil
}

// restore is `wgkex-broker restore [--config FILE] [--force] BACKUP`: with the broker stopped, it puts BACKUP in
// place of the state file (kept aside) and the write-ahead log archived since the backup back beside it. --force
// restores a backup older than the archive reaches.
func restore(args []string, out io.Writer) error {
	force := slices.Contains(args, "--force")
	args = slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "--force" })
	cfg, path, err := fileCommand("restore", args)
	if err != nil {
		return err
	}
	r, err := store.Restore(path, cfg.Broker.StateFile, force)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s restored from %s: %d keys, %d write-ahead log segments since the backup to merge at the next start\n",
		cfg.Broker.StateFile, path, r.Keys, r.Segments)
	if r.Previous != "" {
		fmt.Fprintf(out, "the state file it replaced is kept as %s\n", r.Previous)
	}
	return nil
}

// fileCommand reads the arguments of `wgkex-broker NAME [--config FILE] FILE`.
func fileCommand(name string, args []string) (*config.Config, string, error) {
	if len(args) == 0 || strings.HasPrefix(args[len(args)-1], "-") {
		return nil, "", fmt.Errorf("usage: wgkex-broker %s [--config FILE] BACKUP_FILE", name)
	}
	cfg, err := config.FromArgs("wgkex-broker "+name, args[:len(args)-1])
	return cfg, args[len(args)-1], err
}

// hashPassword reads a password from the first line of in (not from the command line, where other users could
// see it) and prints its bcrypt hash for workers.<name>.password_hash or broker.mqtt_monitors.<name>.
func hashPassword(args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("wgkex-broker hash-password", flag.ContinueOnError)
	cost := fs.Int("cost", passwd.DefaultCost, "bcrypt cost")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("hash-password reads the password from standard input, not from arguments")
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read password: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return errors.New("empty password on standard input")
	}
	h, err := passwd.Hash([]byte(pw), *cost)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, h)
	return err
}

// servePprof serves Go's profiler (net/http/pprof) on addr, a loopback address only: profiles show what the broker
// does, and CPU profiles cost it while they run. For measuring (README "Profiling"), not for production.
func servePprof(addr string) (stop func(), err error) {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("WGKEX_PPROF_LISTEN=%q: a loopback address and port, e.g. 127.0.0.1:6060", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("WGKEX_PPROF_LISTEN: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	return func() { srv.Close(); <-done }, nil
}
