// Package web serves the broker's REST API (byte-compatible with the reference broker) and its status page with
// Echo, over HTTP and optionally HTTPS, with a rate limit per client address on the key exchanges. Errors become
// JSON bodies in one place, the error handler; only the refusals net/http writes before any handler runs are
// rewritten on the connection (Listener).
package web

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// Messages of the reference broker's error bodies (SPEC §1.4).
const (
	msgGeneric   = "An internal error has occurred. Please try again later."
	msgNoGateway = "no gateway online for this domain, please check the domain value and try again later"
	msgNoData    = "could not get gateway data"
)

// MaxBody is the largest request body accepted; a registration is about 100 bytes.
const MaxBody = "16K"

// Options configure the REST API beyond the broker it serves.
type Options struct {
	// TrustedProxies are the peers whose X-Forwarded-For and X-Real-IP name the client.
	TrustedProxies []netip.Prefix
	// RateLimit is the key exchanges per second one client address may sustain; 0 disables the limit.
	RateLimit int
	// RateBurst is how many key exchanges one client address may make at once.
	RateBurst int
	// RateLimitClients bounds the client addresses the limiter tracks.
	RateLimitClients int
	// LogNodeAddresses names the client's address in the log lines of refused requests (broker.log_node_addresses);
	// without it they name none: a node's address is the operator's to log, not the default.
	LogNodeAddresses bool
}

// Server is the HTTP side of the broker.
type Server struct {
	b     *broker.Broker
	e     *echo.Echo
	log   *slog.Logger
	limit *limiter // nil: no rate limit
	bufs  sync.Pool
	// logNodes: name clients' addresses in log lines (Options.LogNodeAddresses).
	logNodes bool

	dash dashboard // the status page (status.go)
}

// New builds the router.
func New(b *broker.Broker, log *slog.Logger, opts Options) *Server {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	s := &Server{b: b, e: e, log: log, bufs: sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }},
		logNodes: opts.LogNodeAddresses}
	s.dash.passwords = passwd.New(1, nil)
	if opts.RateLimit > 0 {
		s.limit = newLimiter(opts.RateLimit, opts.RateBurst, opts.RateLimitClients, log)
	}
	e.IPExtractor = clientIP(opts.TrustedProxies)
	e.HTTPErrorHandler = s.handleError
	e.Pre(s.refuseAmbiguousLength)
	e.Use(middleware.BodyLimit(MaxBody))
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisableStackAll: true, LogLevel: 0}))
	s.routes()
	return s
}

// routes registers every path. Every GET route answers HEAD too (Handler).
func (s *Server) routes() {
	s.statusRoutes()
	s.e.POST("/api/v1/wg/key/exchange", s.exchangeV1, s.rateLimit)
	s.e.POST("/api/v2/wg/key/exchange", s.exchangeV2, s.rateLimit)
	s.e.GET("/api/v1/locations", s.locations)
}

// Handler returns the router. Like Flask, it answers HEAD on every GET route: the request is routed as GET, and
// net/http, which still sees HEAD, sends the headers without the body.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			r = r.WithContext(r.Context())
			r.Method = http.MethodGet
		}
		s.e.ServeHTTP(w, r)
	})
}

// HTTPServer returns an http.Server for the router on addr, with timeouts fit for the open internet. Serve it on
// Listener(ln) or TLSListener(ln, cert), so that every error answer is JSON.
func (s *Server) HTTPServer(addr string) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ConnContext:       withConn,
		// "OPTIONS *" goes to the router too, where refuseAmbiguousLength sees it; net/http's own answer (200,
		// connection kept) would serve what is pipelined behind an ambiguous one.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// errRateLimited is answered with 429 and Retry-After.
var errRateLimited = echo.NewHTTPError(http.StatusTooManyRequests)

// errAmbiguousLength is answered with 400 and "Connection: close".
var errAmbiguousLength = errors.New("both Content-Length and Transfer-Encoding")

// refuseAmbiguousLength refuses a request that came with both Content-Length and Transfer-Encoding (net/http
// reads its body by Transfer-Encoding and drops Content-Length, so the connection's framing tells): a proxy in
// front that reads the other length would take part of the body for a request of its own, which this server
// would answer. The answer closes the connection, so nothing pipelined behind the request is served. net/http
// drops an HTTP/1.0 request's Transfer-Encoding without a trace and reads it by Content-Length, so such a request
// is refused when any section read on its connection had both.
func (s *Server) refuseAmbiguousLength(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if r := c.Request(); (len(r.TransferEncoding) > 0 || !r.ProtoAtLeast(1, 1)) && ambiguousLength(r) {
			return errAmbiguousLength
		}
		return next(c)
	}
}

