package attach

import (
	"context"
	"io"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Run tells its caller the data port before the Welcome announces it, so that the main process knows
// every live session's data port by the time a plugin can connect to it.
func TestRunReportsDataPortBeforeWelcome(t *testing.T) {
	toAgent, fromPlugin := io.Pipe()
	fromAgent, toPlugin := io.Pipe()
	listening := make(chan int, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Version: "test", In: toAgent, Out: toPlugin, Listening: func(port int) { listening <- port }})
		toPlugin.Close()
	}()
	plugin := wire.NewControl(fromAgent, fromPlugin, wire.ControlConfig{Role: wire.RolePlugin, Version: "test"})
	secret, err := wire.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	w, err := plugin.Hello(ctx, wire.Hello{Secret: secret, DataConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case port := <-listening:
		if port != w.DataPort {
			t.Errorf("Listening(%d), but the Welcome announced data port %d", port, w.DataPort)
		}
	default:
		t.Errorf("the Welcome (data port %d) came before Listening was called", w.DataPort)
	}
	cancel()
	fromPlugin.Close()
	if err := <-done; err != nil {
		t.Errorf("Run = %v after the session was cancelled, want nil", err)
	}
}
