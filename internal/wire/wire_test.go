package wire

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLinkLocalVectors(t *testing.T) {
	// SPEC §4.2: computed with the reference implementation.
	tests := []struct{ key, want string }{
		{"public_key", "fe80::282:6eff:fe9d:ecd3/128"},
		{"WGPEER_A_PUBLIC_KEY_STALE", "fe80::281:16ff:fe49:395e/128"},
		{"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=", "fe80::2a6:8fff:fe21:5465/128"},
		{"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", "fe80::27c:16ff:fec0:6c74/128"},
		{"PcKkakZcTEx3LKh+G06Opb8/esg08aWK33A5/Ff1YXE=", "fe80::23b:d2ff:fe95:967f/128"},
		{"4WAyZBpHcyRE5+L4ApV+jjWgj4q1o3CrCQ3NjclXfV4=", "fe80::28f:a7ff:fec6:7530/128"},
	}
	for _, tt := range tests {
		if got := LinkLocalPrefix(tt.key).String(); got != tt.want {
			t.Errorf("LinkLocalPrefix(%q) = %s, want %s", tt.key, got, tt.want)
		}
	}
}

func TestValidateKey(t *testing.T) {
	tests := []struct {
		key string
		ok  bool
	}{
		{"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=", true},
		{"TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", true},
		{strings.Repeat("A", 43) + "=", true},
		{strings.Repeat("B", 42) + "E=", true},
		{"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=\n", false}, // Python's $ accepted this; we do not
		{"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkh=", false},   // 43rd char has low bits set
		{"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg", false},
		{"o52Ge-Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=", false},
		{"", false},
		{"invalid_key", false},
		{strings.Repeat("A", 42) + "==", false},
		{strings.Repeat("A", 44), false},
	}
	for _, tt := range tests {
		err := ValidateKey(tt.key)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateKey(%q) = %v, want ok=%v", tt.key, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ValidateKey(%q) error %v is not ErrInvalidKey", tt.key, err)
		}
	}
}

func TestStripDomain(t *testing.T) {
	prefixes := []string{"ffmuc_", "ffdon_", "ffwert_"}
	tests := []struct {
		domain, want string
		ok           bool
	}{
		{"ffmuc_welt", "welt", true},
		{"ffwert_city", "city", true},
		{"ffmuc_muc_cty", "muc_cty", true},
		{"welt", "", false},
		{"x_ffmuc_welt", "", false}, // the reference would split here; we require the prefix at the start
		{"ffmuc_", "", false},
		{"ffmuc_thirteenchars", "", false},
		{"ffmuc_twelve_chars", "twelve_chars", true},
		{"ffmuc_a/b", "", false},
	}
	for _, tt := range tests {
		got, err := StripDomain(tt.domain, prefixes)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("StripDomain(%q) = %q, %v; want %q ok=%v", tt.domain, got, err, tt.want, tt.ok)
		}
	}
	if got, _ := StripDomain("_ffmuc_domain.one", []string{"_ffmuc_", "_TEST_PREFIX2_"}); got != "domain.one" {
		t.Errorf("StripDomain(_ffmuc_domain.one) = %q, want domain.one", got)
	}
}

func TestTopics(t *testing.T) {
	if got := KeyTopic("ffmuc_welt"); got != "wireguard/ffmuc_welt/all" {
		t.Errorf("KeyTopic = %q", got)
	}
	if got := MetricTopic("ffmuc_welt", "gw04"); got != "wireguard-metrics/ffmuc_welt/gw04/connected_peers" {
		t.Errorf("MetricTopic = %q", got)
	}
	if got := DataTopic("gw04", "ffmuc_welt"); got != "wireguard-worker/gw04/ffmuc_welt/data" {
		t.Errorf("DataTopic = %q", got)
	}
	tests := []struct {
		topic string
		parse func(string) parsed2
		want  parsed2
	}{
		{"wireguard/_ffmuc_domain1/gateway", pk, parsed2{A: "_ffmuc_domain1"}},
		{"wireguard/ffmuc_welt/all", pk, parsed2{A: "ffmuc_welt"}},
		{"wireguard/ffmuc_welt", pk, parsed2{Err: true}},
		{"wireguard//all", pk, parsed2{Err: true}},
		{"wireguard/a/b/c", pk, parsed2{Err: true}},
		{"wireguard-metrics/ffmuc_welt/gw04/connected_peers", pm, parsed2{"ffmuc_welt", "gw04", "connected_peers", false}},
		{"wireguard-metrics/ffmuc_welt/gw04", pm, parsed2{Err: true}},
		{"wireguard-metrics/ffmuc_welt/gw04/a/b", pm, parsed2{Err: true}},
		{"wireguard-worker/gw04.in.ffmuc.net/status", ps, parsed2{A: "gw04.in.ffmuc.net"}},
		{"wireguard-worker/gw04/state", ps, parsed2{Err: true}},
		{"wireguard-worker/gw04/ffmuc_welt/data", pd, parsed2{A: "gw04", B: "ffmuc_welt"}},
		{"wireguard-worker/gw04/ffmuc_welt/info", pd, parsed2{Err: true}},
		{"wgkex/replay/gw04/request", pr, parsed2{A: "gw04"}},
		{"wgkex/replay/gw04/keys", pr, parsed2{Err: true}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, tt.parse(tt.topic)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.topic, diff)
		}
	}
}

