package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestExampleLoads(t *testing.T) {
	c, err := Load("../../wgkex.yaml.example", nil)
	if err != nil {
		t.Fatalf("Load(wgkex.yaml.example): %v", err)
	}
	if got, want := c.BrokerListen.Addr(), "127.0.0.1:5000"; got != want {
		t.Errorf("broker_listen = %s, want %s", got, want)
	}
	if diff := cmp.Diff([]MQTTListener{{Address: "127.0.0.1:1883"}}, c.Broker.MQTTListeners); diff != "" {
		t.Errorf("mqtt listeners (-want +got):\n%s", diff)
	}
	if got := *c.Workers["gw04.in.ffmuc.net"].Weight; got != 30 {
		t.Errorf("gw04 weight = %d, want 30 (worker names with dots must survive)", got)
	}
	if got := c.Workers["gw06.in.ffmuc.net"].Location; got != "Vienna" {
		t.Errorf("gw06 location = %q, want Vienna", got)
	}
	if c.Cleanup.LegacyStaleTimeout.D() != 3*time.Hour || c.Cleanup.InitialHandshakeGrace.D() != 10*time.Minute {
		t.Errorf("cleanup = %+v", c.Cleanup)
	}
	if c.Stripped()["ffmuc_muc_cty"] != "muc_cty" {
		t.Errorf("Stripped = %v", c.Stripped())
	}
}

// validCfg is the reference's _VALID_CFG (SPEC §9), with prefixed domains as our validation requires.
const validCfg = "domain_prefixes:\n- ffmuc_\n- ffdon_\n- ffwert_\nlog_level: DEBUG\ndomains:\n- ffmuc_a\n- ffdon_b\nmqtt:\n  broker_port: 1883\n  broker_url: mqtt://broker\n  keepalive: 5\n  password: pass\n  tls: true\n  username: user\n"

