package web

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/crypto/bcrypt"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

func get(s *Server, method, path string, header http.Header) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	return rec
}

// TestStatusJSON: after known worker reports and registrations, GET /api/v1/status shows each gateway's numbers,
// its share and distance, the keys assigned to it, the registrations per API version and the refusals by reason.
func TestStatusJSON(t *testing.T) {
	s, b, _ := newServer(t)
	started := time.Now().Add(-time.Hour)
	s.SetDashboard(Dashboard{
		Version: "v9.9.9", Started: started,
		MQTTClients:    func() int { return 3 },
		StateFileBytes: func() int64 { return 32768 },
		PeerHistory: func(time.Time) (map[string][]Sample, error) {
			return map[string][]Sample{
				"gw04": {{time.Unix(100, 0), 5}, {time.Unix(160, 0), 6}},
				"gw05": {{time.Unix(160, 0), 7}},
			}, nil
		},
	})
	for _, w := range []struct {
		name  string
		peers string
	}{{"gw04", "10"}, {"gw05", "30"}} {
		d := wire.WorkerData{ExternalAddress: w.name + ".ext", Port: 51820, PublicKey: gwKey, LinkAddress: "fe80::1"}
		b.HandleData(wire.DataTopic(w.name, "ffmuc_welt"), d.Marshal())
		b.HandleStatus(wire.StatusTopic(w.name), []byte("1"))
		b.HandleMetric(wire.MetricTopic("ffmuc_welt", w.name), []byte(w.peers))
	}
	b.HandleStatus(wire.StatusTopic("gw05"), []byte("0"))
	good := `{"domain":"ffmuc_welt","public_key":"` + key1 + `"}`
	for range 3 {
		do(s, "POST", "/api/v2/wg/key/exchange", "", good)
	}
	do(s, "POST", "/api/v1/wg/key/exchange", "", good)
	do(s, "POST", "/api/v1/wg/key/exchange", "", `{"domain":"ffmuc_nope","public_key":"`+key1+`"}`)
	do(s, "POST", "/api/v2/wg/key/exchange", "", `{"domain":"ffmuc_welt","public_key":"short"}`)
	do(s, "POST", "/api/v2/wg/key/exchange", "", `[`)

	rec := get(s, "GET", "/api/v1/status", nil)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status: %d %s %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	var got StatusBody
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Broker.Version != "v9.9.9" || got.Broker.MQTTClients != 3 || got.Broker.StateFileBytes != 32768 ||
		got.Broker.UptimeSeconds < 3600 || !got.Broker.Started.Equal(started) {
		t.Errorf("broker: %+v", got.Broker)
	}
	// Four configured workers of weight 1; gw05 is offline, so only gw04's 10+3 peers are online.
	wantGW := []broker.GatewayStatus{
		{Name: "gw04", Location: "MUC", Weight: 1, Configured: true, Seen: true, Online: true, Peers: 13, Share: 0.25,
			Target: 3.25, Distance: 9.75, AssignedLastHour: 3, Serving: []string{"ffmuc_welt"}},
		{Name: "gw05", Location: "Vienna", Weight: 1, Configured: true, Seen: true, Peers: 30, Share: 0.25, Serving: []string{}},
		{Name: "gw06", Location: "MUC", Weight: 1, Configured: true, Share: 0.25, Serving: []string{}},
		{Name: "gw07", Weight: 1, Configured: true, Share: 0.25, Serving: []string{}},
	}
	if d := cmp.Diff(wantGW, got.Gateways, cmpopts.IgnoreFields(broker.GatewayStatus{}, "Since", "LastReport")); d != "" {
		t.Errorf("gateways (-want +got):\n%s", d)
	}
	if got.Gateways[0].Since.IsZero() || got.Gateways[1].Since.IsZero() || !got.Gateways[2].Since.IsZero() {
		t.Errorf("since: %v", got.Gateways)
	}
	wantDomains := []broker.DomainStatus{{Name: "ffmuc_welt", Peers: 13, Gateways: []broker.DomainGateway{
		{Name: "gw04", Peers: 13, Endpoint: "gw04.ext:51820", AssignedLastHour: 3, Serving: true},
		{Name: "gw05", Peers: 30, Endpoint: "gw05.ext:51820"},
		{Name: "gw06", Peers: -1},
		{Name: "gw07", Peers: -1},
	}}}
	if d := cmp.Diff(wantDomains, got.Domains); d != "" {
		t.Errorf("domains (-want +got):\n%s", d)
	}
	sum := func(xs []int) (n int) {
		for _, x := range xs {
			n += x
		}
		return n
	}
	a := got.Activity
	if len(a.Registrations["v1"]) != 60 || sum(a.Registrations["v1"]) != 1 || sum(a.Registrations["v2"]) != 3 ||
		a.Registrations["v2"][59] != 3 && a.Registrations["v2"][58] != 3 {
		t.Errorf("registrations: %v", a.Registrations)
	}
	wantRefused := map[string]int{"unknown_domain": 1, "invalid_key": 1, "malformed": 1}
	if d := cmp.Diff(wantRefused, a.Refused); d != "" {
		t.Errorf("refused (-want +got):\n%s", d)
	}
	five, six, seven := 5, 6, 7
	wantHist := PeerHistory{Times: []int64{100, 160}, Workers: map[string][]*int{"gw04": {&five, &six}, "gw05": {nil, &seven}}}
	if d := cmp.Diff(&wantHist, got.PeerHistory); d != "" {
		t.Errorf("peer history (-want +got):\n%s", d)
	}
	if rec := get(s, "GET", "/api/v1/status?history=0", nil); !strings.HasSuffix(rec.Body.String(), `"peer_history":null}`+"\n") {
		t.Errorf("history=0 still sends the history: %s", rec.Body.String()[max(0, rec.Body.Len()-80):])
	}
	// Alone on its embedded server: no id, and an empty list of brokers rather than null, for scripts.
	for _, want := range []string{`"broker":{"id":"",`, `"brokers":[]`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("status of a broker alone lacks %s", want)
		}
	}
}

