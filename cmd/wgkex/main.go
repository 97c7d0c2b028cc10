// Command wgkex is the container entrypoint, a drop-in for the reference image's shell script: with no
// configuration file it writes one from the reference's environment variables (WGKEX_DOMAINS, MQTT_BROKER_URL, …),
// then runs wgkex-broker for the word broker, wgkex-worker for worker, or any other command as given.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/freifunkMUC/wgkex-go/internal/entrypoint"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wgkex:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	plan, err := entrypoint.Prepare(entrypoint.Options{
		Args:    args,
		Environ: os.Environ(),
		Exists:  func(p string) bool { _, err := os.Stat(p); return err == nil },
		Dir:     filepath.Dir(self),
	})
	if err != nil {
		return err
	}
	env, err := plan.Write(func(p string, b []byte) error { return os.WriteFile(p, b, 0o600) }, os.TempDir())
	if err != nil {
		return err
	}
	bin, err := exec.LookPath(plan.Argv[0])
	if err != nil {
		return err
	}
	return syscall.Exec(bin, plan.Argv, env)
}
