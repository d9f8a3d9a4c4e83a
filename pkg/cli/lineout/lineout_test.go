package lineout

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// countingWriter records each write it gets.
type countingWriter struct {
	mu     sync.Mutex
	writes []string
	err    error
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func (w *countingWriter) state() (int, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.writes), strings.Join(w.writes, "")
}

// waitLines polls until out has n lines; the lines leave on a timer, not on a call of ours.
func waitLines(t *testing.T, w *countingWriter, n int) (writes int, out string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		writes, out = w.state()
		if strings.Count(out, "\n") == n {
			return writes, out
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5s the output has %d lines, want %d", strings.Count(out, "\n"), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBurstSharesAWrite: lines written from several goroutines at once reach the output whole, in
// a few writes rather than one each, without a Flush from the caller.
func TestBurstSharesAWrite(t *testing.T) {
	w := &countingWriter{}
	l := New(w)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				fmt.Fprintf(l, "goroutine %d line %d\n", g, i)
			}
		}()
	}
	wg.Wait()
	writes, out := waitLines(t, w, 200)
	// One write when the burst fits in Delay; a slow machine may split it, never line by line.
	if writes > 20 {
		t.Errorf("200 lines took %d writes, want them batched", writes)
	}
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var g, i int
		if _, err := fmt.Sscanf(line, "goroutine %d line %d", &g, &i); err != nil {
			t.Fatalf("line %q was torn: %v", line, err)
		}
	}
}

// TestFlushWritesAtOnce: Flush writes what is buffered without waiting for the timer, and the
// timer then has nothing left to write.
func TestFlushWritesAtOnce(t *testing.T) {
	w := &countingWriter{}
	l := New(w)
	fmt.Fprintln(l, "before the summary")
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, out := w.state(); n != 1 || out != "before the summary\n" {
		t.Fatalf("after Flush: %d writes of %q, want the line in one", n, out)
	}
	fmt.Fprintln(l, "later")
	if writes, _ := waitLines(t, w, 2); writes != 2 {
		t.Errorf("%d writes, want 2", writes)
	}
}

// TestWriteErrorIsReported: a failed timed write (a closed pipe) is returned by the next Write and
// by Flush, so a caller that checks learns its output is gone.
func TestWriteErrorIsReported(t *testing.T) {
	broken := errors.New("broken pipe")
	w := &countingWriter{err: broken}
	l := New(w)
	fmt.Fprintln(l, "lost")
	if err := l.Flush(); !errors.Is(err, broken) {
		t.Fatalf("Flush: %v, want %v", err, broken)
	}
	if _, err := l.Write([]byte("more\n")); !errors.Is(err, broken) {
		t.Errorf("Write after a failed flush: %v, want %v", err, broken)
	}
}

// TestLargeBurstIsWrittenAsItFills: more than the buffer holds is written as it fills, in order.
func TestLargeBurstIsWrittenAsItFills(t *testing.T) {
	var want bytes.Buffer
	w := &countingWriter{}
	l := New(w)
	line := strings.Repeat("x", 999) + "\n"
	for range 200 {
		want.WriteString(line)
		if _, err := l.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := w.state(); n == 0 {
		t.Error("200 KB buffered without a write; the buffer should have spilled")
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, out := w.state(); out != want.String() {
		t.Errorf("output differs from what was written (%d bytes, want %d)", len(out), want.Len())
	}
}
