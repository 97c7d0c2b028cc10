package wire

import (
	"testing"
	"time"
)

func FuzzValidateKey(f *testing.F) {
	f.Add(refKey)
	f.Add(refKey + "\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateKey(s) == nil {
			if len(s) != KeyLen {
				t.Fatalf("accepted %q of length %d", s, len(s))
			}
			_ = LinkLocal(s)
		}
	})
}

func FuzzParseTopics(f *testing.F) {
	for _, s := range []string{"wireguard/ffmuc_welt/all", "wireguard-metrics/d/w/connected_peers", "wireguard-worker/w/status", "wireguard-worker/w/d/data", "wgkex/replay/w/request", "wgkex/revoke/ffmuc_welt", "wgkex/revoke/a/b", "///", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		if d, err := ParseKeyTopic(topic); err == nil && KeyFilter(d) == "" {
			t.Fatal("empty filter")
		}
		if d, w, m, err := ParseMetricTopic(topic); err == nil && (d == "" || w == "" || m == "") {
			t.Fatalf("empty level in %q", topic)
		}
		if w, err := ParseStatusTopic(topic); err == nil && StatusTopic(w) != topic {
			t.Fatalf("status topic %q does not round-trip", topic)
		}
		if w, d, err := ParseDataTopic(topic); err == nil && DataTopic(w, d) != topic {
			t.Fatalf("data topic %q does not round-trip", topic)
		}
		_, _ = ParseReplayRequestTopic(topic)
		if d, err := ParseRevokeTopic(topic); err == nil && RevokeTopic(d) != topic {
			t.Fatalf("revoke topic %q does not round-trip", topic)
		}
	})
}

func FuzzParsePayloads(f *testing.F) {
	f.Add([]byte("20"))
	f.Add([]byte(""))
	f.Add(WorkerData{ExternalAddress: "gw", Port: 51820, PublicKey: refKey, LinkAddress: "fe80::1"}.Marshal())
	f.Add([]byte(`{"domains":["a"]}`))
	f.Add([]byte(`{"domain":"a","seq":0,"last":true,"keys":[]}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		_, _ = ParseInt(p)
		if d, err := ParseWorkerData(p); err == nil {
			again, err := ParseWorkerData(d.Marshal())
			if err != nil || again != d {
				t.Fatalf("worker data %+v does not round-trip: %+v, %v", d, again, err)
			}
		}
		_, _ = ParseReplayRequest(p)
		_, _ = ParseReplayBatch(p)
	})
}

func FuzzParseRevocation(f *testing.F) {
	f.Add(Revocation{Key: refKey, At: time.Unix(1700000000, 5).UTC(), By: "broker-a"}.Marshal())
	f.Add([]byte(`{"key":"` + refKey + `","at":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{"key":"x","at":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := ParseRevocation(p)
		if err != nil {
			return
		}
		if ValidateKey(r.Key) != nil || r.At.IsZero() {
			t.Fatalf("accepted %+v", r)
		}
		again, err := ParseRevocation(r.Marshal())
		if err != nil || again.Key != r.Key || !again.At.Equal(r.At) || again.By != r.By {
			t.Fatalf("revocation %+v does not round-trip: %+v, %v", r, again, err)
		}
	})
}
