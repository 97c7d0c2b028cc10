package kernel

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// The pure half of the package: requests built from values, tested with literal values.

// peerConfig builds one device configuration adding (or removing) every key with its link-local /128 added to its
// allowed IPs (not replacing them: an operator may have given a peer, a supernode say, more; the reference adds
// too), no endpoint and no keepalive. Keys that do not parse are returned as errors and left out.
func peerConfig(keys []string, remove bool) (wgtypes.Config, []error) {
	var cfg wgtypes.Config
	var errs []error
	for _, k := range keys {
		pk, err := wgtypes.ParseKey(k)
		if err != nil {
			errs = append(errs, &dataplane.PeerError{Key: k, Step: "peer", Err: err})
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: pk, Remove: remove}
		if !remove {
			pc.AllowedIPs = []net.IPNet{ipNet(dataplane.AllowedIP(k))}
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	return cfg, errs
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// peerRoute is `ip -6 route replace <addr>/128 dev <wg> proto static`: the reference's protocol, which operators
// filter on (routing daemons, `ip route show proto static`).
func peerRoute(wgIndex int, key string) *netlink.Route {
	dst := ipNet(dataplane.AllowedIP(key))
	return &netlink.Route{LinkIndex: wgIndex, Dst: &dst, Family: unix.AF_INET6, Scope: netlink.SCOPE_LINK,
		Protocol: unix.RTPROT_STATIC}
}

// forwarding picks the peer entries out of a link's routes and FDB entries: /128 routes, and FDB entries with
// the all-zeros MAC and a destination.
func forwarding(routes []netlink.Route, neighs []netlink.Neigh) dataplane.Forwarding {
	var fw dataplane.Forwarding
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if ones, bits := r.Dst.Mask.Size(); ones != 128 || bits != 128 {
			continue
		}
		if a, ok := netip.AddrFromSlice(r.Dst.IP); ok {
			fw.Routes = append(fw.Routes, a)
		}
	}
	zero := make(net.HardwareAddr, 6)
	for _, n := range neighs {
		if n.IP == nil || !bytes.Equal(n.HardwareAddr, zero) {
			continue
		}
		if a, ok := netip.AddrFromSlice(n.IP); ok {
			fw.FDB = append(fw.FDB, a.Unmap())
		}
	}
	return fw
}

// fdbRequest builds `bridge fdb append|del 00:00:00:00:00:00 dev <vx> dst <addr> via <wg>`. netlink.Neigh has no
// field for "via" (NDA_IFINDEX); without it a delete is answered with success and deletes nothing.
func fdbRequest(req *nl.NetlinkRequest, vxIndex, wgIndex int, dst netip.Addr) *nl.NetlinkRequest {
	req.AddData(&netlink.Ndmsg{
		Family: unix.AF_BRIDGE,
		Index:  uint32(vxIndex),
		State:  unix.NUD_NOARP | unix.NUD_PERMANENT,
		Flags:  netlink.NTF_SELF,
	})
	req.AddData(nl.NewRtAttr(unix.NDA_LLADDR, make([]byte, 6)))
	a := dst.As16()
	req.AddData(nl.NewRtAttr(unix.NDA_DST, a[:]))
	req.AddData(nl.NewRtAttr(unix.NDA_IFINDEX, nl.Uint32Attr(uint32(wgIndex))))
	return req
}

// touchRequest builds a link change of ifindex index without attributes: `ip link set <dev>` with nothing to set.
// The kernel asks for CAP_NET_ADMIN as for any change and changes nothing.
func touchRequest(req *nl.NetlinkRequest, index int) *nl.NetlinkRequest {
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	return req
}

// fdbFlags are the netlink flags of an append (add) or a delete.
func fdbFlags(add bool) (proto, flags int) {
	if add {
		return unix.RTM_NEWNEIGH, unix.NLM_F_CREATE | unix.NLM_F_APPEND | unix.NLM_F_ACK
	}
	return unix.RTM_DELNEIGH, unix.NLM_F_ACK
}

// linkAddress picks the address reported to the broker: the VXLAN link's local address when the WireGuard link
// has it (that is the address BATMAN talks over, and a userspace device may carry an automatic link-local
// besides), else the first IPv6 link-local address, else the first one.
func linkAddress(addrs []netlink.Addr, vxLocal net.IP) (string, error) {
	for _, a := range addrs {
		if vxLocal != nil && a.IP.Equal(vxLocal) {
			return a.IP.String(), nil
		}
	}
	for _, a := range addrs {
		if a.IP.To4() == nil && a.IP.IsLinkLocalUnicast() {
			return a.IP.String(), nil
		}
	}
	if len(addrs) > 0 {
		return addrs[0].IP.String(), nil
	}
	return "", fmt.Errorf("no address")
}

// bisect applies peers with one call of configure; when that fails it splits them in halves and tries again, so
// that one peer the device refuses fails alone and not its whole chunk. The refused peers go into failed.
func bisect(peers []wgtypes.PeerConfig, configure func([]wgtypes.PeerConfig) error, failed map[string]error) {
	if len(peers) == 0 {
		return
	}
	err := configure(peers)
	if err == nil {
		return
	}
	if len(peers) == 1 {
		failed[peers[0].PublicKey.String()] = err
		return
	}
	bisect(peers[:len(peers)/2], configure, failed)
	bisect(peers[len(peers)/2:], configure, failed)
}
