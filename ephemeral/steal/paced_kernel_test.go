//go:build linux && kernel

package steal_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/budget"
	"github.com/trafficlab/kubectl-trafficlab/ephemeral/steal"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// dialLocal is the plugin's side: each stolen connection is joined to the local process.
type dialLocal struct{ addr string }

func (d dialLocal) OpenIncoming(ctx context.Context, _ wire.OpenRequest) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.addr)
}

// TestKernelStolenStreamWaitsOverBudget: in a whole-port steal, the local process's answer is not
// read from the tunnel while the agent is over its memory budget (the plugin is granted no more
// window), the developer is warned, and the answer reaches the pod's client once the agent is back
// under.
func TestKernelStolenStreamWaitsOverBudget(t *testing.T) {
	testnet.RequireRoot(t)
	pod, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix("10.79.2.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.79.2.2/24")})
	// The app is never reached: the whole port is stolen.
	appLn := pod.Listen(t, "tcp", "10.79.2.1:8080")
	t.Cleanup(func() { appLn.Close() })
	ll, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ll.Close() })
	go func() {
		for {
			c, err := ll.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				_, _ = io.WriteString(c, "local answers "+line)
			}()
		}
	}()

	var used atomic.Int64
	used.Store(2 * budget.MinLimit)
	// Each cgroup reading waits for the test: while one is held, the stolen stream's reader is in
	// the budget's wait.
	readings := make(chan struct{})
	b, err := budget.New(budget.MinLimit, budget.Options{Usage: func() (int64, error) {
		readings <- struct{}{}
		return used.Load(), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	warnings := make(chan string, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var st *steal.Steal
	if err := pod.Do(func() error {
		var err error
		st, err = steal.Start(ctx, steal.Config{ID: "pacedtest", Spec: wire.StealSpec{Ports: []int{8080}, StealProbes: true},
			Open: dialLocal{addr: ll.Addr().String()}, InNetns: pod.Do, Budget: b,
			Events: func(ev wire.StealEvent) {
				if ev.Kind == wire.EventWarning {
					warnings <- ev.Message
				}
			}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	c, err := client.DialContext(ctx, "tcp", "10.79.2.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(c).ReadString('\n')
		got <- line
	}()
	// Two readings over budget: the stolen stream's reader looked, found the agent over, and waits.
	for i := range 2 {
		select {
		case <-readings:
		case line := <-got:
			t.Fatalf("the client got %q over budget, after %d readings", line, i)
		}
	}
	select {
	case line := <-got:
		t.Fatalf("the client got %q over budget", line)
	default:
	}
	if w := <-warnings; w == "" {
		t.Fatal("no warning that stolen responses wait")
	}
	used.Store(0)
	go func() {
		for range readings {
		}
	}()
	if line := <-got; line != "local answers hello\n" {
		t.Fatalf("the client got %q once under budget, want the local process's answer", line)
	}
	st.Close()
	close(readings)
}
