// Package dataplane declares what the worker needs of a gateway's kernel: WireGuard peers, their /128 routes and
// their VXLAN FDB entries, applied idempotently. The kernel package implements it with wgctrl and netlink; Fake
// implements it in memory for the worker's logic tests.
package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// Link names the interfaces of one domain: the WireGuard device wg-{name} and the VXLAN link vx-{name} on it.
type Link struct {
	WG string
	VX string
}

// LinkFor returns the interfaces of a stripped domain name.
func LinkFor(stripped string) Link {
	return Link{WG: wire.WGInterface(stripped), VX: wire.VXInterface(stripped)}
}

// Device is what the worker reads of a domain's WireGuard device.
type Device struct {
	// Index is the WireGuard link's interface index; an interface deleted and created again has a new one.
	Index      int
	ListenPort int
	PublicKey  string
	// LinkAddress is the device's IPv6 link-local address (else its first address), without prefix length.
	LinkAddress string
	Peers       []Peer
}

// Peer is one WireGuard peer.
type Peer struct {
	PublicKey string
	// LastHandshake is zero if the peer never completed a handshake.
	LastHandshake time.Time
}

// Dataplane applies peers to a gateway.
type Dataplane interface {
	// Device reads the WireGuard device of link and its link address.
	Device(link Link) (Device, error)
	// Interface reads the index and link address of link.WG (Device's Index and LinkAddress, nothing else): a
	// cheap look, without listing the peers, for whether the interface was created again or readdressed.
	Interface(link Link) (Device, error)
	// Forwarding reads the /128 routes via link.WG and the FDB destinations on link.VX.
	Forwarding(link Link) (Forwarding, error)
	// AddPeers makes every key a peer of link.WG with its link-local /128 among its allowed IPs (added to any an
	// operator set, as the reference does; no endpoint, no keepalive), routes that /128 via link.WG with
	// protocol static and appends the FDB entry 00:00:00:00:00:00 dst <addr> via
	// link.WG on link.VX. It is idempotent. Keys are applied together; per-key failures come back joined, each
	// a *PeerError, and do not stop the other keys.
	AddPeers(link Link, keys []string) error
	// RemovePeer removes the FDB entry, then the route, then the peer, so that a partial failure leaves the peer
	// to be found and finished by the next sweep. It is idempotent: what is already absent counts as removed.
	RemovePeer(link Link, key string) error
	// Probe checks that the worker can serve link: both interfaces exist, link.WG is a WireGuard device, and the
	// dataplane may change them. It does so with changes that change nothing (an empty WireGuard configuration,
	// a link request without attributes), so that a missing permission shows as it would on a real change. It
	// is idempotent. A missing interface wraps ErrNoInterface, a refused change ErrNotPermitted.
	Probe(link Link) error
}

// ErrNoInterface is Probe's answer for a domain interface that does not exist.
var ErrNoInterface = errors.New("no such interface")

// ErrNotPermitted is Probe's answer when the kernel refuses changes to a domain's interfaces: the worker runs
// without CAP_NET_ADMIN.
var ErrNotPermitted = errors.New("operation not permitted: run with CAP_NET_ADMIN")

// Forwarding is what the kernel holds for a domain's peers besides WireGuard: the destinations of the /128
// routes via the WireGuard link and of the FDB entries on the VXLAN link.
type Forwarding struct {
	Routes []netip.Addr
	FDB    []netip.Addr
}

// PeerError is the failure of one step for one key.
type PeerError struct {
	Key  string
	Step string // "peer", "route" or "fdb"
	Err  error
}

func (e *PeerError) Error() string { return fmt.Sprintf("%s %s: %v", e.Step, e.Key, e.Err) }
func (e *PeerError) Unwrap() error { return e.Err }

// FailedKeys returns the keys named by the *PeerErrors in err (as AddPeers joins them), without duplicates.
func FailedKeys(err error) []string {
	var out []string
	seen := map[string]bool{}
	var walk func(error)
	walk = func(err error) {
		var pe *PeerError
		if errors.As(err, &pe) && !seen[pe.Key] {
			seen[pe.Key] = true
			out = append(out, pe.Key)
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

// AllowedIP is the peer's allowed IP, route destination and FDB dst: its link-local /128.
func AllowedIP(key string) netip.Prefix { return wire.LinkLocalPrefix(key) }
