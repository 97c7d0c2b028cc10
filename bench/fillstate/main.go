// Command fillstate fills a broker state file with generated registrations, written straight into bbolt, for
// the benchmarks in BENCHMARKS.md:
//
//	go run ./bench/fillstate -state /tmp/wgkex.db -n 1000000 -recent 20000 -expired 900000
//
// -recent keys were last seen within the last hour (a replay of the default 3 h window sends them), -expired keys
// 31 to 60 days ago (past the default 30-day retention), the rest between 3 h and 29 days ago.
package main

import (
	crand "crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/store"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "fillstate:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("fillstate", flag.ContinueOnError)
	path := fs.String("state", "wgkex.db", "state file to fill (created if missing; the broker must be stopped)")
	n := fs.Int("n", 1_000_000, "keys in all")
	recent := fs.Int("recent", 20_000, "keys last seen within the last hour")
	expired := fs.Int("expired", 0, "keys last seen 31 to 60 days ago")
	domain := fs.String("domain", "ffmuc_welt", "domain of every key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *recent+*expired > *n {
		return fmt.Errorf("-recent %d and -expired %d exceed -n %d", *recent, *expired, *n)
	}
	st, err := store.Open(*path, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		return err
	}
	now := time.Now()
	between := func(from, to time.Duration) time.Time { // a time between from and to ago
		return now.Add(-from - time.Duration(rand.Int64N(int64(to-from))))
	}
	const day = 24 * time.Hour
	start := time.Now()
	recs := make([]broker.KeyRecord, 0, *n)
	var raw [32]byte
	for i := range *n {
		crand.Read(raw[:]) // a valid, random public key
		at := between(3*time.Hour, 29*day)
		switch {
		case i < *recent:
			at = between(0, time.Hour)
		case i < *recent+*expired:
			at = between(31*day, 60*day)
		}
		recs = append(recs, broker.KeyRecord{Key: base64.StdEncoding.EncodeToString(raw[:]), Domain: *domain, FirstSeen: at, LastSeen: at})
	}
	// Oldest first, as the keys reached the broker: the time index is filled at its end, as in service.
	slices.SortFunc(recs, func(a, b broker.KeyRecord) int { return a.LastSeen.Compare(b.LastSeen) })
	const chunk = 2000 // small enough that the index grows at its end, one chunk after the other
	for i := 0; i < len(recs); i += chunk {
		if err := st.Import(recs[i:min(i+chunk, len(recs))]); err != nil {
			st.Close()
			return err
		}
	}
	if err := st.Close(); err != nil {
		return err
	}
	fi, err := os.Stat(*path)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %d keys (%d recent, %d expired) in %.1f s, %d MB\n", *path, *n, *recent, *expired,
		time.Since(start).Seconds(), fi.Size()>>20)
	return nil
}
