package store

import (
	"encoding/base64"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
)

// TestMergeUnmapsFilePages: a merge of keys spread over the whole file leaves no more of the file mapped than
// before it. bbolt's mapping kept every page a merge touched, so under load the broker's RSS grew by the size of
// its state file.
func TestMergeUnmapsFilePages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	defer s.Close()
	rnd := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	record := func() broker.KeyRecord {
		var raw [32]byte
		for i := range raw {
			raw[i] = byte(rnd.Uint32())
		}
		return broker.KeyRecord{Key: base64.StdEncoding.EncodeToString(raw[:]), Domain: "ffmuc_welt", FirstSeen: now, LastSeen: now}
	}
	recs := make([]broker.KeyRecord, 50000)
	for i := range recs {
		recs[i] = record()
	}
	if err := s.Import(recs); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	s.releaseMapped() // what Import mapped
	before := rssFile(t)
	o := overlay{}
	for range 5000 {
		o.add(record())
	}
	if err := s.merge(o); err != nil {
		t.Fatal(err)
	}
	if grown := rssFile(t) - before; grown > fi.Size()/4 {
		t.Errorf("the merge left %d kB of the %d kB state file mapped", grown>>10, fi.Size()>>10)
	}
}
