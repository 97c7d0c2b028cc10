package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// Dataplane applies peers to WireGuard, routes and FDB through wgctrl and netlink.
type Dataplane struct {
	mu      sync.Mutex // wgctrl.Client is not safe for concurrent use
	wg      *wgctrl.Client
	nlh     *netlink.Handle
	sockets map[int]*nl.SocketHandle // for raw requests in the handle's namespace; nil: the current one
	ns      *netns.NsHandle          // nil: the current namespace
}

var _ dataplane.Dataplane = (*Dataplane)(nil)

// Open connects to wgctrl and netlink in the current network namespace.
func Open() (*Dataplane, error) { return OpenAt(netns.None()) }

// OpenAt connects to wgctrl and netlink in the network namespace ns (tests run gateways in their own).
func OpenAt(ns netns.NsHandle) (*Dataplane, error) {
	d := &Dataplane{}
	var err error
	if !ns.IsOpen() {
		if d.wg, err = wgctrl.New(); err != nil {
			return nil, fmt.Errorf("open wgctrl: %w", err)
		}
		if d.nlh, err = netlink.NewHandle(); err != nil {
			d.wg.Close()
			return nil, fmt.Errorf("open netlink: %w", err)
		}
		return d, nil
	}
	d.ns = &ns
	if d.nlh, err = netlink.NewHandleAt(ns); err != nil {
		return nil, fmt.Errorf("open netlink in namespace: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		d.nlh.Close()
		return nil, fmt.Errorf("open netlink socket in namespace: %w", err)
	}
	d.sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}
	// wgctrl binds its generic netlink socket in the namespace of the thread that opens it.
	err = inNetns(ns, func() (err error) { d.wg, err = wgctrl.New(); return err })
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("open wgctrl in namespace: %w", err)
	}
	return d, nil
}

func inNetns(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		return err
	}
	defer netns.Set(orig)
	return fn()
}

// Listen opens a TCP listener in the dataplane's network namespace (for the health check on a link address).
func (d *Dataplane) Listen(addr string) (ln net.Listener, err error) {
	if d.ns == nil || !d.ns.IsOpen() {
		return net.Listen("tcp", addr)
	}
	err = inNetns(*d.ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err })
	return ln, err
}

// Close releases the sockets.
func (d *Dataplane) Close() error {
	var errs []error
	if d.wg != nil {
		errs = append(errs, d.wg.Close())
	}
	if d.nlh != nil {
		d.nlh.Close()
	}
	for _, s := range d.sockets {
		s.Close()
	}
	return errors.Join(errs...)
}

// Device implements dataplane.Dataplane.
func (d *Dataplane) Device(link dataplane.Link) (dataplane.Device, error) {
	d.mu.Lock()
	dev, err := d.wg.Device(link.WG)
	d.mu.Unlock()
	if err != nil {
		return dataplane.Device{}, fmt.Errorf("read wireguard device %s: %w", link.WG, err)
	}
	out, err := d.Interface(link)
	if err != nil {
		return dataplane.Device{}, err
	}
	out.ListenPort, out.PublicKey = dev.ListenPort, dev.PublicKey.String()
	out.Peers = make([]dataplane.Peer, 0, len(dev.Peers))
	for _, p := range dev.Peers {
		hs := p.LastHandshakeTime
		if hs.Unix() <= 0 {
			hs = time.Time{}
		}
		out.Peers = append(out.Peers, dataplane.Peer{PublicKey: p.PublicKey.String(), LastHandshake: hs})
	}
	return out, nil
}

