package worker

import (
	"sort"
	"time"
)

// Want is one key a domain should have as a peer.
type Want struct {
	// Provisioned is when the key was last registered (a live message; a replay only for a key not yet wanted),
	// or when the worker first saw the peer on the device. It starts the handshake grace period (SPEC §4.9).
	Provisioned time.Time
	// RetryAt, when set, holds a key whose last apply failed back until then.
	RetryAt time.Time
}

// Have is what the device reports about one key: the peer with its last handshake (zero: never), its /128 route
// and its FDB entry.
type Have struct {
	Peer, Route, FDB bool
	LastHandshake    time.Time
}

// Policy is what a diff needs besides the two states.
type Policy struct {
	Now          time.Time
	StaleTimeout time.Duration // a peer whose last handshake is this old or older is stale
	Grace        time.Duration // a peer provisioned less than this long ago is never removed
	Whitelist    map[string]bool
	// Sweep selects stale peers. Only a pass whose Have was just read from the device knows the handshakes.
	Sweep bool
}

// Removal is a peer to remove, with the reason.
type Removal struct {
	Key    string
	Reason string // "stale" or "never-handshaked"
}

// Plan is what one pass does to a domain.
type Plan struct {
	// Add holds the wanted keys whose peer, route or FDB entry is missing (all three are applied; each is
	// idempotent), sorted.
	Add []string
	// Remove holds the stale peers, sorted by key.
	Remove []Removal
	// Forget holds wanted keys that never got onto the device and whose registration is StaleTimeout old: they
	// would be stale by now, so the worker stops trying (a new registration brings them back).
	Forget []string
	// Deferred counts peers that would be stale but were provisioned within the grace period; Kept counts
	// whitelisted peers that would be stale.
	Deferred, Kept int
}

// Diff compares what a domain should have with what its device has. It is pure: same input, same plan.
//
// A wanted key missing anything on the device is added, unless it is held back after a failure (RetryAt) or has
// waited StaleTimeout since its registration without ever reaching the device (forgotten). With p.Sweep, every
// peer on the device is checked (SPEC §4.5, §4.9): whitelisted peers stay; a peer provisioned within Grace stays
// (deferred), whatever its handshake; otherwise a peer that never handshaked, or whose last handshake is
// StaleTimeout or older (inclusive), is removed. A peer on the device that is not wanted counts as provisioned
// now (the caller adopts device peers into Want before diffing).
func Diff(want map[string]Want, have map[string]Have, p Policy) Plan {
	var plan Plan
	removed := map[string]bool{}
	if p.Sweep {
		for k, h := range have {
			if !h.Peer {
				continue
			}
			var reason string
			switch {
			case h.LastHandshake.IsZero():
				reason = "never-handshaked"
			case p.Now.Sub(h.LastHandshake) >= p.StaleTimeout:
				reason = "stale"
			default:
				continue
			}
			if p.Whitelist[k] {
				plan.Kept++
				continue
			}
			if w, ok := want[k]; !ok || p.Now.Sub(w.Provisioned) < p.Grace {
				plan.Deferred++
				continue
			}
			removed[k] = true
			plan.Remove = append(plan.Remove, Removal{Key: k, Reason: reason})
		}
	}
	for k, w := range want {
		h := have[k]
		if removed[k] || (h.Peer && h.Route && h.FDB) {
			continue
		}
		if !h.Peer && p.Now.Sub(w.Provisioned) >= p.StaleTimeout {
			plan.Forget = append(plan.Forget, k)
			continue
		}
		if w.RetryAt.After(p.Now) { // the loop schedules its next pass for the earliest of these
			continue
		}
		plan.Add = append(plan.Add, k)
	}
	sort.Strings(plan.Add)
	sort.Strings(plan.Forget)
	sort.Slice(plan.Remove, func(i, j int) bool { return plan.Remove[i].Key < plan.Remove[j].Key })
	return plan
}
