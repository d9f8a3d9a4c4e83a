package exec

import (
	"context"
	"fmt"
	"net"
	"os"
	osexec "os/exec"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/rootless/proxy"
)

// runProxied runs the command on this machine with a SOCKS5/HTTP proxy through the pod in its
// environment; steal and mirror deliver to its LOCAL port on this machine.
func (o *Options) runProxied(ctx context.Context, s *session.Session, f *session.Follower) (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("listen for the proxy: %w", err)
	}
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv := &proxy.Server{Remote: f, Router: o.egress}
	go func() { _ = srv.Serve(pctx, ln) }()
	stop, err := o.attach(ctx, s, nil)
	if err != nil {
		return 0, err
	}
	defer stop()
	path, err := osexec.LookPath(o.Command[0])
	if err != nil {
		return 0, fmt.Errorf("command %q: %w", o.Command[0], err)
	}
	cmd := osexec.Command(path, o.Command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.In, o.Out, o.ErrOut
	cmd.Env = append(os.Environ(), proxy.Env(ln.Addr().String(), o.egress)...)
	s.Progress.Stepf("running %q with a proxy through pod %s/%s at %s", o.Command[0], s.Target.Pod.Namespace, s.Target.Pod.Name, ln.Addr())
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %q: %w", o.Command[0], err)
	}
	return o.waitCommand(ctx, f,
		func() (int, error) { return exitCode(cmd, cmd.Wait()) },
		func(sig os.Signal) { _ = cmd.Process.Signal(sig) },
		func() { _ = cmd.Process.Kill() })
}
