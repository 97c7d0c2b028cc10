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

	// A new gateway, or a new password for one, is for the embedded MQTT server's ACL, which it takes at start.
	for name, mod := range map[string]func(*config.Config){
		"new gateway": func(c *config.Config) { c.Workers["gw06.in.ffmuc.net"] = config.Worker{} },
		"new password": func(c *config.Config) {
			w := c.Workers["gw05.in.ffmuc.net"]
			w.PasswordHash = "$2a$07$x"
			c.Workers["gw05.in.ffmuc.net"] = w
		},
	} {
		c := reloadConfig(t, state, 0, 1, "")
		mod(c)
		if err := d.Reload(c); !errors.As(err, &re) || !cmp.Equal(re.Keys, []string{"workers (names, password_hash)"}) {
			t.Errorf("reload with a %s: %v", name, err)
		}
	}
	if gw := chosen(t, d); gw != "gw04" {
		t.Errorf("after refused reloads: %s chosen, want gw04", gw)
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
