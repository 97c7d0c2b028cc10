package keylist

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

func refused(f *Filter, domain, key string) bool {
	_, no := f.Refuse(domain, key)
	return no
}

func TestRefuse(t *testing.T) {
	dir := t.TempDir()
	bl, al := filepath.Join(dir, "block.yaml"), filepath.Join(dir, "allow.yaml")
	testenv.ReplaceFile(t, bl, "- "+k1+": stolen\n")
	testenv.ReplaceFile(t, al, "ffmuc_welt:\n  - "+k2+"\n")
	f, err := Open(Options{BlocklistFile: bl, AllowlistFile: al, Domains: []string{"ffmuc_welt", "ffwert_city"}}, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tests := []struct {
		domain, key string
		refused     bool
		reason      string
	}{
		{"ffmuc_welt", k1, true, "is on the blocklist: stolen"},
		{"ffwert_city", k1, true, "is on the blocklist: stolen"}, // the blocklist holds for every domain
		{"ffmuc_welt", k2, false, ""},
		{"ffwert_city", k2, false, ""}, // not restricted: not in the allowlist file
		{"ffmuc_welt", testenv.NewKey(t).PublicKey().String(), true, "is not on the allowlist of ffmuc_welt"},
	}
	for _, tt := range tests {
		reason, no := f.Refuse(tt.domain, tt.key)
		if no != tt.refused || reason != tt.reason {
			t.Errorf("Refuse(%s, %s) = %q, %v; want %q, %v", tt.domain, tt.key, reason, no, tt.reason, tt.refused)
		}
	}
}

func TestOpenRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	testenv.ReplaceFile(t, bad, "- nope\n")
	for _, o := range []Options{
		{BlocklistFile: filepath.Join(dir, "missing.yaml")},
		{AllowlistFile: filepath.Join(dir, "missing.yaml")},
		{BlocklistFile: bad},
		{AllowlistFile: bad},
	} {
		if _, err := Open(o, testenv.Logger(t)); err == nil {
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
	f, err := Open(Options{}, testenv.Logger(t))
	if err != nil || refused(f, "ffmuc_welt", k1) {
		t.Errorf("without lists: %v, refused %v", err, refused(f, "ffmuc_welt", k1))
	}
}

// TestReload changes the files while Run watches them: a new key is blocked, a broken file or a deleted one keeps
// the previous list, a fixed file is read again.
func TestReload(t *testing.T) {
	for _, interval := range []time.Duration{0, 20 * time.Millisecond} { // inotify; the stat fallback as well
		dir := t.TempDir()
		bl, al := filepath.Join(dir, "block.yaml"), filepath.Join(dir, "allow.yaml")
		testenv.ReplaceFile(t, bl, "- "+k1+"\n")
		testenv.ReplaceFile(t, al, "")
		f, err := Open(Options{BlocklistFile: bl, AllowlistFile: al, Domains: []string{"ffmuc_welt"}, Interval: interval}, testenv.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { f.Run(ctx); close(done) }()

		testenv.ReplaceFile(t, bl, "- "+k1+"\n- "+k2+": abuse\n")
		testenv.Eventually(t, 5*time.Second, func() bool { return refused(f, "ffmuc_welt", k2) }, "k2 not blocked after the file changed")

		testenv.ReplaceFile(t, bl, "- "+k1+"\n- broken\n")
		testenv.ReplaceFile(t, al, "ffmuc_welt: [nope]\n")
		// Then a valid change to the allowlist, to know that the broken versions were looked at and passed over.
		testenv.ReplaceFile(t, al, "ffmuc_welt: ["+k1+"]\nffwert_city: []\n") // ffwert_city is not configured: still broken
		testenv.ReplaceFile(t, al, "ffmuc_welt: ["+k1+"]\n")
		testenv.Eventually(t, 5*time.Second, func() bool { return refused(f, "ffmuc_welt", k2) && f.allow.Load() != nil && len(*f.allow.Load()) == 1 }, "allowlist not reloaded")
		if !refused(f, "ffmuc_welt", k2) || !refused(f, "ffmuc_welt", k1) {
			t.Errorf("a broken blocklist replaced the previous one")
		}

		os.Remove(bl)
		testenv.ReplaceFile(t, al, "ffmuc_welt: ["+k1+", "+k2+"]\n")
		testenv.Eventually(t, 5*time.Second, func() bool { _, ok := (*f.allow.Load())["ffmuc_welt"][k2]; return ok }, "allowlist not reloaded")
		if !refused(f, "ffmuc_welt", k1) {
			t.Errorf("a deleted blocklist emptied the list")
		}
		testenv.ReplaceFile(t, bl, "")
		testenv.Eventually(t, 5*time.Second, func() bool { return !refused(f, "ffmuc_welt", k1) && !refused(f, "ffmuc_welt", k2) }, "fixed blocklist not read")
		cancel()
		<-done
	}
}
