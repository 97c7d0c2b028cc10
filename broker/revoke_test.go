package broker_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/store"
)

const key2 = "PcKkakZcTEx3LKh+G06Opb8/esg08aWK33A5/Ff1YXE="

// replayOf asks for a replay of domain to worker and returns the keys and revocations it sent.
func replayOf(t *testing.T, e *env, worker, domain string) (keys, revoked []string) {
	t.Helper()
	e.b.HandleReplayRequest(wire.ReplayRequestTopic(worker), []byte(`{"domains":["`+domain+`"]}`))
	e.b.WaitReplays()
	for _, m := range e.pub.take() {
		topic, rest, _ := strings.Cut(m, " ")
		payload, _, _ := strings.Cut(rest, " retain=")
		if topic != wire.ReplayKeysTopic(worker) {
			continue
		}
		var b wire.ReplayBatch
		if err := json.Unmarshal([]byte(payload), &b); err != nil {
			t.Fatal(err)
		}
		if len(b.Revoked) > 0 && !b.Last {
			t.Errorf("revocations in batch %d, which is not the last", b.Seq)
		}
		keys, revoked = append(keys, b.Keys...), append(revoked, b.Revoked...)
	}
	sort.Strings(keys)
	return keys, revoked
}

// TestRevoke: a revoked key is gone from the store and from replays, which carry the revocation instead; the
// revocation is published on wgkex/revoke/{domain} (never under wireguard/), counted, and a registration after it
// stores and replays the key again.
func TestRevoke(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, "", func(o *broker.Options) { o.Metrics = reg; o.ID = "broker-a" })
	for _, k := range []string{key1, key2} {
		if err := e.b.ExchangeV1(broker.Request{PublicKey: k, Domain: "ffmuc_welt"}); err != nil {
			t.Fatal(err)
		}
	}
	e.pub.take()
	e.now = e.now.Add(time.Second)
	revs, err := e.b.Revoke(key1, "", broker.RevokeAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]broker.Revocation{{Domain: "ffmuc_welt", At: e.now, Stored: true}}, revs); diff != "" {
		t.Errorf("Revoke (-want +got):\n%s", diff)
	}
	want := []string{"wgkex/revoke/ffmuc_welt " + string(wire.Revocation{Key: key1, At: e.now, By: "broker-a"}.Marshal()) + " retain=false qos=1"}
	if diff := cmp.Diff(want, e.pub.take()); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
	if _, err := e.st.Key("ffmuc_welt", key1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoked key still stored: %v", err)
	}
	keys, revoked := replayOf(t, e, "gw04", "ffmuc_welt")
	if diff := cmp.Diff([]string{key2}, keys); diff != "" {
		t.Errorf("replayed keys (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{key1}, revoked); diff != "" {
		t.Errorf("replayed revocations (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(e.b.Meters().Revocations.WithLabelValues("ffmuc_welt", "admin")); n != 1 {
		t.Errorf("wgkex_broker_revocations_total{admin} = %v, want 1", n)
	}

	// A registration from before the revocation arriving late (another broker's catch-up) stays void.
	early := e.now.Add(-time.Second)
	e.st.PutKey(broker.KeyRecord{Key: key1, Domain: "ffmuc_welt", FirstSeen: early, LastSeen: early})
	if keys, _ := replayOf(t, e, "gw04", "ffmuc_welt"); len(keys) != 1 {
		t.Errorf("a registration from before the revocation replayed: %v", keys)
	}

	// Registering again after the revocation is allowed: the key is stored and replayed, and no longer revoked.
	e.now = e.now.Add(time.Second)
	if err := e.b.ExchangeV1(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"}); err != nil {
		t.Fatal(err)
	}
	keys, revoked = replayOf(t, e, "gw04", "ffmuc_welt")
	if diff := cmp.Diff([]string{key2, key1}, keys, cmpSorted); diff != "" || len(revoked) != 0 {
		t.Errorf("after registering again: keys (-want +got):\n%s revoked %v", diff, revoked)
	}

	for _, bad := range []struct{ key, domain string }{{"nope", ""}, {key1, "ffdon_x"}} {
		if _, err := e.b.Revoke(bad.key, bad.domain, broker.RevokeAdmin); !errors.Is(err, broker.ErrBadRequest) {
			t.Errorf("Revoke(%q, %q) = %v, want ErrBadRequest", bad.key, bad.domain, err)
		}
	}
}

var cmpSorted = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	return out
})

// TestRevokeNowhereStored: a key stored nowhere is revoked in every domain, so that a gateway holding it
// (registered before the broker's state was lost, say) removes it as well.
func TestRevokeNowhereStored(t *testing.T) {
	e := newEnv(t, "", nil)
	revs, err := e.b.Revoke(key1, "", broker.RevokeAdmin)
	if err != nil || len(revs) != 2 || revs[0].Stored || revs[1].Stored {
		t.Fatalf("Revoke = %+v, %v; want two domains, not stored", revs, err)
	}
	if got := e.pub.take(); len(got) != 2 || !strings.HasPrefix(got[0], "wgkex/revoke/ffmuc_welt ") || !strings.HasPrefix(got[1], "wgkex/revoke/ffwert_city ") {
		t.Errorf("published %q", got)
	}
}

