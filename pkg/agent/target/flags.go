package target

import (
	"errors"
	"fmt"

	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// AddFlags registers -c and -l, which every verb takes to name its pod and container.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.StringVarP(&o.Container, "container", "c", "", "Container whose process the agent joins; defaults to the pod's default container.")
	fs.StringVarP(&o.Selector, "selector", "l", "", "Selector (label query) to pick the pod instead of TYPE/NAME.")
}

// DefaultMaxPods is --max-pods' default: every pod of a workload gets an agent and a tunnel, so a
// workload much larger than a developer's test deployment is more likely a mistake than a wish.
const DefaultMaxPods = 20

// AddWorkloadFlags registers --one-pod and --max-pods, for the verbs that cover every ready pod of a
// workload (steal, mirror, dump).
func (o *Options) AddWorkloadFlags(fs *pflag.FlagSet) {
	o.MaxPods = DefaultMaxPods
	fs.BoolVar(&o.OnePod, "one-pod", false, "Use one pod of the workload (the one kubectl exec would pick) instead of every ready pod, and end the session if it goes away.")
	fs.IntVar(&o.MaxPods, "max-pods", o.MaxPods, "Most ready pods of a workload to cover; a workload with more is refused before anything changes.")
}

// ValidateWorkload checks the workload flags; no I/O.
func (o *Options) ValidateWorkload() error {
	if o.MaxPods < 1 {
		return fmt.Errorf("--max-pods must be at least 1, not %d", o.MaxPods)
	}
	return nil
}

// Require refuses options that name no pod; example is the verb's own command line that does.
func (o *Options) Require(example string) error {
	if o.Resource == "" && o.Selector == "" {
		return errors.New("TYPE/NAME or -l selector is required, e.g. " + example)
	}
	return nil
}

// Named is how the user named the target, for messages: TYPE/NAME, or the selector.
func (o *Options) Named() string {
	if o.Resource != "" {
		return o.Resource
	}
	return fmt.Sprintf("selector %q", o.Selector)
}

// The client's request rate for the fan-out of a workload session (LoadKube says why).
const (
	ClientQPS   = 50
	ClientBurst = 100
)

// Kube is the cluster a verb talks to, from kubectl's connection flags.
type Kube struct {
	Config *rest.Config
	Client kubernetes.Interface
	// User is the user name the kubeconfig gives (WhoAmI's fallback).
	User string
}

// LoadKube reads the kubeconfig the way kubectl does; the namespace (-n, else the context's) is
// the target's.
func (o *Options) LoadKube(flags *genericclioptions.ConfigFlags) (Kube, error) {
	var k Kube
	ns, _, err := flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return k, fmt.Errorf("reading the namespace from kubeconfig: %w", err)
	}
	if k.Config, err = flags.ToRESTConfig(); err != nil {
		return k, fmt.Errorf("reading kubeconfig: %w", err)
	}
	// A workload session patches, watches, execs into and port-forwards to every pod at once (20 by
	// default, each several requests); client-go's defaults of 5 requests a second, bursts of 10, would
	// queue them for seconds. kubectl itself raises them the same way (50/300 for discovery).
	k.Config.QPS, k.Config.Burst = ClientQPS, ClientBurst
	if k.Client, err = kubernetes.NewForConfig(k.Config); err != nil {
		return k, fmt.Errorf("creating a client: %w", err)
	}
	k.User = kubeconfigUser(flags)
	o.Namespace = ns
	return k, nil
}
