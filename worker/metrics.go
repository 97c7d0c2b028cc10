package worker

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the worker's Prometheus collectors. They always exist; they are registered only when the worker
// was given a Registerer.
type metrics struct {
	keys      *prometheus.CounterVec
	applied   prometheus.Counter
	latency   prometheus.Histogram
	desired   *prometheus.GaugeVec
	pending   *prometheus.GaugeVec
	peers     *prometheus.GaugeVec
	connected *prometheus.GaugeVec
	removals  *prometheus.CounterVec
	revoked   *prometheus.CounterVec
	dpErrors  *prometheus.CounterVec
	mqttUp    prometheus.Gauge
	ready     *prometheus.GaugeVec
	connects  prometheus.Counter
	// connectErrors counts failed connection attempts.
	connectErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, inbox func() int) (*metrics, error) {
	m := &metrics{
		keys: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wgkex_worker_keys_received_total",
			Help: "Valid keys received over MQTT, by source (live or replay)."}, []string{"source"}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{Name: "wgkex_worker_keys_applied_total",
			Help: "Keys whose peer, route and FDB entry were put in place."}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wgkex_worker_apply_latency_seconds",
			Help:    "Time from a key's receipt over MQTT until its peer, route and FDB entry are in place.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		desired: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wgkex_worker_desired_keys",
			Help: "Keys the worker wants as peers, by domain."}, []string{"domain"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wgkex_worker_pending_keys",
			Help: "Wanted keys waiting for a retry after a failed apply, by domain."}, []string{"domain"}),
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wgkex_worker_peers",
			Help: "WireGuard peers on the domain's device at the last read."}, []string{"domain"}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wgkex_worker_connected_peers",
			Help: "Peers with a handshake in the last 3 minutes, as published to the broker."}, []string{"domain"}),
		removals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wgkex_worker_cleanup_removals_total",
			Help: "Peers removed by the stale-peer cleanup, by domain and reason (stale, never-handshaked)."}, []string{"domain", "reason"}),
		revoked: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wgkex_worker_revoked_peers_total",
			Help: "Peers removed from the device because the broker revoked their key, by domain."}, []string{"domain"}),
		dpErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wgkex_worker_dataplane_errors_total",
			Help: "Failed dataplane steps, by step (peer, route, fdb, remove, read)."}, []string{"step"}),
		mqttUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wgkex_worker_mqtt_connected",
			Help: "1 while the worker is connected to MQTT and has published its status, else 0."}),
		ready: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wgkex_worker_domain_ready",
			Help: "1 while the worker can serve the domain (both interfaces exist and it may change them), else 0; the log says why not."},
			[]string{"domain"}),
		connects: prometheus.NewCounter(prometheus.CounterOpts{Name: "wgkex_worker_mqtt_connects_total",
			Help: "MQTT connections established (CONNACK received)."}),
		connectErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "wgkex_worker_mqtt_connect_errors_total",
			Help: "Failed MQTT connection attempts (refused, unreachable, TLS or authentication failures)."}),
	}
	if reg == nil {
		return m, nil
	}
	inboxGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wgkex_worker_inbox_keys",
		Help: "Keys received and not yet taken by the reconcile loop."}, func() float64 { return float64(inbox()) })
	for _, c := range []prometheus.Collector{m.keys, m.applied, m.latency, m.desired, m.pending, m.peers,
		m.connected, m.removals, m.revoked, m.dpErrors, m.mqttUp, m.ready, m.connects, m.connectErrors, inboxGauge} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register worker metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) received(replay bool) {
	if replay {
		m.keys.WithLabelValues("replay").Inc()
	} else {
		m.keys.WithLabelValues("live").Inc()
	}
}
