package worker

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// TestRevokeLive: a revocation on wgkex/revoke/{domain} removes peer, route and FDB entry of the key, leaves the
// others, and a later registration of the key adds it again.
func TestRevokeLive(t *testing.T) {
	fake := dataplane.NewFake(welt)
	reg := prometheus.NewRegistry()
	a, c := newAgent(t, fake, reg)
	enqueue(t, a, "ffmuc_welt", keyA, keyB)
	a.pass()
	rev := wire.Revocation{Key: keyA, At: c.now()}.Marshal()
	a.HandleMessage(wire.RevokeTopic("ffmuc_welt"), rev)
	a.HandleMessage(wire.RevokeTopic("ffmuc_sued"), rev)          // not served: dropped
	a.HandleMessage(wire.RevokeTopic("ffmuc_welt"), []byte(keyB)) // a bare key is no revocation
	a.HandleMessage("wgkex/revoke/ffmuc_welt/x", rev)             // not a revocation topic
	a.pass()
	checkState(t, fake, lines("wg-welt "+keyB+" peer route fdb"))
	if n := testutil.ToFloat64(a.m.revoked.WithLabelValues("ffmuc_welt")); n != 1 {
		t.Errorf("wgkex_worker_revoked_peers_total = %v, want 1", n)
	}
	// A sweep's device read does not bring it back, and the key is not wanted any more.
	a.SyncAll(true)
	a.pass()
	checkState(t, fake, lines("wg-welt "+keyB+" peer route fdb"))
	if _, ok := a.domains["ffmuc_welt"].want[keyA]; ok {
		t.Error("revoked key still wanted")
	}
	// Registered again: added again.
	a.HandleMessage(wire.KeyTopic("ffmuc_welt"), []byte(keyA))
	a.pass()
	checkState(t, fake, lines("wg-welt "+keyA+" peer route fdb", "wg-welt "+keyB+" peer route fdb"))
}

// TestRevokeAfterRestart: a worker that starts on a device holding a peer revoked while it was down adopts the
// peer from the device, then removes it when the replay's last batch lists the key as revoked; a key replayed in
// an earlier batch and revoked in the last one ends removed too.
func TestRevokeAfterRestart(t *testing.T) {
	fake := dataplane.NewFake(welt)
	if err := fake.AddPeers(welt, []string{keyA, keyB}); err != nil {
		t.Fatal(err)
	}
	fake.Log = nil
	a, _ := newAgent(t, fake, nil)
	a.SyncAll(false) // Run's first pass reads every device
	a.pass()
	if _, ok := a.domains["ffmuc_welt"].want[keyA]; !ok {
		t.Fatal("peer on the device not adopted")
	}
	a.HandleMessage(wire.ReplayKeysTopic("gw04"), []byte(`{"domain":"ffmuc_welt","seq":0,"last":false,"keys":["`+keyB+`","`+keyC+`"]}`))
	a.HandleMessage(wire.ReplayKeysTopic("gw04"), []byte(`{"domain":"ffmuc_welt","seq":1,"last":true,"keys":[],"revoked":["`+keyA+`","`+keyC+`"]}`))
	a.pass()
	checkState(t, fake, lines("wg-welt "+keyB+" peer route fdb"))
}

// TestRevokeRetried: a removal that fails is tried again by a later pass, and a device read meanwhile does not
// adopt the peer.
func TestRevokeRetried(t *testing.T) {
	fake := dataplane.NewFake(welt)
	var mu sync.Mutex
	broken := true
	fake.Fail = func(step, key string) error {
		mu.Lock()
		defer mu.Unlock()
		if broken && step == "remove-fdb" && key == keyA {
			return errors.New("EBUSY")
		}
		return nil
	}
	a, c := newAgent(t, fake, nil)
	enqueue(t, a, "ffmuc_welt", keyA)
	a.pass()
	if err := a.Revoke("ffmuc_welt", keyA); err != nil {
		t.Fatal(err)
	}
	next := a.pass()
	checkState(t, fake, lines("wg-welt "+keyA+" peer route fdb"))
	if next.IsZero() {
		t.Fatal("no retry scheduled for the failed removal")
	}
	a.SyncAll(false)
	mu.Lock()
	broken = false
	mu.Unlock()
	c.advance(time.Second)
	a.pass()
	checkState(t, fake, "")
	if _, ok := a.domains["ffmuc_welt"].want[keyA]; ok {
		t.Error("the read adopted the revoked peer")
	}
}

// TestRevokeWhitelisted: a revocation (live or in a replay) of a whitelisted key leaves the peer on the device, as
// the sweep does: the operator's supernode stays, whoever registered its key at the broker and had it revoked.
func TestRevokeWhitelisted(t *testing.T) {
	fake := dataplane.NewFake(welt)
	if err := fake.AddPeers(welt, []string{keyD}); err != nil {
		t.Fatal(err)
	}
	fake.Lose(welt, keyD)
	fake.Log = nil
	a, c := newAgent(t, fake, nil)
	a.SyncAll(false)
	a.pass()
	a.HandleMessage(wire.RevokeTopic("ffmuc_welt"), wire.Revocation{Key: keyD, At: c.now()}.Marshal())
	a.pass()
	a.HandleMessage(wire.ReplayKeysTopic("gw04"), []byte(`{"domain":"ffmuc_welt","seq":0,"last":true,"keys":[],"revoked":["`+keyD+`"]}`))
	a.SyncAll(true)
	a.pass()
	checkState(t, fake, "wg-welt "+keyD+" peer")
}
