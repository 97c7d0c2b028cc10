package cluster

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/store"
)

const revKey = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="

// TestHandleRevocation: another broker's revocation removes the key from this broker's store as of now when this
// broker's clock is ahead (so a registration it recorded just before is void too); its own revocations and
// malformed ones change nothing.
func TestHandleRevocation(t *testing.T) {
	e := newEnv(t, nil)
	put := func(at time.Time) {
		t.Helper()
		if err := e.st.PutKey(broker.KeyRecord{Key: revKey, Domain: "ffmuc_welt", FirstSeen: at, LastSeen: at}); err != nil {
			t.Fatal(err)
		}
	}
	put(e.now)
	own := wire.Revocation{Key: revKey, At: e.now, By: "broker-a"}.Marshal()
	e.c.handleRevocation(wire.RevokeTopic("ffmuc_welt"), own)
	e.c.handleRevocation(wire.RevokeTopic("ffmuc_welt"), []byte(revKey))
	e.c.handleRevocation(wire.RevokeTopic("ffdon_x"), wire.Revocation{Key: revKey, At: e.now, By: "broker-b"}.Marshal())
	if _, err := e.st.Key("ffmuc_welt", revKey); err != nil {
		t.Fatalf("key gone after its own, a malformed or an unknown domain's revocation: %v", err)
	}
	// broker-b's clock is a minute behind: its revocation still voids what this broker recorded before it.
	e.c.handleRevocation(wire.RevokeTopic("ffmuc_welt"), wire.Revocation{Key: revKey, At: e.now.Add(-time.Minute), By: "broker-b"}.Marshal())
	if _, err := e.st.Key("ffmuc_welt", revKey); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("key still stored after broker-b's revocation: %v", err)
	}
	if at, ok, _ := e.st.RevokedAt("ffmuc_welt", revKey); !ok || !at.Equal(e.now) {
		t.Errorf("tombstone at %v (%v), want now %v", at, ok, e.now)
	}
}

// TestCatchupCarriesRevocations: a catch-up answer's last batch carries the revocations since the time asked for,
// and the asking broker applies them after the keys, keeping a key registered again after its revocation.
func TestCatchupCarriesRevocations(t *testing.T) {
	a := newEnv(t, nil)
	a.st.PutKey(broker.KeyRecord{Key: revKey, Domain: "ffmuc_welt", FirstSeen: a.now, LastSeen: a.now})
	if _, err := a.st.RevokeKey("ffmuc_welt", revKey, a.now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	a.c.sendCatchup(CatchupRequest{From: "broker-b", Since: a.now.Add(-time.Hour).Unix()})
	var batches [][]byte
	for _, m := range a.pub.take() {
		topic, rest, _ := strings.Cut(m, " ")
		payload, _, _ := strings.Cut(rest, " retain=")
		if topic == CatchupKeysTopic("broker-b") {
			batches = append(batches, []byte(payload))
		}
	}
	if len(batches) != 1 {
		t.Fatalf("catch-up answer of %d batches", len(batches))
	}
	b, err := ParseCatchupBatch(batches[0])
	if err != nil || !b.Last || len(b.Revoked) != 1 || b.Revoked[0] != (CatchupRevocation{Domain: "ffmuc_welt", Key: revKey, At: a.now.Add(time.Second).UnixNano()}) {
		t.Fatalf("last batch %+v, %v", b, err)
	}

	other := newEnv(t, func(o *Options) { o.ID = "broker-b" })
	other.st.PutKey(broker.KeyRecord{Key: revKey, Domain: "ffmuc_welt", FirstSeen: a.now, LastSeen: a.now})
	other.c.handleCatchupBatch(CatchupKeysTopic("broker-b"), batches[0])
	if _, err := other.st.Key("ffmuc_welt", revKey); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("key still stored at b after the catch-up: %v", err)
	}
}

// TestRevocationFromAheadClock: a revocation of a broker whose clock is far ahead (live or in a catch-up) voids
// what this broker recorded until it took the revocation, not the node's registrations to come: a node that
// registers again a minute later is stored and stays out of the replays' revoked keys.
func TestRevocationFromAheadClock(t *testing.T) {
	ahead := time.Unix(1_700_000_000, 0).AddDate(10, 0, 0)
	live := func(e *env) {
		e.c.handleRevocation(wire.RevokeTopic("ffmuc_welt"), wire.Revocation{Key: revKey, At: ahead, By: "broker-b"}.Marshal())
	}
	catchup := func(e *env) {
		b := CatchupBatch{Seq: 0, Last: true, Revoked: []CatchupRevocation{{Domain: "ffmuc_welt", Key: revKey, At: ahead.UnixNano()}}}
		p, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		e.c.handleCatchupBatch(CatchupKeysTopic("broker-a"), p)
	}
	for name, apply := range map[string]func(*env){"live": live, "catch-up": catchup} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.st.PutKey(broker.KeyRecord{Key: revKey, Domain: "ffmuc_welt", FirstSeen: e.now, LastSeen: e.now})
			apply(e)
			if _, err := e.st.Key("ffmuc_welt", revKey); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("key still stored after the revocation: %v", err)
			}
			e.now = e.now.Add(time.Minute)
			if err := e.st.PutKey(broker.KeyRecord{Key: revKey, Domain: "ffmuc_welt", FirstSeen: e.now, LastSeen: e.now}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.st.Key("ffmuc_welt", revKey); err != nil {
				t.Errorf("registration a minute after the revocation dropped: %v", err)
			}
			if at, ok, _ := e.st.RevokedAt("ffmuc_welt", revKey); ok && at.After(e.now) {
				t.Errorf("tombstone at %v, after this broker's now %v", at, e.now)
			}
		})
	}
}
