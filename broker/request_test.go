package broker

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseRequest(t *testing.T) {
	const k = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	tests := []struct {
		body string
		want Request
		ok   bool
	}{
		{`{"domain": "ffmuc_welt", "public_key": "` + k + `"}`, Request{PublicKey: k, Domain: "ffmuc_welt"}, true},
		{`{"domain":"ffmuc_welt","public_key":"` + k + `","location":"MUC"}`, Request{PublicKey: k, Domain: "ffmuc_welt", Location: "MUC"}, true},
		{`{"domain":"ffmuc_welt","public_key":"` + k + `","location":5}`, Request{PublicKey: k, Domain: "ffmuc_welt"}, true},
		{`{"domain":"ffmuc_welt","public_key":"` + k + `","extra":[1]}`, Request{PublicKey: k, Domain: "ffmuc_welt"}, true},
		{`{"domain":"ffmuc_welt"}`, Request{}, false},
		{`{"public_key":"` + k + `"}`, Request{}, false},
		{`{"domain":1,"public_key":"` + k + `"}`, Request{}, false},
		{`{"domain":"d","public_key":42}`, Request{}, false},
		{`[1,2]`, Request{}, false},
		{`"string"`, Request{}, false},
		{`domain=ffmuc_welt&public_key=x`, Request{}, false},
		{``, Request{}, false},
		{`{"domain":"d","public_key":"k"} {}`, Request{}, false},
		{`{"domain":"d","public_key":"k"`, Request{}, false},
		// What the fast path leaves to encoding/json, answered as before.
		{` {"domain" : "d",` + "\n\t" + `"public_key":"k"} `, Request{PublicKey: "k", Domain: "d"}, true},
		{`{"domain":"d\u0041","public_key":"k"}`, Request{PublicKey: "k", Domain: "dA"}, true},
		{`{"domain":"d","public_key":"k","domain":"e"}`, Request{PublicKey: "k", Domain: "e"}, true},
		{`{"Domain":"d","PUBLIC_KEY":"k"}`, Request{PublicKey: "k", Domain: "d"}, true},
		{`{"domain":"d","public_key":null}`, Request{Domain: "d"}, true},
		{`{"domain":"d","public_key":"k",}`, Request{}, false},
		{`{"domain":"d","public_key":"k"}}`, Request{}, false},
		{`{"domain":"d" "public_key":"k"}`, Request{}, false},
		{"{\"domain\":\"d\x01\",\"public_key\":\"k\"}", Request{}, false},
	}
	for _, tt := range tests {
		got, err := ParseRequest([]byte(tt.body))
		if (err == nil) != tt.ok {
			t.Errorf("ParseRequest(%s) error = %v, want ok=%v", tt.body, err, tt.ok)
			continue
		}
		if err != nil && !errors.Is(err, ErrBadRequest) {
			t.Errorf("ParseRequest(%s) error %v is not ErrBadRequest", tt.body, err)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParseRequest(%s) (-want +got):\n%s", tt.body, diff)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"domain":"ffmuc_welt","public_key":"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="}`))
	f.Add([]byte(`{"domain":"ffmuc_welt","public_key":"x","location":"MUC"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(` {"public_key" : "k", "domain":"d" ,"location":"" } ` + "\n"))
	f.Add([]byte(`{"public_key":"k","domain":"d","Domain":"e"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseRequest(body)
		if err != nil && !errors.Is(err, ErrBadRequest) {
			t.Fatalf("error %v is not ErrBadRequest", err)
		}
		if err != nil && r != (Request{}) {
			t.Fatalf("error with a non-empty request %+v", r)
		}
		// The fast path answers only what encoding/json answers the same.
		if plain, ok := parsePlain(body); ok {
			full, err := parseJSON(body)
			if err != nil {
				t.Fatalf("parsePlain took %q, parseJSON refuses it: %v", body, err)
			}
			if diff := cmp.Diff(full, plain); diff != "" {
				t.Fatalf("parsePlain(%q) differs from parseJSON (-json +plain):\n%s", body, diff)
			}
		}
	})
}
