package web

import (
	"encoding/json"
	"testing"
)

func TestBodies(t *testing.T) {
	tests := []struct{ got, want string }{
		{string(appendEndpoint(nil, "gwü.example", []string{"fe80::1"}, 51820, "k")),
			`{"Endpoint":{"Address":"gw\u00fc.example","AllowedIPs":["fe80::1"],"Port":"51820","PublicKey":"k"}}` + "\n"},
		{string(appendLocations(nil, []string{"München", "Wien<>&"})), `{"locations":["M\u00fcnchen","Wien<>&"]}` + "\n"},
		{string(appendLocations(nil, nil)), `{"locations":[]}` + "\n"},
		{string(appendMessage(nil, "OK")), `{"Message":"OK"}` + "\n"},
		{string(appendError(nil, "Too Many Requests")), `{"error":{"message":"Too Many Requests"}}` + "\n"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got  %s\nwant %s", tt.got, tt.want)
		}
	}
}

// BenchmarkEndpoint compares the v2 answer with what encoding/json took for it before (a struct, json.Marshal).
func BenchmarkEndpoint(b *testing.B) {
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 512)
		for b.Loop() {
			buf = appendEndpoint(buf[:0], "gw04.ext.ffmuc.net", []string{"fe80::27c:16ff:fec0:6c74"}, 40011, gwKey)
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		type endpoint struct {
			Address    string   `json:"Address"`
			AllowedIPs []string `json:"AllowedIPs"`
			Port       string   `json:"Port"`
			PublicKey  string   `json:"PublicKey"`
		}
		type body struct {
			Endpoint endpoint `json:"Endpoint"`
		}
		for b.Loop() {
			out, _ := json.Marshal(body{endpoint{"gw04.ext.ffmuc.net", []string{"fe80::27c:16ff:fec0:6c74"}, "40011", gwKey}})
			_ = append(out, '\n')
		}
	})
}
