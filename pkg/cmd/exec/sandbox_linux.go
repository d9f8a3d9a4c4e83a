package exec

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/dnsproxy"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/loopback"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/netstack"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/router"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/sandbox"
)

// runSandboxed runs the command in its own namespaces; the stack hands its flows to the router.
func (o *Options) runSandboxed(ctx context.Context, s *session.Session, f *session.Follower) (int, error) {
	pod := []byte(s.Tunnel.Welcome().ResolvConf)
	gw4, gw6 := netip.MustParseAddr(sandbox.GatewayIPv4), netip.MustParseAddr(sandbox.GatewayIPv6)
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dns, err := router.StartResolver(dctx, &dnsproxy.Server{Dialer: f, Pod: dnsproxy.ParseResolvConf(pod), Filter: o.egress})
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
	r := &router.Router{Pod: f, Filter: o.egress, DNS: dns, Gateways: []netip.Addr{gw4, gw6}}
	stack, err := netstack.New(sb.TUN(), netstack.Config{MTU: sandbox.MTU, Dialer: r})
	if err != nil {
		return 0, err
	}
	defer stack.Close()
	lb := loopback.Start(dctx, sb, o.localPorts())
	defer lb.Close()
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
	return o.waitCommand(ctx, f, sb.Wait,
		func(sig os.Signal) { _ = sb.Signal(sig) },
		func() { _ = sb.Close() })
}
