package brokerd

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// chromiumPath is Debian's chromium package; .ci/test.sh installs it.
const chromiumPath = "/usr/bin/chromium"

// pageProblems collects everything that must not happen on the status page: console errors, uncaught exceptions,
// browser log errors (CSP violations land there), failed requests and error responses, dialogs.
type pageProblems struct {
	mu   sync.Mutex
	list []string
}

func (p *pageProblems) add(format string, args ...any) {
	p.mu.Lock()
	p.list = append(p.list, fmt.Sprintf(format, args...))
	p.mu.Unlock()
}

func (p *pageProblems) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.list
	p.list = nil
	return l
}

func (p *pageProblems) listen(ev any) {
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value)+a.Description)
			}
			p.add("console %s: %s", ev.Type, strings.Join(args, " "))
		}
	case *runtime.EventExceptionThrown:
		e := ev.ExceptionDetails
		desc := ""
		if e.Exception != nil {
			desc = e.Exception.Description
		}
		p.add("exception at %s:%d: %s %s", e.URL, e.LineNumber, e.Text, desc)
	case *log.EventEntryAdded:
		if ev.Entry.Level == log.EntryLevelError || ev.Entry.Level == log.EntryLevelWarning {
			p.add("browser log %s (%s): %s %s", ev.Entry.Level, ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
		}
	case *network.EventLoadingFailed:
		p.add("request failed: %s %s", ev.ErrorText, ev.BlockedReason)
	case *network.EventResponseReceived:
		if ev.Response.Status >= 400 {
			p.add("response %d for %s", ev.Response.Status, ev.Response.URL)
		}
	case *cdppage.EventJavascriptDialogOpening:
		p.add("dialog %s: %s", ev.Type, ev.Message)
	}
}

// artifacts is where the browser test leaves its screenshots: $WGKEX_ARTIFACTS, else the test's temporary
// directory.
func artifacts(t *testing.T) string {
	dir := os.Getenv("WGKEX_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// gatewayRow is what a gateway's row shows.
type gatewayRow struct {
	Location, Weight, Status, Peers, Share, Distance, Assigned string
	// Domains maps each domain listed in the row to its handshaking peers there ("1 peer", "offline").
	Domains map[string]string
	Class   string
}

// rowsJS reads the gateway table: one entry per row, and the number of rows (a gateway listed twice would show).
const rowsJS = `(() => {
	const out = {}, trs = document.querySelectorAll('#gateway-list tr[data-gateway]');
	for (const tr of trs) {
		const t = c => tr.querySelector('.' + c).firstChild.textContent;
		const doms = {};
		for (const li of tr.querySelectorAll('li[data-domain]')) doms[li.dataset.domain] = li.querySelector('.dpeers').textContent;
		out[tr.dataset.gateway] = {Location: t('location'), Weight: t('weight'), Status: t('status'), Peers: t('peers'),
			Share: t('share'), Distance: t('distance'), Assigned: t('assigned'), Domains: doms, Class: tr.className};
	}
	return {rows: out, n: trs.length};
})()`

// page is a status page in headless Chromium; any console error, exception, CSP violation or failed request it
// has is collected in problems.
type page struct {
	t        *testing.T
	ctx      context.Context
	problems *pageProblems
}

// openPage starts Chromium, runs before (request headers, say) and loads url.
func openPage(t *testing.T, url string, before ...chromedp.Action[chromedp.Void]) *page {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		testenv.Skip(t, "chromium not installed (apt-get install chromium)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(cancelBrowser)
	p := &page{t: t, ctx: bctx, problems: &pageProblems{}}
	if err := chromedp.Listen(bctx, p.problems.listen); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	for _, a := range before {
		p.run("prepare", a)
	}
	p.run("load", chromedp.Navigate(url))
	return p
}

func (p *page) run(what string, a chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if _, err := chromedp.Run(p.ctx, a); err != nil {
		p.t.Fatalf("%s: %v (page problems: %q)", what, err, p.problems.take())
	}
}

// waitFor waits until the JavaScript expression is true.
func (p *page) waitFor(what, expr string) {
	p.t.Helper()
	p.run(what, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(45*time.Second))(ctx, tg)
		return chromedp.Void{}, err
	})
}

// eval evaluates a JavaScript expression into a T.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v (page problems: %q)", expr, err, p.problems.take())
	}
	return v
}

