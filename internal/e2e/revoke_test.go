package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// revokeWithin bounds the time from `wgkex-broker keys revoke` to the key gone from a gateway whose worker runs.
const revokeWithin = 5 * time.Second

// keys runs `wgkex-broker keys ARGS… --config` against the running broker (through its administration socket) and
// returns what it printed.
func (s *system) keys(args ...string) string {
	s.t.Helper()
	out, err := exec.Command(binary(s.t, "wgkex-broker"), append(append([]string{"keys"}, args...), "--config", s.brokerCfg)...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("wgkex-broker keys %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// waitGone waits until none of keys is a peer, a route or an FDB entry on g.
func (s *system) waitGone(g *gateway, keys []string, timeout time.Duration) {
	s.t.Helper()
	testenv.Eventually(s.t, timeout, func() bool {
		wg, routes, fdb, _ := s.peers(g)
		for _, k := range keys {
			if wg[k] || routes[k] || fdb[k] {
				return false
			}
		}
		return true
	}, "%s still has one of %v", g.name, keys)
}

// restartBroker kills the broker and starts it again with its configuration file as it is now.
func (s *system) restartBroker() {
	s.broker.Process.Kill()
	s.broker.Wait()
	s.obs.Close()
	s.startBroker()
	for _, g := range s.gws {
		s.waitOnline(g)
	}
}

// TestRevokeSystem: a key revoked with `wgkex-broker keys revoke` leaves every real gateway (peer, route, FDB
// entry) within seconds; a gateway whose worker was down meanwhile removes it after kill -9 and a start, which
// adopts the peer from the device and gets the revocation with the replay; neither that nor a broker restart
// brings a revoked key back; a key put on the blocklist is revoked the same way.
func TestRevokeSystem(t *testing.T) {
	s := newSystem(t)
	gw1, gw2 := s.gw("gw1"), s.gw("gw2")
	blocklist := filepath.Join(s.dir, "blocklist.yaml")
	if err := os.WriteFile(blocklist, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(s.brokerCfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("  blocklist_file: " + blocklist + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	s.restartBroker()

	k1, k2, k3 := testenv.NewKey(t).PublicKey().String(), testenv.NewKey(t).PublicKey().String(), testenv.NewKey(t).PublicKey().String()
	for _, k := range []string{k1, k2, k3} {
		if code, body, err := s.post("v1", k); err != nil || code != 200 {
			t.Fatalf("register %s: %d %s %v", k, code, body, err)
		}
	}
	for _, g := range s.gws {
		s.waitPeers(g, []string{k1, k2, k3}, 20*time.Second)
	}

	step(t, "keys show and list", func() {
		out := s.keys("show", k1)
		for _, want := range []string{k1 + " in ffmuc_welt:", "first seen", "last seen", "on gateways gw1, gw2"} {
			if !strings.Contains(out, want) {
				t.Errorf("keys show lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "revoked") {
			t.Errorf("keys show says revoked:\n%s", out)
		}
		out = s.keys("list", "--domain", "ffmuc_welt", "--limit", "10")
		for _, k := range []string{k1, k2, k3} {
			if !strings.Contains(out, k) {
				t.Errorf("keys list lacks %s:\n%s", k, out)
			}
		}
	})

	step(t, "revoked key leaves every gateway within seconds", func() {
		start := time.Now()
		out := s.keys("revoke", k1)
		if !strings.Contains(out, k1+" revoked in ffmuc_welt") || !strings.Contains(out, "blocklist") {
			t.Errorf("keys revoke said:\n%s", out)
		}
		for _, g := range s.gws {
			s.waitGone(g, []string{k1}, revokeWithin)
			s.waitPeers(g, []string{k2, k3}, time.Second)
		}
		t.Logf("revoked key gone from both gateways after %v", time.Since(start).Round(time.Millisecond))
		if out := s.keys("show", k1); !strings.Contains(out, "not stored") || !strings.Contains(out, "revoked") {
			t.Errorf("keys show after the revocation:\n%s", out)
		}
	})

	step(t, "gateway down during the revocation removes the key after kill -9 and start", func() {
		s.stopWorker(gw1, syscall.SIGKILL)
		s.keys("revoke", k2, "--domain", "ffmuc_welt")
		s.waitGone(gw2, []string{k2}, revokeWithin)
		if wg, _, _, _ := s.peers(gw1); !wg[k2] {
			t.Fatal("gw1 lost the peer without its worker")
		}
		s.startWorker(gw1)
		s.waitGone(gw1, []string{k1, k2}, 20*time.Second)
		s.waitPeers(gw1, []string{k3}, time.Second)
		s.checkConsistent(gw1)
	})

	step(t, "blocklist edit revokes the stored key on the gateways", func() {
		testenv.ReplaceFile(t, blocklist, "- "+k3+": stolen router\n")
		for _, g := range s.gws {
			s.waitGone(g, []string{k3}, 20*time.Second)
		}
		if code, _, _ := s.post("v1", k3); code != 400 {
			t.Errorf("blocked key registered again: %d", code)
		}
	})

	step(t, "broker restart and a replay bring no revoked key back", func() {
		s.restartBroker()
		// gw1 misses k4 live, so that it arriving proves the replay after the restart was applied.
		s.stopWorker(gw1, syscall.SIGKILL)
		k4 := testenv.NewKey(t).PublicKey().String()
		if code, body, err := s.post("v1", k4); err != nil || code != 200 {
			t.Fatalf("register: %d %s %v", code, body, err)
		}
		s.waitPeers(gw2, []string{k4}, 10*time.Second)
		s.startWorker(gw1)
		s.waitPeers(gw1, []string{k4}, 20*time.Second)
		for _, g := range s.gws {
			wg, routes, fdb, _ := s.peers(g)
			for _, k := range []string{k1, k2, k3} {
				if wg[k] || routes[k] || fdb[k] {
					t.Errorf("%s has revoked key %s back", g.name, k)
				}
			}
		}
	})

	step(t, "registering again after a revocation is allowed", func() {
		if code, body, err := s.post("v1", k1); err != nil || code != 200 {
			t.Fatalf("register again: %d %s %v", code, body, err)
		}
		for _, g := range []*gateway{gw1, gw2} {
			s.waitPeers(g, []string{k1}, 10*time.Second)
		}
	})
}
