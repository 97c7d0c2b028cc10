package mqttd

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"

	"github.com/freifunkMUC/wgkex-go/internal/mqttclient"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

func TestWorkerRights(t *testing.T) {
	id := &identity{name: "gw-a"}
	id.workerRights([]string{welt})
	for topic, want := range map[string]bool{
		"wireguard-metrics/ffmuc_welt/gw-a/connected_peers": true,
		"wireguard-worker/gw-a/status":                      true,
		"wireguard-worker/gw-a/ffmuc_welt/data":             true,
		"wgkex/replay/gw-a/request":                         true,
		"wireguard-worker/gw-b/status":                      false,
		"wireguard-metrics/ffmuc_nord/gw-a/connected_peers": false,
		"wireguard/ffmuc_welt/all":                          false,
		"wgkex/replay/gw-a/keys":                            false,
		"wgkex/revoke/ffmuc_welt":                           false, // only the broker revokes
	} {
		if got := id.canPublish(topic); got != want {
			t.Errorf("publish %s: %v, want %v", topic, got, want)
		}
	}
	for filter, want := range map[string]bool{
		"wireguard/ffmuc_welt/+":   true,
		"wireguard/ffmuc_welt/all": true,
		"wgkex/replay/gw-a/keys":   true,
		"wireguard/ffmuc_welt/#":   false,
		"wireguard/+/+":            false,
		"wgkex/replay/+/keys":      false,
		"#":                        false,
		"wireguard-worker/#":       false,
		"wgkex/revoke/ffmuc_welt":  true, // its domains' revocations
		"wgkex/revoke/ffmuc_nord":  false,
		"wgkex/revoke/+":           false,
		"wgkex/#":                  false,
	} {
		if got := id.canSubscribe(filter); got != want {
			t.Errorf("subscribe %s: %v, want %v", filter, got, want)
		}
	}
	if !id.canRead("wgkex/revoke/ffmuc_welt") || id.canRead("wgkex/revoke/ffmuc_nord") {
		t.Error("a worker reads the revocations of its domains only")
	}
	mon := &identity{name: "grafana", monitor: true}
	if mon.canRead("wgkex/revoke/ffmuc_welt") || mon.canPublish("wgkex/revoke/ffmuc_welt") {
		t.Error("a monitor may read or publish revocations")
	}
}

// refMatches is the MQTT matching rule written level by level, the model mqttclient.Match is checked against.
func refMatches(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	f, tp := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, l := range f {
		if l == "#" {
			return i == len(f)-1
		}
		if i >= len(tp) || l != "+" && l != tp[i] {
			return false
		}
	}
	return len(f) == len(tp)
}

func FuzzACL(f *testing.F) {
	f.Add("gw-a", "wireguard-worker/gw-a/status")
	f.Add("gw-a", "wgkex/replay/+/keys")
	f.Add("gw-a", "wireguard/ffmuc_welt/+")
	f.Add("a", "a/#")
	f.Add("+", "wireguard-worker/+/status")
	f.Fuzz(func(t *testing.T, name, s string) {
		if !hasWildcard(s) && !mqttclient.Match(s, s) {
			t.Fatalf("topic %q does not match itself", s)
		}
		for _, topic := range []string{s, "wgkex/replay/" + name + "/keys", "a/b", "wireguard/ffmuc_welt/all"} {
			if got, want := mqttclient.Match(s, topic), refMatches(s, topic); got != want {
				t.Fatalf("Match(%q, %q) = %v, model says %v", s, topic, got, want)
			}
		}
		if wire.ValidateTopicLevel(name) != nil {
			return
		}
		id := &identity{name: name}
		id.workerRights([]string{welt})
		if id.canPublish(s) && (hasWildcard(s) || !strings.Contains("/"+s+"/", "/"+name+"/")) {
			t.Fatalf("%s may publish %q", name, s)
		}
		if !hasWildcard(s) {
			want := false
			for f := range id.sub {
				want = want || mqttclient.Match(f, s)
			}
			if id.covered(s) != want {
				t.Fatalf("covered(%q) = %v, the filters say %v", s, !want, want)
			}
		}
		other := "x" + name
		if id.canSubscribe(s) && (mqttclient.Match(s, wire.ReplayKeysTopic(other)) || mqttclient.Match(s, wire.StatusTopic(other))) {
			t.Fatalf("%s may subscribe to %q, which reads %s's traffic", name, s, other)
		}
		mon := &identity{name: name, monitor: true}
		if mon.canRead(s) && (strings.HasPrefix(s, "wgkex/") || strings.HasPrefix(s, "wireguard/")) {
			t.Fatalf("a monitor may read %q", s)
		}
	})
}

func FuzzCertNames(f *testing.F) {
	f.Add("gw-a", "gw-a.example")
	f.Add("", "gw/a")
	f.Add("gw#", "+")
	f.Fuzz(func(t *testing.T, cn, dns string) {
		names := certNames(&x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: []string{dns, cn}})
		for _, n := range names {
			if wire.ValidateTopicLevel(n) != nil || n != cn && n != dns {
				t.Fatalf("name %q from CN %q, SAN %q", n, cn, dns)
			}
		}
	})
}

// BenchmarkACL is the cost the topic rules add to a key delivered to a worker and to a worker's publish.
func BenchmarkACL(b *testing.B) {
	id := &identity{name: "gw04.in.ffmuc.net"}
	id.workerRights([]string{"ffmuc_muc_cty", "ffmuc_muc_nord", "ffmuc_muc_ost", "ffmuc_muc_sued", "ffmuc_welt"})
	b.Run("deliver", func(b *testing.B) {
		for b.Loop() {
			if !id.canRead("wireguard/ffmuc_welt/all") {
				b.Fatal("refused")
			}
		}
	})
	b.Run("publish", func(b *testing.B) {
		for b.Loop() {
			if !id.canPublish("wireguard-metrics/ffmuc_welt/gw04.in.ffmuc.net/connected_peers") {
				b.Fatal("refused")
			}
		}
	})
}
