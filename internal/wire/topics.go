package wire

import (
	"errors"
	"fmt"
	"strings"
)

// ErrTopic reports a topic that does not have the shape its subscription promised.
var ErrTopic = errors.New("malformed topic")

// Topic roots of the reference protocol and of the replay extension.
const (
	keyRoot     = "wireguard"
	metricsRoot = "wireguard-metrics"
	workerRoot  = "wireguard-worker"
	replayRoot  = "wgkex/replay"
)

// Subscriptions the broker's inline client makes (SPEC §2.3), and the replay requests of issue "no key lost".
const (
	MetricsFilter       = metricsRoot + "/#"
	StatusFilter        = workerRoot + "/+/status"
	DataFilter          = workerRoot + "/+/+/data"
	ReplayRequestFilter = replayRoot + "/+/request"
)

// ConnectedPeersMetric is the only metric the reference publishes and the broker uses.
const ConnectedPeersMetric = "connected_peers"

// KeyTopic is where the broker publishes a registered key: wireguard/{domain}/all.
func KeyTopic(domain string) string { return keyRoot + "/" + domain + "/all" }

// KeyFilter is what a worker subscribes for one domain: wireguard/{domain}/+.
func KeyFilter(domain string) string { return keyRoot + "/" + domain + "/+" }

// MetricTopic is wireguard-metrics/{domain}/{worker}/connected_peers.
func MetricTopic(domain, worker string) string {
	return metricsRoot + "/" + domain + "/" + worker + "/" + ConnectedPeersMetric
}

// StatusTopic is wireguard-worker/{worker}/status.
func StatusTopic(worker string) string { return workerRoot + "/" + worker + "/status" }

// DataTopic is wireguard-worker/{worker}/{domain}/data.
func DataTopic(worker, domain string) string {
	return workerRoot + "/" + worker + "/" + domain + "/data"
}

// ReplayRequestTopic is where a worker asks the broker for the keys of its domains: wgkex/replay/{worker}/request.
func ReplayRequestTopic(worker string) string { return replayRoot + "/" + worker + "/request" }

// ReplayKeysTopic is where the broker answers a replay request with batches of keys: wgkex/replay/{worker}/keys.
func ReplayKeysTopic(worker string) string { return replayRoot + "/" + worker + "/keys" }

// splitTopic splits topic into exactly n non-empty levels under root.
func splitTopic(topic, root string, n int) ([]string, error) {
	rest, ok := strings.CutPrefix(topic, root+"/")
	if !ok {
		return nil, fmt.Errorf("%w %q: not under %s/", ErrTopic, topic, root)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != n {
		return nil, fmt.Errorf("%w %q: want %d levels under %s/", ErrTopic, topic, n, root)
	}
	for _, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("%w %q: empty level", ErrTopic, topic)
		}
	}
	return parts, nil
}

// ParseKeyTopic returns the domain of wireguard/{domain}/{gateway}.
func ParseKeyTopic(topic string) (domain string, err error) {
	p, err := splitTopic(topic, keyRoot, 2)
	if err != nil {
		return "", err
	}
	return p[0], nil
}

// ParseMetricTopic splits wireguard-metrics/{domain}/{worker}/{metric}.
func ParseMetricTopic(topic string) (domain, worker, metric string, err error) {
	p, err := splitTopic(topic, metricsRoot, 3)
	if err != nil {
		return "", "", "", err
	}
	return p[0], p[1], p[2], nil
}

// ParseStatusTopic returns the worker of wireguard-worker/{worker}/status.
func ParseStatusTopic(topic string) (worker string, err error) {
	p, err := splitTopic(topic, workerRoot, 2)
	if err != nil {
		return "", err
	}
	if p[1] != "status" {
		return "", fmt.Errorf("%w %q: not a status topic", ErrTopic, topic)
	}
	return p[0], nil
}

// ParseDataTopic splits wireguard-worker/{worker}/{domain}/data.
func ParseDataTopic(topic string) (worker, domain string, err error) {
	p, err := splitTopic(topic, workerRoot, 3)
	if err != nil {
		return "", "", err
	}
	if p[2] != "data" {
		return "", "", fmt.Errorf("%w %q: not a data topic", ErrTopic, topic)
	}
	return p[0], p[1], nil
}

// ParseReplayRequestTopic returns the worker of wgkex/replay/{worker}/request.
func ParseReplayRequestTopic(topic string) (worker string, err error) {
	p, err := splitTopic(topic, replayRoot, 2)
	if err != nil {
		return "", err
	}
	if p[1] != "request" {
		return "", fmt.Errorf("%w %q: not a replay request topic", ErrTopic, topic)
	}
	return p[0], nil
}

// ValidateTopicLevel checks that name can stand as one topic level (a worker or domain name): non-empty, no
// separator, no wildcard, no NUL.
func ValidateTopicLevel(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if strings.ContainsAny(name, "/+#\x00") {
		return fmt.Errorf("%q contains one of / + # NUL", name)
	}
	return nil
}
