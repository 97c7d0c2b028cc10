package worker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// Sync asks the loop to read domain's device on its next pass: peers found there join the desired state (their
// grace period starts now), and missing routes or FDB entries are restored. With sweep, the pass also removes
// stale peers.
func (a *Agent) Sync(domain string, sweep bool) { a.in.sync(domain, sweep) }

// SyncAll is Sync for every domain.
func (a *Agent) SyncAll(sweep bool) {
	for _, d := range a.Domains() {
		a.Sync(d, sweep)
	}
}

// RunLoop runs passes until ctx ends: whenever keys or sync requests arrive, and when a failed key is due again.
func (a *Agent) RunLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := a.pass()
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(max(next.Sub(a.opts.Now()), time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-a.in.wake:
		case <-timer.C:
		}
	}
}

// pass takes what arrived, brings it into the desired state and, for every domain that changed, was asked to
// sync or has a retry due, diffs and applies. It returns the earliest retry time (zero: none).
func (a *Agent) pass() time.Time {
	msgs, syncs := a.in.take()
	now := a.opts.Now()
	dirty := map[string]map[string]bool{} // domain → keys that arrived

	for _, m := range msgs {
		ds := a.domains[m.domain]
		if dirty[m.domain] == nil {
			dirty[m.domain] = map[string]bool{}
		}
		if m.revoke {
			delete(ds.want, m.key)
			delete(ds.received, m.key)
			delete(ds.failures, m.key)
			if a.white[m.key] {
				// The operator's peer (a supernode): like the sweep, a revocation leaves it on the device.
				a.log.Info("revoked key is whitelisted, peer left on the device", "domain", m.domain, "key", m.key)
			} else {
				ds.revoked[m.key] = true
			}
			dirty[m.domain][m.key] = true
			continue
		}
		delete(ds.revoked, m.key) // registered again after the revocation: wanted again
		// A replayed key already wanted keeps its provisioning time: a replay is not a registration.
		if _, ok := ds.want[m.key]; !ok || !m.replay {
			w := ds.want[m.key]
			w.Provisioned = m.at
			if !m.replay {
				w.RetryAt = time.Time{} // a node registering again is worth a try now
			}
			ds.want[m.key] = w
		}
		if _, ok := ds.received[m.key]; !ok {
			ds.received[m.key] = m.at
		}
		dirty[m.domain][m.key] = true
	}
	for d, sweep := range syncs {
		ds := a.domains[d]
		ds.needRead, ds.needSweep, ds.readRetry = true, ds.needSweep || sweep, time.Time{}
	}
	var next time.Time
	for _, d := range a.Domains() {
		ds := a.domains[d]
		a.m.desired.WithLabelValues(d).Set(float64(len(ds.want)))
		if known, err := a.probed(d); known && err != nil {
			// Not ready (an interface missing, no permission): trying would only fail. The keys wait in the
			// desired state; CheckReady wakes the loop when the domain is ready.
			ds.blocked = true
			continue
		}
		if ds.blocked {
			a.unblock(ds)
		}
		retry := !ds.nextRetry.IsZero() && !ds.nextRetry.After(now)
		read := ds.needRead && !ds.readRetry.After(now)
		if len(dirty[d]) > 0 || retry || read {
			a.reconcile(ds, now, dirty[d], retry)
		}
		for _, t := range []time.Time{ds.nextRetry, ds.readRetry} {
			if !t.IsZero() && (next.IsZero() || t.Before(next)) {
				next = t
			}
		}
		a.m.desired.WithLabelValues(d).Set(float64(len(ds.want)))
		a.m.pending.WithLabelValues(d).Set(float64(len(ds.failures)))
	}
	return next
}

// unblock readies a domain that was not ready for its next diff: the device is read, and every wanted key is
// tried at once, whatever delay its failures while the domain was not ready had earned it.
func (a *Agent) unblock(ds *domainState) {
	ds.blocked = false
	ds.needRead, ds.readRetry, ds.readFailures = true, time.Time{}, 0
	for k, w := range ds.want {
		if !w.RetryAt.IsZero() {
			w.RetryAt = time.Time{}
			ds.want[k] = w
		}
	}
	clear(ds.failures)
	ds.nextRetry = time.Time{}
}

