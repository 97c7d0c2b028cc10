package passwd

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func hash(t *testing.T, pw string) []byte {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestCheck: right and wrong passwords with real bcrypt; a password that matched is not checked with bcrypt again,
// a wrong one always is; Forget makes the next check pay again.
func TestCheck(t *testing.T) {
	var calls atomic.Int64
	c := New(1, func(h, pw []byte) error { calls.Add(1); return bcrypt.CompareHashAndPassword(h, pw) })
	a, b := hash(t, "secret-a"), hash(t, "secret-b")
	ctx := context.Background()
	for i, tc := range []struct {
		hash      []byte
		pw        string
		want      bool
		wantCalls int64
	}{
		{a, "secret-a", true, 1},
		{a, "secret-a", true, 1}, // remembered
		{a, "secret-b", false, 2},
		{b, "secret-a", false, 3}, // a's password is remembered for a only
		{b, "secret-b", true, 4},
		{a, "", false, 5},
	} {
		if got := c.Check(ctx, tc.hash, []byte(tc.pw)); got != tc.want || calls.Load() != tc.wantCalls {
			t.Errorf("%d: Check = %v after %d bcrypt calls, want %v after %d", i, got, calls.Load(), tc.want, tc.wantCalls)
		}
	}
	c.Forget(func(h string) bool { return h == string(b) })
	c.Check(ctx, b, []byte("secret-b"))
	c.Check(ctx, a, []byte("secret-a"))
	if calls.Load() != 6 {
		t.Errorf("after Forget keeping b: %d bcrypt calls, want 6 (a checked again, b remembered)", calls.Load())
	}
	c.Forget(nil)
	c.Check(ctx, b, []byte("secret-b"))
	if calls.Load() != 7 {
		t.Errorf("after Forget(nil): %d bcrypt calls, want 7", calls.Load())
	}
}

// TestConcurrency: never more bcrypt checks at once than allowed; a check waiting for a slot gives up when its
// context ends, though its password is right.
func TestConcurrency(t *testing.T) {
	var running, most atomic.Int64
	release := make(chan struct{})
	c := New(2, func(h, pw []byte) error {
		n := running.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-release
		running.Add(-1)
		return nil
	})
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() { defer wg.Done(); c.Check(context.Background(), []byte("h"), []byte("right")) }()
	}
	for running.Load() < 2 { // both slots taken
		runtime.Gosched()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if c.Check(ctx, []byte("h"), []byte("other")) {
		t.Error("a check whose context ended while it waited for a slot was accepted")
	}
	close(release)
	wg.Wait()
	if most.Load() != 2 {
		t.Errorf("%d bcrypt checks ran at once, want 2", most.Load())
	}
}

// TestForgetDuringCheck: a check that began before a Forget does not remember its match afterwards, so that a
// hash a reload removed while it was being checked is not kept (and a later check pays bcrypt again).
func TestForgetDuringCheck(t *testing.T) {
	var calls atomic.Int64
	started, finish := make(chan struct{}), make(chan struct{})
	c := New(1, func(h, pw []byte) error {
		if calls.Add(1) == 1 {
			close(started)
			<-finish
		}
		return nil
	})
	done := make(chan bool)
	go func() { done <- c.Check(context.Background(), []byte("old"), []byte("pw")) }()
	<-started
	c.Forget(func(h string) bool { return h != "old" })
	close(finish)
	if !<-done {
		t.Fatal("the check under way failed")
	}
	c.Check(context.Background(), []byte("old"), []byte("pw"))
	if n := calls.Load(); n != 2 {
		t.Errorf("%d bcrypt calls, want 2: the match of a check that began before Forget was remembered", n)
	}
}

// TestCheckUnknown: a user without a hash costs one bcrypt comparison at the cost asked for, like a wrong
// password, and is never accepted, not even with a password that another hash remembers; it queues for a slot
// like Check and gives up when its context ends. Cost 0 compares nothing.
func TestCheckUnknown(t *testing.T) {
	var calls atomic.Int64
	var costs []int
	var mu sync.Mutex
	c := New(1, func(h, pw []byte) error {
		calls.Add(1)
		cost, err := bcrypt.Cost(h)
		mu.Lock()
		costs = append(costs, cost)
		mu.Unlock()
		if err != nil {
			return err
		}
		return bcrypt.CompareHashAndPassword(h, pw)
	})
	ctx := context.Background()
	a := hash(t, "secret-a")
	for range 2 { // then remembered
		if !c.Check(ctx, a, []byte("secret-a")) {
			t.Fatal("the right password was refused")
		}
	}
	wrong := calls.Load()
	c.Check(ctx, a, []byte("wrong"))
	wrong = calls.Load() - wrong
	for _, pw := range []string{"secret-a", "wrong", ""} {
		before := calls.Load()
		if c.CheckUnknown(ctx, bcrypt.MinCost, []byte(pw)) {
			t.Errorf("an unknown user with %q was accepted", pw)
		}
		if n := calls.Load() - before; n != wrong {
			t.Errorf("an unknown user with %q ran bcrypt %d times, a wrong password %d", pw, n, wrong)
		}
	}
	mu.Lock()
	for _, cost := range costs {
		if cost != bcrypt.MinCost {
			t.Errorf("compared with a hash of cost %d, want %d", cost, bcrypt.MinCost)
		}
	}
	mu.Unlock()
	before := calls.Load()
	if c.CheckUnknown(ctx, 0, []byte("x")); calls.Load() != before {
		t.Error("cost 0 ran bcrypt")
	}
	// The slot taken: an unknown user waits like anyone and gives up with its context.
	c.slots <- struct{}{}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if c.CheckUnknown(short, bcrypt.MinCost, []byte("x")); calls.Load() != before || short.Err() == nil {
		t.Error("CheckUnknown did not wait for a slot")
	}
	<-c.slots
}

func TestCost(t *testing.T) {
	h4, h5, h6 := string(hash(t, "a")), costHash(t, 5), costHash(t, 6)
	for _, c := range []struct {
		name   string
		hashes []string
		want   int
	}{
		{"none", nil, 0},
		{"not bcrypt", []string{"", "plain", "$2a$99$"}, 0},
		{"one", []string{h5}, 5},
		{"most", []string{h4, h4, h6}, 4},
		{"tie takes the higher", []string{h4, h6}, 6},
		{"garbage ignored", []string{"x", h5, "$2b$"}, 5},
	} {
		if got := Cost(c.hashes...); got != c.want {
			t.Errorf("%s: Cost = %d, want %d", c.name, got, c.want)
		}
	}
}

func costHash(t *testing.T, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte("pw"), cost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// FuzzCost: whatever the configured hashes, Cost is 0 or the cost of one of them.
func FuzzCost(f *testing.F) {
	f.Add("$2a$04$abcdefghijklmnopqrstuu5Lw0b1vCNfL1Rh6fS2VSRqgHdA1sOaK", "$2b$10$")
	f.Add("", "$2y$31$")
	f.Fuzz(func(t *testing.T, a, b string) {
		got := Cost(a, b)
		if got == 0 {
			return
		}
		for _, h := range []string{a, b} {
			if c, err := bcrypt.Cost([]byte(h)); err == nil && c == got {
				return
			}
		}
		t.Errorf("Cost(%q, %q) = %d, the cost of neither", a, b, got)
	})
}
