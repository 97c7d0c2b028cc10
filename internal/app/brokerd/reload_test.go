package brokerd

import (
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/bcrypt"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// reloadConfig is dashConfig's broker with the given gateway weights and extra YAML under broker:.
func reloadConfig(t *testing.T, state string, w4, w5 int, broker string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
domains: [ffmuc_welt, ffwert_city]
domain_prefixes: [ffmuc_, ffwert_]
workers:
  gw04.in.ffmuc.net: {weight: %d, location: MUC}
  gw05.in.ffmuc.net: {weight: %d, location: Vienna}
broker_listen: {host: 127.0.0.1, port: 0}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
  reconnect_grace: 1h
%s
`, w4, w5, state, broker)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// chosen posts a v2 registration and returns the endpoint address it got.
func chosen(t *testing.T, d *Daemon) string {
	t.Helper()
	code, body := post(t, d, "v2", `{"domain":"ffmuc_welt","public_key":"`+testenv.NewKey(t).PublicKey().String()+`"}`)
	if code != 200 {
		t.Fatalf("v2: %d %s", code, body)
	}
	for _, gw := range []string{"gw04", "gw05"} {
		if strings.Contains(body, `"Address":"`+gw+`.ext.ffmuc.net"`) {
			return gw
		}
	}
	t.Fatalf("v2 answered %s", body)
	return ""
}

// TestReload: new weights take effect at the next registration without dropping the gateways' MQTT connections;
// a change that needs a restart is refused whole, and the old weights stay; new dashboard credentials apply.
func TestReload(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state.db")
	// Weight 0 is chosen only when every other gateway is above its share: gw04 takes every node, then gw05.
	d := startDaemon(t, reloadConfig(t, state, 1, 0, ""))
	gw4, gw5 := connectGateway(t, d, "gw04.in.ffmuc.net"), connectGateway(t, d, "gw05.in.ffmuc.net")
	gw4.up(t, "ffmuc_welt", 51820, 10)
	gw5.up(t, "ffmuc_welt", 51821, 10)
	testenv.Eventually(t, 5*time.Second, func() bool {
		ws := d.Broker.Workers()
		return len(ws) == 2 && ws[0].Online && ws[1].Online && ws[0].Peers["ffmuc_welt"] == 10 && ws[1].Peers["ffmuc_welt"] == 10
	}, "gateways not reported")
	for range 3 {
		if gw := chosen(t, d); gw != "gw04" {
			t.Fatalf("before reload: %s chosen, want gw04", gw)
		}
	}

	// A new listener port together with new weights: refused whole.
	bad := reloadConfig(t, state, 0, 1, "")
	bad.BrokerListen.Port = 5999
	bad.Broker.ReplayWindow = config.Duration(time.Minute)
	var re *RestartError
	if err := d.Reload(bad); !errors.As(err, &re) || !cmp.Equal(re.Keys, []string{"broker.replay_window", "broker_listen"}) {
		t.Fatalf("reload with a new listener: %v", err)
	}
	if gw := chosen(t, d); gw != "gw04" {
		t.Errorf("after a refused reload: %s chosen, want gw04", gw)
	}

	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err := d.Reload(reloadConfig(t, state, 0, 1, "  dashboard: {username: ops, password_hash: '"+string(hash)+"'}")); err != nil {
		t.Fatalf("reload: %v", err)
	}
	for range 3 {
		if gw := chosen(t, d); gw != "gw05" {
			t.Errorf("after reload: %s chosen, want gw05", gw)
		}
	}
	if n := d.MQTT.Clients(); n != 2 {
		t.Errorf("%d MQTT clients after reload, want the 2 gateways still connected", n)
	}
	gw5.peers(t, "ffmuc_welt", 50) // the old connection still works
	testenv.Eventually(t, 5*time.Second, func() bool { return d.Broker.Workers()[1].Peers["ffmuc_welt"] == 50 }, "metric after reload not taken")
	resp, err := httpGet("http://" + d.HTTPAddr() + "/api/v1/status")
	if err != nil || resp != 401 {
		t.Errorf("status page after credentials were added: %d, %v", resp, err)
	}
	if got := d.Broker.Locations(); !cmp.Equal(got, []string{"MUC", "Vienna"}) {
		t.Errorf("locations: %v", got)
	}
}

func httpGet(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// withPasswords gives the gateways of cfg password hashes (name → password; "" leaves a gateway without one) and
// adds gateways not in cfg yet.
func withPasswords(t *testing.T, cfg *config.Config, pw map[string]string) *config.Config {
	t.Helper()
	for name, p := range pw {
		w := cfg.Workers[name]
		w.PasswordHash = ""
		if p != "" {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			w.PasswordHash = string(h)
		}
		cfg.Workers[name] = w
	}
	return cfg
}

// TestReloadCredentials: a gateway's new password hash takes effect at reload without a restart: its connection
// made with the old password ends, the old password is refused and the new one accepted; the other gateway keeps
// its connection (the same one, reporting on); a gateway added under workers: connects and reports; a removed
// monitor is disconnected and refused.
func TestReloadCredentials(t *testing.T) {
	const gw04, gw05, gw06 = "gw04.in.ffmuc.net", "gw05.in.ffmuc.net", "gw06.in.ffmuc.net"
	state := filepath.Join(t.TempDir(), "state.db")
	cfg := withPasswords(t, reloadConfig(t, state, 1, 1, ""), map[string]string{gw04: "p4", gw05: "p5"})
	mon, _ := bcrypt.GenerateFromPassword([]byte("pm"), bcrypt.MinCost)
	cfg.Broker.MQTTMonitors = map[string]config.MQTTMonitor{"grafana": {PasswordHash: string(mon)}}
	d := startDaemon(t, cfg)
	login := func(name, pw string) (*testenv.Client, error) {
		return testenv.Dial(d.MQTTAddr(), name, testenv.ClientOptions{Username: name, Password: pw})
	}
	gateway := func(name, pw string) *fakeGateway {
		t.Helper()
		c, err := login(name, pw)
		if err != nil {
			t.Fatalf("%s with its password: %v", name, err)
		}
		t.Cleanup(c.Close)
		return &fakeGateway{name: name, client: c}
	}
	gw4, gw5 := gateway(gw04, "p4"), gateway(gw05, "p5")
	gw4.up(t, "ffmuc_welt", 51820, 10)
	gw5.up(t, "ffmuc_welt", 51821, 10)
	if c, err := login("grafana", "pm"); err != nil {
		t.Fatalf("monitor: %v", err)
	} else {
		defer c.Close()
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return d.MQTT.Clients() == 3 }, "clients not connected")

	next := withPasswords(t, reloadConfig(t, state, 1, 1, ""), map[string]string{gw05: "p5-new", gw06: "p6"})
	next.Workers[gw04] = cfg.Workers[gw04] // the same hash; a new hash of the same password would count as changed
	if err := d.Reload(next); err != nil {
		t.Fatalf("reload with new credentials: %v", err)
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return d.MQTT.Clients() == 1 },
		"%d clients after reload, want gw04 only (gw05's password and the monitor changed)", d.MQTT.Clients())
	gw4.peers(t, "ffmuc_welt", 42) // the same connection as before the reload
	testenv.Eventually(t, 5*time.Second, func() bool { return d.Broker.Workers()[0].Peers["ffmuc_welt"] == 42 },
		"gw04's metric after the reload not taken")
	for _, refused := range [][2]string{{gw05, "p5"}, {"grafana", "pm"}} {
		if c, err := login(refused[0], refused[1]); err == nil {
			c.Close()
			t.Errorf("%s with its old password accepted after the reload", refused[0])
		}
	}
	gateway(gw05, "p5-new").up(t, "ffmuc_welt", 51821, 5)
	gateway(gw06, "p6").up(t, "ffmuc_welt", 51822, 7)
	testenv.Eventually(t, 5*time.Second, func() bool {
		ws := d.Broker.Workers()
		return len(ws) == 3 && ws[1].Online && ws[1].Peers["ffmuc_welt"] == 5 && ws[2].Name == gw06 && ws[2].Online &&
			ws[2].Peers["ffmuc_welt"] == 7
	}, "gw05 with its new password and the new gw06 not reported: %+v", d.Broker.Workers())
}
