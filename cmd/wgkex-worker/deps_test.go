package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLean checks that the worker binary links no MQTT server, HTTP framework or database.
func TestLean(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/mochi-mqtt/", "github.com/labstack/echo", "go.etcd.io/bbolt"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("wgkex-worker links %s", dep)
			}
		}
	}
}
