//go:build linux && kernel

package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
)

// childEnv marks the test binary re-run inside fresh mount and network namespaces.
const childEnv = "TRAFFICLAB_DNSPROXY_SEARCH_CHILD"

// TestKernelSearchDomains runs real clients (glibc's getent, Go's resolver) against the generated
// resolv.conf: in a throwaway mount and network namespace it becomes /etc/resolv.conf and the server
// listens on 127.0.0.1:53, as in the command's namespace. The clients must expand names with the
// pod's search domains and ndots, and a --local name must never reach the pod.
func TestKernelSearchDomains(t *testing.T) {
	testnet.RequireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatal("needs unshare (util-linux)")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--mount", "--net", "--", exe)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), childPassed) {
		t.Fatalf("child in new namespaces: %v\n%s", err, out)
	}
}

// TestMain makes the test binary the search-domains child when TestKernelSearchDomains starts it
// inside new namespaces; the child is no test of its own, so a plain run never reports it.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(runSearchDomainsChild())
	}
	os.Exit(m.Run())
}

// childPassed is the child's last line when every check held.
const childPassed = "search-domains child: ok"

// runSearchDomainsChild runs searchDomainsChild outside the testing framework and returns the exit
// code: failures are printed, and Fatal ends the checks through a panic recovered here.
func runSearchDomainsChild() (code int) {
	t := &childT{}
	defer func() {
		for i := len(t.cleanups) - 1; i >= 0; i-- {
			t.cleanups[i]()
		}
		if r := recover(); r != nil {
			if _, fatal := r.(childFatal); !fatal {
				panic(r)
			}
		}
		if t.failed {
			fmt.Println("search-domains child: FAIL")
			code = 1
			return
		}
		fmt.Println(childPassed)
	}()
	searchDomainsChild(t)
	return 0
}

// childFatal is what childT's Fatal panics with.
type childFatal struct{}

// childT is the testing.TB of the search-domains child. The embedded TB is nil: only the methods
// below may be called, which are the ones the child and its helpers use.
type childT struct {
	testing.TB
	mu       sync.Mutex
	failed   bool
	cleanups []func()
}

func (c *childT) Helper() {}

func (c *childT) Cleanup(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cleanups = append(c.cleanups, f)
}

func (c *childT) TempDir() string {
	dir, err := os.MkdirTemp("", "dnsproxy-child-")
	if err != nil {
		c.Fatal(err)
	}
	c.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (c *childT) Errorf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed = true
	fmt.Printf(format+"\n", args...)
}

func (c *childT) Error(args ...any) { c.Errorf("%s", fmt.Sprint(args...)) }

func (c *childT) Fatalf(format string, args ...any) {
	c.Errorf(format, args...)
	panic(childFatal{})
}

func (c *childT) Fatal(args ...any) { c.Fatalf("%s", fmt.Sprint(args...)) }

// searchDomainsChild runs inside the fresh mount and network namespaces.
func searchDomainsChild(t testing.TB) {
	// glibc's AI_ADDRCONFIG ignores loopback addresses: without another one, getaddrinfo asks no
	// nameserver at all.
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", "10.0.0.1/32", "dev", "lo"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(conf, NamespaceResolvConf(podConf, netip.MustParseAddr("127.0.0.1")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(conf, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount the generated resolv.conf: %v", err)
	}

	pod := startFakePod(t)
	filter := mustFilter(t, []string{"db"}, nil)
	pc, ln := listenBoth(t, "127.0.0.1:53")
	s := &Server{Dialer: &podDialer{pod: pod}, Pod: ParseResolvConf(podConf), Filter: filter, Host: hostResolver{"db": addrs("192.168.1.7")}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.ServePacket(ctx, pc) })
	wg.Go(func() { _ = s.ServeStream(ctx, ln) })
	defer wg.Wait()
	defer cancel()

	getent := func(name string) string {
		out, err := exec.Command("getent", "ahostsv4", name).Output()
		if err != nil {
			return "error: " + err.Error()
		}
		return strings.Fields(string(out))[0]
	}
	goLookup := func(name string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r := &net.Resolver{PreferGo: true}
		as, err := r.LookupNetIP(ctx, "ip4", name)
		if err != nil {
			return "error: " + err.Error()
		}
		return as[0].Unmap().String()
	}
	tests := []struct {
		name, want string
		// questions the pod must have been asked for the name, in order
		asked []string
	}{
		{name: "redis", want: "10.96.0.20", asked: []string{"redis.ns.svc.cluster.local."}},
		{name: "redis.other-ns", want: "10.96.1.20", asked: []string{"redis.other-ns.ns.svc.cluster.local.", "redis.other-ns.svc.cluster.local."}},
		{name: "redis.ns.svc.cluster.local.", want: "10.96.0.20", asked: []string{"redis.ns.svc.cluster.local."}},
		{name: "db", want: "192.168.1.7"},
	}
	for _, client := range []struct {
		name   string
		lookup func(string) string
	}{{"getent", getent}, {"go", goLookup}} {
		for _, tt := range tests {
			before := len(pod.questions())
			if got := client.lookup(tt.name); got != tt.want {
				t.Errorf("%s %s = %s, want %s", client.name, tt.name, got, tt.want)
			}
			var asked []string
			for _, q := range pod.questions()[before:] {
				if q.Type == dnsmessage.TypeA {
					asked = append(asked, q.Name)
				}
			}
			if diff := cmp.Diff(tt.asked, asked); diff != "" {
				t.Errorf("%s %s: the pod's questions mismatch (-want +got):\n%s", client.name, tt.name, diff)
			}
		}
	}
	if !slices.ContainsFunc(pod.questions(), func(q seen) bool { return q.Name == "redis.ns.svc.cluster.local." }) {
		t.Error("no question reached the pod")
	}
	if got := filter.Route(netip.MustParseAddrPort("192.168.1.7:5432")); got != egress.Local {
		t.Errorf("db's address routed %v, want local", got)
	}
}
