package store

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// BenchmarkReplayWindow reads, 1000 keys a page as a replay does, the keys of the last 3 h from a state file
// made by bench/fillstate (WGKEX_BENCH_STATE; e.g. 20,000 recent keys among 1,000,000).
func BenchmarkReplayWindow(b *testing.B) {
	path := benchFile(b, "WGKEX_BENCH_STATE", "go run ./bench/fillstate")
	s, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	since := time.Now().Add(-3 * time.Hour)
	n := 0
	s.visited.Store(0)
	b.ResetTimer()
	for b.Loop() {
		n = 0
		var cur broker.KeyCursor
		for {
			keys, next, err := s.KeysPage("ffmuc_welt", since, cur, 1000)
			if err != nil {
				b.Fatal(err)
			}
			n += len(keys)
			if next == "" {
				break
			}
			cur = next
		}
	}
	b.ReportMetric(float64(n), "keys")
	b.ReportMetric(float64(s.visited.Load())/float64(b.N), "visited/op")
}

// BenchmarkWrites compares the store's group-commit writer with bbolt's DB.Batch for the writes that go to bbolt
// directly (worker state, retained messages): 32 goroutines, each write durable on return.
func BenchmarkWrites(b *testing.B) {
	for _, mode := range []string{"group-commit", "db.Batch"} {
		b.Run(mode, func(b *testing.B) {
			s, err := Open(b.TempDir()+"/state.db", slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var i atomic.Int64
			b.SetParallelism(16) // 32 writers on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					topic := []byte(fmt.Sprint("wireguard-worker/gw", i.Add(1)%500, "/status"))
					fn := func(tx *bolt.Tx) error { return tx.Bucket(bucketRetained).Put(topic, []byte("1")) }
					var err error
					if mode == "db.Batch" {
						err = s.db.Batch(fn)
					} else {
						err = s.update(fn)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkSweep deletes the expired keys of a copy of WGKEX_BENCH_EXPIRED, a file made by bench/fillstate with
// -expired (e.g. 900,000 keys last seen 31 to 60 days ago among 1,000,000), with the default 30-day cut.
func BenchmarkSweep(b *testing.B) {
	src := benchFile(b, "WGKEX_BENCH_EXPIRED", "go run ./bench/fillstate -expired 900000")
	for b.Loop() {
		b.StopTimer()
		s, path := openCopy(b, src)
		b.StartTimer()
		t0 := time.Now()
		n, err := s.Sweep(context.Background(), time.Now().Add(-30*24*time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n), "deleted")
		b.ReportMetric(time.Since(t0).Seconds(), "sweep-s")
		b.StopTimer()
		s.Close()
		fi, _ := os.Stat(path)
		b.ReportMetric(float64(fi.Size()>>20), "file-MB")
		b.StartTimer()
	}
}

// benchFile returns the state file named by the environment variable env, or skips the benchmark: make one with
// the command how.
func benchFile(b *testing.B, env, how string) string {
	b.Helper()
	path := os.Getenv(env)
	if path == "" {
		b.Skipf("set %s to a file made by %s", env, how)
	}
	return path
}

// openCopy opens a copy of the state file src.
func openCopy(b *testing.B, src string) (*Store, string) {
	b.Helper()
	path := b.TempDir() + "/state.db"
	if out, err := exec.Command("cp", src, path).CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	s, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	return s, path
}

// BenchmarkMerge merges 50,000 new random keys (a full overlay, mergeThreshold) into a copy of WGKEX_BENCH_STATE
// (e.g. 1,000,000 keys from bench/fillstate), as the key writer hands them over, and reports the merge's wall
// time, its CPU time and minor page faults (also a key), and the process's mapped file pages at their peak during
// it and after it. The keys arrive one after another over mergeInterval, as under load: their last-seen times, and
// so their places in the time index, are in another order than the keys.
func BenchmarkMerge(b *testing.B) {
	src := benchFile(b, "WGKEX_BENCH_STATE", "go run ./bench/fillstate")
	for b.Loop() {
		b.StopTimer()
		s, _ := openCopy(b, src)
		o := overlay{}
		start := time.Now().Add(-mergeInterval)
		for i := range mergeThreshold {
			var raw [32]byte
			rand.Read(raw[:])
			at := start.Add(time.Duration(i) * mergeInterval / mergeThreshold)
			o.add(broker.KeyRecord{Key: base64.StdEncoding.EncodeToString(raw[:]), Domain: "ffmuc_welt", FirstSeen: at, LastSeen: at, Gateway: "gw04"})
		}
		cpu0, flt0 := cpuTime(b), minorFaults(b)
		peak, stop := peakRssFile(b)
		b.StartTimer()
		t0 := time.Now()
		if err := s.merge(o); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(t0).Seconds(), "merge-s")
		b.StopTimer()
		stop()
		b.ReportMetric(float64(*peak>>20), "peak-RssFile-MB")
		cpu := cpuTime(b) - cpu0
		b.ReportMetric(cpu.Seconds(), "cpu-s")
		b.ReportMetric(float64(cpu.Microseconds())/mergeThreshold, "cpu-µs/key")
		b.ReportMetric(float64(minorFaults(b)-flt0)/mergeThreshold, "faults/key")
		b.ReportMetric(float64(rssFile(b)>>20), "RssFile-MB")
		s.Close()
		b.StartTimer()
	}
}

// BenchmarkRecover opens a copy of WGKEX_BENCH_STATE (e.g. 1,000,000 keys from bench/fillstate) beside a
// write-ahead log of 100,000 new random keys that a killed broker left (two full overlays, registered over two
// merge intervals), and reports how long Open takes to merge it: the cold start after a crash under load.
func BenchmarkRecover(b *testing.B) {
	src := benchFile(b, "WGKEX_BENCH_STATE", "go run ./bench/fillstate")
	const n = 2 * mergeThreshold
	start := time.Now().Add(-2 * mergeInterval)
	var groups [][]broker.KeyRecord
	for i := 0; i < n; i += 100 {
		var g []broker.KeyRecord
		for j := i; j < i+100; j++ {
			var raw [32]byte
			rand.Read(raw[:])
			at := start.Add(time.Duration(j) * 2 * mergeInterval / n)
			g = append(g, broker.KeyRecord{Key: base64.StdEncoding.EncodeToString(raw[:]), Domain: "ffmuc_welt", FirstSeen: at, LastSeen: at, Gateway: "gw04"})
		}
		groups = append(groups, g)
	}
	seg, _ := segmentBytes(b, groups...)
	for b.Loop() {
		b.StopTimer()
		path := b.TempDir() + "/state.db"
		if out, err := exec.Command("cp", src, path).CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
		if err := os.WriteFile(segmentName(path+".wal", 7), seg, 0o600); err != nil {
			b.Fatal(err)
		}
		cpu0 := cpuTime(b)
		b.StartTimer()
		t0 := time.Now()
		s, err := Open(path, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(t0).Seconds(), "open-s")
		b.StopTimer()
		b.ReportMetric((cpuTime(b) - cpu0).Seconds(), "cpu-s")
		if s.recovered != n {
			b.Fatalf("%d registrations recovered, want %d", s.recovered, n)
		}
		b.ReportMetric(float64(rssFile(b)>>20), "RssFile-MB")
		s.Close()
		b.StartTimer()
	}
}

// peakRssFile samples the process's resident file-backed pages every 10 ms until stop is called, which returns
// once the highest sample is in *peak: what a merge keeps mapped between two unmappings.
func peakRssFile(tb testing.TB) (peak *int64, stop func()) {
	peak = new(int64)
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			*peak = max(*peak, rssFile(tb))
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return peak, func() { close(done); <-finished }
}

// cpuTime returns the process's user and system time.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// minorFaults returns the process's minor page faults so far: each maps pages of the state file (or of the heap)
// that the process had not mapped.
func minorFaults(tb testing.TB) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return ru.Minflt
}

// rssFile returns the process's resident file-backed pages (RssFile in /proc/self/status) in bytes.
func rssFile(tb testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	var kb int64
	for _, l := range strings.Split(string(b), "\n") {
		if _, err := fmt.Sscanf(l, "RssFile: %d kB", &kb); err == nil {
			return kb << 10
		}
	}
	tb.Fatal("no RssFile in /proc/self/status: the mapped pages cannot be measured")
	return 0
}
