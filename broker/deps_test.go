package broker_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCoreImports checks that the core links no configuration loader, HTTP framework, MQTT server or database:
// brokerd maps the configuration onto Options, and the store and publisher come in as interfaces.
func TestCoreImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/freifunkMUC/wgkex-go/internal/config", "github.com/knadh/koanf",
			"go.yaml.in/yaml", "github.com/mochi-mqtt/", "github.com/labstack/echo", "go.etcd.io/bbolt"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("broker links %s", dep)
			}
		}
	}
}
