// Package config loads wgkex.yaml with koanf: the file named by --config, else $WGKEX_CONFIG_FILE, else
// /etc/wgkex.yaml, then WGKEX_-prefixed environment overrides. Every key of the reference wgkex.yaml keeps its
// meaning; unknown keys and inconsistent values are reported all at once.
package config

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"

	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
	"github.com/freifunkMUC/wgkex-go/internal/platform/passwd"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// DefaultPath is read when neither --config nor $WGKEX_CONFIG_FILE names a file.
const DefaultPath = "/etc/wgkex.yaml"

// EnvFile names the environment variable that points at the configuration file, as in the reference.
const EnvFile = "WGKEX_CONFIG_FILE"

// envPrefix starts every environment override: WGKEX_MQTT_PASSWORD sets mqtt.password.
const envPrefix = "WGKEX_"

// Config is the whole wgkex.yaml. Broker and worker read the parts they need.
type Config struct {
	Domains        []string          `koanf:"domains"`
	DomainPrefixes []string          `koanf:"domain_prefixes"`
	Workers        map[string]Worker `koanf:"workers"`
	ExternalName   string            `koanf:"externalName"`
	MQTT           MQTT              `koanf:"mqtt"`
	BrokerListen   Listen            `koanf:"broker_listen"`
	KeyWhitelist   []string          `koanf:"key_whitelist"`
	Cleanup        Cleanup           `koanf:"cleanup"`
	Log            Log               `koanf:"log"`
	Broker         Broker            `koanf:"broker"`
	Worker         WorkerAgent       `koanf:"worker"`

	// LogLevel is the reference's docker entrypoint key; it sets log.level when log.level is not given.
	LogLevel string `koanf:"log_level"`
	// LoggingConfig is the reference's Python dictConfig. It is accepted so that old files load, and ignored.
	LoggingConfig any `koanf:"logging_config"`
}

// Worker is one gateway as the broker knows it: workers.<name>.
type Worker struct {
	// Weight is the share of peers this gateway should carry relative to the others. Missing means 1.
	Weight *int `koanf:"weight"`
	// Location is an optional free-form place (e.g. MUC) a node may ask for.
	Location string `koanf:"location"`
	// PasswordHash is the bcrypt hash of the worker's own MQTT password (username = worker name), made with
	// wgkex-broker hash-password. A worker with one no longer accepts the shared mqtt.password.
	PasswordHash string `koanf:"password_hash"`
}

// MQTT is how clients reach the MQTT server, and the credentials the embedded server accepts.
type MQTT struct {
	BrokerURL  string `koanf:"broker_url"`
	BrokerPort int    `koanf:"broker_port"`
	Username   string `koanf:"username"`
	Password   string `koanf:"password"`
	Keepalive  int    `koanf:"keepalive"`
	TLS        bool   `koanf:"tls"`
	// CAFile is a PEM bundle to verify the server with; empty means the system roots.
	CAFile string `koanf:"ca_file"`
	// ServerName overrides the name verified in the server certificate.
	ServerName string `koanf:"server_name"`
	// CertFile and KeyFile are the worker's TLS client certificate (CN or a DNS SAN = worker name).
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
}

// Listen is where the broker's REST API listens (broker_listen), and how it treats its clients.
type Listen struct {
	Host string `koanf:"host"`
	Port int    `koanf:"port"`
	// TLSPort, when not 0, serves the same API over HTTPS on Host:TLSPort with CertFile and KeyFile (PEM), which
	// are reloaded when they change.
	TLSPort  int    `koanf:"tls_port"`
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// TrustedProxies are the addresses or CIDRs of reverse proxies whose X-Forwarded-For and X-Real-IP name the
	// client. From any other peer these headers are ignored.
	TrustedProxies []string `koanf:"trusted_proxies"`
	// RateLimit is the key exchanges per second one client address may sustain (IPv6: one /64); 0 disables
	// the limit.
	RateLimit int `koanf:"rate_limit"`
	// RateBurst is how many key exchanges one client address may make at once.
	RateBurst int `koanf:"rate_burst"`
	// RateLimitClients bounds the client addresses the limiter tracks; the least recently seen is forgotten.
	RateLimitClients int `koanf:"rate_limit_clients"`
}

