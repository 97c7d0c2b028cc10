package mqttclient

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

// TestCloseEndsSync: Close during a round of Sync in flight releases its waiters, and once Close returns, no
// goroutine of the client is left (the round's publish, its timer's callback, the connection manager); a Sync
// after Close returns at once.
func TestCloseEndsSync(t *testing.T) {
	addr := testenv.Mosquitto(t, testenv.MosquittoOptions{Users: map[string]string{"a": "pa"}, ACL: "pattern readwrite test/+/msg\n"}).Addr
	before := goleak.IgnoreCurrent() // Mosquitto's waiter lives until the test's cleanup
	a := dial(t, addr, "a", "pa", nil)
	if err := a.Sync(context.Background()); err != nil { // the denied token times out: the client is failing
		t.Fatalf("first Sync: %v", err)
	}
	if err := a.Sync(context.Background()); !errors.Is(err, ErrSyncFailing) { // a round goes on in the background
		t.Fatalf("Sync with a denied topic: %v, want ErrSyncFailing", err)
	}
	waiting := make(chan error, 1)
	go func() { waiting <- a.Sync(context.Background()) }()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waiting:
	case <-time.After(5 * time.Second):
		t.Fatal("Sync still waits after Close")
	}
	start := time.Now()
	a.Sync(context.Background())
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Sync after Close took %v", d)
	}
	goleak.VerifyNone(t, before)
}
