package web

import (
	"net/netip"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// BenchmarkLimiterAllow is the rate limit's cost per request: one client (the bucket never empties) and many
// distinct clients cycling through a full cache (every request adds and evicts).
func BenchmarkLimiterAllow(b *testing.B) {
	b.Run("one client", func(b *testing.B) {
		l := newLimiter(1e9, 1e9, 65536, testenv.Logger(b))
		a := netip.MustParseAddr("192.0.2.1")
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.allow(a)
			}
		})
	})
	b.Run("new clients", func(b *testing.B) {
		l := newLimiter(10, 300, 1024, testenv.Logger(b))
		frozen := time.Now()
		l.now = func() time.Time { return frozen }
		b.ReportAllocs()
		i := uint32(0)
		for b.Loop() {
			i++
			l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		}
	})
}
