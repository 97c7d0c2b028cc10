package cluster

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

func TestParseChoice(t *testing.T) {
	for _, tc := range []struct {
		in             string
		worker, domain string
		ok             bool
	}{
		{"gw1/ffmuc_welt", "gw1", "ffmuc_welt", true},
		{string(FormatChoice("gw04.in.ffmuc.net", "ffwert_city")), "gw04.in.ffmuc.net", "ffwert_city", true},
		{"gw1", "", "", false},
		{"/ffmuc_welt", "", "", false},
		{"gw1/", "", "", false},
		{"gw1/a/b", "", "", false},
		{"gw+/d", "", "", false},
		{"gw1/d#", "", "", false},
		{"", "", "", false},
	} {
		w, d, err := ParseChoice([]byte(tc.in))
		if (err == nil) != tc.ok || w != tc.worker || d != tc.domain {
			t.Errorf("ParseChoice(%q) = %q, %q, %v", tc.in, w, d, err)
		}
	}
}

func TestParseChoices(t *testing.T) {
	got, err := ParseChoices([]byte("gw1/ffmuc_welt\ngw2/ffwert_city\nbad\n\ngw1/ffwert_city"))
	want := []Choice{{"gw1", "ffmuc_welt"}, {"gw2", "ffwert_city"}, {"gw1", "ffwert_city"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseChoices (-want +got):\n%s", diff)
	}
	if err == nil {
		t.Error("ParseChoices: no error for the bad lines")
	}
	if got, err := ParseChoices(FormatChoice("gw1", "ffmuc_welt")); err != nil || len(got) != 1 {
		t.Errorf("ParseChoices of one choice = %v, %v", got, err)
	}
}

func TestParseCatchup(t *testing.T) {
	r, err := ParseCatchupRequest([]byte(`{"from":"broker-a","since":1700000000}`))
	if diff := cmp.Diff(CatchupRequest{From: "broker-a", Since: 1700000000}, r); diff != "" || err != nil {
		t.Errorf("request (-want +got):\n%s %v", diff, err)
	}
	for _, bad := range []string{`{"from":"a/b","since":1}`, `{"since":1}`, `[]`, `{"from":"a","since":"x"}`} {
		if _, err := ParseCatchupRequest([]byte(bad)); err == nil {
			t.Errorf("ParseCatchupRequest(%s) accepted", bad)
		}
	}
	b, err := ParseCatchupBatch([]byte(`{"seq":2,"last":true,"keys":[{"d":"ffmuc_welt","k":"K","f":1,"l":2}]}`))
	want := CatchupBatch{Seq: 2, Last: true, Keys: []CatchupKey{{Domain: "ffmuc_welt", Key: "K", FirstSeen: 1, LastSeen: 2}}}
	if diff := cmp.Diff(want, b); diff != "" || err != nil {
		t.Errorf("batch (-want +got):\n%s %v", diff, err)
	}
	for _, bad := range []string{`{"seq":-1}`, `{"keys":{}}`, `x`} {
		if _, err := ParseCatchupBatch([]byte(bad)); err == nil {
			t.Errorf("ParseCatchupBatch(%s) accepted", bad)
		}
	}
	for _, tc := range []struct{ topic, id, kind string }{
		{BrokerStatusTopic("a"), "a", "status"}, {ChoiceTopic("b"), "b", "choice"},
		{CatchupRequestTopic("c"), "c", "catchup"}, {CatchupKeysTopic("d"), "d", "keys"},
	} {
		id, kind, err := ParseBrokerTopic(tc.topic)
		if id != tc.id || kind != tc.kind || err != nil {
			t.Errorf("ParseBrokerTopic(%q) = %q, %q, %v", tc.topic, id, kind, err)
		}
	}
}

func FuzzParseCluster(f *testing.F) {
	f.Add([]byte("gw1/ffmuc_welt"))
	f.Add([]byte("gw1/ffmuc_welt\ngw2/ffwert_city"))
	f.Add([]byte(`{"from":"broker-a","since":1700000000}`))
	f.Add([]byte(`{"seq":0,"last":true,"keys":[{"d":"ffmuc_welt","k":"K","f":1,"l":2}]}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		if w, d, err := ParseChoice(p); err == nil {
			if w2, d2, err := ParseChoice(FormatChoice(w, d)); err != nil || w2 != w || d2 != d {
				t.Fatalf("choice %q does not round-trip", p)
			}
		}
		cs, err := ParseChoices(p)
		if err != nil && len(err.Error()) > 512 {
			t.Fatalf("the error of a %d-byte announcement is %d bytes", len(p), len(err.Error()))
		}
		for _, c := range cs {
			if w, d, err := ParseChoice(FormatChoice(c.Worker, c.Domain)); err != nil || w != c.Worker || d != c.Domain {
				t.Fatalf("choice %+v of %q does not round-trip", c, p)
			}
		}
		if r, err := ParseCatchupRequest(p); err == nil && wire.ValidateTopicLevel(r.From) != nil {
			t.Fatalf("request from %q accepted", r.From)
		}
		if b, err := ParseCatchupBatch(p); err == nil && b.Seq < 0 {
			t.Fatal("negative seq accepted")
		}
		_, _, _ = ParseBrokerTopic(string(p))
	})
}

// TestParseChoicesHostileBounded: an announcement from anyone who may publish on a choice topic costs time in
// proportion to its size and at most one short error: the first bad line (clipped) and the count, and no more
// than maxChoices lines are read. Before, every bad line nested one more errors.Join, whose
// message a Warn line then built in time quadratic in the lines (16,000 empty lines: 3.8 s, inline in the MQTT
// client's receive path), and a bad line was quoted whole.
func TestParseChoicesHostileBounded(t *testing.T) {
	tests := []struct {
		name    string
		payload []byte
		valid   int
	}{
		{"4,097 empty lines", bytes.Repeat([]byte("\n"), 4096), 0},
		{"one long bad line", bytes.Repeat([]byte("x"), 1<<20), 0},
		{"a long worker", append(bytes.Repeat([]byte("+"), 1<<20), "/d"...), 0},
		{"good and bad", []byte("gw1/d\n\ngw2/d\nbad"), 2},
		{"more lines than maxChoices", bytes.Repeat([]byte("gw1/d\n"), 3*maxChoices), maxChoices},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseChoices(tt.payload)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, wire.ErrPayload) && !errors.Is(err, errTooManyChoices) {
				t.Errorf("error %v is neither a payload error nor too many choices", err)
			}
			if len(got) != tt.valid {
				t.Errorf("%d valid choices, want %d", len(got), tt.valid)
			}
			if n := len(err.Error()); n > 512 {
				t.Errorf("the error of a %d-byte announcement is %d bytes", len(tt.payload), n)
			}
			if _, ok := err.(interface{ Unwrap() []error }); ok {
				t.Errorf("the error is a join: %v", err)
			}
		})
	}
}
