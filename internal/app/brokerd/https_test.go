package brokerd

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/freifunkMUC/wgkex-go/internal/config"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// TestHTTPSListener starts the broker with broker_listen.tls_port and registers a key over HTTPS. The port is
// fixed (443), so the test takes a loopback address of its own (127.x.y.z) instead of a port that might be taken.
func TestHTTPSListener(t *testing.T) {
	testenv.RequireRoot(t) // port 443
	dir, host, certFile, keyFile, ca := httpsHost(t)
	d := startDaemon(t, httpsConfig(t, dir, host, certFile, keyFile, ""))
	if got, want := d.HTTPSAddr(), host+":443"; got != want {
		t.Fatalf("HTTPSAddr = %q, want %q", got, want)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	resp, err := c.Post("https://"+host+"/api/v1/wg/key/exchange", "application/x-www-form-urlencoded",
		strings.NewReader(`{"domain":"ffmuc_welt","public_key":"`+nodeKey+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != `{"Message":"OK"}`+"\n" {
		t.Errorf("v1 over HTTPS: %d %q", resp.StatusCode, b)
	}
	if _, err := d.Store.Key("ffmuc_welt", nodeKey); err != nil {
		t.Errorf("key registered over HTTPS not stored: %v", err)
	}
}

// TestStartFailureClosesHTTPS makes Start fail after the HTTPS listener is up (the administration socket's path is
// a regular file): the listener must be closed and its goroutines gone (goleak in TestMain checks the latter).
func TestStartFailureClosesHTTPS(t *testing.T) {
	testenv.RequireRoot(t) // port 443
	dir, host, certFile, keyFile, _ := httpsHost(t)
	adminPath := filepath.Join(dir, "admin.sock")
	if err := os.WriteFile(adminPath, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := httpsConfig(t, dir, host, certFile, keyFile, "admin_socket: "+adminPath)
	if d, err := Start(cfg, testenv.Logger(t)); err == nil {
		d.Shutdown(context.Background())
		t.Fatal("Start succeeded with a regular file at the administration socket's path")
	}
	if c, err := net.Dial("tcp", net.JoinHostPort(host, "443")); err == nil {
		c.Close()
		t.Error("HTTPS listener still accepts connections after Start failed")
	}
}

// httpsConfig is the configuration of a broker serving HTTPS on host:443 with the files from httpsHost; extra is
// one more line of its broker section.
func httpsConfig(t *testing.T, dir, host, certFile, keyFile, extra string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(fmt.Sprintf(`
domains: [ffmuc_welt]
domain_prefixes: [ffmuc_]
broker_listen: {host: %q, port: 0, tls_port: 443, cert_file: %q, key_file: %q}
broker:
  state_file: %s
  mqtt_listeners: [{address: "127.0.0.1:0"}]
  %s
`, host, certFile, keyFile, filepath.Join(dir, "state.db"), extra)), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// httpsHost picks a loopback address of the test's own (127.x.y.z: port 443 is fixed) and writes a certificate
// for it, signed by a new CA, into a new directory.
func httpsHost(t *testing.T) (dir, host, certFile, keyFile string, ca *testenv.CA) {
	t.Helper()
	dir = t.TempDir()
	host = fmt.Sprintf("127.%d.%d.%d", 1+mrand.IntN(250), mrand.IntN(256), 1+mrand.IntN(250))
	certFile, keyFile = filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	ca = testenv.NewCA(t, "brokerd test CA")
	testenv.WriteKeyPair(t, ca.Server(t, host), certFile, keyFile)
	return dir, host, certFile, keyFile, ca
}
