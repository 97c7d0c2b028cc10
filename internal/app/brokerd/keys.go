package brokerd

import (
	"fmt"
	"slices"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/app/admin"
	"github.com/freifunkMUC/wgkex-go/store"
)

// keyAdmin is the key administration of the administration socket: lookups in the store and the worker state,
// revocations through the broker core.
type keyAdmin struct {
	st      *store.Store
	b       *broker.Broker
	domains []string
}

var _ admin.Keys = keyAdmin{}

func (k keyAdmin) ShowKey(key string) ([]broker.KeyInfo, error) { return k.b.ShowKey(key) }

func (k keyAdmin) RevokeKey(key, domain string) ([]broker.Revocation, error) {
	return k.b.Revoke(key, domain, broker.RevokeAdmin)
}

// ListKeys returns up to limit of the most recently seen keys of domain, or of every domain, with the gateway
// each was last sent to.
func (k keyAdmin) ListKeys(domain string, limit int) ([]admin.Key, error) {
	domains := k.domains
	if domain != "" {
		if !slices.Contains(k.domains, domain) {
			return nil, fmt.Errorf("%w: unknown domain %q", broker.ErrBadRequest, domain)
		}
		domains = []string{domain}
	}
	var out []admin.Key
	for _, d := range domains {
		recs, err := k.st.LatestKeys(d, limit)
		if err != nil {
			return nil, fmt.Errorf("list keys of %s: %w", d, err)
		}
		for _, r := range recs {
			out = append(out, admin.Key{Key: r.Key, Domain: d, FirstSeen: r.FirstSeen, LastSeen: r.LastSeen})
		}
	}
	slices.SortStableFunc(out, func(a, b admin.Key) int { return b.LastSeen.Compare(a.LastSeen) })
	if len(out) > limit {
		out = out[:limit]
	}
	for i := range out {
		// The whole record: one still in the write-ahead log is combined with the stored one (first seen).
		if r, err := k.st.Key(out[i].Domain, out[i].Key); err == nil {
			out[i].FirstSeen, out[i].Gateway = r.FirstSeen, r.Gateway
		}
	}
	return out, nil
}
