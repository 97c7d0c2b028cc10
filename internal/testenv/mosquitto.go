package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"
)

// MosquittoOptions configure a Mosquitto server for a test.
type MosquittoOptions struct {
	// Users are written to a password file with mosquitto_passwd; empty allows anonymous clients.
	Users map[string]string
	// ACL is the text of an acl_file; empty means none.
	ACL string
	// Addr is host:port to listen on (default a free port on 127.0.0.1).
	Addr string
	// Wrap prefixes the command, e.g. nsenter --net=… to run it in a namespace.
	Wrap []string
	// Dial checks that it listens (default net.Dial from the test's namespace).
	Dial func(network, addr string) (net.Conn, error)
	// Extra is appended to the configuration, after the listener (e.g. its cafile, certfile, keyfile).
	Extra string
	// Persist is a folder where the server keeps retained messages and sessions across a restart (as a packaged
	// Mosquitto does); empty: none.
	Persist string
}

// MosquittoServer is a running Mosquitto.
type MosquittoServer struct {
	// Addr is host:port of its listener.
	Addr string
	cmd  *exec.Cmd
}

// Stop kills the server; stopping twice is harmless.
func (m *MosquittoServer) Stop() {
	if m.cmd.ProcessState == nil {
		m.cmd.Process.Kill()
		m.cmd.Wait()
	}
}

// Terminate stops the server as systemd does, with SIGTERM: it sends the last wills of its clients, saves what it
// persists and exits. It waits for the exit (at most 10 s, then it kills).
func (m *MosquittoServer) Terminate() {
	if m.cmd.ProcessState != nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-done
	}
}

// Mosquitto starts Debian's Mosquitto and waits until it accepts connections. It is stopped at cleanup.
func Mosquitto(t testing.TB, o MosquittoOptions) *MosquittoServer {
	t.Helper()
	bin := Tool(t, "mosquitto")
	dir := t.TempDir()
	// Mosquitto started as root reads its files as the user mosquitto.
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	addr := o.Addr
	if addr == "" {
		addr = FreeAddr(t)
	}
	host, port, _ := net.SplitHostPort(addr)
	persist := "persistence false\n"
	if o.Persist != "" {
		if err := os.MkdirAll(o.Persist, 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(o.Persist, 0o777) // written by the user mosquitto when started as root
		persist = "persistence true\npersistence_location " + o.Persist + "/\nautosave_interval 1\n"
	}
	conf := fmt.Sprintf("listener %s %s\n%smax_queued_messages 100000\nset_tcp_nodelay true\n", port, host, persist)
	if len(o.Users) == 0 {
		conf += "allow_anonymous true\n"
	} else {
		pw := filepath.Join(dir, "passwd")
		names := make([]string, 0, len(o.Users))
		for u := range o.Users {
			names = append(names, u)
		}
		sort.Strings(names)
		tool := Tool(t, "mosquitto_passwd")
		for i, u := range names {
			args := []string{"-b", pw, u, o.Users[u]}
			if i == 0 {
				args = append([]string{"-c"}, args...)
			}
			if out, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_passwd %s: %v %s", u, err, out)
			}
		}
		os.Chmod(pw, 0o644)
		conf += "allow_anonymous false\npassword_file " + pw + "\n"
	}
	if o.ACL != "" {
		acl := filepath.Join(dir, "acl")
		if err := os.WriteFile(acl, []byte(o.ACL), 0o644); err != nil {
			t.Fatal(err)
		}
		conf += "acl_file " + acl + "\n"
	}
	conf += o.Extra
	cf := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append(append([]string(nil), o.Wrap...), bin, "-c", cf)
	m := exec.Command(argv[0], argv[1:]...)
	m.Stdout, m.Stderr = t.Output(), t.Output()
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	ms := &MosquittoServer{Addr: addr, cmd: m}
	t.Cleanup(ms.Stop)
	dial := o.Dial
	if dial == nil {
		dial = net.Dial
	}
	Eventually(t, 10*time.Second, func() bool {
		c, err := dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "mosquitto did not start on %s", addr)
	return ms
}

// FreeAddr returns 127.0.0.1:port with a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// DeployedACL returns the Mosquitto ACL the repository ships (deploy/mosquitto/acl), so that the cluster tests run
// against the file operators copy, plus a user observer that reads every topic: the tests' own eyes.
func DeployedACL(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for { // go test runs in the package's folder: go up to the module's
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		up := filepath.Dir(dir)
		if up == dir {
			t.Fatal("go.mod not found above the test's folder")
		}
		dir = up
	}
	b, err := os.ReadFile(filepath.Join(dir, "deploy", "mosquitto", "acl"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\nuser observer\ntopic read #\n"
}
