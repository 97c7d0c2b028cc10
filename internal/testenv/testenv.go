// Package testenv holds what the tests of several packages share: loggers that write to the test's output, the
// root check that turns a skip into a failure under CI=true, lookups of the Debian tools the tests drive, and the
// network-namespace harness with userspace WireGuard devices (netns_linux.go).
package testenv

import (
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"
)

// Logger returns a debug logger writing to the test's output.
func Logger(t testing.TB) *slog.Logger {
	t.Helper()
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
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
