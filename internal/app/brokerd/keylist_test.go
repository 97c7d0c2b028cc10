package brokerd

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// TestBlocklistWhileRunning: a key added to the blocklist while the broker runs is refused with the generic 400 at
// its next exchange and never reaches MQTT (a real subscriber on the embedded server); a broken file keeps the
// list in force; the allowlist closes a domain to the keys it does not list.
func TestBlocklistWhileRunning(t *testing.T) {
	dir := t.TempDir()
	block, allow := filepath.Join(dir, "blocklist.yaml"), filepath.Join(dir, "allowlist.yaml")
	testenv.ReplaceFile(t, block, "# nothing blocked yet\n")
	key := func() string { return testenv.NewKey(t).PublicKey().String() }
	good, bad, probe, never, later := key(), key(), key(), key(), key()
	testenv.ReplaceFile(t, allow, "ffwert_city:\n  - "+good+": supernode\n")
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
domains: [ffmuc_welt, ffwert_city]
domain_prefixes: [ffmuc_, ffwert_]
broker_listen: {host: 127.0.0.1, port: 0, rate_limit: 0}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
  blocklist_file: %s
  allowlist_file: %s
`, filepath.Join(dir, "state.db"), block, allow)), nil)
	if err != nil {
		t.Fatal(err)
	}
	log, logs := testenv.CaptureLogger(t)
	d, err := Start(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Shutdown(context.Background()) }) // t.Context() is done before cleanups run
	sub := testenv.Connect(t, d.MQTTAddr(), "subscriber", testenv.ClientOptions{})
	sub.Subscribe(t, "wireguard/#")
	reg := func(domain, key string) (int, string) {
		return post(t, d, "v1", `{"domain":"`+domain+`","public_key":"`+key+`"}`)
	}
	const generic = `{"error":{"message":"An internal error has occurred. Please try again later."}}` + "\n"

	if code, _ := reg("ffmuc_welt", bad); code != 200 {
		t.Fatalf("key before it is blocked: %d", code)
	}
	testenv.ReplaceFile(t, block, "- "+probe+"\n- "+bad+": stolen router, ticket 123\n- "+never+"\n")
	// probe is blocked by the same file write: once it is refused, the new list is in force.
	testenv.Eventually(t, 5*time.Second, func() bool { code, _ := reg("ffmuc_welt", probe); return code == 400 }, "blocklist not reloaded")
	if code, body := reg("ffmuc_welt", bad); code != 400 || body != generic {
		t.Errorf("blocked key: %d %q, want 400 with the generic message", code, body)
	}
	if !strings.Contains(logs.String(), "stolen router") {
		t.Errorf("the reason is not logged")
	}
	if code, _ := reg("ffmuc_welt", never); code != 400 {
		t.Errorf("blocked key: %d, want 400", code)
	}
	if rec, err := d.Store.Key("ffmuc_welt", never); err == nil {
		t.Errorf("blocked key stored: %+v", rec)
	}

	testenv.ReplaceFile(t, block, "- "+bad+"\n- not a key\n")
	testenv.Eventually(t, 5*time.Second, func() bool { return strings.Contains(logs.String(), "blocklist not reloaded") }, "broken blocklist not noticed")
	if code, _ := reg("ffmuc_welt", bad); code != 400 {
		t.Errorf("blocked key after a broken file: %d, want 400", code)
	}
	if code, _ := reg("ffwert_city", later); code != 400 {
		t.Errorf("key not on the allowlist of ffwert_city: %d, want 400", code)
	}
	if code, _ := reg("ffwert_city", good); code != 200 {
		t.Errorf("key on the allowlist: %d, want 200", code)
	}
	if code, _ := reg("ffmuc_welt", later); code != 200 {
		t.Errorf("key in a domain the allowlist does not restrict: %d, want 200", code)
	}
	// Messages from one publisher arrive in order: once later's arrives, every earlier publish has.
	testenv.Eventually(t, 5*time.Second, func() bool {
		for _, m := range sub.Messages() {
			if m.Topic == wire.KeyTopic("ffmuc_welt") && m.Payload == later {
				return true
			}
		}
		return false
	}, "last key not published")
	var got []string
	for _, m := range sub.Messages() {
		if m.Payload != probe { // published until the list was in force
			got = append(got, m.Topic+" "+m.Payload)
		}
	}
	want := []string{
		"wireguard/ffmuc_welt/all " + bad, // before it was blocked
		"wireguard/ffwert_city/all " + good,
		"wireguard/ffmuc_welt/all " + later,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("published:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
