package entrypoint

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/freifunkMUC/wgkex-go/internal/config"
)

func envFunc(m map[string]string) func(string) string { return func(n string) string { return m[n] } }

func TestReferenceYAML(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"defaults", nil, `domains:
  - "ffmuc_muc_cty"
  - "ffmuc_muc_nord"
  - "ffmuc_muc_ost"
  - "ffmuc_muc_sued"
  - "ffmuc_muc_west"
  - "ffmuc_welt"
  - "ffwert_city"
domain_prefixes:
  - "ffmuc_"
  - "ffdon_"
  - "ffwert_"
log_level: "DEBUG"
mqtt:
  broker_url: "mqtt"
  broker_port: 1883
  username: ""
  password: ""
  keepalive: 5
  tls: false
broker:
  mqtt_server:
    url: "mqtt://mqtt:1883"
    username: ""
    password: ""
    keepalive: 5
`},
		{"set", map[string]string{"WGKEX_DOMAINS": "ffa_x,ffa_y  ffb_z", "WGKEX_DOMAIN_PREFIXES": "ffa_,ffb_", "WGKEX_DEBUG": "INFO",
			"MQTT_BROKER_URL": "mqtt.example.org", "MQTT_BROKER_PORT": "8883", "MQTT_USERNAME": "broker", "MQTT_PASSWORD": "p#ss: word",
			"MQTT_KEEPALIVE": "30", "MQTT_TLS": "True"}, `domains:
  - "ffa_x"
  - "ffa_y"
  - "ffb_z"
domain_prefixes:
  - "ffa_"
  - "ffb_"
log_level: "INFO"
mqtt:
  broker_url: "mqtt.example.org"
  broker_port: 8883
  username: "broker"
  password: "p#ss: word"
  keepalive: 30
  tls: true
broker:
  mqtt_server:
    url: "tls://mqtt.example.org:8883"
    username: "broker"
    password: "p#ss: word"
    keepalive: 30
`},
		{"url with scheme, bad port", map[string]string{"MQTT_BROKER_URL": "ssl://m:9000", "MQTT_BROKER_PORT": "1883\nworkers: {}"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ReferenceYAML(envFunc(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			got := string(b)
			if tc.want == "" {
				if !strings.Contains(got, `url: "tls://m:9000"`) || !strings.Contains(got, `broker_port: "1883\nworkers: {}"`) {
					t.Errorf("got\n%s", got)
				}
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestTLSFlag: MQTT_TLS means what bool() of PyYAML's value means in the reference: false, no, off (in the
// spellings YAML 1.1 knows), null and zero are false; anything else, e.g. 2 or enabled, is true.
func TestTLSFlag(t *testing.T) {
	for s, want := range map[string]bool{
		"False": false, "false": false, "FALSE": false, "no": false, "Off": false, "0": false, "-0": false, "0.0": false,
		"~": false, "null": false, " False ": false,
		"True": true, "true": true, "yes": true, "On": true, "1": true, "y": true, "2": true, "enabled": true, "fAlse": true,
	} {
		b, err := ReferenceYAML(envFunc(map[string]string{"MQTT_TLS": s}))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(string(b), "tls: true"); got != want {
			t.Errorf("MQTT_TLS=%q: tls %v, want %v", s, got, want)
		}
	}
}

func TestPrepare(t *testing.T) {
	exists := func(ok bool) func(string) bool { return func(string) bool { return ok } }
	for _, tc := range []struct {
		name     string
		args     []string
		environ  []string
		exists   bool
		wantArgv []string
		wantPath string
		wantEnv  []string
		write    bool
	}{
		{"default command", nil, []string{"WGKEX_DOMAINS=ffmuc_a", "MQTT_BROKER_URL=mqtt"}, false,
			[]string{"/bin/wgkex-broker"}, "/etc/wgkex.yaml", []string{"MQTT_BROKER_URL=mqtt"}, true},
		{"worker with flags, file exists", []string{"worker", "--config", "/x.yaml"}, []string{"WGKEX_DOMAIN_PREFIXES=ffa_", "WGKEX_MQTT_PASSWORD=s", "WGKEX_DEBUG=INFO"}, true,
			[]string{"/bin/wgkex-worker", "--config", "/x.yaml"}, "/etc/wgkex.yaml", []string{"WGKEX_MQTT_PASSWORD=s"}, false},
		{"other command", []string{"/wgkex-broker", "hash-password"}, []string{"WGKEX_CONFIG_FILE=/c.yaml"}, true,
			[]string{"/wgkex-broker", "hash-password"}, "/c.yaml", []string{"WGKEX_CONFIG_FILE=/c.yaml"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Prepare(Options{Args: tc.args, Environ: tc.environ, Exists: exists(tc.exists), Dir: "/bin"})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantArgv, p.Argv); diff != "" {
				t.Errorf("argv (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantEnv, p.Env); diff != "" {
				t.Errorf("env (-want +got):\n%s", diff)
			}
			if p.Path != tc.wantPath || (p.Config != nil) != tc.write {
				t.Errorf("path %s, config %q", p.Path, p.Config)
			}
		})
	}
}

// TestReferenceEnvironment runs the entrypoint logic with the environment of the reference's docker-compose.yml
// and loads the result as the broker would: first with no file (written from the environment, /etc not writable,
// so it goes to the temporary directory), then with a file of the operator's, which wins over WGKEX_DOMAINS.
func TestReferenceEnvironment(t *testing.T) {
	raw, err := os.ReadFile("testdata/reference-compose.env")
	if err != nil {
		t.Fatal(err)
	}
	environ := strings.Split(strings.TrimSpace(string(raw)), "\n")
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc", "wgkex.yaml") // its directory does not exist: not writable
	environ = append(environ, "WGKEX_CONFIG_FILE="+etc)
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	p, err := Prepare(Options{Args: []string{"broker"}, Environ: environ, Exists: exists, Dir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	env, err := p.Write(func(p string, b []byte) error { return os.WriteFile(p, b, 0o600) }, dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.Path("", lookup(env)), env)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"ffmuc_muc_cty", "ffmuc_muc_nord", "ffmuc_muc_ost", "ffmuc_muc_sued", "ffmuc_muc_west", "ffmuc_welt", "ffwert_city"}, cfg.Domains); diff != "" {
		t.Errorf("domains (-want +got):\n%s", diff)
	}
	if cfg.Broker.MQTTServer.URL != "mqtt://mqtt:1883" || cfg.MQTT.BrokerURL != "mqtt" || cfg.MQTT.Keepalive != 5 || cfg.Broker.MQTTServer.Keepalive != 5 || cfg.MQTT.TLS || cfg.Log.Level != "debug" {
		t.Errorf("config from the environment: %+v, %+v, log %s", cfg.Broker.MQTTServer, cfg.MQTT, cfg.Log.Level)
	}
	if diff := cmp.Diff([]string{"/wgkex-broker"}, p.Argv); diff != "" {
		t.Errorf("argv (-want +got):\n%s", diff)
	}

	// The operator's own file wins over the reference's variables, which the compose file always sets.
	own := filepath.Join(dir, "own.yaml")
	os.WriteFile(own, []byte("domains: [ffmuc_only]\ndomain_prefixes: [ffmuc_]\n"), 0o600)
	environ[len(environ)-1] = "WGKEX_CONFIG_FILE=" + own
	if p, err = Prepare(Options{Args: []string{"worker"}, Environ: environ, Exists: exists, Dir: "/"}); err != nil {
		t.Fatal(err)
	}
	env, err = p.Write(func(string, []byte) error { return errors.New("must not write") }, dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = config.Load(config.Path("", lookup(env)), env)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"ffmuc_only"}, cfg.Domains); diff != "" {
		t.Errorf("domains with the operator's file (-want +got):\n%s", diff)
	}
}

func lookup(env []string) func(string) string {
	return func(name string) string {
		for _, kv := range env {
			if n, v, _ := strings.Cut(kv, "="); n == name {
				return v
			}
		}
		return ""
	}
}

// FuzzReferenceYAML: whatever the variables hold, the file has only the reference's keys and the domains are
// exactly the words of WGKEX_DOMAINS.
func FuzzReferenceYAML(f *testing.F) {
	f.Add("ffmuc_a, ffmuc_b", "1883", "pass", "mqtt")
	f.Add("x\ny: 1", "1\nworkers: {}", "\"", "tls://h:1")
	f.Fuzz(func(t *testing.T, domains, port, password, url string) {
		env := map[string]string{"WGKEX_DOMAINS": domains, "MQTT_BROKER_PORT": port, "MQTT_PASSWORD": password, "MQTT_BROKER_URL": url}
		b, err := ReferenceYAML(envFunc(env))
		if err != nil {
			return // not UTF-8: refused
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			t.Fatalf("not YAML: %v", err)
		}
		for k := range m {
			switch k {
			case "domains", "domain_prefixes", "log_level", "mqtt", "broker":
			default:
				t.Fatalf("key %q slipped in", k)
			}
		}
		want := strings.FieldsFunc(domains, func(r rune) bool { return r == ',' || r == ' ' })
		if len(want) == 0 {
			return
		}
		got, _ := m["domains"].([]any)
		if len(got) != len(want) {
			t.Fatalf("domains %q from %q", got, domains)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("domain %q, want %q", got[i], want[i])
			}
		}
	})
}
