package mqttclient

import (
	"net"
	"strings"
	"testing"
)

func TestServerURL(t *testing.T) {
	for _, tc := range []struct {
		addr string
		port int
		tls  bool
		want string // "" for an error
	}{
		// the worker: mqtt.broker_url, mqtt.broker_port, mqtt.tls
		{"127.0.0.1", 1883, false, "mqtt://127.0.0.1:1883"},
		{"broker.example", 8883, true, "tls://broker.example:8883"},
		{"mqtt://broker", 1883, false, "mqtt://broker:1883"},
		{"tls://broker:8884", 1883, false, "tls://broker:8884"},
		{"mqtt://broker:1884", 1883, true, "tls://broker:1884"},
		{"::1", 1883, false, "mqtt://[::1]:1883"},
		{"[::1]", 1883, false, "mqtt://[::1]:1883"},
		{"ws://broker", 1883, false, ""},
		{"", 1883, false, ""},
		{"broker:1883", 1883, false, ""},
		{"a b", 1883, false, ""},
		{"broker", 70000, false, ""},
		// the broker: broker.mqtt_server.url
		{"mqtt://m", 0, false, "mqtt://m:1883"},
		{"tcp://m", 0, false, "mqtt://m:1883"},
		{"tls://m", 0, false, "tls://m:8883"},
		{"ssl://m", 0, false, "tls://m:8883"},
		{"mqtts://m:9000", 0, false, "tls://m:9000"},
		{"mqtt://m:1/path?q", 0, false, "mqtt://m:1"},
		// A password in the url would be dropped without a word, and no error may repeat it.
		{"mqtt://user:s3cret@m:1", 0, false, ""},
		{"ws://gw1:s3cret@broker", 0, false, ""},
		{"mqtt://gw1:s3cret%zz@broker", 0, false, ""},
		{"mqtt://gw1:s3cret@broker:x", 0, false, ""},
		{"mqtt://[2001:db8::1]:1883", 0, false, "mqtt://[2001:db8::1]:1883"},
		{"mqtt://", 0, false, ""},
		{"mqtt://m:0", 0, false, ""},
		{"mqtt://m:65536", 0, false, ""},
		{"mqtt://m:x", 0, false, ""},
		{"http://m", 0, false, ""},
		{"://m", 0, false, ""},
	} {
		u, err := ServerURL(tc.addr, tc.port, tc.tls)
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ServerURL(%q): %v repeats the password", tc.addr, err)
		}
		got := ""
		if err == nil {
			got = u.String()
		}
		if got != tc.want {
			t.Errorf("ServerURL(%q, %d, %v) = %q, %v; want %q", tc.addr, tc.port, tc.tls, got, err, tc.want)
		}
	}
}

func TestParseURL(t *testing.T) {
	for raw, want := range map[string]string{
		"mqtt://m":     "mqtt://m:1883",
		"tls://m:8884": "tls://m:8884",
		"m":            "",
		"m:1883":       "",
		"":             "",
		"http://x":     "",
	} {
		u, err := ParseURL(raw)
		got := ""
		if err == nil {
			got = u.String()
		}
		if got != want {
			t.Errorf("ParseURL(%q) = %q, %v; want %q", raw, got, err, want)
		}
	}
}

// FuzzServerURL: whatever the address, ServerURL returns an error or a URL of scheme mqtt or tls with a host
// and a port and nothing else, which it reads again as itself.
func FuzzServerURL(f *testing.F) {
	f.Add("mqtt://broker", 1883, false)
	f.Add("broker.example", 8883, true)
	f.Add("[::1]", 0, false)
	f.Fuzz(func(t *testing.T, addr string, port int, tls bool) {
		u, err := ServerURL(addr, port, tls)
		if err != nil {
			return
		}
		if u.Scheme != "mqtt" && u.Scheme != "tls" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
			t.Fatalf("ServerURL(%q) = %#v", addr, u)
		}
		host, p, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" || p == "0" || strings.ContainsAny(host, "/?#@") {
			t.Fatalf("ServerURL(%q): host %q (%v)", addr, u.Host, err)
		}
		again, err := ParseURL(u.String())
		if err != nil || again.String() != u.String() {
			t.Fatalf("ServerURL(%q) = %s, read again: %v, %v", addr, u, again, err)
		}
	})
}
