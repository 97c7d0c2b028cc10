package dataplane

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// ErrNoDevice is what Fake answers for a link it does not have.
var ErrNoDevice = errors.New("no such device")

// Fake is an in-memory Dataplane for tests. Its String method prints the state as text.
type Fake struct {
	mu      sync.Mutex
	links   map[Link]*fakeLink
	indexes int // interface indexes handed out
	// Fail, when set, is asked before every step ("device", "interface", "forwarding", "probe" and "add" with no
	// key, "peer", "route", "fdb", "remove-fdb", "remove-route", "remove-peer"); a non-nil answer fails that step.
	// A probe failing with an error that wraps ErrNotPermitted plays a worker without CAP_NET_ADMIN.
	Fail func(step, key string) error
	// Log records every call: "add wg-welt 2", "remove wg-welt KEY".
	Log []string
}

type fakeLink struct {
	dev   Device
	peers map[string]time.Time
	route map[string]bool
	fdb   map[string]bool
}

var _ Dataplane = (*Fake)(nil)

// NewFake returns a Fake with the given links.
func NewFake(links ...Link) *Fake {
	f := &Fake{links: map[Link]*fakeLink{}}
	for _, l := range links {
		f.AddLink(l)
	}
	return f
}

// AddLink creates a link (as an operator creating wg-X and vx-X would); a link created again is empty and has a
// new interface index.
func (f *Fake) AddLink(l Link) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.indexes++
	f.links[l] = &fakeLink{
		dev:   Device{Index: f.indexes, ListenPort: 51820, PublicKey: "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=", LinkAddress: "fe80::1"},
		peers: map[string]time.Time{}, route: map[string]bool{}, fdb: map[string]bool{},
	}
}

// RemoveLink deletes a link (as an operator deleting wg-X would); its peers go with it.
func (f *Fake) RemoveLink(l Link) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, l)
}

// SetHandshake sets a peer's last handshake (the peer must exist).
func (f *Fake) SetHandshake(l Link, key string, t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links[l].peers[key] = t
}

func (f *Fake) fail(step, key string) error {
	if f.Fail == nil {
		return nil
	}
	return f.Fail(step, key)
}

// read returns l's state for a read, or the error the read fails with (no such device, or Fail for step). f.mu is
// held.
func (f *Fake) read(l Link, step string) (*fakeLink, error) {
	fl, ok := f.links[l]
	if !ok {
		return nil, fmt.Errorf("device %s: %w", l.WG, ErrNoDevice)
	}
	return fl, f.fail(step, "")
}

// Device implements Dataplane.
func (f *Fake) Device(l Link) (Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, err := f.read(l, "device")
	if err != nil {
		return Device{}, err
	}
	d := fl.dev
	for k, t := range fl.peers {
		d.Peers = append(d.Peers, Peer{PublicKey: k, LastHandshake: t})
	}
	sort.Slice(d.Peers, func(i, j int) bool { return d.Peers[i].PublicKey < d.Peers[j].PublicKey })
	return d, nil
}

// Interface implements Dataplane.
func (f *Fake) Interface(l Link) (Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, err := f.read(l, "interface")
	if err != nil {
		return Device{}, err
	}
	return Device{Index: fl.dev.Index, LinkAddress: fl.dev.LinkAddress}, nil
}

// Probe implements Dataplane: a link not added (or removed) is missing; Fail("probe", "") can refuse it.
func (f *Fake) Probe(l Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[l]; !ok {
		return fmt.Errorf("%s: %w", l.WG, ErrNoInterface)
	}
	return f.fail("probe", "")
}

// Forwarding implements Dataplane.
func (f *Fake) Forwarding(l Link) (Forwarding, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, err := f.read(l, "forwarding")
	if err != nil {
		return Forwarding{}, err
	}
	var fw Forwarding
	for k := range fl.route {
		fw.Routes = append(fw.Routes, AllowedIP(k).Addr())
	}
	for k := range fl.fdb {
		fw.FDB = append(fw.FDB, AllowedIP(k).Addr())
	}
	return fw, nil
}

// Lose deletes a peer's route and FDB entry behind the worker's back (as a crash or an operator might).
func (f *Fake) Lose(l Link, key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links[l].route, key)
	delete(f.links[l].fdb, key)
}

// AddPeers implements Dataplane.
func (f *Fake) AddPeers(l Link, keys []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Log = append(f.Log, fmt.Sprintf("add %s %d", l.WG, len(keys)))
	if err := f.fail("add", ""); err != nil { // the whole call failed (a dead netlink socket, say)
		return err
	}
	fl, ok := f.links[l]
	var errs []error
	for _, k := range keys {
		if !ok {
			errs = append(errs, &PeerError{Key: k, Step: "peer", Err: ErrNoDevice})
			continue
		}
		if err := f.fail("peer", k); err != nil {
			errs = append(errs, &PeerError{Key: k, Step: "peer", Err: err})
			continue
		}
		if _, had := fl.peers[k]; !had {
			fl.peers[k] = time.Time{}
		}
		for _, step := range []string{"route", "fdb"} {
			if err := f.fail(step, k); err != nil {
				errs = append(errs, &PeerError{Key: k, Step: step, Err: err})
				continue
			}
			if step == "route" {
				fl.route[k] = true
			} else {
				fl.fdb[k] = true
			}
		}
	}
	return errors.Join(errs...)
}

// RemovePeer implements Dataplane.
func (f *Fake) RemovePeer(l Link, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Log = append(f.Log, fmt.Sprintf("remove %s %s", l.WG, key))
	fl, ok := f.links[l]
	if !ok {
		return fmt.Errorf("device %s: %w", l.WG, ErrNoDevice)
	}
	for _, step := range []string{"fdb", "route", "peer"} {
		if err := f.fail("remove-"+step, key); err != nil {
			return &PeerError{Key: key, Step: step, Err: err}
		}
		switch step {
		case "fdb":
			delete(fl.fdb, key)
		case "route":
			delete(fl.route, key)
		case "peer":
			delete(fl.peers, key)
		}
	}
	return nil
}

// String prints every link's peers, one line each: "wg-welt KEY peer route fdb".
func (f *Fake) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for l, fl := range f.links {
		keys := map[string]bool{}
		for k := range fl.peers {
			keys[k] = true
		}
		for k := range fl.route {
			keys[k] = true
		}
		for k := range fl.fdb {
			keys[k] = true
		}
		for k := range keys {
			s := l.WG + " " + k
			if _, ok := fl.peers[k]; ok {
				s += " peer"
			}
			if fl.route[k] {
				s += " route"
			}
			if fl.fdb[k] {
				s += " fdb"
			}
			lines = append(lines, s)
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
