package main

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

func TestVNI(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"vni", "ffmuc_welt"}, &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "2281932\n" {
		t.Errorf("vni ffmuc_welt = %q, want 2281932", out.String())
	}
	if err := run(t.Context(), []string{"vni"}, &out); err == nil {
		t.Error("vni without a seed: want error")
	}
}

// TestServeMetrics: GET /metrics answers with the registry's metrics in the text format; other paths are 404.
func TestServeMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "wgkex_worker_test_total", Help: "A test counter."})
	reg.MustRegister(c)
	c.Add(3)
	addr, stop, err := serveMetrics("127.0.0.1:0", reg, testenv.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "wgkex_worker_test_total 3") {
		t.Errorf("GET /metrics: %d\n%s", resp.StatusCode, body)
	}
	resp, err = http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET /: %d, want 404", resp.StatusCode)
	}
}
