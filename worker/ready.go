package worker

import (
	"sync"
	"time"
)

// readyInterval is how often the worker checks whether it can serve each domain.
const readyInterval = 5 * time.Second

// readiness is what the last probe found per domain: a nil error means the domain is ready.
type readiness struct {
	mu      sync.Mutex
	checked map[string]error // absent: not probed yet
}

// CheckReady probes every domain (Dataplane.Probe: both interfaces exist and the worker may change them) and
// records the answer. A change is logged once: a domain that can no longer be served (or cannot be, at the first
// check) with a warning naming the reason, again when the reason changes; a domain that became ready at Info,
// and the loop is woken to read its device and apply the keys that waited for it.
func (a *Agent) CheckReady() {
	for _, d := range a.Domains() {
		err := a.dp.Probe(a.link(d))
		a.ready.mu.Lock()
		old, known := a.ready.checked[d]
		if a.ready.checked == nil {
			a.ready.checked = map[string]error{}
		}
		a.ready.checked[d] = err
		a.ready.mu.Unlock()
		switch {
		case err != nil:
			a.m.ready.WithLabelValues(d).Set(0)
			if !known || old == nil || old.Error() != err.Error() {
				a.log.Warn("domain not ready: not offered to nodes until it is", "domain", d, "reason", err.Error())
			}
		default:
			a.m.ready.WithLabelValues(d).Set(1)
			if !known || old != nil {
				a.log.Info("domain ready", "domain", d)
				a.Sync(d, false)
			}
		}
	}
}

// Ready reports whether the last probe found domain ready (false before the first probe).
func (a *Agent) Ready(domain string) bool {
	known, err := a.probed(domain)
	return known && err == nil
}

// probed returns whether domain was probed and the last probe's answer.
func (a *Agent) probed(domain string) (bool, error) {
	a.ready.mu.Lock()
	defer a.ready.mu.Unlock()
	err, ok := a.ready.checked[domain]
	return ok, err
}