// reconcile runs one domain's pass: read the device if asked, diff, apply. After a read the whole domain is
// diffed; otherwise only the keys that arrived and, if retry, the failed ones, so that a burst of keys costs
// each pass what it brings and not the size of the domain.
func (a *Agent) reconcile(ds *domainState, now time.Time, arrived map[string]bool, retry bool) {
	log := a.log.With("domain", ds.name)
	sweep, full := false, false
	if ds.needRead && !ds.readRetry.After(now) {
		if err := a.read(ds, now); err != nil {
			// Without a fresh read there are no handshakes to judge: the sweep waits for the next good read.
			ds.readFailures++
			ds.readRetry = now.Add(min(a.opts.RetryDelay<<min(ds.readFailures-1, 20), time.Minute))
			a.m.dpErrors.WithLabelValues("read").Inc()
			log.Warn("read device, will retry", "retry_at", ds.readRetry, "err", err)
		} else {
			sweep, full = ds.needSweep, true
			ds.needRead, ds.needSweep, ds.readFailures, ds.readRetry = false, false, 0, time.Time{}
		}
	}
	want, have := ds.want, ds.have
	if !full {
		want, have = map[string]Want{}, map[string]Have{}
		pick := func(k string) {
			if w, ok := ds.want[k]; ok {
				want[k] = w
				if h, ok := ds.have[k]; ok {
					have[k] = h
				}
			}
		}
		for k := range arrived {
			pick(k)
		}
		if retry {
			for k := range ds.failures {
				pick(k)
			}
		}
	}
	plan := Diff(want, have, Policy{Now: now, StaleTimeout: a.opts.StaleTimeout, Grace: a.opts.Grace,
		Whitelist: a.white, Sweep: sweep})
	for _, k := range plan.Forget {
		delete(ds.want, k)
		delete(ds.have, k)
		delete(ds.received, k)
		delete(ds.failures, k)
		log.Warn("giving up on key: it never reached the device", "key", k)
	}
	a.add(ds, plan.Add, log)
	a.remove(ds, plan.Remove, log)
	a.removeRevoked(ds, log)
	for k := range arrived {
		// A key registered again while in place was never applied: its receipt must not time a later repair.
		if h := ds.have[k]; h.Peer && h.Route && h.FDB {
			delete(ds.received, k)
		}
	}
	if sweep {
		log.Info("sweep", "peers", len(ds.have)+len(plan.Remove), "removed", len(plan.Remove),
			"deferred", plan.Deferred, "whitelisted", plan.Kept)
	}
	ds.nextRetry = time.Time{}
	for k := range ds.failures {
		w, wanted := ds.want[k]
		if h := ds.have[k]; !wanted || (h.Peer && h.Route && h.FDB) {
			// In place after all (a device read found it so) or no longer wanted: nothing is left to retry, and
			// a retry time in the past would make every pass ask for the next one at once.
			delete(ds.failures, k)
			delete(ds.received, k)
			if wanted {
				w.RetryAt = time.Time{}
				ds.want[k] = w
			}
			continue
		}
		if ds.nextRetry.IsZero() || w.RetryAt.Before(ds.nextRetry) {
			ds.nextRetry = w.RetryAt
		}
	}
	if len(ds.revoked) > 0 { // a removal failed: try again after the first retry delay
		if t := now.Add(a.opts.RetryDelay); ds.nextRetry.IsZero() || t.Before(ds.nextRetry) {
			ds.nextRetry = t
		}
	}
}

// removeRevoked removes the peers, routes and FDB entries of revoked keys from the device. A key the device is
// known not to have costs nothing; a removal that fails stays in ds.revoked for the next pass.
func (a *Agent) removeRevoked(ds *domainState, log *slog.Logger) {
	removed := 0
	for k := range ds.revoked {
		h, known := ds.have[k]
		if ds.read && !known {
			delete(ds.revoked, k) // not on the device (a read would have found it)
			continue
		}
		if err := a.dp.RemovePeer(ds.link, k); err != nil {
			a.m.dpErrors.WithLabelValues("remove").Inc()
			log.Warn("remove revoked peer failed, will retry", "key", k, "err", err)
			continue
		}
		delete(ds.revoked, k)
		delete(ds.have, k)
		delete(ds.want, k)
		if h.Peer || !ds.read {
			a.m.revoked.WithLabelValues(ds.name).Inc()
			log.Info("revoked peer removed", "key", k)
			removed++
		}
	}
	a.count(func(s *Stats) { s.Removed += removed })
}

