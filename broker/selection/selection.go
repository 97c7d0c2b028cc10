// Package selection chooses the gateway a node should use: the online gateway whose peer count lies furthest
// below its weighted share (SPEC §3), preferring a requested location. It is pure: data in, answer out.
package selection

import "sort"

// Gateway is what the broker knows of one worker when it chooses.
type Gateway struct {
	Name string
	// Weight is the configured weight; it counts only when Configured.
	Weight int
	// Configured reports whether the worker is listed under workers: in the configuration. Unconfigured workers
	// weigh 1 against the configured total.
	Configured bool
	Location   string
	// Online is the worker's status (≥ 1 means online).
	Online bool
	// Peers maps a domain to the worker's connected_peers metric; -1 or absent means the domain is offline there.
	Peers map[string]int
	// NoEndpoint holds the domains the gateway reports a metric for but has no endpoint published in (never, or
	// withdrawn): a node could not be told where to go, so it is no candidate there.
	NoEndpoint map[string]bool
}

// Choice is the chosen gateway, how far its peer count lies from its target, and its peer count.
type Choice struct {
	Name  string
	Diff  float64
	Peers int
}

// Choose picks the gateway for a node in domain. totalWeight is the sum of the configured weights (floored at 1).
// A gateway is a candidate when it is online, its metric for domain is ≥ 0 and its endpoint there is known. Its peers are summed over all its
// domains; its target is its relative weight times the peers of all online gateways. The candidate with the lowest
// peers − target wins, ties going to the lower name. With a location, only candidates there are considered, unless
// there are none, in which case all are. ok is false when no gateway is a candidate.
func Choose(gws []Gateway, totalWeight int, domain, location string) (c Choice, ok bool) {
	if location != "" {
		if c, ok := choose(gws, totalWeight, domain, location); ok {
			return c, true
		}
	}
	return choose(gws, totalWeight, domain, "")
}

func choose(gws []Gateway, totalWeight int, domain, location string) (Choice, bool) {
	if totalWeight < 1 {
		totalWeight = 1
	}
	total := 0
	for _, g := range gws {
		if g.Online {
			total += peerCount(g)
		}
	}
	var cands []Choice
	for _, g := range gws {
		if !g.Online || location != "" && g.Location != location {
			continue
		}
		if n, ok := g.Peers[domain]; !ok || n < 0 || g.NoEndpoint[domain] {
			continue
		}
		w := 1
		if g.Configured {
			w = g.Weight
		}
		peers := peerCount(g)
		target := float64(w) / float64(totalWeight) * float64(total)
		cands = append(cands, Choice{Name: g.Name, Diff: float64(peers) - target, Peers: peers})
	}
	if len(cands) == 0 {
		return Choice{}, false
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].Diff != cands[j].Diff {
			return cands[i].Diff < cands[j].Diff
		}
		return cands[i].Name < cands[j].Name
	})
	return cands[0], true
}

// peerCount sums a gateway's connected peers over all its domains, ignoring offline (-1) domains.
func peerCount(g Gateway) int {
	n := 0
	for _, p := range g.Peers {
		if p > 0 {
			n += p
		}
	}
	return n
}