// TestDashboardAuth: with broker.dashboard credentials the page, its files and the JSON need them (wrong user,
// wrong password, no header: 401 with a challenge); the key exchange and /metrics stay open. Off by default.
func TestDashboardAuth(t *testing.T) {
	s, _, _ := newServer(t)
	for _, p := range []string{"/", "/api/v1/status", "/static/app.js"} {
		if rec := get(s, "GET", p, nil); rec.Code != 200 {
			t.Errorf("no auth configured: GET %s: %d", p, rec.Code)
		}
	}
	protect(t, s, http.NotFoundHandler())
	for _, p := range []string{"/", "/api/v1/status", "/static/app.js", "/static/vendor/uPlot.iife.min.js"} {
		for name, h := range map[string]http.Header{"none": nil, "wrong password": basic("ops", "s3cre"),
			"wrong user": basic("op", "s3cret"), "empty": basic("", "")} {
			rec := get(s, "GET", p, h)
			if rec.Code != 401 || !strings.HasPrefix(strings.ToLower(rec.Header().Get("WWW-Authenticate")), "basic realm=") {
				t.Errorf("GET %s with %s credentials: %d %q", p, name, rec.Code, rec.Header().Get("WWW-Authenticate"))
			}
		}
		if rec := get(s, "GET", p, basic("ops", "s3cret")); rec.Code != 200 {
			t.Errorf("GET %s with the right credentials: %d", p, rec.Code)
		}
	}
	// No way around it: HEAD, a query, another spelling of the path (those that route at all) or a directory.
	for _, p := range []string{"/api/v1/status?history=0", "/api/v1/status/", "/api/v1/%73tatus", "//api/v1/status",
		"/static/", "/static/vendor/", "/static/../api/v1/status", "/?x=1"} {
		for _, m := range []string{"GET", "HEAD"} {
			if rec := get(s, m, p, nil); rec.Code != 401 && rec.Code != 404 {
				t.Errorf("%s %s without credentials: %d", m, p, rec.Code)
			}
		}
	}
	if code, _, _ := do(s, "POST", "/api/v1/wg/key/exchange", "", `{"domain":"ffmuc_welt","public_key":"`+key1+`"}`); code != 200 {
		t.Errorf("key exchange behind dashboard auth: %d", code)
	}
	if rec := get(s, "GET", "/metrics", nil); rec.Code == 401 {
		t.Errorf("/metrics behind dashboard auth")
	}
}

