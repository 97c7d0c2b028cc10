package kernel

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var welt = dataplane.LinkFor("welt")

const (
	keyA = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	keyB = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
	keyC = "PcKkakZcTEx3LKh+G06Opb8/esg08aWK33A5/Ff1YXE="
)

func TestPeerConfig(t *testing.T) {
	cfg, errs := peerConfig([]string{keyA, "bogus"}, false)
	if len(errs) != 1 || dataplane.FailedKeys(errors.Join(errs...))[0] != "bogus" {
		t.Errorf("errors %v", errs)
	}
	if len(cfg.Peers) != 1 {
		t.Fatalf("peers %+v", cfg.Peers)
	}
	p := cfg.Peers[0]
	got := []any{p.PublicKey.String(), p.ReplaceAllowedIPs, p.Remove, p.Endpoint == nil, p.PersistentKeepaliveInterval == nil, p.AllowedIPs[0].String()}
	want := []any{keyA, false, false, true, true, "fe80::2a6:8fff:fe21:5465/128"} // allowed IPs added, not replaced
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("peer config (-want +got):\n%s", diff)
	}
	cfg, _ = peerConfig([]string{keyA}, true)
	if !cfg.Peers[0].Remove || len(cfg.Peers[0].AllowedIPs) != 0 {
		t.Errorf("remove config %+v", cfg.Peers[0])
	}
}

func TestPeerRoute(t *testing.T) {
	r := peerRoute(7, "public_key")
	if r.LinkIndex != 7 || r.Dst.String() != "fe80::282:6eff:fe9d:ecd3/128" || r.Family != unix.AF_INET6 || r.Protocol != unix.RTPROT_STATIC {
		t.Errorf("route %+v", r)
	}
}

func TestFDBRequest(t *testing.T) {
	proto, flags := fdbFlags(true)
	req := fdbRequest(nl.NewNetlinkRequest(proto, flags), 5, 9, wire.LinkLocal("public_key"))
	b := req.Serialize()
	if req.Type != unix.RTM_NEWNEIGH || req.Flags&unix.NLM_F_APPEND == 0 || req.Flags&unix.NLM_F_CREATE == 0 {
		t.Errorf("header %+v", req.NlMsghdr)
	}
	// ndmsg (12 bytes) after the 16-byte header: family AF_BRIDGE, ifindex 5, state NOARP|PERMANENT, flags SELF.
	nd := b[16:28]
	if nd[0] != unix.AF_BRIDGE || nl.NativeEndian().Uint32(nd[4:8]) != 5 ||
		nl.NativeEndian().Uint16(nd[8:10]) != unix.NUD_NOARP|unix.NUD_PERMANENT || nd[10] != netlink.NTF_SELF {
		t.Errorf("ndmsg % x", nd)
	}
	attrs, err := nl.ParseRouteAttr(b[28:])
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint16]string{}
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.NDA_DST:
			got[a.Attr.Type] = net.IP(a.Value).String()
		case unix.NDA_LLADDR:
			got[a.Attr.Type] = net.HardwareAddr(a.Value).String()
		case unix.NDA_IFINDEX:
			got[a.Attr.Type] = fmt.Sprint(nl.NativeEndian().Uint32(a.Value))
		default:
			got[a.Attr.Type] = fmt.Sprintf("unexpected % x", a.Value)
		}
	}
	want := map[uint16]string{unix.NDA_LLADDR: "00:00:00:00:00:00", unix.NDA_DST: "fe80::282:6eff:fe9d:ecd3", unix.NDA_IFINDEX: "9"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("attributes (-want +got):\n%s", diff)
	}
	if proto, flags := fdbFlags(false); proto != unix.RTM_DELNEIGH || flags&unix.NLM_F_CREATE != 0 {
		t.Errorf("delete flags %d %x", proto, flags)
	}
}

