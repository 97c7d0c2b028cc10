package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRunAndStop(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "wgkex.yaml")
	os.WriteFile(cfg, []byte(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
broker_listen: {host: 127.0.0.1, port: 0}
broker:
  state_file: `+filepath.Join(dir, "state.db")+`
  mqtt_listeners: [{address: "127.0.0.1:0"}]
log: {level: error}
`), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- run(ctx, []string{"--config", cfg}) }()
	time.AfterFunc(200*time.Millisecond, cancel)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if _, err := os.Stat(filepath.Join(dir, "state.db")); err != nil {
		t.Errorf("state file: %v", err)
	}
}

func TestRunBadConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "wgkex.yaml")
	os.WriteFile(cfg, []byte("domains: [welt, ffmuc_waytoolongdomain]\ndomain_prefixes: [ffmuc_]\nbogus: 1\n"), 0o644)
	err := run(context.Background(), []string{"--config", cfg})
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{"bogus", `"welt"`, "waytoolongdomain"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s:\n%v", want, err)
		}
	}
	t.Setenv("WGKEX_CONFIG_FILE", filepath.Join(t.TempDir(), "missing.yaml"))
	if err := run(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}