func (p *page) text(sel string) string {
	p.t.Helper()
	return eval[string](p, fmt.Sprintf("document.querySelector(%q).textContent", sel))
}

// rows reads the gateway table; it fails the test if a gateway has more than one row.
func (p *page) rows() map[string]gatewayRow {
	p.t.Helper()
	r := eval[struct {
		Rows map[string]gatewayRow
		N    int
	}](p, rowsJS)
	if r.N != len(r.Rows) {
		p.t.Errorf("%d gateway rows for %d gateways", r.N, len(r.Rows))
	}
	return r.Rows
}

// shot resizes the page, waits until the chart fits and saves a screenshot as dashboard-NAME.png in dir.
func (p *page) shot(dir, name string, width, height int64, opts ...chromedp.EmulateViewportOption) []byte {
	p.t.Helper()
	p.run("resize to "+name, chromedp.EmulateViewport(width, height, opts...))
	// uPlot follows the window's resize event; wait until the chart fits the new width.
	p.waitFor("chart resized for "+name, `[...document.querySelectorAll(".chart")].every(c => !c.querySelector(".uplot") || c.querySelector(".uplot").offsetWidth <= c.clientWidth)`)
	b, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(dir, "dashboard-"+name+".png")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", path)
	return b
}

// fitsPhone fails the test if the page is wider than the screen.
func (p *page) fitsPhone(what string) {
	p.t.Helper()
	if eval[bool](p, `document.documentElement.scrollWidth > window.innerWidth`) {
		p.t.Errorf("%s: the page is wider than a phone's screen", what)
	}
	if id := eval[string](p, `[...document.querySelectorAll(".table-wrap table")].filter(t => t.parentNode.scrollWidth > t.parentNode.clientWidth).map(t => t.id).join(" ")`); id != "" {
		p.t.Errorf("%s: a table must be scrolled sideways on a phone: %s", what, id)
	}
}

func (p *page) checkProblems() {
	p.t.Helper()
	if l := p.problems.take(); len(l) > 0 {
		p.t.Errorf("page problems:\n  %s", strings.Join(l, "\n  "))
	}
}

