package web

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/store"
)

// counter is the broker's Publisher here; the MQTT path is tested with the real server in brokerd.
type counter struct{ n atomic.Int64 }

func (c *counter) Publish(string, []byte, bool, byte) error { c.n.Add(1); return nil }

const (
	key1  = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	gwKey = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
)

func newServer(t testing.TB) (*Server, *broker.Broker, *counter) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "state.db"), testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pub := &counter{}
	b, err := broker.New(st, pub, testenv.Logger(t), broker.Options{
		Domains:      []string{"ffmuc_welt"},
		Gateways:     map[string]broker.Gateway{"gw04": {Weight: 1, Location: "MUC"}, "gw05": {Weight: 1, Location: "Vienna"}, "gw06": {Weight: 1, Location: "MUC"}, "gw07": {Weight: 1}},
		ReplayWindow: time.Hour, ReconnectGrace: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	return New(b, testenv.Logger(t), Options{}), b, pub
}

func do(s *Server, method, path, contentType, body string) (int, string, string) {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	return rec.Code, rec.Body.String(), rec.Header().Get("Content-Type")
}

const generic = `{"error":{"message":"An internal error has occurred. Please try again later."}}` + "\n"

func TestAPI(t *testing.T) {
	s, b, pub := newServer(t)
	good := `{"domain": "ffmuc_welt", "public_key": "` + key1 + `"}`
	tests := []struct {
		name, method, path, ctype, body string
		code                            int
		want                            string
	}{
		{"v1", "POST", "/api/v1/wg/key/exchange", "application/json", good, 200, `{"Message":"OK"}` + "\n"},
		{"v1 form content type (Gluon)", "POST", "/api/v1/wg/key/exchange", "application/x-www-form-urlencoded", good, 200, `{"Message":"OK"}` + "\n"},
		{"v1 key with newline", "POST", "/api/v1/wg/key/exchange", "", `{"domain":"ffmuc_welt","public_key":"` + key1 + `\n"}`, 400, generic},
		{"v1 bad key", "POST", "/api/v1/wg/key/exchange", "", `{"domain":"ffmuc_welt","public_key":"abc"}`, 400, generic},
		{"v1 unknown domain", "POST", "/api/v1/wg/key/exchange", "", `{"domain":"welt","public_key":"` + key1 + `"}`, 400, generic},
		{"v1 not json", "POST", "/api/v1/wg/key/exchange", "", `public_key=x`, 400, generic},
		{"v1 list", "POST", "/api/v1/wg/key/exchange", "", `[1]`, 400, generic},
		{"v2 no gateway", "POST", "/api/v2/wg/key/exchange", "", good, 400,
			`{"error":{"message":"no gateway online for this domain, please check the domain value and try again later"}}` + "\n"},
		{"locations", "GET", "/api/v1/locations", "", "", 200, `{"locations":["MUC","Vienna"]}` + "\n"},
		{"wrong method", "GET", "/api/v1/wg/key/exchange", "", "", 405, `{"error":{"message":"Method Not Allowed"}}` + "\n"},
		{"unknown path", "GET", "/nope", "", "", 404, `{"error":{"message":"Not Found"}}` + "\n"},
		{"body too large", "POST", "/api/v1/wg/key/exchange", "", `{"domain":"` + strings.Repeat("x", 20000) + `"}`, 413, `{"error":{"message":"Request Entity Too Large"}}` + "\n"},
	}
	for _, tt := range tests {
		code, body, ctype := do(s, tt.method, tt.path, tt.ctype, tt.body)
		if code != tt.code || body != tt.want {
			t.Errorf("%s: %d %q, want %d %q", tt.name, code, body, tt.code, tt.want)
		}
		if ctype != "application/json" {
			t.Errorf("%s: Content-Type %q", tt.name, ctype)
		}
	}
	if n := pub.n.Load(); n != 3 {
		t.Errorf("published %d keys, want 3 (two v1, one v2)", n)
	}

	d := wire.WorkerData{ExternalAddress: "gw04.ext.ffmuc.net", Port: 40011, PublicKey: gwKey, LinkAddress: "fe80::27c:16ff:fec0:6c74"}
	b.HandleData(wire.DataTopic("gw04", "ffmuc_welt"), d.Marshal())
	b.HandleStatus(wire.StatusTopic("gw04"), []byte("1"))
	b.HandleMetric(wire.MetricTopic("ffmuc_welt", "gw04"), []byte("20"))
	code, body, _ := do(s, "POST", "/api/v2/wg/key/exchange", "application/x-www-form-urlencoded", good)
	want := `{"Endpoint":{"Address":"gw04.ext.ffmuc.net","AllowedIPs":["fe80::27c:16ff:fec0:6c74"],"Port":"40011","PublicKey":"` + gwKey + `"}}` + "\n"
	if code != 200 || body != want {
		t.Errorf("v2: %d %s\nwant %s", code, body, want)
	}
	code, body, ctype := do(s, "GET", "/", "", "")
	if code != 200 || !strings.Contains(body, "<h1>WGKEX</h1>") || !strings.HasPrefix(ctype, "text/html") {
		t.Errorf("GET /: %d %q %q", code, body, ctype)
	}
}

func FuzzAPI(f *testing.F) {
	f.Add(`{"domain":"ffmuc_welt","public_key":"` + key1 + `"}`)
	f.Add(`{"domain":"ffmuc_welt","public_key":"` + key1 + `","location":"MUC"}`)
	f.Add(`[`)
	f.Add("\xef\xbb\xbf{\"domain\":\"ffmuc_welt\",\"public_key\":\"" + key1 + "\"}")
	s, _, _ := newServer(f)
	f.Fuzz(func(t *testing.T, body string) {
		for _, p := range []string{"/api/v1/wg/key/exchange", "/api/v2/wg/key/exchange"} {
			code, resp, _ := do(s, http.MethodPost, p, "", body)
			if code != 200 && code != 400 && code != 413 {
				t.Fatalf("%s %q: %d %s", p, body, code, resp)
			}
			if !strings.HasPrefix(resp, "{") || !strings.HasSuffix(resp, "}\n") {
				t.Fatalf("%s %q: body %q is not a JSON object", p, body, resp)
			}
		}
	})
}
