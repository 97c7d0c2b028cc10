package brokerd

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/freifunkMUC/wgkex-go/internal/config"
)

// restartOnly names the configuration keys the broker reads only at start, with their values in cfg. A reload
// that changes any of them is refused.
func restartOnly(cfg *config.Config) map[string]any {
	return map[string]any{
		"domains":                          cfg.Domains,
		"domain_prefixes":                  cfg.DomainPrefixes,
		"broker_listen":                    cfg.BrokerListen,
		"broker.state_file":                cfg.Broker.StateFile,
		"broker.admin_socket":              cfg.Broker.AdminSocketPath(),
		"broker.mqtt_listeners":            cfg.Broker.MQTTListeners,
		"broker.mqtt_server":               cfg.Broker.MQTTServer,
		"broker.replay_window":             cfg.Broker.ReplayWindow,
		"broker.reconnect_grace":           cfg.Broker.ReconnectGrace,
		"broker.dashboard.sample_interval": cfg.Broker.Dashboard.SampleInterval,
		// The lists' contents are reloaded whenever their files change; their names are read at start.
		"broker.blocklist_file": cfg.Broker.BlocklistFile,
		"broker.allowlist_file": cfg.Broker.AllowlistFile,
		"log":                   cfg.Log,
		"broker.key_retention":  cfg.Broker.KeyRetention,
		// The embedded MQTT server's listeners and limits size its sockets and mochi at start, and
		// allow_anonymous decides which listeners may exist. Its accounts are reloaded (mqttd.SetAccounts).
		"broker.allow_anonymous": cfg.Broker.AllowAnonymous,
		"broker.mqtt_limits":     cfg.Broker.MQTTLimits,
		// The broker core takes it at start (broker.Options.LogNodeAddresses).
		"broker.log_node_addresses": cfg.Broker.LogNodeAddresses,
	}
}

// reloadable names the configuration keys Reload applies to the running broker: which gateways exist and their
// own passwords, the embedded MQTT server's shared login and monitors, the status page's credentials.
var reloadable = []string{
	"workers",
	"mqtt.username",
	"mqtt.password",
	"broker.mqtt_monitors",
	"broker.dashboard.username",
	"broker.dashboard.password_hash",
}

// ignored names the configuration keys the broker does not read, which a reload may change freely: the worker's
// own, and two of the reference's, log_level (folded into log.level at load, where restartOnly sees a change)
// and logging_config (read by nobody). TestEveryKeyClassified checks that every key of config.Config is in
// restartOnly, reloadable or here.
var ignored = []string{
	"externalName",
	"key_whitelist",
	"cleanup",
	"worker",
	"mqtt.broker_url",
	"mqtt.broker_port",
	"mqtt.keepalive",
	"mqtt.tls",
	"mqtt.ca_file",
	"mqtt.server_name",
	"mqtt.cert_file",
	"mqtt.key_file",
	"log_level",
	"logging_config",
}

// RestartError refuses a reload that changes keys the broker reads only at start.
type RestartError struct {
	// Keys are the changed keys, sorted.
	Keys []string
}

func (e *RestartError) Error() string {
	return fmt.Sprintf("%s changed, which needs a restart", strings.Join(e.Keys, ", "))
}

// Reload applies a new configuration to the running broker without a restart: which gateways exist, their weights
// and locations, the embedded MQTT server's accounts (gateway passwords, the shared login, monitors: a client
// whose credential was removed or changed is disconnected, every other keeps its connection), and the status
// page's credentials. It refuses the whole configuration, keeping the old one, if it changes a key that needs a
// restart (a *RestartError names them) or the MQTT server refuses the accounts. Keys only the worker reads are
// ignored.
func (d *Daemon) Reload(cfg *config.Config) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	old, cur := restartOnly(d.cfg), restartOnly(cfg)
	var changed []string
	for _, k := range slices.Sorted(maps.Keys(cur)) {
		if !reflect.DeepEqual(old[k], cur[k]) {
			changed = append(changed, k)
		}
	}
	if len(changed) > 0 {
		return &RestartError{Keys: changed}
	}
	if d.MQTT != nil {
		if err := d.MQTT.SetAccounts(mqttAccounts(cfg)); err != nil {
			return fmt.Errorf("mqtt accounts: %w", err)
		}
	}
	d.Broker.SetGateways(Gateways(cfg.Workers))
	d.web.SetDashboard(d.dashboard(cfg))
	d.cfg = cfg
	return nil
}

// ReloadCertificates reads the certificates of the HTTPS listener and of the embedded MQTT server's TLS
// listeners again now, as on SIGHUP; each is also reloaded whenever its files change. Connections made before
// keep theirs. A pair that does not load is logged as an error naming the files, and the certificate in force
// stays.
func (d *Daemon) ReloadCertificates() {
	if d.httpsCert != nil {
		d.httpsCert.Reload()
	}
	if d.MQTT != nil {
		d.MQTT.ReloadCertificates()
	}
}

// reload re-reads the certificates, then loads the configuration and applies it, logging the outcome.
func (d *Daemon) reload(load func() (*config.Config, error)) {
	d.ReloadCertificates()
	cfg, err := load()
	if err != nil {
		d.log.Error("configuration reload failed, keeping the configuration in effect", "err", err)
		return
	}
	if err := d.Reload(cfg); err != nil {
		d.log.Error("configuration reload refused, keeping the configuration in effect", "err", err)
		return
	}
	d.log.Info("configuration reloaded", "gateways", len(cfg.Workers))
}
