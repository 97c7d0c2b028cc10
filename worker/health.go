package worker

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// healthServer answers the Gluon nodes' uplink check: HTTP GET on the gateway's link address on wg-{domain}
// (Gluon checks http://[link address%wg]/, port 80, path /). It answers from the gateway's own health: 200 while
// the domain's device is readable, 503 when it is not or while the worker drains for shutdown. The broker's
// reachability plays no part: the tunnels carry traffic without them, and a node that sees the check fail tears
// its tunnel down. Every few seconds each domain's listener is made to match its interface: started once the
// interface exists, and started again when the interface was re-created or its link address changed (a listener
// stays bound to the interface it was opened on). One device read answers a domain's checks for healthFresh.
type healthServer struct {
	a        *Agent
	port     int
	draining func() bool
	mu       sync.Mutex
	servers  map[string]listening
	done     chan struct{}
	wg       sync.WaitGroup

	checkMu sync.Mutex // held during a read: requests arriving meanwhile wait for its answer
	checked map[dataplane.Link]healthCheck
}

// listening is a domain's health listener and the interface it is bound to.
type listening struct {
	srv   *http.Server
	index int
	addr  string
}

// healthCheck is the result of the last device read for the health check.
type healthCheck struct {
	at    time.Time
	index int
	addr  string
	err   error
}

const healthRetry = 5 * time.Second

// healthFresh is how long one device read answers the health checks of a domain. Every node asks once a minute,
// and a read lists every peer under the dataplane's lock: one read per request would keep the lock from the loop.
const healthFresh = 5 * time.Second

func newHealthServer(a *Agent, port int, draining func() bool) *healthServer {
	h := &healthServer{a: a, port: port, draining: draining, servers: map[string]listening{}, done: make(chan struct{})}
	h.wg.Add(1)
	go h.loop()
	return h
}

func (h *healthServer) loop() {
	defer h.wg.Done()
	h.listenAll()
	every(healthRetry, h.done, h.listenAll)
}

// listenAll starts a listener for every domain whose interface exists and has none bound to its current index and
// link address. An interface that cannot be read keeps its listener: the next good read decides.
func (h *healthServer) listenAll() {
	for _, d := range h.a.Domains() {
		link := h.a.link(d)
		dev, err := h.a.dp.Interface(link) // not check: that lists every peer, and this runs every healthRetry
		if err != nil {
			continue
		}
		c := healthCheck{index: dev.Index, addr: dev.LinkAddress}
		h.mu.Lock()
		old, ok := h.servers[d]
		h.mu.Unlock()
		if ok && old.index == c.index && old.addr == c.addr {
			continue
		}
		if ok {
			h.a.log.Info("health check interface changed, listening again", "domain", d)
			_ = old.srv.Close()
		}
		// The zone by index: Go caches interface names for a minute, so a re-created interface's name would still
		// resolve to the old, gone index.
		zone := link.WG
		if c.index > 0 {
			zone = strconv.Itoa(c.index)
		}
		addr := net.JoinHostPort(c.addr+"%"+zone, strconv.Itoa(h.port))
		ln, err := h.listen(addr)
		if err != nil {
			h.a.log.Warn("health listener", "domain", d, "address", addr, "err", err)
			h.mu.Lock()
			delete(h.servers, d)
			h.mu.Unlock()
			continue
		}
		ln = netutil.LimitListener(ln, healthMaxConns)
		srv := healthHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.serve(w, link) }), healthIdle)
		h.mu.Lock()
		select {
		case <-h.done: // close has shut the servers down already: this one would serve on, unwaited for
			h.mu.Unlock()
			ln.Close()
			return
		default:
		}
		h.servers[d] = listening{srv: srv, index: c.index, addr: c.addr}
		h.wg.Add(1)
		h.mu.Unlock()
		go func() { defer h.wg.Done(); _ = srv.Serve(ln) }()
		h.a.log.Info("health check listening", "domain", d, "interface", link.WG, "address", addr)
	}
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
	if c := h.check(link); c.err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("device not readable\n"))
		return
	}
	_, _ = w.Write([]byte("OK\n"))
}

// healthMaxConns bounds a domain's open health check connections; more wait in the listen queue. Every node asks
// once a minute and is answered at once, so even 20,000 nodes keep a handful open at a time.
const healthMaxConns = 256

// healthIdle is how long a health check's connection may stay open between requests.
const healthIdle = 30 * time.Second

// healthHTTP is the health listener's HTTP server. Every node on the link can connect, so each connection ends
// within seconds, idle (after idle) or slow, whatever it sends: without these timeouts a keep-alive connection
// left open would be held for ever.
func healthHTTP(h http.Handler, idle time.Duration) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second,
		WriteTimeout: 5 * time.Second, IdleTimeout: idle, MaxHeaderBytes: 4 << 10}
}

// check reads link's device, or answers from a read less than healthFresh old.
func (h *healthServer) check(link dataplane.Link) healthCheck {
	h.checkMu.Lock()
	defer h.checkMu.Unlock()
	now := h.a.opts.Now()
	if c, ok := h.checked[link]; ok && !now.Before(c.at) && now.Sub(c.at) < healthFresh {
		return c
	}
	dev, err := h.a.dp.Device(link)
	if h.checked == nil {
		h.checked = map[dataplane.Link]healthCheck{}
	}
	c := healthCheck{at: now, index: dev.Index, addr: dev.LinkAddress, err: err}
	h.checked[link] = c
	return c
}

func (h *healthServer) close() {
	close(h.done)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	h.mu.Lock()
	for _, l := range h.servers {
		_ = l.srv.Shutdown(ctx)
	}
	h.mu.Unlock()
	h.wg.Wait()
}
