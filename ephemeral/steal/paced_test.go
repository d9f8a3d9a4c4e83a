package steal

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
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
	p := newPaced(context.Background(), tunnel, b)
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
	p := newPaced(context.Background(), tunnel, b)
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
