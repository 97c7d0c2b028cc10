package e2e

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// keysAt runs `wgkex-broker keys ARGS…` against cluster broker id.
func (c *cluster) keysAt(id string, args ...string) string {
	c.t.Helper()
	cmd := exec.Command(binary(c.t, "wgkex-broker"), append(append([]string{"keys"}, args...), "--config", c.brokers[id].cfg)...)
	cmd.Env = append(os.Environ(), "WGKEX_BROKER_MQTT_SERVER_PASSWORD="+clusterUsers["wgkex-broker"])
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("wgkex-broker keys %v at %s: %v\n%s", args, id, err, out)
	}
	return string(out)
}

// killBroker kills broker id with SIGKILL and waits for it.
func (c *cluster) killBroker(id string) {
	b := c.brokers[id]
	b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
}

// revokedAt waits until broker id shows key as revoked and not stored.
func (c *cluster) revokedAt(id, key string) {
	c.t.Helper()
	out := ""
	testenv.Eventually(c.t, 10*time.Second, func() bool {
		out = c.keysAt(id, "show", key)
		return strings.Contains(out, "not stored") && strings.Contains(out, "revoked")
	}, "%s does not show %s revoked", id, key)
}

// TestClusterRevoke: a key revoked at broker a leaves the gateways on Mosquitto (the deployed ACL lets them read
// the revocations), is gone from broker b's store whether b was up (the revocation on the bus) or down (its
// catch-up carries the tombstone), and b's replays carry the revocation: a gateway whose worker was down while
// the key was revoked, replayed to by b alone, removes it.
func TestClusterRevoke(t *testing.T) {
	c := newCluster(t)
	gw1, gw2 := c.gw("gw1"), c.gw("gw2")
	k1, k2, k3 := testenv.NewKey(t).PublicKey().String(), testenv.NewKey(t).PublicKey().String(), testenv.NewKey(t).PublicKey().String()
	for _, k := range []string{k1, k2, k3} {
		if code, body, err := c.post("broker-a", "v1", k); err != nil || code != 200 {
			t.Fatalf("register %s: %d %s %v", k, code, body, err)
		}
	}
	for _, g := range []*gateway{gw1, gw2} {
		c.waitPeers(g, []string{k1, k2, k3}, 20*time.Second)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(c.keysAt("broker-b", "show", k2), "first seen")
	}, "broker-b did not record the keys of broker-a")

	step(t, "revoked at a while b is down: the gateways drop it, b's catch-up brings the tombstone", func() {
		c.killBroker("broker-b")
		c.waitBroker("broker-b", "0")
		c.keysAt("broker-a", "revoke", k2)
		for _, g := range []*gateway{gw1, gw2} {
			c.waitGone(g, []string{k2}, revokeWithin)
		}
		c.startBroker("broker-b") // returns once b has caught up
		c.revokedAt("broker-b", k2)
	})

	step(t, "revoked at a while gw1's worker is down: b applies it, and b's replay makes gw1 remove it", func() {
		c.stopWorker(gw1, syscall.SIGKILL)
		c.keysAt("broker-a", "revoke", k1)
		c.waitGone(gw2, []string{k1}, revokeWithin)
		c.revokedAt("broker-b", k1)
		c.killBroker("broker-a") // the replay can only come from b
		c.waitBroker("broker-a", "0")
		if wg, _, _, _ := c.peers(gw1); !wg[k1] {
			t.Fatal("gw1 lost the peer without its worker")
		}
		c.startWorker(gw1)
		c.waitGone(gw1, []string{k1, k2}, 20*time.Second)
		c.waitPeers(gw1, []string{k3}, time.Second)
	})
}