// TestShowKey: what the broker knows of a key: first and last seen, the gateway chosen, the online gateways
// serving the domain, and its revocation.
func TestShowKey(t *testing.T) {
	e := newEnv(t, "", nil)
	e.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 0)
	e.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 0)
	e.worker("gw07.in.ffmuc.net", "ffwert_city", gwKey7, 0)
	first := e.now
	if _, err := e.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt", Location: "MUC"}); err != nil {
		t.Fatal(err)
	}
	e.now = e.now.Add(time.Minute)
	if _, err := e.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt", Location: "MUC"}); err != nil {
		t.Fatal(err)
	}
	e.st.Flush()
	got, err := e.b.ShowKey(key1)
	want := []broker.KeyInfo{{Domain: "ffmuc_welt", Stored: true, FirstSeen: first, LastSeen: e.now, Gateway: "gw04.in.ffmuc.net",
		Gateways: []string{"gw04.in.ffmuc.net", "gw07.in.ffmuc.net"}}}
	if diff := cmp.Diff(want, got, cmpTime); diff != "" || err != nil {
		t.Errorf("ShowKey (-want +got):\n%s %v", diff, err)
	}
	e.now = e.now.Add(time.Minute)
	e.b.Revoke(key1, "ffmuc_welt", broker.RevokeAdmin)
	got, _ = e.b.ShowKey(key1)
	want = []broker.KeyInfo{{Domain: "ffmuc_welt", RevokedAt: e.now}}
	if diff := cmp.Diff(want, got, cmpTime); diff != "" {
		t.Errorf("ShowKey after the revocation (-want +got):\n%s", diff)
	}
	if got, err := e.b.ShowKey(key2); err != nil || got != nil {
		t.Errorf("ShowKey of an unknown key = %+v, %v", got, err)
	}
}

var cmpTime = cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })

// blockAll is a KeyFilter that refuses the keys in it.
type blockAll map[string]bool

func (b blockAll) Refuse(_, key string) (string, bool) { return "is on the blocklist", b[key] }

// TestRevokeBlocked: keys the blocklist now blocks are revoked where they are stored, counted as blocklist; keys
// not stored are left alone (no tombstone, nothing published).
func TestRevokeBlocked(t *testing.T) {
	reg := prometheus.NewRegistry()
	bl := blockAll{}
	e := newEnv(t, "", func(o *broker.Options) { o.Keys = bl; o.Metrics = reg })
	e.b.ExchangeV1(broker.Request{PublicKey: key1, Domain: "ffwert_city"})
	e.pub.take()
	bl[key1], bl[key2] = true, true
	e.b.RevokeBlocked([]string{key1, key2})
	got := e.pub.take()
	if len(got) != 1 || !strings.HasPrefix(got[0], "wgkex/revoke/ffwert_city {\"key\":\""+key1) {
		t.Errorf("published %q, want the revocation of key1 in ffwert_city only", got)
	}
	if n := testutil.ToFloat64(e.b.Meters().Revocations.WithLabelValues("ffwert_city", "blocklist")); n != 1 {
		t.Errorf("revocations{blocklist} = %v", n)
	}
	if _, ok, _ := e.st.RevokedAt("ffmuc_welt", key2); ok {
		t.Error("a key stored nowhere got a tombstone")
	}
}

// TestApplyRevocation: another broker's revocation removes the key here without publishing anything, and keeps
// a registration made after it.
func TestApplyRevocation(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, "", func(o *broker.Options) { o.Metrics = reg })
	e.b.ExchangeV1(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"})
	e.b.ExchangeV1(broker.Request{PublicKey: key2, Domain: "ffmuc_welt"})
	e.pub.take()
	e.b.ApplyRevocation("ffmuc_welt", key1, e.now, true)
	e.b.ApplyRevocation("ffmuc_welt", key2, e.now.Add(-time.Second), false) // registered after it: stays
	if got := e.pub.take(); len(got) != 0 {
		t.Errorf("a peer's revocation was published again: %q", got)
	}
	keys, revoked := replayOf(t, e, "gw04", "ffmuc_welt")
	if diff := cmp.Diff([]string{key2}, keys); diff != "" {
		t.Errorf("replayed keys (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{key1}, revoked); diff != "" {
		t.Errorf("revoked (-want +got):\n%s", diff)
	}
	if n := testutil.ToFloat64(e.b.Meters().Revocations.WithLabelValues("ffmuc_welt", "peer")); n != 1 {
		t.Errorf("revocations{peer} = %v, want 1 (the catch-up one removed nothing)", n)
	}
}

// TestRegistrationLogged: every registration is an INFO line with key, domain, gateway and API; the node's address
// only with LogNodeAddresses.
func TestRegistrationLogged(t *testing.T) {
	for _, withAddr := range []bool{false, true} {
		t.Run(fmt.Sprint(withAddr), func(t *testing.T) {
			log, logs := testenv.CaptureLogger(t)
			st, err := store.Open(t.TempDir()+"/s.db", log)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			b, err := broker.New(st, &recorder{}, log, broker.Options{Domains: []string{"ffmuc_welt"}, LogNodeAddresses: withAddr})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.ExchangeV1(broker.Request{PublicKey: key1, Domain: "ffmuc_welt", Node: "2001:db8::7"}); err != nil {
				t.Fatal(err)
			}
			line := ""
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "key registered") {
					line = l
				}
			}
			for _, want := range []string{"level=INFO", "key=\"" + key1 + "\"", "domain=ffmuc_welt", "gateway=\"\"", "api=v1"} {
				if !strings.Contains(line, want) {
					t.Errorf("registration line %q lacks %s", line, want)
				}
			}
			if strings.Contains(line, "2001:db8::7") != withAddr {
				t.Errorf("registration line %q: node address logged %v, want %v", line, !withAddr, withAddr)
			}
		})
	}
}