// Proxies returns TrustedProxies as prefixes (a single address is a /32 or /128). Validate has checked them.
func (l Listen) Proxies() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(l.TrustedProxies))
	for _, s := range l.TrustedProxies {
		if p, err := parseProxy(s); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func parseProxy(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR", s)
	}
	a = a.Unmap().WithZone("")
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Addr is host:port.
func (l Listen) Addr() string { return net.JoinHostPort(l.Host, strconv.Itoa(l.Port)) }

// Cleanup times the worker's stale-peer sweep (the keys of the reference's later versions).
type Cleanup struct {
	Interval              Duration `koanf:"interval"`
	LegacyStaleTimeout    Duration `koanf:"legacy_stale_timeout"`
	InitialHandshakeGrace Duration `koanf:"initial_handshake_grace"`
}

// Log chooses the log level (debug, info, warn, error) and format (text, json).
type Log struct {
	Level  string `koanf:"level"`
	Format string `koanf:"format"`
}

// AdminSocketPath is where the administration socket is: broker.admin_socket, else beside the state file.
func (b Broker) AdminSocketPath() string {
	if b.AdminSocket != "" {
		return b.AdminSocket
	}
	return b.StateFile + ".sock"
}

// Broker holds what only wgkex-broker needs.
type Broker struct {
	// StateFile is the bbolt database of keys, workers and retained MQTT messages.
	StateFile string `koanf:"state_file"`
	// AdminSocket is the Unix socket of the administration interface (wgkex-broker backup); empty: the state file's
	// name with .sock appended.
	AdminSocket string `koanf:"admin_socket"`
	// MQTTListeners are the embedded MQTT server's listeners.
	MQTTListeners []MQTTListener `koanf:"mqtt_listeners"`
	// ReplayWindow is how far back a returning worker is sent the keys of its domains.
	ReplayWindow Duration `koanf:"replay_window"`
	// ReconnectGrace is how long a worker that was online may take to reconnect before it is marked offline:
	// after a broker start, and with an external MQTT server after the broker's connection to it comes back.
	ReconnectGrace Duration `koanf:"reconnect_grace"`
	// KeyRetention is how long a key not registered again is kept; a background sweep deletes older ones.
	KeyRetention Duration `koanf:"key_retention"`
	// BlocklistFile names a YAML list of keys that may never register (with optional reasons); reloaded on change.
	BlocklistFile string `koanf:"blocklist_file"`
	// AllowlistFile names a YAML mapping of domains to the only keys accepted there; reloaded on change.
	AllowlistFile string `koanf:"allowlist_file"`
	// MQTTServer, when its url is set, is an existing MQTT server the broker connects to as a client instead of
	// starting its embedded one. Several brokers on the same server share keys, replays and gateway choices.
	MQTTServer MQTTServer `koanf:"mqtt_server"`
	// MQTTMonitors are read-only MQTT accounts (subscribe to worker topics, never publish, never see keys).
	MQTTMonitors map[string]MQTTMonitor `koanf:"mqtt_monitors"`
	// listenersDefault: MQTTListeners is the default, not set in the file (BrokerProblems).
	listenersDefault bool
	// AllowAnonymous accepts MQTT clients without credentials on every listener (default: only on loopback
	// listeners, and only while no credential is configured).
	AllowAnonymous bool `koanf:"allow_anonymous"`
	// MQTTLimits bound what one MQTT client can cost; zero values take the defaults.
	MQTTLimits MQTTLimits `koanf:"mqtt_limits"`
	// LogNodeAddresses adds the node's address to the INFO line the broker logs for each registration (default
	// false: key, domain, gateway and API version only).
	LogNodeAddresses bool `koanf:"log_node_addresses"`
	// Dashboard protects the status page and chooses how often its chart is sampled.
	Dashboard Dashboard `koanf:"dashboard"`
}

// MQTTServer is an external MQTT server (Mosquitto) and how the broker logs in to it: broker.mqtt_server.
type MQTTServer struct {
	// URL is mqtt://host:1883 or tls://host:8883; empty means the embedded server.
	URL      string `koanf:"url"`
	Username string `koanf:"username"`
	Password string `koanf:"password"`
	// CAFile is a PEM bundle to verify the server with; empty means the system roots.
	CAFile string `koanf:"ca_file"`
	// ServerName overrides the name verified in the server certificate.
	ServerName string `koanf:"server_name"`
	// CertFile and KeyFile are a client certificate, for servers that require one.
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// ClientID is the broker's MQTT client id and its name among the other brokers (default wgkex-broker-<hostname>).
	ClientID string `koanf:"client_id"`
	// Keepalive is the MQTT keepalive in seconds; the other brokers notice this one is gone within 1.5× it.
	Keepalive int `koanf:"keepalive"`
}

// MQTTMonitor is a read-only MQTT account: broker.mqtt_monitors.<name>.
type MQTTMonitor struct {
	PasswordHash string `koanf:"password_hash"`
}

// MQTTLimits are broker.mqtt_limits.
type MQTTLimits struct {
	MaxPacketSize int `koanf:"max_packet_size"`
	MaxClients    int `koanf:"max_clients"`
	// MaxUnauthenticatedPerAddress bounds one address's connections without a credential (before CONNECT,
	// and anonymous clients).
	MaxUnauthenticatedPerAddress int      `koanf:"max_unauthenticated_per_address"`
	ConnectTimeout               Duration `koanf:"connect_timeout"`
	MaxSessionExpiry             Duration `koanf:"max_session_expiry"`
	MaxPending                   int      `koanf:"max_pending"`
}

// Dashboard is broker.dashboard: optional basic-auth for GET /, its assets and GET /api/v1/status (off when
// Username is empty), and the sampling of the connected-peers chart.
type Dashboard struct {
	Username string `koanf:"username"`
	// PasswordHash is a bcrypt hash of the password (wgkex-broker hash-password, or htpasswd -nB).
	PasswordHash string `koanf:"password_hash"`
	// SampleInterval is how often the broker records each worker's connected peers for the chart.
	SampleInterval Duration `koanf:"sample_interval"`
}

// MQTTListener is one TCP listener of the embedded MQTT server, with TLS when both files are given.
type MQTTListener struct {
	Address  string `koanf:"address"`
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// ClientCAFile verifies client certificates (optional for clients; see README, Security).
	ClientCAFile string `koanf:"client_ca_file"`
}

// WorkerAgent holds what only wgkex-worker needs.
type WorkerAgent struct {
	// Name is the worker's MQTT client id and topic name; empty means the hostname.
	Name            string   `koanf:"name"`
	MetricsInterval Duration `koanf:"metrics_interval"`
	// HealthPort, when not 0, serves GET / on [LinkAddress%wg-X]:HealthPort of every domain.
	HealthPort int `koanf:"health_port"`
	// MetricsListen, when set, is the address (host:port) where the worker serves Prometheus metrics on GET /metrics.
	MetricsListen string `koanf:"metrics_listen"`
}

// Duration is a time.Duration that YAML and the environment may give as seconds (10800) or as Go text ("3h").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Defaults returns the configuration that a file need not repeat. With them wgkex.yaml.example runs as it is on
// a fresh machine: REST on 127.0.0.1:5000, embedded MQTT on 127.0.0.1:1883, state in ./wgkex.db.
func Defaults() map[string]any {
	return map[string]any{
		"mqtt": map[string]any{
			"broker_url":  "127.0.0.1",
			"broker_port": 1883,
			"keepalive":   5,
			"tls":         false,
		},
		"broker_listen": map[string]any{"host": "127.0.0.1", "port": 5000,
			"rate_limit": 10, "rate_burst": 300, "rate_limit_clients": 65536},
		"cleanup": map[string]any{
			"interval":                "1h",
			"legacy_stale_timeout":    "3h",
			"initial_handshake_grace": "10m",
		},
		"log": map[string]any{"format": "text"},
		"broker": map[string]any{
			"state_file":         "wgkex.db",
			"replay_window":      "3h",
			"reconnect_grace":    "2m",
			"mqtt_server":        map[string]any{"keepalive": 10},
			"key_retention":      "720h",
			"dashboard":          map[string]any{"sample_interval": "1m"},
			"log_node_addresses": false,
		},
		"worker": map[string]any{"metrics_interval": "60s"},
	}
}

// defaultMQTTListener is used when broker.mqtt_listeners is empty.
var defaultMQTTListener = MQTTListener{Address: "127.0.0.1:1883"}

// Path picks the configuration file: the flag value, else $WGKEX_CONFIG_FILE, else DefaultPath.
func Path(flag string, getenv func(string) string) string {
	if flag != "" {
		return flag
	}
	if p := getenv(EnvFile); p != "" {
		return p
	}
	return DefaultPath
}

// FromArgs reads the configuration a command names: --config PATH in args, else $WGKEX_CONFIG_FILE, else
// DefaultPath, with the environment applied. cmd is the command's name for usage messages.
func FromArgs(cmd string, args []string) (*Config, error) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	path := fs.String("config", "", "configuration file (default $"+EnvFile+", else "+DefaultPath+")")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return Load(Path(*path, os.Getenv), os.Environ())
}

