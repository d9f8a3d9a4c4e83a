// Package mirror implements `kubectl trafficlab mirror`: a copy of the pod's incoming traffic is
// replayed to a local port (or to an address the pod reaches) while the pod's app keeps answering it.
package mirror

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/kubectl/pkg/util/templates"

	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/mirror"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/session"
	"github.com/trafficlab/kubectl-trafficlab/pkg/agent/target"
	"github.com/trafficlab/kubectl-trafficlab/pkg/wire"
)

var (
	mirrorLong = templates.LongDesc(`
		Replay a copy of a pod's incoming traffic to a process on your machine (or to another
		service), while the pod's app keeps answering it.

		HTTP/1.1, h2c and gRPC are copied request by request: the copy's answers are read and
		thrown away (or compared with the pod's, with --diff), filters select which requests are
		copied, and --percent samples them. Each of the pod's connections gets a connection of its
		own, in the same order; HTTP/1.1 copies are pipelined (the next request does not wait for
		the answer to the one before), so the local server must accept pipelined requests, as
		Go's, Node's and most others do. Other protocols are copied connection by connection.

		In sniff mode (the default) the agent watches the pod's packets: it needs only NET_RAW,
		which container runtimes such as containerd give a root container by default, so it adds
		no capability and is admitted at the PodSecurity "baseline" level. The pod's traffic is
		only observed. Requests on HTTP/1.1 connections that were open before the mirror began are
		copied from the next request on; h2c and other protocols only on connections that begin
		after it. In a pod with an Istio or Linkerd sidecar the agent watches lo, where the sidecar
		hands the app each request in plaintext (eth0 carries the mesh's mTLS), so the copies'
		client is the sidecar (127.0.0.6 under Istio, the pod's own address under Linkerd).

		In redirect mode the agent sits in the connection's path with the steal's nftables redirect
		(it needs NET_ADMIN) and relays every byte to the app unchanged; nothing is missed even
		under load. When the mirror ends, connections it relays are reset and their clients
		reconnect to the app directly.

		In both modes a copy that cannot keep up is dropped and counted, never the pod's traffic.

		Every HTTP copy carries the header X-Trafficlab-Mirror with the session's id, and a
		request that carries it is never copied. A --to whose endpoints include the mirrored pod
		would have each copy mirrored again (a Service that selects the pod, reached through
		hairpin NAT, hides where the copy came from): it is refused before anything changes in
		the cluster, and the mirror ends, saying why, if the pod joins its endpoints later.

		On a workload (deployment, statefulset, daemonset, replicaset, replicationcontroller, job,
		service or -l) every ready pod is mirrored, each with its own agent, up to --max-pods: pods
		that become ready during the session are joined, pods that go away leave, every line names
		its pod, and the counts are given per pod and in total. --one-pod mirrors one pod only.`)

	mirrorExample = templates.Examples(`
		# Replay what port 8080 of pod web receives to local port 8080
		kubectl trafficlab mirror pod/web --port 8080

		# Through a Service's port, to local 9090, only the requests under /api
		kubectl trafficlab mirror svc/api --port 80:9090 --path-filter '^/api/'

		# Send 10% of the requests to the canary Service in the cluster instead (a Service whose
		# endpoints include the mirrored pod is refused: the copies would be mirrored again)
		kubectl trafficlab mirror deploy/api --port 8080 --to svc/api-canary:80 --percent 10

		# Print the requests whose local answer differs from the pod's
		kubectl trafficlab mirror pod/web --port 8080 --diff --diff-header content-type`)
)

// Options holds what mirror needs to run.
type Options struct {
	Target    target.Options
	Session   session.Options
	Mirror    mirror.Options
	AddNetRaw bool

	configFlags *genericclioptions.ConfigFlags
	kube        target.Kube

	genericiooptions.IOStreams
}