// TestDashboardInChromium loads the status page of a real broker in headless Chromium before any gateway speaks,
// then feeds it two gateways over real MQTT: both show up with their numbers without a reload; a new metric and a
// gateway going offline show up without a reload; an endpoint that is HTML is shown as text; the brokers section
// stays hidden (alone on the embedded server); the page fits a phone's width. Any console error, exception, CSP
// violation or failed request fails the test. Screenshots at desktop and phone width are saved in
// $WGKEX_ARTIFACTS. (TestDashboardRealNetwork takes docs/dashboard.png.)
func TestDashboardInChromium(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		testenv.Skip(t, "chromium not installed (apt-get install chromium)")
	}
	d := startDaemon(t, dashConfig(t, filepath.Join(t.TempDir(), "state.db")))
	// First the page of a broker no gateway has spoken to yet; a marker set in it survives only if the page is
	// never reloaded.
	p := openPage(t, "http://"+d.HTTPAddr()+"/")
	p.waitFor("gateways shown, never connected", `document.querySelectorAll('#gateway-list tr[data-gateway]').length === 2 &&
		[...document.querySelectorAll('#gateway-list .status')].every(s => s.firstChild.textContent === "never connected") &&
		!document.querySelector("#history-empty").hidden`)
	p.run("mark", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[chromedp.Void](`window.wgkexNoReload = true`)(ctx, tg)
		return err
	}))

	gw4, gw5 := twoGateways(t, d)
	for range 3 {
		post(t, d, "v2", `{"domain":"ffmuc_welt","public_key":"`+testenv.NewKey(t).PublicKey().String()+`"}`)
	}
	post(t, d, "v1", `{"domain":"ffwert_city","public_key":"`+nodeKey+`"}`)
	post(t, d, "v1", `{"domain":"ffmuc_nowhere","public_key":"`+nodeKey+`"}`)

	p.waitFor("both gateways shown", `window.wgkexNoReload && document.querySelectorAll('#gateway-list tr.online').length === 2 &&
		document.querySelector("#reg-hour").textContent === "4"`)
	// Weights 30 and 10: shares of 75 % and 25 %. The first two v2 nodes go to gw05 (see TestMetrics); the third
	// finds both half a peer below their targets (25 of 25.5, 8 of 8.5) and goes to the lower name. Of the 35
	// peers now, gw04's target is 26.25 (distance -0.25) and gw05's 8.75 (+0.25).
	want := map[string]gatewayRow{
		"gw04.in.ffmuc.net": {Location: "MUC", Weight: "30", Status: "online", Peers: "26", Share: "75.0 %", Distance: "-0.2",
			Assigned: "1", Domains: map[string]string{"ffmuc_welt": "26 peers"}, Class: "online"},
		"gw05.in.ffmuc.net": {Location: "Vienna", Weight: "10", Status: "online", Peers: "9", Share: "25.0 %", Distance: "+0.3",
			Assigned: "2", Domains: map[string]string{"ffmuc_welt": "7 peers", "ffwert_city": "2 peers"}, Class: "online"},
	}
	if diff := cmp.Diff(want, p.rows()); diff != "" {
		t.Errorf("gateway rows (-want +got):\n%s", diff)
	}
	if !eval[bool](p, `document.querySelector("#brokers").hidden`) {
		t.Errorf("brokers section shown for a broker alone on its embedded server")
	}
	for sel, want := range map[string]string{"#mqtt-clients": "2", "#gateways-online": "2 / 2", "#reg-hour": "4",
		`#domain-list [data-domain="ffmuc_welt"] .peers`: "33", `#domain-list [data-domain="ffmuc_welt"] .assigned`: "3",
		`#domain-list [data-domain="ffwert_city"] .serving`: "1 of 1"} {
		if got := p.text(sel); got != want {
			t.Errorf("%s shows %q, want %q", sel, got, want)
		}
	}
	if got := p.text(`#refused [data-reason="unknown_domain"] .num`); got != "1" {
		t.Errorf("refused unknown domain: %q", got)
	}

	gw4.peers(t, "ffmuc_welt", 40)
	p.waitFor("new metric shown", `window.wgkexNoReload && document.querySelector('tr[data-gateway="gw04.in.ffmuc.net"] .peers').textContent === "40"`)
	gw5.down(t)
	p.waitFor("offline gateway marked", `window.wgkexNoReload && document.querySelector('tr[data-gateway="gw05.in.ffmuc.net"]').classList.contains("offline")`)
	if r := p.rows()["gw05.in.ffmuc.net"]; r.Status != "offline" || r.Distance != "–" {
		t.Errorf("offline gateway shows %+v", r)
	}
	if got := p.text(`tr[data-gateway="gw05.in.ffmuc.net"] .since`); !strings.HasPrefix(got, "since ") {
		t.Errorf("offline gateway without its time: %q", got)
	}
	if got := p.text("#gateways-online"); got != "1 / 2" {
		t.Errorf("gateways online: %q", got)
	}
	p.waitFor("peer chart drawn", `document.querySelector("#peer-chart canvas") !== null && document.querySelector("#reg-chart canvas") !== null`)

	dir := artifacts(t)
	p.shot(dir, "two-desktop", 1280, 900)
	p.shot(dir, "two-phone", 390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile)
	p.fitsPhone("two gateways")

	// A gateway (compromised, or just careless) whose endpoint is markup: shown as text, no element made of it,
	// no request for its image. (Worker names cannot carry it any more: the MQTT server accepts configured
	// workers only.)
	evil := `<img src=x onerror=alert(1)>`
	data := wire.WorkerData{ExternalAddress: evil, Port: 51830, PublicKey: gwKey, LinkAddress: "fe80::1"}
	gw4.client.Publish(t, wire.DataTopic(gw4.name, "ffwert_city"), string(data.Marshal()), 1, true)
	gw4.peers(t, "ffwert_city", 1)
	p.waitFor("markup endpoint shown", fmt.Sprintf(`[...document.querySelectorAll('li[data-domain="ffwert_city"] .dep')].some(e => e.textContent === %q)`, evil+":51830"))
	if n := eval[int](p, `document.querySelectorAll("main img").length`); n != 0 {
		t.Errorf("an endpoint became markup: %d img elements", n)
	}

	// A name as long as DNS allows, without a space to break at, still fits the phone's width.
	long := strings.Repeat(strings.Repeat("x", 62)+".", 4) + "example"
	data.ExternalAddress = long
	gw4.client.Publish(t, wire.DataTopic(gw4.name, "ffwert_city"), string(data.Marshal()), 1, true)
	p.waitFor("long endpoint shown", fmt.Sprintf(`[...document.querySelectorAll('li[data-domain="ffwert_city"] .dep')].some(e => e.textContent === %q)`, long+":51830"))
	p.fitsPhone("a long endpoint")
	p.shot(dir, "two-phone-long-endpoint", 390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile)
	p.checkProblems()
}

