package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// TestMuxGoing: an open that failed while its data connection is being cut must wait for the next
// link even when the mux has not closed yet (yamux hands the failed write to the stream first); the
// agent's refusal, or a live mux, ends the open at once or after the bound.
func TestMuxGoing(t *testing.T) {
	newMux := func(t *testing.T) (*wire.Mux, net.Conn) {
		t.Helper()
		a, b := net.Pipe()
		m, err := wire.Client(a, wire.DefaultMuxConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close(); b.Close() })
		go func() { _, _ = io.Copy(io.Discard, b) }()
		return m, b
	}
	cut := fmt.Errorf("open dial tcp %q: %w", "10.0.0.1:80", io.ErrClosedPipe)
	const forever = time.Hour

	t.Run("a cut that closes the mux after the open failed", func(t *testing.T) {
		m, b := newMux(t)
		// The far end goes once the check is waiting: the mux closes only after the error was seen.
		time.AfterFunc(20*time.Millisecond, func() { b.Close() })
		if !muxGoing(context.Background(), m, cut, forever) {
			t.Error("muxGoing = false for a mux that closed after the failed open, want true: the open must wait for the next link")
		}
	})
	t.Run("a mux already closed", func(t *testing.T) {
		m, _ := newMux(t)
		m.Close()
		if !muxGoing(context.Background(), m, cut, 0) {
			t.Error("muxGoing = false for a closed mux")
		}
	})
	t.Run("the agent's refusal is final", func(t *testing.T) {
		m, _ := newMux(t)
		refused := &wire.RemoteError{Code: wire.CodeUnsupported, Message: "no"}
		if muxGoing(context.Background(), m, fmt.Errorf("open: %w", refused), forever) {
			t.Error("muxGoing = true for the agent's refusal")
		}
		if muxGoing(context.Background(), m, fmt.Errorf("reply: %w", wire.ErrMalformed), forever) {
			t.Error("muxGoing = true for a malformed reply")
		}
	})
	t.Run("a live mux after the bound", func(t *testing.T) {
		m, _ := newMux(t)
		if muxGoing(context.Background(), m, cut, 10*time.Millisecond) {
			t.Error("muxGoing = true for a mux that stayed open")
		}
	})
	t.Run("the caller gives up", func(t *testing.T) {
		m, _ := newMux(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if muxGoing(ctx, m, errors.New("timeout"), forever) {
			t.Error("muxGoing = true after the caller's context ended")
		}
	})
}
