package mqttclient

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Standard MQTT ports.
const (
	PortMQTT = 1883
	PortTLS  = 8883
)

// ServerURL is the one reading of an MQTT server address (mqtt.broker_url and mqtt.broker_port of the worker,
// broker.mqtt_server.url of the broker, the reference's MQTT_BROKER_URL): addr is a host ("mqtt.example.org",
// "2001:db8::1") or a URL ("mqtt://broker", "tls://broker:8883"; tcp means mqtt, ssl and mqtts mean tls). A
// host, or a URL without a port, gets port; port 0 is the standard port (1883, 8883 with TLS). tls switches a
// host or an mqtt URL to TLS. The result has the scheme mqtt or tls and a host with a port, nothing else: a
// user, path or query in the URL is ignored.
func ServerURL(addr string, port int, tls bool) (*url.URL, error) {
	host := addr
	if strings.Contains(addr, "://") {
		// An error never repeats a password written into the url: url.Error quotes the whole url, and every
		// message below names it redacted.
		u, err := url.Parse(addr)
		if err != nil {
			return nil, fmt.Errorf("not a URL: %w", errors.Unwrap(err))
		}
		if u.User != nil {
			return nil, fmt.Errorf("%q: credentials go in the username and password settings, not in the url", u.Redacted())
		}
		addr = u.Redacted()
		switch u.Scheme {
		case "mqtt", "tcp":
		case "tls", "ssl", "mqtts":
			tls = true
		default:
			return nil, fmt.Errorf("%q: scheme is not mqtt or tls", addr)
		}
		host = u.Hostname()
		if p := u.Port(); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("%q: port %s is not a port", addr, p)
			}
			port = n
		}
	} else if h, ok := strings.CutPrefix(host, "["); ok && strings.HasSuffix(h, "]") {
		host = strings.TrimSuffix(h, "]") // a bracketed IPv6 address without a port
	}
	switch {
	case host == "":
		return nil, fmt.Errorf("%q: no host", addr)
	case strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f || strings.ContainsRune("/?#@[]%\\", r) }):
		return nil, fmt.Errorf("%q: not a host name or address", addr)
	case strings.Contains(host, ":") && net.ParseIP(host) == nil:
		return nil, fmt.Errorf("%q: a host with a port belongs in a URL (mqtt://host:port)", addr)
	case port < 0 || port > 65535:
		return nil, fmt.Errorf("port %d is not a port", port)
	}
	scheme := "mqtt"
	if tls {
		scheme = "tls"
	}
	if port == 0 {
		port = PortMQTT
		if tls {
			port = PortTLS
		}
	}
	u := &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port))}
	// What does not read back as itself is not a host.
	if v, err := url.Parse(u.String()); err != nil || v.Hostname() != host {
		return nil, fmt.Errorf("%q: not a host name or address", addr)
	}
	return u, nil
}

// errNoURL: broker.mqtt_server.url takes a URL, not a bare host.
var errNoURL = errors.New("not a URL (mqtt://host[:port] or tls://host[:port])")

// ParseURL reads a URL naming an MQTT server, such as broker.mqtt_server.url: ServerURL for an address that must
// say its scheme.
func ParseURL(raw string) (*url.URL, error) {
	if !strings.Contains(raw, "://") {
		return nil, fmt.Errorf("%q: %w", raw, errNoURL)
	}
	return ServerURL(raw, 0, false)
}
