package worker

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freifunkMUC/wgkex-go/internal/testenv"
	"github.com/freifunkMUC/wgkex-go/worker/dataplane"
)

// stallServer is an MQTT 5 server that accepts every client and subscription and acknowledges QoS 1 publishes
// while ack is set; after that it keeps them unanswered (a server that hangs) and signals each on stalled.
type stallServer struct {
	ln      net.Listener
	ack     atomic.Bool
	stalled chan string
	wg      sync.WaitGroup
}

func newStallServer(t *testing.T) *stallServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &stallServer{ln: ln, stalled: make(chan string, 100)}
	s.ack.Store(true)
	var mu sync.Mutex
	var conns []net.Conn
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			s.wg.Go(func() { s.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *stallServer) serve(c net.Conn) {
	defer c.Close()
	for {
		p, err := packets.ReadPacket(c)
		if err != nil {
			return
		}
		var answer *packets.ControlPacket
		switch in := p.Content.(type) {
		case *packets.Connect:
			answer = packets.NewControlPacket(packets.CONNACK)
		case *packets.Subscribe:
			answer = packets.NewControlPacket(packets.SUBACK)
			sa := answer.Content.(*packets.Suback)
			sa.PacketID, sa.Reasons = in.PacketID, make([]byte, len(in.Subscriptions))
			for i := range sa.Reasons {
				sa.Reasons[i] = 1
			}
		case *packets.Publish:
			if in.QoS == 0 {
				continue
			}
			if !s.ack.Load() {
				select {
				case s.stalled <- in.Topic:
				default:
				}
				continue
			}
			answer = packets.NewControlPacket(packets.PUBACK)
			answer.Content.(*packets.Puback).PacketID = in.PacketID
		case *packets.Pingreq:
			answer = packets.NewControlPacket(packets.PINGRESP)
		case *packets.Disconnect:
			return
		default:
			continue
		}
		if _, err := answer.WriteTo(c); err != nil {
			return
		}
	}
}

// TestStopEndsRound: a readiness round waiting for the acknowledgement of a server that hangs ends when the worker
// stops, instead of holding up the shutdown until paho gives up on it.
func TestStopEndsRound(t *testing.T) {
	nord := dataplane.LinkFor("nord")
	fake := dataplane.NewFake(welt, nord)
	a, _ := newAgent(t, fake, nil)
	srv := newStallServer(t)
	host, port, _ := net.SplitHostPort(srv.ln.Addr().String())
	p, _ := strconv.Atoi(port)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() {
		ran <- a.Run(ctx, RunOptions{MQTT: MQTT{BrokerURL: host, BrokerPort: p, Keepalive: 60},
			MetricsInterval: time.Hour, CleanupInterval: time.Hour, ReadyInterval: 20 * time.Millisecond})
	}()
	testenv.Eventually(t, 10*time.Second, func() bool { return testutil.ToFloat64(a.m.mqttUp) == 1 }, "the session did not come up")

	// The server hangs; nord's interfaces go: the next round's withdrawal of nord waits for its acknowledgement.
	srv.ack.Store(false)
	fake.RemoveLink(nord)
	select {
	case <-srv.stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("no round published the withdrawal")
	}
	start := time.Now()
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return")
	}
	// The farewell waits its CloseTimeout (3 s) for the hung server; paho would wait 10 s for the round's publish.
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("the worker took %v to stop: the round's publish held up the shutdown", d)
	}
}
