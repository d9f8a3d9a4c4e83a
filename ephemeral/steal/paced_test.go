package steal

import (
	"context"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// TestPacedStopsReadingOverBudget: a stolen stream is not read while the agent is over its budget, so
// it grants the plugin no more window, and is read again once the agent is back under.
func TestPacedStopsReadingOverBudget(t *testing.T) {
	var used atomic.Int64
	used.Store(2 * budget.MinLimit)
	// Each cgroup reading waits for the test to answer it: while a reading is held here, the reader
	// is inside the budget's wait, and what it has read so far is settled.
	readings := make(chan struct{})
	b, err := budget.New(budget.MinLimit, budget.Options{Usage: func() (int64, error) {
		readings <- struct{}{}
		return used.Load(), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	tunnel, plugin := net.Pipe()
	defer plugin.Close()
	p := newPaced(context.Background(), tunnel, newPacer(b, func(wire.StealEvent) {}))
	defer p.Close()
	written := make(chan error, 1)
	go func() {
		// net.Pipe is unbuffered: the plugin's write completes only when the agent reads.
		_, err := plugin.Write([]byte("response"))
		written <- err
	}()
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 64)
		n, _ := p.Read(buf)
		got <- string(buf[:n])
	}()
	// Two readings over budget: the second is the wait's poll, so the reader looked, found the
	// agent over budget, and is waiting rather than reading.
	for i := range 2 {
		select {
		case <-readings:
		case s := <-got:
			t.Fatalf("the stolen stream was read over budget (%q, after %d cgroup readings)", s, i)
		}
	}
	select {
	case s := <-got:
		t.Fatalf("the stolen stream was read over budget: %q", s)
	case err := <-written:
		t.Fatalf("the plugin's write went through over budget (%v)", err)
	default:
	}
	used.Store(0)
	go func() {
		for range readings {
		}
	}()
	if s := <-got; s != "response" {
		t.Fatalf("read %q once under budget, want the response", s)
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	p.Close()
	close(readings)
}

// TestPacedCloseEndsTheWait: a stolen connection that ends while its stream waits for the budget
// does not stay behind.
func TestPacedCloseEndsTheWait(t *testing.T) {
	b, err := budget.New(budget.MinLimit, budget.Options{Usage: func() (int64, error) { return 2 * budget.MinLimit, nil }})
	if err != nil {
		t.Fatal(err)
	}
	tunnel, plugin := net.Pipe()
	defer plugin.Close()
	p := newPaced(context.Background(), tunnel, newPacer(b, func(wire.StealEvent) {}))
	done := make(chan error, 1)
	go func() {
		_, err := p.Read(make([]byte, 8))
		done <- err
	}()
	p.Close()
	if err := <-done; err == nil {
		t.Fatal("Read after Close returned no error")
	}
}

// TestPacerTellsOnceWhileStreamsWait: the developer is told once that stolen responses wait, however
// many streams wait at a time, and told again when the agent goes over its budget another time.
func TestPacerTellsOnceWhileStreamsWait(t *testing.T) {
	var used atomic.Int64
	used.Store(2 * budget.MinLimit)
	var clock atomic.Int64
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	clock.Store(time.Unix(1000, 0).UnixNano())
	b, err := budget.New(budget.MinLimit, budget.Options{Now: now, Usage: func() (int64, error) { return used.Load(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var told []string
	pc := newPacer(b, func(ev wire.StealEvent) {
		mu.Lock()
		told = append(told, ev.Kind+": "+ev.Message)
		mu.Unlock()
	})
	pc.now = now
	waiting := func(n int) {
		for {
			pc.mu.Lock()
			w := pc.waiting
			pc.mu.Unlock()
			if w == n {
				return
			}
			runtime.Gosched()
		}
	}
	episode := func(streams int) {
		var wg sync.WaitGroup
		for range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pc.wait(context.Background())
			}()
		}
		waiting(streams)
		used.Store(0)
		// The waits poll the budget, whose reading is cached until the clock moves.
		clock.Add(int64(time.Second))
		wg.Wait()
		used.Store(2 * budget.MinLimit)
		clock.Add(int64(time.Second))
	}
	episode(3)
	want := []string{"warning: the agent is over its memory budget of 64 MiB: stolen responses wait until it is back under (waits so far: 1); the app's own traffic goes on"}
	if diff := cmp.Diff(want, told); diff != "" {
		t.Fatalf("told (-want +got):\n%s", diff)
	}
	// Over again within warnEvery: not told again.
	episode(1)
	if len(told) != 1 {
		t.Fatalf("told again %d times within %v: %q", len(told)-1, warnEvery, told)
	}
	clock.Add(int64(warnEvery))
	episode(1)
	if len(told) != 2 || !strings.Contains(told[1], "(waits so far: 5)") {
		t.Fatalf("told %q, want a second warning with 5 waits so far", told)
	}
}