// TestBisect: one peer the device refuses fails alone; the others of its chunk are configured.
func TestBisect(t *testing.T) {
	cfg, _ := peerConfig([]string{keyA, keyB, keyC, "4WAyZBpHcyRE5+L4ApV+jjWgj4q1o3CrCQ3NjclXfV4="}, false)
	var configured []string
	calls := 0
	failed := map[string]error{}
	bisect(cfg.Peers, func(p []wgtypes.PeerConfig) error {
		calls++
		for _, pc := range p {
			if pc.PublicKey.String() == keyB {
				return errors.New("refused")
			}
		}
		for _, pc := range p {
			configured = append(configured, pc.PublicKey.String())
		}
		return nil
	}, failed)
	sort.Strings(configured)
	want := []string{"4WAyZBpHcyRE5+L4ApV+jjWgj4q1o3CrCQ3NjclXfV4=", keyC, keyA}
	sort.Strings(want)
	if diff := cmp.Diff(want, configured); diff != "" {
		t.Errorf("configured (-want +got):\n%s", diff)
	}
	if len(failed) != 1 || failed[keyB] == nil {
		t.Errorf("failed %v, want only %s", failed, keyB)
	}
	if calls != 5 { // [A B C D] → [A B] → [A] [B]; [C D]
		t.Errorf("%d calls, want 5", calls)
	}
}

func TestForwarding(t *testing.T) {
	p := func(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }
	routes := []netlink.Route{{Dst: p("fe80::2a6:8fff:fe21:5465/128")}, {Dst: p("fe80::/64")}, {}, {Dst: p("10.0.0.1/32")}}
	zero := make(net.HardwareAddr, 6)
	neighs := []netlink.Neigh{
		{HardwareAddr: zero, IP: net.ParseIP("fe80::27c:16ff:fec0:6c74")},
		{HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 1}, IP: net.ParseIP("fe80::1")}, // a learned entry
		{HardwareAddr: zero}, // no destination
	}
	fw := forwarding(routes, neighs)
	got := fmt.Sprint(fw.Routes, fw.FDB)
	if want := "[fe80::2a6:8fff:fe21:5465] [fe80::27c:16ff:fec0:6c74]"; got != want {
		t.Errorf("forwarding = %s, want %s", got, want)
	}
}

func TestLinkAddress(t *testing.T) {
	a := func(s string) netlink.Addr { return netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(s)}} }
	for _, tt := range []struct {
		addrs []netlink.Addr
		vx    net.IP
		want  string
	}{
		{[]netlink.Addr{a("10.0.0.1"), a("2001:db8::1"), a("fe80::1")}, nil, "fe80::1"},
		{[]netlink.Addr{a("fe80::abcd:1"), a("fe80::1")}, net.ParseIP("fe80::1"), "fe80::1"},
		{[]netlink.Addr{a("fe80::abcd:1"), a("fe80::1")}, net.ParseIP("fe80::9"), "fe80::abcd:1"},
		{[]netlink.Addr{a("10.0.0.1"), a("2001:db8::1")}, nil, "10.0.0.1"},
	} {
		if got, err := linkAddress(tt.addrs, tt.vx); err != nil || got != tt.want {
			t.Errorf("linkAddress = %q, %v; want %q", got, err, tt.want)
		}
	}
	if _, err := linkAddress(nil, nil); err == nil {
		t.Error("no addresses: want error")
	}
}

// gateway makes a namespace with a userspace wg-welt (link address fe80::1) and vx-welt on top, and a Dataplane
// working in it.
func gateway(t *testing.T) (*testenv.NS, *Dataplane) {
	t.Helper()
	ns := testenv.NewNS(t)
	ns.Gateway(t, "welt", testenv.NewKey(t), 51820, "fe80::1")
	dp, err := OpenAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return ns, dp
}

// state reads back what the kernel holds: peers with allowed IPs (wg show), /128 routes via wg-welt (ip -6 route)
// and FDB entries on vx-welt (bridge fdb show), normalised into sorted lines.
func state(t *testing.T, ns *testenv.NS) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(ns.Run(t, "wg", "show", "wg-welt", "allowed-ips")), "\n") {
		if l != "" {
			out = append(out, "peer "+strings.Join(strings.Fields(l), " "))
		}
	}
	for _, l := range strings.Split(ns.Run(t, "ip", "-6", "route", "show", "dev", "wg-welt"), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] != "fe80::/64" {
			out = append(out, "route "+strings.Join(f, " "))
		}
	}
	for _, l := range strings.Split(ns.Run(t, "bridge", "fdb", "show", "dev", "vx-welt"), "\n") {
		if strings.Contains(l, " dst ") {
			out = append(out, "fdb "+strings.Join(strings.Fields(l), " "))
		}
	}
	sort.Strings(out)
	return out
}

