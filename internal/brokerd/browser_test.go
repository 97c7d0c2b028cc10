package brokerd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/google/go-cmp/cmp"

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
	case *page.EventJavascriptDialogOpening:
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

// gatewayRow is what a gateway's row of a domain table shows.
type gatewayRow struct {
	Location, Weight, Status, Peers, Share, Assigned string
	Offline                                          bool
}

// rowsJS reads the rows of a domain's gateway table.
const rowsJS = `(() => {
	const out = {};
	for (const tr of document.querySelectorAll('[data-domain=%q] tr[data-gateway]')) {
		const t = c => tr.querySelector('.' + c).firstChild.textContent;
		out[tr.dataset.gateway] = {Location: t('location'), Weight: t('weight'), Status: t('status'), Peers: t('peers'),
			Share: t('share'), Assigned: t('assigned'), Offline: tr.classList.contains('offline')};
	}
	return out;
})()`

// TestDashboardInChromium loads the status page of a real broker in headless Chromium before any gateway speaks,
// then feeds it two gateways over real MQTT: both show up with their numbers without a reload; a new metric and a
// gateway going offline show up without a reload; an endpoint that is HTML is shown as text; the brokers section
// stays hidden (alone on the embedded server); the page fits a phone's width. Any console error, exception, CSP
// violation or failed request fails the test. Screenshots at desktop and phone width are saved
// (WGKEX_UPDATE_DOCS=1 also copies the desktop one to docs/dashboard.png).
func TestDashboardInChromium(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		testenv.Skip(t, "chromium not installed (apt-get install chromium)")
	}
	d := startDaemon(t, dashConfig(t, filepath.Join(t.TempDir(), "state.db")))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
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
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	var problems pageProblems
	if err := chromedp.Listen(bctx, problems.listen); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	run := func(what string, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		if _, err := chromedp.Run(bctx, a); err != nil {
			t.Fatalf("%s: %v (page problems: %q)", what, err, problems.take())
		}
	}
	waitFor := func(what, expr string) {
		t.Helper()
		run(what, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			_, err := chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(45*time.Second))(ctx, tg)
			return chromedp.Void{}, err
		})
	}
	rows := func(domain string) map[string]gatewayRow {
		t.Helper()
		r, err := chromedp.Run(bctx, chromedp.Evaluate[map[string]gatewayRow](fmt.Sprintf(rowsJS, domain)))
		if err != nil {
			t.Fatalf("read rows: %v", err)
		}
		return r
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Evaluate[string](fmt.Sprintf("document.querySelector(%q).textContent", sel)))
		if err != nil {
			t.Fatalf("read %s: %v", sel, err)
		}
		return s
	}

	// First the page of a broker no gateway has spoken to yet; a marker set in it survives only if the page is
	// never reloaded.
	run("load", chromedp.Navigate("http://"+d.HTTPAddr()+"/"))
	waitFor("empty domains shown", `document.querySelectorAll('[data-domain="ffmuc_welt"] tr[data-gateway]').length === 2 &&
		[...document.querySelectorAll('[data-domain="ffmuc_welt"] .status')].every(s => s.textContent === "offline")`)
	run("mark", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[chromedp.Void](`window.wgkexNoReload = true`)(ctx, tg)
		return err
	}))

	gw4, gw5 := twoGateways(t, d)
	for range 3 {
		post(t, d, "v2", `{"domain":"ffmuc_welt","public_key":"`+testenv.NewKey(t).PublicKey().String()+`"}`)
	}
	post(t, d, "v1", `{"domain":"ffwert_city","public_key":"`+nodeKey+`"}`)
	post(t, d, "v1", `{"domain":"ffmuc_nowhere","public_key":"`+nodeKey+`"}`)

	waitFor("both gateways shown", `window.wgkexNoReload && document.querySelectorAll('[data-domain="ffmuc_welt"] tr.online').length === 2 &&
		document.querySelector("#reg-hour").textContent === "4"`)
	// Weights 30 and 10: shares of 75 % and 25 %. The first two v2 nodes go to gw05 (see TestMetrics); the third
	// finds both half a peer below their targets (25 of 25.5, 8 of 8.5) and goes to the lower name.
	want := map[string]gatewayRow{
		"gw04.in.ffmuc.net": {Location: "MUC", Weight: "30", Status: "online", Peers: "26", Share: "75.0 %", Assigned: "1"},
		"gw05.in.ffmuc.net": {Location: "Vienna", Weight: "10", Status: "online", Peers: "7", Share: "25.0 %", Assigned: "2"},
	}
	if diff := cmp.Diff(want, rows("ffmuc_welt")); diff != "" {
		t.Errorf("ffmuc_welt rows (-want +got):\n%s", diff)
	}
	if got := rows("ffwert_city"); len(got) != 1 || got["gw05.in.ffmuc.net"].Peers != "2" {
		t.Errorf("ffwert_city rows: %+v", got)
	}
	if hidden, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.querySelector("#brokers").hidden`)); err != nil || !hidden {
		t.Errorf("brokers section shown for a broker alone on its embedded server (%v)", err)
	}
	for sel, want := range map[string]string{"#mqtt-clients": "2", "#gateways-online": "2 / 2", "#reg-hour": "4"} {
		if got := text(sel); got != want {
			t.Errorf("%s shows %q, want %q", sel, got, want)
		}
	}
	if got := text(`#refused [data-reason="unknown_domain"] .num`); got != "1" {
		t.Errorf("refused unknown domain: %q", got)
	}

	gw4.peers(t, "ffmuc_welt", 40)
	waitFor("new metric shown", `window.wgkexNoReload && document.querySelector('[data-domain="ffmuc_welt"] tr[data-gateway="gw04.in.ffmuc.net"] .peers').textContent === "40"`)
	gw5.down(t)
	waitFor("offline gateway marked", `window.wgkexNoReload && document.querySelector('[data-domain="ffmuc_welt"] tr[data-gateway="gw05.in.ffmuc.net"]').classList.contains("offline")`)
	if r := rows("ffmuc_welt")["gw05.in.ffmuc.net"]; !r.Offline || r.Status != "offline" {
		t.Errorf("offline gateway shows %+v", r)
	}
	if got := text("#gateways-online"); got != "1 / 2" {
		t.Errorf("gateways online: %q", got)
	}
	waitFor("peer chart drawn", `document.querySelector("#peer-chart canvas") !== null && document.querySelector("#reg-chart canvas") !== null`)

	dir := artifacts(t)
	shot := func(name string, width, height int64, opts ...chromedp.EmulateViewportOption) []byte {
		t.Helper()
		run("resize to "+name, chromedp.EmulateViewport(width, height, opts...))
		// uPlot follows the window's resize event; wait until the chart fits the new width.
		waitFor("chart resized for "+name, `document.querySelector("#peer-chart .uplot").offsetWidth <= document.querySelector("#peer-chart").clientWidth`)
		b, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(dir, "dashboard-"+name+".png")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
		return b
	}
	desktop := shot("desktop", 1280, 900)
	shot("phone", 390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile)
	overflow, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
	if err != nil || overflow {
		t.Errorf("page is wider than a phone's screen (%v)", err)
	}
	if os.Getenv("WGKEX_UPDATE_DOCS") == "1" {
		if err := os.WriteFile("../../docs/dashboard.png", desktop, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A gateway (compromised, or just careless) whose endpoint is markup: shown as text, no element made of it,
	// no request for its image. (Worker names cannot carry it any more: the MQTT server accepts configured
	// workers only.)
	evil := `<img src=x onerror=alert(1)>`
	data := wire.WorkerData{ExternalAddress: evil, Port: 51830, PublicKey: gwKey, LinkAddress: "fe80::1"}
	gw4.client.Publish(t, wire.DataTopic(gw4.name, "ffwert_city"), string(data.Marshal()), 1, true)
	waitFor("markup endpoint shown", fmt.Sprintf(`[...document.querySelectorAll('[data-domain="ffwert_city"] td.endpoint')].some(td => td.textContent === %q)`, evil+":51830"))
	n, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll("main img").length`))
	if err != nil || n != 0 {
		t.Errorf("an endpoint became markup: %d img elements (%v)", n, err)
	}

	// A name as long as DNS allows, without a space to break at, still fits the phone's width.
	long := strings.Repeat(strings.Repeat("x", 62)+".", 4) + "example"
	data.ExternalAddress = long
	gw4.client.Publish(t, wire.DataTopic(gw4.name, "ffwert_city"), string(data.Marshal()), 1, true)
	waitFor("long endpoint shown", fmt.Sprintf(`[...document.querySelectorAll('[data-domain="ffwert_city"] td.endpoint')].some(td => td.textContent === %q)`, long+":51830"))
	overflow, err = chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
	if err != nil || overflow {
		t.Errorf("a long endpoint makes the page wider than a phone's screen (%v)", err)
	}
	shot("phone-long-endpoint", 390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile)

	if p := problems.take(); len(p) > 0 {
		t.Errorf("page problems:\n  %s", strings.Join(p, "\n  "))
	}
}
