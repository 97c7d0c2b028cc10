package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// The faults of issue 15 that concern the embedded MQTT server, against the real wgkex-broker binary on
// 127.0.0.1 (no root needed): its TLS certificate renewed underneath it, and a client that sends a second
// CONNECT.

// brokerProcess is a running wgkex-broker binary whose stderr the test reads.
type brokerProcess struct {
	cmd    *exec.Cmd
	stderr *testenv.Logs
}

// runBroker writes the configuration yaml and runs the wgkex-broker binary with it at debug level, until the test
// ends (then SIGTERM). It returns once the REST API at httpAddr answers.
func runBroker(t *testing.T, dir, httpAddr, yaml string) *brokerProcess {
	t.Helper()
	host, port, _ := strings.Cut(httpAddr, ":")
	cfg := filepath.Join(dir, "wgkex.yaml")
	full := fmt.Sprintf("domains: [ffmuc_welt]\ndomain_prefixes: [ffmuc_]\nbroker_listen: {host: %q, port: %s}\n"+
		"log: {level: debug}\n%s", host, port, yaml)
	if err := os.WriteFile(cfg, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &brokerProcess{stderr: &testenv.Logs{}}
	b.cmd = exec.Command(binary(t, "wgkex-broker"), "--config", cfg)
	b.cmd.Stdout, b.cmd.Stderr = t.Output(), io.MultiWriter(b.stderr, t.Output())
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.stop(t) })
	testenv.Eventually(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", httpAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "the broker did not start: %s", testenv.Lazy(b.stderr.String))
	return b
}

// stop ends the broker with SIGTERM and waits for it; a second call does nothing.
func (b *brokerProcess) stop(t *testing.T) {
	if b.cmd.ProcessState != nil {
		return
	}
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- b.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-done
		t.Error("the broker did not stop within 10 s of SIGTERM")
	}
}

// count returns how many lines of stderr contain all of parts.
func (b *brokerProcess) count(parts ...string) int {
	n := 0
	for l := range strings.Lines(b.stderr.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			n++
		}
	}
	return n
}

// handshake makes a new TLS handshake with addr, trusting ca, and returns the certificate served.
func handshake(t *testing.T, addr string, ca *testenv.CA) *x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

// sameSizeKeyPair issues a certificate for 127.0.0.1 whose PEM files are exactly as long as those in certFile and
// keyFile (ECDSA signatures vary in length), so that it can be written over them unseen by the file watcher.
func sameSizeKeyPair(t *testing.T, ca *testenv.CA, certFile, keyFile string) tls.Certificate {
	t.Helper()
	dir := t.TempDir()
	want := [2]int64{fileSize(t, certFile), fileSize(t, keyFile)}
	for range 200 {
		c := ca.Server(t, "127.0.0.1")
		cf, kf := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
		testenv.WriteKeyPair(t, c, cf, kf)
		if [2]int64{fileSize(t, cf), fileSize(t, kf)} == want {
			return c
		}
	}
	t.Fatal("no certificate of the same size in 200 tries")
	return tls.Certificate{}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// overwriteUnseen writes content into path in place (same inode, same size) and puts its modification time back,
// so that the file watcher, which compares size, time and inode, takes it for unchanged: only SIGHUP reads it.
func overwriteUnseen(t *testing.T, path string, content []byte) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(content)) != fi.Size() {
		t.Fatalf("%s: %d bytes, the file has %d", path, len(content), fi.Size())
	}
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
}

