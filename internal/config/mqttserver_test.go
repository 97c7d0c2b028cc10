package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMQTTServer(t *testing.T) {
	c, err := Parse([]byte(validCfg+`broker:
  mqtt_server:
    url: tls://mqtt.example.org:8883
    username: broker-a
    ca_file: /etc/wgkex/ca.pem
    cert_file: /etc/wgkex/a.pem
    key_file: /etc/wgkex/a.key
    client_id: broker-a
`), []string{"WGKEX_BROKER_MQTT_SERVER_PASSWORD=s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	want := MQTTServer{URL: "tls://mqtt.example.org:8883", Username: "broker-a", Password: "s3cret", CAFile: "/etc/wgkex/ca.pem",
		CertFile: "/etc/wgkex/a.pem", KeyFile: "/etc/wgkex/a.key", ClientID: "broker-a", Keepalive: 10}
	if diff := cmp.Diff(want, c.Broker.MQTTServer); diff != "" {
		t.Errorf("mqtt_server (-want +got):\n%s", diff)
	}
	c, err = Parse([]byte(validCfg), nil)
	if err != nil || c.Broker.MQTTServer.URL != "" {
		t.Errorf("default: embedded server wanted, got %+v, %v", c.Broker.MQTTServer, err)
	}
}

func TestMQTTServerRefused(t *testing.T) {
	for _, tc := range []struct{ yaml, problem string }{
		{"url: http://x", "scheme is not mqtt or tls"},
		{"url: mqtt://", "no host"},
		{"url: mqtt://x\n    cert_file: a", "cert_file and key_file go together"},
		{"url: mqtt://x\n    client_id: a/b", "client_id"},
		{"url: mqtt://x\n    keepalive: 0", "keepalive"},
		{"url: mqtt://x\n    bogus: 1", "bogus"},
	} {
		_, err := Parse([]byte(validCfg+"broker:\n  mqtt_server:\n    "+tc.yaml+"\n"), nil)
		if err == nil || !strings.Contains(err.Error(), tc.problem) {
			t.Errorf("%q: %v, want a problem with %q", tc.yaml, err, tc.problem)
		}
	}
}

// TestMQTTServerURLCredentials: a password in broker.mqtt_server.url, which the broker would not use (it logs in
// with username and password), is refused, and no problem repeats it.
func TestMQTTServerURLCredentials(t *testing.T) {
	for _, u := range []string{"mqtt://broker:s3cret@x", "http://broker:s3cret@x", "mqtt://broker:s3cret@", "mqtt://broker:s3cret%zz@x"} {
		_, err := Parse([]byte(validCfg+"broker:\n  mqtt_server:\n    url: "+u+"\n"), nil)
		if err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: %v, want a problem without the password", u, err)
		}
	}
}
