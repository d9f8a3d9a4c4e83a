//go:build linux && kernel

package steal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/netfilter"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// TestMain makes the test binary the agent's guard when startGuard runs it (os.Executable) as
// `guard ID PID 3`, as trafficlab-agent's runGuard would, or a mesh's sidecar (runSidecar).
func TestMain(m *testing.M) {
	if arg := os.Getenv(sidecarEnv); arg != "" {
		os.Exit(runSidecar(arg))
	}
	if arg := os.Getenv(hubChildEnv); arg != "" {
		os.Exit(runHubChild(arg))
	}
	if len(os.Args) == 5 && os.Args[1] == "guard" {
		pid, _ := strconv.Atoi(os.Args[3])
		ready := os.NewFile(3, "guard-ready")
		err := netfilter.Guard(context.Background(), os.Args[2], pid, func() {
			_, _ = ready.Write([]byte{1})
			ready.Close()
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "guard:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// lineOpener answers every stolen connection's lines with "local", as the plugin's local process.
type lineOpener struct{}

func (lineOpener) OpenIncoming(_ context.Context, _ wire.OpenRequest) (net.Conn, error) {
	local, agent := net.Pipe()
	go func() {
		defer local.Close()
		r := bufio.NewReader(local)
		for {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			if _, err := io.WriteString(local, "local\n"); err != nil {
				return
			}
		}
	}()
	return agent, nil
}

func tablesIn(t *testing.T, ns *testnet.NS) []string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns.Handle())))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, tb := range tables {
		if strings.HasPrefix(tb.Name, netfilter.TablePrefix) {
			out = append(out, tb.Name)
		}
	}
	slices.Sort(out)
	return out
}

func askLine(t *testing.T, ns *testnet.NS, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("answer from %s: %v", addr, err)
	}
	return strings.TrimSuffix(line, "\n")
}

// TestKernelStealUnowned runs a steal on the path of a kernel without the nftables owner flag
// (forced: this kernel has it): refused without AllowUnownedRedirect, with nothing installed; with
// it, a guarded tproxy redirect, announced as not kernel-owned. Every steal first sweeps the
// tables of holders that are gone.
func TestKernelStealUnowned(t *testing.T) {
	pod, client := testnet.New(t), testnet.New(t)
	testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")}, client, []netip.Prefix{netip.MustParsePrefix("10.77.0.2/24")})
	app := pod.Listen(t, "tcp", ":8080")
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := io.WriteString(c, "app\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	// A table whose holder is gone: no token.
	c, err := nftables.New(nftables.WithNetNSFd(int(pod.Handle())))
	if err != nil {
		t.Fatal(err)
	}
	if err := netfilter.Ensure(c, "gone"); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var events []wire.StealEvent
	start := func(allow bool) (*Steal, error) {
		var st *Steal
		err := pod.Do(func() error {
			var err error
			st, err = Start(context.Background(), Config{
				ID:           "unowned",
				Spec:         wire.StealSpec{Ports: []int{8080}, AllowUnownedRedirect: allow},
				ForceUnowned: true,
				Open:         lineOpener{},
				InNetns:      pod.Do,
				Events: func(e wire.StealEvent) {
					mu.Lock()
					events = append(events, e)
					mu.Unlock()
				},
			})
			return err
		})
		return st, err
	}

	_, err = start(false)
	if !errors.Is(err, wire.ErrUnsupported) || !strings.Contains(err.Error(), "--allow-unowned-redirect") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("Start without AllowUnownedRedirect = %v, want one line naming --allow-unowned-redirect (ErrUnsupported)", err)
	}
	if got := tablesIn(t, pod); len(got) != 0 {
		t.Fatalf("tables after the refused steal: %v, want the leftover swept and nothing installed", got)
	}
	if got := askLine(t, client, "10.77.0.1:8080"); got != "app" {
		t.Fatalf("after the refused steal, answered %q, want the app", got)
	}

	st, err := start(true)
	if err != nil {
		t.Fatalf("Start with AllowUnownedRedirect: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	mu.Lock()
	ready := slices.Clone(events)
	mu.Unlock()
	if len(ready) != 1 || ready[0].Kind != wire.EventReady || ready[0].KernelOwned {
		t.Errorf("events = %+v, want one ready, not kernel-owned", ready)
	}
	if got := tablesIn(t, pod); !slices.Equal(got, []string{"trafficlab_unowned"}) {
		t.Errorf("tables while stealing: %v", got)
	}
	if got := askLine(t, client, "10.77.0.1:8080"); got != "local" {
		t.Errorf("while stealing, answered %q, want the local process", got)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := tablesIn(t, pod); len(got) != 0 {
		t.Errorf("tables after Close: %v", got)
	}
	if got := askLine(t, client, "10.77.0.1:8080"); got != "app" {
		t.Errorf("after Close, answered %q, want the app", got)
	}
}
