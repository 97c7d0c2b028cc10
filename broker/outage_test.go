package broker_test

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// outageEnv is a broker on an external MQTT server (Options.External) with a clock the test sets: an offline
// delay of 5 s and a reconnect grace of 60 s.
type outageEnv struct {
	*env
	clock time.Time
}

func newOutageEnv(t *testing.T, path string, external bool) *outageEnv {
	t.Helper()
	o := &outageEnv{clock: time.Unix(1_700_000_000, 0)}
	o.env = newEnv(t, path, func(opts *broker.Options) {
		opts.External = external
		opts.OfflineDelay = 5 * time.Second
		opts.ReconnectGrace = time.Minute
		opts.Clock = func() time.Time { return o.clock }
	})
	return o
}

// play runs one step of a script: "at 10: 0 gw04" (a status), "at 10: down", "at 10: up", "at 10: tick". The
// clock is set to the time given in seconds, which a tick passes to the broker as Run would.
func (o *outageEnv) play(t *testing.T, step string) {
	t.Helper()
	var at int
	var ev string
	if _, err := fmt.Sscanf(step, "at %d:", &at); err != nil {
		t.Fatalf("step %q: %v", step, err)
	}
	_, ev, _ = strings.Cut(step, ": ")
	o.clock = time.Unix(1_700_000_000+int64(at), 0)
	switch f := strings.Fields(ev); {
	case ev == "down":
		o.b.MQTTDown()
	case ev == "up":
		o.b.MQTTUp()
	case ev == "tick":
		o.b.Tick(o.clock)
	case len(f) == 2 && (f[0] == "0" || f[0] == "1"):
		o.b.HandleStatus(wire.StatusTopic(f[1]+".in.ffmuc.net"), []byte(f[0]))
	default:
		t.Fatalf("step %q: unknown event", step)
	}
}

// state prints what the broker knows: each worker online or offline, then the workers awaited, then the
// connection: "gw04 online, gw07 offline; awaiting gw04; connected".
func (o *outageEnv) state() string {
	var ws []string
	for _, w := range o.b.Workers() {
		s := "offline"
		if w.Online {
			s = "online"
		}
		ws = append(ws, strings.TrimSuffix(w.Name, ".in.ffmuc.net")+" "+s)
	}
	m := o.b.Status().MQTT
	var aw []string
	for _, n := range m.Awaiting {
		aw = append(aw, strings.TrimSuffix(n, ".in.ffmuc.net"))
	}
	conn := "connected"
	if !m.Connected {
		conn = "down"
	}
	return fmt.Sprintf("%s; awaiting %s; %s", strings.Join(ws, ", "), strings.Join(aw, " "), conn)
}

// offlinePublished lists the workers for which the broker published a retained status 0 (its grace expiry).
func (o *outageEnv) offlinePublished() []string {
	var out []string
	for _, m := range o.pub.take() {
		if name, ok := strings.CutSuffix(strings.Fields(m)[0], "/status"); ok && strings.Contains(m, "/status 0 retain=true") {
			out = append(out, strings.TrimSuffix(strings.TrimPrefix(name, "wireguard-worker/"), ".in.ffmuc.net"))
		}
	}
	sort.Strings(out)
	return out
}

