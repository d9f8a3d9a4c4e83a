package dnsproxy

import (
	"context"
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
	testnet.Enabled(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--mount", "--net", "--", exe, "-test.run=^TestSearchDomainsChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestSearchDomainsChild") {
		t.Fatalf("child in new namespaces: %v\n%s", err, out)
	}
}

func TestSearchDomainsChild(t *testing.T) {
	if os.Getenv(childEnv) != "1" {
		t.Skip("run by TestKernelSearchDomains inside new namespaces")
	}
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