// Interface implements dataplane.Dataplane.
func (d *Dataplane) Interface(link dataplane.Link) (dataplane.Device, error) {
	l, err := d.nlh.LinkByName(link.WG)
	if err != nil {
		return dataplane.Device{}, fmt.Errorf("find link %s: %w", link.WG, err)
	}
	addrs, err := d.nlh.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return dataplane.Device{}, fmt.Errorf("list addresses of %s: %w", link.WG, err)
	}
	var vxLocal net.IP
	if vx, err := d.nlh.LinkByName(link.VX); err == nil {
		if v, ok := vx.(*netlink.Vxlan); ok {
			vxLocal = v.SrcAddr
		}
	}
	la, err := linkAddress(addrs, vxLocal)
	if err != nil {
		return dataplane.Device{}, fmt.Errorf("link address of %s: %w", link.WG, err)
	}
	return dataplane.Device{Index: l.Attrs().Index, LinkAddress: la}, nil
}

// Forwarding implements dataplane.Dataplane.
func (d *Dataplane) Forwarding(link dataplane.Link) (dataplane.Forwarding, error) {
	wgIdx, vxIdx, err := d.indexes(link)
	if err != nil {
		return dataplane.Forwarding{}, err
	}
	routes, err := d.nlh.RouteListFiltered(unix.AF_INET6, &netlink.Route{LinkIndex: wgIdx}, netlink.RT_FILTER_OIF)
	if err != nil {
		return dataplane.Forwarding{}, fmt.Errorf("list routes via %s: %w", link.WG, err)
	}
	neighs, err := d.nlh.NeighList(vxIdx, unix.AF_BRIDGE)
	if err != nil {
		return dataplane.Forwarding{}, fmt.Errorf("list fdb entries on %s: %w", link.VX, err)
	}
	return forwarding(routes, neighs), nil
}

// indexes looks up the ifindexes of link's two interfaces.
func (d *Dataplane) indexes(link dataplane.Link) (wg, vx int, err error) {
	w, err := d.nlh.LinkByName(link.WG)
	if err != nil {
		return 0, 0, fmt.Errorf("find link %s: %w", link.WG, err)
	}
	v, err := d.nlh.LinkByName(link.VX)
	if err != nil {
		return 0, 0, fmt.Errorf("find link %s: %w", link.VX, err)
	}
	return w.Attrs().Index, v.Attrs().Index, nil
}

// addChunk is how many peers one wgctrl call adds. Chunks let the routes and FDB entries of one chunk be written
// while the next chunk's peers are configured: the two costs overlap instead of adding up.
const addChunk = 1024

// AddPeers implements dataplane.Dataplane: the peers in wgctrl calls of up to addChunk keys, each chunk's routes
// and FDB entries (one netlink request per key) right after its peers exist, pipelined with the next chunk.
func (d *Dataplane) AddPeers(link dataplane.Link, keys []string) error {
	cfg, errs := peerConfig(keys, false)
	wgIdx, vxIdx, err := d.indexes(link)
	if err != nil {
		for _, k := range keys {
			errs = append(errs, &dataplane.PeerError{Key: k, Step: "peer", Err: err})
		}
		return errors.Join(errs...)
	}
	type chunk struct {
		peers  []wgtypes.PeerConfig
		failed map[string]error // keys whose peer could not be configured
	}
	chunks := make(chan chunk, 1)
	go func() {
		defer close(chunks)
		for i := 0; i < len(cfg.Peers); i += addChunk {
			part := cfg.Peers[i:min(i+addChunk, len(cfg.Peers))]
			failed := map[string]error{}
			bisect(part, func(p []wgtypes.PeerConfig) error {
				d.mu.Lock()
				defer d.mu.Unlock()
				return d.wg.ConfigureDevice(link.WG, wgtypes.Config{Peers: p})
			}, failed)
			chunks <- chunk{part, failed}
		}
	}()
	for c := range chunks {
		for _, pc := range c.peers {
			k := pc.PublicKey.String()
			if err := c.failed[k]; err != nil {
				errs = append(errs, &dataplane.PeerError{Key: k, Step: "peer", Err: fmt.Errorf("configure %s: %w", link.WG, err)})
				continue
			}
			if err := d.nlh.RouteReplace(peerRoute(wgIdx, k)); err != nil {
				errs = append(errs, &dataplane.PeerError{Key: k, Step: "route", Err: fmt.Errorf("replace route via %s: %w", link.WG, err)})
			}
			if err := d.fdb(true, vxIdx, wgIdx, dataplane.AllowedIP(k).Addr()); err != nil {
				errs = append(errs, &dataplane.PeerError{Key: k, Step: "fdb", Err: fmt.Errorf("append fdb entry on %s: %w", link.VX, err)})
			}
		}
	}
	return errors.Join(errs...)
}

