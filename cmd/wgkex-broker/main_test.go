package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// startedAddr reads JSON log lines from r until "broker started" and returns its HTTP address. It fails the test
// if the broker ends its log without starting.
func startedAddr(t *testing.T, r io.Reader) string {
	t.Helper()
	http, _ := startedAddrs(t, r)
	return http
}

// startedAddrs is startedAddr, and the address of the first MQTT listener too.
func startedAddrs(t *testing.T, r io.Reader) (http, mqtt string) {
	t.Helper()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		t.Log(sc.Text())
		var l struct {
			Msg  string   `json:"msg"`
			HTTP string   `json:"http"`
			MQTT []string `json:"mqtt"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "broker started" {
			go io.Copy(io.Discard, r) // keep the broker's log from blocking
			if len(l.MQTT) == 0 {
				t.Fatal("broker started without an MQTT listener")
			}
			return l.HTTP, l.MQTT[0]
		}
	}
	t.Fatalf("broker log ended without \"broker started\": %v", sc.Err())
	return "", ""
}

// get fetches url and fails the test unless the answer is 200.
func get(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
}

// TestRunAndStop runs the broker on ports the system picks, reads them back from its log, asks it for the
// locations, then cancels it: it must have served and must return without error.
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
log: {level: info, format: json}
`), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logR, logW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"--config", cfg}, logW)
		logW.Close()
		done <- err
	}()
	get(t, "http://"+startedAddr(t, logR)+"/api/v1/locations")
	cancel()
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
	err := run(context.Background(), []string{"--config", cfg}, io.Discard)
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{"bogus", `"welt"`, "waytoolongdomain"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s:\n%v", want, err)
		}
	}
	t.Setenv("WGKEX_CONFIG_FILE", filepath.Join(t.TempDir(), "missing.yaml"))
	if err := run(context.Background(), nil, io.Discard); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

func TestHashPassword(t *testing.T) {
	var out strings.Builder
	if err := hashPassword([]string{"--cost", "4"}, strings.NewReader("s3cret pass\n"), &out); err != nil {
		t.Fatal(err)
	}
	h := strings.TrimSpace(out.String())
	if err := bcrypt.CompareHashAndPassword([]byte(h), []byte("s3cret pass")); err != nil {
		t.Errorf("hash %q does not verify the password: %v", h, err)
	}
	if err := hashPassword([]string{"s3cret"}, strings.NewReader(""), &out); err == nil {
		t.Error("password taken from the command line")
	}
	if err := hashPassword(nil, strings.NewReader("\n"), &out); err == nil {
		t.Error("empty password hashed")
	}
}
