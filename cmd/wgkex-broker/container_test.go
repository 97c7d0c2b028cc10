package main

import (
	"bufio"
	"io"
	"net"
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

// dockerEnv reads the ENV instruction of the Dockerfile.
func dockerEnv(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var env []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "ENV ") {
			in, l = true, strings.TrimPrefix(l, "ENV ")
		}
		if !in {
			continue
		}
		cont := strings.HasSuffix(l, "\\")
		env = append(env, strings.Fields(strings.TrimSuffix(l, "\\"))...)
		in = cont
	}
	return env
}

// TestContainerEnvironment builds the static binary as the Dockerfile does and runs it the way the image does:
// the example configuration as /etc/wgkex.yaml, the Dockerfile's environment (ports that the system picks, read
// back from the log, and the state directory moved here), then SIGTERM as `docker stop` sends it.
func TestContainerEnvironment(t *testing.T) {
	dir := t.TempDir()
	if env := dockerEnv(t); len(env) < 3 {
		t.Fatalf("Dockerfile ENV: %q", env)
	}
	cmd, logR := startImage(t, dir, "WGKEX_BROKER_MQTT_LISTENERS=127.0.0.1:0")
	defer cmd.Process.Kill()
	get(t, "http://"+startedAddr(t, logR)+"/api/v1/locations")
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("no exit within 10 s of SIGTERM")
	}
	if _, err := os.Stat(filepath.Join(dir, "wgkex.db")); err != nil {
		t.Errorf("state file: %v", err)
	}
}

// TestComposeRecipe runs README's one-host recipe (deploy/docker-compose.yml) as the image would: the example
// configuration copied as it is, the Dockerfile's environment (MQTT on 0.0.0.0, on a port the system picks here)
// and WGKEX_MQTT_PASSWORD alone, as the compose file asks. The broker starts (it used to refuse: the shared
// login needed a username) and a gateway of the example logs in with its name and that password; a wrong
// password and an unconfigured name do not.
func TestComposeRecipe(t *testing.T) {
	cmd, logR := startImage(t, t.TempDir(), "WGKEX_MQTT_PASSWORD=compose-secret", "WGKEX_BROKER_MQTT_LISTENERS=0.0.0.0:0")
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	_, mqttAddr := startedAddrs(t, logR)
	_, port, _ := net.SplitHostPort(mqttAddr)
	addr := "127.0.0.1:" + port
	c := testenv.Connect(t, addr, "gw04.in.ffmuc.net", testenv.ClientOptions{Username: "gw04.in.ffmuc.net", Password: "compose-secret"})
	c.Publish(t, wire.StatusTopic("gw04.in.ffmuc.net"), "1", 1, false)
	for _, bad := range []struct{ name, pass string }{{"gw04.in.ffmuc.net", "wrong"}, {"gw99.example", "compose-secret"}} {
		if _, err := testenv.Dial(addr, bad.name, testenv.ClientOptions{Username: bad.name, Password: bad.pass}); err == nil {
			t.Errorf("%s with %q accepted", bad.name, bad.pass)
		}
	}
}

// startImage starts the static binary as the image runs it: the example configuration, the Dockerfile's
// environment, then env; the REST API on a port the system picks, the state in dir, JSON logs on the returned
// reader.
func startImage(t *testing.T, dir string, env ...string) (*exec.Cmd, io.Reader) {
	t.Helper()
	cmd := exec.Command(staticBroker(t, dir))
	cmd.Env = append(append(append(os.Environ(), dockerEnv(t)...),
		"WGKEX_CONFIG_FILE=../../wgkex.yaml.example",
		"WGKEX_BROKER_LISTEN_HOST=127.0.0.1", "WGKEX_BROKER_LISTEN_PORT=0",
		"WGKEX_BROKER_STATE_FILE="+filepath.Join(dir, "wgkex.db"),
		"WGKEX_LOG_FORMAT=json"), env...)
	cmd.Stdout = t.Output()
	logR, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, logR
}

// staticBroker builds the static binary as the Dockerfile does, into dir.
func staticBroker(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "wgkex-broker")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	return bin
}
