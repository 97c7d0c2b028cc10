package mqttc

import (
	"fmt"
	"strings"
)

// parseFilter splits a subscription filter into its levels, without a leading $share/<group>/, and checks the
// wildcards: "+" stands alone in its level, "#" stands alone in the last one.
func parseFilter(filter string) ([]string, error) {
	f := filter
	if rest, ok := strings.CutPrefix(f, "$share/"); ok {
		group, tail, ok := strings.Cut(rest, "/")
		if !ok || group == "" || tail == "" || strings.ContainsAny(group, "+#") {
			return nil, fmt.Errorf("filter %q: malformed shared subscription", filter)
		}
		f = tail
	}
	if f == "" {
		return nil, fmt.Errorf("filter %q: empty", filter)
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return nil, fmt.Errorf("filter %q: # must be the whole last level", filter)
		}
		if strings.Contains(l, "+") && l != "+" {
			return nil, fmt.Errorf("filter %q: + must be a whole level", filter)
		}
	}
	return levels, nil
}

// match reports whether topic levels match filter levels (MQTT 5 §4.7). Topics starting with $ match no filter
// that starts with a wildcard.
func match(filter, topic []string) bool {
	if len(topic) > 0 && strings.HasPrefix(topic[0], "$") && len(filter) > 0 && (filter[0] == "+" || filter[0] == "#") {
		return false
	}
	for i, f := range filter {
		if f == "#" {
			return true
		}
		if i >= len(topic) {
			return false
		}
		if f != "+" && f != topic[i] {
			return false
		}
	}
	return len(filter) == len(topic)
}
