package config

import (
	"strings"
	"testing"
)

// TestBrokerProblems: a Python deployment's wgkex.yaml naming a remote Mosquitto in mqtt.broker_url stops the
// broker with the setting to use, instead of running an empty embedded server beside the gateways' one. Local
// names, explicit listeners and broker.mqtt_server are fine.
func TestBrokerProblems(t *testing.T) {
	base := "domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\n"
	tests := []struct {
		name, yaml string
		want       string // "" for none
	}{
		{"default", "", ""},
		{"loopback", "mqtt: {broker_url: 127.0.0.1}\n", ""},
		{"localhost url", "mqtt: {broker_url: 'mqtt://localhost:1884'}\n", ""},
		{"ipv6 loopback", "mqtt: {broker_url: '::1'}\n", ""},
		{"python deployment", "mqtt: {broker_url: mqtt.ffmuc.net, broker_port: 1883, username: u, password: p}\n",
			"set broker.mqtt_server.url: mqtt://mqtt.ffmuc.net:1883"},
		{"python deployment with tls", "mqtt: {broker_url: mqtt.ffmuc.net, broker_port: 8883, tls: true}\n",
			"broker.mqtt_server.url: tls://mqtt.ffmuc.net:8883"},
		{"one file, explicit listeners", "mqtt: {broker_url: 192.0.2.1}\nbroker: {mqtt_listeners: [{address: '192.0.2.1:1883'}]}\n", ""},
		{"external server", "mqtt: {broker_url: mqtt.ffmuc.net}\nbroker: {mqtt_server: {url: 'mqtt://mqtt.ffmuc.net'}}\n", ""},
	}
	for _, tc := range tests {
		c, err := Parse([]byte(base+tc.yaml), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		p := strings.Join(c.BrokerProblems(), "\n")
		if (tc.want == "") != (p == "") || !strings.Contains(p, tc.want) {
			t.Errorf("%s: problems %q, want %q", tc.name, p, tc.want)
		}
	}
}

// TestEffectiveMasksSecrets: the configuration check-config prints names every setting and no secret.
func TestEffectiveMasksSecrets(t *testing.T) {
	c, err := Parse([]byte(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers: {gw1.example: {weight: 3, password_hash: "$2a$07$abcdefghijklmnopqrstuu5CFLl1BUo0V8xXcjDRLBxnHO9pJ9sOe"}}
mqtt: {password: hunter2}
broker: {mqtt_server: {url: "mqtt://m", password: s3cret}}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(c.Effective(), "\n")
	for _, secret := range []string{"hunter2", "s3cret", "abcdefghijklmnop"} {
		if strings.Contains(all, secret) {
			t.Errorf("check-config output holds %q:\n%s", secret, all)
		}
	}
	for _, want := range []string{"workers[gw1.example].weight: 3", "workers[gw1.example].password_hash: (set)",
		"mqtt.password: (set)", "broker.mqtt_server.password: (set)", "broker.dashboard.password_hash: (empty)",
		"broker.reconnect_grace: 2m0s", `broker.state_file: "wgkex.db"`} {
		if !strings.Contains(all, want+"\n") {
			t.Errorf("check-config output lacks %q:\n%s", want, all)
		}
	}
}

// TestBrokerWarnings: the risks check-config names.
func TestBrokerWarnings(t *testing.T) {
	c, err := Parse([]byte("domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\nbroker_listen: {host: 0.0.0.0}\nbroker: {allow_anonymous: true}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := strings.Join(c.BrokerWarnings(), "\n")
	for _, want := range []string{"MQTT: no credentials", "broker.allow_anonymous", "status page and /api/v1/status are open", "workers: none configured"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
}

// TestEffectiveMasksLoggingConfig: the reference's logging_config, which this broker ignores, may hold a handler's
// credentials (SMTPHandler, HTTPHandler); check-config does not print it.
func TestEffectiveMasksLoggingConfig(t *testing.T) {
	c, err := Parse([]byte(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
logging_config:
  version: 1
  handlers:
    mail: {class: logging.handlers.SMTPHandler, mailhost: smtp.example, credentials: [alerts, m4ilpass], password: hunter3}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(c.Effective(), "\n")
	for _, secret := range []string{"m4ilpass", "hunter3"} {
		if strings.Contains(all, secret) {
			t.Errorf("check-config output holds %q:\n%s", secret, all)
		}
	}
}

// TestEffectiveMasksURLPassword: a password written into mqtt.broker_url (which the broker does not connect to and
// so does not refuse) is masked in check-config's settings and in the problem that names the url.
func TestEffectiveMasksURLPassword(t *testing.T) {
	c, err := Parse([]byte("domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\nmqtt: {broker_url: \"mqtt://wgkex:s3cr3tx@mosquitto.example\"}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, lines := range map[string][]string{"settings": c.Effective(), "problems": c.BrokerProblems()} {
		if all := strings.Join(lines, "\n"); strings.Contains(all, "s3cr3tx") {
			t.Errorf("check-config %s hold the password:\n%s", name, all)
		}
	}
}