// Load reads the file at path, applies the environment (given as os.Environ() lines) and checks the result.
func Load(path string, environ []string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read configuration %s: %w", path, err)
	}
	return Parse(b, environ)
}

// Parse builds a Config from YAML bytes and environment lines ("KEY=value").
func Parse(yamlBytes []byte, environ []string) (*Config, error) {
	k := koanf.New("/")
	if err := k.Load(confmap.Provider(Defaults(), ""), nil); err != nil {
		return nil, fmt.Errorf("load defaults: %w", err)
	}
	if err := k.Load(rawbytes.Provider(yamlBytes), yaml.Parser()); err != nil {
		return nil, fmt.Errorf("parse YAML: %w", err)
	}
	var envProblems []string
	env, err := envProvider(environ, &envProblems)
	if err != nil {
		return nil, err
	}
	if err := k.Load(env, nil); err != nil {
		return nil, fmt.Errorf("load environment: %w", err)
	}
	var c Config
	problems := envProblems
	err = k.UnmarshalWithConf("", &c, koanf.UnmarshalConf{DecoderConfig: &mapstructure.DecoderConfig{
		DecodeHook:  durationHook,
		ErrorUnused: true,
		Result:      &c,
		TagName:     "koanf",
	}})
	if err != nil {
		// mapstructure lists one problem per line (unknown keys, wrong types) under a header line.
		for _, l := range strings.Split(err.Error(), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "decoding failed") {
				problems = append(problems, strings.Replace(l, "'' has invalid keys", "unknown top-level keys", 1))
			}
		}
	}
	c.fill()
	if err := c.Validate(); err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			problems = append(problems, ce.Problems...)
		}
	}
	if len(problems) > 0 {
		return nil, &Error{Problems: problems}
	}
	return &c, nil
}

