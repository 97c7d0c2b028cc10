package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/store"
)

// The fault suite for the state: the real wgkex-broker binary in its own network namespace, its data directory on
// a size-limited tmpfs or with its files damaged by hand, stopped with real signals. Every test counts the keys
// answered 200 and checks that each is in the state afterwards.

// stateBroker is a wgkex-broker binary serving in a network namespace of its own (so that it can listen on the
// usual ports beside other tests), its state in dir.
type stateBroker struct {
	t     *testing.T
	ns    *testenv.NS
	dir   string
	cfg   string
	cmd   *exec.Cmd
	out   *testenv.Logs // the current run's standard error
	exit  chan error
	http  *http.Client
	state string
}

func newStateBroker(t *testing.T, dir string) *stateBroker {
	t.Helper()
	ns := testenv.NewNS(t)
	b := &stateBroker{t: t, ns: ns, dir: dir, cfg: filepath.Join(t.TempDir(), "broker.yaml"),
		state: filepath.Join(dir, "broker.db")}
	b.http = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) { return ns.Dial(network, addr) },
	}}
	if err := os.WriteFile(b.cfg, []byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
workers:
  gw1: {weight: 1}
broker_listen: {host: 127.0.0.1, port: 5000, rate_limit: 100000, rate_burst: 100000}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:1883"}]
`, b.state)), 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// run starts the broker without waiting for it.
func (b *stateBroker) run() {
	b.t.Helper()
	b.out = &testenv.Logs{}
	b.cmd = exec.Command("nsenter", "--net="+b.ns.Path(), binary(b.t, "wgkex-broker"), "--config", b.cfg)
	b.cmd.Stdout = b.t.Output()
	b.cmd.Stderr = io.MultiWriter(b.out, b.t.Output())
	if err := b.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	cmd, exit := b.cmd, make(chan error, 1)
	b.exit = exit
	go func() { exit <- cmd.Wait() }()
	b.t.Cleanup(func() { cmd.Process.Kill(); <-exit; exit <- nil })
}

// start starts the broker and waits until it answers HTTP.
func (b *stateBroker) start() {
	b.t.Helper()
	b.run()
	testenv.Eventually(b.t, 10*time.Second, func() bool {
		resp, err := b.http.Get("http://127.0.0.1:5000/api/v1/status")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, "broker did not start:\n%s", testenv.Lazy(b.out.String))
}

// wait returns the broker's exit code once it has ended (within 20 s).
func (b *stateBroker) wait() int {
	b.t.Helper()
	select {
	case err := <-b.exit:
		b.exit <- err // for the cleanup
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			b.t.Fatal(err)
		}
		return 0
	case <-time.After(20 * time.Second):
		b.t.Fatalf("broker did not exit:\n%s", b.out.String())
		return -1
	}
}

// stop sends sig and returns the exit code.
func (b *stateBroker) stop(sig syscall.Signal) int {
	b.t.Helper()
	// nsenter execs the broker, so the process is the broker itself.
	if err := b.cmd.Process.Signal(sig); err != nil {
		b.t.Fatal(err)
	}
	return b.wait()
}

// post registers a fresh key and returns it with the status of the answer.
func (b *stateBroker) post() (string, int) {
	b.t.Helper()
	key := testenv.NewKey(b.t).PublicKey().String()
	body := fmt.Sprintf(`{"domain":"ffmuc_welt","public_key":%q}`, key)
	resp, err := b.http.Post("http://127.0.0.1:5000/api/v1/wg/key/exchange", "application/json", strings.NewReader(body))
	if err != nil {
		return key, 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return key, resp.StatusCode
}

// register posts n fresh keys and returns those answered 200.
func (b *stateBroker) register(n int) []string {
	b.t.Helper()
	var ok []string
	for range n {
		if k, code := b.post(); code == http.StatusOK {
			ok = append(ok, k)
		}
	}
	return ok
}

// storedKeys opens the state of a stopped broker as the broker does (merging its write-ahead log) and returns its
// keys.
func storedKeys(t *testing.T, state string) map[string]bool {
	t.Helper()
	s, err := store.Open(state, testenv.Logger(t))
	if err != nil {
		t.Fatalf("open the state after the fault: %v", err)
	}
	defer s.Close()
	out := map[string]bool{}
	var cur broker.KeyCursor
	for {
		recs, next, err := s.KeysPage("ffmuc_welt", time.Unix(0, 0), cur, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			out[r.Key] = true
		}
		if next == "" {
			return out
		}
		cur = next
	}
}

// missing returns the keys of want that are not in got.
func missing(want []string, got map[string]bool) []string {
	var out []string
	for _, k := range want {
		if !got[k] {
			out = append(out, k)
		}
	}
	return out
}

// noPanic fails the test if the broker's output shows a Go panic or runtime crash.
func noPanic(t *testing.T, out string) {
	t.Helper()
	for _, s := range []string{"panic:", "goroutine ", "fatal error:", "SIGBUS", "SIGSEGV"} {
		if strings.Contains(out, s) {
			t.Fatalf("the broker crashed (%q):\n%s", s, out)
		}
	}
}

// TestFaultDiskFull: the data directory is a 24 MiB tmpfs. Keys are answered, the disk is filled by another
// file, more keys are posted (the write-ahead log's preallocated space still takes them), and the broker is
// stopped with SIGTERM while its last merge into bbolt cannot get space. It must keep the log, exit 1 saying so,
// and after space is freed the next start has every key it answered 200. The old code removed the log and lost
// them all.
func TestFaultDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=24m,mode=0700"); err != nil {
		testenv.Skip(t, fmt.Sprintf("mount tmpfs: %v", err))
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	b := newStateBroker(t, dir)
	b.start()
	answered := b.register(200)
	if len(answered) != 200 {
		t.Fatalf("%d of 200 answered before the disk filled", len(answered))
	}
	fill(t, filepath.Join(dir, "filler"))
	late := b.register(400)
	answered = append(answered, late...)
	code := b.stop(syscall.SIGTERM)
	out := b.out.String()
	noPanic(t, out)
	t.Logf("after SIGTERM on a full disk: exit %d, %d keys answered 200 (%d after the disk filled)", code, len(answered), len(late))
	if code != 1 || !strings.Contains(out, "not merged into the state file") || !strings.Contains(out, "for the next start") {
		t.Fatalf("exit %d; want 1 and an error that says the registrations are kept for the next start:\n%s", code, out)
	}
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	b.start()
	if code := b.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("clean stop after space was freed: exit %d\n%s", code, b.out.String())
	}
	if lost := missing(answered, storedKeys(t, b.state)); len(lost) > 0 {
		t.Fatalf("%d of %d keys answered 200 are gone after the restart", len(lost), len(answered))
	}
}

// fill writes path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0xa5}, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}

// TestFaultDamagedLogHeader: the broker is killed with 30 keys answered and in its write-ahead log only; one byte
// of the segment's header is changed. The next start recovers all 30, keeps the segment aside as .damaged, names
// it in an ERROR line and on /metrics. The old code took the segment for an old format, read nothing from it and
// deleted it.
func TestFaultDamagedLogHeader(t *testing.T) {
	b := newStateBroker(t, t.TempDir())
	b.start()
	answered := b.register(30)
	b.stop(syscall.SIGKILL)
	segs, _ := filepath.Glob(b.state + ".wal.*")
	if len(segs) != 1 {
		t.Fatalf("segments after the kill: %v, want one", segs)
	}
	flipByte(t, segs[0], 3)
	b.start()
	out := b.out.String()
	aside := segs[0] + ".damaged"
	if !fileExists(aside) {
		t.Errorf("the damaged segment was not kept as %s", aside)
	}
	var line string
	for l := range strings.Lines(out) {
		if strings.Contains(l, "damaged write-ahead log segment") {
			line = l
		}
	}
	if !strings.Contains(line, "level=ERROR") || !strings.Contains(line, aside) || !strings.Contains(line, "recovered=30") {
		t.Errorf("log line %q, want an ERROR naming %s with 30 recovered", line, aside)
	}
	metrics := b.get("/metrics")
	if want := fmt.Sprintf(`wgkex_wal_damaged_segment_records{file=%q,state="recovered"} 30`, aside); !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %s", want)
	}
	if code := b.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}
	if lost := missing(answered, storedKeys(t, b.state)); len(lost) > 0 {
		t.Fatalf("%d of %d keys answered 200 are gone", len(lost), len(answered))
	}
}

func (b *stateBroker) get(path string) string {
	b.t.Helper()
	resp, err := b.http.Get("http://127.0.0.1:5000" + path)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := make([]byte, 1)
	if _, err := f.ReadAt(c, at); err != nil {
		t.Fatal(err)
	}
	c[0] ^= 0x20
	if _, err := f.WriteAt(c, at); err != nil {
		t.Fatal(err)
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestFaultTruncatedState: the state file of a stopped broker is cut to half its size (or to nothing but its meta
// pages). The broker refuses to start with exit 1 and an error that names the file, says it is damaged and what
// to do; it does not panic (the old code did, exit 2).
func TestFaultTruncatedState(t *testing.T) {
	b := newStateBroker(t, t.TempDir())
	b.start()
	b.register(300)
	if code := b.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}
	fi, err := os.Stat(b.state)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int64{fi.Size() / 2, 2 * 4096} {
		if err := os.Truncate(b.state, size); err != nil {
			t.Fatal(err)
		}
		b.run()
		code := b.wait()
		out := b.out.String()
		noPanic(t, out)
		if code != 1 || !strings.Contains(out, b.state) || !strings.Contains(out, "damaged") || !strings.Contains(out, "restore the last backup") {
			t.Fatalf("start on a state file cut to %d bytes: exit %d, want 1 and an error naming the file and what to do:\n%s", size, code, out)
		}
	}
}

// TestFaultSecondBroker: a second broker on the same state file stops at once with exit 1 and says that the
// file is in use by another process (the old one said "timeout" after 5 s); the first one goes on serving.
func TestFaultSecondBroker(t *testing.T) {
	first := newStateBroker(t, t.TempDir())
	first.start()
	second := newStateBroker(t, first.dir)
	start := time.Now()
	second.run()
	code := second.wait()
	took := time.Since(start)
	out := second.out.String()
	t.Logf("second broker: exit %d after %v", code, took.Round(time.Millisecond))
	if code != 1 || !strings.Contains(out, "in use by another process") || !strings.Contains(out, first.state) {
		t.Fatalf("second broker: exit %d, want 1 and an error that says %s is in use by another process:\n%s", code, first.state, out)
	}
	if _, status := first.post(); status != http.StatusOK {
		t.Errorf("the first broker answers %d after the second one tried", status)
	}
}

// TestFaultBackupRestore: an online backup is taken with `wgkex-broker backup` while keys are registered; more
// keys are answered after it, merged into the state file by a clean restart, and more again before the broker is
// killed; the state file is then lost, and the backup restored with `wgkex-broker restore`. The restored broker
// has every key answered before, during and after the backup.
func TestFaultBackupRestore(t *testing.T) {
	b := newStateBroker(t, t.TempDir())
	b.start()
	before := b.register(50)
	backup := filepath.Join(t.TempDir(), "backup.db")
	var during []string
	done := make(chan struct{})
	go func() { // registrations go on during the backup
		defer close(done)
		for range 50 {
			if k, code := b.post(); code == http.StatusOK {
				during = append(during, k)
			}
		}
	}()
	out, err := exec.Command(binary(t, "wgkex-broker"), "backup", "--config", b.cfg, backup).CombinedOutput()
	<-done
	if err != nil || !strings.Contains(string(out), "checked") {
		t.Fatalf("wgkex-broker backup: %v\n%s", err, out)
	}
	t.Logf("wgkex-broker backup: %s", bytes.TrimSpace(out))
	if lost := missing(before, storedKeys(t, backup)); len(lost) > 0 {
		t.Fatalf("%d of %d keys answered before the backup are not in it", len(lost), len(before))
	}
	merged := b.register(50)
	if code := b.stop(syscall.SIGTERM); code != 0 { // merges them into the state file
		t.Fatalf("stop: exit %d", code)
	}
	b.start()
	logged := b.register(50)
	b.stop(syscall.SIGKILL)          // these are in the write-ahead log only
	flipByte(t, b.state, 4096*3+100) // the state file is damaged beyond use
	os.Truncate(b.state, 4096*3)
	b.run()
	if code := b.wait(); code != 1 {
		t.Fatalf("start on the damaged state file: exit %d, want 1", code)
	}
	out, err = exec.Command(binary(t, "wgkex-broker"), "restore", "--config", b.cfg, backup).CombinedOutput()
	if err != nil {
		t.Fatalf("wgkex-broker restore: %v\n%s", err, out)
	}
	t.Logf("wgkex-broker restore: %s", bytes.TrimSpace(out))
	if !fileExists(b.state + ".before-restore") {
		t.Error("the replaced state file was not kept")
	}
	b.start()
	if code := b.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("stop after restore: exit %d", code)
	}
	got := storedKeys(t, b.state)
	for _, c := range []struct {
		name string
		keys []string
	}{{"before the backup", before}, {"during it", during}, {"after it, merged", merged}, {"after it, in the log", logged}} {
		if lost := missing(c.keys, got); len(lost) > 0 {
			t.Errorf("%d of %d keys answered %s are gone after the restore", len(lost), len(c.keys), c.name)
		}
	}
}

// TestFaultRestoreWhileRunning: restore refuses to replace the state file of a running broker.
func TestFaultRestoreWhileRunning(t *testing.T) {
	b := newStateBroker(t, t.TempDir())
	b.start()
	b.register(5)
	backup := filepath.Join(t.TempDir(), "backup.db")
	if out, err := exec.Command(binary(t, "wgkex-broker"), "backup", "--config", b.cfg, backup).CombinedOutput(); err != nil {
		t.Fatalf("wgkex-broker backup: %v\n%s", err, out)
	}
	out, err := exec.Command(binary(t, "wgkex-broker"), "restore", "--config", b.cfg, backup).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another process") {
		t.Fatalf("restore under a running broker: %v\n%s", err, out)
	}
	if _, status := b.post(); status != http.StatusOK {
		t.Errorf("the broker answers %d after the refused restore", status)
	}
}
