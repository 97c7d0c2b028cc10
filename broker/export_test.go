package broker

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Tick runs what Run runs when a deadline passes, at the time given, and returns the next deadline.
func (b *Broker) Tick(now time.Time) (next time.Time, ok bool) { return b.tick(now) }

// Metrics exposes the counters for tests.
type Metrics struct{ Revocations *prometheus.CounterVec }

func (b *Broker) Meters() Metrics { return Metrics{Revocations: b.meters.revocations} }
