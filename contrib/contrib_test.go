package contrib

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// installedBin is where the units expect the binaries (make build, then install them there).
const installedBin = "/usr/local/bin/"

var units = []string{"wgkex-broker.service", "wgkex-broker-backup.service", "wgkex-broker-backup.timer",
	"wgkex-worker.service"}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// binaries builds wgkex-broker and wgkex-worker once per test run and returns their directory.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "wgkex-contrib-bin")
		if buildErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", buildDir+"/", "../cmd/wgkex-broker", "../cmd/wgkex-worker").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// installedUnits copies the units into a temporary directory with the binaries' path replaced by bin (systemd-analyze
// verify checks that each command is executable) and returns that directory.
func installedUnits(t *testing.T, bin string) string {
	t.Helper()
	dir := t.TempDir()
	for _, u := range units {
		b, err := os.ReadFile(filepath.Join("systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(b), installedBin, bin+"/")
		if err := os.WriteFile(filepath.Join(dir, u), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestSystemdVerify: systemd-analyze verify loads every unit (with the real binaries in ExecStart) and says
// nothing: an unknown key, a bad value or a command that does not exist is a warning, and a warning is a failure.
func TestSystemdVerify(t *testing.T) {
	analyze := testenv.Tool(t, "systemd-analyze")
	dir := installedUnits(t, binaries(t))
	args := []string{"verify", "--man=no"}
	for _, u := range units {
		args = append(args, filepath.Join(dir, u))
	}
	cmd := exec.Command(analyze, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestSystemdSecurity: systemd-analyze security rates each service's exposure (0 to 10) at most as README.md says.
func TestSystemdSecurity(t *testing.T) {
	analyze := testenv.Tool(t, "systemd-analyze")
	dir := installedUnits(t, binaries(t))
	for unit, max := range map[string]float64{"wgkex-broker.service": 1.2, "wgkex-broker-backup.service": 0.7,
		"wgkex-worker.service": 1.7} {
		cmd := exec.Command(analyze, "security", "--offline=yes", "--no-pager", unit)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", unit, err, out)
		}
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-analyze security %s: no exposure level in\n%s", unit, out)
		}
		got, _ := strconv.ParseFloat(string(m[1]), 64)
		t.Logf("%s: exposure %.1f", unit, got)
		if got > max {
			t.Errorf("%s: exposure %.1f, want at most %.1f\n%s", unit, got, max, out)
		}
	}
}

// unitSettings reads the [Service] settings of a unit file: each key with its values, in order.
func unitSettings(t *testing.T, name string) map[string][]string {
	t.Helper()
	f, err := os.Open(filepath.Join("systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	settings, section := map[string][]string{}, ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "["):
			section = l
		case section == "[Service]":
			k, v, _ := strings.Cut(l, "=")
			settings[k] = append(settings[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return settings
}

// TestUnitHardening: the settings the operations promise, read from the files: the broker holds no capability
// and writes only its state directory, the worker holds CAP_NET_ADMIN alone, neither runs as root, and the backup
// runs as the broker's user (the administration socket is its, mode 0600).
func TestUnitHardening(t *testing.T) {
	common := map[string][]string{
		"NoNewPrivileges": {"yes"}, "ProtectSystem": {"strict"}, "ProtectHome": {"yes"}, "PrivateTmp": {"yes"},
		"ProtectKernelTunables": {"yes"}, "ProtectKernelModules": {"yes"}, "ProtectKernelLogs": {"yes"},
		"ProtectControlGroups": {"yes"}, "MemoryDenyWriteExecute": {"yes"}, "LockPersonality": {"yes"},
		"SystemCallFilter": {"@system-service", "~@privileged @resources"},
	}
	for _, c := range []struct {
		unit string
		want map[string][]string
	}{
		{"wgkex-broker.service", map[string][]string{
			"User": {"wgkex"}, "StateDirectory": {"wgkex"}, "CapabilityBoundingSet": {""},
			"AmbientCapabilities": {""}, "RestrictAddressFamilies": {"AF_INET AF_INET6 AF_UNIX"},
			"ExecReload": {"/bin/kill -HUP $MAINPID"}, "Restart": {"on-failure"}, "LimitNOFILE": {"65536"},
			"ReadWritePaths": nil,
		}},
		{"wgkex-worker.service", map[string][]string{
			"User": {"wgkex-worker"}, "CapabilityBoundingSet": {"CAP_NET_ADMIN"},
			"AmbientCapabilities": {"CAP_NET_ADMIN"}, "RestrictAddressFamilies": {"AF_INET AF_INET6 AF_NETLINK AF_UNIX"},
			"Restart": {"on-failure"}, "ReadWritePaths": nil, "StateDirectory": nil,
		}},
		{"wgkex-broker-backup.service", map[string][]string{
			"User": {"wgkex"}, "CapabilityBoundingSet": {""}, "RestrictAddressFamilies": {"AF_UNIX"},
			"ReadWritePaths": {"/var/backups/wgkex"},
		}},
	} {
		got := unitSettings(t, c.unit)
		for k, v := range common {
			if diff := cmp.Diff(v, got[k]); diff != "" {
				t.Errorf("%s: %s= (-want +got):\n%s", c.unit, k, diff)
			}
		}
		for k, v := range c.want {
			if diff := cmp.Diff(v, got[k]); diff != "" {
				t.Errorf("%s: %s= (-want +got):\n%s", c.unit, k, diff)
			}
		}
	}
}

// TestSysusersTmpfiles: systemd-sysusers creates the units' users in an empty root, and systemd-tmpfiles the
// backup directory there, owned by the broker's user, mode 0700.
func TestSysusersTmpfiles(t *testing.T) {
	sysusers, tmpfiles := testenv.Tool(t, "systemd-sysusers"), testenv.Tool(t, "systemd-tmpfiles")
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf, _ := filepath.Abs("systemd/wgkex.sysusers")
	if out, err := exec.Command(sysusers, "--root="+root, conf).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	uids := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(passwd)), "\n") {
		f := strings.Split(l, ":")
		uids[f[0]] = f[2]
	}
	if uids["wgkex"] == "" || uids["wgkex-worker"] == "" {
		t.Fatalf("users wgkex and wgkex-worker not both created:\n%s", passwd)
	}
	conf, _ = filepath.Abs("systemd/wgkex.tmpfiles")
	if out, err := exec.Command(tmpfiles, "--root="+root, "--create", conf).CombinedOutput(); err != nil {
		t.Fatalf("systemd-tmpfiles: %v\n%s", err, out)
	}
	out, err := exec.Command("stat", "-c", "%a %u", filepath.Join(root, "var/backups/wgkex")).CombinedOutput()
	if err != nil {
		t.Fatalf("stat: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "700 "+uids["wgkex"]; got != want {
		t.Errorf("/var/backups/wgkex: mode and owner %q, want %q", got, want)
	}
}

// command returns the argument vector of a unit's command line as systemd makes it for the few forms the units
// use: words split at spaces, single quotes around one word, %% for % and $$ for $.
func command(t *testing.T, line string) []string {
	t.Helper()
	var args []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		var word string
		if line[0] == '\'' {
			end := strings.IndexByte(line[1:], '\'')
			if end < 0 {
				t.Fatalf("unterminated quote in %q", line)
			}
			word, line = line[1:end+1], line[end+2:]
		} else {
			word, line, _ = strings.Cut(line, " ")
		}
		args = append(args, strings.NewReplacer("%%", "%", "$$", "$").Replace(word))
	}
	return args
}

// TestBackupUnitCommands runs wgkex-broker-backup.service's commands as written (paths moved into a temporary
// directory) against the real broker: a checked backup named by the date lands in the backup directory, and only
// backups older than 14 days are deleted.
func TestBackupUnitCommands(t *testing.T) {
	bin, dir := binaries(t), t.TempDir()
	backups := filepath.Join(dir, "backups")
	if err := os.Mkdir(backups, 0o700); err != nil {
		t.Fatal(err)
	}
	state, cfg := filepath.Join(dir, "wgkex.db"), filepath.Join(dir, "wgkex.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
broker_listen: {host: 127.0.0.1, port: 0}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
`, state)), 0o600); err != nil {
		t.Fatal(err)
	}
	broker := exec.Command(filepath.Join(bin, "wgkex-broker"), "--config", cfg)
	broker.Stdout, broker.Stderr = t.Output(), t.Output()
	if err := broker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Process.Kill(); broker.Wait() })
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, err := os.Stat(state + ".sock")
		return err == nil
	}, "the broker did not open its administration socket %s.sock", state)

	old, recent := filepath.Join(backups, "wgkex-20000101-000000.db"), filepath.Join(backups, "wgkex-20000102-000000.db")
	for f, age := range map[string]time.Duration{old: 15 * 24 * time.Hour, recent: 13 * 24 * time.Hour} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(f, time.Now().Add(-age), time.Now().Add(-age)); err != nil {
			t.Fatal(err)
		}
	}
	paths := strings.NewReplacer(installedBin, bin+"/", "/etc/wgkex.yaml", cfg, "/var/backups/wgkex", backups)
	s := unitSettings(t, "wgkex-broker-backup.service")
	for _, key := range []string{"ExecStart", "ExecStartPost"} {
		if len(s[key]) != 1 {
			t.Fatalf("%s= %q, want one command", key, s[key])
		}
		args := command(t, paths.Replace(s[key][0]))
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		t.Logf("%s: %q\n%s", key, args, out)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if key == "ExecStart" && !strings.Contains(string(out), "checked") {
			t.Errorf("ExecStart: the backup was not checked")
		}
	}
	entries, err := os.ReadDir(backups)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := regexp.MustCompile(`^\[wgkex-20000102-000000\.db wgkex-\d{8}-\d{6}\.db\]$`)
	if got := fmt.Sprint(names); !want.MatchString(got) {
		t.Errorf("backup directory holds %s, want the 13-day-old backup and a new one (%s)", got, want)
	}
}

// TestPrometheusRules: promtool accepts the alert rules and their unit tests pass.
func TestPrometheusRules(t *testing.T) {
	promtool := testenv.Tool(t, "promtool")
	for _, args := range [][]string{{"check", "rules", "wgkex.rules.yml"}, {"test", "rules", "wgkex.rules.test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
