package worker

import (
	"errors"
	"time"
)

// SweepResult counts what one sweep of a domain did.
type SweepResult struct {
	Peers    int // peers on the device
	Stale    int // removed: last handshake at least StaleTimeout ago
	Never    int // removed: never handshaked and past the grace period
	Kept     int // whitelisted stale peers kept
	Failed   int // removals that failed (finished by a later sweep)
	Deferred int // never-handshaked peers still within their grace period
}

// Sweep removes the domain's stale peers (SPEC §4.5, §4.9): a peer whose last handshake is StaleTimeout or older
// (inclusive), or that never handshaked and was provisioned (or found at start) Grace or longer ago. Whitelisted
// keys stay. Each removal goes FDB entry → route → peer; a failed one is counted and the sweep goes on. The
// domain is locked against provisioning for the whole sweep, so a key re-registered meanwhile is either applied
// before the scan (and within its grace) or after the removal (and back).
func (a *Agent) Sweep(domain string) (SweepResult, error) {
	link := a.link(domain)
	lock := a.locks[domain]
	lock.Lock()
	defer lock.Unlock()
	dev, err := a.dp.Device(link)
	if err != nil {
		return SweepResult{}, err
	}
	now := a.opts.Now()
	res := SweepResult{Peers: len(dev.Peers)}
	a.provMu.Lock()
	prov := a.provisioned[domain]
	var remove []string
	for _, p := range dev.Peers {
		switch {
		case p.LastHandshake.IsZero():
			since, ok := prov[p.PublicKey]
			if !ok || since.Before(a.started) {
				since = a.started
			}
			if now.Sub(since) < a.opts.Grace {
				res.Deferred++
				continue
			}
			if a.white[p.PublicKey] {
				res.Kept++
				continue
			}
			res.Never++
		case now.Sub(p.LastHandshake) >= a.opts.StaleTimeout:
			if a.white[p.PublicKey] {
				res.Kept++
				continue
			}
			res.Stale++
		default:
			continue
		}
		remove = append(remove, p.PublicKey)
	}
	// Forget grace records that no longer protect anything.
	for k, t := range prov {
		if now.Sub(t) >= a.opts.Grace {
			delete(prov, k)
		}
	}
	a.provMu.Unlock()

	var errs []error
	for _, k := range remove {
		if err := a.dp.RemovePeer(link, k); err != nil {
			res.Failed++
			errs = append(errs, err)
			continue
		}
		a.provMu.Lock()
		delete(prov, k)
		a.provMu.Unlock()
	}
	a.statsMu.Lock()
	a.stats.Removed += len(remove) - res.Failed
	a.statsMu.Unlock()
	return res, errors.Join(errs...)
}

// sweepAll sweeps every domain and logs the outcome; an error in one domain does not stop the others.
func (a *Agent) sweepAll() {
	for _, d := range a.Domains() {
		res, err := a.Sweep(d)
		log := a.log.With("domain", d, "peers", res.Peers, "stale", res.Stale, "never_handshaked", res.Never,
			"whitelisted", res.Kept, "deferred", res.Deferred, "failed", res.Failed)
		switch {
		case err != nil && res.Peers == 0:
			log.Warn("sweep skipped", "err", err)
		case err != nil:
			log.Warn("sweep finished with failures, the next sweep retries them", "err", err)
		case res.Stale+res.Never > 0:
			log.Info("stale peers removed")
		default:
			log.Debug("sweep found nothing stale")
		}
	}
}

// sweepEvery sweeps all domains every interval until done is closed.
func (a *Agent) sweepEvery(interval time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			a.sweepAll()
		}
	}
}
