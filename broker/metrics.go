package broker

import (
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// Results of a key exchange, the result label of wgkex_broker_key_exchanges_total and the refusal reasons of the
// status page.
const (
	ResultOK            = "ok"
	ResultMalformed     = "malformed"
	ResultInvalidKey    = "invalid_key"
	ResultUnknownDomain = "unknown_domain"
	ResultKeyRefused    = "key_refused" // on the blocklist, or not on the allowlist
	ResultNoGateway     = "no_gateway"
	ResultNoGatewayData = "no_gateway_data"
	ResultStoreError    = "store_error"
)

// API versions of the key exchange, the api label.
const (
	APIv1 = "v1"
	APIv2 = "v2"
)

// activityMinutes is how many minutes of registration activity the broker keeps for its status page.
const activityMinutes = 60

// meters are the broker's Prometheus collectors and the per-minute activity of the status page. The collectors
// exist whether or not they are registered, so that counting never needs a nil check.
type meters struct {
	exchanges      *prometheus.CounterVec
	choices        *prometheus.CounterVec
	replayRequests prometheus.Counter
	replayedKeys   prometheus.Counter
	revocations    *prometheus.CounterVec

	mu      sync.Mutex
	minutes [activityMinutes]minute // ring indexed by Unix minute modulo its length
}

// minute is the activity of one Unix minute.
type minute struct {
	at       int64 // Unix minute
	ok       map[string]int
	refused  map[string]int
	assigned map[[2]string]int // gateway, domain
}

func newMeters() *meters {
	return &meters{
		exchanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_broker_key_exchanges_total",
			Help: "Key exchange requests by API version, domain (empty when not configured) and result.",
		}, []string{"api", "domain", "result"}),
		choices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_broker_gateway_choices_total",
			Help: "Gateways chosen for nodes by API v2, by worker.",
		}, []string{"worker"}),
		replayRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wgkex_broker_replay_requests_total",
			Help: "Replays requested by workers, one per worker and configured domain.",
		}),
		replayedKeys: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wgkex_broker_replayed_keys_total",
			Help: "Keys sent to workers in replays.",
		}),
		revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wgkex_broker_revocations_total",
			Help: "Keys revoked, by domain and source: admin (wgkex-broker keys revoke), blocklist, peer (another broker's).",
		}, []string{"domain", "source"}),
	}
}

// register adds the broker's collectors to reg; nil registers nothing.
func (b *Broker) registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	m := b.meters
	for _, c := range []prometheus.Collector{m.exchanges, m.choices, m.replayRequests, m.replayedKeys, m.revocations, stateCollector{b}} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register broker metrics: %w", err)
		}
	}
	return nil
}

// stateCollector reports the state of the workers and of the brokers on the MQTT server at scrape time.
type stateCollector struct{ b *Broker }

var (
	descWorkersOnline = prometheus.NewDesc("wgkex_broker_workers_online",
		"Workers whose last status is online.", nil, nil)
	descWorkerUp = prometheus.NewDesc("wgkex_broker_worker_up",
		"1 when the worker's last status is online, else 0.", []string{"worker"}, nil)
	descPeers = prometheus.NewDesc("wgkex_broker_connected_peers",
		"Connected peers a worker last reported for a domain (absent while the domain is offline there).",
		[]string{"worker", "domain"}, nil)
	descClusterBrokers = prometheus.NewDesc("wgkex_cluster_brokers",
		"Brokers alive on the MQTT server, this one included (1 with the embedded server).", nil, nil)
	descClusterBrokerUp = prometheus.NewDesc("wgkex_cluster_broker_up",
		"1 while a broker on the MQTT server is alive, 0 when its last status says it is gone.", []string{"broker"}, nil)
	descMQTTConnected = prometheus.NewDesc("wgkex_broker_mqtt_connected",
		"1 while the broker is connected to its MQTT server (always with the embedded server), 0 while worker states are frozen.", nil, nil)
	descWorkersAwaiting = prometheus.NewDesc("wgkex_broker_workers_awaiting",
		"Workers online before the broker's start or its last MQTT outage that have not reconnected yet.", nil, nil)
)

