package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// isolatedEnv marks a test binary re-executed in a private mount namespace.
const isolatedEnv = "WGKEX_TEST_ISOLATED"

// Main runs a package's tests. As root it first re-executes the test binary in a private mount namespace with its
// own /var/run/wireguard, so that test binaries running in parallel (go test ./...) can each have a userspace
// device named wg-welt: wgctrl finds userspace devices through sockets in that directory, which all network
// namespaces share. It fails the tests when a goroutine outlives them (goleak), ignoring what opts name.
func Main(m *testing.M, opts ...goleak.Option) {
	if os.Geteuid() == 0 && os.Getenv(isolatedEnv) == "" {
		if unshare, err := exec.LookPath("unshare"); err == nil {
			cmd := exec.Command(unshare, append([]string{"--mount", "--propagation", "private", os.Args[0]}, os.Args[1:]...)...)
			cmd.Env = append(os.Environ(), isolatedEnv+"=1")
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				if ee, ok := err.(*exec.ExitError); ok {
					os.Exit(ee.ExitCode())
				}
				fmt.Fprintln(os.Stderr, "testenv: re-exec in a private mount namespace:", err)
				os.Exit(2)
			}
			os.Exit(0)
		}
	}
	if os.Getenv(isolatedEnv) == "1" {
		if err := os.MkdirAll("/var/run/wireguard", 0o755); err == nil {
			if err := syscall.Mount("tmpfs", "/var/run/wireguard", "tmpfs", 0, "mode=0755"); err != nil {
				fmt.Fprintln(os.Stderr, "testenv: private /var/run/wireguard:", err)
				os.Exit(2)
			}
		}
	}
	goleak.VerifyTestMain(m, opts...)
}

// NS is a fresh network namespace, closed at the end of the test.
type NS struct {
	Handle netns.NsHandle
}

// NewNS creates a network namespace with lo up. It needs root.
func NewNS(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		Skip(t, "no /dev/net/tun")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.New()
	if err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the original namespace: %v", err)
	}
	n := &NS{Handle: h}
	t.Cleanup(func() { h.Close() })
	n.Run(t, "ip", "link", "set", "lo", "up")
	return n
}

// Path is a file naming the namespace, for nsenter.
func (n *NS) Path() string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(n.Handle)) }

// Do runs fn on a thread inside the namespace.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	if err := netns.Set(n.Handle); err != nil {
		return err
	}
	defer netns.Set(orig)
	return fn()
}

// Run runs a command (ip, bridge, wg …) inside the namespace and returns its output, failing the test on error.
func (n *NS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Command builds a command that runs inside the namespace.
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.Path(), name}, args...)...)
}

// WireGuard creates a userspace WireGuard device (wireguard-go, in-process) in the namespace with the given key
// and listen port (0: any), reachable through wgctrl and `wg` by its UAPI socket, and sets it up. It returns the
// device's public key.
func (n *NS) WireGuard(t testing.TB, name string, key wgtypes.Key, port int) wgtypes.Key {
	t.Helper()
	var closeDev func()
	err := n.Do(func() (err error) {
		closeDev, err = UserspaceDevice(name, key, port)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeDev)
	// Like a kernel WireGuard interface, no automatic link-local address: the configured one is the only one.
	n.Run(t, "ip", "link", "set", name, "addrgenmode", "none")
	n.Run(t, "ip", "link", "set", name, "up")
	return key.PublicKey()
}

// UserspaceDevice creates a wireguard-go device in the calling thread's network namespace, with its UAPI socket
// in /var/run/wireguard, and returns its closer.
func UserspaceDevice(name string, key wgtypes.Key, port int) (func(), error) {
	td, err := tun.CreateTUN(name, 1420)
	if err != nil {
		return nil, fmt.Errorf("create tun %s: %w", name, err)
	}
	dev := device.NewDevice(td, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	if err := dev.IpcSet(fmt.Sprintf("private_key=%x\nlisten_port=%d\n", key[:], port)); err != nil {
		dev.Close()
		return nil, fmt.Errorf("configure %s: %w", name, err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("up %s: %w", name, err)
	}
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("uapi open %s: %w", name, err)
	}
	uapi, err := ipc.UAPIListen(name, f)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("uapi listen %s: %w", name, err)
	}
	// The closer owns the accept loop and the connection handlers: it closes the listener, the open connections
	// and the device, then waits for them all.
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Go(func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				dev.IpcHandle(c) // closes c
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	return func() {
		uapi.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		dev.Close()
		wg.Wait()
	}, nil
}

// Veth connects this namespace to peer with a veth pair: local here, remote there.
func (n *NS) Veth(t testing.TB, local string, peer *NS, remote string) {
	t.Helper()
	n.Run(t, "ip", "link", "add", local, "type", "veth", "peer", "name", remote, "netns", peer.Path())
}

// Dial opens a TCP connection from inside the namespace.
func (n *NS) Dial(network, addr string) (c net.Conn, err error) {
	err = n.Do(func() error {
		c, err = net.DialTimeout(network, addr, 5*time.Second)
		return err
	})
	return c, err
}

// Gateway sets up a domain's interfaces as the README tells operators to: a userspace wg-{name} with the link
// address, and vx-{name} on top of it with Gluon's VXLAN port and the VNI a node derives from the domain seed
// (here the made-up seed "testenv-{name}"). It returns the WireGuard public key.
func (n *NS) Gateway(t testing.TB, stripped string, key wgtypes.Key, port int, linkAddr string) wgtypes.Key {
	t.Helper()
	wg, vx := "wg-"+stripped, "vx-"+stripped
	pub := n.WireGuard(t, wg, key, port)
	n.Run(t, "ip", "-6", "addr", "add", linkAddr+"/64", "dev", wg, "nodad")
	vni := strconv.FormatUint(uint64(dataplane.VNI("testenv-"+stripped)), 10)
	n.Run(t, "ip", "link", "add", vx, "type", "vxlan", "id", vni, "dstport", strconv.Itoa(dataplane.VXLANPort), "local", linkAddr, "dev", wg)
	n.Run(t, "ip", "link", "set", vx, "up")
	return pub
}

// NewKey returns a fresh WireGuard private key.
func NewKey(t testing.TB) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
