package exec

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/dnsproxy"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/egress"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/netstack"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/sandbox"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

// rescanEvery is how often the host's loopback listeners are looked for, so that a server started on
// this machine after the command is reachable from it as localhost too.
const rescanEvery = 2 * time.Second

// runSandboxed runs the command in its own namespaces; the stack hands its flows to the router.
func (o *Options) runSandboxed(ctx context.Context, s *session.Session) (int, error) {
	pod := []byte(s.Conn.Welcome().ResolvConf)
	gw4, gw6 := netip.MustParseAddr(sandbox.GatewayIPv4), netip.MustParseAddr(sandbox.GatewayIPv6)
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dns, err := startResolver(dctx, &dnsproxy.Server{Dialer: s.Conn, Pod: dnsproxy.ParseResolvConf(pod), Filter: o.egress})
	if err != nil {
		return 0, err
	}
	sb, err := sandbox.New(ctx, sandbox.Config{
		Command: o.Command, ResolvConf: dnsproxy.NamespaceResolvConf(pod, gw4),
		Stdin: o.In, Stdout: o.Out, Stderr: o.ErrOut,
	})
	if err != nil {
		return 0, err
	}
	defer sb.Close()
	r := &router{pod: s.Conn, filter: o.egress, dns: dns, gateways: []netip.Addr{gw4, gw6}}
	stack, err := netstack.New(sb.TUN(), netstack.Config{MTU: sandbox.MTU, Dialer: r})
	if err != nil {
		return 0, err
	}
	defer stack.Close()
	skip := map[int]bool{}
	if o.steal != nil {
		for _, p := range o.steal.LocalPorts() {
			skip[p] = true
		}
	}
	if o.mirror != nil {
		for _, p := range o.mirror.LocalPorts() {
			skip[p] = true
		}
	}
	lb := &loopback{sb: sb, skip: skip, open: map[int]net.Listener{}}
	lb.scan(dctx)
	go lb.run(dctx)
	defer lb.close()
	stop, err := o.attach(ctx, s, func(ctx context.Context, addr string, _ int) (net.Conn, error) {
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		port, err := strconv.Atoi(p)
		if err != nil {
			return nil, fmt.Errorf("local port %q: %w", p, err)
		}
		return sb.DialLoopback(ctx, "tcp", port)
	})
	if err != nil {
		return 0, err
	}
	defer stop()
	s.Progress.Stepf("running %q with pod %s/%s's network", o.Command[0], s.Target.Pod.Namespace, s.Target.Pod.Name)
	if err := sb.Start(); err != nil {
		return 0, fmt.Errorf("start %q: %w", o.Command[0], err)
	}
	return waitCommand(ctx, s, sb.Wait,
		func(sig os.Signal) { _ = sb.Signal(sig) },
		func() { _ = sb.Close() })
}

// router sends each of the command's flows where it belongs: the resolver's address to the resolver,
// --local destinations to this machine, the rest through the pod.
type router struct {
	pod      netstack.Dialer
	filter   *egress.Filter
	dns      *resolver
	gateways []netip.Addr
	local    net.Dialer
}

func (r *router) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("destination %q: %w", address, err)
	}
	for _, gw := range r.gateways {
		if ap.Addr() != gw {
			continue
		}
		if ap.Port() != 53 {
			return nil, fmt.Errorf("nothing listens on %s: the gateway only answers DNS", address)
		}
		if network == "udp" {
			return r.local.DialContext(ctx, "udp", r.dns.udp)
		}
		return r.local.DialContext(ctx, "tcp", r.dns.tcp)
	}
	if r.filter.Route(ap) == egress.Local {
		return r.local.DialContext(ctx, network, address)
	}
	return r.pod.DialContext(ctx, network, address)
}

// resolver is the command's nameserver on this machine's loopback; the router sends the namespace's
// DNS to it.
type resolver struct{ udp, tcp string }

func startResolver(ctx context.Context, srv *dnsproxy.Server) (*resolver, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the command's DNS: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("listen for the command's DNS: %w", err)
	}
	go func() { _ = srv.ServePacket(ctx, pc) }()
	go func() { _ = srv.ServeStream(ctx, ln) }()
	return &resolver{udp: pc.LocalAddr().String(), tcp: ln.Addr().String()}, nil
}

// loopback makes this machine's loopback TCP servers reachable from the command as localhost, as
// pasta does: for each port listening here, a listener on the namespace's loopback forwards to it.
// Ports the command serves itself (--steal, --mirror LOCAL) are left to it.
type loopback struct {
	sb   *sandbox.Sandbox
	skip map[int]bool
	mu   sync.Mutex
	open map[int]net.Listener
}

func (l *loopback) run(ctx context.Context) {
	t := time.NewTicker(rescanEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.scan(ctx)
		}
	}
}

func (l *loopback) scan(ctx context.Context) {
	for _, port := range hostLoopbackPorts() {
		l.mu.Lock()
		_, have := l.open[port]
		l.mu.Unlock()
		if have || l.skip[port] {
			continue
		}
		ln, err := l.sb.ListenLoopback(ctx, "tcp", port)
		if err != nil {
			// The command listens there itself, or the namespace is gone: either way not ours.
			l.skip[port] = true
			continue
		}
		l.mu.Lock()
		l.open[port] = ln
		l.mu.Unlock()
		go l.serve(ln, port)
	}
}

func (l *loopback) serve(ln net.Listener, port int) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			h, err := dialHostLoopback(port)
			if err != nil {
				c.Close()
				return
			}
			_ = wire.Join(c, h)
		}()
	}
}

// dialHostLoopback reaches the host's server on port, wherever on loopback it listens.
func dialHostLoopback(port int) (net.Conn, error) {
	p := strconv.Itoa(port)
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", p), 5*time.Second)
	if err == nil {
		return c, nil
	}
	return net.DialTimeout("tcp", net.JoinHostPort("::1", p), 5*time.Second)
}

func (l *loopback) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ln := range l.open {
		ln.Close()
	}
}

// hostLoopbackPorts lists the TCP ports this machine listens on for loopback (or for every address),
// IPv4 and IPv6, from /proc/net/tcp and tcp6.
func hostLoopbackPorts() []int {
	seen := map[int]bool{}
	var ports []int
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		for _, p := range listeningPorts(file) {
			if !seen[p] {
				seen[p] = true
				ports = append(ports, p)
			}
		}
	}
	return ports
}

// loopbackOrAny are /proc/net/tcp{,6}'s spellings of 127.0.0.1, 0.0.0.0, ::1, :: and ::ffff:127.0.0.1.
var loopbackOrAny = map[string]bool{
	"0100007F": true, "00000000": true,
	"00000000000000000000000001000000": true, "00000000000000000000000000000000": true,
	"0000000000000000FFFF00000100007F": true,
}

func listeningPorts(file string) []int {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	var ports []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st ...; st 0A is LISTEN.
		if len(fields) < 4 || fields[3] != "0A" {
			continue
		}
		host, port, ok := strings.Cut(fields[1], ":")
		if !ok || !loopbackOrAny[host] {
			continue
		}
		b, err := hex.DecodeString(port)
		if err != nil || len(b) != 2 {
			continue
		}
		ports = append(ports, int(b[0])<<8|int(b[1]))
	}
	return ports
}