// RemovePeer implements dataplane.Dataplane: FDB entry, route, peer; absent is success.
func (d *Dataplane) RemovePeer(link dataplane.Link, key string) error {
	cfg, errs := peerConfig([]string{key}, true)
	if len(errs) > 0 {
		return errs[0]
	}
	wgIdx, vxIdx, err := d.indexes(link)
	if err != nil {
		return &dataplane.PeerError{Key: key, Step: "fdb", Err: err}
	}
	if err := d.fdb(false, vxIdx, wgIdx, dataplane.AllowedIP(key).Addr()); err != nil && !absent(err) {
		return &dataplane.PeerError{Key: key, Step: "fdb", Err: fmt.Errorf("delete fdb entry on %s: %w", link.VX, err)}
	}
	if err := d.nlh.RouteDel(peerRoute(wgIdx, key)); err != nil && !absent(err) {
		return &dataplane.PeerError{Key: key, Step: "route", Err: fmt.Errorf("delete route via %s: %w", link.WG, err)}
	}
	d.mu.Lock()
	err = d.wg.ConfigureDevice(link.WG, cfg)
	d.mu.Unlock()
	if err != nil {
		return &dataplane.PeerError{Key: key, Step: "peer", Err: fmt.Errorf("remove peer from %s: %w", link.WG, err)}
	}
	return nil
}

func (d *Dataplane) fdb(add bool, vxIdx, wgIdx int, dst netip.Addr) error {
	proto, flags := fdbFlags(add)
	_, err := fdbRequest(d.request(proto, flags), vxIdx, wgIdx, dst).Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// request starts a raw rtnetlink request in the dataplane's namespace.
func (d *Dataplane) request(proto, flags int) *nl.NetlinkRequest {
	if d.sockets == nil {
		return nl.NewNetlinkRequest(proto, flags)
	}
	return &nl.NetlinkRequest{
		NlMsghdr: unix.NlMsghdr{Len: uint32(unix.SizeofNlMsghdr), Type: uint16(proto), Flags: unix.NLM_F_REQUEST | uint16(flags)},
		Sockets:  d.sockets,
	}
}

// Probe implements dataplane.Dataplane: for each interface a link change without attributes (the kernel checks
// CAP_NET_ADMIN for it as for any change, and changes nothing), then an empty WireGuard configuration of link.WG.
func (d *Dataplane) Probe(link dataplane.Link) error {
	for _, name := range []string{link.WG, link.VX} {
		l, err := d.nlh.LinkByName(name)
		if err != nil {
			return probeError(name, err)
		}
		if _, err := touchRequest(d.request(unix.RTM_SETLINK, unix.NLM_F_ACK), l.Attrs().Index).Execute(unix.NETLINK_ROUTE, 0); err != nil {
			return probeError(name, err)
		}
	}
	d.mu.Lock()
	err := d.wg.ConfigureDevice(link.WG, wgtypes.Config{})
	d.mu.Unlock()
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: not a WireGuard device", link.WG)
	}
	if err != nil {
		return probeError(link.WG, err)
	}
	return nil
}

// probeError names the interface and maps a missing link and a refused change to the dataplane's errors.
func probeError(name string, err error) error {
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf) || errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%s: %w", name, dataplane.ErrNoInterface)
	case errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: %w", name, dataplane.ErrNotPermitted)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// absent reports the errors that mean "already gone" on delete.
func absent(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV)
}
