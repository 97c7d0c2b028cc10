package mqttclient

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"wireguard/+/all", "wireguard/ffmuc_welt/all", true},
		{"wireguard/+/all", "wireguard/ffmuc_welt/gw1", false},
		{"wireguard/+/all", "wireguard/ffmuc_welt/all/x", false},
		{"wireguard/+/all", "wireguard//all", true},
		{"wireguard-metrics/#", "wireguard-metrics/d/w/connected_peers", true},
		{"wireguard-metrics/#", "wireguard-metrics", true},
		{"wireguard-metrics/#", "wireguard-metricsX/a", false},
		{"$share/wgkex/wgkex/replay/+/request", "wgkex/replay/gw1/request", true},
		{"$share/wgkex/wgkex/replay/+/request", "wgkex/replay/gw1/keys", false},
		{"#", "$SYS/broker/uptime", false},
		{"+/broker/uptime", "$SYS/broker/uptime", false},
		{"$SYS/#", "$SYS/broker/uptime", true},
		{"a/b", "a", false},
		{"a", "a/b", false},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"+/+", "a/b", true},
		{"+", "", true},
		{"a/b", "a/b", true},
		{"a/b", "a/b/", false},
		{"a//b", "a//b", true},
		{"+/b", "$SYS/b", false},
		{"wireguard/ffmuc_welt/+", "wireguard/ffmuc_welt/all", true},
	} {
		p, err := parseFilter(tc.filter)
		if err != nil {
			t.Fatalf("parseFilter(%q): %v", tc.filter, err)
		}
		if got := match(p, strings.Split(tc.topic, "/")); got != tc.want {
			t.Errorf("match(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
		if got := Match(tc.filter, tc.topic); got != tc.want && !strings.HasPrefix(tc.filter, "$share/") {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestParseFilterRefuses(t *testing.T) {
	for _, f := range []string{"", "a/#/b", "a/b#", "a/+b", "$share/", "$share/g", "$share//a", "$share/g+/a", "$share/g/"} {
		if _, err := parseFilter(f); err == nil {
			t.Errorf("parseFilter(%q) accepted", f)
		}
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("wireguard/+/all", "wireguard/d/all")
	f.Fuzz(func(t *testing.T, filter, topic string) {
		p, err := parseFilter(filter)
		if err != nil {
			return
		}
		levels := strings.Split(topic, "/")
		got := match(p, levels)
		// A filter without wildcards matches exactly its own topic.
		if !strings.ContainsAny(filter, "+#") && !strings.HasPrefix(filter, "$share/") && got != (filter == topic) {
			t.Fatalf("match(%q, %q) = %v", filter, topic, got)
		}
	})
}
