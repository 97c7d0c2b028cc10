package worker

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestDiff(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	all := Have{Peer: true, Route: true, FDB: true}
	hs := func(d time.Duration) Have { h := all; h.LastHandshake = ago(d); return h }
	policy := Policy{Now: now, StaleTimeout: 3 * time.Hour, Grace: 10 * time.Minute, Whitelist: map[string]bool{"W": true}}
	sweep := policy
	sweep.Sweep = true
	for _, tt := range []struct {
		name string
		want map[string]Want
		have map[string]Have
		p    Policy
		plan Plan
	}{
		{"nothing", nil, nil, policy, Plan{}},
		{"new keys are added", map[string]Want{"B": {Provisioned: now}, "A": {Provisioned: now}}, nil, policy,
			Plan{Add: []string{"A", "B"}}},
		{"in place: nothing to do", map[string]Want{"A": {Provisioned: now}}, map[string]Have{"A": all}, policy, Plan{}},
		{"a missing route or fdb entry is added again",
			map[string]Want{"A": {}, "B": {}, "C": {}},
			map[string]Have{"A": {Peer: true, FDB: true}, "B": {Peer: true, Route: true}, "C": all},
			policy, Plan{Add: []string{"A", "B"}}},
		{"a failed key waits for its retry time",
			map[string]Want{"A": {Provisioned: now, RetryAt: now.Add(2 * time.Second)}, "B": {Provisioned: now, RetryAt: now.Add(time.Second)}, "C": {Provisioned: now, RetryAt: now}},
			nil, policy, Plan{Add: []string{"C"}}},
		{"a key that never reached the device in StaleTimeout is forgotten",
			map[string]Want{"A": {Provisioned: ago(3 * time.Hour), RetryAt: now.Add(time.Minute)}, "B": {Provisioned: ago(3*time.Hour - time.Second)}},
			nil, policy, Plan{Add: []string{"B"}, Forget: []string{"A"}}},
		{"no sweep without fresh handshakes", map[string]Want{"A": {Provisioned: ago(time.Hour)}},
			map[string]Have{"A": {Peer: true, Route: true, FDB: true}}, policy, Plan{}},
		{"stale is inclusive",
			map[string]Want{"A": {Provisioned: ago(5 * time.Hour)}, "B": {Provisioned: ago(5 * time.Hour)}},
			map[string]Have{"A": hs(3 * time.Hour), "B": hs(3*time.Hour - time.Second)},
			sweep, Plan{Remove: []Removal{{"A", "stale"}}}},
		{"never handshaked past the grace",
			map[string]Want{"A": {Provisioned: ago(10 * time.Minute)}, "B": {Provisioned: ago(10*time.Minute - time.Second)}},
			map[string]Have{"A": all, "B": all},
			sweep, Plan{Remove: []Removal{{"A", "never-handshaked"}}, Deferred: 1}},
		{"SPEC 4.9(3): a recently provisioned peer is deferred even with an old handshake",
			map[string]Want{"A": {Provisioned: ago(time.Minute)}},
			map[string]Have{"A": hs(4 * time.Hour)},
			sweep, Plan{Deferred: 1}},
		{"whitelisted peers stay",
			map[string]Want{"W": {Provisioned: ago(5 * time.Hour)}},
			map[string]Have{"W": hs(5 * time.Hour)},
			sweep, Plan{Kept: 1}},
		{"a device peer not wanted counts as provisioned now", nil,
			map[string]Have{"X": {Peer: true}}, sweep, Plan{Deferred: 1}},
		{"a peer being removed is not re-added",
			map[string]Want{"A": {Provisioned: ago(5 * time.Hour)}},
			map[string]Have{"A": {Peer: true, LastHandshake: ago(4 * time.Hour)}},
			sweep, Plan{Remove: []Removal{{"A", "stale"}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := Diff(tt.want, tt.have, tt.p)
			if diff := cmp.Diff(tt.plan, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}