func TestAddRemovePeers(t *testing.T) {
	testenv.Tool(t, "wg")
	testenv.Tool(t, "bridge")
	ns, dp := gateway(t)
	want := []string{
		"fdb 00:00:00:00:00:00 dst fe80::23b:d2ff:fe95:967f via wg-welt self permanent",
		"fdb 00:00:00:00:00:00 dst fe80::27c:16ff:fec0:6c74 via wg-welt self permanent",
		"fdb 00:00:00:00:00:00 dst fe80::2a6:8fff:fe21:5465 via wg-welt self permanent",
		"peer " + keyC + " fe80::23b:d2ff:fe95:967f/128",
		"peer " + keyB + " fe80::27c:16ff:fec0:6c74/128",
		"peer " + keyA + " fe80::2a6:8fff:fe21:5465/128",
		"route fe80::23b:d2ff:fe95:967f proto static metric 1024 pref medium",
		"route fe80::27c:16ff:fec0:6c74 proto static metric 1024 pref medium",
		"route fe80::2a6:8fff:fe21:5465 proto static metric 1024 pref medium",
	}
	sort.Strings(want)
	for i := 0; i < 2; i++ { // the second time changes nothing: idempotent
		if err := dp.AddPeers(welt, []string{keyA, keyB, keyC}); err != nil {
			t.Fatalf("AddPeers #%d: %v", i+1, err)
		}
		if diff := cmp.Diff(want, state(t, ns)); diff != "" {
			t.Fatalf("after AddPeers #%d (-want +got):\n%s", i+1, diff)
		}
	}
	fw, err := dp.Forwarding(welt)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(len(fw.Routes), len(fw.FDB)); got != "3 3" {
		t.Errorf("Forwarding: %d routes, %d fdb entries, want 3 3", len(fw.Routes), len(fw.FDB))
	}
	dev, err := dp.Device(welt)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Index == 0 || dev.ListenPort != 51820 || dev.LinkAddress != "fe80::1" || len(dev.Peers) != 3 || !dev.Peers[0].LastHandshake.IsZero() {
		t.Errorf("Device = %+v", dev)
	}
	for i := 0; i < 2; i++ {
		if err := dp.RemovePeer(welt, keyB); err != nil {
			t.Fatalf("RemovePeer #%d: %v", i+1, err)
		}
	}
	var rest []string
	for _, l := range want {
		if !strings.Contains(l, keyB) && !strings.Contains(l, "27c:16ff:fec0:6c74") {
			rest = append(rest, l)
		}
	}
	if diff := cmp.Diff(rest, state(t, ns)); diff != "" {
		t.Errorf("after RemovePeer (-want +got):\n%s", diff)
	}
}

// TestPartialRemoval: a peer whose FDB entry and route are already gone (a sweep that failed half-way) is
// removed by the next RemovePeer.
func TestPartialRemoval(t *testing.T) {
	testenv.Tool(t, "bridge")
	ns, dp := gateway(t)
	if err := dp.AddPeers(welt, []string{keyA}); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "bridge", "fdb", "del", "00:00:00:00:00:00", "dev", "vx-welt", "dst", "fe80::2a6:8fff:fe21:5465", "via", "wg-welt")
	ns.Run(t, "ip", "-6", "route", "del", "fe80::2a6:8fff:fe21:5465/128", "dev", "wg-welt")
	if err := dp.RemovePeer(welt, keyA); err != nil {
		t.Fatal(err)
	}
	if got := state(t, ns); len(got) != 0 {
		t.Errorf("left behind %q", got)
	}
}

