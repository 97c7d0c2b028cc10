package worker

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// TestHealthAnswers: the answer comes from the gateway itself (no MQTT session here at all): 200 while the device
// is readable, 503 when it is not and while the worker drains. Every node on the gateway asks once a minute, so
// the device is read at most once per healthFresh, whatever the number of requests (a read lists every peer
// under the dataplane's lock; 20,000 nodes asking, each answer a read, kept the lock from the loop).
func TestHealthAnswers(t *testing.T) {
	fake := dataplane.NewFake(welt)
	var reads atomic.Int64
	var broken atomic.Bool
	fake.Fail = func(step, _ string) error {
		if step != "device" {
			return nil
		}
		reads.Add(1)
		if broken.Load() {
			return errors.New("netlink: no such device")
		}
		return nil
	}
	a, c := newAgent(t, fake, nil)
	var draining atomic.Bool
	h := &healthServer{a: a, draining: draining.Load}
	get := func() int {
		rec := httptest.NewRecorder()
		h.serve(rec, welt)
		return rec.Code
	}
	var got []int
	for range 1000 {
		got = append(got, get())
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("%d device reads for 1000 requests within %v, want 1", n, healthFresh)
	}
	broken.Store(true)
	c.advance(healthFresh)
	got = append(got[:1], get(), get())
	draining.Store(true)
	broken.Store(false)
	c.advance(healthFresh)
	got = append(got, get())
	want := []int{http.StatusOK, http.StatusServiceUnavailable, http.StatusServiceUnavailable, http.StatusServiceUnavailable}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("answers (-want +got):\n%s", diff)
	}
	if n := reads.Load(); n != 2 {
		t.Errorf("%d device reads, want 2", n)
	}
}