// rateLimit refuses a client address that exceeds its token bucket.
func (s *Server) rateLimit(next echo.HandlerFunc) echo.HandlerFunc {
	if s.limit == nil {
		return next
	}
	return func(c echo.Context) error {
		ip := c.RealIP()
		a, err := netip.ParseAddr(ip)
		if err != nil { // not a TCP peer (a test's recorder): nothing to limit by
			return next(c)
		}
		if ok, wait := s.limit.allow(a); !ok {
			c.Response().Header().Set("Retry-After", strconv.Itoa(retryAfter(wait)))
			s.log.Debug("rate limited", "remote", s.remote(c), "path", c.Path())
			return errRateLimited
		}
		return next(c)
	}
}

// bodies recycles request body buffers: registrations are small and many.
var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// utf8BOM may precede the body: Flask's JSON parser (Python's json.loads on bytes) skips it.
const utf8BOM = "\xef\xbb\xbf"

func (s *Server) request(c echo.Context) (broker.Request, error) {
	buf := bodies.Get().(*bytes.Buffer)
	defer bodies.Put(buf)
	buf.Reset()
	if _, err := buf.ReadFrom(c.Request().Body); err != nil {
		var he *echo.HTTPError
		if errors.As(err, &he) { // 413 from the body limit
			return broker.Request{}, err
		}
		// A malformed chunk, a body cut short or too slow: the client's fault, like net/http's own 400s.
		return broker.Request{}, echo.ErrBadRequest.WithInternal(fmt.Errorf("read body: %w", err))
	}
	// Read to its end, so the body can be closed: net/http then skips its discarding read after the handler.
	_ = c.Request().Body.Close()
	body := buf.Bytes()
	if len(body) >= len(utf8BOM) && string(body[:len(utf8BOM)]) == utf8BOM {
		body = body[len(utf8BOM):]
	}
	r, err := broker.ParseRequest(body)
	r.Node = c.RealIP()
	return r, err
}

func (s *Server) exchangeV1(c echo.Context) error {
	r, err := s.request(c)
	if err != nil {
		return s.b.Malformed(broker.APIv1, err)
	}
	if err := s.b.ExchangeV1(r); err != nil {
		return err
	}
	return s.write(c, http.StatusOK, func(b []byte) []byte { return appendMessage(b, "OK") })
}

func (s *Server) exchangeV2(c echo.Context) error {
	r, err := s.request(c)
	if err != nil {
		return s.b.Malformed(broker.APIv2, err)
	}
	d, err := s.b.ExchangeV2(r)
	if err != nil {
		return err
	}
	return s.write(c, http.StatusOK, func(b []byte) []byte {
		return appendEndpoint(b, d.ExternalAddress, []string{d.LinkAddress}, d.Port, d.PublicKey)
	})
}

func (s *Server) locations(c echo.Context) error {
	return s.write(c, http.StatusOK, func(b []byte) []byte { return appendLocations(b, s.b.Locations()) })
}

// write sends the JSON body that appendBody appends, from a recycled buffer.
func (s *Server) write(c echo.Context, code int, appendBody func([]byte) []byte) error {
	bp := s.bufs.Get().(*[]byte)
	b := appendBody((*bp)[:0])
	err := c.Blob(code, echo.MIMEApplicationJSON, b)
	*bp = b
	s.bufs.Put(bp)
	return err
}

// remote is the client's address for a log line: with Options.LogNodeAddresses only.
func (s *Server) remote(c echo.Context) string {
	if !s.logNodes {
		return "(not logged)"
	}
	return c.RealIP()
}

// handleError maps every error to a status code and a JSON body {"error":{"message":…}}.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := http.StatusInternalServerError, msgGeneric
	var he *echo.HTTPError
	switch {
	case errors.Is(err, broker.ErrBadRequest):
		code = http.StatusBadRequest
		s.log.Info("registration refused", "remote", s.remote(c), "path", c.Path(), "reason", err)
	case errors.Is(err, broker.ErrNoGateway):
		code, msg = http.StatusBadRequest, msgNoGateway
		s.log.Warn("no gateway online", "reason", err)
	case errors.Is(err, broker.ErrNoGatewayData):
		msg = msgNoData
		s.log.Warn("gateway without endpoint data", "reason", err)
	case errors.Is(err, errAmbiguousLength):
		code, msg = http.StatusBadRequest, http.StatusText(http.StatusBadRequest)
		c.Response().Header().Set(echo.HeaderConnection, "close") // net/http closes the connection after the answer
		s.log.Info("request refused, connection closed", "remote", s.remote(c), "path", c.Request().URL.Path, "reason", err)
	case errors.Is(err, errKeySearchClosed):
		code, msg = http.StatusForbidden, err.Error()
	case errors.Is(err, errNotAKey):
		code, msg = http.StatusBadRequest, err.Error()
	case errors.As(err, &he):
		code = he.Code
		msg = http.StatusText(code)
	default:
		s.log.Error("request failed", "remote", s.remote(c), "path", c.Path(), "err", err)
	}
	_ = s.write(c, code, func(b []byte) []byte { return appendError(b, msg) })
}
