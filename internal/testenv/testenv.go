// Package testenv holds what the tests of several packages share: loggers that write to the test's output, a test
// certificate authority (ca.go), the root check that turns a skip into a failure under CI=true, lookups of the
// Debian tools the tests drive, and the network-namespace harness with userspace WireGuard devices (netns_linux.go).
package testenv

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Logger returns a debug logger writing to the test's output.
func Logger(t testing.TB) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Logs is log output that a test reads back while other goroutines may still be writing it.
type Logs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Reset forgets everything written so far.
func (l *Logs) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

// CaptureLogger returns a debug logger writing to the test's output and to the returned Logs, for tests that
// check what was logged.
func CaptureLogger(t testing.TB) (*slog.Logger, *Logs) {
	t.Helper()
	logs := &Logs{}
	return slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug})), logs
}

// ReplaceFile replaces path with content as a whole: it writes a file beside it and renames that into place, as
// editors, configuration tools and certbot do, so that a watcher never reads half a file.
func ReplaceFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// CI reports whether the tests run in CI, where a skip is a failure.
func CI() bool { return os.Getenv("CI") == "true" }

// Skip skips the test, or fails it under CI=true.
func Skip(t testing.TB, why string) {
	t.Helper()
	if CI() {
		t.Fatalf("cannot run under CI=true: %s", why)
	}
	t.Skip(why)
}

// RequireRoot skips (fails under CI) a test that needs root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// Tool returns the path of a command the test drives (mosquitto_sub, wg, python3 …), skipping (failing under CI)
// when it is not installed.
func Tool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} { // daemons such as mosquitto, when sbin is not on PATH
		if p, err := exec.LookPath(dir + "/" + name); err == nil {
			return p
		}
	}
	Skip(t, name+" not installed")
	return ""
}

// Lazy is a value of a failure message that is read when the message is printed, not when the wait starts: pass
// testenv.Lazy(func() string { … }) to Eventually to print the last thing seen.
type Lazy func() string

func (l Lazy) String() string { return l() }

// Eventually polls cond every 10 ms until it is true or the deadline passes, then fails with msg.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: "+msg, append([]any{timeout}, args...)...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BcryptHash returns a bcrypt hash of pw at the lowest cost, as a password_hash of a test configuration.
func BcryptHash(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}