func (c *Config) fill() {
	if c.Log.Level == "" {
		c.Log.Level = strings.ToLower(c.LogLevel)
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if len(c.Broker.MQTTListeners) == 0 {
		c.Broker.MQTTListeners = []MQTTListener{defaultMQTTListener}
		c.Broker.listenersDefault = true
	}
}

// Validate checks the whole configuration and reports every problem in one error.
func (c *Config) Validate() error {
	var p []string
	if len(c.Domains) == 0 {
		p = append(p, "domains: at least one domain is required")
	}
	if len(c.DomainPrefixes) == 0 {
		p = append(p, "domain_prefixes: at least one prefix is required")
	}
	for i, pre := range c.DomainPrefixes {
		if pre == "" {
			p = append(p, fmt.Sprintf("domain_prefixes[%d]: empty prefix", i))
		}
	}
	seen := map[string]string{}
	for _, d := range c.Domains {
		if err := wire.ValidateTopicLevel(d); err != nil {
			p = append(p, fmt.Sprintf("domains: %v", err))
			continue
		}
		if len(c.DomainPrefixes) == 0 {
			continue
		}
		s, err := wire.StripDomain(d, c.DomainPrefixes)
		if err != nil {
			p = append(p, "domains: "+err.Error())
			continue
		}
		if other, dup := seen[s]; dup {
			p = append(p, fmt.Sprintf("domains: %q and %q both give the interface name %s", other, d, wire.WGInterface(s)))
		}
		seen[s] = d
	}
	for name, w := range c.Workers {
		if err := wire.ValidateTopicLevel(name); err != nil {
			p = append(p, fmt.Sprintf("workers: %v", err))
		}
		if w.Weight != nil && *w.Weight < 0 {
			p = append(p, fmt.Sprintf("workers.%s.weight: %d is negative", name, *w.Weight))
		}
	}
	for i, k := range c.KeyWhitelist {
		if err := wire.ValidateKey(k); err != nil {
			p = append(p, fmt.Sprintf("key_whitelist[%d]: %v", i, err))
		}
	}
	if c.MQTT.BrokerPort < 1 || c.MQTT.BrokerPort > 65535 {
		p = append(p, fmt.Sprintf("mqtt.broker_port: %d is not a port", c.MQTT.BrokerPort))
	}
	if c.MQTT.Keepalive < 1 || c.MQTT.Keepalive > 65535 {
		p = append(p, fmt.Sprintf("mqtt.keepalive: %d is not between 1 and 65535 seconds", c.MQTT.Keepalive))
	}
	if c.BrokerListen.Port < 0 || c.BrokerListen.Port > 65535 {
		p = append(p, fmt.Sprintf("broker_listen.port: %d is not a port", c.BrokerListen.Port))
	}
	p = append(p, c.BrokerListen.problems()...)
	if c.Worker.HealthPort < 0 || c.Worker.HealthPort > 65535 {
		p = append(p, fmt.Sprintf("worker.health_port: %d is not a port", c.Worker.HealthPort))
	}
	if c.Worker.Name != "" {
		if err := wire.ValidateTopicLevel(c.Worker.Name); err != nil {
			p = append(p, fmt.Sprintf("worker.name: %v", err))
		}
	}
	for i, l := range c.Broker.MQTTListeners {
		if _, _, err := net.SplitHostPort(l.Address); err != nil {
			p = append(p, fmt.Sprintf("broker.mqtt_listeners[%d].address: %v", i, err))
		}
		if (l.CertFile == "") != (l.KeyFile == "") {
			p = append(p, fmt.Sprintf("broker.mqtt_listeners[%d]: cert_file and key_file go together", i))
		}
		if l.ClientCAFile != "" && l.CertFile == "" {
			p = append(p, fmt.Sprintf("broker.mqtt_listeners[%d]: client_ca_file needs cert_file and key_file", i))
		}
	}
	if (c.MQTT.CertFile == "") != (c.MQTT.KeyFile == "") {
		p = append(p, "mqtt: cert_file and key_file go together")
	}
	if ml := c.Broker.MQTTLimits; ml.MaxPacketSize < 0 || ml.MaxClients < 0 || ml.MaxPending < 0 ||
		ml.MaxUnauthenticatedPerAddress < 0 ||
		ml.ConnectTimeout < 0 || ml.MaxSessionExpiry < 0 {
		p = append(p, "broker.mqtt_limits: negative limit")
	}
	p = append(p, c.Broker.MQTTServer.problems()...)
	if c.Broker.StateFile == "" {
		p = append(p, "broker.state_file: empty")
	}
	if (c.Broker.Dashboard.Username == "") != (c.Broker.Dashboard.PasswordHash == "") {
		p = append(p, "broker.dashboard: username and password_hash go together")
	} else if err := passwd.Valid(c.Broker.Dashboard.PasswordHash); c.Broker.Dashboard.PasswordHash != "" && err != nil {
		p = append(p, fmt.Sprintf("broker.dashboard.password_hash: not a bcrypt hash: %v", err))
	}
	positive := map[string]Duration{
		"cleanup.interval":                 c.Cleanup.Interval,
		"cleanup.legacy_stale_timeout":     c.Cleanup.LegacyStaleTimeout,
		"worker.metrics_interval":          c.Worker.MetricsInterval,
		"broker.replay_window":             c.Broker.ReplayWindow,
		"broker.dashboard.sample_interval": c.Broker.Dashboard.SampleInterval,
	}
	for _, name := range slices.Sorted(maps.Keys(positive)) {
		if positive[name] <= 0 {
			p = append(p, fmt.Sprintf("%s: must be positive", name))
		}
	}
	nonNegative := map[string]Duration{ // 0: no grace
		"cleanup.initial_handshake_grace": c.Cleanup.InitialHandshakeGrace,
		"broker.reconnect_grace":          c.Broker.ReconnectGrace,
	}
	for _, name := range slices.Sorted(maps.Keys(nonNegative)) {
		if nonNegative[name] < 0 {
			p = append(p, fmt.Sprintf("%s: must not be negative", name))
		}
	}
	if c.Broker.KeyRetention < c.Broker.ReplayWindow {
		p = append(p, fmt.Sprintf("broker.key_retention: %v is shorter than broker.replay_window (%v)", c.Broker.KeyRetention.D(), c.Broker.ReplayWindow.D()))
	}
	if _, err := ParseLevel(c.Log.Level); err != nil {
		p = append(p, "log.level: "+err.Error())
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		p = append(p, fmt.Sprintf("log.format: %q is neither text nor json", c.Log.Format))
	}
	if len(p) > 0 {
		return &Error{Problems: p}
	}
	return nil
}

// problems checks the HTTPS, proxy and rate limit keys of broker_listen.
func (l Listen) problems() []string {
	var p []string
	if l.TLSPort < 0 || l.TLSPort > 65535 {
		p = append(p, fmt.Sprintf("broker_listen.tls_port: %d is not a port", l.TLSPort))
	}
	if l.TLSPort != 0 && (l.CertFile == "" || l.KeyFile == "") {
		p = append(p, "broker_listen.tls_port: needs cert_file and key_file")
	}
	if l.TLSPort == 0 && (l.CertFile != "" || l.KeyFile != "") {
		p = append(p, "broker_listen.cert_file, key_file: set tls_port to serve HTTPS")
	}
	for i, s := range l.TrustedProxies {
		if _, err := parseProxy(s); err != nil {
			p = append(p, fmt.Sprintf("broker_listen.trusted_proxies[%d]: %v", i, err))
		}
	}
	if l.RateLimit < 0 {
		p = append(p, "broker_listen.rate_limit: must not be negative (0 disables the limit)")
	}
	if l.RateLimit > 0 && l.RateBurst < 1 {
		p = append(p, "broker_listen.rate_burst: must be at least 1 when rate_limit is set")
	}
	if l.RateLimit > 0 && l.RateLimitClients < 1 {
		p = append(p, "broker_listen.rate_limit_clients: must be at least 1 when rate_limit is set")
	}
	return p
}

func (m MQTTServer) problems() []string {
	if m.URL == "" {
		return nil
	}
	var p []string
	if _, err := mqttclient.ParseURL(m.URL); err != nil {
		p = append(p, fmt.Sprintf("broker.mqtt_server.url: %v", err))
	}
	if (m.CertFile == "") != (m.KeyFile == "") {
		p = append(p, "broker.mqtt_server: cert_file and key_file go together")
	}
	if m.ClientID != "" {
		if err := wire.ValidateTopicLevel(m.ClientID); err != nil {
			p = append(p, fmt.Sprintf("broker.mqtt_server.client_id: %v", err))
		}
	}
	if m.Keepalive < 1 || m.Keepalive > 65535 {
		p = append(p, fmt.Sprintf("broker.mqtt_server.keepalive: %d is not between 1 and 65535 seconds", m.Keepalive))
	}
	return p
}

// Error lists every problem found in a configuration.
type Error struct{ Problems []string }

func (e *Error) Error() string {
	return fmt.Sprintf("invalid configuration (%d problems):\n  %s", len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// ParseLevel maps a level name to slog.Level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
	}
	return l, nil
}

// Stripped maps each configured domain to its stripped name (wg-{name}). Validate has checked that it exists.
func (c *Config) Stripped() map[string]string {
	m := make(map[string]string, len(c.Domains))
	for _, d := range c.Domains {
		if s, err := wire.StripDomain(d, c.DomainPrefixes); err == nil {
			m[d] = s
		}
	}
	return m
}

var durationType = reflect.TypeOf(Duration(0))

// durationHook decodes a Duration from an integer number of seconds or from Go duration text.
func durationHook(from, to reflect.Type, v any) (any, error) {
	if to != durationType {
		return v, nil
	}
	switch x := v.(type) {
	case int:
		return Duration(time.Duration(x) * time.Second), nil
	case int64:
		return Duration(time.Duration(x) * time.Second), nil
	case uint64:
		return Duration(time.Duration(x) * time.Second), nil
	case float64:
		return Duration(time.Duration(x * float64(time.Second))), nil
	case string:
		if n, err := strconv.ParseFloat(x, 64); err == nil {
			return Duration(time.Duration(n * float64(time.Second))), nil
		}
		d, err := time.ParseDuration(x)
		if err != nil {
			return nil, fmt.Errorf("%q is neither seconds nor a duration like 3h", x)
		}
		return Duration(d), nil
	}
	return nil, fmt.Errorf("%v (%T) is not a duration", v, v)
}
