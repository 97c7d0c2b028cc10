package web

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// static holds the status page: index.html, its script and stylesheet, and the vendored uPlot.
//
//go:embed static
var static embed.FS

// contentSecurityPolicy allows nothing but the page's own embedded files: no inline script or style, no frames.
const contentSecurityPolicy = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// historyWindow is how far back the connected-peers chart reaches.
const historyWindow = 24 * time.Hour

// historyCacheTTL is how long a read of the peer samples serves status requests: many open pages poll every
// few seconds, the samples change once a sample interval.
const historyCacheTTL = 5 * time.Second

// Dashboard is what the status page shows beyond the broker's own state, and who may see it. brokerd fills it in;
// SetDashboard may replace it while the server runs (configuration reload).
type Dashboard struct {
	// ID names the broker among several on one MQTT server; empty when it is alone.
	ID string
	// Version is the broker's version.
	Version string
	// Started is when the broker started.
	Started time.Time
	// MQTTClients counts the connected MQTT clients (-1: unknown, with an external MQTT server).
	MQTTClients func() int
	// StateFileBytes is the size of the state file.
	StateFileBytes func() int64
	// PeerHistory returns every worker's connected-peer samples since a time, oldest first.
	PeerHistory func(since time.Time) (map[string][]Sample, error)
	// Metrics serves GET /metrics; nil: not served.
	Metrics http.Handler
	// Username and PasswordHash (bcrypt), when Username is not empty, protect the page, its files and
	// GET /api/v1/status with basic-auth. /metrics and the key exchange stay open.
	Username     string
	PasswordHash []byte
}

// Sample is a worker's connected peers at a time.
type Sample struct {
	Time  time.Time
	Peers int
}

// dashboard is the status page's state on a Server.
type dashboard struct {
	mu sync.Mutex // guards d
	d  Dashboard
	// histMu guards hist and at. It is held while the samples are read and encoded, so that concurrent requests
	// share one read; mu is not, so that the page's other requests and logins do not wait for it.
	histMu sync.Mutex
	hist   []byte    // the JSON of the PeerHistory last read: encoded once, not for every request
	at     time.Time // when hist was read

	// passwords checks the password against d.PasswordHash: one bcrypt check at a time (a flood of wrong
	// passwords costs one core, not all), and a password that matched is remembered, since an open page sends its
	// credentials every 2 seconds and must not pay bcrypt each time.
	passwords *passwd.Checker
}

// SetDashboard sets what the status page shows and who may see it. It may be called while the server runs.
func (s *Server) SetDashboard(d Dashboard) {
	s.dash.mu.Lock()
	s.dash.d = d
	s.dash.mu.Unlock()
	s.dash.histMu.Lock()
	s.dash.at = time.Time{}
	s.dash.histMu.Unlock()
	s.dash.passwords.Forget(func(hash string) bool { return hash == string(d.PasswordHash) })
}

func (s *Server) dashboardOptions() Dashboard {
	s.dash.mu.Lock()
	defer s.dash.mu.Unlock()
	return s.dash.d
}

// statusRoutes adds the status page, its files, GET /api/v1/status and GET /metrics to the router.
func (s *Server) statusRoutes() {
	sub, _ := fs.Sub(static, "static") // cannot fail: the directory is embedded
	files := http.StripPrefix("/static/", http.FileServer(http.FS(sub)))
	// Per route, not as a group: a group's middleware would answer every unknown path and method with 404.
	mw := []echo.MiddlewareFunc{s.securityHeaders, middleware.BasicAuthWithConfig(middleware.BasicAuthConfig{
		Skipper:   func(echo.Context) bool { return s.dashboardOptions().Username == "" },
		Validator: s.checkPassword,
		Realm:     "wgkex",
	})}
	s.e.Match([]string{http.MethodGet, http.MethodHead}, "/", s.index, mw...)
	s.e.Match([]string{http.MethodGet, http.MethodHead}, "/static/*", echo.WrapHandler(files), mw...)
	s.e.GET("/api/v1/status", s.status, mw...)
	s.e.GET("/api/v1/key", s.keyInfo, mw...)
	s.e.GET("/metrics", func(c echo.Context) error {
		h := s.dashboardOptions().Metrics
		if h == nil {
			return echo.ErrNotFound
		}
		h.ServeHTTP(c.Response(), c.Request())
		return nil
	})
}

// securityHeaders forbids inline code, framing and content sniffing on the status page.
func (s *Server) securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		return next(c)
	}
}

// loginWait bounds how long a request waits for its password check.
const loginWait = 5 * time.Second

// checkPassword compares the username in constant time and the password against its bcrypt hash. A wrong
// username costs a bcrypt comparison of the same cost, whatever the password (passwd.Checker.CheckUnknown), so
// that the time of a refusal tells neither whether the username was right nor whether the password was.
func (s *Server) checkPassword(user, pass string, c echo.Context) (bool, error) {
	d := s.dashboardOptions()
	userOK := subtle.ConstantTimeCompare([]byte(user), []byte(d.Username)) == 1
	// A flood of wrong passwords queues for the one bcrypt slot: a request waits its turn for a few seconds at most.
	ctx, cancel := context.WithTimeout(c.Request().Context(), loginWait)
	defer cancel()
	if !userOK {
		return s.dash.passwords.CheckUnknown(ctx, passwd.Cost(string(d.PasswordHash)), []byte(pass)), nil
	}
	return s.dash.passwords.Check(ctx, d.PasswordHash, []byte(pass)), nil
}

// htmlType is the status page's content type, spelled as Flask (the reference) spells it: health checks compare it.
const htmlType = "text/html; charset=utf-8"

