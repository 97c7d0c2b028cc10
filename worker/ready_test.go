package worker

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// TestNotReadyDomains: a domain whose changes are refused (no CAP_NET_ADMIN) or whose interfaces are missing is
// not ready; it is logged once per change with its reason and its gauge is 0; its keys wait, untried, in the
// desired state and are all applied at the pass after it became ready, a key that had failed before included
// (without waiting out its retry delay); a domain whose interface disappears is not ready again.
func TestNotReadyDomains(t *testing.T) {
	nord := dataplane.LinkFor("nord")
	fake := dataplane.NewFake(welt)
	var refuse atomic.Bool
	fake.Fail = func(step, _ string) error {
		if step == "probe" && refuse.Load() {
			return fmt.Errorf("wg-welt: %w", dataplane.ErrNotPermitted)
		}
		return nil
	}
	a, _ := newAgent(t, fake, nil)
	log, logs := testenv.CaptureLogger(t)
	a.log = log

	// Before any probe the loop tries: nord's key fails and earns a retry delay.
	enqueue(t, a, "ffmuc_nord", keyC)
	a.pass()
	if _, failed := a.domains["ffmuc_nord"].failures[keyC]; !failed {
		t.Fatal("the key for the missing nord did not fail")
	}

	refuse.Store(true)
	a.CheckReady()
	a.CheckReady() // no change: nothing logged again
	if a.Ready("ffmuc_welt") || a.Ready("ffmuc_nord") {
		t.Fatal("a domain that cannot be served is ready")
	}
	for _, want := range []string{
		`level=WARN msg="domain not ready: not offered to nodes until it is" domain=ffmuc_welt reason="wg-welt: operation not permitted: run with CAP_NET_ADMIN"`,
		`level=WARN msg="domain not ready: not offered to nodes until it is" domain=ffmuc_nord reason="wg-nord: no such interface"`,
	} {
		if n := strings.Count(logs.String(), want); n != 1 {
			t.Errorf("logged %d times, want once: %s", n, want)
		}
	}
	for _, d := range []string{"ffmuc_welt", "ffmuc_nord"} {
		if v := gauge(t, a, d); v != 0 {
			t.Errorf("wgkex_worker_domain_ready{domain=%q} = %v, want 0", d, v)
		}
	}

	calls := len(fake.Log)
	enqueue(t, a, "ffmuc_welt", keyA, keyB)
	enqueue(t, a, "ffmuc_nord", keyC)
	a.pass()
	if len(fake.Log) != calls {
		t.Errorf("domains that are not ready were tried: %v", fake.Log[calls:])
	}
	if got := len(a.domains["ffmuc_welt"].want) + len(a.domains["ffmuc_nord"].want); got != 3 {
		t.Errorf("%d keys wanted, want 3 kept", got)
	}

	refuse.Store(false)
	fake.AddLink(nord)
	logs.Reset()
	a.CheckReady()
	if !a.Ready("ffmuc_welt") || !a.Ready("ffmuc_nord") {
		t.Fatal("domains not ready once they can be served")
	}
	if n := strings.Count(logs.String(), `level=INFO msg="domain ready"`); n != 2 {
		t.Errorf("%d domain ready lines, want 2:\n%s", n, logs)
	}
	a.pass() // same clock: keyC's earlier retry delay must not hold it back
	checkState(t, fake, lines(
		"wg-nord "+keyC+" peer route fdb",
		"wg-welt "+keyA+" peer route fdb",
		"wg-welt "+keyB+" peer route fdb",
	))
	if v := gauge(t, a, "ffmuc_nord"); v != 1 {
		t.Errorf("wgkex_worker_domain_ready{domain=\"ffmuc_nord\"} = %v, want 1", v)
	}

	fake.RemoveLink(nord)
	logs.Reset()
	a.CheckReady()
	if a.Ready("ffmuc_nord") || !strings.Contains(logs.String(), `domain=ffmuc_nord reason="wg-nord: no such interface"`) {
		t.Errorf("a removed interface left the domain ready:\n%s", logs)
	}
}

// gauge reads wgkex_worker_domain_ready for domain.
func gauge(t *testing.T, a *Agent, domain string) float64 {
	t.Helper()
	var m dto.Metric
	if err := a.m.ready.WithLabelValues(domain).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}
