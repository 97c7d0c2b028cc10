package mqttd

import (
	"strings"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// identity is who an authenticated client is, and so what it may do. The client id always equals name.
type identity struct {
	name string
	// worker: the client acts as the worker name (publishes its topics, reads its keys).
	worker bool
	// monitor: the client may read worker topics (metrics, status, data), never keys or replays.
	monitor bool
	// own: authenticated by its own credential (password hash or certificate), not by the shared password or
	// anonymously. A session with its own credential is never taken over by one without.
	own bool
	// via names the credential: viaPassword, viaCertificate, viaShared, viaAnonymous.
	via string
	// assigned: an anonymous client whose id the server assigned (it sent none).
	assigned bool
	// set is the accounts the client was authenticated by; cred the credential it used, for SetAccounts to
	// check against new accounts: the password hash, or the shared login's sharedKey.
	set  *accountSet
	cred string
	// pub and sub are the topics a worker may publish and the filters it may subscribe to.
	pub, sub map[string]bool
}

// workerRights fills the topics and filters of worker id.name in the given domains (SPEC §2, issue 7).
func (id *identity) workerRights(domains []string) {
	id.worker = true
	id.pub = map[string]bool{wire.StatusTopic(id.name): true, wire.ReplayRequestTopic(id.name): true}
	id.sub = map[string]bool{wire.ReplayKeysTopic(id.name): true}
	for _, d := range domains {
		id.pub[wire.MetricTopic(d, id.name)] = true
		id.pub[wire.DataTopic(id.name, d)] = true
		id.sub[wire.KeyFilter(d)] = true
		id.sub[wire.RevokeTopic(d)] = true
	}
}

// canPublish reports whether id may publish (or retain, or leave as its will) on topic.
func (id *identity) canPublish(topic string) bool { return id.worker && id.pub[topic] }

// canSubscribe reports whether id may subscribe to filter. A worker may subscribe to exactly its filters or to
// a single topic they cover; a monitor to any filter, its deliveries being restricted by canRead.
func (id *identity) canSubscribe(filter string) bool {
	if id.worker && id.covered(filter) {
		return true
	}
	if id.monitor {
		if hasWildcard(filter) {
			return true
		}
		return monitorReadable(filter)
	}
	return false
}

// canRead reports whether a message on topic may be delivered to id.
func (id *identity) canRead(topic string) bool {
	return id.worker && id.covered(topic) || id.monitor && monitorReadable(topic)
}

// covered reports whether filter is one of the worker's filters, or a topic without wildcards one of them matches.
// FuzzACL checks it against mqttclient.Match.
func (id *identity) covered(filter string) bool {
	if id.sub[filter] {
		return true
	}
	if hasWildcard(filter) {
		return false
	}
	// The worker's filters are topics or end in a single "+": a topic is covered by its parent level + "/+".
	i := strings.LastIndexByte(filter, '/')
	return i >= 0 && id.sub[filter[:i+1]+"+"]
}

// monitorReadable reports whether topic is one that workers publish: metrics, status, data. Keys and replays
// are not, nor is anything else.
func monitorReadable(topic string) bool {
	if _, _, _, err := wire.ParseMetricTopic(topic); err == nil {
		return true
	}
	if _, err := wire.ParseStatusTopic(topic); err == nil {
		return true
	}
	_, _, err := wire.ParseDataTopic(topic)
	return err == nil
}

func hasWildcard(s string) bool { return strings.ContainsAny(s, "+#") }
