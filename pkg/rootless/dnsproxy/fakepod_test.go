package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
)

// podNameserver is the address the fake pod's resolv.conf names; podDialer maps it to fakePod.
const podNameserver = "10.96.0.10"

var podConf = []byte(`# written by the kubelet
search ns.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
options ndots:5
`)

// seen is one question as the fake pod nameserver received it.
type seen struct {
	Network string
	Name    string
	Type    dnsmessage.Type
}

// fakePod is a tiny nameserver on 127.0.0.1 standing for the pod's (kube-dns):
//
//   - redis.ns.svc.cluster.local: A 10.96.0.20, AAAA fd00::20
//   - redis.other-ns.svc.cluster.local: A 10.96.1.20
//   - db.ns.svc.cluster.local: A 10.96.0.99 (a cluster "db" that --local db must hide)
//   - big.ns.svc.cluster.local: 100 A records (1.6 kB, more than any client takes over UDP)
//   - medium.ns.svc.cluster.local: 40 A records (about 700 bytes)
//   - slow.: never answered
//   - anything else: NXDOMAIN
//
// Over UDP it truncates every answer above 512 bytes whatever the client's EDNS0 size, as a
// conservative nameserver may.
type fakePod struct {
	udp net.PacketConn
	tcp net.Listener

	mu   sync.Mutex
	seen []seen
	raw  [][]byte
}

func startFakePod(t testing.TB) *fakePod {
	t.Helper()
	return startFakePodOn(t, "127.0.0.1:0")
}

func startFakePodOn(t testing.TB, addr string) *fakePod {
	t.Helper()
	pc, ln := listenBoth(t, addr)
	f := &fakePod{udp: pc, tcp: ln}
	t.Cleanup(func() { pc.Close(); ln.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := f.respond("udp", buf[:n]); resp != nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					msg, err := readMsg(c)
					if err != nil {
						return
					}
					if resp := f.respond("tcp", msg); resp != nil {
						_ = writeMsg(c, resp)
					}
				}
			}()
		}
	}()
	return f
}

// listenBoth binds UDP and TCP on one port, as a nameserver does; with port 0 it tries again when the
// UDP port's TCP twin is taken.
func listenBoth(t testing.TB, addr string) (net.PacketConn, net.Listener) {
	t.Helper()
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
		lastErr = err
	}
	t.Fatal(lastErr)
	return nil, nil
}

func (f *fakePod) questions() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.seen...)
}

func (f *fakePod) respond(network string, msg []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	f.mu.Lock()
	f.seen = append(f.seen, seen{Network: network, Name: q.Name.String(), Type: q.Type})
	f.raw = append(f.raw, append([]byte(nil), msg...))
	f.mu.Unlock()

	name := strings.ToLower(q.Name.String())
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 30}
	var as []netip.Addr
	rcode := dnsmessage.RCodeSuccess
	switch name {
	case "slow.":
		return nil
	case "redis.ns.svc.cluster.local.":
		as = []netip.Addr{netip.MustParseAddr("10.96.0.20"), netip.MustParseAddr("fd00::20")}
	case "redis.other-ns.svc.cluster.local.":
		as = []netip.Addr{netip.MustParseAddr("10.96.1.20")}
	case "db.ns.svc.cluster.local.":
		as = []netip.Addr{netip.MustParseAddr("10.96.0.99")}
	case "big.ns.svc.cluster.local.", "medium.ns.svc.cluster.local.":
		n := 100
		if strings.HasPrefix(name, "medium") {
			n = 40
		}
		for i := range n {
			as = append(as, netip.AddrFrom4([4]byte{10, 97, 0, byte(i)}))
		}
	default:
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RCode: rcode})
	b.EnableCompression()
	_ = b.StartQuestions()
	_ = b.Question(q)
	_ = b.StartAnswers()
	for _, a := range as {
		switch {
		case a.Is4() && q.Type == dnsmessage.TypeA:
			_ = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
		case a.Is6() && q.Type == dnsmessage.TypeAAAA:
			_ = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
	}
	out, err := b.Finish()
	if err != nil {
		panic(err)
	}
	if network == "udp" && len(out) > 512 {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, Truncated: true, RecursionDesired: h.RecursionDesired})
		_ = b.StartQuestions()
		_ = b.Question(q)
		out, _ = b.Finish()
	}
	return out
}

func (f *fakePod) rawQuestions() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.raw...)
}

// podDialer stands for the tunnel: it reaches the fake pod's nameserver when asked for the pod's,
// and refuses anything else, as an unreachable address would be.
type podDialer struct {
	pod *fakePod

	mu    sync.Mutex
	dials []string
}

func (d *podDialer) dialed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.dials...)
}

func (d *podDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.dials = append(d.dials, network+" "+address)
	d.mu.Unlock()
	if address != net.JoinHostPort(podNameserver, "53") {
		return nil, fmt.Errorf("dial %s %s: connection refused", network, address)
	}
	var nd net.Dialer
	if network == "udp" {
		return nd.DialContext(ctx, network, d.pod.udp.LocalAddr().String())
	}
	return nd.DialContext(ctx, network, d.pod.tcp.Addr().String())
}

// hostResolver stands for this machine's resolver.
type hostResolver map[string][]netip.Addr

func (h hostResolver) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	if network != "ip" {
		return nil, fmt.Errorf("want network ip, got %q", network)
	}
	if host == "broken" {
		return nil, &net.DNSError{Err: "server misbehaving", Name: host, IsTemporary: true}
	}
	as, ok := h[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	// The real resolver hands out IPv4 as 16-byte slices turned into mapped addresses.
	out := make([]netip.Addr, len(as))
	for i, a := range as {
		if a.Is4() {
			a = netip.AddrFrom16(a.As16())
		}
		out[i] = a
	}
	return out, nil
}

// dnsServer is a Server on 127.0.0.1 (UDP and TCP, same port), with the count of TCP clients.
type dnsServer struct {
	*Server
	udp  net.PacketConn
	tcp  *countingListener
	done chan struct{}
}

type countingListener struct {
	net.Listener
	mu       sync.Mutex
	accepted int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.accepted++
		l.mu.Unlock()
	}
	return c, err
}

func (l *countingListener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted
}

func startServer(t *testing.T, s *Server) *dnsServer {
	t.Helper()
	pc, ln := listenBoth(t, "127.0.0.1:0")
	d := &dnsServer{Server: s, udp: pc, tcp: &countingListener{Listener: ln}, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.ServePacket(ctx, pc); err != nil {
			t.Errorf("ServePacket: %v", err)
		}
	})
	wg.Go(func() {
		if err := s.ServeStream(ctx, d.tcp); err != nil {
			t.Errorf("ServeStream: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return d
}

// client is Go's own resolver (PreferGo: the code the command would run) pointed at the server.
func (d *dnsServer) client() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var nd net.Dialer
			if strings.HasPrefix(network, "udp") {
				return nd.DialContext(ctx, network, d.udp.LocalAddr().String())
			}
			return nd.DialContext(ctx, network, d.tcp.Addr().String())
		},
	}
}

func newServer(t *testing.T, filter *egress.Filter, host hostResolver) (*fakePod, *podDialer, *dnsServer) {
	t.Helper()
	pod := startFakePod(t)
	dialer := &podDialer{pod: pod}
	d := startServer(t, &Server{Dialer: dialer, Pod: ParseResolvConf(podConf), Filter: filter, Host: host})
	return pod, dialer, d
}

func isNotFound(err error) bool {
	var dnsErr *net.DNSError
	return errors.As(err, &dnsErr) && dnsErr.IsNotFound
}
