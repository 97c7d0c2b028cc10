package broker

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// Sources of a revocation, the source label of wgkex_broker_revocations_total.
const (
	// RevokeAdmin is an operator's `wgkex-broker keys revoke`.
	RevokeAdmin = "admin"
	// RevokeBlocklist is a key the blocklist now blocks (at start, or when the file changed).
	RevokeBlocklist = "blocklist"
	// RevokePeer is a revocation another broker on the MQTT server made (broker/cluster).
	RevokePeer = "peer"
)

// Revocation is what a revocation did in one domain.
type Revocation struct {
	Domain string    `json:"domain"`
	At     time.Time `json:"at"`
	// Stored reports whether the key was stored there (and is now removed).
	Stored bool `json:"stored"`
}

// Revoke removes key from domain, or, with domain "", from every domain where it is stored (every configured
// domain when none stores it), and publishes the revocation on wgkex/revoke/{domain}, on which every gateway
// removes its peer, route and FDB entry. The store keeps a tombstone, so that no replay, catch-up or late
// registration from before now brings it back; a registration after now stores it again unless the key lists
// refuse it. source is RevokeAdmin or RevokeBlocklist.
func (b *Broker) Revoke(key, domain, source string) ([]Revocation, error) {
	if err := wire.ValidateKey(key); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	var domains []string
	switch {
	case domain != "" && !b.domain[domain]:
		return nil, fmt.Errorf("%w: unknown domain %q", ErrBadRequest, domain)
	case domain != "":
		domains = []string{domain}
	default:
		stored, err := b.storedIn(key)
		if err != nil {
			return nil, err
		}
		domains = stored
		if len(domains) == 0 {
			domains = b.opts.Domains
		}
	}
	at := b.opts.Now()
	var out []Revocation
	var errs []error
	for _, d := range domains {
		found, err := b.st.RevokeKey(d, key, at)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: revoke in %s: %w", ErrStore, d, err))
			continue
		}
		b.meters.revocations.WithLabelValues(d, source).Inc()
		b.log.Info("key revoked", "key", key, "domain", d, "source", source, "stored", found)
		out = append(out, Revocation{Domain: d, At: at, Stored: found})
		p := wire.Revocation{Key: key, At: at, By: b.opts.ID}.Marshal()
		// The tombstone is durable: a gateway that misses this message gets the revocation with its next replay.
		if err := b.pub.Publish(wire.RevokeTopic(d), p, false, 1); err != nil {
			b.publishFailed("publish revocation", "domain", d, "err", err)
		}
	}
	return out, errors.Join(errs...)
}

// storedIn returns the configured domains in which key is stored, in order.
func (b *Broker) storedIn(key string) ([]string, error) {
	var out []string
	for _, d := range b.opts.Domains {
		_, err := b.st.Key(d, key)
		switch {
		case err == nil:
			out = append(out, d)
		case !errors.Is(err, ErrNotFound):
			return nil, fmt.Errorf("%w: look up key in %s: %w", ErrStore, d, err)
		}
	}
	return out, nil
}

// ApplyRevocation records a revocation another broker made (broker/cluster): the key is removed from domain if
// last seen at or before at, and the tombstone kept. A time after this broker's now is taken as now: the other
// broker's clock is ahead, and its revocation must not void the registrations still to come here. It publishes
// nothing: the workers got the revocation from the broker that made it, or get it with their next replay. live
// marks one that arrived as it was made (counted always) rather than with a catch-up (counted when it removed a
// key).
func (b *Broker) ApplyRevocation(domain, key string, at time.Time, live bool) {
	if !b.domain[domain] {
		b.log.Warn("dropped revocation for unknown domain", "domain", domain)
		return
	}
	if err := wire.ValidateKey(key); err != nil {
		b.log.Warn("dropped revocation", "domain", domain, "err", err)
		return
	}
	if now := b.opts.Now(); at.After(now) {
		at = now
	}
	found, err := b.st.RevokeKey(domain, key, at)
	if err != nil {
		b.log.Error("record revocation of another broker", "domain", domain, "err", err)
		return
	}
	if live || found {
		b.meters.revocations.WithLabelValues(domain, RevokePeer).Inc()
		b.log.Info("key revoked", "key", key, "domain", domain, "source", RevokePeer, "stored", found)
	}
}

// RevokeBlocked revokes, in every domain where it is stored, each of keys that the key lists now refuse there
// (the blocklist, at start and whenever it changes).
func (b *Broker) RevokeBlocked(keys []string) {
	n := 0
	for _, k := range keys {
		domains, err := b.storedIn(k)
		if err != nil {
			b.log.Error("look up blocked key", "err", err)
			continue
		}
		for _, d := range domains {
			if b.opts.Keys != nil {
				if _, refused := b.opts.Keys.Refuse(d, k); !refused {
					continue
				}
			}
			if _, err := b.Revoke(k, d, RevokeBlocklist); err != nil {
				b.log.Error("revoke blocked key", "key", k, "domain", d, "err", err)
				continue
			}
			n++
		}
	}
	if n > 0 {
		b.log.Info("blocked keys revoked", "revocations", n)
	}
}

// KeyInfo is what the broker knows of a key in one domain.
type KeyInfo struct {
	Domain string `json:"domain"`
	// Stored reports whether the key is stored in the domain; FirstSeen, LastSeen and Gateway are set then.
	Stored    bool      `json:"stored"`
	FirstSeen time.Time `json:"first_seen,omitzero"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	// Gateway is the gateway API v2 last chose for the node; empty after API v1.
	Gateway string `json:"gateway,omitempty"`
	// Gateways are the online gateways serving the domain: every one of them receives every key of the domain.
	Gateways []string `json:"gateways,omitempty"`
	// RevokedAt is when the key was last revoked in the domain, while the tombstone is kept; zero if never.
	RevokedAt time.Time `json:"revoked_at,omitzero"`
}

// ShowKey returns what the broker knows of key in every domain where it is stored or was revoked; nil when none.
func (b *Broker) ShowKey(key string) ([]KeyInfo, error) {
	if err := wire.ValidateKey(key); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	var out []KeyInfo
	for _, d := range b.opts.Domains {
		r, err := b.st.Key(d, key)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%w: look up key in %s: %w", ErrStore, d, err)
		}
		at, revoked, rerr := b.st.RevokedAt(d, key)
		if rerr != nil {
			return nil, fmt.Errorf("%w: look up revocation in %s: %w", ErrStore, d, rerr)
		}
		if err != nil && !revoked {
			continue
		}
		info := KeyInfo{Domain: d, Stored: err == nil}
		if revoked {
			info.RevokedAt = at
		}
		if info.Stored {
			info.FirstSeen, info.LastSeen, info.Gateway = r.FirstSeen, r.LastSeen, r.Gateway
			info.Gateways = b.serving(d)
		}
		out = append(out, info)
	}
	return out, nil
}

// serving returns the online workers serving domain (their endpoint known, the domain not withdrawn), by name.
func (b *Broker) serving(domain string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for name, w := range b.workers {
		_, data := w.Data[domain]
		if n, ok := w.Peers[domain]; w.Online && data && (!ok || n >= 0) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}
