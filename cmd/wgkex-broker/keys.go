package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/app/admin"
	"github.com/freifunkMUC/wgkex-go/internal/config"
)

// keysArgs are the arguments of `wgkex-broker keys ACTION …`: flags may come before or after the key.
type keysArgs struct {
	action, key, domain string
	limit               int
	config              []string // --config FILE, for config.FromArgs
}

// parseKeysArgs reads `ACTION [KEY] [--domain D] [--limit N] [--config FILE]` (also --flag=value).
func parseKeysArgs(args []string) (keysArgs, error) {
	a := keysArgs{limit: 100}
	var pos []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if !strings.HasPrefix(arg, "-") {
			pos = append(pos, arg)
			continue
		}
		name, value, inline := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if !inline {
			if i+1 >= len(args) {
				return a, fmt.Errorf("%s needs a value", arg)
			}
			i++
			value = args[i]
		}
		switch name {
		case "domain":
			a.domain = value
		case "limit":
			n, err := strconv.Atoi(value)
			if err != nil || n < 1 {
				return a, fmt.Errorf("--limit %q: want a positive number", value)
			}
			a.limit = n
		case "config":
			a.config = []string{"--config", value}
		default:
			return a, fmt.Errorf("unknown flag %s: `wgkex-broker keys --help` lists them", arg)
		}
	}
	if len(pos) == 0 {
		return a, fmt.Errorf("usage: wgkex-broker keys show KEY | list [--domain D] [--limit N] | revoke KEY [--domain D]")
	}
	a.action, pos = pos[0], pos[1:]
	switch a.action {
	case "show", "revoke":
		if len(pos) != 1 {
			return a, fmt.Errorf("usage: wgkex-broker keys %s KEY%s", a.action, map[bool]string{true: " [--domain D]"}[a.action == "revoke"])
		}
		a.key = pos[0]
	case "list":
		if len(pos) != 0 {
			return a, fmt.Errorf("usage: wgkex-broker keys list [--domain D] [--limit N]")
		}
	default:
		return a, fmt.Errorf("unknown keys action %q: want show, list or revoke", a.action)
	}
	if a.action == "show" && a.domain != "" {
		return a, fmt.Errorf("keys show takes no --domain: it shows every domain")
	}
	return a, nil
}

// keysCommand is `wgkex-broker keys show|list|revoke`, through the running broker's administration socket.
func keysCommand(ctx context.Context, args []string, out io.Writer) error {
	a, err := parseKeysArgs(args)
	if err != nil {
		return err
	}
	cfg, err := config.FromArgs("wgkex-broker keys", a.config)
	if err != nil {
		return err
	}
	c := admin.Dial(cfg.Broker.AdminSocketPath())
	switch a.action {
	case "show":
		return showKey(ctx, c, a.key, out)
	case "list":
		return listKeys(ctx, c, a.domain, a.limit, out)
	default:
		return revokeKey(ctx, c, a.key, a.domain, out)
	}
}

const timeFormat = time.RFC3339

func showKey(ctx context.Context, c *admin.Client, key string, out io.Writer) error {
	infos, err := c.ShowKey(ctx, key)
	if err != nil {
		return err
	}
	if len(infos) == 0 {
		fmt.Fprintf(out, "%s: not stored in any domain, never revoked (or the revocation is older than broker.key_retention)\n", key)
		return nil
	}
	for _, i := range infos {
		fmt.Fprintf(out, "%s in %s:\n", key, i.Domain)
		if i.Stored {
			fmt.Fprintf(out, "  first seen  %s\n  last seen   %s\n", i.FirstSeen.Local().Format(timeFormat), i.LastSeen.Local().Format(timeFormat))
			gw := i.Gateway
			if gw == "" {
				gw = "(none: registered with API v1, or no gateway was online)"
			}
			fmt.Fprintf(out, "  gateway     %s (chosen by API v2)\n", gw)
			gws := strings.Join(i.Gateways, ", ")
			if gws == "" {
				gws = "(no gateway online serves this domain)"
			}
			fmt.Fprintf(out, "  on gateways %s (every online gateway of the domain has every key)\n", gws)
		} else {
			fmt.Fprintf(out, "  not stored\n")
		}
		if !i.RevokedAt.IsZero() {
			fmt.Fprintf(out, "  revoked     %s\n", i.RevokedAt.Local().Format(timeFormat))
		}
	}
	return nil
}

func listKeys(ctx context.Context, c *admin.Client, domain string, limit int, out io.Writer) error {
	keys, err := c.ListKeys(ctx, domain, limit)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tDOMAIN\tFIRST SEEN\tLAST SEEN\tGATEWAY")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.Key, k.Domain, k.FirstSeen.Local().Format(timeFormat),
			k.LastSeen.Local().Format(timeFormat), k.Gateway)
	}
	return tw.Flush()
}

func revokeKey(ctx context.Context, c *admin.Client, key, domain string, out io.Writer) error {
	revs, err := c.RevokeKey(ctx, key, domain)
	if err != nil {
		return err
	}
	for _, r := range revs {
		was := "was stored"
		if !r.Stored {
			was = "was not stored; gateways that have it remove it too"
		}
		fmt.Fprintf(out, "%s revoked in %s at %s (%s)\n", key, r.Domain, r.At.Local().Format(time.RFC3339Nano), was)
	}
	fmt.Fprintln(out, "Every gateway removes its peer, route and FDB entry now. The node may register again: "+
		"put the key on the blocklist (broker.blocklist_file) to refuse it.")
	return nil
}
