// Command wgkex-broker is the wgkex broker: the REST key exchange for Freifunk nodes, an embedded MQTT server for
// the gateways' workers, and the state in a bbolt file.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/freifunkMUC/wgkex-go/internal/brokerd"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/store"
)

func main() {
	// The broker's live heap is small while registrations allocate briskly: collecting less often halves its p99
	// latency under load (BENCHMARKS.md). GOGC in the environment still decides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "wgkex-broker:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends, logging to logOut.
func run(ctx context.Context, args []string, logOut io.Writer) error {
	if len(args) > 0 && args[0] == "compact" {
		return compact(args[1:], os.Stdout)
	}
	cfg, err := config.FromArgs("wgkex-broker", args)
	if err != nil {
		return err
	}
	return brokerd.Run(ctx, cfg, cfg.Log.Logger(logOut))
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