// TestOutage plays scripts of worker statuses and connection changes against the broker's state machine. Every
// script starts with the connection up and gw04 and gw07 online.
func TestOutage(t *testing.T) {
	for _, tc := range []struct {
		name      string
		external  bool
		script    []string
		want      string
		published []string // retained 0s the broker published for workers it marked offline
	}{{
		name:     "a will takes effect after the offline delay",
		external: true,
		script:   []string{"at 10: 0 gw07", "at 14: tick"},
		want:     "gw04 online, gw07 online; awaiting ; connected",
	}, {
		name:     "a will has taken effect once the offline delay has passed",
		external: true,
		script:   []string{"at 10: 0 gw07", "at 14: tick", "at 15: tick"},
		want:     "gw04 online, gw07 offline; awaiting ; connected",
	}, {
		name:     "a will repeated does not postpone it",
		external: true,
		script:   []string{"at 10: 0 gw07", "at 13: 0 gw07", "at 15: tick"},
		want:     "gw04 online, gw07 offline; awaiting ; connected",
	}, {
		name:     "a status 1 within the delay withdraws the will",
		external: true,
		script:   []string{"at 10: 0 gw07", "at 12: 1 gw07", "at 20: tick"},
		want:     "gw04 online, gw07 online; awaiting ; connected",
	}, {
		name:     "with the embedded server a will takes effect at once",
		external: false,
		script:   []string{"at 10: 0 gw07"},
		want:     "gw04 online, gw07 offline; awaiting ; connected",
	}, {
		name:     "the wills a server sends before it closes the broker's connection are dropped; states stay frozen",
		external: true,
		script:   []string{"at 10: 0 gw04", "at 10: 0 gw07", "at 10: down", "at 100: tick", "at 1000: tick"},
		want:     "gw04 online, gw07 online; awaiting gw04 gw07; down",
	}, {
		name:     "after the reconnect a retained 0 does not flip a worker that then confirms",
		external: true,
		script: []string{"at 10: 0 gw04", "at 10: 0 gw07", "at 10: down", "at 70: up", "at 70: 0 gw04", "at 70: 0 gw07",
			"at 80: tick", "at 90: 1 gw04", "at 95: 1 gw07", "at 200: tick"},
		want: "gw04 online, gw07 online; awaiting ; connected",
	}, {
		name:     "a worker that has not confirmed stays online until the grace ends",
		external: true,
		script:   []string{"at 10: down", "at 70: up", "at 75: 1 gw04", "at 129: tick"},
		want:     "gw04 online, gw07 online; awaiting gw07; connected",
	}, {
		name:      "a worker that has not confirmed when the grace ends is marked offline",
		external:  true,
		script:    []string{"at 10: down", "at 70: up", "at 75: 1 gw04", "at 130: tick"},
		want:      "gw04 online, gw07 offline; awaiting ; connected",
		published: []string{"gw07"},
	}, {
		// 30 s of the 60 s grace used before the connection broke again: 30 s are left after the next reconnect.
		name:     "the grace stops while the connection is down again and goes on with the next reconnect",
		external: true,
		script:   []string{"at 10: down", "at 70: up", "at 100: down", "at 200: tick", "at 300: up", "at 329: tick"},
		want:     "gw04 online, gw07 online; awaiting gw04 gw07; connected",
	}, {
		name:      "a grace cut by flaps ends when its time connected is up",
		external:  true,
		script:    []string{"at 10: down", "at 70: up", "at 100: down", "at 200: tick", "at 300: up", "at 330: tick"},
		want:      "gw04 offline, gw07 offline; awaiting ; connected",
		published: []string{"gw04", "gw07"},
	}, {
		// A connection flapping faster than the grace used to start a whole grace at every reconnect: a gateway
		// that was gone stayed online for ever.
		name:     "a connection flapping faster than the grace does not keep a gone gateway online",
		external: true,
		script: []string{"at 10: down", "at 20: up", "at 45: down", "at 50: up", "at 75: down", "at 80: up",
			"at 89: tick", "at 90: tick"},
		want:      "gw04 offline, gw07 offline; awaiting ; connected",
		published: []string{"gw04", "gw07"},
	}, {
		name:     "a worker confirmed between flaps gets a whole grace after the next",
		external: true,
		script: []string{"at 10: down", "at 20: up", "at 30: 1 gw04", "at 75: down", "at 80: up", "at 90: tick",
			"at 139: tick"},
		want:      "gw04 online, gw07 offline; awaiting gw04; connected",
		published: []string{"gw07"},
	}, {
		name:     "a worker offline before the outage stays offline",
		external: true,
		script:   []string{"at 10: 0 gw07", "at 15: tick", "at 20: down", "at 80: up", "at 140: tick"},
		want:     "gw04 offline, gw07 offline; awaiting ; connected",
		// gw04 never confirmed
		published: []string{"gw04"},
	}, {
		name:     "a worker gone during the grace and back is online",
		external: true,
		script:   []string{"at 10: down", "at 70: up", "at 71: 1 gw04", "at 72: 1 gw07", "at 80: 0 gw07", "at 85: tick", "at 90: 1 gw07"},
		want:     "gw04 online, gw07 online; awaiting ; connected",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOutageEnv(t, "", tc.external)
			o.play(t, "at 0: up")
			o.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 10)
			o.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 1)
			o.pub.take()
			for _, step := range tc.script {
				o.play(t, step)
			}
			if got := o.state(); got != tc.want {
				t.Errorf("after %q:\n got %s\nwant %s", tc.script, got, tc.want)
			}
			if diff := cmp.Diff(tc.published, o.offlinePublished()); diff != "" {
				t.Errorf("offline status published (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOutageAnswers: while the connection is down, v2 answers with a gateway the broker knew online, records the
// key and publishes it (the MQTT side queues it); once the grace has marked gw07 offline, gw04 gets every node.
func TestOutageAnswers(t *testing.T) {
	o := newOutageEnv(t, "", true)
	o.play(t, "at 0: up")
	o.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 10)
	o.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 1)
	for _, step := range []string{"at 10: 0 gw04", "at 10: 0 gw07", "at 10: down"} {
		o.play(t, step)
	}
	d, err := o.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"})
	if err != nil || d.PublicKey != gwKey7 {
		t.Fatalf("v2 during the outage = %+v, %v; want gw07", d, err)
	}
	if _, err := o.st.Key("ffmuc_welt", key1); err != nil {
		t.Errorf("key answered during the outage not stored: %v", err)
	}
	for _, step := range []string{"at 70: up", "at 71: 1 gw04", "at 130: tick"} {
		o.play(t, step)
	}
	for range 3 {
		d, err := o.b.ExchangeV2(broker.Request{PublicKey: key1, Domain: "ffmuc_welt"})
		if err != nil || d.PublicKey != gwKey4 {
			t.Fatalf("v2 after the grace = %+v, %v; want gw04", d, err)
		}
	}
}

// TestOutageDeadlines: Tick returns when Run has to look again: the end of an offline delay, else the end of the
// grace; nothing while the connection is down.
func TestOutageDeadlines(t *testing.T) {
	o := newOutageEnv(t, "", true)
	o.play(t, "at 0: up")
	o.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 10)
	base := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		step string
		want int // seconds after base; -1: none
	}{
		{"at 1: tick", -1},
		{"at 10: 0 gw04", 15},
		{"at 10: down", -1},
		{"at 70: up", 130},
		{"at 80: 0 gw04", 130}, // ignored: gw04 has until the end of the grace
	} {
		o.play(t, tc.step)
		next, ok := o.b.Tick(o.clock)
		got := -1
		if ok {
			got = int(next.Sub(base) / time.Second)
		}
		if got != tc.want {
			t.Errorf("after %q next deadline at %d, want %d", tc.step, got, tc.want)
		}
	}
}