// networkDomains are the seven domains of TestDashboardRealNetwork.
var networkDomains = []string{"ffmuc_welt", "ffmuc_muc_cty", "ffmuc_muc_nord", "ffmuc_muc_ost", "ffmuc_muc_sued", "ffmuc_muc_west", "ffwert_city"}

// networkGateway is a gateway of TestDashboardRealNetwork: its weight, location and handshaking peers per domain
// (-1: the domain is down there, so it does not serve it); gone: it leaves; never: it never connects.
type networkGateway struct {
	name, location string
	weight         int
	peers          map[string]int
	gone, never    bool
}

// netGateways has 12 gateways of total weight 100 and 200 peers on the online ones, so that a gateway's target is twice
// its weight: gw03 is exactly on it (distance 0.0).
var netGateways = []networkGateway{
	{"gw01.in.ffmuc.net", "MUC", 20, map[string]int{"ffmuc_welt": 30, "ffmuc_muc_cty": 12, "ffmuc_muc_nord": 8}, false, false},
	{"gw02.in.ffmuc.net", "MUC", 20, map[string]int{"ffmuc_welt": 26, "ffmuc_muc_ost": 12, "ffmuc_muc_sued": 8}, false, false},
	{"gw03.in.ffmuc.net", "Nuremberg", 10, map[string]int{"ffmuc_muc_nord": 8, "ffmuc_muc_west": 12}, false, false},
	{"gw04.in.ffmuc.net", "Vienna", 10, map[string]int{"ffmuc_welt": 8, "ffwert_city": 14}, false, false},
	{"gw05.in.ffmuc.net", "Frankfurt", 10, map[string]int{"ffmuc_muc_cty": 10, "ffmuc_muc_sued": 8}, false, false},
	{"gw06.in.ffmuc.net", "Düsseldorf", 5, map[string]int{"ffmuc_welt": 11}, false, false},
	{"gw07.in.ffmuc.net", "Berlin", 5, map[string]int{"ffmuc_muc_ost": 5, "ffmuc_muc_west": 4}, false, false},
	{"gw08.in.ffmuc.net", "Vienna", 5, map[string]int{"ffwert_city": 14}, false, false},
	{"gw09.in.ffmuc.net", "Augsburg", 5, map[string]int{"ffmuc_welt": 7}, true, false},
	{"gw10.in.ffmuc.net", "Zurich", 5, nil, false, true},
	{"gw11.in.ffmuc.net", "Hamburg", 3, nil, false, true},
	{"gw12.in.ffmuc.net", "MUC", 2, map[string]int{"ffmuc_welt": 9, "ffmuc_muc_ost": -1, "ffwert_city": 1}, false, false},
}

