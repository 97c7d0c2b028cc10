// Command wgkex-worker runs on every gateway: it takes node keys from the broker over MQTT and makes them WireGuard
// peers with routes and VXLAN FDB entries, and reports the gateway's endpoint, liveness and peer counts.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/worker"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane/kernel"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wgkex-worker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	cfg, err := config.FromArgs("wgkex-worker", args)
	if err != nil {
		return err
	}
	log := cfg.Log.Logger(os.Stderr).With("component", "worker")
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	name, ext := cfg.Worker.Name, cfg.ExternalName
	if name == "" {
		name = host
	}
	if ext == "" {
		ext = host
	}
	dp, err := kernel.Open()
	if err != nil {
		return err
	}
	defer dp.Close()
	a := worker.New(dp, log, worker.Options{
		Name:         name,
		Domains:      cfg.Stripped(),
		ExternalName: ext,
		StaleTimeout: cfg.Cleanup.LegacyStaleTimeout.D(),
		Grace:        cfg.Cleanup.InitialHandshakeGrace.D(),
		Whitelist:    cfg.KeyWhitelist,
	})
	return a.Run(ctx, worker.RunOptions{
		MQTT:            cfg.MQTT,
		MetricsInterval: cfg.Worker.MetricsInterval.D(),
		CleanupInterval: cfg.Cleanup.Interval.D(),
		HealthPort:      cfg.Worker.HealthPort,
	})
}
