// Package entrypoint is the container entrypoint of the reference's Docker image, redone without a shell for our
// distroless image: when no configuration file exists it writes one from the reference's environment variables
// (WGKEX_DOMAINS, MQTT_BROKER_URL, …), and it maps the command words broker and worker to our two commands. The
// reference's docker-compose.yml thus runs our image unchanged.
package entrypoint

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
)

// Defaults are the values the reference's entrypoint uses for variables that are not set.
var Defaults = map[string]string{
	"WGKEX_DOMAINS":         "ffmuc_muc_cty, ffmuc_muc_nord, ffmuc_muc_ost, ffmuc_muc_sued, ffmuc_muc_west, ffmuc_welt, ffwert_city",
	"WGKEX_DOMAIN_PREFIXES": "ffmuc_, ffdon_, ffwert_",
	"WGKEX_DEBUG":           "DEBUG",
	"MQTT_BROKER_URL":       "mqtt",
	"MQTT_BROKER_PORT":      "1883",
	"MQTT_USERNAME":         "",
	"MQTT_PASSWORD":         "",
	"MQTT_KEEPALIVE":        "5",
	"MQTT_TLS":              "False",
}

// fileOnly are the reference's variables that our WGKEX_ overrides would also read. The reference reads them only
// to write a missing file, so the entrypoint hides them from the command: the file wins.
var fileOnly = []string{"WGKEX_DOMAINS", "WGKEX_DOMAIN_PREFIXES", "WGKEX_DEBUG"}

// ReferenceYAML renders the configuration the reference's entrypoint writes from the environment (getenv): a
// variable that is unset or empty takes its value from Defaults, as the shell's ${VAR:=default} does. Lists are
// split at commas and spaces. Strings are quoted, so that a password with # or : means itself. In that deployment
// the MQTT server is a Mosquitto beside the broker, so broker.mqtt_server points at the workers' server too.
func ReferenceYAML(getenv func(string) string) ([]byte, error) {
	for name := range Defaults {
		if !utf8.ValidString(getenv(name)) {
			return nil, fmt.Errorf("%s is not UTF-8", name)
		}
	}
	v := func(name string) string {
		if s := getenv(name); s != "" {
			return s
		}
		return Defaults[name]
	}
	var b strings.Builder
	list := func(key, name string) {
		b.WriteString(key + ":\n")
		for _, f := range strings.FieldsFunc(v(name), func(r rune) bool { return r == ',' || r == ' ' }) {
			b.WriteString("  - " + strconv.Quote(f) + "\n")
		}
	}
	list("domains", "WGKEX_DOMAINS")
	list("domain_prefixes", "WGKEX_DOMAIN_PREFIXES")
	tls := parseBool(v("MQTT_TLS"))
	fmt.Fprintf(&b, "log_level: %s\n", strconv.Quote(v("WGKEX_DEBUG")))
	fmt.Fprintf(&b, "mqtt:\n  broker_url: %s\n  broker_port: %s\n  username: %s\n  password: %s\n  keepalive: %s\n  tls: %t\n",
		strconv.Quote(v("MQTT_BROKER_URL")), number(v("MQTT_BROKER_PORT")), strconv.Quote(v("MQTT_USERNAME")),
		strconv.Quote(v("MQTT_PASSWORD")), number(v("MQTT_KEEPALIVE")), tls)
	fmt.Fprintf(&b, "broker:\n  mqtt_server:\n    url: %s\n    username: %s\n    password: %s\n    keepalive: %s\n",
		strconv.Quote(serverURL(v("MQTT_BROKER_URL"), strings.TrimSpace(v("MQTT_BROKER_PORT")), tls)),
		strconv.Quote(v("MQTT_USERNAME")), strconv.Quote(v("MQTT_PASSWORD")), number(v("MQTT_KEEPALIVE")))
	return []byte(b.String()), nil
}

// number renders an integer as YAML; anything else is quoted, so that the configuration check reports it and
// nothing can be slipped into the file.
func number(s string) string {
	if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
		return strconv.Itoa(n)
	}
	return strconv.Quote(s)
}

