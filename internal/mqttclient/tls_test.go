package mqttclient

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freifunkMUC/wgkex-go/internal/platform/tlsfiles"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// pki writes a CA, a server certificate for mqtt.test and 127.0.0.1, and a client certificate for CN broker-a
// into dir, as PEM files ca.pem, server.pem/.key, client.pem/.key.
func pki(t *testing.T, dir string) {
	t.Helper()
	ca := testenv.NewCA(t, "test ca")
	ca.WriteCert(t, filepath.Join(dir, "ca.pem"))
	testenv.WriteKeyPair(t, ca.Server(t, "mqtt.test", "127.0.0.1"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	testenv.WriteKeyPair(t, ca.Client(t, "broker-a"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key"))
}

// TestClientTLS: against Mosquitto requiring a client certificate, the client connects over TLS with the CA, the
// server name and its certificate; without the certificate, or trusting the system roots only, it never does.
func TestClientTLS(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	pki(t, dir)
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Extra: "cafile " + dir + "/ca.pem\ncertfile " + dir + "/server.pem\nkeyfile " + dir +
		"/server.key\nrequire_certificate true\nuse_identity_as_username true\n"}).Addr
	_, port, _ := net.SplitHostPort(addr)
	good := Server{Addr: "tls://127.0.0.1:" + port, Files: tlsfiles.Client{CAFile: dir + "/ca.pem", ServerName: "mqtt.test",
		CertFile: dir + "/client.pem", KeyFile: dir + "/client.key"}, ClientID: "broker-a", Keepalive: 5}
	in := &inbox{}
	c, err := New(testenv.Logger(t), Options{Server: good})
	if err != nil {
		t.Fatal(err)
	}
	c.Handle("test/#", in.handle)
	if err := c.Serve(); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testenv.Eventually(t, 10*time.Second, c.Connected, "no TLS connection with a client certificate")

	noCert, noCA := good, good
	noCert.Files.CertFile, noCert.Files.KeyFile, noCert.ClientID = "", "", "no-cert"
	noCA.Files.CAFile, noCA.ClientID = "", "no-ca"
	// Without a certificate, TLS 1.3 completes the client's side of the handshake before the server checks it: the
	// server's "certificate required" alert can lose the race against its closing the connection, which the client
	// then sees as a reset. Either way the server refused it; the trust failure is the client's own and certain.
	for _, tc := range []struct {
		s    Server
		want []string
	}{{noCert, []string{"certificate required", "connection reset by peer"}}, {noCA, []string{"certificate signed by unknown authority"}}} {
		log, logs := testenv.CaptureLogger(t)
		b, err := New(log, Options{Server: tc.s})
		if err != nil {
			t.Fatal(err)
		}
		b.Serve()
		defer b.Close()
		testenv.Eventually(t, 20*time.Second, func() bool {
			return slices.ContainsFunc(tc.want, func(w string) bool { return strings.Contains(logs.String(), w) })
		}, "%s: none of %q in %s", tc.s.ClientID, tc.want, logs)
		if b.Connected() {
			t.Errorf("%s connected", tc.s.ClientID)
		}
	}
}
