package store

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/freifunkMUC/wgkex-go/broker"
	"github.com/freifunkMUC/wgkex-go/internal/testenv"
)

func TestMain(m *testing.M) {
	if path := os.Getenv("WGKEX_STORE_SWEEP_CHILD"); path != "" {
		sweepChild(path)
		return
	}
	if path := os.Getenv("WGKEX_STORE_MERGE_CHILD"); path != "" {
		mergeChild(path)
		return
	}
	// Fail the package's tests when a goroutine outlives them: every goroutine has an owner that stops it.
	goleak.VerifyTestMain(m)
}

// fakeKey makes a distinct 44-character key.
func fakeKey(i int) string { return fmt.Sprintf("%043dA=", i)[1:] }

func put(t testing.TB, s *Store, domain, key string, at time.Time) {
	t.Helper()
	if err := s.PutKey(broker.KeyRecord{Key: key, Domain: domain, FirstSeen: at, LastSeen: at}); err != nil {
		t.Fatal(err)
	}
}

// TestReplayReadsOnlyWindow: a page read visits only the index entries inside the window, whatever the store
// holds before it; keys still in the log come in too.
func TestReplayReadsOnlyWindow(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	now := time.Unix(1_700_000_000, 0)
	var old []broker.KeyRecord
	for i := range 5000 {
		at := now.Add(-4*time.Hour - time.Duration(i)*time.Second)
		old = append(old, broker.KeyRecord{Key: fakeKey(i), Domain: "d", FirstSeen: at, LastSeen: at})
	}
	if err := s.Import(old); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 40 {
		k := fakeKey(10000 + i)
		put(t, s, "d", k, now.Add(-time.Duration(i)*time.Minute))
		want = append(want, k)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 7 { // in the log, not merged
		k := fakeKey(20000 + i)
		put(t, s, "d", k, now)
		want = append(want, k)
	}
	put(t, s, "d", fakeKey(3), now) // an old key registered again: in the window now
	want = append(want, fakeKey(3))
	s.visited.Store(0)
	got := allKeys(t, s, "d", now.Add(-3*time.Hour))
	sort.Strings(got)
	sort.Strings(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("replayed keys (-want +got):\n%s", diff)
	}
	// Pages of 3: each also peeks at the first entry of the next page. Before the window: 5000 keys, never read.
	if n, most := s.visited.Load(), int64(40+(len(want)+2)/3); n > most {
		t.Errorf("the replay visited %d index entries in bbolt, want at most %d (the 40 merged keys in its window, and a peek a page)", n, most)
	}
}

// TestSweepDeletesExactlyExpired: the sweep deletes the keys last seen before its cut, and only them; a key
// registered again (still in the log) stays; the background retention reads its injected clock.
func TestSweepDeletesExactlyExpired(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 10 {
		for _, d := range []string{"a", "b"} {
			put(t, s, d, fakeKey(i), t0.Add(time.Duration(i)*time.Hour))
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	put(t, s, "a", fakeKey(1), t0.Add(20*time.Hour)) // registered again, not yet merged
	n, err := s.Sweep(context.Background(), t0.Add(5*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 9 {
		t.Errorf("Sweep deleted %d keys, want 9 (0-4 in b, 0, 2-4 in a)", n)
	}
	left := func() map[string][]string {
		out := map[string][]string{}
		for _, d := range []string{"a", "b"} {
			for _, k := range allKeys(t, s, d, time.Unix(0, 0)) {
				i, _ := strconv.Atoi(k[:42])
				out[d] = append(out[d], fmt.Sprint(i))
			}
		}
		return out
	}
	want := map[string][]string{"a": {"5", "6", "7", "8", "9", "1"}, "b": {"5", "6", "7", "8", "9"}}
	if diff := cmp.Diff(want, left()); diff != "" {
		t.Errorf("keys left (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"a": 6, "b": 5}, countKeys(t, s)); diff != "" {
		t.Errorf("keys in bbolt (-want +got):\n%s", diff)
	}

	// The background sweep, with a clock at t0+10h and a retention of 2h: 5, 6 and 7 go.
	s.StartRetention(Retention{Keep: 2 * time.Hour, Every: time.Hour, Now: func() time.Time { return t0.Add(10 * time.Hour) }})
	want = map[string][]string{"a": {"8", "9", "1"}, "b": {"8", "9"}}
	testenv.Eventually(t, 10*time.Second, func() bool { return cmp.Equal(want, left()) }, "retention did not delete 5-7")
	if err := s.Close(); err != nil { // stops the retention goroutine
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{"a": 3, "b": 2}, countKeys(t, open(t, path))); diff != "" {
		t.Errorf("keys in bbolt after reopen (-want +got):\n%s", diff)
	}
}

// TestSweepWhileRegistering: keys registered again while a sweep deletes their expired records, some merged
// during the sweep, some still in the log when it ends, all survive with their new time, and index and keys agree.
func TestSweepWhileRegistering(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	defer s.Close()
	t0 := time.Unix(1_700_000_000, 0)
	const n = 12000
	var recs []broker.KeyRecord
	for i := range n {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		recs = append(recs, broker.KeyRecord{Key: fakeKey(i), Domain: "d", FirstSeen: at, LastSeen: at})
	}
	if err := s.Import(recs); err != nil {
		t.Fatal(err)
	}
	swept := make(chan error, 1)
	go func() {
		_, err := s.Sweep(context.Background(), t0.Add(time.Hour))
		swept <- err
	}()
	again := t0.Add(48 * time.Hour)
	var want []string
	for i := n - 1; i >= 0; i -= 7 { // from the end, so that most come while the sweep is under way
		put(t, s, "d", fakeKey(i), again)
		want = append(want, fakeKey(i))
		if len(want)%100 == 0 {
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := <-swept; err != nil {
		t.Fatal(err)
	}
	for _, k := range want {
		r, err := s.Key("d", k)
		if err != nil || !r.LastSeen.Equal(again) {
			t.Errorf("key %s registered again during the sweep: %v, last seen %v, want %v", k, err, r.LastSeen, again)
		}
	}
	if diff := cmp.Diff(map[string]int{"d": len(want)}, countKeys(t, s)); diff != "" {
		t.Errorf("keys in bbolt (-want +got):\n%s", diff)
	}
}

// TestMigrateSchema1: a file of schema 1, written here with bbolt as the first version wrote it, opens with its
// keys indexed and its worker records read.
func TestMigrateSchema1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		meta.Put([]byte("schema"), []byte("1"))
		keys, _ := tx.CreateBucket(bucketKeys)
		for _, d := range []string{"ffmuc_welt", "ffwert_city"} {
			b, _ := keys.CreateBucket([]byte(d))
			for i := range 5 {
				at := t0.Add(time.Duration(i) * time.Hour)
				b.Put([]byte(fakeKey(i)), encodeKey(broker.KeyRecord{FirstSeen: at, LastSeen: at, Gateway: "gw04"}))
			}
		}
		w, _ := tx.CreateBucket(bucketWorkers)
		w.Put([]byte("gw04"), []byte(`{"online":true,"peers":{"ffmuc_welt":3},"data":{"ffmuc_welt":{"ExternalAddress":"gw04.ext","Port":51820,"PublicKey":"k","LinkAddress":"fe80::1"}},"changed":"2023-11-14T22:13:20Z"}`))
		_, err := tx.CreateBucket(bucketRetained)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := open(t, path)
	defer s.Close()
	if diff := cmp.Diff(map[string]int{"ffmuc_welt": 5, "ffwert_city": 5}, countKeys(t, s)); diff != "" {
		t.Errorf("keys (-want +got):\n%s", diff)
	}
	if got := allKeys(t, s, "ffmuc_welt", t0.Add(3*time.Hour)); !cmp.Equal(got, []string{fakeKey(3), fakeKey(4)}) {
		t.Errorf("keys in the last two hours: %v", got)
	}
	ws, err := s.Workers()
	if err != nil || len(ws) != 1 || !ws[0].Online || ws[0].Data["ffmuc_welt"].Port != 51820 || ws[0].Peers["ffmuc_welt"] != 3 {
		t.Errorf("workers after migration: %+v, %v", ws, err)
	}
	var schema string
	s.db.View(func(tx *bolt.Tx) error { schema = string(tx.Bucket(bucketMeta).Get(metaSchema)); return nil })
	if schema != "3" {
		t.Errorf("schema %q after migration, want 3", schema)
	}
	counts, err := s.KeyCounts()
	if err != nil || counts["ffmuc_welt"] != len(allKeys(t, s, "ffmuc_welt", time.Unix(0, 0))) {
		t.Errorf("key counts after migration %v, %v", counts, err)
	}
}

// TestWorkerRecordFormat: the bytes of a worker record are the store's, whatever broker.WorkerState looks like.
func TestWorkerRecordFormat(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	w := broker.WorkerState{Name: "gw04", Online: true, Peers: map[string]int{"d": 2}, Changed: time.Unix(1_700_000_000, 0).UTC()}
	if err := s.PutWorker(w); err != nil {
		t.Fatal(err)
	}
	var got string
	s.db.View(func(tx *bolt.Tx) error { got = string(tx.Bucket(bucketWorkers).Get([]byte("gw04"))); return nil })
	want := `{"online":true,"peers":{"d":2},"data":null,"changed":"2023-11-14T22:13:20Z"}`
	if got != want {
		t.Errorf("worker record\n got %s\nwant %s", got, want)
	}
}

// TestCloseWhileWriting: writes racing Close either succeed or fail with ErrClosed; none panics or hangs.
func TestCloseWhileWriting(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	errs := make(chan error, 300)
	for i := range 100 {
		go func() {
			errs <- s.PutKey(broker.KeyRecord{Key: fakeKey(i), Domain: "d", FirstSeen: time.Now(), LastSeen: time.Now()})
		}()
		go func() { errs <- s.PutWorker(broker.WorkerState{Name: fmt.Sprint(i)}) }()
		go func() { errs <- s.Flush() }()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range 300 {
		if err := <-errs; err != nil && err != ErrClosed {
			t.Errorf("write racing Close: %v", err)
		}
	}
	for name, err := range map[string]error{"PutKey": s.PutKey(broker.KeyRecord{Key: "k", Domain: "d"}),
		"PutWorker": s.PutWorker(broker.WorkerState{Name: "w"}), "PutRetained": s.PutRetained("t", nil), "Flush": s.Flush()} {
		if err != ErrClosed {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
}

// TestSweepKilled: a child process sweeps a file of expired keys and is killed (SIGKILL) at random moments,
// several times; after each kill the keys and the time index agree, and the last run finishes the sweep.
func TestSweepKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a file of 40,000 keys")
	}
	path := filepath.Join(t.TempDir(), "state.db")
	s := open(t, path)
	t0 := time.Unix(1_700_000_000, 0)
	const expired, kept = 40000, 100
	var recs []broker.KeyRecord
	for i := range expired + kept {
		at := t0.Add(time.Duration(i) * time.Second)
		if i >= expired {
			at = t0.Add(48 * time.Hour)
		}
		recs = append(recs, broker.KeyRecord{Key: fakeKey(i), Domain: fmt.Sprint("d", i%2), FirstSeen: at, LastSeen: at})
	}
	if err := s.Import(recs); err != nil {
		t.Fatal(err)
	}
	s.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	total := func() int {
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		counts, err := checkIndex(db)
		if err != nil {
			t.Fatalf("after kill: %v", err)
		}
		return counts["d0"] + counts["d1"]
	}
	prev := expired + kept
	for run := range 5 {
		cmd, _ := startChild(t, "WGKEX_STORE_SWEEP_CHILD", path) // "sweeping": the store is open
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			t.Logf("run %d: the sweep ended before the kill (%v)", run, err)
		case <-time.After(time.Duration(rng.IntN(150)) * time.Millisecond):
			cmd.Process.Signal(syscall.SIGKILL)
			<-exited
		}
		n := total()
		t.Logf("run %d: %d keys left", run, n)
		if n > prev || n < kept {
			t.Fatalf("run %d: %d keys, had %d, must keep %d", run, n, prev, kept)
		}
		prev = n
	}
	s = open(t, path)
	defer s.Close()
	if _, err := s.Sweep(context.Background(), t0.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{"d0": kept / 2, "d1": kept / 2}, countKeys(t, s)); diff != "" {
		t.Errorf("after the last sweep (-want +got):\n%s", diff)
	}
}

// sweepChild is the child process of TestSweepKilled: it sweeps the file until killed.
func sweepChild(path string) {
	s, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintln(os.Stderr, "sweep child:", err)
		os.Exit(2)
	}
	fmt.Println("sweeping")
	if _, err := s.Sweep(context.Background(), time.Unix(1_700_000_000, 0).Add(24*time.Hour)); err != nil {
		fmt.Fprintln(os.Stderr, "sweep child:", err)
		os.Exit(2)
	}
	s.Close()
	os.Exit(0)
}

// TestKeysPageRecords: a page gives whole records (but the gateway), from bbolt and from the log alike, in
// last-seen order.
func TestKeysPageRecords(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.db"))
	defer s.Close()
	t0 := time.Unix(1_700_000_000, 0)
	put(t, s, "d", fakeKey(1), t0)
	if err := s.PutKey(broker.KeyRecord{Key: fakeKey(1), Domain: "d", FirstSeen: t0.Add(time.Hour), LastSeen: t0.Add(time.Hour), Gateway: "gw"}); err != nil {
		t.Fatal(err)
	}
	put(t, s, "d", fakeKey(2), t0.Add(time.Minute))
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	put(t, s, "d", fakeKey(3), t0.Add(2*time.Hour)) // in the log
	got, next, err := s.KeysPage("d", t0, "", 10)
	want := []broker.KeyRecord{
		{Key: fakeKey(2), Domain: "d", FirstSeen: t0.Add(time.Minute), LastSeen: t0.Add(time.Minute)},
		{Key: fakeKey(1), Domain: "d", FirstSeen: t0, LastSeen: t0.Add(time.Hour)},
		{Key: fakeKey(3), Domain: "d", FirstSeen: t0.Add(2 * time.Hour), LastSeen: t0.Add(2 * time.Hour)},
	}
	if err != nil || next != "" {
		t.Fatalf("KeysPage: next %q, %v", next, err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("page (-want +got):\n%s", diff)
	}
}

// startChild runs this test binary as a child (TestMain runs the child's part when env names path) and returns
// it with the first line it printed, once it did.
func startChild(t *testing.T, env, path string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+path)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	return cmd, line
}
