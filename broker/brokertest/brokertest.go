// Package brokertest helps the tests of the broker and of the packages around it.
package brokertest

import (
	"fmt"
	"strings"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// Worker plays what a reference worker publishes after it connects (SPEC §2.1): its endpoint in domain (the
// address made from its name, port 40011, key, the key's link-local address), status 1 and its peer count.
func Worker(b *broker.Broker, name, domain, key string, peers int) {
	d := wire.WorkerData{ExternalAddress: strings.Replace(name, ".in.", ".ext.", 1), Port: 40011, PublicKey: key,
		LinkAddress: wire.LinkLocal(key).String()}
	b.HandleData(wire.DataTopic(name, domain), d.Marshal())
	b.HandleStatus(wire.StatusTopic(name), []byte("1"))
	b.HandleMetric(wire.MetricTopic(domain, name), []byte(fmt.Sprint(peers)))
}
