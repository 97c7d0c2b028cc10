package mqttclient

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

// Match reports whether topic matches filter (MQTT 5 §4.7: + is one level, # the rest, and only as the last
// level). Topics starting with $ match no filter that starts with a wildcard. It does not check the filter, nor
// take off a $share/<group>/ prefix: that is what a Client does with the filters it subscribes to. The embedded
// server's access rules are checked against it.
func Match(filter, topic string) bool {
	return match(strings.Split(filter, "/"), strings.Split(topic, "/"))
}

// match is Match on filter and topic levels.
func match(filter, topic []string) bool {
	if len(topic) > 0 && strings.HasPrefix(topic[0], "$") && len(filter) > 0 && (filter[0] == "+" || filter[0] == "#") {
		return false
	}
	for i, f := range filter {
		if f == "#" {
			return i == len(filter)-1
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