// parseBool reads MQTT_TLS as the reference does: bool() of the value PyYAML (YAML 1.1) makes of it. False, no
// and off in the spellings YAML knows, null and zero are false; anything else (True, yes, 1, but also 2 or
// enabled) is true.
func parseBool(s string) bool {
	s = strings.TrimSpace(s)
	switch s {
	case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "", "~", "null", "Null", "NULL":
		return false
	}
	return !yamlZero.MatchString(s)
}

// yamlZero matches the YAML 1.1 spellings of the integer and float zero.
var yamlZero = regexp.MustCompile(`^[-+]?(0[0_]*|0b[0_]+|0x[0_]+|0[0_]*\.[0_]*([eE][-+][0-9]+)?|\.[0_]+([eE][-+][0-9]+)?)$`)

// serverURL builds broker.mqtt_server.url from the reference's host (or URL), port and TLS flag. What
// mqttclient.ServerURL cannot read is written as it is, for the configuration check to name.
func serverURL(host, port string, tls bool) string {
	p, _ := strconv.Atoi(port) // not a number: broker_port names it, and the standard port stands in here
	u, err := mqttclient.ServerURL(host, p, tls)
	if err != nil {
		return host
	}
	return u.String()
}

// Plan is what the entrypoint does: write Config to Path (when not nil), then run Argv with Env.
type Plan struct {
	Path   string
	Config []byte
	Argv   []string
	Env    []string
}

// Options are what Prepare reads from the process and the file system.
type Options struct {
	// Args are the entrypoint's arguments without its own name.
	Args []string
	// Environ is os.Environ().
	Environ []string
	// Exists reports whether the configuration file exists.
	Exists func(path string) bool
	// Dir holds the wgkex-broker and wgkex-worker binaries.
	Dir string
}

// Prepare decides what to run: "broker" (also with no arguments) runs wgkex-broker, "worker" runs wgkex-worker,
// both with the rest of the arguments; anything else runs as given, as the reference's `exec "$@"` does. The
// configuration file is $WGKEX_CONFIG_FILE, else /etc/wgkex.yaml; when it does not exist, Config holds what to
// write there.
func Prepare(o Options) (Plan, error) {
	env := map[string]string{}
	var keep []string
	for _, kv := range o.Environ {
		name, val, _ := strings.Cut(kv, "=")
		env[name] = val
		hidden := false
		for _, f := range fileOnly {
			hidden = hidden || name == f
		}
		if !hidden {
			keep = append(keep, kv)
		}
	}
	p := Plan{Path: "/etc/wgkex.yaml", Env: keep}
	if f := env["WGKEX_CONFIG_FILE"]; f != "" {
		p.Path = f
	}
	if !o.Exists(p.Path) {
		var err error
		if p.Config, err = ReferenceYAML(func(n string) string { return env[n] }); err != nil {
			return Plan{}, err
		}
	}
	args := o.Args
	if len(args) == 0 {
		args = []string{"broker"}
	}
	switch args[0] {
	case "broker":
		p.Argv = append([]string{filepath.Join(o.Dir, "wgkex-broker")}, args[1:]...)
	case "worker":
		p.Argv = append([]string{filepath.Join(o.Dir, "wgkex-worker")}, args[1:]...)
	default:
		p.Argv = args
	}
	return p, nil
}

// Write writes the planned configuration file, if any, and returns the environment to run the command with. When
// the file cannot be written (a read-only /etc, a non-root user), it goes to dir instead and $WGKEX_CONFIG_FILE
// names it.
func (p Plan) Write(write func(path string, data []byte) error, dir string) ([]string, error) {
	if p.Config == nil {
		return p.Env, nil
	}
	if err := write(p.Path, p.Config); err == nil {
		return p.Env, nil
	}
	alt := filepath.Join(dir, "wgkex.yaml")
	if err := write(alt, p.Config); err != nil {
		return nil, fmt.Errorf("write configuration from the environment: %w", err)
	}
	env := make([]string, 0, len(p.Env)+1)
	for _, kv := range p.Env {
		if !strings.HasPrefix(kv, "WGKEX_CONFIG_FILE=") {
			env = append(env, kv)
		}
	}
	return append(env, "WGKEX_CONFIG_FILE="+alt), nil
}
