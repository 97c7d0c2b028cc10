package broker

import "time"

// Tick runs what Run runs when a deadline passes, at the time given, and returns the next deadline.
func (b *Broker) Tick(now time.Time) (next time.Time, ok bool) { return b.tick(now) }
