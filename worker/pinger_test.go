package worker

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

var _ paho.Pinger = pinger{}

// TestPingerBusyLink: while packets keep arriving, a PINGRESP stuck behind them does not end the connection
// (paho's DefaultPinger ended it one keepalive after its PINGREQ: a worker reading a burst of 20,000 keys dropped
// its link and the keys still queued for it); once nothing arrives for a keepalive after a PINGREQ, it does.
func TestPingerBusyLink(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	go func() { _, _ = io.Copy(io.Discard, server) }() // the server reads the PINGREQs and never answers
	p := newPinger()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, client, 1) }()

	busy := time.After(3 * time.Second) // three keepalives of a server sending what it queued before the PINGRESP
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for receiving := true; receiving; {
		select {
		case err := <-done:
			t.Fatalf("the pinger ended a connection that delivers packets: %v", err)
		case <-tick.C:
			p.PacketReceived()
		case <-busy:
			receiving = false
		}
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("Run = nil, want a PINGRESP timeout")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the pinger keeps a silent connection")
	}
}
