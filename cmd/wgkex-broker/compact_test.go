package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/store"
)

// TestCompact: `wgkex-broker compact` refuses a state file a broker holds open, and shrinks a stopped one after
// a retention sweep, keeping what was left.
func TestCompact(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state.db")
	cfg := filepath.Join(dir, "wgkex.yaml")
	os.WriteFile(cfg, []byte("domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\nbroker: {state_file: "+state+"}\n"), 0o644)
	st, err := store.Open(state, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	var recs []broker.KeyRecord
	for i := range 20000 {
		at := t0
		if i == 0 {
			at = t0.Add(time.Hour)
		}
		recs = append(recs, broker.KeyRecord{Key: fmt.Sprintf("%043dA=", i)[1:], Domain: "ffmuc_welt", FirstSeen: at, LastSeen: at})
	}
	if err := st.Import(recs); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Sweep(context.Background(), t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := compact([]string{"--config", cfg}, &bytes.Buffer{}); !errors.Is(err, store.ErrInUse) {
		t.Errorf("compact of an open state file: %v, want ErrInUse", err)
	}
	st.Close()
	fi, _ := os.Stat(state)
	var out bytes.Buffer
	if err := compact([]string{"--config", cfg}, &out); err != nil {
		t.Fatal(err)
	}
	t.Log(out.String())
	nfi, _ := os.Stat(state)
	if nfi.Size() >= fi.Size()/2 {
		t.Errorf("state file %d bytes after compact, was %d", nfi.Size(), fi.Size())
	}
	st, err = store.Open(state, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keys, _, err := st.KeysPage("ffmuc_welt", t0, "", 10)
	if err != nil || len(keys) != 1 || keys[0].Key != recs[0].Key {
		t.Errorf("keys after compact: %v, %v", keys, err)
	}
}
