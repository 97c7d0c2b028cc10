package worker

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// healthServer answers the Gluon nodes' uplink check: HTTP GET on the gateway's link address on wg-{domain}
// (Gluon checks http://[link address%wg]/, port 80, path /). It answers from the gateway's own health: 200 while
// the domain's device is readable, 503 when it is not or while the worker drains for shutdown. The broker's
// reachability plays no part: the tunnels carry traffic without it, and a node that sees the check fail tears
// its tunnel down. A domain whose interface is missing is retried every few seconds. One device read answers a
// domain's checks for healthFresh.
type healthServer struct {
	a        *Agent
	port     int
	draining func() bool
	mu       sync.Mutex
	servers  map[string]*http.Server
	done     chan struct{}
	wg       sync.WaitGroup

	checkMu sync.Mutex // held during a read: requests arriving meanwhile wait for its answer
	checked map[dataplane.Link]healthCheck
}

// healthCheck is the result of the last device read for the health check.
type healthCheck struct {
	at  time.Time
	err error
}

const healthRetry = 5 * time.Second

// healthFresh is how long one device read answers the health checks of a domain. Every node asks once a minute,
// and a read lists every peer under the dataplane's lock: one read per request would keep the lock from the loop.
const healthFresh = 5 * time.Second

func newHealthServer(a *Agent, port int, draining func() bool) *healthServer {
	h := &healthServer{a: a, port: port, draining: draining, servers: map[string]*http.Server{}, done: make(chan struct{})}
	h.wg.Add(1)
	go h.loop()
	return h
}

func (h *healthServer) loop() {
	defer h.wg.Done()
	t := time.NewTicker(healthRetry)
	defer t.Stop()
	for {
		if h.listenAll() {
			return
		}
		select {
		case <-h.done:
			return
		case <-t.C:
		}
	}
}

// listenAll starts a listener for every domain that has none yet and reports whether all have one.
func (h *healthServer) listenAll() bool {
	all := true
	for _, d := range h.a.Domains() {
		h.mu.Lock()
		_, ok := h.servers[d]
		h.mu.Unlock()
		if ok {
			continue
		}
		dev, err := h.a.dp.Device(h.a.link(d))
		if err != nil {
			all = false
			continue
		}
		addr := net.JoinHostPort(dev.LinkAddress+"%"+h.a.link(d).WG, strconv.Itoa(h.port))
		ln, err := h.listen(addr)
		if err != nil {
			h.a.log.Warn("health listener", "domain", d, "address", addr, "err", err)
			all = false
			continue
		}
		link := h.a.link(d)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve(w, link) }), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
		h.mu.Lock()
		h.servers[d] = srv
		h.mu.Unlock()
		h.wg.Add(1)
		go func() { defer h.wg.Done(); _ = srv.Serve(ln) }()
		h.a.log.Info("health check listening", "domain", d, "address", addr)
	}
	return all
}

// listen opens the listener in the dataplane's network namespace when the dataplane can (kernel.Dataplane).
func (h *healthServer) listen(addr string) (net.Listener, error) {
	if l, ok := h.a.dp.(interface {
		Listen(addr string) (net.Listener, error)
	}); ok {
		return l.Listen(addr)
	}
	return net.Listen("tcp", addr)
}

func (h *healthServer) serve(w http.ResponseWriter, link dataplane.Link) {
	w.Header().Set("Content-Type", "text/plain")
	if h.draining() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("shutting down\n"))
		return
	}
	if err := h.deviceErr(link); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("device not readable\n"))
		return
	}
	_, _ = w.Write([]byte("OK\n"))
}

// deviceErr reads link's device, or answers from a read less than healthFresh old.
func (h *healthServer) deviceErr(link dataplane.Link) error {
	h.checkMu.Lock()
	defer h.checkMu.Unlock()
	now := h.a.opts.Now()
	if c, ok := h.checked[link]; ok && !now.Before(c.at) && now.Sub(c.at) < healthFresh {
		return c.err
	}
	_, err := h.a.dp.Device(link)
	if h.checked == nil {
		h.checked = map[dataplane.Link]healthCheck{}
	}
	h.checked[link] = healthCheck{at: now, err: err}
	return err
}

func (h *healthServer) close() {
	close(h.done)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	h.mu.Lock()
	for _, s := range h.servers {
		_ = s.Shutdown(ctx)
	}
	h.mu.Unlock()
	h.wg.Wait()
}
