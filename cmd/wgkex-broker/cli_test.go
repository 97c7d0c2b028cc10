package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// TestCommandLine builds the three commands as `make build` does and runs them as an operator would: --version
// names the commit of this checkout, --help and -h exit 0 and list the subcommands, a subcommand's --help exits
// 0 with its usage, and a mistake says what to do.
func TestCommandLine(t *testing.T) {
	git, err := exec.LookPath("git")
	if err != nil {
		testenv.Skip(t, "no git: the commit cannot be checked")
	}
	head, err := exec.Command(git, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		testenv.Skip(t, "not a git checkout: "+err.Error())
	}
	full, err := exec.Command(git, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	// As `make build` does: the commit from Go's build info where .git is a folder, else from -X.
	dir := t.TempDir()
	build := exec.Command("go", "build", "-buildvcs=auto", "-ldflags=-X github.com/freifunkMUC/wgkex-go/internal/app/cli.commit="+
		strings.TrimSpace(string(full)), "-o", dir+"/", "../wgkex", "../wgkex-broker", "../wgkex-worker")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// A wgkex.yaml of the Python deployment: its broker used the Mosquitto that mqtt.broker_url names.
	python := filepath.Join(dir, "python.yaml")
	if err := os.WriteFile(python, []byte("domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\n"+
		"mqtt: {broker_url: mqtt.ffmuc.net, broker_port: 1883, username: wgkex, password: from-python}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		cmd  []string
		code int
		want []string
	}{
		{[]string{"wgkex-broker", "--version"}, 0, []string{"wgkex-broker ", "commit " + strings.TrimSpace(string(head))}},
		{[]string{"wgkex-worker", "--version"}, 0, []string{"wgkex-worker ", "commit " + strings.TrimSpace(string(head))}},
		{[]string{"wgkex", "--version"}, 0, []string{"wgkex ", "commit " + strings.TrimSpace(string(head))}},
		{[]string{"wgkex-broker", "--help"}, 0, []string{"wgkex-broker backup", "wgkex-broker restore", "wgkex-broker compact", "wgkex-broker hash-password", "--version"}},
		{[]string{"wgkex-broker", "-h"}, 0, []string{"wgkex-broker backup"}},
		{[]string{"wgkex-broker", "backup", "--help"}, 0, []string{"usage: wgkex-broker backup [--config FILE] BACKUP_FILE"}},
		{[]string{"wgkex-worker", "--help"}, 0, []string{"wgkex-worker vni DOMAIN_SEED"}},
		{[]string{"wgkex-worker", "-h"}, 0, []string{"wgkex-worker [--config FILE]"}},
		{[]string{"wgkex", "--help"}, 0, []string{"wgkex broker", "wgkex worker"}},
		{[]string{"wgkex", "-h"}, 0, []string{"wgkex broker"}},
		{[]string{"wgkex-broker", "frobnicate"}, 1, []string{"unknown command \"frobnicate\": `wgkex-broker --help` lists the commands"}},
		{[]string{"wgkex-broker", "--config", filepath.Join(dir, "missing.yaml")}, 1, []string{"missing.yaml"}},
		{[]string{"wgkex-broker", "backup"}, 1, []string{"usage: wgkex-broker backup [--config FILE] BACKUP_FILE"}},
		{[]string{"wgkex-broker", "check-config", "--config", "../../wgkex.yaml.example"}, 0,
			[]string{"mqtt.password: (empty)", "workers[gw04.in.ffmuc.net].weight: 30", "# the broker would start"}},
		{[]string{"wgkex-broker", "check-config", "--config", python}, 1,
			[]string{"mqtt.password: (set)", "set broker.mqtt_server.url: mqtt://mqtt.ffmuc.net:1883"}},
		{[]string{"wgkex-broker", "--config", python}, 1, []string{"set broker.mqtt_server.url: mqtt://mqtt.ffmuc.net:1883"}},
	}
	for _, tc := range tests {
		out, err := exec.Command(filepath.Join(dir, tc.cmd[0]), tc.cmd[1:]...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code {
			t.Errorf("%q: exit %d, want %d\n%s", tc.cmd, code, tc.code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("%q: output lacks %q:\n%s", tc.cmd, w, out)
			}
		}
	}
}
