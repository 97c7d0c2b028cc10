package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/app/brokerd"
	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/worker"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane/kernel"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(gatewayHelper(spec))
	}
	testenv.Main(m)
}

// brokerConfig is the broker's configuration for these tests; extra is appended YAML.
func brokerConfig(t testing.TB, state, httpAddr, mqttAddr, extra string) *config.Config {
	t.Helper()
	host, port, _ := strings.Cut(httpAddr, ":")
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
broker_listen: {host: %q, port: %s}
broker:
  state_file: %s
  mqtt_listeners: [{address: %q}]
  reconnect_grace: 1m
%s`, host, port, state, mqttAddr, extra)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func startBroker(t testing.TB, cfg *config.Config) *brokerd.Daemon {
	t.Helper()
	d, err := brokerd.Start(cfg, testenv.Logger(t).With("side", "broker"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) })
	return d
}

func post(t testing.TB, addr, version, domain, key string) (int, string) {
	t.Helper()
	body := fmt.Sprintf(`{"domain":%q,"public_key":%q}`, domain, key)
	resp, err := http.Post("http://"+addr+"/api/"+version+"/wg/key/exchange", "application/x-www-form-urlencoded", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// runAgent runs a worker in-process against the gateway namespace ns until the test ends or stop is called.
func runAgent(t testing.TB, ns *testenv.NS, name, mqttAddr string, healthPort int) (a *worker.Agent, stop func()) {
	return runAgentEvery(t, ns, name, mqttAddr, healthPort, 200*time.Millisecond)
}

// runAgentEvery is runAgent with the metrics interval given.
func runAgentEvery(t testing.TB, ns *testenv.NS, name, mqttAddr string, healthPort int, metrics time.Duration) (a *worker.Agent, stop func()) {
	t.Helper()
	dp, err := kernel.OpenAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	host, port, _ := strings.Cut(mqttAddr, ":")
	var p int
	fmt.Sscan(port, &p)
	return startAgent(t, dp, name, map[string]string{"ffmuc_welt": "welt"}, worker.RunOptions{
		MQTT:            worker.MQTT{BrokerURL: host, BrokerPort: p, Keepalive: 2},
		MetricsInterval: metrics, CleanupInterval: time.Hour, HealthPort: healthPort,
	})
}

// startAgent runs a worker on dp until the test ends or stop is called.
func startAgent(t testing.TB, dp dataplane.Dataplane, name string, domains map[string]string, ro worker.RunOptions) (a *worker.Agent, stop func()) {
	t.Helper()
	a, err := worker.New(dp, testenv.Logger(t).With("side", name), worker.Options{
		Name: name, Domains: domains, ExternalName: name + ".ext",
		StaleTimeout: 3 * time.Hour, Grace: 10 * time.Minute, RetryDelay: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx, ro); err != nil {
			t.Errorf("worker %s: %v", name, err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return a, stop
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binary builds cmd/<name> once per test run and returns its path. With WGKEX_E2E_BIN set, it takes the binaries
// in that folder instead (to run a test against an older build: does it fail there?).
func binary(t *testing.T, name string) string {
	t.Helper()
	if dir := os.Getenv("WGKEX_E2E_BIN"); dir != "" {
		return filepath.Join(dir, name)
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "wgkex-e2e-bin")
		if buildErr != nil {
			return
		}
		for _, n := range []string{"wgkex-broker", "wgkex-worker"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(buildDir, n), "../../cmd/"+n).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", n, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, name)
}

// lines returns the non-empty trimmed lines of s.
func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
