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

	"github.com/freifunkMUC/wgkex-go/internal/app/cli"
	"github.com/freifunkMUC/wgkex-go/internal/app/entrypoint"
)

const usage = `wgkex: the container entrypoint, a drop-in for the reference image's

usage:
  wgkex broker [ARGS]   run wgkex-broker (wgkex-broker --help lists its commands)
  wgkex worker [ARGS]   run wgkex-worker (wgkex-worker --help)
  wgkex COMMAND [ARGS]  run any other command as given
  wgkex --version       print the version and the commit it was built from

Without a configuration file ($WGKEX_CONFIG_FILE, else /etc/wgkex.yaml) it writes one from the reference's
environment variables (WGKEX_DOMAINS, WGKEX_DOMAIN_PREFIXES, MQTT_BROKER_URL, MQTT_USERNAME, MQTT_PASSWORD, …).
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "wgkex:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "--version", "-version", "version":
			fmt.Println(cli.Version("wgkex"))
			return nil
		case "-h", "--help", "-help", "help":
			fmt.Print(usage)
			return nil
		}
	}
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