func (stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descWorkersOnline
	ch <- descWorkerUp
	ch <- descPeers
	ch <- descClusterBrokers
	ch <- descClusterBrokerUp
	ch <- descMQTTConnected
	ch <- descWorkersAwaiting
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	online := 0
	for _, w := range c.b.Workers() {
		up := 0.0
		if w.Online {
			online++
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descWorkerUp, prometheus.GaugeValue, up, w.Name)
		for d, n := range w.Peers {
			if n >= 0 {
				ch <- prometheus.MustNewConstMetric(descPeers, prometheus.GaugeValue, float64(n), w.Name, d)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(descWorkersOnline, prometheus.GaugeValue, float64(online))
	brokers, alive := c.b.opts.Peers.Brokers()
	for _, s := range brokers {
		up := 0.0
		if s.Alive {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descClusterBrokerUp, prometheus.GaugeValue, up, s.ID)
	}
	ch <- prometheus.MustNewConstMetric(descClusterBrokers, prometheus.GaugeValue, float64(alive))
	m := c.b.mqttState()
	connected := 0.0
	if m.Connected {
		connected = 1
	}
	ch <- prometheus.MustNewConstMetric(descMQTTConnected, prometheus.GaugeValue, connected)
	ch <- prometheus.MustNewConstMetric(descWorkersAwaiting, prometheus.GaugeValue, float64(len(m.Awaiting)))
}

// Malformed counts a registration whose body could not be parsed (the web package parses bodies) and returns err.
func (b *Broker) Malformed(api string, err error) error {
	b.observe(api, Request{}, "", ResultMalformed)
	return err
}

// observeExchange counts a finished key exchange: its result, and the gateway chosen for it.
func (b *Broker) observeExchange(api string, r Request, gateway string, err error) {
	b.observe(api, r, gateway, b.result(r, err))
}

// result names the outcome of an exchange of r that ended with err.
func (b *Broker) result(r Request, err error) string {
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, ErrBadRequest) && wire.ValidateKey(r.PublicKey) != nil:
		return ResultInvalidKey
	case errors.Is(err, ErrBadRequest) && !b.domain[r.Domain]:
		return ResultUnknownDomain
	case errors.Is(err, ErrBadRequest):
		return ResultKeyRefused
	case errors.Is(err, ErrNoGateway):
		return ResultNoGateway
	case errors.Is(err, ErrNoGatewayData):
		return ResultNoGatewayData
	default:
		return ResultStoreError
	}
}

func (b *Broker) observe(api string, r Request, gateway, result string) {
	domain := r.Domain
	if !b.domain[domain] {
		domain = "" // nodes must not be able to create label values
	}
	m := b.meters
	m.exchanges.WithLabelValues(api, domain, result).Inc()
	if gateway != "" && result == ResultOK {
		m.choices.WithLabelValues(gateway).Inc()
	}
	now := b.opts.Now().Unix() / 60
	m.mu.Lock()
	defer m.mu.Unlock()
	mn := &m.minutes[now%activityMinutes]
	if mn.at != now {
		*mn = minute{at: now, ok: map[string]int{}, refused: map[string]int{}, assigned: map[[2]string]int{}}
	}
	if result != ResultOK {
		mn.refused[result]++
		return
	}
	mn.ok[api]++
	if gateway != "" {
		mn.assigned[[2]string{gateway, domain}]++
	}
}

// Activity is the registration activity of the last hour, per minute.
type Activity struct {
	// Start is the Unix time of the first minute of the series; the last entry is the current minute.
	Start int64 `json:"start"`
	// Registrations maps an API version to the accepted registrations of each minute, oldest first.
	Registrations map[string][]int `json:"registrations"`
	// Refused maps a reason to the registrations refused for it in the last hour.
	Refused map[string]int `json:"refused"`
	// Assigned maps a gateway and a domain to the nodes assigned to it by API v2 in the last hour.
	assigned map[[2]string]int
}

// activity sums the ring into an Activity.
func (b *Broker) activity() Activity {
	now := b.opts.Now().Unix() / 60
	first := now - activityMinutes + 1
	a := Activity{
		Start:         first * 60,
		Registrations: map[string][]int{APIv1: make([]int, activityMinutes), APIv2: make([]int, activityMinutes)},
		Refused:       map[string]int{},
		assigned:      map[[2]string]int{},
	}
	m := b.meters
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.minutes {
		mn := &m.minutes[i]
		if mn.at < first || mn.at > now {
			continue
		}
		for api, n := range mn.ok {
			a.Registrations[api][mn.at-first] += n
		}
		for r, n := range mn.refused {
			a.Refused[r] += n
		}
		for k, n := range mn.assigned {
			a.assigned[k] += n
		}
	}
	return a
}
