// Command wgkex-broker is the wgkex broker: the REST key exchange for Freifunk nodes, an embedded MQTT server for
// the gateways' workers, and the state in a bbolt file.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/freifunkMUC/wgkex-go/internal/brokerd"
	"github.com/freifunkMUC/wgkex-go/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wgkex-broker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("wgkex-broker", flag.ContinueOnError)
	path := fs.String("config", "", "configuration file (default $"+config.EnvFile+", else "+config.DefaultPath+")")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, err := config.Load(config.Path(*path, os.Getenv), os.Environ())
	if err != nil {
		return err
	}
	return brokerd.Run(ctx, cfg, cfg.Log.Logger(os.Stderr))
}
