package loopback

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/internal/loopbacktest"
)

// fakeNamespace stands for the command's namespace: its "loopback port" listeners are loopback
// listeners of this machine on other ports.
type fakeNamespace struct {
	mu     sync.Mutex
	opened map[int]net.Listener
}

func (n *fakeNamespace) ListenLoopback(_ context.Context, network string, port int) (net.Listener, error) {
	ln, err := net.Listen(network, "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.opened[port] = ln
	return ln, nil
}

func (n *fakeNamespace) listener(port int) net.Listener {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.opened[port]
}

func hostServer(t *testing.T, greeting string) int {
	t.Helper()
	return loopbacktest.Serve(t, func(c net.Conn) { _, _ = c.Write([]byte(greeting)) }).Port
}

// TestBridge: a server listening on this machine's loopback when the command starts is reachable
// from the namespace on the same port; a port the command serves itself is left alone; Close
// closes the namespace's listeners.
func TestBridge(t *testing.T) {
	served := hostServer(t, "from the host")
	skipped := hostServer(t, "the command's own")
	ns := &fakeNamespace{opened: map[int]net.Listener{}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := Start(ctx, ns, []int{skipped})

	ln := ns.listener(served)
	if ln == nil {
		t.Fatalf("no namespace listener for host port %d after Start", served)
	}
	if ns.listener(skipped) != nil {
		t.Errorf("port %d, which the command serves itself, was bridged", skipped)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "from the host" {
		t.Errorf("through the bridge: %q, %v; want the host server's greeting", got, err)
	}

	b.Close()
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Error("the namespace's listener still accepts after Close")
	}
}
