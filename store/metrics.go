package store

import (
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterMetrics registers the store's metrics with reg: wgkex_wal_fsync_seconds (a histogram of the write-ahead
// log's fdatasync calls, one per group of registrations), wgkex_state_file_bytes (the size of the bbolt file) and
// wgkex_wal_damaged_segment_records (per damaged segment that Open kept aside, the registrations recovered from
// it and the unreadable stretches lost) and wgkex_stored_keys (per domain).
// wgkex_stored_keys has a series for each of domains (the configured ones) even before its first key.
func (s *Store) RegisterMetrics(reg prometheus.Registerer, domains ...string) error {
	fsync := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "wgkex_wal_fsync_seconds",
		Help:    "Time of each fdatasync of the write-ahead log (one per group of registrations).",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14), // 50 µs to 0.4 s
	})
	size := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wgkex_state_file_bytes",
		Help: "Size of the state file (bbolt; it grows, and shrinks only with wgkex-broker compact).",
	}, func() float64 {
		fi, err := os.Stat(s.path)
		if err != nil {
			return 0
		}
		return float64(fi.Size())
	})
	damaged := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wgkex_wal_damaged_segment_records",
		Help: "Per write-ahead log segment found damaged at start and kept aside (file): registrations recovered " +
			"from it (state=recovered) and unreadable stretches, each at least one registration (state=lost).",
	}, []string{"file", "state"})
	for _, d := range s.damaged {
		damaged.WithLabelValues(d.File, "recovered").Set(float64(d.Recovered))
		damaged.WithLabelValues(d.File, "lost").Set(float64(d.Lost))
	}
	for _, c := range []prometheus.Collector{fsync, size, damaged, keyCounts{s, domains}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	s.fsyncObserver.Store(&fsync)
	return nil
}

// observeFsync records one fdatasync of the log, if metrics are registered.
func (s *Store) observeFsync(d time.Duration) {
	if h := s.fsyncObserver.Load(); h != nil && d > 0 {
		(*h).Observe(d.Seconds())
	}
}

// keyCounts is wgkex_stored_keys, read from the state file at each scrape (one bucket read).
type keyCounts struct {
	s       *Store
	domains []string // reported even without keys
}

var storedKeysDesc = prometheus.NewDesc("wgkex_stored_keys",
	"Keys stored per domain (in the state file; registrations waiting in the write-ahead log count once merged, within 30 s).",
	[]string{"domain"}, nil)

func (k keyCounts) Describe(ch chan<- *prometheus.Desc) { ch <- storedKeysDesc }

func (k keyCounts) Collect(ch chan<- prometheus.Metric) {
	counts, err := k.s.KeyCounts()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(storedKeysDesc, err)
		return
	}
	for _, d := range k.domains {
		if _, ok := counts[d]; !ok {
			counts[d] = 0
		}
	}
	for d, n := range counts {
		ch <- prometheus.MustNewConstMetric(storedKeysDesc, prometheus.GaugeValue, float64(n), d)
	}
}