func pk(t string) parsed2 { d, err := ParseKeyTopic(t); return parsed2{A: d, Err: err != nil} }
func ps(t string) parsed2 { w, err := ParseStatusTopic(t); return parsed2{A: w, Err: err != nil} }
func pr(t string) parsed2 {
	w, err := ParseReplayRequestTopic(t)
	return parsed2{A: w, Err: err != nil}
}
func pd(t string) parsed2 {
	w, d, err := ParseDataTopic(t)
	return parsed2{A: w, B: d, Err: err != nil}
}
func pm(t string) parsed2 {
	d, w, m, err := ParseMetricTopic(t)
	return parsed2{d, w, m, err != nil}
}

type parsed2 = struct {
	A, B, C string
	Err     bool
}

func TestParseInt(t *testing.T) {
	tests := []struct {
		in   string
		want int
		ok   bool
	}{
		{"20", 20, true}, {"-1", -1, true}, {"0", 0, true}, {" 1\n", 1, true},
		{"", 0, false}, {"abc", 0, false}, {"1.5", 0, false}, {"99999999999999999999999", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseInt([]byte(tt.in))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseInt(%q) = %d, %v; want %d ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

const refKey = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="

func TestWorkerDataMarshal(t *testing.T) {
	d := WorkerData{ExternalAddress: "gw04.ext.ffmuc.net", Port: 51820, PublicKey: "456asdf=", LinkAddress: "fe80::1"}
	want := `{"ExternalAddress": "gw04.ext.ffmuc.net", "Port": 51820, "PublicKey": "456asdf=", "LinkAddress": "fe80::1"}`
	if got := string(d.Marshal()); got != want {
		t.Errorf("Marshal() = %s\nwant       %s", got, want)
	}
	// As python3 -c 'import json; print(json.dumps({"ExternalAddress": "gä<\"\b\f\x7f😀"}))' writes it.
	if got := string((WorkerData{ExternalAddress: "gä<\"\b\f\x7f😀"}).Marshal()); !strings.HasPrefix(got, `{"ExternalAddress": "g\u00e4<\"\b\f\u007f\ud83d\ude00"`) {
		t.Errorf("Marshal() escapes as %s", got)
	}
}

func TestParseWorkerData(t *testing.T) {
	good := WorkerData{ExternalAddress: "gw04.ext.ffmuc.net", Port: 51820, PublicKey: refKey, LinkAddress: "fe80::27c:16ff:fec0:6c74"}
	tests := []struct {
		in   string
		want WorkerData
		ok   bool
	}{
		{string(good.Marshal()), good, true},
		{`{"ExternalAddress":"gw04.ext.ffmuc.net","Port":"51820","PublicKey":"` + refKey + `","LinkAddress":"fe80::27c:16ff:fec0:6c74"}`, good, true},
		{`{"Port": 51820}`, WorkerData{}, false},
		{`[1,2]`, WorkerData{}, false},
		{`not json`, WorkerData{}, false},
		{``, WorkerData{}, false},
		{`{"ExternalAddress":"x","Port":70000,"PublicKey":"` + refKey + `","LinkAddress":"fe80::1"}`, WorkerData{}, false},
		{`{"ExternalAddress":"x","Port":1,"PublicKey":"abc","LinkAddress":"fe80::1"}`, WorkerData{}, false},
		{`{"ExternalAddress":"x","Port":1,"PublicKey":"` + refKey + `","LinkAddress":"nope"}`, WorkerData{}, false},
		{string(good.Marshal()) + `{}`, WorkerData{}, false},
	}
	for _, tt := range tests {
		got, err := ParseWorkerData([]byte(tt.in))
		if (err == nil) != tt.ok {
			t.Errorf("ParseWorkerData(%s) error = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParseWorkerData(%s) (-want +got):\n%s", tt.in, diff)
		}
	}
}

func TestParseReplay(t *testing.T) {
	r, err := ParseReplayRequest([]byte(`{"domains":["ffmuc_welt","ffwert_city"]}`))
	if err != nil || len(r.Domains) != 2 {
		t.Fatalf("ParseReplayRequest = %v, %v", r, err)
	}
	for _, bad := range []string{``, `{}`, `{"domains":[]}`, `{"domains":["a/b"]}`, `{"domains":"x"}`, `[]`} {
		if _, err := ParseReplayRequest([]byte(bad)); err == nil {
			t.Errorf("ParseReplayRequest(%s): want error", bad)
		}
	}
	b, err := ParseReplayBatch([]byte(`{"domain":"ffmuc_welt","seq":1,"last":true,"keys":["` + refKey + `"]}`))
	if err != nil || !b.Last || b.Seq != 1 || len(b.Keys) != 1 {
		t.Fatalf("ParseReplayBatch = %+v, %v", b, err)
	}
	for _, bad := range []string{``, `{}`, `{"domain":"d","seq":-1}`, `{"domain":1}`} {
		if _, err := ParseReplayBatch([]byte(bad)); err == nil {
			t.Errorf("ParseReplayBatch(%s): want error", bad)
		}
	}
}

func TestParseRevocation(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	for _, tc := range []struct {
		name, payload string
		want          Revocation
		ok            bool
	}{
		{"full", `{"key":"` + refKey + `","at":"2026-01-02T03:04:05.123456789Z","by":"broker-a"}`, Revocation{Key: refKey, At: at, By: "broker-a"}, true},
		{"embedded server: no by", `{"key":"` + refKey + `","at":"2026-01-02T03:04:05.123456789Z"}`, Revocation{Key: refKey, At: at}, true},
		{"unknown field ignored", `{"key":"` + refKey + `","at":"2026-01-02T03:04:05.123456789Z","why":"x"}`, Revocation{Key: refKey, At: at}, true},
		{"empty", ``, Revocation{}, false},
		{"not an object", `"` + refKey + `"`, Revocation{}, false},
		{"bare key (a reference key message)", refKey, Revocation{}, false},
		{"invalid key", `{"key":"abc","at":"2026-01-02T03:04:05Z"}`, Revocation{}, false},
		{"no time", `{"key":"` + refKey + `"}`, Revocation{}, false},
		{"bad time", `{"key":"` + refKey + `","at":"yesterday"}`, Revocation{}, false},
		{"by with a slash", `{"key":"` + refKey + `","at":"2026-01-02T03:04:05Z","by":"a/b"}`, Revocation{}, false},
		{"too long", `{"key":"` + refKey + `","at":"2026-01-02T03:04:05Z","by":"` + strings.Repeat("a", 2000) + `"}`, Revocation{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRevocation([]byte(tc.payload))
			if (err == nil) != tc.ok {
				t.Fatalf("ParseRevocation(%s) err = %v, want ok %v", tc.payload, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrPayload) {
				t.Errorf("error %v is not ErrPayload", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	r := Revocation{Key: refKey, At: at, By: "b"}
	if got, err := ParseRevocation(r.Marshal()); err != nil || !got.At.Equal(at) || got.Key != refKey || got.By != "b" {
		t.Errorf("round trip = %+v, %v", got, err)
	}
}

func TestRevokeTopic(t *testing.T) {
	if got := RevokeTopic("ffmuc_welt"); got != "wgkex/revoke/ffmuc_welt" {
		t.Errorf("RevokeTopic = %q", got)
	}
	if d, err := ParseRevokeTopic("wgkex/revoke/ffmuc_welt"); err != nil || d != "ffmuc_welt" {
		t.Errorf("ParseRevokeTopic = %q, %v", d, err)
	}
	for _, bad := range []string{"wgkex/revoke/", "wgkex/revoke/a/b", "wireguard/ffmuc_welt/all", "wgkex/revoke"} {
		if _, err := ParseRevokeTopic(bad); err == nil {
			t.Errorf("ParseRevokeTopic(%q): want error", bad)
		}
	}
	// The revocation topic is not under wireguard/: a reference worker's wireguard/{domain}/+ never sees it.
	if _, err := ParseKeyTopic(RevokeTopic("ffmuc_welt")); err == nil {
		t.Error("a revocation parses as a key topic")
	}
}

func TestReplayBatchRevoked(t *testing.T) {
	b, err := ParseReplayBatch([]byte(`{"domain":"d","seq":0,"last":true,"keys":[],"revoked":["` + refKey + `"]}`))
	if err != nil || len(b.Revoked) != 1 || b.Revoked[0] != refKey {
		t.Fatalf("ParseReplayBatch = %+v, %v", b, err)
	}
	// Old workers decode into the struct without Revoked: the field is ignored by encoding/json.
	var old struct {
		Domain string
		Keys   []string
	}
	if err := json.Unmarshal([]byte(`{"domain":"d","keys":["k"],"revoked":["x"]}`), &old); err != nil || len(old.Keys) != 1 {
		t.Errorf("an old decoder fails on revoked: %v", err)
	}
}
