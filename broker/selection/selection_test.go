package selection

import (
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func gw(name string, online bool, peers map[string]int) Gateway {
	return Gateway{Name: name, Online: online, Peers: peers}
}

func TestChooseReferenceVectors(t *testing.T) {
	tests := []struct {
		name     string
		gws      []Gateway
		total    int
		domain   string
		location string
		want     Choice
		ok       bool
	}{
		{"peers 1:20 2:19 both online", []Gateway{gw("1", true, map[string]int{"d": 20}), gw("2", true, map[string]int{"d": 19})},
			0, "d", "", Choice{"2", -20, 19}, true},
		{"imbalanced over domains",
			[]Gateway{gw("1", true, map[string]int{"domain1": 25, "domain2": 5}), gw("2", true, map[string]int{"domain1": 20, "domain2": 20})},
			0, "domain1", "", Choice{"1", -40, 30}, true},
		{"all offline", []Gateway{gw("1", false, map[string]int{"d": 1}), gw("2", false, map[string]int{"d": 2})}, 0, "d", "", Choice{}, false},
		{"no workers", nil, 0, "d", "", Choice{}, false},
		{"domain offline (-1)", []Gateway{gw("1", true, map[string]int{"d": -1})}, 0, "d", "", Choice{}, false},
		{"domain metric missing", []Gateway{gw("1", true, map[string]int{"e": 1})}, 0, "d", "", Choice{}, false},
		{"no endpoint in the domain", []Gateway{{Name: "1", Online: true, Peers: map[string]int{"d": 1}, NoEndpoint: map[string]bool{"d": true}},
			gw("2", true, map[string]int{"d": 9})}, 0, "d", "", Choice{"2", -1, 9}, true},
		{"tie goes to the lower name", []Gateway{gw("b", true, map[string]int{"d": 5}), gw("a", true, map[string]int{"d": 5})}, 0, "d", "", Choice{"a", -5, 5}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Choose(tt.gws, tt.total, tt.domain, tt.location)
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestChooseWeights(t *testing.T) {
	gws := []Gateway{
		{Name: "1", Weight: 84, Configured: true, Online: true, Peers: map[string]int{"d": 21}},
		{Name: "2", Weight: 42, Configured: true, Online: true, Peers: map[string]int{"d": 19}},
	}
	if got, _ := Choose(gws, 126, "d", ""); got.Name != "1" {
		t.Errorf("weights 84/42 with peers 21/19 chose %q, want 1", got.Name)
	}
	// SPEC §3.2 worked example: weights 30/30/20/20, peers 100/90/50/70 → gw06 (diff −12).
	ex := []Gateway{
		{Name: "gw04", Weight: 30, Configured: true, Online: true, Peers: map[string]int{"d": 100}},
		{Name: "gw05", Weight: 30, Configured: true, Online: true, Peers: map[string]int{"d": 90}},
		{Name: "gw06", Weight: 20, Configured: true, Online: true, Peers: map[string]int{"d": 50}},
		{Name: "gw07", Weight: 20, Configured: true, Online: true, Peers: map[string]int{"d": 70}},
	}
	got, _ := Choose(ex, 100, "d", "")
	if diff := cmp.Diff(Choice{"gw06", -12, 50}, got); diff != "" {
		t.Errorf("worked example (-want +got):\n%s", diff)
	}
	// An offline worker's stale metric no longer inflates the total (a reference quirk we do not copy).
	ex[0].Online = false
	got, _ = Choose(ex, 100, "d", "")
	if got.Name != "gw06" || got.Diff != 50-0.2*210 {
		t.Errorf("with gw04 offline got %+v", got)
	}
}

func TestChooseLocation(t *testing.T) {
	mk := func(p1, p2 int, online2 bool) []Gateway {
		return []Gateway{
			{Name: "worker1", Weight: 50, Configured: true, Location: "MUC", Online: true, Peers: map[string]int{"d": p1}},
			{Name: "worker2", Weight: 50, Configured: true, Location: "Vienna", Online: online2, Peers: map[string]int{"d": p2}},
		}
	}
	tests := []struct {
		name, location, want string
		gws                  []Gateway
	}{
		{"MUC preferred", "MUC", "worker1", mk(10, 5, true)},
		{"Vienna offline falls back", "Vienna", "worker1", mk(10, 5, false)},
		{"unknown location falls back", "Berlin", "worker2", mk(10, 5, true)},
		{"no location", "", "worker2", mk(10, 5, true)},
	}
	for _, tt := range tests {
		got, ok := Choose(tt.gws, 100, "d", tt.location)
		if !ok || got.Name != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got.Name, tt.want)
		}
	}
	three := []Gateway{
		{Name: "worker1", Weight: 50, Configured: true, Location: "MUC", Online: true, Peers: map[string]int{"d": 20}},
		{Name: "worker2", Weight: 50, Configured: true, Location: "MUC", Online: true, Peers: map[string]int{"d": 10}},
		{Name: "worker3", Weight: 50, Configured: true, Location: "Vienna", Online: true, Peers: map[string]int{"d": 5}},
	}
	if got, _ := Choose(three, 150, "d", "MUC"); got.Name != "worker2" {
		t.Errorf("MUC×2 + Vienna, location MUC: got %q, want worker2", got.Name)
	}
}

// TestChooseProperty checks Choose against a direct model: the choice is an eligible gateway with the least
// diff; and repeated choices with the broker's +1 interpolation share peers in proportion to the weights.
func TestChooseProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		n := 1 + r.IntN(6)
		gws := make([]Gateway, n)
		total := 0
		for j := range gws {
			g := Gateway{Name: string(rune('a' + j)), Weight: r.IntN(50), Configured: r.IntN(4) > 0,
				Online: r.IntN(5) > 0, Peers: map[string]int{"d": r.IntN(100) - 5, "e": r.IntN(50)}, Location: []string{"", "X", "Y"}[r.IntN(3)]}
			if g.Configured {
				total += g.Weight
			}
			gws[j] = g
		}
		loc := []string{"", "X", "Z"}[r.IntN(3)]
		got, ok := Choose(gws, total, "d", loc)
		var best *Choice
		for _, pass := range []string{loc, ""} {
			if pass == "" && loc != "" && best != nil {
				break
			}
			sum := 0
			for _, g := range gws {
				if g.Online {
					sum += max(g.Peers["d"], 0) + max(g.Peers["e"], 0)
				}
			}
			for _, g := range gws {
				if !g.Online || g.Peers["d"] < 0 || pass != "" && g.Location != pass {
					continue
				}
				w := 1
				if g.Configured {
					w = g.Weight
				}
				peers := max(g.Peers["d"], 0) + max(g.Peers["e"], 0)
				c := Choice{g.Name, float64(peers) - float64(w)/float64(max(total, 1))*float64(sum), peers}
				if best == nil || c.Diff < best.Diff || c.Diff == best.Diff && c.Name < best.Name {
					best = &c
				}
			}
			if loc == "" {
				break
			}
		}
		if ok != (best != nil) {
			t.Fatalf("case %d: ok = %v, model found %v", i, ok, best)
		}
		if ok {
			if diff := cmp.Diff(*best, got); diff != "" {
				t.Fatalf("case %d %+v loc %q (-model +got):\n%s", i, gws, loc, diff)
			}
		}
	}
}

func TestChooseConvergesToWeights(t *testing.T) {
	gws := []Gateway{
		{Name: "a", Weight: 2, Configured: true, Online: true, Peers: map[string]int{"d": 0}},
		{Name: "b", Weight: 1, Configured: true, Online: true, Peers: map[string]int{"d": 0}},
	}
	for i := 0; i < 300; i++ {
		c, _ := Choose(gws, 3, "d", "")
		for j := range gws {
			if gws[j].Name == c.Name {
				gws[j].Peers["d"]++
			}
		}
	}
	if a, b := gws[0].Peers["d"], gws[1].Peers["d"]; a < 199 || a > 201 || a+b != 300 {
		t.Errorf("300 choices at weights 2:1 gave %d:%d", a, b)
	}
}