// TestDashboardPage: GET and HEAD / answer "text/html; charset=utf-8" as Flask does (the reference's health
// checks) with the strict CSP; the
// page and every asset it names are embedded and served with their types; no embedded HTML has inline script or
// style, and no asset comes from another origin.
func TestDashboardPage(t *testing.T) {
	s, _, _ := newServer(t)
	for _, m := range []string{"GET", "HEAD"} {
		rec := get(s, m, "/", nil)
		if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/html; charset=utf-8" { // as Flask writes it
			t.Errorf("%s /: %d %q", m, rec.Code, rec.Header().Get("Content-Type"))
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.HasPrefix(csp, "default-src 'self'") {
			t.Errorf("%s /: CSP %q", m, csp)
		}
	}
	page := get(s, "GET", "/", nil).Body.String()
	if !strings.Contains(page, "<h1>WGKEX</h1>") {
		t.Errorf("the page lost the reference's heading")
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(page, -1)
	types := map[string]string{".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
	for _, r := range refs {
		u := r[1]
		if u == "/api/v1/status" {
			continue
		}
		if !strings.HasPrefix(u, "/static/") {
			t.Errorf("asset %q is not embedded", u)
			continue
		}
		rec := get(s, "GET", u, nil)
		ct := rec.Header().Get("Content-Type")
		if rec.Code != 200 || !strings.HasPrefix(ct, types[u[strings.LastIndex(u, "."):]]) || rec.Body.Len() == 0 {
			t.Errorf("GET %s: %d %q", u, rec.Code, ct)
		}
		if rec.Header().Get("Content-Security-Policy") == "" {
			t.Errorf("GET %s: no CSP", u)
		}
	}
	if len(refs) < 5 {
		t.Errorf("page names %d assets: %v", len(refs), refs)
	}
	inline := regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>\s*[^<\s]|<style|\sstyle=|\son[a-z]+=|javascript:`)
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !strings.HasSuffix(p, ".html") {
			return err
		}
		b, _ := static.ReadFile(p)
		if m := inline.Find(b); m != nil {
			t.Errorf("%s has inline code or style: %q", p, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if rec := get(s, "GET", "/static/../server.go", nil); rec.Code == 200 {
		t.Errorf("path traversal served a file")
	}
	if rec := get(s, "GET", "/metrics", nil); rec.Code != 404 {
		t.Errorf("/metrics without a registry: %d", rec.Code)
	}
}

// TestDashboardAuthCost: bcrypt is slow on purpose, so an open page polling every 2 seconds must not pay it on
// every request (a password that matched is remembered until the credentials change), and a flood of wrong
// passwords runs one bcrypt at a time, leaving the other core to the key exchange.
func TestDashboardAuthCost(t *testing.T) {
	s, _, _ := newServer(t)
	var mu sync.Mutex
	calls, active, most := 0, 0, 0
	release := make(chan struct{})
	block := false
	s.dash.passwords = passwd.New(1, func(hash, pw []byte) error {
		mu.Lock()
		calls++
		active++
		most = max(most, active)
		b := block
		mu.Unlock()
		if b {
			<-release
		}
		mu.Lock()
		active--
		mu.Unlock()
		return bcrypt.CompareHashAndPassword(hash, pw)
	})
	protect(t, s, nil)
	for range 10 {
		if rec := get(s, "GET", "/api/v1/status?history=0", basic("ops", "s3cret")); rec.Code != 200 {
			t.Fatalf("right credentials: %d", rec.Code)
		}
	}
	if rec := get(s, "GET", "/", basic("ops", "wrong")); rec.Code != 401 {
		t.Errorf("a wrong password after a right one: %d", rec.Code)
	}
	if rec := get(s, "GET", "/", basic("ops2", "s3cret")); rec.Code != 401 {
		t.Errorf("a wrong user with the remembered password: %d", rec.Code)
	}
	mu.Lock()
	if calls != 3 {
		t.Errorf("12 requests ran bcrypt %d times, want 3 (the first right one, the wrong password, the wrong user)", calls)
	}
	// New credentials (a reload): the remembered password no longer counts.
	hash2, _ := bcrypt.GenerateFromPassword([]byte("n3w"), bcrypt.MinCost)
	calls, block = 0, true
	mu.Unlock()
	s.SetDashboard(Dashboard{Username: "ops", PasswordHash: hash2})

	const flood = 4
	codes := make(chan int, flood+1)
	for range flood {
		go func() { codes <- get(s, "GET", "/api/v1/status", basic("ops", "s3cret")).Code }()
	}
	for i := range flood {
		testenv.Eventually(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return calls > i }, "no bcrypt started")
		release <- struct{}{}
	}
	for range flood {
		if c := <-codes; c != 401 {
			t.Errorf("old password after the change: %d", c)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if most > 1 {
		t.Errorf("%d bcrypt checks ran at once, want 1", most)
	}
}

// TestStatusHistoryEncodedOnce: the peer history is encoded once per read of the samples, not on every request:
// a full answer from the cache costs about what a ?history=0 answer does, however many gateways and samples
// there are (encoding 500 gateways' day of samples took 48 ms and 16 MB a request, open to anyone).
func TestStatusHistoryEncodedOnce(t *testing.T) {
	s, _, _ := newServer(t)
	t0 := time.Now().Add(-time.Hour)
	samples := map[string][]Sample{}
	for w := range 50 {
		for i := range 60 {
			samples[fmt.Sprintf("gw%02d", w)] = append(samples[fmt.Sprintf("gw%02d", w)], Sample{t0.Add(time.Duration(i) * time.Minute), w + i})
		}
	}
	s.SetDashboard(Dashboard{PeerHistory: func(time.Time) (map[string][]Sample, error) { return samples, nil }})
	full := get(s, "GET", "/api/v1/status", nil)
	var body StatusBody
	if err := json.Unmarshal(full.Body.Bytes(), &body); err != nil || body.PeerHistory == nil {
		t.Fatalf("full answer: %v %.200s", err, full.Body.String())
	}
	if got := body.PeerHistory.Workers["gw07"]; len(got) != 60 || *got[3] != 10 || len(body.PeerHistory.Times) != 60 {
		t.Errorf("gw07's history: %d samples, times %d", len(got), len(body.PeerHistory.Times))
	}
	allocs := func(path string) float64 {
		return testing.AllocsPerRun(20, func() {
			if rec := get(s, "GET", path, nil); rec.Code != 200 {
				t.Fatalf("GET %s: %d", path, rec.Code)
			}
		})
	}
	short, long := allocs("/api/v1/status?history=0"), allocs("/api/v1/status")
	if long > short+20 {
		t.Errorf("a full answer from the cache makes %.0f allocations, ?history=0 %.0f", long, short)
	}
}

// TestDashboardUsernamesNotEnumerable: a wrong username costs the bcrypt comparison a wrong password does, also
// with the password that is remembered for the right one (which used to answer a wrong username without bcrypt,
// telling from the time that the password was right).
func TestDashboardUsernamesNotEnumerable(t *testing.T) {
	s, _, _ := newServer(t)
	var calls atomic.Int64
	s.dash.passwords = passwd.New(1, func(hash, pw []byte) error { calls.Add(1); return bcrypt.CompareHashAndPassword(hash, pw) })
	protect(t, s, nil)
	if rec := get(s, "GET", "/api/v1/status", basic("ops", "s3cret")); rec.Code != 200 { // now remembered
		t.Fatalf("right credentials: %d", rec.Code)
	}
	for _, c := range []struct{ name, user, pass string }{
		{"a wrong password", "ops", "wrong"},
		{"a wrong username", "admin", "wrong"},
		{"a wrong username with the right password", "admin", "s3cret"},
		{"an empty username", "", "s3cret"},
	} {
		before := calls.Load()
		if rec := get(s, "GET", "/api/v1/status", basic(c.user, c.pass)); rec.Code != 401 {
			t.Errorf("%s: %d", c.name, rec.Code)
		}
		if n := calls.Load() - before; n != 1 {
			t.Errorf("%s: %d bcrypt comparisons, want 1", c.name, n)
		}
	}
}

// protect sets the dashboard's credentials to ops / s3cret, and its metrics handler.
func protect(t *testing.T, s *Server, metrics http.Handler) {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	s.SetDashboard(Dashboard{Username: "ops", PasswordHash: hash, Metrics: metrics})
}

// basic is a header with basic-auth credentials.
func basic(u, p string) http.Header {
	req, _ := http.NewRequest("GET", "/", nil)
	req.SetBasicAuth(u, p)
	return req.Header
}

// TestKeySearch: GET /api/v1/key answers with what the broker knows of a key only behind the status page's
// credentials: 403 on a page without them (it is then open to everyone), 401 without them, 200 with them; a
// malformed key is a 400; the status answer says whether the search is there.
func TestKeySearch(t *testing.T) {
	s, br, _ := newServer(t)
	key := "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	path := "/api/v1/key?key=" + url.QueryEscape(key)
	if rec := get(s, "GET", path, nil); rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "broker.dashboard.username") {
		t.Errorf("open page: %d %s", rec.Code, rec.Body.String())
	}
	if !strings.Contains(get(s, "GET", "/api/v1/status?history=0", nil).Body.String(), `"key_search":false`) {
		t.Error("status of an open page offers the key search")
	}
	protect(t, s, nil)
	if rec := get(s, "GET", path, nil); rec.Code != http.StatusUnauthorized {
		t.Errorf("without credentials: %d", rec.Code)
	}
	auth := basic("ops", "s3cret")
	rec := get(s, "GET", path, auth)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"domains":[]`) {
		t.Errorf("unknown key: %d %s", rec.Code, rec.Body.String())
	}
	if err := br.ExchangeV1(broker.Request{Domain: "ffmuc_welt", PublicKey: key}); err != nil {
		t.Fatal(err)
	}
	rec = get(s, "GET", path, auth)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"domain":"ffmuc_welt","stored":true`) {
		t.Errorf("stored key: %d %s", rec.Code, rec.Body.String())
	}
	if rec := get(s, "GET", "/api/v1/key?key=nope", auth); rec.Code != http.StatusBadRequest {
		t.Errorf("malformed key: %d %s", rec.Code, rec.Body.String())
	}
	if !strings.Contains(get(s, "GET", "/api/v1/status?history=0", auth).Body.String(), `"key_search":true`) {
		t.Error("status of a protected page does not offer the key search")
	}
}