// TestOperatorAllowedIPsKept: an operator gave an existing peer (a supernode, say) a second allowed IP; the
// worker applying that key again adds its /128 and leaves the operator's prefix in place.
func TestOperatorAllowedIPsKept(t *testing.T) {
	testenv.Tool(t, "wg")
	ns, dp := gateway(t)
	ns.Run(t, "wg", "set", "wg-welt", "peer", keyA, "allowed-ips", "fe80::2a6:8fff:fe21:5465/128,2001:db8:42::/48")
	if err := dp.AddPeers(welt, []string{keyA}); err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(ns.Run(t, "wg", "show", "wg-welt", "allowed-ips"))
	want := []string{keyA, "2001:db8:42::/48", "fe80::2a6:8fff:fe21:5465/128"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("allowed IPs (-want +got):\n%s", diff)
	}
}

func TestMissingInterfaces(t *testing.T) {
	_, dp := gateway(t)
	other := dataplane.LinkFor("nord")
	err := dp.AddPeers(other, []string{keyA, keyB})
	if diff := cmp.Diff([]string{keyA, keyB}, dataplane.FailedKeys(err)); diff != "" {
		t.Errorf("failed keys (-want +got):\n%s\n%v", diff, err)
	}
	if _, err := dp.Device(other); err == nil {
		t.Error("Device(wg-nord): want error")
	}
}

func TestTouchRequest(t *testing.T) {
	req := touchRequest(nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK), 7)
	b := req.Serialize()
	// ifinfomsg (16 bytes) after the 16-byte header, and nothing else: index 7, no flags and no change mask.
	if req.Type != unix.RTM_SETLINK || len(b) != 32 {
		t.Fatalf("header %+v, %d bytes", req.NlMsghdr, len(b))
	}
	ifi := b[16:32]
	if ifi[0] != unix.AF_UNSPEC || nl.NativeEndian().Uint32(ifi[4:8]) != 7 ||
		nl.NativeEndian().Uint32(ifi[8:12]) != 0 || nl.NativeEndian().Uint32(ifi[12:16]) != 0 {
		t.Errorf("ifinfomsg % x", ifi)
	}
}

// TestProbe: in a fresh namespace the probe names the missing WireGuard device, then the missing VXLAN link, an
// interface that is not WireGuard, and passes once both exist; it changes nothing on them.
func TestProbe(t *testing.T) {
	ns := testenv.NewNS(t)
	dp, err := OpenAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	link := dataplane.LinkFor("f15r")
	check := func(want string) {
		t.Helper()
		err := dp.Probe(link)
		if got := fmt.Sprint(err); got != want {
			t.Errorf("Probe = %s, want %s", got, want)
		}
		if want != "<nil>" && !strings.HasSuffix(want, "not a WireGuard device") && !errors.Is(err, dataplane.ErrNoInterface) {
			t.Errorf("%v is not ErrNoInterface", err)
		}
	}
	check("wg-f15r: no such interface")
	ns.Run(t, "ip", "link", "add", "wg-f15r", "type", "veth", "peer", "name", "f15r-peer")
	ns.Run(t, "ip", "link", "add", "vx-f15r", "type", "vxlan", "id", "4242", "dstport", "8472", "local", "fe80::1", "dev", "wg-f15r")
	check("wg-f15r: not a WireGuard device")
	ns.Run(t, "ip", "link", "del", "vx-f15r")
	ns.Run(t, "ip", "link", "del", "wg-f15r")
	ns.WireGuard(t, "wg-f15r", testenv.NewKey(t), 51820)
	check("vx-f15r: no such interface")
	ns.Run(t, "ip", "-6", "addr", "add", "fe80::1/64", "dev", "wg-f15r", "nodad")
	ns.Run(t, "ip", "link", "add", "vx-f15r", "type", "vxlan", "id", "4242", "dstport", "8472", "local", "fe80::1", "dev", "wg-f15r")
	before := ns.Run(t, "ip", "-d", "link", "show")
	check("<nil>")
	if after := ns.Run(t, "ip", "-d", "link", "show"); after != before {
		t.Errorf("the probe changed the links:\n%s\nthen\n%s", before, after)
	}
}