// read replaces what the loop believes the device has with what it reports, and adopts peers it did not know,
// except whitelisted ones.
func (a *Agent) read(ds *domainState, now time.Time) error {
	dev, err := a.dp.Device(ds.link)
	if err != nil {
		return err
	}
	fw, err := a.dp.Forwarding(ds.link)
	if err != nil {
		return err
	}
	routes := make(map[[16]byte]bool, len(fw.Routes))
	for _, r := range fw.Routes {
		routes[r.As16()] = true
	}
	fdb := make(map[[16]byte]bool, len(fw.FDB))
	for _, f := range fw.FDB {
		fdb[f.As16()] = true
	}
	have := make(map[string]Have, len(dev.Peers))
	for _, p := range dev.Peers {
		addr := dataplane.AllowedIP(p.PublicKey).Addr().As16()
		have[p.PublicKey] = Have{Peer: true, Route: routes[addr], FDB: fdb[addr], LastHandshake: p.LastHandshake}
		if _, ok := ds.want[p.PublicKey]; !ok && !a.white[p.PublicKey] && !ds.revoked[p.PublicKey] {
			// Found on the device: WireGuard keeps no creation time, so its grace starts when the worker first
			// sees it (at start: the worker's start). A whitelisted peer that no registration brought is the
			// operator's (a supernode, say): it is left as it is, and the sweep keeps it.
			since := now
			if !ds.read {
				since = a.started
			}
			ds.want[p.PublicKey] = Want{Provisioned: since}
		}
	}
	ds.have, ds.read = have, true
	a.m.peers.WithLabelValues(ds.name).Set(float64(len(dev.Peers)))
	return nil
}

// add applies keys in one Dataplane call and records, per key, what is now in place; failed keys wait a doubling
// delay before the next pass tries them again.
func (a *Agent) add(ds *domainState, keys []string, log *slog.Logger) {
	if len(keys) == 0 {
		return
	}
	err := a.dp.AddPeers(ds.link, keys)
	failed := map[string]*dataplane.PeerError{}
	var pe *dataplane.PeerError
	for _, e := range flatten(err) {
		if errors.As(e, &pe) {
			if _, ok := failed[pe.Key]; !ok {
				failed[pe.Key] = pe
			}
			h := ds.have[pe.Key]
			switch pe.Step {
			case "peer":
				h = Have{LastHandshake: h.LastHandshake}
			case "route":
				h.Route = false
			case "fdb":
				h.FDB = false
			}
			ds.have[pe.Key] = h
			a.m.dpErrors.WithLabelValues(pe.Step).Inc()
		}
	}
	if err != nil && len(failed) == 0 { // a failure not about any one key: all of them failed
		for _, k := range keys {
			failed[k] = &dataplane.PeerError{Key: k, Step: "peer", Err: err}
		}
		a.m.dpErrors.WithLabelValues("peer").Inc()
	}
	now := a.opts.Now()
	applied := 0
	for _, k := range keys {
		if pe := failed[k]; pe != nil {
			n := ds.failures[k] + 1
			ds.failures[k] = n
			w := ds.want[k]
			w.RetryAt = now.Add(min(a.opts.RetryDelay<<min(n-1, 20), maxRetryDelay))
			ds.want[k] = w
			log.Warn("apply key failed, will retry", "key", k, "attempt", n, "retry_at", w.RetryAt, "err", pe)
			continue
		}
		h := ds.have[k]
		ds.have[k] = Have{Peer: true, Route: true, FDB: true, LastHandshake: h.LastHandshake}
		delete(ds.failures, k)
		if w := ds.want[k]; !w.RetryAt.IsZero() {
			w.RetryAt = time.Time{}
			ds.want[k] = w
		}
		if at, ok := ds.received[k]; ok {
			a.m.latency.Observe(now.Sub(at).Seconds())
			delete(ds.received, k)
		}
		applied++
	}
	a.m.applied.Add(float64(applied))
	a.count(func(s *Stats) { s.Applied += applied; s.Failed += len(failed) })
	if applied > 0 {
		log.Debug("peers applied", "count", applied)
	}
}

// remove removes stale peers; a failed removal stays on the device for the next sweep.
func (a *Agent) remove(ds *domainState, rs []Removal, log *slog.Logger) {
	removed := 0
	for _, r := range rs {
		if err := a.dp.RemovePeer(ds.link, r.Key); err != nil {
			a.m.dpErrors.WithLabelValues("remove").Inc()
			log.Warn("remove peer failed, the next sweep retries it", "key", r.Key, "err", err)
			continue
		}
		delete(ds.have, r.Key)
		delete(ds.want, r.Key)
		delete(ds.received, r.Key)
		delete(ds.failures, r.Key)
		a.m.removals.WithLabelValues(ds.name, r.Reason).Inc()
		removed++
	}
	a.count(func(s *Stats) { s.Removed += removed })
}

// flatten lists the leaves of a tree of joined errors.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}
