package exitcode

import (
	"context"
	"testing"
)

// TestWait: the command's own exit, an interrupt it obeys, and a lost agent that kills it.
func TestWait(t *testing.T) {
	t.Run("exits", func(t *testing.T) {
		code, lost, err := Wait(context.Background(), nil, func() (int, error) { return 7, nil }, nil, func() { t.Error("killed") })
		if code != 7 || lost || err != nil {
			t.Errorf("Wait = %d, %v, %v; want 7, false, nil", code, lost, err)
		}
	})
	t.Run("interrupted", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		stop := make(chan struct{})
		code, lost, _ := Wait(ctx, nil, func() (int, error) { <-stop; return 130, nil },
			func() { close(stop) }, func() { t.Error("killed although it obeyed the interrupt") })
		if code != 130 || lost {
			t.Errorf("Wait = %d, %v; want 130, false", code, lost)
		}
	})
	t.Run("agent lost", func(t *testing.T) {
		lostCh, stop := make(chan struct{}), make(chan struct{})
		close(lostCh)
		code, lost, _ := Wait(context.Background(), lostCh, func() (int, error) { <-stop; return 137, nil },
			func() { t.Error("interrupted") }, func() { close(stop) })
		if code != 137 || !lost {
			t.Errorf("Wait = %d, %v; want 137, true", code, lost)
		}
	})
}
