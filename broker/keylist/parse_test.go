package keylist

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

const (
	k1 = "o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg="
	k2 = "TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g="
)

func TestParseBlocklist(t *testing.T) {
	tests := []struct {
		name, in string
		want     Blocklist
		err      string // substring of the error; "" means none
	}{
		{"empty file", "", Blocklist{}, ""},
		{"only a comment", "# nothing blocked\n", Blocklist{}, ""},
		{"null document", "~\n", Blocklist{}, ""},
		{"list of keys", "- " + k1 + "\n- " + k2 + "\n", Blocklist{k1: "", k2: ""}, ""},
		{"list with reasons", "- " + k1 + ": stolen router, ticket 123\n- " + k2 + ":\n", Blocklist{k1: "stolen router, ticket 123", k2: ""}, ""},
		{"list with reason mappings", "- " + k1 + ": {reason: spam}\n- " + k2 + ": {}\n", Blocklist{k1: "spam", k2: ""}, ""},
		{"top-level mapping", k1 + ": spam\n" + k2 + ": ~\n", Blocklist{k1: "spam", k2: ""}, ""},
		{"quoted key", `- "` + k1 + `"` + "\n", Blocklist{k1: ""}, ""},
		{"duplicate key, last reason wins", "- " + k1 + ": a\n- " + k1 + ": b\n", Blocklist{k1: "b"}, ""},
		{"invalid key", "- " + k1 + "\n- abc\n", nil, "line 2: invalid"},
		{"key with newline", `- "` + k1 + `\n"` + "\n", nil, "line 1"},
		{"non-canonical key", "- " + k1[:42] + "h=\n", nil, "line 1"},
		{"two keys in one item", "- {" + k1 + ": a, " + k2 + ": b}\n", nil, "one key per list item"},
		{"scalar document", k1 + "\n", nil, "want a list of keys"},
		{"nested list", "- [" + k1 + "]\n", nil, "want a key"},
		{"list as reason", "- " + k1 + ": [a]\n", nil, "want a reason"},
		{"reason not a string", "- " + k1 + ": {reason: [a]}\n", nil, "want a string"},
		{"alias", "a: &x " + k1 + "\nb: *x\n", nil, "invalid"},
		{"not YAML", "- [\n", nil, "parse YAML"},
	}
	for _, tt := range tests {
		got, err := ParseBlocklist([]byte(tt.in))
		checkParse(t, tt.name, got, err, tt.want, tt.err)
	}
}

// checkParse checks one case of a parse table: with wantErr, an error containing it; otherwise no error and want.
func checkParse[T any](t *testing.T, name string, got T, err error, want T, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: error %v, want one containing %q", name, err, wantErr)
		}
		return
	}
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", name, diff)
	}
}

func TestParseAllowlist(t *testing.T) {
	domains := []string{"ffmuc_welt", "ffwert_city"}
	tests := []struct {
		name, in string
		want     Allowlist
		err      string
	}{
		{"empty file", "", Allowlist{}, ""},
		{"one domain", "ffmuc_welt:\n  - " + k1 + "\n  - " + k2 + ": supernode 1\n",
			Allowlist{"ffmuc_welt": {k1: "", k2: "supernode 1"}}, ""},
		{"closed domain", "ffmuc_welt: []\nffwert_city:\n", Allowlist{"ffmuc_welt": {}, "ffwert_city": {}}, ""},
		{"unknown domain", "ffmuc_wetl:\n  - " + k1 + "\n", nil, `line 1: domain "ffmuc_wetl" is not configured`},
		{"keys not a list", "ffmuc_welt: " + k1 + "\n", nil, "want a list of keys"},
		{"invalid key", "ffmuc_welt:\n  - " + k1 + "\n  - nope\n", nil, "line 3"},
		{"list document", "- " + k1 + "\n", nil, "want a mapping of domains"},
		{"domain not a string", "[a]: []\n", nil, "domain must be a string"},
		{"name not a string", "ffmuc_welt:\n  - " + k1 + ": [x]\n", nil, "want a string"},
	}
	for _, tt := range tests {
		got, err := ParseAllowlist([]byte(tt.in), domains)
		checkParse(t, tt.name, got, err, tt.want, tt.err)
	}
}

// render writes a list in the documented form, so that fuzzing can check that whatever parses reads back alike.
func render(m map[string]string, indent string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s- %s: %q\n", indent, k, m[k])
	}
	return b.String()
}

func FuzzParseBlocklist(f *testing.F) {
	f.Add([]byte("- " + k1 + "\n- " + k2 + ": stolen\n"))
	f.Add([]byte(k1 + ": {reason: spam}\n"))
	f.Add([]byte("- [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		bl, err := ParseBlocklist(data)
		if err != nil {
			if bl != nil {
				t.Fatalf("error %v with a list", err)
			}
			return
		}
		for k := range bl {
			if err := wire.ValidateKey(k); err != nil {
				t.Fatalf("accepted key %q: %v", k, err)
			}
		}
		again, err := ParseBlocklist([]byte(render(bl, "")))
		if err != nil {
			t.Fatalf("rendered list does not parse: %v", err)
		}
		if diff := cmp.Diff(bl, again); diff != "" {
			t.Fatalf("read back (-first +again):\n%s", diff)
		}
	})
}

func FuzzParseAllowlist(f *testing.F) {
	f.Add([]byte("ffmuc_welt:\n  - " + k1 + "\n  - " + k2 + ": supernode\n"))
	f.Add([]byte("ffmuc_welt: []\n"))
	f.Add([]byte("other: [x]\n"))
	domains := []string{"ffmuc_welt", "ffwert_city"}
	f.Fuzz(func(t *testing.T, data []byte) {
		al, err := ParseAllowlist(data, domains)
		if err != nil {
			if !errors.Is(err, errSyntax) && !strings.Contains(err.Error(), "parse YAML") {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		var b strings.Builder
		for d, keys := range al {
			if d != "ffmuc_welt" && d != "ffwert_city" {
				t.Fatalf("accepted domain %q", d)
			}
			for k := range keys {
				if err := wire.ValidateKey(k); err != nil {
					t.Fatalf("accepted key %q: %v", k, err)
				}
			}
			fmt.Fprintf(&b, "%s:\n%s", d, render(keys, "  "))
		}
		again, err := ParseAllowlist([]byte(b.String()), domains)
		if err != nil {
			t.Fatalf("rendered list does not parse: %v\n%s", err, b.String())
		}
		if diff := cmp.Diff(al, again); diff != "" {
			t.Fatalf("read back (-first +again):\n%s", diff)
		}
	})
}