// NewOptions returns Options with the defaults.
func NewOptions(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *Options {
	return &Options{IOStreams: streams, configFlags: configFlags, Session: session.NewOptions(), Mirror: mirror.NewOptions()}
}

// NewCmdMirror returns the mirror command.
func NewCmdMirror(streams genericiooptions.IOStreams, configFlags *genericclioptions.ConfigFlags) *cobra.Command {
	return newCmd(NewOptions(streams, configFlags))
}

func newCmd(o *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:                   "mirror TYPE/NAME --port REMOTE[:LOCAL] [--port ...] [filters] [--mode sniff|redirect] [--to svc/NAME[:PORT]]",
		DisableFlagsInUseLine: true,
		ValidArgsFunction:     target.CompletionFunc(o.configFlags),
		Short:                 "Replay a copy of a pod's incoming traffic to a local process or another service",
		Long:                  mirrorLong,
		Example:               mirrorExample,
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
	f := cmd.Flags()
	m := &o.Mirror
	o.Target.AddFlags(f)
	o.Target.AddWorkloadFlags(f)
	f.StringArrayVarP(&m.PortArgs, "port", "p", nil, "Pod port to mirror and the local port that receives the copy, REMOTE[:LOCAL]; LOCAL defaults to REMOTE. With a Service, REMOTE is the Service's port. Repeatable.")
	f.StringVar(&m.LocalAddress, "local-address", m.LocalAddress, "Address of the local process that receives the copy.")
	f.StringVar(&m.Mode, "mode", m.Mode, "How the agent sees the traffic: sniff (packet capture, NET_RAW only) or redirect (in the path with nftables, NET_ADMIN; nothing is missed).")
	_ = cmd.RegisterFlagCompletionFunc("mode", cobra.FixedCompletions([]string{"sniff", "redirect"}, cobra.ShellCompDirectiveNoFileComp))
	f.BoolVar(&m.AllowUnownedRedirect, "allow-unowned-redirect", false, "With --mode redirect, mirror even on a node whose kernel (before 5.12) cannot remove the redirect by itself should the whole agent container be killed; the next session in the pod removes it.")
	m.Filter.AddFlags(f, "Mirror")
	f.StringVar(&m.To, "to", "", "Send the copy to svc/NAME[:PORT] or HOST:PORT, dialed from the pod, instead of to a local port. Refused when it leads back to the mirrored pod; the mirror ends if the pod joins its endpoints later.")
	f.IntVar(&m.Percent, "percent", m.Percent, "Share of the selected requests to copy, 1-100, spread evenly.")
	f.BoolVar(&m.Diff, "diff", false, "Compare each copy's response with the pod's (status, --diff-header headers, gRPC status, body) and print only the requests whose responses differ.")
	f.StringSliceVar(&m.DiffHeaders, "diff-header", []string{"Content-Type"}, "Response headers --diff compares (comma separated).")
	f.StringVarP(&m.Output, "output", "o", "", "Output format for the per-request lines: json (with the counts so far every second, and the final counts last), or empty for text.")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"json"}, cobra.ShellCompDirectiveNoFileComp))
	f.BoolVar(&o.AddNetRaw, "add-net-raw", false, "Add NET_RAW to the agent instead of relying on the container runtime's default (needed on CRI-O; refused by PodSecurity baseline).")
	o.Session.AddFlags(f)
	return cmd
}

// Complete reads flags, arguments and the kubeconfig.
func (o *Options) Complete(cmd *cobra.Command, args []string) error {
	if len(args) > 1 {
		return fmt.Errorf("mirror takes one TYPE/NAME, got %q; ports go in --port", args)
	}
	if err := o.Target.SetResource(args); err != nil {
		return err
	}
	if err := o.Mirror.Complete(); err != nil {
		return err
	}
	var err error
	o.kube, err = o.Target.LoadKube(o.configFlags)
	return err
}

// Validate checks the options; no I/O.
func (o *Options) Validate() error {
	if err := o.Target.Require("kubectl trafficlab mirror pod/web --port 8080"); err != nil {
		return err
	}
	if err := o.Target.ValidateWorkload(); err != nil {
		return err
	}
	if err := o.Mirror.Validate(); err != nil {
		return err
	}
	if o.AddNetRaw && o.Mirror.Mode == wire.MirrorRedirect {
		return errors.New("--add-net-raw is for --mode sniff; redirect needs NET_ADMIN, which the agent adds")
	}
	return o.Session.Validate()
}

// Run starts the session and the mirror, serves the copies until interrupted or the agent goes away,
// and prints the counts.
func (o *Options) Run(ctx context.Context) error {
	o.Mirror.Fanout = !o.Target.OnePod
	f := o.Mirror.NewFanout(o.kube.Client, nil, o.Out, o.ErrOut)
	s, err := session.StartWorkload(ctx, o.kube, o.Session, session.Request{
		Target: o.Target, Capabilities: o.Mirror.Capabilities(), AddNetRaw: o.AddNetRaw,
		Check: func(t *target.Target) ([]string, error) { return o.Mirror.Check(ctx, o.kube.Client, t) },
	}, o.ErrOut, f.Join)
	if err != nil {
		return err
	}
	f.Announce(s)
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case err := <-f.Loop():
			cancel(err)
		case <-wctx.Done():
		}
	}()
	err = s.Wait(wctx)
	// Every pod's mirror ends and sends its counts, in parallel.
	s.Close()
	f.Summarize()
	if err != nil {
		return err
	}
	if ctx.Err() == nil {
		return context.Cause(wctx)
	}
	return nil
}
