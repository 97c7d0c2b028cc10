// Command wgkex-worker runs on every gateway: it takes node keys from the broker over MQTT and makes them WireGuard
// peers with routes and VXLAN FDB entries, and reports the gateway's endpoint, liveness and peer counts.
//
// `wgkex-worker vni DOMAIN_SEED` prints the VXLAN id Gluon nodes derive from a domain seed.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/freifunkMUC/wgkex-go/internal/app/cli"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/worker"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane/kernel"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "wgkex-worker:", err)
		os.Exit(1)
	}
}

// run runs the command args name.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	p := cli.Program{
		Name:    "wgkex-worker",
		Summary: "the wgkex worker of a gateway: node keys from MQTT become WireGuard peers, routes and VXLAN FDB entries",
		Commands: []cli.Command{
			{Args: "[--config FILE]", Summary: "run until SIGTERM (needs CAP_NET_ADMIN)",
				Run: func(ctx context.Context, args []string) error { return serve(ctx, args) }},
			{Name: "vni", Args: "DOMAIN_SEED", Summary: "print the VXLAN id Gluon nodes derive from a domain seed",
				Run: func(_ context.Context, args []string) error {
					if len(args) != 1 {
						return errors.New("usage: wgkex-worker vni DOMAIN_SEED")
					}
					fmt.Fprintf(stdout, "%d\n", dataplane.VNI(args[0]))
					return nil
				}},
		},
	}
	return p.Run(ctx, args, stdout)
}

// serve runs the worker until ctx ends.
func serve(ctx context.Context, args []string) error {
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
	var reg *prometheus.Registry
	if cfg.Worker.MetricsListen != "" {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	dp, err := kernel.Open()
	if err != nil {
		return err
	}
	defer dp.Close()
	opts := worker.Options{
		Name:         name,
		Domains:      cfg.Stripped(),
		ExternalName: ext,
		StaleTimeout: cfg.Cleanup.LegacyStaleTimeout.D(),
		Grace:        cfg.Cleanup.InitialHandshakeGrace.D(),
		Whitelist:    cfg.KeyWhitelist,
	}
	if reg != nil {
		opts.Metrics = reg
	}
	a, err := worker.New(dp, log, opts)
	if err != nil {
		return err
	}
	if reg != nil {
		_, stopMetrics, err := serveMetrics(cfg.Worker.MetricsListen, reg, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	return a.Run(ctx, worker.RunOptions{
		MQTT: worker.MQTT{
			BrokerURL: cfg.MQTT.BrokerURL, BrokerPort: cfg.MQTT.BrokerPort,
			Username: cfg.MQTT.Username, Password: cfg.MQTT.Password,
			Keepalive: cfg.MQTT.Keepalive, TLS: cfg.MQTT.TLS,
			CAFile: cfg.MQTT.CAFile, ServerName: cfg.MQTT.ServerName,
			CertFile: cfg.MQTT.CertFile, KeyFile: cfg.MQTT.KeyFile,
		},
		MetricsInterval: cfg.Worker.MetricsInterval.D(),
		CleanupInterval: cfg.Cleanup.Interval.D(),
		HealthPort:      cfg.Worker.HealthPort,
	})
}

// serveMetrics serves GET /metrics from g on addr (worker.metrics_listen) with net/http, and returns the function
// that stops it and the address it listens on.
func serveMetrics(addr string, g prometheus.Gatherer, log *slog.Logger) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("worker.metrics_listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener", "err", err)
		}
	}()
	log.Info("metrics listening", "address", ln.Addr().String())
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served // the stop function owns the Serve goroutine
	}, nil
}
