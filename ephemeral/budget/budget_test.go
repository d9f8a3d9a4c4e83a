package budget

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeClock moves only when told.
type fakeClock struct{ t atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.t.Add(int64(d)) }

func newFake(t *testing.T, limit int64, used *atomic.Int64, reads *atomic.Int64) (*Budget, *fakeClock) {
	t.Helper()
	clk := &fakeClock{}
	clk.t.Store(time.Unix(1000, 0).UnixNano())
	b, err := New(limit, Options{Now: clk.now, Source: "fake", Usage: func() (int64, error) {
		if reads != nil {
			reads.Add(1)
		}
		return used.Load(), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return b, clk
}

func TestReserveCountsCgroupUsageAndReservations(t *testing.T) {
	var used atomic.Int64
	used.Store(40 << 20)
	b, _ := newFake(t, 64<<20, &used, nil)
	if !b.Reserve(20 << 20) {
		t.Fatal("40 MiB used + 20 MiB reserved fits 64 MiB, refused")
	}
	if b.Reserve(8 << 20) {
		t.Fatal("40 + 20 + 8 MiB exceeds 64 MiB, accepted")
	}
	if b.Over() {
		t.Fatal("Over at 60 of 64 MiB")
	}
	b.Release(20 << 20)
	if !b.Reserve(8 << 20) {
		t.Fatal("refused after the release")
	}
	if got := b.Reserved(); got != 8<<20 {
		t.Fatalf("Reserved = %d, want 8 MiB", got)
	}
	if got := b.Refused(); got != 1 {
		t.Fatalf("Refused = %d, want 1", got)
	}
}

func TestUsageIsCachedForTheRefreshInterval(t *testing.T) {
	var used, reads atomic.Int64
	used.Store(10 << 20)
	b, clk := newFake(t, 64<<20, &used, &reads)
	for range 1000 {
		b.Over()
		b.Reserve(1)
		b.Release(1)
	}
	if got := reads.Load(); got != 1 {
		t.Fatalf("cgroup read %d times within one interval, want 1", got)
	}
	used.Store(100 << 20)
	if b.Over() {
		t.Fatal("a new reading was taken before the interval passed")
	}
	clk.advance(refreshEvery)
	if !b.Over() {
		t.Fatal("Over = false at 100 MiB of 64 MiB once the interval passed")
	}
	if got := reads.Load(); got != 2 {
		t.Fatalf("cgroup read %d times, want 2", got)
	}
}

func TestOnChangeAndWaitUnder(t *testing.T) {
	var used atomic.Int64
	used.Store(100 << 20)
	var changes []bool
	clk := &fakeClock{}
	clk.t.Store(1)
	b, err := New(64<<20, Options{Now: clk.now, Usage: func() (int64, error) { return used.Load(), nil },
		OnChange: func(over bool, _, _ int64) { changes = append(changes, over) }})
	if err != nil {
		t.Fatal(err)
	}
	if !b.Over() {
		t.Fatal("not over at 100 of 64 MiB")
	}
	done := make(chan error, 1)
	go func() {
		// The waiter polls at the refresh interval of the real clock; the fake clock makes each
		// poll read the cgroup again.
		done <- b.WaitUnder(context.Background())
	}()
	used.Store(10 << 20)
	for {
		clk.advance(refreshEvery)
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]bool{true, false}, changes); diff != "" {
				t.Fatalf("OnChange calls (-want +got):\n%s", diff)
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestWaitUnderEndsWithItsContext(t *testing.T) {
	var used atomic.Int64
	used.Store(100 << 20)
	b, _ := newFake(t, 64<<20, &used, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.WaitUnder(ctx); err == nil {
		t.Fatal("WaitUnder returned nil over budget with its context done")
	}
}

func TestNilBudgetHasNoLimit(t *testing.T) {
	var b *Budget
	if !b.Reserve(1<<40) || b.Over() {
		t.Fatal("a nil budget limited something")
	}
	b.Release(1 << 40)
}

func TestNewRefusesABudgetBelowTheBaseline(t *testing.T) {
	if _, err := New(MinLimit-1, Options{Usage: func() (int64, error) { return 0, nil }}); err == nil {
		t.Fatal("accepted a budget below MinLimit")
	}
}

// tree writes a fake /proc/self and cgroup file system under a temp dir.
func tree(t *testing.T, files map[string]string) Paths {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Paths{Root: root}
}

func TestFindCgroup(t *testing.T) {
	const (
		v2Mount     = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
		hybridMount = "31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n" +
			"32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n" +
			"33 25 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
		ctr = "/kubepods/burstable/pod1/ctr1"
	)
	for _, tc := range []struct {
		name    string
		files   map[string]string
		want    Cgroup
		wantErr bool
	}{{
		name: "v2 in a container with a cgroup namespace",
		files: map[string]string{
			"proc/self/cgroup":                 "0::/\n",
			"proc/self/mountinfo":              "20 1 0:20 / / rw - overlay overlay rw\n" + v2Mount,
			"sys/fs/cgroup/memory.current":     "1234\n",
			"sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
		},
		want: Cgroup{Version: 2, File: "sys/fs/cgroup/memory.current"},
	}, {
		name: "v2 on a host: the path under the mount point",
		files: map[string]string{
			"proc/self/cgroup":                        "0::" + ctr + "\n",
			"proc/self/mountinfo":                     v2Mount,
			"sys/fs/cgroup" + ctr + "/memory.current": "1234\n",
		},
		want: Cgroup{Version: 2, File: "sys/fs/cgroup" + ctr + "/memory.current"},
	}, {
		name: "v1 in a container: the runtime bind-mounts the container's own cgroup",
		files: map[string]string{
			"proc/self/cgroup":                           "5:memory:" + ctr + "\n4:cpu:" + ctr + "\n",
			"proc/self/mountinfo":                        "32 25 0:28 " + ctr + " /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
			"sys/fs/cgroup/memory/memory.usage_in_bytes": "99\n",
		},
		want: Cgroup{Version: 1, File: "sys/fs/cgroup/memory/memory.usage_in_bytes"},
	}, {
		name: "hybrid: v2 holds no memory controller, v1 does",
		files: map[string]string{
			"proc/self/cgroup":    "4:memory:/process_api/x\n0::/\n",
			"proc/self/mountinfo": hybridMount,
			"sys/fs/cgroup/memory/process_api/x/memory.usage_in_bytes": "99\n",
		},
		want: Cgroup{Version: 1, File: "sys/fs/cgroup/memory/process_api/x/memory.usage_in_bytes"},
	}, {
		name: "v2 root cgroup: no memory.current, no budget source",
		files: map[string]string{
			"proc/self/cgroup":    "0::/\n",
			"proc/self/mountinfo": v2Mount,
		},
		wantErr: true,
	}, {
		name:    "no /proc",
		files:   map[string]string{},
		wantErr: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			p := tree(t, tc.files)
			got, err := FindCgroup(p)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("FindCgroup = %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got.File, _ = filepath.Rel(p.Root, got.File)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("FindCgroup (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCgroupUsage(t *testing.T) {
	p := tree(t, map[string]string{"memory.current": "123456\n"})
	got, err := Cgroup{Version: 2, File: filepath.Join(p.Root, "memory.current")}.Usage()
	if err != nil || got != 123456 {
		t.Fatalf("Usage = %d, %v; want 123456", got, err)
	}
}

// TestThisProcess reads the machine's real cgroup, or the Go fallback, whichever New picks: a budget
// must always have some usage to read.
func TestThisProcess(t *testing.T) {
	b, err := New(DefaultLimit, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("budget source: %s", b.Source())
	if v, err := b.usage(); err != nil || v <= 0 {
		t.Fatalf("usage = %d, %v", v, err)
	}
}

func TestAccountGivesEverythingBackAtClose(t *testing.T) {
	var used atomic.Int64
	used.Store(MinLimit - 1<<20)
	b, _ := newFake(t, MinLimit, &used, nil)
	a := b.Account()
	if !a.Reserve(600<<10) || !a.Reserve(300<<10) {
		t.Fatal("refused within the budget")
	}
	if a.Reserve(200 << 10) {
		t.Fatal("accepted past the budget")
	}
	a.Release(300 << 10)
	if got := b.Reserved(); got != 600<<10 {
		t.Fatalf("budget holds %d, want 600 KiB", got)
	}
	a.Close()
	if got := b.Reserved(); got != 0 {
		t.Fatalf("budget holds %d after the account closed, want 0", got)
	}
	// Late releases of the closed account's parts give back nothing twice.
	a.Release(600 << 10)
	if got := b.Reserved(); got != 0 {
		t.Fatalf("budget holds %d after a late release, want 0", got)
	}
	if a.Reserve(1) {
		t.Fatal("a closed account reserved")
	}
	var nilBudget *Budget
	if na := nilBudget.Account(); !na.Reserve(1<<40) || na.Held() != 0 {
		t.Fatal("the account of no budget limited something")
	}
}

// BenchmarkReserveRelease is the hot path's cost: every copied chunk and request reserves and releases.
func BenchmarkReserveRelease(b *testing.B) {
	bud, err := New(DefaultLimit, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Log(bud.Source())
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if bud.Reserve(32 << 10) {
				bud.Release(32 << 10)
			}
		}
	})
}
