// Package cli is what the wgkex commands share on their command line: subcommands, --help and -h (exit 0, listing
// the subcommands), and --version (the version and commit the binary was built from, from its build info).
package cli

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
)

// Command is one subcommand of a program.
type Command struct {
	// Name is the word that selects it; "" is the command that runs without one (serving).
	Name string
	// Args describes its arguments, e.g. "[--config FILE] BACKUP_FILE".
	Args string
	// Summary says in one line what it does.
	Summary string
	// Run runs it with the arguments after its name.
	Run func(ctx context.Context, args []string) error
}

// Program is a command with subcommands.
type Program struct {
	Name     string
	Summary  string
	Commands []Command
}

// Run runs the command args select. --version (or version) prints the version; -h, --help (or help) anywhere
// prints the usage of the program or of the subcommand named before it; both end with a nil error, so exit 0.
func (p Program) Run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "--version", "-version", "version":
			fmt.Fprintln(out, Version(p.Name))
			return nil
		case "-h", "--help", "-help", "help":
			p.Usage(out)
			return nil
		}
	}
	var cmd *Command
	rest := args
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		for i := range p.Commands {
			if p.Commands[i].Name == args[0] {
				cmd, rest = &p.Commands[i], args[1:]
			}
		}
		if cmd == nil {
			return fmt.Errorf("unknown command %q: `%s --help` lists the commands", args[0], p.Name)
		}
	} else {
		for i := range p.Commands {
			if p.Commands[i].Name == "" {
				cmd = &p.Commands[i]
			}
		}
	}
	if slices.ContainsFunc(rest, isHelp) {
		fmt.Fprintf(out, "usage: %s\n\n%s\n", strings.Join(strings.Fields(p.Name+" "+cmd.Name+" "+cmd.Args), " "), cmd.Summary)
		return nil
	}
	return cmd.Run(ctx, rest)
}

func isHelp(a string) bool { return a == "-h" || a == "--help" || a == "-help" }

// Usage prints the program's summary and its commands.
func (p Program) Usage(out io.Writer) {
	fmt.Fprintf(out, "%s: %s\n\nusage:\n", p.Name, p.Summary)
	w := 0
	for _, c := range p.Commands {
		w = max(w, len(strings.TrimSpace(c.Name+" "+c.Args)))
	}
	for _, c := range p.Commands {
		fmt.Fprintf(out, "  %s %-*s  %s\n", p.Name, w, strings.TrimSpace(c.Name+" "+c.Args), c.Summary)
	}
	fmt.Fprintf(out, "  %s %-*s  %s\n", p.Name, w, "--version", "print the version and the commit it was built from")
	fmt.Fprintf(out, "\nThe configuration file is --config FILE, else $WGKEX_CONFIG_FILE, else /etc/wgkex.yaml.\n")
}

// commit is the commit a build without version control information was made from (the container image's build:
// -ldflags "-X github.com/freifunkMUC/wgkex-go/internal/app/cli.commit=…").
var commit string

// Version describes the binary: name, module version, commit (with "+modified" for a tree with changes), commit
// time and Go version, from the build info the Go toolchain records (go build -buildvcs=true in a checkout).
func Version(name string) string {
	version, desc, when := "(devel)", "unknown commit", ""
	if commit != "" {
		desc = "commit " + short(commit)
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					modified = "+modified"
				}
			}
		}
		if rev != "" {
			desc = "commit " + short(rev) + modified
		}
	}
	parts := []string{desc}
	if when != "" {
		parts = append(parts, when)
	}
	parts = append(parts, runtime.Version())
	return fmt.Sprintf("%s %s (%s)", name, version, strings.Join(parts, ", "))
}

// short is a commit hash cut to 12 digits.
func short(rev string) string { return rev[:min(12, len(rev))] }
