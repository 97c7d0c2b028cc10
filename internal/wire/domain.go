package wire

import (
	"fmt"
	"strings"
)

// MaxStrippedLen is the longest stripped domain name: interface names (IFNAMSIZ-1 = 15) carry a "wg-" or "vx-".
const MaxStrippedLen = 12

// StripDomain removes from domain the first prefix (in the given order) that domain starts with, giving the name
// used for the interfaces wg-{name} and vx-{name}. Unlike the reference, which splits at the first prefix found
// anywhere in the domain, the prefix must stand at the start.
func StripDomain(domain string, prefixes []string) (string, error) {
	for _, p := range prefixes {
		if p != "" && strings.HasPrefix(domain, p) {
			name := domain[len(p):]
			if err := validateStripped(name); err != nil {
				return "", fmt.Errorf("domain %q: %w", domain, err)
			}
			return name, nil
		}
	}
	return "", fmt.Errorf("domain %q starts with none of the prefixes %q", domain, prefixes)
}

func validateStripped(name string) error {
	if name == "" {
		return fmt.Errorf("nothing left after the prefix")
	}
	if len(name) > MaxStrippedLen {
		return fmt.Errorf("stripped name %q is %d characters, at most %d fit an interface name", name, len(name), MaxStrippedLen)
	}
	for _, r := range name {
		if r <= ' ' || r == '/' || r == ':' || r == '%' || r >= 0x7f || r == '+' || r == '#' {
			return fmt.Errorf("stripped name %q contains %q, not allowed in an interface name", name, r)
		}
	}
	return nil
}

// WGInterface is the WireGuard interface of a stripped domain name.
func WGInterface(stripped string) string { return "wg-" + stripped }

// VXInterface is the VXLAN interface of a stripped domain name.
func VXInterface(stripped string) string { return "vx-" + stripped }