// networkConfig is the broker of TestDashboardRealNetwork: seven domains, twelve gateways, a sampler that takes
// no sample during the test (the test puts them in the store itself).
func networkConfig(t *testing.T) *config.Config {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "domains: [%s]\ndomain_prefixes: [ffmuc_, ffwert_]\nworkers:\n", strings.Join(networkDomains, ", "))
	for _, g := range netGateways {
		fmt.Fprintf(&b, "  %s: {weight: %d, location: %s}\n", g.name, g.weight, g.location)
	}
	fmt.Fprintf(&b, `broker_listen: {host: 127.0.0.1, port: 0}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
  reconnect_grace: 1h
  dashboard: {sample_interval: 1h}
`, filepath.Join(t.TempDir(), "state.db"))
	cfg, err := config.Parse([]byte(b.String()), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestDashboardRealNetwork shows a network of 7 domains and 12 gateways in headless Chromium (issue 17): one row
// per gateway, its domains in its row; a gateway that never connected apart from one that left ("offline since");
// an online gateway that does not serve one of its domains; "1 peer"; a distance of 0.0 neither green nor red;
// the domains' handshaking peers and gateways serving; the chart with no sample ("no samples yet"), then with one
// sample, whose time axis spans the last hour (not years). The page has no console errors and fits a phone.
// WGKEX_UPDATE_DOCS=1 copies the screenshots, with a day of samples, to docs/dashboard.png and
// docs/dashboard-phone.png.
func TestDashboardRealNetwork(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		testenv.Skip(t, "chromium not installed (apt-get install chromium)")
	}
	d := startDaemon(t, networkConfig(t))
	gws := map[string]*fakeGateway{}
	for _, g := range netGateways {
		if g.never {
			continue
		}
		gw := connectGateway(t, d, g.name)
		gws[g.name] = gw
		for i, dom := range networkDomains {
			if n, ok := g.peers[dom]; ok {
				gw.up(t, dom, 51820+i, n)
			}
		}
		if g.gone {
			gw.down(t)
		}
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		ws := d.Broker.Workers()
		if len(ws) != len(gws) {
			return false
		}
		for _, w := range ws {
			g := netGateways[slices.IndexFunc(netGateways, func(g networkGateway) bool { return g.name == w.Name })]
			if w.Online == g.gone || !maps.Equal(w.Peers, g.peers) || len(w.Data) != len(g.peers) {
				return false
			}
		}
		return true
	}, "gateways not reported")

	p := openPage(t, "http://"+d.HTTPAddr()+"/")
	p.waitFor("gateways shown", `document.querySelectorAll('#gateway-list tr.online').length === 9`)
	if !eval[bool](p, `!document.querySelector("#history-empty").hidden && !document.querySelector("#peer-chart canvas")`) {
		t.Errorf("no sample, but no \"no samples yet\" either")
	}

	rows := p.rows()
	if len(rows) != 12 {
		t.Errorf("%d gateway rows, want 12", len(rows))
	}
	for _, g := range netGateways {
		r, ok := rows[g.name]
		if !ok {
			t.Errorf("%s: no row", g.name)
			continue
		}
		doms := map[string]string{}
		for dom, n := range g.peers {
			switch n {
			case -1:
				doms[dom] = "offline"
			case 1:
				doms[dom] = "1 peer"
			default:
				doms[dom] = fmt.Sprint(n, " peers")
			}
		}
		want := gatewayRow{Location: g.location, Weight: fmt.Sprint(g.weight), Share: fmt.Sprintf("%d.0 %%", g.weight), Assigned: "0", Domains: doms}
		switch {
		case g.never:
			want.Status, want.Peers, want.Distance, want.Class = "never connected", "–", "–", "never"
		case g.gone:
			want.Status, want.Peers, want.Distance, want.Class = "offline", "–", "–", "offline"
		default:
			want.Status, want.Class = "online", "online"
			sum := 0
			for _, n := range g.peers {
				sum += max(n, 0)
			}
			want.Peers = fmt.Sprint(sum)
			switch dist := sum - 2*g.weight; {
			case dist > 0:
				want.Distance = fmt.Sprintf("+%d.0", dist)
			default:
				want.Distance = fmt.Sprintf("%d.0", dist)
			}
		}
		if g.name == "gw12.in.ffmuc.net" {
			want.Status, want.Class = "online, not serving 1 of 3 domains", "online not-serving"
		}
		if diff := cmp.Diff(want, r); diff != "" {
			t.Errorf("%s (-want +got):\n%s", g.name, diff)
		}
	}
	for sel, want := range map[string]string{
		`tr[data-gateway="gw10.in.ffmuc.net"] .status .note`:                          "configured, never seen",
		`tr[data-gateway="gw12.in.ffmuc.net"] li[data-domain="ffmuc_muc_ost"] .dnote`: "not serving",
		`tr[data-gateway="gw12.in.ffmuc.net"] li[data-domain="ffwert_city"] .dpeers`:  "1 peer",
		`#gateways-count`: "9 of 12 online, 2 never connected",
		`#domains-count`:  "7 domains",
		`#domain-list [data-domain="ffmuc_welt"] .peers`:      "84",
		`#domain-list [data-domain="ffmuc_welt"] .serving`:    "5 of 6",
		`#domain-list [data-domain="ffmuc_muc_ost"] .serving`: "2 of 3",
		`#domain-list [data-domain="ffwert_city"] .peers`:     "29",
	} {
		if got := p.text(sel); got != want {
			t.Errorf("%s shows %q, want %q", sel, got, want)
		}
	}
	if got := p.text(`tr[data-gateway="gw09.in.ffmuc.net"] .since`); !strings.HasPrefix(got, "since ") {
		t.Errorf("the gateway that left does not say since when: %q", got)
	}
	if n := eval[int](p, `document.querySelectorAll('tr[data-gateway="gw10.in.ffmuc.net"] .since, tr[data-gateway="gw10.in.ffmuc.net"] li').length`); n != 0 {
		t.Errorf("a gateway that never connected shows a time or domains (%d elements)", n)
	}
	if cls := eval[string](p, `document.querySelector('tr[data-gateway="gw03.in.ffmuc.net"] .distance').className`); strings.Contains(cls, "below") || strings.Contains(cls, "above") {
		t.Errorf("distance 0.0 is coloured: class %q", cls)
	}
	if cls := eval[string](p, `document.querySelector('tr[data-gateway="gw05.in.ffmuc.net"] .distance').className`); !strings.Contains(cls, "below") {
		t.Errorf("distance -2.0 is not marked below: class %q", cls)
	}

	// One sample, as the sampler records it: the chart's time axis spans the hour up to now.
	now := time.Now()
	sample := map[string]int{}
	for _, g := range netGateways {
		if !g.never && !g.gone {
			n := 0
			for _, v := range g.peers {
				n += max(v, 0)
			}
			sample[g.name] = n
		}
	}
	if err := d.Store.PutPeerSamples(now, time.Hour, sample); err != nil {
		t.Fatal(err)
	}
	p.waitFor("one sample drawn", `document.querySelector("#peer-chart").dataset.samples === "1" && document.querySelector("#peer-chart").dataset.xTicks &&
		document.querySelector("#history-empty").hidden`)
	ticks := eval[string](p, `document.querySelector("#peer-chart").dataset.xTicks`)
	labels := eval[string](p, `document.querySelector("#peer-chart").dataset.xLabels`)
	t.Logf("one sample: x ticks %s, labels %s", ticks, labels)
	if f := strings.Fields(ticks); len(f) < 2 {
		t.Errorf("x axis with one sample has ticks %q", ticks)
	} else {
		for _, s := range f {
			x, err := strconv.ParseFloat(s, 64)
			at := time.Unix(int64(x), 0)
			if err != nil || at.Before(now.Add(-70*time.Minute)) || at.After(now.Add(5*time.Minute)) {
				t.Errorf("x axis tick %s (%v) is not within the last hour", s, at)
			}
		}
	}
	if !regexp.MustCompile(`^(\d{1,2}:\d{2}([\s\x{202f}][AP]M)?\|)+\d{1,2}:\d{2}([\s\x{202f}][AP]M)?$`).MatchString(labels) {
		t.Errorf("x axis labels with one sample are not times of the day: %q", labels)
	}

	dir := artifacts(t)
	p.shot(dir, "network-one-sample", 1280, 900)
	p.shot(dir, "network-one-sample-phone", 390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile)
	p.fitsPhone("7 domains, 12 gateways")

	// A day of samples, as the sampler would have taken them hourly (gw09 until it left): the page, reloaded,
	// draws them over the day.
	for h := 23; h >= 1; h-- {
		at := now.Add(-time.Duration(h) * time.Hour)
		ss := map[string]int{}
		for name, n := range sample {
			ss[name] = max(0, n*(24-h/2)/24+(h*7+len(name))%5-2)
		}
		if h > 3 {
			ss["gw09.in.ffmuc.net"] = 7 + h%3
		}
		if err := d.Store.PutPeerSamples(at, time.Hour, ss); err != nil {
			t.Fatal(err)
		}
	}
	p.run("reload", chromedp.Reload())
	p.waitFor("a day drawn", `document.querySelector("#peer-chart").dataset.samples === "24" && document.querySelectorAll('#gateway-list tr.online').length === 9`)
	desktop := p.shot(dir, "network-desktop", 1280, 900)
	phone := p.shot(dir, "network-phone", 390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile)
	p.fitsPhone("a day of samples")
	if os.Getenv("WGKEX_UPDATE_DOCS") == "1" {
		for name, b := range map[string][]byte{"dashboard.png": desktop, "dashboard-phone.png": phone} {
			if err := os.WriteFile(filepath.Join("..", "..", "docs", name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	p.checkProblems()
}

// TestKeySearchInChromium: on a status page with credentials, an operator looks a node's key up: the page shows
// the domain it is stored in, when it was seen and the gateway chosen; a malformed key gets the broker's reason.
// The search is not offered on a page without credentials (TestDashboardInChromium: hidden).
func TestKeySearchInChromium(t *testing.T) {
	cfg := dashConfig(t, filepath.Join(t.TempDir(), "state.db"))
	hash, err := passwd.Hash([]byte("s3cret"), 4)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Broker.Dashboard.Username, cfg.Broker.Dashboard.PasswordHash = "ops", hash
	d := startDaemon(t, cfg)
	twoGateways(t, d)
	key := testenv.NewKey(t).PublicKey().String()
	post(t, d, "v2", `{"domain":"ffmuc_welt","public_key":"`+key+`"}`)
	auth := network.Headers{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte("ops:s3cret"))}
	p := openPage(t, "http://"+d.HTTPAddr()+"/", chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
			return err
		}
		_, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: auth})
		return err
	}))
	p.waitFor("key search offered", `!document.querySelector("#key-search").hidden`)
	search := func(k string) {
		p.run("search "+k, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.querySelector("#key-input").value = %q;
				document.querySelector("#key-form").requestSubmit()`, k))(ctx, tg)
			return err
		}))
	}
	search(key)
	p.waitFor("key found", `!document.querySelector("#key-result").hidden &&
		document.querySelector("#key-result tbody").textContent.includes("ffmuc_welt")`)
	row := p.text("#key-result tbody tr")
	for _, want := range []string{"ffmuc_welt", "yes", "gw0"} {
		if !strings.Contains(row, want) {
			t.Errorf("result row %q lacks %q", row, want)
		}
	}
	p.checkProblems()
	search("not-a-key")
	p.waitFor("reason shown", `document.querySelector("#key-result").hidden &&
		document.querySelector("#key-message").textContent.includes("not a WireGuard public key")`)
	for _, problem := range p.problems.take() { // the 400 asked for, and Chromium's console line of it
		if !strings.Contains(problem, "key=not-a-key") {
			t.Errorf("page problem: %s", problem)
		}
	}
}
