// Package web serves the broker's REST API (byte-compatible with the reference broker) and its status page with
// Echo. Errors become JSON bodies in exactly one place, the error handler.
package web

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/freifunkMUC/wgkex-go/broker"
)

//go:embed static/index.html
var indexHTML []byte

// Messages of the reference broker's error bodies (SPEC §1.4).
const (
	msgGeneric   = "An internal error has occurred. Please try again later."
	msgNoGateway = "no gateway online for this domain, please check the domain value and try again later"
	msgNoData    = "could not get gateway data"
)

// MaxBody is the largest request body accepted; a registration is about 100 bytes.
const MaxBody = "16K"

// Server is the HTTP side of the broker.
type Server struct {
	b   *broker.Broker
	e   *echo.Echo
	log *slog.Logger
}

// New builds the router.
func New(b *broker.Broker, log *slog.Logger) *Server {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	s := &Server{b: b, e: e, log: log}
	e.HTTPErrorHandler = s.handleError
	e.Use(middleware.BodyLimit(MaxBody))
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{DisableStackAll: true, LogLevel: 0}))
	e.GET("/", s.index)
	e.POST("/api/v1/wg/key/exchange", s.exchangeV1)
	e.POST("/api/v2/wg/key/exchange", s.exchangeV2)
	e.GET("/api/v1/locations", s.locations)
	return s
}

// Handler returns the router.
func (s *Server) Handler() http.Handler { return s.e }

// HTTPServer returns an http.Server for the router on addr, with timeouts fit for the open internet.
func (s *Server) HTTPServer(addr string) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           s.e,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

func (s *Server) index(c echo.Context) error {
	return c.HTMLBlob(http.StatusOK, indexHTML)
}

type messageBody struct {
	Message string `json:"Message"`
}

type endpointBody struct {
	Endpoint endpoint `json:"Endpoint"`
}

// endpoint has its fields in alphabetical order, as Flask sorts keys.
type endpoint struct {
	Address    string   `json:"Address"`
	AllowedIPs []string `json:"AllowedIPs"`
	Port       string   `json:"Port"`
	PublicKey  string   `json:"PublicKey"`
}

type locationsBody struct {
	Locations []string `json:"locations"`
}

type errorBody struct {
	Error struct {
		Message string `json:"message"`
	} `json:"error"`
}

// bodies recycles request body buffers: registrations are small and many.
var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (s *Server) request(c echo.Context) (broker.Request, error) {
	buf := bodies.Get().(*bytes.Buffer)
	defer bodies.Put(buf)
	buf.Reset()
	if _, err := buf.ReadFrom(c.Request().Body); err != nil {
		return broker.Request{}, err
	}
	return broker.ParseRequest(buf.Bytes())
}

func (s *Server) exchangeV1(c echo.Context) error {
	r, err := s.request(c)
	if err != nil {
		return err
	}
	if err := s.b.ExchangeV1(r); err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, messageBody{Message: "OK"})
}

func (s *Server) exchangeV2(c echo.Context) error {
	r, err := s.request(c)
	if err != nil {
		return err
	}
	d, err := s.b.ExchangeV2(r)
	if err != nil {
		return err
	}
	return writeJSON(c, http.StatusOK, endpointBody{Endpoint: endpoint{
		Address:    d.ExternalAddress,
		AllowedIPs: []string{d.LinkAddress},
		Port:       strconv.Itoa(d.Port),
		PublicKey:  d.PublicKey,
	}})
}

func (s *Server) locations(c echo.Context) error {
	return writeJSON(c, http.StatusOK, locationsBody{Locations: s.b.Locations()})
}

// writeJSON writes v as Flask does: compact, keys in the order of the struct (kept alphabetical), newline.
func writeJSON(c echo.Context, code int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	return c.Blob(code, echo.MIMEApplicationJSON, b)
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
		s.log.Info("registration refused", "remote", c.RealIP(), "path", c.Path(), "reason", err)
	case errors.Is(err, broker.ErrNoGateway):
		code, msg = http.StatusBadRequest, msgNoGateway
		s.log.Warn("no gateway online", "reason", err)
	case errors.Is(err, broker.ErrNoGatewayData):
		msg = msgNoData
		s.log.Warn("gateway without endpoint data", "reason", err)
	case errors.As(err, &he):
		code = he.Code
		msg = http.StatusText(code)
	default:
		s.log.Error("request failed", "path", c.Path(), "err", err)
	}
	var body errorBody
	body.Error.Message = msg
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(code)
		return
	}
	_ = writeJSON(c, code, body)
}
