//go:build linux && kernel

package steal_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/trafficlab/kubectl-trafficlab/ephemeral/steal"
	"github.com/trafficlab/kubectl-trafficlab/internal/testnet"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// Addresses of the probe test: the pod, and in the client namespace the pod's default gateway, the
// node address the plugin sends, an ordinary client, and a node address the pod is never told of.
const (
	podAddr     = "10.78.0.1"
	gatewayAddr = "10.78.0.2"
	nodeAddr    = "10.78.0.3"
	clientAddr  = "10.78.0.4"
	otherNode   = "10.78.0.5"
)

// toLocal is the plugin's side: each stolen port's connections go to its local server.
type toLocal map[int]string

func (l toLocal) OpenIncoming(ctx context.Context, req wire.OpenRequest) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", l[req.Port])
}

// answering serves HTTP (or HTTPS) on l, answering "<name> <path>".
func answering(t *testing.T, l net.Listener, name string, https bool) *httptest.Server {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	}))
	srv.Listener.Close()
	srv.Listener = l
	if https {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv
}

// probeGet sends one request on a new connection from source in ns, and returns who answered.
func probeGet(ns *testnet.NS, source, url string, header ...string) (string, error) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: dial, DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestKernelProbesStayWithTheApp: under a whole-port steal, a connection is the kubelet's probe when
// it comes from the pod's default gateway (read from the pod's route table), a node address the
// plugin sent, or a source seen sending a declared probe with the kubelet's User-Agent, and matches
// a declared probe: an HTTP probe with its own User-Agent by its path and headers, an HTTPS probe,
// which cannot be read, by its port. Those reach the app; the same requests from an ordinary client,
// and other requests from the kubelet's addresses to an HTTP probe's port, are stolen. With
// --steal-probes every one of them is stolen.
func TestKernelProbesStayWithTheApp(t *testing.T) {
	testnet.RequireRoot(t)
	pod, client := testnet.New(t), testnet.New(t)
	var clientAddrs []netip.Prefix
	for _, a := range []string{gatewayAddr, nodeAddr, clientAddr, otherNode} {
		clientAddrs = append(clientAddrs, netip.MustParsePrefix(a+"/24"))
	}
	testnet.Connect(t, pod, []netip.Prefix{netip.MustParsePrefix(podAddr + "/24")}, client, clientAddrs)
	if err := pod.Netlink().RouteAdd(&netlink.Route{Gw: net.ParseIP(gatewayAddr)}); err != nil {
		t.Fatalf("default route of the pod: %v", err)
	}
	answering(t, pod.Listen(t, "tcp", ":8080"), "app", false)
	answering(t, pod.Listen(t, "tcp", ":8443"), "app", true)
	listen := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	localHTTP, localHTTPS := answering(t, listen(), "local", false), answering(t, listen(), "local", true)
	open := toLocal{8080: localHTTP.Listener.Addr().String(), 8443: localHTTPS.Listener.Addr().String()}

	probes := &wire.Probes{Sources: []string{nodeAddr}, Declared: []wire.Probe{
		{Port: 8080, Kind: wire.ProbeHTTP, Path: "/healthz", Headers: []wire.ProbeHeader{{Name: "User-Agent", Value: "checker/1"}}},
		{Port: 8080, Kind: wire.ProbeHTTP, Path: "/livez"},
		{Port: 8443, Kind: wire.ProbeHTTPS},
	}}
	plain, https := "http://"+podAddr+":8080", "https://"+podAddr+":8443"
	own := []string{"User-Agent", "checker/1"}
	steps := []struct {
		name, source, url string
		header            []string
		// app says the app answers without --steal-probes; with it, every request is stolen.
		app bool
	}{
		{"own User-Agent from a client", clientAddr, plain + "/healthz", own, false},
		{"own User-Agent from the gateway", gatewayAddr, plain + "/healthz", own, true},
		{"own User-Agent from the node address", nodeAddr, plain + "/healthz", own, true},
		{"own User-Agent without it, from the gateway", gatewayAddr, plain + "/healthz", nil, false},
		{"another path from the gateway", gatewayAddr, plain + "/api", own, false},
		{"HTTPS from the gateway", gatewayAddr, https + "/live", nil, true},
		{"HTTPS from the node address", nodeAddr, https + "/live", nil, true},
		{"HTTPS from a client", clientAddr, https + "/live", nil, false},
		{"HTTPS from an unknown node", otherNode, https + "/live", nil, false},
		{"the kubelet's User-Agent from the unknown node", otherNode, plain + "/livez", []string{"User-Agent", "kube-probe/1.33"}, true},
		{"HTTPS from the node learned", otherNode, https + "/live", nil, true},
	}
	for _, stealProbes := range []bool{false, true} {
		t.Run(fmt.Sprintf("steal-probes=%v", stealProbes), func(t *testing.T) {
			var mu sync.Mutex
			var ready []wire.StealEvent
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var st *steal.Steal
			if err := pod.Do(func() error {
				var err error
				st, err = steal.Start(ctx, steal.Config{
					ID: "probetest", Spec: wire.StealSpec{Ports: []int{8080, 8443}, Probes: probes, StealProbes: stealProbes},
					Open: open, InNetns: pod.Do,
					Events: func(e wire.StealEvent) {
						if e.Kind == wire.EventReady {
							mu.Lock()
							ready = append(ready, e)
							mu.Unlock()
						}
					},
				})
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			mu.Lock()
			if len(ready) != 1 {
				t.Fatalf("ready events %+v, want one", ready)
			}
			if d := cmp.Diff([]string{gatewayAddr, nodeAddr}, ready[0].ProbeSources); d != "" {
				t.Errorf("ready's probe sources (-want +got):\n%s", d)
			}
			mu.Unlock()
			for _, s := range steps {
				got, err := probeGet(client, s.source, s.url, s.header...)
				if err != nil {
					t.Fatalf("%s: %v", s.name, err)
				}
				want := "local"
				if s.app && !stealProbes {
					want = "app"
				}
				path := s.url[strings.LastIndex(s.url, "/"):]
				if got != want+" "+path {
					t.Errorf("%s: answered %q, want %s", s.name, got, want)
				}
			}
		})
	}
}
