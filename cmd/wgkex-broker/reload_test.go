package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
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

// logLine is one JSON log line of the broker.
type logLine struct {
	Msg  string   `json:"msg"`
	HTTP string   `json:"http"`
	MQTT []string `json:"mqtt"`
	Err  string   `json:"err"`
}

// TestSIGHUPReload runs the built binary and sends it SIGHUP: an invalid file and a change of the REST listener
// are refused with a log line and the old weights stay; new weights are then taken without a restart and
// without dropping the gateways' MQTT connections, and v2 follows them; a gateway's new password and a new
// gateway take effect too, ending only the connection made with the old password.
func TestSIGHUPReload(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "wgkex-broker")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cfgPath := filepath.Join(dir, "wgkex.yaml")
	pw := map[string]string{"gw04.in.ffmuc.net": testenv.BcryptHash(t, "p4"), "gw05.in.ffmuc.net": testenv.BcryptHash(t, "p5")}
	gw06 := "" // a gateway added by the last reload
	write := func(w4, w5 int, port int) {
		t.Helper()
		err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers:
  gw04.in.ffmuc.net: {weight: %d, password_hash: '%s'}
  gw05.in.ffmuc.net: {weight: %d, password_hash: '%s'}
%s
broker_listen: {host: 127.0.0.1, port: %d}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
log: {format: json}
`, w4, pw["gw04.in.ffmuc.net"], w5, pw["gw05.in.ffmuc.net"], gw06, port, filepath.Join(dir, "state.db"))), 0o644)
		if err != nil {
			t.Fatal(err)
		}
	}
	write(1, 0, 0)
	cmd := exec.Command(bin, "--config", cfgPath)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan logLine, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Log(sc.Text())
			var l logLine
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				lines <- l
			}
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() { cmd.Process.Kill() })
	await := func(msg string) logLine {
		t.Helper()
		timeout := time.After(15 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("broker exited before logging %q", msg)
				}
				if l.Msg == msg {
					return l
				}
			case <-timeout:
				t.Fatalf("no %q in the log", msg)
			}
		}
	}
	started := await("broker started")
	base := "http://" + started.HTTP
	gw := map[string]*testenv.Client{}
	for name, pass := range map[string]string{"gw04.in.ffmuc.net": "p4", "gw05.in.ffmuc.net": "p5"} {
		c := testenv.Connect(t, started.MQTT[0], name, testenv.ClientOptions{Username: name, Password: pass})
		gw[name] = c
		data := wire.WorkerData{ExternalAddress: name, Port: 51820, PublicKey: "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", LinkAddress: "fe80::1"}
		c.Publish(t, wire.DataTopic(name, "ffmuc_welt"), string(data.Marshal()), 1, true)
		c.Publish(t, wire.StatusTopic(name), "1", 1, true)
		c.Publish(t, wire.MetricTopic("ffmuc_welt", name), "10", 1, true)
		t.Cleanup(c.Close)
	}
	chosen := func() string {
		t.Helper()
		body := `{"domain":"ffmuc_welt","public_key":"` + testenv.NewKey(t).PublicKey().String() + `"}`
		resp, err := http.Post(base+"/api/v2/wg/key/exchange", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, gw := range []string{"gw04", "gw05"} {
			if strings.Contains(string(b), `"Address":"`+gw) {
				return gw
			}
		}
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return chosen() == "gw04" }, "gw04 never chosen")
	hup := func() {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}

	if err := os.WriteFile(cfgPath, []byte("domains: [ffmuc_welt]\nworkers: {gw04.in.ffmuc.net: {weight: -3}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hup()
	if l := await("configuration reload failed, keeping the configuration in effect"); !strings.Contains(l.Err, "weight") {
		t.Errorf("reload failure does not name the problem: %q", l.Err)
	}
	if gw := chosen(); gw != "gw04" {
		t.Errorf("after an invalid file: %s chosen, want gw04", gw)
	}

	write(0, 1, 5999)
	hup()
	if l := await("configuration reload refused, keeping the configuration in effect"); !strings.Contains(l.Err, "broker_listen") {
		t.Errorf("refusal does not name the key: %q", l.Err)
	}
	if gw := chosen(); gw != "gw04" {
		t.Errorf("after a refused reload: %s chosen, want gw04", gw)
	}

	write(0, 1, 0)
	hup()
	await("configuration reloaded")
	for range 3 {
		if gw := chosen(); gw != "gw05" {
			t.Errorf("after reload: %s chosen, want gw05", gw)
		}
	}

	// A new password for gw05 and a new gateway gw06: gw05's connection ends, its old password is refused and
	// the new one accepted, gw04 keeps its connection, gw06 connects.
	pw["gw05.in.ffmuc.net"] = testenv.BcryptHash(t, "p5-new")
	gw06 = "  gw06.in.ffmuc.net: {password_hash: '" + testenv.BcryptHash(t, "p6") + "'}"
	write(0, 1, 0)
	hup()
	await("configuration reloaded")
	dial := func(name, pass string) error {
		c, err := testenv.Dial(started.MQTT[0], name, testenv.ClientOptions{Username: name, Password: pass})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial("gw05.in.ffmuc.net", "p5"); err == nil {
		t.Error("gw05's old password accepted after the reload")
	}
	for name, pass := range map[string]string{"gw05.in.ffmuc.net": "p5-new", "gw06.in.ffmuc.net": "p6"} {
		if err := dial(name, pass); err != nil {
			t.Errorf("%s with its new password: %v", name, err)
		}
	}
	gw["gw04.in.ffmuc.net"].Publish(t, wire.MetricTopic("ffmuc_welt", "gw04.in.ffmuc.net"), "11", 1, true)
	if err := gw["gw05.in.ffmuc.net"].TryPublish(wire.MetricTopic("ffmuc_welt", "gw05.in.ffmuc.net"), "11", 1, true); err == nil {
		t.Error("gw05's connection with its old password survived the reload")
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	await("broker stopped")
	if err := <-exited; err != nil {
		t.Errorf("broker exit: %v", err)
	}
}
