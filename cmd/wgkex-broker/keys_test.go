package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseKeysArgs(t *testing.T) {
	const k = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	for _, tc := range []struct {
		args []string
		want keysArgs
		ok   bool
	}{
		{[]string{"show", k}, keysArgs{action: "show", key: k, limit: 100}, true},
		{[]string{"show", k, "--config", "/etc/w.yaml"}, keysArgs{action: "show", key: k, limit: 100, config: []string{"--config", "/etc/w.yaml"}}, true},
		{[]string{"revoke", "--domain", "ffmuc_welt", k}, keysArgs{action: "revoke", key: k, domain: "ffmuc_welt", limit: 100}, true},
		{[]string{"revoke", k, "--domain=ffmuc_welt"}, keysArgs{action: "revoke", key: k, domain: "ffmuc_welt", limit: 100}, true},
		{[]string{"list", "--limit", "5", "--domain", "d"}, keysArgs{action: "list", domain: "d", limit: 5}, true},
		{[]string{"list"}, keysArgs{action: "list", limit: 100}, true},
		{nil, keysArgs{}, false},
		{[]string{"show"}, keysArgs{}, false},
		{[]string{"show", k, k}, keysArgs{}, false},
		{[]string{"show", k, "--domain", "d"}, keysArgs{}, false},
		{[]string{"list", k}, keysArgs{}, false},
		{[]string{"list", "--limit", "0"}, keysArgs{}, false},
		{[]string{"list", "--limit"}, keysArgs{}, false},
		{[]string{"revoke", k, "--force", "x"}, keysArgs{}, false},
		{[]string{"delete", k}, keysArgs{}, false},
	} {
		got, err := parseKeysArgs(tc.args)
		if (err == nil) != tc.ok {
			t.Errorf("parseKeysArgs(%q) err = %v, want ok %v", tc.args, err, tc.ok)
			continue
		}
		if tc.ok {
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(keysArgs{})); diff != "" {
				t.Errorf("parseKeysArgs(%q) (-want +got):\n%s", tc.args, diff)
			}
		}
	}
}
