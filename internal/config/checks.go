package config

import (
	"fmt"
	"net"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
)

// BrokerProblems reports what keeps this configuration from running the broker as its author meant, each with the
// setting to use. A wgkex.yaml of the Python deployment names its Mosquitto in mqtt.broker_url, which the Python
// broker connected to; this broker serves MQTT itself unless broker.mqtt_server.url is set, so it would silently
// be a second, empty MQTT server beside the one the gateways use.
func (c *Config) BrokerProblems() []string {
	var p []string
	if c.Broker.MQTTServer.URL == "" && c.Broker.listenersDefault && !localHost(c.MQTT.BrokerURL) {
		host := redacted(c.MQTT.BrokerURL)
		if u, err := mqttclient.ServerURL(c.MQTT.BrokerURL, c.MQTT.BrokerPort, c.MQTT.TLS); err == nil {
			host = u.String()
		}
		p = append(p, fmt.Sprintf("mqtt.broker_url names the MQTT server %s, which the Python broker connected to, but "+
			"this broker serves MQTT itself unless told otherwise: to go on using that server, set "+
			"broker.mqtt_server.url: %s (and broker.mqtt_server.username/password for its login); to serve MQTT "+
			"from this broker, set broker.mqtt_listeners (mqtt.broker_url is then the workers' way to it)", host, host))
	}
	return p
}

// localHost reports whether an MQTT server address names this machine's loopback (or nothing).
func localHost(addr string) bool {
	host := addr
	if u, err := mqttclient.ServerURL(addr, mqttclient.PortMQTT, false); err == nil {
		host = u.Hostname()
	}
	if host == "" || strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// BrokerWarnings are the risks of a configuration that runs, for wgkex-broker check-config.
func (c *Config) BrokerWarnings() []string {
	var w []string
	credentials := c.MQTT.Password != "" || len(c.Broker.MQTTMonitors) > 0
	for _, wk := range c.Workers {
		credentials = credentials || wk.PasswordHash != ""
	}
	for _, l := range c.Broker.MQTTListeners {
		credentials = credentials || l.ClientCAFile != ""
	}
	if c.Broker.MQTTServer.URL == "" && !credentials {
		w = append(w, "MQTT: no credentials (mqtt.password, workers.<name>.password_hash, client certificates): "+
			"clients are accepted without any on loopback listeners only; configure credentials before gateways "+
			"connect over the network")
	}
	if c.Broker.AllowAnonymous {
		w = append(w, "broker.allow_anonymous: any MQTT client may act as any configured worker on every listener")
	}
	if c.Broker.Dashboard.Username == "" && !localHost(c.BrokerListen.Host) {
		w = append(w, fmt.Sprintf("broker_listen.host %s: the status page and /api/v1/status are open to everyone "+
			"who reaches it; set broker.dashboard.username and password_hash to close them", c.BrokerListen.Host))
	}
	if len(c.Workers) == 0 {
		w = append(w, "workers: none configured: nodes are sent to any gateway that connects")
	}
	return w
}

// Effective returns the configuration as it is in effect, one "key: value" line per setting in the order of the
// file's sections, with every password and password hash masked.
func (c *Config) Effective() []string {
	var out []string
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("koanf"), ",")[0]
			if !f.IsExported() || tag == "" || tag == "-" {
				continue
			}
			key := tag
			if prefix != "" {
				key = prefix + "." + tag
			}
			fv := v.Field(i)
			switch {
			case fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeFor[time.Time]():
				walk(key, fv)
			case fv.Kind() == reflect.Map:
				keys := fv.MapKeys()
				slices.SortFunc(keys, func(a, b reflect.Value) int { return strings.Compare(a.String(), b.String()) })
				if len(keys) == 0 {
					out = append(out, key+": {}")
				}
				for _, k := range keys {
					e := fv.MapIndex(k)
					name := fmt.Sprintf("%s[%s]", key, k) // names may hold dots (gw04.in.ffmuc.net)
					if e.Kind() == reflect.Struct {
						walk(name, e)
					} else {
						out = append(out, fmt.Sprintf("%s: %v", name, e))
					}
				}
			default:
				out = append(out, key+": "+show(tag, fv))
			}
		}
	}
	walk("", reflect.ValueOf(*c))
	return out
}

// show formats a setting's value, masking secrets: a password or password hash, and free-form data (logging_config,
// a Python dictConfig that may hold a handler's credentials) read "(set)" or "(empty)"; a password in a URL "xxxxx".
func show(tag string, v reflect.Value) string {
	if strings.Contains(tag, "password") || v.Kind() == reflect.Interface {
		if v.IsZero() {
			return "(empty)"
		}
		return "(set)"
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "(default)"
		}
		v = v.Elem()
	}
	if d, ok := v.Interface().(Duration); ok {
		return d.D().String()
	}
	if v.Kind() == reflect.String {
		return fmt.Sprintf("%q", redacted(v.String()))
	}
	if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct {
		var parts []string
		for i := range v.Len() {
			parts = append(parts, fmt.Sprintf("%+v", v.Index(i).Interface()))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return fmt.Sprintf("%v", v.Interface())
}

// redacted returns s with the password of a URL in it replaced by "xxxxx" (url.URL.Redacted); anything else as it is.
func redacted(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}
