package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// TestReferenceCompose runs the entrypoint as the reference's docker-compose.yml runs its image: `broker` with its
// environment (MQTT_* pointing at a Mosquitto with a password file) and no configuration file. The broker
// connects to that Mosquitto, and a key posted to it arrives there.
func TestReferenceCompose(t *testing.T) {
	dir := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", dir+"/", ".", "../wgkex-broker")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	mq := testenv.Mosquitto(t, testenv.MosquittoOptions{Users: map[string]string{"wgkex": "s3cret", "observer": "o"}})
	host, port, _ := strings.Cut(mq.Addr, ":")
	obs := testenv.Connect(t, mq.Addr, "observer", testenv.ClientOptions{Username: "observer", Password: "o"})
	obs.Subscribe(t, "wireguard/#")

	httpAddr := testenv.FreeAddr(t)
	_, httpPort, _ := strings.Cut(httpAddr, ":")
	cmd := exec.Command(filepath.Join(dir, "wgkex"), "broker")
	cmd.Env = []string{
		"WGKEX_DOMAINS=ffmuc_muc_cty, ffmuc_welt, ffwert_city",
		"WGKEX_DOMAIN_PREFIXES=ffmuc_, ffdon_, ffwert_",
		"WGKEX_DEBUG=DEBUG",
		"MQTT_BROKER_URL=" + host, "MQTT_BROKER_PORT=" + port,
		"MQTT_USERNAME=wgkex", "MQTT_PASSWORD=s3cret", "MQTT_KEEPALIVE=5", "MQTT_TLS=False",
		// Where the image has /etc/wgkex.yaml (absent and not writable here: the file goes to TMPDIR).
		"WGKEX_CONFIG_FILE=" + filepath.Join(dir, "etc", "wgkex.yaml"), "TMPDIR=" + dir,
		"WGKEX_BROKER_LISTEN_PORT=" + httpPort, "WGKEX_BROKER_STATE_FILE=" + filepath.Join(dir, "wgkex.db"),
		"WGKEX_BROKER_MQTT_SERVER_CLIENT_ID=broker-test",
	}
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	testenv.Eventually(t, 10*time.Second, func() bool {
		for _, m := range obs.Messages() {
			if m.Topic == wire.KeyTopic("ffmuc_welt") {
				return true
			}
		}
		resp, err := http.Post("http://"+httpAddr+"/api/v1/wg/key/exchange", "application/json",
			strings.NewReader(`{"domain":"ffmuc_welt","public_key":"o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="}`))
		if err == nil {
			resp.Body.Close()
		}
		return false
	}, "no key from the broker on mosquitto")
	if _, err := os.Stat(filepath.Join(dir, "wgkex.yaml")); err != nil {
		t.Errorf("configuration written from the environment: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}