func (s *Server) index(c echo.Context) error {
	b, err := static.ReadFile("static/index.html")
	if err != nil {
		return err
	}
	// Set here: net/http adds it by itself only to bodies under 2 KiB, and HEAD / must announce GET's length.
	c.Response().Header().Set(echo.HeaderContentLength, strconv.Itoa(len(b)))
	return c.Blob(http.StatusOK, htmlType, b)
}

// StatusBody is the JSON of GET /api/v1/status (documented in README.md).
type StatusBody struct {
	Broker BrokerInfo `json:"broker"`
	// KeySearch is true when GET /api/v1/key answers (the status page has credentials).
	KeySearch bool `json:"key_search"`
	broker.Status
	// PeerHistory is left out (null) with ?history=0: it changes once a sample interval and is the bulk of the
	// answer, so the page fetches it less often. The handler sends the JSON it encoded once per read of the
	// samples (statusAnswer); the field is here for clients that decode the answer.
	PeerHistory *PeerHistory `json:"peer_history"`
}

var (
	// errKeySearchClosed refuses a key search on a status page without credentials: it is then open to all.
	errKeySearchClosed = errors.New("key search needs the status page's credentials: set broker.dashboard.username and password_hash")
	// errNotAKey answers a key search for something that is not a WireGuard public key.
	errNotAKey = errors.New("not a WireGuard public key (44 characters of base64)")
)

// keyInfo is GET /api/v1/key?key=KEY: what the broker knows of a node's key (broker.Broker.ShowKey), for the
// operators the status page's credentials admit. It answers 403 while the page has none.
func (s *Server) keyInfo(c echo.Context) error {
	if s.dashboardOptions().Username == "" {
		return errKeySearchClosed
	}
	key := c.QueryParam("key")
	if wire.ValidateKey(key) != nil {
		return errNotAKey
	}
	info, err := s.b.ShowKey(key)
	if err != nil {
		return err
	}
	if info == nil {
		info = []broker.KeyInfo{}
	}
	return c.JSON(http.StatusOK, map[string]any{"key": key, "domains": info})
}

// statusAnswer is the StatusBody the handler encodes: its peer_history, less deeply nested, hides the
// StatusBody's, and holds the history's JSON as encoded once (nil: null).
type statusAnswer struct {
	StatusBody
	PeerHistory json.RawMessage `json:"peer_history"`
}

// BrokerInfo describes the broker process.
type BrokerInfo struct {
	// ID is the broker's name among several on one MQTT server (broker.mqtt_server.client_id); empty when alone.
	ID             string    `json:"id"`
	Version        string    `json:"version"`
	Now            time.Time `json:"now"`
	Started        time.Time `json:"started"`
	UptimeSeconds  float64   `json:"uptime_seconds"`
	MQTTClients    int       `json:"mqtt_clients"`
	StateFileBytes int64     `json:"state_file_bytes"`
}

// PeerHistory is the chart's data as uPlot takes it: one time axis, one series per worker (null: no sample).
type PeerHistory struct {
	Times   []int64           `json:"times"`
	Workers map[string][]*int `json:"workers"`
}

func (s *Server) status(c echo.Context) error {
	d := s.dashboardOptions()
	now := time.Now()
	body := StatusBody{
		Broker:    BrokerInfo{ID: d.ID, Version: d.Version, Now: now.UTC(), Started: d.Started.UTC()},
		Status:    s.b.Status(),
		KeySearch: d.Username != "",
	}
	if !d.Started.IsZero() {
		body.Broker.UptimeSeconds = now.Sub(d.Started).Seconds()
	}
	if d.MQTTClients != nil {
		body.Broker.MQTTClients = d.MQTTClients()
	}
	if d.StateFileBytes != nil {
		body.Broker.StateFileBytes = d.StateFileBytes()
	}
	answer := statusAnswer{StatusBody: body}
	if c.QueryParam("history") != "0" {
		h, err := s.peerHistory(now)
		if err != nil {
			return err
		}
		answer.PeerHistory = h
	}
	b, err := json.Marshal(answer)
	if err != nil {
		return err
	}
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, append(b, '\n'))
}

// peerHistory returns the JSON of the samples of the last 24 hours, from the last read if it is recent. The
// result is shared: append to a copy.
func (s *Server) peerHistory(now time.Time) ([]byte, error) {
	read := s.dashboardOptions().PeerHistory
	s.dash.histMu.Lock()
	defer s.dash.histMu.Unlock()
	if !s.dash.at.IsZero() && now.Sub(s.dash.at) < historyCacheTTL {
		return s.dash.hist, nil
	}
	samples := map[string][]Sample{}
	if read != nil {
		var err error
		if samples, err = read(now.Add(-historyWindow)); err != nil {
			return nil, err
		}
	}
	h, err := json.Marshal(alignSamples(samples))
	if err != nil {
		return nil, fmt.Errorf("encode peer history: %w", err)
	}
	s.dash.hist, s.dash.at = h[:len(h):len(h)], now
	return s.dash.hist, nil
}

// alignSamples puts every worker's samples on one time axis (whole seconds), with nil where a worker has none.
func alignSamples(samples map[string][]Sample) PeerHistory {
	index := map[int64]int{}
	var times []int64
	for _, ss := range samples {
		for _, x := range ss {
			t := x.Time.Unix()
			if _, ok := index[t]; !ok {
				index[t] = 0
				times = append(times, t)
			}
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	for i, t := range times {
		index[t] = i
	}
	h := PeerHistory{Times: times, Workers: make(map[string][]*int, len(samples))}
	if h.Times == nil {
		h.Times = []int64{}
	}
	for w, ss := range samples {
		series := make([]*int, len(times))
		for _, x := range ss {
			n := x.Peers
			series[index[x.Time.Unix()]] = &n
		}
		h.Workers[w] = series
	}
	return h
}