// TestOutageAfterStart: a broker restarted on an external server waits for its first connect before the grace
// for the workers stored online starts; a retained 0 then is the worker's own and takes effect after the delay.
func TestOutageAfterStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	o := newOutageEnv(t, path, true)
	o.play(t, "at 0: up")
	o.worker("gw04.in.ffmuc.net", "ffmuc_welt", gwKey4, 10)
	o.worker("gw07.in.ffmuc.net", "ffmuc_welt", gwKey7, 1)
	o.st.Close()

	o = newOutageEnv(t, path, true)
	for _, step := range []string{"at 500: tick"} {
		o.play(t, step)
	}
	if got, want := o.state(), "gw04 online, gw07 online; awaiting gw04 gw07; down"; got != want {
		t.Errorf("before the first connect:\n got %s\nwant %s", got, want)
	}
	for _, step := range []string{"at 1000: up", "at 1000: 0 gw07", "at 1005: tick", "at 1059: tick"} {
		o.play(t, step)
	}
	if got, want := o.state(), "gw04 online, gw07 offline; awaiting gw04; connected"; got != want {
		t.Errorf("before the grace ends:\n got %s\nwant %s", got, want)
	}
	o.play(t, "at 1060: tick")
	if got, want := o.state(), "gw04 offline, gw07 offline; awaiting ; connected"; got != want {
		t.Errorf("after the grace:\n got %s\nwant %s", got, want)
	}
}