func TestParseReferenceConfig(t *testing.T) {
	c, err := Parse([]byte(validCfg), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := MQTT{BrokerURL: "mqtt://broker", BrokerPort: 1883, Username: "user", Password: "pass", Keepalive: 5, TLS: true}
	if diff := cmp.Diff(want, c.MQTT); diff != "" {
		t.Errorf("mqtt (-want +got):\n%s", diff)
	}
	if c.Log.Level != "debug" {
		t.Errorf("log_level DEBUG gave log.level %q", c.Log.Level)
	}
	if diff := cmp.Diff([]string{"ffmuc_a", "ffdon_b"}, c.Domains); diff != "" {
		t.Errorf("domains (-want +got):\n%s", diff)
	}
}

func TestBrokerListen(t *testing.T) {
	c, err := Parse([]byte(validCfg+`
broker_listen:
  trusted_proxies: [127.0.0.1, "10.1.2.3/8", "::1", "2001:db8::/32"]
broker: {blocklist_file: /etc/wgkex/blocklist.yaml, allowlist_file: /etc/wgkex/allowlist.yaml}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("2001:db8::/32")}
	if diff := cmp.Diff(want, c.BrokerListen.Proxies(), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("Proxies (-want +got):\n%s", diff)
	}
	l := c.BrokerListen
	if l.RateLimit != 10 || l.RateBurst != 300 || l.RateLimitClients != 65536 || l.TLSPort != 0 {
		t.Errorf("defaults: %+v", l)
	}
	if c.Broker.BlocklistFile != "/etc/wgkex/blocklist.yaml" || c.Broker.AllowlistFile != "/etc/wgkex/allowlist.yaml" {
		t.Errorf("list files: %+v", c.Broker)
	}
	c, err = Parse([]byte(validCfg), []string{"WGKEX_BROKER_LISTEN_RATE_LIMIT=0", "WGKEX_BROKER_LISTEN_TRUSTED_PROXIES=10.0.0.1 10.0.0.2"})
	if err != nil || c.BrokerListen.RateLimit != 0 || len(c.BrokerListen.Proxies()) != 2 {
		t.Errorf("from the environment: %+v, %v", c.BrokerListen, err)
	}
}

func TestParseDurations(t *testing.T) {
	c, err := Parse([]byte("domains: [ffmuc_a]\ndomain_prefixes: [ffmuc_]\ncleanup:\n  interval: 3600\n  legacy_stale_timeout: 10800\n  initial_handshake_grace: 0\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cleanup.Interval.D() != time.Hour || c.Cleanup.LegacyStaleTimeout.D() != 3*time.Hour || c.Cleanup.InitialHandshakeGrace != 0 {
		t.Errorf("cleanup = %+v", c.Cleanup)
	}
}

func TestEnvOverrides(t *testing.T) {
	env := []string{
		"WGKEX_MQTT_PASSWORD=s3cret",
		"WGKEX_MQTT_TLS=true",
		"WGKEX_BROKER_LISTEN_PORT=6000",
		"WGKEX_DOMAINS=ffmuc_x, ffmuc_y",
		"WGKEX_EXTERNALNAME=gw.example",
		"WGKEX_BROKER_REPLAY_WINDOW=1h",
		"WGKEX_BROKER_MQTT_LISTENERS=0.0.0.0:1883, [::]:1884",
		"WGKEX_CONFIG_FILE=/ignored",
		"WGKEX_DEBUG=1",
		"OTHER=1",
	}
	c, err := Parse([]byte(validCfg), env)
	if err != nil {
		t.Fatal(err)
	}
	got := []any{c.MQTT.Password, c.MQTT.TLS, c.BrokerListen.Port, c.Domains, c.ExternalName, c.Broker.ReplayWindow.D(), c.Broker.MQTTListeners}
	want := []any{"s3cret", true, 6000, []string{"ffmuc_x", "ffmuc_y"}, "gw.example", time.Hour,
		[]MQTTListener{{Address: "0.0.0.0:1883"}, {Address: "[::]:1884"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("overrides (-want +got):\n%s", diff)
	}
	if _, err := Parse([]byte(validCfg), []string{"WGKEX_BROKER_LISTEN_PORT=abc"}); err == nil {
		t.Error("non-integer port from the environment: want error")
	}
}

func TestEnvOverrideTable(t *testing.T) {
	file := validCfg + "log:\n  level: info\nbroker:\n  state_file: file.db\n"
	tests := []struct {
		env  string
		get  func(*Config) any
		want any
	}{
		{"WGKEX_DOMAINS=ffmuc_x ffmuc_y", func(c *Config) any { return c.Domains }, []string{"ffmuc_x", "ffmuc_y"}},
		{"WGKEX_DOMAINS=ffmuc_x,ffdon_y", func(c *Config) any { return c.Domains }, []string{"ffmuc_x", "ffdon_y"}},
		{"WGKEX_DOMAIN_PREFIXES=ffdon_ ffmuc_", func(c *Config) any { return c.DomainPrefixes }, []string{"ffdon_", "ffmuc_"}},
		{"WGKEX_BROKER_MQTT_LISTENERS=0.0.0.0:1883", func(c *Config) any { return c.Broker.MQTTListeners },
			[]MQTTListener{{Address: "0.0.0.0:1883"}}},
		{"WGKEX_BROKER_STATE_FILE=/var/lib/wgkex/wgkex.db", func(c *Config) any { return c.Broker.StateFile }, "/var/lib/wgkex/wgkex.db"},
		{"WGKEX_BROKER_LISTEN_HOST=0.0.0.0", func(c *Config) any { return c.BrokerListen.Host }, "0.0.0.0"},
		{"WGKEX_MQTT_KEEPALIVE= 7 ", func(c *Config) any { return c.MQTT.Keepalive }, 7},
		{"WGKEX_MQTT_TLS=false", func(c *Config) any { return c.MQTT.TLS }, false},
		{"WGKEX_CLEANUP_INTERVAL=600", func(c *Config) any { return c.Cleanup.Interval.D() }, 10 * time.Minute},
		{"WGKEX_WORKER_HEALTH_PORT=80", func(c *Config) any { return c.Worker.HealthPort }, 80},
		{"WGKEX_WORKER_NAME=gw1", func(c *Config) any { return c.Worker.Name }, "gw1"},
		// log.level and log_level share one name; the environment overrides the file's log.level.
		{"WGKEX_LOG_LEVEL=warn", func(c *Config) any { return c.Log.Level }, "warn"},
		{"WGKEX_LOG_FORMAT=json", func(c *Config) any { return c.Log.Format }, "json"},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			c, err := Parse([]byte(file), []string{tt.env})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, tt.get(c)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestEnvProblems(t *testing.T) {
	env := []string{"WGKEX_MQTT_TLS=maybe", "WGKEX_MQTT_BROKER_PORT=x", "WGKEX_WORKERS=gw1", "WGKEX_CLEANUP_INTERVAL=soon"}
	_, err := Parse([]byte(validCfg), env)
	if err == nil {
		t.Fatal("want error")
	}
	for _, w := range []string{"WGKEX_MQTT_TLS", "WGKEX_MQTT_BROKER_PORT", "WGKEX_WORKERS", "soon"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %s", err, w)
		}
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // substrings, each must appear
	}{
		{"not a mapping", "asdasdasdasd", []string{"YAML"}},
		{"reference _INVALID_LINT", "domain_prefixes: ffmuc_\n", []string{"domain_prefixes"}},
		{"missing everything", "{}", []string{"domains: at least one", "domain_prefixes: at least one"}},
		{"unknown keys", validCfg + "bogus: 1\nmqtt2: {}\n", []string{"bogus", "mqtt2"}},
		{"unknown nested key", validCfg + "broker:\n  state_fiel: x\n", []string{"state_fiel"}},
		{"all domain problems at once",
			"domain_prefixes: [ffmuc_]\ndomains: [ffmuc_welt, welt, ffmuc_thirteenchars, ffmuc_welt]\n",
			[]string{`"welt" starts with none`, "ffmuc_thirteenchars", `both give the interface name wg-welt`}},
		{"whitelist", validCfg + "key_whitelist: [invalid_key]\n", []string{"key_whitelist[0]"}},
		{"whitelist not a list", validCfg + "key_whitelist: not_a_list\n", []string{"key_whitelist"}},
		{"weights and ports", validCfg + "workers:\n  gw1: {weight: -1}\nbroker_listen: {port: 70000}\n", []string{"weight: -1", "broker_listen.port"}},
		{"log", validCfg + "log: {level: loud, format: xml}\n", []string{"log.level", "log.format"}},
		{"durations", validCfg + "cleanup: {interval: soon}\n", []string{"soon"}},
		{"tls listener", validCfg + "broker:\n  mqtt_listeners: [{address: ':8883', cert_file: x}]\n", []string{"cert_file and key_file"}},
		{"https without files", validCfg + "broker_listen: {tls_port: 443, cert_file: x}\n", []string{"tls_port: needs cert_file and key_file"}},
		{"https files without port", validCfg + "broker_listen: {cert_file: x, key_file: y}\n", []string{"set tls_port"}},
		{"https port", validCfg + "broker_listen: {tls_port: 70000, cert_file: x, key_file: y}\n", []string{"tls_port: 70000"}},
		{"trusted proxies", validCfg + "broker_listen: {trusted_proxies: [10.0.0.0/8, proxy.example, 10.0.0.1/33]}\n",
			[]string{"trusted_proxies[1]", "trusted_proxies[2]"}},
		{"rate limit", validCfg + "broker_listen: {rate_limit: -1}\n", []string{"rate_limit: must not be negative"}},
		{"graces", validCfg + "cleanup: {initial_handshake_grace: -1s, interval: 0}\nbroker: {reconnect_grace: -1s}\n",
			[]string{"cleanup.initial_handshake_grace: must not be negative", "broker.reconnect_grace: must not be negative", "cleanup.interval: must be positive"}},
		{"rate burst and clients", validCfg + "broker_listen: {rate_limit: 5, rate_burst: 0, rate_limit_clients: 0}\n",
			[]string{"rate_burst", "rate_limit_clients"}},
		{"retention below the replay window", validCfg + "broker: {replay_window: 3h, key_retention: 2h}\n", []string{"broker.key_retention: 2h0m0s is shorter"}},
		{"bad yaml", "domains: [\n", []string{"YAML"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), nil)
			if err == nil {
				t.Fatal("want error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"), nil)
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
}

func TestPath(t *testing.T) {
	env := func(v string) func(string) string { return func(string) string { return v } }
	if got := Path("a.yaml", env("b.yaml")); got != "a.yaml" {
		t.Errorf("flag first: %s", got)
	}
	if got := Path("", env("b.yaml")); got != "b.yaml" {
		t.Errorf("env second: %s", got)
	}
	if got := Path("", env("")); got != DefaultPath {
		t.Errorf("default last: %s", got)
	}
}

func FuzzParse(f *testing.F) {
	b, _ := os.ReadFile("../../wgkex.yaml.example")
	f.Add(b)
	f.Add([]byte(validCfg))
	f.Add([]byte("asdasdasdasd"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b, nil)
		if err == nil && len(c.Domains) == 0 {
			t.Fatal("accepted a configuration without domains")
		}
	})
}

func TestFromArgs(t *testing.T) {
	if _, err := FromArgs("x", []string{"--config", "../../wgkex.yaml.example"}); err != nil {
		t.Errorf("FromArgs(example): %v", err)
	}
	if _, err := FromArgs("x", []string{"--config", "../../wgkex.yaml.example", "extra"}); err == nil {
		t.Error("FromArgs with a stray argument: want error")
	}
	if _, err := FromArgs("x", []string{"--nope"}); err == nil {
		t.Error("FromArgs with an unknown flag: want error")
	}
}

func TestMQTTSecurityKeys(t *testing.T) {
	c, err := Parse([]byte(`
domains: [ffmuc_a]
domain_prefixes: [ffmuc_]
workers:
  gw1: {password_hash: "$2a$08$x"}
mqtt: {cert_file: /c.pem, key_file: /c.key}
broker:
  mqtt_listeners: [{address: "0.0.0.0:8883", cert_file: /s.pem, key_file: /s.key, client_ca_file: /ca.pem}]
  mqtt_monitors: {grafana: {password_hash: "$2a$08$y"}}
  allow_anonymous: true
  mqtt_limits: {max_packet_size: 1024, max_clients: 10, max_unauthenticated_per_address: 4, connect_timeout: 2s, max_session_expiry: 5m, max_pending: 8}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := MQTTLimits{MaxPacketSize: 1024, MaxClients: 10, MaxUnauthenticatedPerAddress: 4, ConnectTimeout: Duration(2 * time.Second),
		MaxSessionExpiry: Duration(5 * time.Minute), MaxPending: 8}
	if diff := cmp.Diff(want, c.Broker.MQTTLimits); diff != "" {
		t.Errorf("mqtt_limits (-want +got):\n%s", diff)
	}
	if c.Workers["gw1"].PasswordHash != "$2a$08$x" || c.Broker.MQTTMonitors["grafana"].PasswordHash != "$2a$08$y" ||
		!c.Broker.AllowAnonymous || c.Broker.MQTTListeners[0].ClientCAFile != "/ca.pem" || c.MQTT.KeyFile != "/c.key" {
		t.Errorf("security keys not read: %+v", c)
	}
	_, err = Parse([]byte(`
domains: [ffmuc_a]
domain_prefixes: [ffmuc_]
mqtt: {cert_file: /c.pem}
broker:
  mqtt_listeners: [{address: "0.0.0.0:8883", client_ca_file: /ca.pem}]
  mqtt_limits: {max_clients: -1}
`), nil)
	for _, want := range []string{"client_ca_file needs cert_file", "mqtt: cert_file and key_file", "negative limit"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
}