// TestFaultMQTTCertificateRenewed: the certificate of the broker's MQTT TLS listener is renewed under the
// running binary, first by replacing the files (certbot), then in a way the file watcher cannot see, followed by
// SIGHUP. Each time a new TLS handshake gets the new certificate, and a worker connected over TLS before stays
// connected (its QoS 1 publish is acknowledged on the same connection). A broken file is an ERROR naming it and
// keeps the certificate in force. The certificate used to be read once, at start.
func TestFaultMQTTCertificateRenewed(t *testing.T) {
	dir := t.TempDir()
	ca := testenv.NewCA(t, "fault test CA")
	certFile, keyFile := filepath.Join(dir, "mqtt.pem"), filepath.Join(dir, "mqtt.key")
	first := ca.Server(t, "127.0.0.1")
	testenv.WriteKeyPair(t, first, certFile, keyFile)
	mqttAddr := testenv.FreeAddr(t)
	b := runBroker(t, dir, testenv.FreeAddr(t), fmt.Sprintf(`workers:
  gw1: {password_hash: %q}
broker:
  state_file: %s
  mqtt_listeners: [{address: %q, cert_file: %s, key_file: %s}]
`, testenv.BcryptHash(t, "gw1-secret"), filepath.Join(dir, "broker.db"), mqttAddr, certFile, keyFile))
	if got := handshake(t, mqttAddr, ca); !got.Equal(first.Leaf) {
		t.Fatalf("serial %v served at start, want %v", got.SerialNumber, first.Leaf.SerialNumber)
	}
	tlsDial := func(network, addr string) (net.Conn, error) {
		return tls.Dial(network, addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	}
	gw, err := testenv.Dial(mqttAddr, "gw1", testenv.ClientOptions{Dial: tlsDial, Username: "gw1", Password: "gw1-secret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Close)
	stillConnected := func(when string) {
		t.Helper()
		if err := gw.TryPublish(wire.StatusTopic("gw1"), "1", 1, true); err != nil {
			t.Fatalf("%s: the worker connected before lost its connection: %v", when, err)
		}
	}

	// Renewal by replacing the files.
	renewed := ca.Server(t, "127.0.0.1")
	testenv.WriteKeyPair(t, renewed, certFile, keyFile)
	testenv.Eventually(t, 5*time.Second, func() bool { return handshake(t, mqttAddr, ca).Equal(renewed.Leaf) },
		"the replaced certificate is not served")
	stillConnected("after the files were replaced")

	// A broken certificate file: an ERROR naming it, the certificate in force stays.
	good, _ := os.ReadFile(certFile)
	errs := b.count("level=ERROR", "certificate not reloaded", certFile) // a renewal read half-written counts too
	testenv.ReplaceFile(t, certFile, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
	testenv.Eventually(t, 5*time.Second, func() bool {
		return b.count("level=ERROR", "certificate not reloaded", certFile) > errs
	}, "the broken file is not an ERROR naming it")
	if got := handshake(t, mqttAddr, ca); !got.Equal(renewed.Leaf) {
		t.Errorf("after a broken file serial %v is served, want %v", got.SerialNumber, renewed.Leaf.SerialNumber)
	}
	loaded := b.count("certificate loaded", certFile)
	testenv.ReplaceFile(t, certFile, string(good))
	testenv.Eventually(t, 5*time.Second, func() bool { return b.count("certificate loaded", certFile) > loaded },
		"the good file back is not read")

	// Renewal the watcher cannot see (same inode, size and time), then SIGHUP.
	hup := sameSizeKeyPair(t, ca, certFile, keyFile)
	src := t.TempDir()
	testenv.WriteKeyPair(t, hup, filepath.Join(src, "c"), filepath.Join(src, "k"))
	for _, f := range [][2]string{{filepath.Join(src, "k"), keyFile}, {filepath.Join(src, "c"), certFile}} {
		content, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		overwriteUnseen(t, f[1], content)
	}
	reloads := b.count("configuration reloaded")
	if err := b.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// The broker reads the certificates before the configuration: once that is reloaded, the certificate is too.
	testenv.Eventually(t, 5*time.Second, func() bool { return b.count("configuration reloaded") > reloads },
		"SIGHUP did not reload the configuration")
	if got := handshake(t, mqttAddr, ca); !got.Equal(hup.Leaf) {
		t.Errorf("after SIGHUP serial %v is served, want %v", got.SerialNumber, hup.Leaf.SerialNumber)
	}
	stillConnected("after SIGHUP")
}

// TestFaultMQTTSecondConnectLogsNoSecret: a worker logs in and sends a second CONNECT on the same connection,
// which mochi logged with the whole packet, password included. The broker at debug level closes the connection
// and logs the violation, and neither password appears on its stderr in any form (text, fmt's byte list,
// base64, hex).
func TestFaultMQTTSecondConnectLogsNoSecret(t *testing.T) {
	const first, second = "first-Pa55w0rd-xyzzy", "second-S3cr3t-plugh"
	dir := t.TempDir()
	mqttAddr := testenv.FreeAddr(t)
	b := runBroker(t, dir, testenv.FreeAddr(t), fmt.Sprintf(`workers:
  gw1: {password_hash: %q}
broker:
  state_file: %s
  mqtt_listeners: [{address: %q}]
`, testenv.BcryptHash(t, first), filepath.Join(dir, "broker.db"), mqttAddr))
	c, err := net.Dial("tcp", mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(testenv.ConnectPacket(t, 4, "gw1", "gw1", first)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if typ, err := r.ReadByte(); err != nil || typ>>4 != packets.Connack {
		t.Fatalf("first CONNECT answered with %#x: %v", typ, err)
	}
	if _, err := c.Write(testenv.ConnectPacket(t, 4, "gw1", "gw1", second)); err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the connection stayed open after a second CONNECT")
	}
	testenv.Eventually(t, 5*time.Second, func() bool { return b.count("second connect packet") > 0 },
		"the second CONNECT was not logged")
	b.stop(t) // everything the broker logs is on stderr now
	logs := b.stderr.String()
	for _, pw := range []string{first, second} {
		dec := strings.Trim(fmt.Sprint([]byte(pw)), "[]")
		for _, enc := range []string{pw, dec, base64.StdEncoding.EncodeToString([]byte(pw)), hex.EncodeToString([]byte(pw))} {
			if i := strings.Index(logs, enc); i >= 0 {
				line := logs[strings.LastIndex(logs[:i], "\n")+1:]
				line, _, _ = strings.Cut(line, "\n")
				t.Errorf("stderr carries the password %q as %q:\n%s", pw, enc, line)
			}
		}
	}
}
