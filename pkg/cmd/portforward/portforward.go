// Package portforward implements `kubectl trafficlab port-forward`: local ports to anything the pod can
// reach, dialed from the pod's network namespace by the agent.
package portforward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/local/forward"
)

var (
	pfLong = templates.LongDesc(`
		Forward local ports to any host and port the pod can reach.

		Unlike kubectl port-forward, which reaches only the pod's own ports, the far end is dialed
		from inside the pod's network namespace by the trafficlab agent: the pod's localhost, other
		pods and services by IP, and DNS names as the pod resolves them (search domains included).
		TCP and UDP. The agent is added to the pod as an ephemeral container (or reused), needs no
		capability, and leaves the pod as it was when the command ends.

		As with kubectl, one pod is used. When it goes away during the session (deleted, evicted)
		and TYPE/NAME named a workload or a Service, or -l a selector, the session moves to another
		ready pod of it, with one line saying so: the local ports stay open, connections open on the
		pod that went away end, and new ones go to the new pod. A pod named as pod/NAME ends the
		session.`)

	pfExample = templates.Examples(`
		# Forward local 8080 to port 80 on the pod's own localhost
		kubectl trafficlab port-forward pod/web 8080:80

		# Reach a service the pod sees by its short name, on local 6379
		kubectl trafficlab port-forward deploy/api redis:6379

		# Ask the cluster's DNS through the pod, over UDP
		kubectl trafficlab port-forward pod/web 5353:kube-dns.kube-system:53/udp

		# Listen on all interfaces, several forwards at once
		kubectl trafficlab port-forward svc/api --address 0.0.0.0 8080:80 5432:db.data:5432`)
)

// Options holds what port-forward needs to run.
type Options struct {
	Target    target.Options
	Session   session.Options
	Addresses []string
	Specs     []forward.Spec

	args        []string
	configFlags *genericclioptions.ConfigFlags
	kube        target.Kube

	genericiooptions.IOStreams
}

// NewOptions returns Options with kubectl's defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{IOStreams: streams, configFlags: configFlags, Session: session.NewOptions(), Addresses: []string{"localhost"}}
}

// NewCmdPortForward returns the port-forward command.
func NewCmdPortForward(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	return newCmd(NewOptions(streams, configFlags))
}

func newCmd(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "port-forward TYPE/NAME [LOCAL_PORT:]HOST:PORT[/udp] [...]",
		DisableFlagsInUseLine: true,
		ValidArgsFunction:     target.CompletionFunc(o.configFlags),
		Short:                 "Forward local ports to anything the pod can reach",
		Long:                  pfLong,
		Example:               pfExample,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(cmd, args); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	o.Target.AddFlags(cmd.Flags())
	cmd.Flags().StringSliceVar(&o.Addresses, "address", o.Addresses, "Addresses to listen on (comma separated). Only accepts IP addresses or localhost as a value. When localhost is supplied, trafficlab will try to bind on both 127.0.0.1 and ::1 and will fail if neither of these addresses are available to bind.")
	o.Session.AddFlags(cmd.Flags())
	return cmd
}

// Complete reads flags, arguments and the kubeconfig.
func (o *Options) Complete(cmd *cobra.Command, args []string) error {
	o.args = args
	if o.Target.Selector == "" && len(args) > 0 {
		o.Target.Resource = args[0]
		args = args[1:]
	}
	o.Specs = nil
	for _, a := range args {
		s, err := forward.ParseSpec(a)
		if err != nil {
			return err
		}
		o.Specs = append(o.Specs, s)
	}
	var err error
	o.kube, err = o.Target.LoadKube(o.configFlags)
	return err
}

// Validate checks the options; no I/O.
func (o *Options) Validate() error {
	if err := o.Target.Require("kubectl trafficlab port-forward pod/web 8080:80"); err != nil {
		return err
	}
	if len(o.Specs) == 0 {
		return errors.New("at least one [LOCAL_PORT:]HOST:PORT[/udp] is required, e.g. 8080:80 or redis:6379")
	}
	for _, a := range o.Addresses {
		if a != "localhost" && !isIP(a) {
			return fmt.Errorf("--address %q is not an IP address or localhost", a)
		}
	}
	return o.Session.Validate()
}

// Run binds the local ports first (a busy port fails before anything is added to the pod), then starts
// the session and forwards until interrupted or the agent goes away.
func (o *Options) Run(ctx context.Context) error {
	fw := &forward.Forwarder{Addresses: o.Addresses, Out: o.Out, ErrOut: o.ErrOut}
	tcp, err := fw.Listen(o.Specs)
	if err != nil {
		return err
	}
	udp, err := fw.ListenUDP(o.Specs)
	if err != nil {
		for _, l := range tcp {
			l.Close()
		}
		return err
	}
	req := session.Request{Target: o.Target}
	s, err := session.Start(ctx, o.kube, o.Session, req, o.ErrOut)
	if err != nil {
		for _, l := range tcp {
			l.Close()
		}
		for _, l := range udp {
			l.Close()
		}
		return err
	}
	// A workload's pod that goes away is replaced by another; the listeners stay.
	f := session.Follow(ctx, o.kube, o.Session, req, s, o.ErrOut, true)
	defer f.Close()
	fw.Dialer = f
	fw.Announce(tcp, udp)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		fw.Serve(fctx, tcp)
	}()
	go func() {
		defer wg.Done()
		fw.ServeUDP(fctx, udp)
	}()
	err = f.Wait(ctx)
	cancel()
	wg.Wait()
	return err
}

func isIP(s string) bool { return net.ParseIP(s) != nil }
