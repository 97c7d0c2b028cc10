package broker

import (
	"sort"
	"strconv"
	"time"
)

// Status is the state of the network as the status page shows it.
type Status struct {
	// Domains lists every configured domain, in order, with the gateways that serve it.
	Domains []DomainStatus `json:"domains"`
	// Gateways lists every known or configured worker, in name order.
	Gateways []GatewayStatus `json:"gateways"`
	// Activity is the registration activity of the last hour.
	Activity Activity `json:"activity"`
	// Brokers lists the brokers on the MQTT server (Peers.Brokers); empty with the embedded server.
	Brokers []BrokerState `json:"brokers"`
	// MQTT is the broker's connection to its MQTT server and the workers awaited after a start or an outage.
	MQTT MQTTState `json:"mqtt"`
}

// GatewayStatus is one worker: its configuration, its last reports and where it stands against its weighted share.
type GatewayStatus struct {
	Name     string `json:"name"`
	Location string `json:"location"`
	Weight   int    `json:"weight"`
	// Configured reports whether the worker is listed under workers: (others weigh 1).
	Configured bool `json:"configured"`
	// Seen reports whether the broker has heard from the worker (its state is kept in the state file); false: a
	// configured gateway that never connected, as against one that left (offline, seen).
	Seen   bool `json:"seen"`
	Online bool `json:"online"`
	// Since is when the worker last went online or offline (zero: not seen since this version recorded it).
	Since time.Time `json:"since,omitzero"`
	// LastReport is when the worker last reported anything new.
	LastReport time.Time `json:"last_report,omitzero"`
	// Peers is the sum of its connected peers over its domains, as the gateway choice counts them.
	Peers int `json:"peers"`
	// Share is the fraction of all online gateways' peers its weight entitles it to.
	Share float64 `json:"share"`
	// Target is Share times the peers of all online gateways; Distance is Peers − Target (negative: below its
	// share, so it is chosen first). Both are 0 while the worker is offline.
	Target   float64 `json:"target"`
	Distance float64 `json:"distance"`
	// AssignedLastHour is the number of nodes API v2 sent to it in the last hour.
	AssignedLastHour int `json:"assigned_last_hour"`
	// Serving lists the domains it is offered for, in configuration order: it is online, its metric there is ≥ 0
	// and its endpoint is known. A domain missing here is one the gateway cannot serve now (its log and its
	// wgkex_worker_domain_ready metric say why).
	Serving []string `json:"serving"`
}

// DomainStatus is one domain and the gateways that serve it.
type DomainStatus struct {
	Name string `json:"name"`
	// Peers is the sum of the domain's connected peers on online gateways.
	Peers    int             `json:"peers"`
	Gateways []DomainGateway `json:"gateways"`
}

// DomainGateway is one gateway within a domain. Its other figures are in Status.Gateways under the same name.
type DomainGateway struct {
	Name string `json:"name"`
	// Peers is the gateway's connected_peers metric for the domain; -1: the domain is offline there (or never
	// reported).
	Peers int `json:"peers"`
	// Endpoint is the address and port the gateway published for the domain, empty if none.
	Endpoint string `json:"endpoint"`
	// AssignedLastHour is the number of nodes of this domain API v2 sent to it in the last hour.
	AssignedLastHour int `json:"assigned_last_hour"`
	// Serving reports whether API v2 offers the gateway for the domain (see GatewayStatus.Serving).
	Serving bool `json:"serving"`
}

// Status returns the state of every domain and gateway and the activity of the last hour.
func (b *Broker) Status() Status {
	act := b.activity()
	workers := b.Workers()
	byName := map[string]WorkerState{}
	for _, w := range workers {
		byName[w.Name] = w
	}
	b.mu.Lock()
	cfg := b.gateways // replaced, never changed in place, by SetGateways
	total := b.total
	b.mu.Unlock()
	seen := make(map[string]bool, len(byName))
	for name := range byName {
		seen[name] = true
	}
	for name := range cfg {
		if _, ok := byName[name]; !ok {
			byName[name] = WorkerState{Name: name}
		}
	}
	if total < 1 {
		total = 1
	}
	st := Status{Activity: act, MQTT: b.mqttState()}
	st.Brokers, _ = b.opts.Peers.Brokers()
	onlinePeers := 0
	for _, w := range byName {
		if w.Online {
			onlinePeers += sumPeers(w.Peers)
		}
	}
	for name, w := range byName {
		c, configured := cfg[name]
		g := GatewayStatus{
			Name: name, Location: c.Location, Weight: c.Weight, Configured: configured, Seen: seen[name],
			Online: w.Online, Since: w.Since, LastReport: w.Changed, Peers: sumPeers(w.Peers),
		}
		wt := 1 // as the gateway choice weighs an unconfigured worker
		if configured {
			wt = g.Weight
		}
		g.Share = float64(wt) / float64(total)
		if g.Online {
			g.Target = g.Share * float64(onlinePeers)
			g.Distance = float64(g.Peers) - g.Target
		}
		for k, n := range act.assigned {
			if k[0] == name {
				g.AssignedLastHour += n
			}
		}
		g.Serving = []string{}
		st.Gateways = append(st.Gateways, g)
	}
	sort.Slice(st.Gateways, func(i, j int) bool { return st.Gateways[i].Name < st.Gateways[j].Name })
	for _, d := range b.opts.Domains {
		ds := DomainStatus{Name: d, Gateways: []DomainGateway{}}
		for i, g := range st.Gateways {
			w := byName[g.Name]
			n, reported := w.Peers[d]
			data, hasData := w.Data[d]
			if !reported && !hasData && (len(w.Peers) > 0 || len(w.Data) > 0) {
				continue // serves other domains only
			}
			dg := DomainGateway{Name: g.Name, Peers: -1, AssignedLastHour: act.assigned[[2]string{g.Name, d}]}
			if reported {
				dg.Peers = n
			}
			if hasData {
				dg.Endpoint = data.ExternalAddress + ":" + strconv.Itoa(data.Port)
			}
			if w.Online && dg.Peers > 0 {
				ds.Peers += dg.Peers
			}
			if dg.Serving = w.Online && reported && n >= 0 && hasData; dg.Serving {
				st.Gateways[i].Serving = append(st.Gateways[i].Serving, d)
			}
			ds.Gateways = append(ds.Gateways, dg)
		}
		st.Domains = append(st.Domains, ds)
	}
	return st
}

func sumPeers(p map[string]int) int {
	n := 0
	for _, v := range p {
		if v > 0 {
			n += v
		}
	}
	return n
}
